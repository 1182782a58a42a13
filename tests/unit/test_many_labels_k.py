"""Risk control and drift detection at K = 3, 10 and 50 labels (issue 18).

The calibrators have their own K = 3, 10, 50 tests (`test_calibration_selection.py`); these cover what sits
after them. Risk control sees only the top confidence and whether the label was right, so K enters through
how those are distributed: with many labels the top probability is lower and spread wider. Drift keeps one
count and one CUSUM pair per label, so K = 50 means 50 sparse label bins for the G-test and 100 one-sided
label-share CUSUMs sharing the false-alarm budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from streams.calibration.calibrators import DEFAULT_METHODS
from streams.calibration.fitting import fit_and_evaluate
from streams.calibration.metrics import confidence_and_correct
from streams.calibration.risk_control import ltt_threshold
from streams.drift.homogeneity import DriftTest, compare_window
from streams.drift.monitor import BINS, Baseline
from streams.drift.sequential import SequentialDrift
from streams.drift.summary import WindowSummary
from streams.drift.windows import TaskDrift
from streams.tasks import Task, parse_tasks

KS = (3, 10, 50)


def _calibrated(rng: np.random.Generator, k: int, n: int, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) with each label drawn from its row: calibrated by construction."""
    logits = scale * rng.standard_normal((n, k))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return p, np.minimum(y, k - 1)


# ------------------------------------------------------------------------------------------ risk control


@pytest.mark.parametrize("k", KS)
def test_ltt_keeps_the_error_of_accepted_items_within_target_at_k_labels(k: int) -> None:
    """Over 40 calibration sets of 1500 items, the certified threshold's true error on the accepted population
    exceeds the target in at most about delta of them (binomial slack: 10 or more of 40 has probability 0.008
    at delta = 0.1), and nearly every set certifies one. The scores are calibrated, so an accepted item is
    wrong with probability 1 - its confidence, and the true selective error is the mean of that over a large
    population (no label noise in the check)."""
    rng = np.random.default_rng(k)
    alpha, delta, misses, feasible = 0.1, 0.1, 0, 0
    population, _ = confidence_and_correct(*_calibrated(rng, k, 200_000, scale=4.0))
    for _ in range(40):
        conf, ok = confidence_and_correct(*_calibrated(rng, k, 1500, scale=4.0))
        r = ltt_threshold(conf, ok, alpha, delta)
        if not r.feasible:
            continue
        feasible += 1
        assert r.empirical_error is not None and r.empirical_error <= alpha
        misses += int(np.mean(1.0 - population[population >= r.threshold]) > alpha)
    assert feasible >= 36 and misses <= 9, (feasible, misses)


@pytest.mark.parametrize("k", KS)
def test_the_refit_path_certifies_a_threshold_at_k_labels(k: int) -> None:
    """The calibrator record's risk control (`fit_and_evaluate`, as the refit agent runs it) on over-confident
    K-label scores: feasible, with the chosen calibrator's held-out error within the target."""
    rng = np.random.default_rng(100 + k)
    p, y = _calibrated(rng, k, 2000)
    sharp = p ** 2 / (p ** 2).sum(axis=1, keepdims=True)  # over-confident raw scores, as a small model gives
    out = fit_and_evaluate(sharp, y, DEFAULT_METHODS, holdout_fraction=0.5, target_error=0.1, delta=0.1, n_boot=50)
    assert out.risk_control is not None and out.risk_control["feasible"]
    assert 0.0 < out.risk_control["threshold"] <= 1.0 and out.risk_control["empirical_error"] <= 0.1
    assert out.metrics_after["ece"] < out.metrics_before["ece"]


@pytest.mark.parametrize("k", KS)
def test_uninformative_confidence_certifies_nothing_at_k_labels(k: int) -> None:
    """Confidence unrelated to correctness (accuracy 1/K): no threshold can be certified, so all goes to review."""
    rng = np.random.default_rng(k)
    conf = rng.uniform(1 / k, 1.0, 2000)
    r = ltt_threshold(conf, rng.random(2000) < 1 / k, 0.1, 0.1)
    assert not r.feasible and r.threshold == float("inf")


# ------------------------------------------------------------------------------------------------ drift


def _task(k: int) -> Task:
    labels = ", ".join(f'"l{i:02d}"' for i in range(k))
    toml = f"""
[[task]]
name = "many"
labels = [{labels}]
codes = "{"letters" if k <= 36 else "off"}"
[task.model]
base_url = "http://x/v1"
name = "m"
[task.drift]
window_s = 60
"""
    return parse_tasks(toml, "test", env={}).tasks["many"]


def _shares(k: int) -> np.ndarray:
    """Zipf-like label shares: real label sets are skewed, and the small labels are the hard ones to watch."""
    s = 1.0 / np.arange(1, k + 1)
    return s / s.sum()


def _window(rng: np.random.Generator, shares: np.ndarray, n: int) -> WindowSummary:
    k = len(shares)
    w = WindowSummary.empty(k, BINS)
    w.add_many(rng.choice(k, n, p=shares), rng.uniform(0.3, 1.0, n), rng.uniform(0.0, 0.9, n), np.ones(n),
               np.zeros(n))
    return w


def _shifted(shares: np.ndarray, label: int, factor: float) -> np.ndarray:
    """`label`'s share times `factor`, the others scaled so the shares still sum to 1."""
    out = shares.copy()
    out[label] *= factor
    rest = np.arange(len(out)) != label
    out[rest] *= (1.0 - out[label]) / shares[rest].sum()
    return out


