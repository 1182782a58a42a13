"""Adaptive self-consistency: when to stop sampling, as a pure function of the votes so far.

The model is sampled at temperature > 0; each answer is mapped to a label or to *none* (no label).
Votes are a stream over K labels + none. After each batch the rule asks whether the current leader is
settled as the long-run majority (the category a vote lands in most often); if so, sampling stops,
otherwise it goes on up to the budget. Three rules, on scipy's Beta distribution (`scipy.stats.beta`
for intervals, its CDF `scipy.special.betainc` vectorised in the hot path) and
`scipy.stats.dirichlet_multinomial`:

- ``posterior`` (default): a Dirichlet(prior) over the K+1 vote shares, updated with the counts. The
  leader L is settled when the posterior probability that some other category j has a share at
  least L's is <= ``error_rate``. Each pairwise probability is exact, since under a Dirichlet
  theta_L / (theta_L + theta_j) ~ Beta(c_L + a0, c_j + a0), and their sum (a union bound) is used.
  A posterior probability stays valid under optional stopping, so among items whose shares are
  drawn from the prior, the rate of stopping on the wrong majority is <= ``error_rate``. It is a
  Bayesian guarantee: for one fixed item whose two shares are nearly equal it can be exceeded.
- ``predictive``: settled when the posterior predictive probability (Dirichlet-multinomial) that
  the leader is *not* the strict plurality of all ``budget`` votes is <= ``error_rate``: it targets
  agreement with the fixed-budget vote rather than with the long-run majority, with the same
  Bayesian sense of guarantee.
- ``confidence_sequence``: anytime-valid and frequentist. For each ordered pair (i, j), the votes that
  fall on i or j form a Bernoulli stream with p = theta_i / (theta_i + theta_j); the mixture
  likelihood ratio of p ~ Uniform(0.5, 1) against p = 0.5 is a non-negative supermartingale whenever
  p <= 0.5, so by Ville's inequality it ever exceeds 1/alpha' with probability <= alpha'. The leader
  is settled when every pair (L, j) has crossed, with alpha' = error_rate / (K'(K'-1)) over all
  K' = K+1 categories. Then P(ever stopping on a leader that is not the true majority) <=
  ``error_rate`` for every item, however its shares lie, at the price of more samples.

`VoteTally` keeps the counts; `decide` is the stopping rule; `summary` turns votes into the raw
confidence (the smoothed vote share of each label, and a Beta interval for the leader's share).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import betainc, betaln
from scipy.stats import beta

RULES = ("posterior", "predictive", "confidence_sequence")
NONE = -1  # a vote for no label


@dataclass(frozen=True, slots=True)
class StoppingRule:
    """Parameters fixed a priori (see bench/README.md): not tuned on evaluation items."""

    rule: str = "posterior"
    error_rate: float = 0.05  # P(stopping on the wrong majority), in the rule's sense
    prior: float = 0.5  # Dirichlet concentration per category (0.5: Jeffreys)
    min_samples: int = 2
    budget: int = 20

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if not 0 < self.error_rate < 1 or self.prior <= 0 or not 1 <= self.min_samples <= self.budget:
            raise ValueError("need 0 < error_rate < 1, prior > 0 and 1 <= min_samples <= budget")


@dataclass(frozen=True, slots=True)
class Decision:
    stop: bool
    leader: int  # label index, NONE when no label leads, -2 when tied
    error_bound: float  # the rule's bound on stopping at the wrong leader, now (1.0 = nothing known)


class VoteTally:
    """Counts per label, plus the none category in the last slot."""

    def __init__(self, n_labels: int) -> None:
        self.counts = np.zeros(n_labels + 1, dtype=np.int64)
        self.n_labels = n_labels

    def add(self, vote: int) -> None:
        self.counts[vote if vote >= 0 else self.n_labels] += 1

    def extend(self, votes: Iterable[int]) -> None:
        for v in votes:
            self.add(v)

    @property
    def n(self) -> int:
        return int(self.counts.sum())


def _leader(counts: np.ndarray) -> int:
    """Category index of the unique maximum, or -2 on a tie (the none slot is the last index)."""
    top = counts.max()
    winners = np.flatnonzero(counts == top)
    return int(winners[0]) if len(winners) == 1 else -2


def _log_mixture_lr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log of int_{1/2}^{1} 2 p^a (1-p)^b dp / (1/2)^(a+b): Uniform(1/2, 1) mixture vs p = 1/2.

    The integral is B(a+1, b+1) * P(Beta(a+1, b+1) > 1/2); the Beta tail is `betainc(b+1, a+1, 1/2)`
    (scipy's regularised incomplete beta, i.e. the Beta CDF, vectorised over the pairs)."""
    tail = betainc(b + 1.0, a + 1.0, 0.5)
    with np.errstate(divide="ignore"):
        return math.log(2.0) + betaln(a + 1.0, b + 1.0) + np.log(tail) + (a + b) * math.log(2.0)


