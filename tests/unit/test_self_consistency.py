"""The sequential stopping rules of adaptive self-consistency, checked by simulation over many seeds."""

from __future__ import annotations

import numpy as np
import pytest

from streams.confidence.self_consistency import (
    NONE,
    StoppingRule,
    VoteTally,
    decide,
    run_on_stream,
    summary,
)


def _votes(rng: np.random.Generator, shares: np.ndarray, n: int) -> list[int]:
    """n votes over len(shares) categories; the last category is 'none' (NONE)."""
    cats = rng.choice(len(shares), size=n, p=shares)
    return [int(c) if c < len(shares) - 1 else NONE for c in cats]


def _stopped_wrong(votes: list[int], n_labels: int, shares: np.ndarray, rule: StoppingRule,
                   batch: int = 1) -> tuple[bool, int]:
    """(stopped before the budget on a leader that is not the true majority, samples used)."""
    used, d = run_on_stream(votes, n_labels, rule, batch)
    truth = int(np.argmax(shares))
    true_leader = NONE if truth == len(shares) - 1 else truth
    return used < rule.budget and d.leader != true_leader, used


def test_posterior_rule_error_rate_is_below_its_level_for_items_drawn_from_the_prior() -> None:
    """The Bayesian guarantee: over items whose shares come from the prior, wrong early stops <= error_rate."""
    rule = StoppingRule("posterior", error_rate=0.05, prior=0.5, min_samples=2, budget=20)
    rng = np.random.default_rng(12345)
    wrong = stopped = 0
    trials = 2000
    for _ in range(trials):
        shares = rng.dirichlet([0.5, 0.5, 0.5])  # two labels + none, drawn from the rule's own prior
        bad, used = _stopped_wrong(_votes(rng, shares, 20), 2, shares, rule)
        wrong += bad
        stopped += used < rule.budget
    rate = wrong / trials
    assert stopped > trials * 0.5, "the rule should stop early on most prior draws"
    assert rate <= 0.05, f"wrong early stops {rate:.4f} above the 0.05 level"


@pytest.mark.parametrize("shares", [(0.75, 0.2, 0.05), (0.65, 0.3, 0.05), (0.5, 0.3, 0.2)])
def test_posterior_rule_error_rate_for_fixed_clear_majorities(shares: tuple[float, ...]) -> None:
    rule = StoppingRule("posterior", error_rate=0.05, prior=0.5, min_samples=2, budget=20)
    s = np.array(shares)
    rng = np.random.default_rng(7)
    results = [_stopped_wrong(_votes(rng, s, 20), 2, s, rule) for _ in range(1000)]
    rate = np.mean([bad for bad, _ in results])
    assert rate <= 0.05, f"{shares}: wrong early stops {rate:.4f}"


@pytest.mark.parametrize("shares", [(0.5, 0.5, 0.0), (0.45, 0.55, 0.0), (0.4, 0.35, 0.25)])
def test_confidence_sequence_error_rate_is_below_its_level_for_every_item(shares: tuple[float, ...]) -> None:
    """Anytime-valid: even for a dead heat, P(ever stopping on a non-majority leader) <= error_rate."""
    rule = StoppingRule("confidence_sequence", error_rate=0.1, prior=0.5, min_samples=2, budget=120)
    s = np.array(shares)
    rng = np.random.default_rng(99)
    wrong = 0
    trials = 300
    for _ in range(trials):
        votes = _votes(rng, s, rule.budget)
        used, d = run_on_stream(votes, 2, rule, batch=4)
        true_best = np.flatnonzero(s == s.max())
        stopped = used < rule.budget
        if s[0] == s[1]:  # no strict majority: any early stop is a wrong one
            wrong += stopped
        else:
            wrong += stopped and d.leader != (NONE if true_best[0] == 2 else int(true_best[0]))
    assert wrong / trials <= 0.1, f"{shares}: {wrong}/{trials} wrong early stops at level 0.1"


def test_predictive_rule_agrees_with_the_full_budget_vote_for_items_from_the_prior() -> None:
    rule = StoppingRule("predictive", error_rate=0.05, prior=0.5, min_samples=2, budget=20)
    rng = np.random.default_rng(2024)
    disagree = 0
    trials = 800
    for _ in range(trials):
        shares = rng.dirichlet([0.5, 0.5, 0.5])
        votes = _votes(rng, shares, 20)
        used, d = run_on_stream(votes, 2, rule)
        full = VoteTally(2)
        full.extend(votes)
        disagree += used < 20 and d.leader != summary(full.counts).leader
    assert disagree / trials <= 0.05


def test_unanimous_votes_stop_early_and_a_dead_heat_runs_to_the_budget() -> None:
    rule = StoppingRule("posterior", error_rate=0.05, prior=0.5, min_samples=2, budget=20)
    used, d = run_on_stream([1] * 20, 2, rule)
    assert used == 4 and d.stop and d.leader == 1 and d.error_bound <= 0.05
    used, d = run_on_stream([0, 1] * 10, 2, rule)
    assert used == 20 and d.leader == -2
    strict = StoppingRule("confidence_sequence", error_rate=0.05, prior=0.5, min_samples=2, budget=20)
    used_cs, _ = run_on_stream([1] * 20, 2, strict)
    assert 4 < used_cs < 20, "the frequentist rule needs more samples than the posterior one"


def test_batches_only_stop_at_batch_boundaries() -> None:
    rule = StoppingRule("posterior", error_rate=0.05, prior=0.5, min_samples=2, budget=20)
    used, _ = run_on_stream([0] * 20, 2, rule, batch=3)
    assert used % 3 == 0 and used >= 4


def test_decide_waits_for_min_samples_and_ties() -> None:
    rule = StoppingRule("posterior", error_rate=0.5, prior=0.5, min_samples=3, budget=20)
    assert not decide(np.array([2, 0, 0]), rule).stop
    assert not decide(np.array([3, 3, 0]), rule).stop
    assert decide(np.array([3, 3, 0]), StoppingRule("posterior", 0.05, 0.5, 2, 6)).stop  # budget reached


def test_summary_smooths_shares_and_flags_votes_for_no_label() -> None:
    t = VoteTally(2)
    t.extend([0, 0, 0, 0])
    s = summary(t.counts, prior=0.5)
    assert s.probabilities is not None and s.probabilities[0] == pytest.approx(4.5 / 5)
    assert s.interval is not None and s.interval[0] < 0.9 < s.interval[1] and s.label_mass == 1.0
    t19 = VoteTally(2)
    t19.extend([0] * 19 + [1])
    assert summary(t19.counts).probabilities[0] > s.probabilities[0], "more votes, more confidence"  # type: ignore[index]
    none = VoteTally(2)
    none.extend([NONE, NONE, NONE, 0])
    ns = summary(none.counts)
    assert ns.ambiguous and ns.leader == NONE and ns.label_mass == pytest.approx(0.25)
    empty = VoteTally(2)
    empty.extend([NONE] * 3)
    es = summary(empty.counts)
    assert es.probabilities is None and es.ambiguous


def test_rule_parameters_are_validated() -> None:
    with pytest.raises(ValueError):
        StoppingRule("majority")
    with pytest.raises(ValueError):
        StoppingRule(error_rate=0.0)
    with pytest.raises(ValueError):
        StoppingRule(min_samples=30, budget=20)