def _baseline(rng: np.random.Generator, k: int) -> Baseline:
    return Baseline("many", "m", "b1", _window(rng, _shares(k), 60_000), None, "2026-01-01T00:00:00.000Z",
                    "2026-01-01T01:00:00.000Z")


def _alerts(drift: TaskDrift, t: int, window: WindowSummary, k: int) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for o in drift.on_traffic(window.to_dict(), 60.0 * t) if o.topic == "alerts"]


@pytest.mark.parametrize("k", KS)
def test_window_summaries_merge_and_round_trip_at_k_labels(k: int) -> None:
    rng = np.random.default_rng(k)
    a, b = _window(rng, _shares(k), 300), _window(rng, _shares(k), 200)
    merged = a.merge(b)
    assert merged.n == 500 and merged.label_counts.shape == (k,)
    assert np.array_equal(merged.label_counts, a.label_counts + b.label_counts)
    back = WindowSummary.from_dict(orjson.loads(orjson.dumps(merged.to_dict())))
    assert back.n == 500 and np.array_equal(back.label_counts, merged.label_counts)


@pytest.mark.parametrize("k", KS)
def test_the_window_test_is_quiet_on_stationary_traffic_and_sees_one_label_move(k: int) -> None:
    """200 stationary windows of 5000 messages: no drifted window (alpha 1e-4 per window; sparse label bins are
    pooled). One mid-sized label tripled: the labels family drifts in that window."""
    rng = np.random.default_rng(k)
    base = _window(rng, _shares(k), 60_000)
    config = DriftTest()
    quiet = sum(compare_window(_window(rng, _shares(k), 5000), base, config).drifted for _ in range(200))
    assert quiet == 0
    verdict = compare_window(_window(rng, _shifted(_shares(k), k // 3, 3.0), 5000), base, config)
    assert verdict.drifted and verdict.strongest()[0] == "labels"


def test_at_50_labels_one_small_label_needs_the_cusums_not_the_window_test() -> None:
    """The G-test spreads one label's change over 49 degrees of freedom: a 1.3% label tripled in a window of
    1000 (39 messages instead of 13) is not a drifted window at alpha 1e-4, while that label's CUSUM, which
    watches it alone, is in alarm after two such windows. Why the episode test below sees it at K = 50."""
    rng = np.random.default_rng(50)
    k, label = 50, 50 // 3
    base = _window(rng, _shares(k), 60_000)
    shifted = [_window(rng, _shifted(_shares(k), label, 3.0), 1000) for _ in range(2)]
    assert not compare_window(shifted[0], base, DriftTest()).drifted
    seq = SequentialDrift(tuple(f"l{i:02d}" for i in range(k)), base, "b1", 1000.0, 0.05, 1.0)
    fired = [f.signal for t, w in enumerate(shifted) for f in seq.update(w, 60.0 * t)]
    assert fired == [f"label_share[l{label:02d}] up"]


@pytest.mark.parametrize("k", KS)
def test_the_cusums_stay_below_threshold_on_stationary_traffic(k: int) -> None:
    """2K + 4 one-sided statistics share the budget (Bonferroni in the threshold): 300 stationary windows of
    500 messages raise no alarm at K = 50 either."""
    rng = np.random.default_rng(k)
    labels = tuple(f"l{i:02d}" for i in range(k))
    seq = SequentialDrift(labels, _window(rng, _shares(k), 60_000), "b1", 1000.0, 0.05, 1.0)
    fired = [f for t in range(300) for f in seq.update(_window(rng, _shares(k), 500), 60.0 * t)]
    assert fired == [] and not seq.in_alarm


@pytest.mark.parametrize("k", KS)
def test_the_worker_path_raises_nothing_on_stationary_traffic_at_k_labels(k: int) -> None:
    rng = np.random.default_rng(k)
    drift = TaskDrift(_task(k), {}, {"many": _baseline(rng, k)})
    alerts = [a for t in range(60) for a in _alerts(drift, t, _window(rng, _shares(k), 1000), k)]
    assert alerts == []


@pytest.mark.parametrize("k", KS)
def test_one_labels_share_tripling_opens_one_episode_naming_that_label(k: int) -> None:
    """After 20 stationary windows of 1000 messages, label K // 3 (1.3% at K = 50) triples its share for 30
    windows, then returns: one episode opens within 3 windows of the change, about the labels, and it recovers
    after the return."""
    rng = np.random.default_rng(k)
    task = _task(k)
    drift = TaskDrift(task, {}, {"many": _baseline(rng, k)})
    label = k // 3
    shifted = _shifted(_shares(k), label, 3.0)
    plan = [_shares(k)] * 20 + [shifted] * 30 + [_shares(k)] * 40
    alerts = [(t, a) for t, shares in enumerate(plan) for a in _alerts(drift, t, _window(rng, shares, 1000), k)]
    assert [a["state"] for _, a in alerts] == ["open", "recovered"], [(t, a["signal"]) for t, a in alerts]
    (t_open, opened), (t_rec, _) = alerts
    # A window is judged when the next one's first summary arrives: the change in window 20 shows at t = 21.
    assert 21 <= t_open <= 23
    assert opened["signal"] in ("labels", f"label_share[{task.labels[label]}] up"), opened["signal"]
    assert t_rec > 50