def decide(counts: np.ndarray, rule: StoppingRule) -> Decision:
    """Stop or go on, given counts over K labels + none (last slot)."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    k_all = len(counts)
    cat = _leader(counts) if n else -2
    leader = -2 if cat == -2 else (NONE if cat == k_all - 1 else cat)
    if n >= rule.budget:
        return Decision(True, leader, 1.0 if cat == -2 else _bound(counts, cat, rule))
    if cat == -2 or n < rule.min_samples:
        return Decision(False, leader, 1.0)
    bound = _bound(counts, cat, rule)
    return Decision(bound <= rule.error_rate, leader, bound)


def _bound(counts: np.ndarray, cat: int, rule: StoppingRule) -> float:
    others = np.delete(counts, cat).astype(np.float64)
    c_l = float(counts[cat])
    if rule.rule == "posterior":
        a0 = rule.prior
        # P(theta_j >= theta_L) = P(Beta(c_L + a0, c_j + a0) <= 1/2) = beta.cdf(0.5, ...) = betainc(..., 0.5)
        return float(min(1.0, betainc(c_l + a0, others + a0, 0.5).sum()))
    if rule.rule == "predictive":
        return _predictive_bound(counts, cat, rule)
    # confidence sequence: every pair (leader, j) must have crossed 1/alpha'; report the implied level
    k_all = len(counts)
    pairs = k_all * (k_all - 1)
    worst = float(_log_mixture_lr(np.full_like(others, c_l), others).min())
    return min(1.0, pairs * math.exp(-worst)) if worst > -math.inf else 1.0


def run_on_stream(votes: Sequence[int], n_labels: int, rule: StoppingRule, batch: int = 1) -> tuple[int, Decision]:
    """Apply the rule to a fixed vote sequence in batches: (samples used, final decision).

    The benchmark draws each item's budget of votes once and replays prefixes of the same sequence,
    so the adaptive stop and the fixed-budget vote are compared on identical samples.
    """
    tally = VoteTally(n_labels)
    used = 0
    first = max(rule.min_samples, batch) if batch > 1 else rule.min_samples
    step = first
    while used < len(votes):
        take = min(step, rule.budget - used, len(votes) - used)
        tally.extend(votes[used:used + take])
        used += take
        d = decide(tally.counts, rule)
        if d.stop or used >= rule.budget:
            return used, d
        step = batch
    return used, decide(tally.counts, rule)  # the stream ran out before the budget


@dataclass(frozen=True, slots=True)
class VoteSummary:
    probabilities: np.ndarray | None  # smoothed vote share per label (posterior mean), None if no label votes
    label_mass: float  # share of votes that named a label
    leader: int  # label index, NONE, or -2 (tie)
    interval: tuple[float, float] | None  # 95% Beta interval for the leader's share among label votes
    ambiguous: bool  # the votes converged to no label (none leads, or nothing named a label)


def summary(counts: np.ndarray, prior: float = 0.5, level: float = 0.95) -> VoteSummary:
    """The raw confidence from votes: each label's share of the label votes, smoothed by the prior.

    Smoothing (the Dirichlet posterior mean) keeps the number of samples in the score: 4 of 4 votes
    gives 0.9 with the Jeffreys prior over two labels, 19 of 20 gives 0.93, so a calibrator can tell
    a quick unanimous stop from a long near-unanimous run.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    lab = counts[:-1]
    k = len(lab)
    named = lab.sum()
    cat = _leader(counts.astype(np.int64)) if n else -2
    leader = -2 if cat == -2 else (NONE if cat == len(counts) - 1 else cat)
    if named == 0:
        return VoteSummary(None, 0.0, leader, None, True)
    probs = (lab + prior) / (named + k * prior)
    best = int(np.argmax(lab))
    lo, hi = beta.interval(level, lab[best] + prior, named - lab[best] + (k - 1) * prior)
    ambiguous = leader == NONE
    return VoteSummary(probs, float(named / n), leader, (float(lo), float(hi)), ambiguous)


def _compositions(m: int, k: int) -> np.ndarray:
    """Every way to put m votes into k categories, as rows."""
    if k == 1:
        return np.array([[m]], dtype=np.int64)
    rows = [np.column_stack([np.full(len(rest), i, dtype=np.int64), rest])
            for i in range(m + 1) for rest in [_compositions(m - i, k - 1)]]
    return np.vstack(rows)


@functools.lru_cache(maxsize=256)
def _compositions_cached(m: int, k: int) -> np.ndarray:
    out = _compositions(m, k)
    out.flags.writeable = False
    return out


def _predictive_bound(counts: np.ndarray, cat: int, rule: StoppingRule) -> float:
    """P(the leader is not the strict plurality of all `budget` votes | votes so far), Dirichlet-multinomial.

    Exact (scipy.stats.dirichlet_multinomial over every split of the remaining votes) when the splits
    are few; otherwise Monte Carlo with 20,000 draws and a seed fixed by the counts (reproducible).
    """
    from math import comb

    from scipy.stats import dirichlet_multinomial

    m = rule.budget - int(counts.sum())
    if m <= 0:
        final = counts
        return 0.0 if (final[cat] > np.delete(final, cat)).all() else 1.0
    alpha = counts.astype(np.float64) + rule.prior
    k = len(counts)
    if comb(m + k - 1, k - 1) <= 20000:
        future = _compositions_cached(m, k)
        # scipy-stubs types n as an array only; scipy takes an int (its documented form)
        pmf = np.asarray(dirichlet_multinomial.pmf(future, alpha, m))  # type: ignore[arg-type]
        final = future + counts
        keeps = (final[:, [cat]] > np.delete(final, cat, axis=1)).all(axis=1)
        return float(max(0.0, 1.0 - pmf[keeps].sum()))
    rng = np.random.default_rng(abs(hash(tuple(counts.tolist()))) % 2**32)
    theta = rng.dirichlet(alpha, size=20000)
    future = np.array([rng.multinomial(m, t) for t in theta])
    final = future + counts
    keeps = (final[:, [cat]] > np.delete(final, cat, axis=1)).all(axis=1)
    return float(1.0 - keeps.mean())
