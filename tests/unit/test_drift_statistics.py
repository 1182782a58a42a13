"""The drift statistics (streams.drift.summary, divergence, homogeneity, cusum, sequential, episodes, canary_stats):
exact small cases, scipy references, statistical behaviour, JSON state."""

from __future__ import annotations

import copy
import json
import math
import pickle

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, entropy

from streams.drift.canary_stats import CanaryBaseline, canary_baseline, canary_kl, compare_canaries
from streams.drift.cusum import MeanShiftCusum, cusum_threshold
from streams.drift.divergence import effect_size, js_divergence, smoothed_distribution
from streams.drift.episodes import EpisodeTracker
from streams.drift.homogeneity import DriftTest, compare, compare_window, g_test, holm
from streams.drift.sequential import SequentialDrift, references, signals
from streams.drift.summary import WindowSummary


def _json(d: dict) -> dict:
    return json.loads(json.dumps(d))


# ------------------------------------------------------------------ divergences


def test_smoothed_distribution_adds_alpha_to_every_bin() -> None:
    np.testing.assert_allclose(smoothed_distribution([3, 0, 1], 0.5), np.array([3.5, 0.5, 1.5]) / 5.5)
    np.testing.assert_allclose(smoothed_distribution([3, 0, 1], 0.0), [0.75, 0.0, 0.25])
    with pytest.raises(ValueError):
        smoothed_distribution([0, 0], 0.0)


def test_js_matches_hand_computed_values() -> None:
    # P = (0.6, 0.4), Q = (0.4, 0.6); JS against the mixture (0.5, 0.5), in bits: 0.6 log2 1.2 + 0.4 log2 0.8.
    expected = 0.6 * math.log2(1.2) + 0.4 * math.log2(0.8)
    assert js_divergence([60, 40], [40, 60], 0.0) == pytest.approx(expected, rel=1e-12)
    assert js_divergence([7, 0], [0, 7], 0.0) == pytest.approx(1.0)  # disjoint: 1 bit, finite without smoothing
    assert effect_size([80, 120], [6000, 4000]) == js_divergence([80, 120], [6000, 4000])  # the verdict's size is JS


def test_js_agrees_with_scipy_on_smoothed_counts() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.integers(0, 30, 6), rng.integers(0, 30, 6)
        p, q = smoothed_distribution(a, 0.5), smoothed_distribution(b, 0.5)
        assert js_divergence(a, b) == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-9, abs=1e-15)


def test_smoothing_keeps_divergences_finite_when_a_bin_is_empty_on_one_side() -> None:
    p0, q0 = smoothed_distribution([10, 5, 0], 0.0), smoothed_distribution([0, 5, 10], 0.0)
    assert entropy(p0, q0) == math.inf  # unsmoothed, KL is infinite
    p, q = smoothed_distribution([10, 5, 0], 0.5), smoothed_distribution([0, 5, 10], 0.5)
    assert (p > 0).all() and (q > 0).all() and math.isfinite(entropy(p, q)) and entropy(p, q) > 0.5
    assert 0.0 < js_divergence([0, 0, 9], [9, 0, 0]) < 1.0 and js_divergence([5, 5], [5, 5]) == 0.0


# ------------------------------------------------------------------ significance


def test_g_test_equals_scipy_chi2_contingency_log_likelihood() -> None:
    a, b = np.array([20, 30, 50, 41, 60]), np.array([2000, 3100, 5000, 4000, 6000])
    g, dof, p = g_test(a, b, min_expected=0.0)
    ref = chi2_contingency(np.vstack([a, b]), correction=False, lambda_="log-likelihood")
    assert g == pytest.approx(ref.statistic, rel=1e-10) and dof == ref.dof
    assert p == pytest.approx(ref.pvalue, rel=1e-8)


def test_g_test_drops_empty_columns_and_pools_sparse_ones() -> None:
    def ref(table: list[list[int]]) -> tuple[object, int, object]:
        r = chi2_contingency(np.array(table), correction=False, lambda_="log-likelihood")
        return pytest.approx(r.statistic, rel=1e-10), r.dof, pytest.approx(r.pvalue, rel=1e-8)

    # Column 2 is empty in both rows; columns 3 and 4 expect 4 and 3 in the window: pooled into one (7).
    assert g_test([91, 89, 0, 5, 2, 13], [900, 900, 0, 39, 31, 130]) == ref([[91, 89, 13, 7], [900, 900, 130, 70]])
    # A pooled column still below 5 is folded into the smallest remaining column.
    assert g_test([40, 50, 0, 1, 0], [400, 500, 0, 2, 3]) == ref([[41, 50], [405, 500]])
    assert g_test([5, 0], [50, 0]) == (0.0, 0, 1.0)  # one category: nothing to test
    assert g_test([0, 0], [50, 10])[2] == 1.0  # empty window


def test_p_values_are_roughly_uniform_on_the_same_distribution() -> None:
    rng = np.random.default_rng(11)
    prior = np.array([0.5, 0.3, 0.2])
    baseline = rng.multinomial(20_000, prior)
    p = np.array([g_test(rng.multinomial(200, prior), baseline)[2] for _ in range(3000)])
    for alpha in (0.01, 0.05, 0.2, 0.5):
        assert abs(np.mean(p < alpha) - alpha) < 3.5 * math.sqrt(alpha * (1 - alpha) / 3000) + 0.005, alpha


def test_a_label_shift_gives_a_tiny_p_value_and_a_drift_verdict() -> None:
    verdict = compare(np.array([80, 120]), np.array([6000, 4000]), DriftTest(alpha=1e-3))
    assert verdict.p_value is not None and verdict.p_value < 1e-6
    assert verdict.drifted and verdict.value > verdict.threshold
    assert verdict.statistic == "js" and verdict.value == pytest.approx(js_divergence([80, 120], [6000, 4000]))


def test_the_effect_floor_stops_a_tiny_shift_in_a_huge_window() -> None:
    window, baseline = np.array([1_210_000, 790_000]), np.array([600_000, 400_000])  # 60.5/39.5 vs 60/40
    significant_only = compare(window, baseline, DriftTest(alpha=1e-3, min_effect=0.0))
    floored = compare(window, baseline, DriftTest(alpha=1e-3, min_effect=0.005))
    assert significant_only.p_value is not None and significant_only.p_value < 1e-10
    assert significant_only.drifted  # the test alone would alarm
    assert not floored.drifted and floored.value < floored.threshold


@pytest.mark.parametrize("n", [200, 2_000, 200_000])
def test_verdicts_do_not_flip_with_window_size_alone(n: int) -> None:
    baseline = np.array([60_000, 40_000])
    big = np.array([0.4 * n, 0.6 * n])  # 20 points: drift at every size
    tiny = np.array([0.595 * n, 0.405 * n])  # half a point: never
    config = DriftTest(alpha=2e-4, min_effect=0.005)
    assert compare(big, baseline, config).drifted, n
    assert not compare(tiny, baseline, config).drifted, n


def test_holm_adjusted_p_values() -> None:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.001, 0.02]), [0.5, 0.003, 0.04])
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0])


def _window(rng: np.random.Generator, n: int, prior: np.ndarray, a: float = 2.0) -> WindowSummary:
    k = prior.shape[0]
    labels = np.searchsorted(np.cumsum(prior), rng.random(n) * prior.sum(), side="right")
    conf = 1 / k + (1 - 1 / k) * rng.beta(a, 1.0, n)
    ent = rng.beta(2.0 * a, 2.0, n)
    s = WindowSummary.empty(k)
    s.add_many(labels, conf, ent, rng.uniform(0.9, 1.0, n), np.log(conf))
    return s


def test_compare_window_controls_family_wise_false_alarms_with_holm() -> None:
    rng = np.random.default_rng(5)
    prior = np.array([0.6, 0.4])
    config = DriftTest(alpha=0.1, min_effect=0.0)  # no floor: the test alone must hold the rate
    verdicts = []
    for _ in range(6):  # the rate given one baseline sample varies with it; the guarantee is on average
        baseline = _window(rng, 50_000, prior)
        verdicts += [compare_window(_window(rng, 300, prior), baseline, config) for _ in range(100)]
    rate = np.mean([v.drifted for v in verdicts])
    assert rate < 0.1 + 3 * math.sqrt(0.1 * 0.9 / 600)  # uncorrected, three tests at 0.1 alarm far more often
    w = _window(rng, 300, prior)
    raw = [g_test(getattr(w, f), getattr(baseline, f))[2] for f in ("label_counts", "confidence_hist", "entropy_hist")]
    adjusted = compare_window(w, baseline, config)
    assert list(adjusted.verdicts) == ["labels", "confidence", "entropy"]
    np.testing.assert_allclose(np.array([x.p_value for x in adjusted.verdicts.values()], dtype=float), holm(raw))


def test_compare_window_flags_the_family_that_moved() -> None:
    rng = np.random.default_rng(8)
    baseline = _window(rng, 50_000, np.array([0.6, 0.4]))
    v = compare_window(_window(rng, 200, np.array([0.4, 0.6])), baseline)
    assert v.drifted and v.verdicts["labels"].drifted and v.strongest()[0] == "labels"
    v = compare_window(_window(rng, 500, np.array([0.6, 0.4]), a=0.8), baseline)
    assert v.drifted and not v.verdicts["labels"].drifted
    assert _json(v.verdicts["entropy"].to_dict())["statistic"] == "js"


# ------------------------------------------------------------------ window summaries


def _messages(seed: int, n: int, k: int = 3) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    conf[:3] = [0.0, 1.0, 0.3]  # both ends and an exact bin edge
    return rng.integers(0, k, n), conf, rng.random(n), rng.random(n), -rng.exponential(size=n)


def test_add_many_equals_add_per_message() -> None:
    msgs = _messages(1, 500)
    one, batch = WindowSummary.empty(3), WindowSummary.empty(3)
    for m in zip(*msgs, strict=True):
        one.add(int(m[0]), *map(float, m[1:]))
    batch.add_many(*msgs)
    a, b = one.to_dict(), batch.to_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12)
    assert one.confidence_hist[0] >= 1 and one.confidence_hist[-1] >= 1 and one.n == 500
    assert one.confidence_hist[3] == np.sum((msgs[1] >= 0.3) & (msgs[1] < 0.4))


def test_merge_equals_the_summary_of_the_concatenated_messages() -> None:
    a, b = _messages(2, 300), _messages(3, 450)
    sa, sb, whole = WindowSummary.empty(3), WindowSummary.empty(3), WindowSummary.empty(3)
    sa.add_many(*a)
    sb.add_many(*b)
    whole.add_many(*(np.concatenate([x, y]) for x, y in zip(a, b, strict=True)))
    merged = sa.merge(sb)
    for key, value in whole.to_dict().items():
        np.testing.assert_allclose(merged.to_dict()[key], value, rtol=1e-12)
    assert sa.n == 300  # merge leaves its inputs alone
    ent = np.concatenate([a[2], b[2]])
    assert merged.entropy_mean == pytest.approx(ent.mean()) and merged.entropy_std == pytest.approx(ent.std())
    assert merged.label_mass_mean == pytest.approx(np.concatenate([a[3], b[3]]).mean())
    with pytest.raises(ValueError):
        sa.merge(WindowSummary.empty(2))


def test_window_summary_json_round_trip_and_keeps_counting() -> None:
    s = WindowSummary.empty(2, bins=5)
    s.add(1, 0.91, 0.3, 0.99, -0.1)
    back = WindowSummary.from_dict(_json(s.to_dict()))
    assert back.to_dict() == s.to_dict()
    back.add(0, 0.55, 0.95, 0.8, -0.6)  # a restored summary still counts in place
    assert back.n == 2 and back.label_counts.tolist() == [1, 1] and back.entropy_hist.tolist() == [0, 1, 0, 0, 1]
    with pytest.raises(IndexError):
        s.add(-1, 0.5, 0.5, 1.0, 0.0)
    copied = pickle.loads(pickle.dumps(s))
    copied.add(1, 0.1, 0.1, 1.0, 0.0)
    assert copied.n == 2 and s.n == 1 and copy.deepcopy(s).to_dict() == s.to_dict()


# ------------------------------------------------------------------ sequential detectors


def _run_length(rng: np.random.Generator, h: float, n: int, shift: float, limit: int) -> int:
    """Windows until a one-sided CUSUM on N(0, 1) messages (n a window) alarms; `limit` if it does not."""
    c = MeanShiftCusum(0.0, 1.0, shift, h)
    sums = rng.normal(size=limit) * math.sqrt(n)  # a window's sum of n standard normal messages
    for t, total in enumerate(sums.tolist()):
        c.update(n, total, float(t))
        if c.drift_detected:
            return t + 1
    return limit


@pytest.mark.parametrize("n", [50, 500])
def test_cusum_false_alarms_are_rarer_than_its_threshold_promises(n: int) -> None:
    """h = ln(ARL0) is Lorden's bound: the mean run length to a false alarm is at least ARL0, any window size."""
    rng = np.random.default_rng(n)
    arl0 = 50.0
    lengths = [_run_length(rng, cusum_threshold(arl0), n, 0.1, 5000) for _ in range(200)]
    assert np.mean(lengths) >= arl0, np.mean(lengths)


def test_cusum_threshold_splits_one_budget_over_the_statistics() -> None:
    assert cusum_threshold(1000.0, 6) == pytest.approx(math.log(6000.0))
    with pytest.raises(ValueError):
        cusum_threshold(0.5)


def test_cusum_detects_a_small_per_message_shift_and_estimates_when_it_began() -> None:
    rng = np.random.default_rng(3)
    c = MeanShiftCusum(0.0, 1.0, 0.1, cusum_threshold(1000.0, 6))
    fired_at = None
    for t in range(60):
        mean = 0.1 if t >= 20 else 0.0  # 0.1 sigma: 2.2 standard errors of a 500-message window mean
        c.update(500, float(rng.normal(500 * mean, math.sqrt(500))), 10.0 * t)
        if c.drift_detected and fired_at is None:
            fired_at, since, effect = t, c.since, c.effect
    assert fired_at is not None and 20 <= fired_at <= 30
    assert since is not None and 150.0 <= since <= 230.0, since
    assert 0.05 < effect < 0.2


def test_an_alarm_lasts_while_the_shift_does_and_ends_once_traffic_returns() -> None:
    rng = np.random.default_rng(8)
    c = MeanShiftCusum(0.0, 1.0, 0.1, 8.0)
    states = []
    for t in range(80):
        mean = 0.3 if 10 <= t < 40 else 0.0
        c.update(500, float(rng.normal(500 * mean, math.sqrt(500))), float(t))
        states.append(c.drift_detected)
    first = states.index(True)
    assert first <= 12 and all(states[first:40]), "one alarm for the whole shift, not one per few windows"
    assert not any(states[45:]) and c.stat == 0.0, "it ends soon after the shift and leaves no head start"


def test_cusum_state_round_trips_mid_stream() -> None:
    rng = np.random.default_rng(2)
    straight, split = MeanShiftCusum(0.0, 1.0, -0.1, 8.0), MeanShiftCusum(0.0, 1.0, -0.1, 8.0)
    seen_straight, seen_split = [], []
    for t in range(60):
        total = float(rng.normal(-500 * 0.08 * (t >= 30), math.sqrt(500)))
        if t == 35:
            split = MeanShiftCusum.from_dict(_json(split.to_dict()))
        straight.update(500, total, float(t))
        split.update(500, total, float(t))
        seen_straight.append((straight.drift_detected, straight.stat))
        seen_split.append((split.drift_detected, split.stat))
    assert seen_straight == seen_split and any(d for d, _ in seen_straight)
    straight.reset()
    assert not straight.drift_detected and straight.stat == 0.0 and straight.since is None


def test_signals_are_sums_whose_means_are_the_baseline_references() -> None:
    s = WindowSummary.empty(3, bins=4)
    s.add_many(np.array([0, 0, 1, 2]), np.array([0.1, 0.3, 0.6, 0.9]), np.array([0.2, 0.4, 0.6, 0.8]),
               np.ones(4), np.zeros(4))
    sig, ref = signals(s, ["a", "b", "c"]), references(s, ["a", "b", "c"])
    assert set(sig) == set(ref) == {"label_share[a]", "label_share[b]", "label_share[c]", "entropy_mean",
                                    "confidence_mean"}
    assert sig["label_share[a]"] == (4, 2.0) and sig["entropy_mean"][1] == pytest.approx(2.0)
    assert sig["confidence_mean"][1] == pytest.approx(0.125 + 0.375 + 0.625 + 0.875)  # bin midpoints
    assert ref["label_share[a]"][0] == pytest.approx(2.5 / 5) and ref["entropy_mean"][0] == pytest.approx(0.5)
    assert set(signals(WindowSummary.empty(2), ["x", "y"])) == {
        "label_share[x]", "entropy_mean", "confidence_mean"}, "a binary task watches one share"


def test_sequential_detectors_restart_with_a_new_baseline_only() -> None:
    base = WindowSummary.empty(2)
    base.add_many(np.array([0, 1] * 500), np.full(1000, 0.8), np.linspace(0, 1, 1000), np.ones(1000), np.zeros(1000))
    seq = SequentialDrift(["p", "n"], base, "v1", arl0=1000.0, shift=0.05)
    assert seq.threshold == pytest.approx(math.log(6 * 1000.0))
    restored = SequentialDrift.from_dict(_json(seq.to_dict()))
    assert restored.baseline == "v1" and restored.to_dict() == seq.to_dict()


# ------------------------------------------------------------------ episodes


def test_episode_tracker_emits_one_open_and_one_recovery_per_episode() -> None:
    t = EpisodeTracker(confirm=1, clear=3)
    verdicts = [False] * 5 + [True] * 10 + [False] + [True] * 30 + [False] * 2 + [True] + [False] * 10
    events = [(i, e) for i, d in enumerate(verdicts) if (e := t.update(d))]
    assert events == [(5, "open"), (51, "recovered")]


def test_episode_tracker_confirm_and_state_round_trip() -> None:
    t = EpisodeTracker(confirm=2, clear=2)
    assert t.update(True) is None  # one drifted window is not yet an episode
    assert t.update(False) is None and t.update(True) is None
    restored = EpisodeTracker.from_dict(_json(t.to_dict()))
    assert restored.update(True) == "open" and restored.update(True) is None
    assert restored.update(False) is None and restored.update(False) == "recovered"


# ------------------------------------------------------------------ canaries


TOPK = {"Positive": math.log(0.62), "Negative": math.log(0.30), "Neutral": math.log(0.05), "The": math.log(0.01)}


def _jitter(topk: dict[str, float], rng: np.random.Generator, sd: float) -> dict[str, float]:
    return {tok: lp + float(rng.normal(0, sd)) for tok, lp in topk.items()}


def test_canary_kl_is_zero_for_identical_and_large_for_different_distributions() -> None:
    assert canary_kl(TOPK, dict(TOPK)) == pytest.approx(0.0, abs=1e-12)
    flipped = {"Positive": math.log(0.30), "Negative": math.log(0.62), "Neutral": math.log(0.05), "The": math.log(0.01)}
    assert canary_kl(TOPK, flipped) > 0.15
    other = {"Sure": math.log(0.9), "I": math.log(0.05)}  # no token in common
    assert math.isfinite(canary_kl(TOPK, other)) and canary_kl(TOPK, other) > 2.0


def test_canary_kl_floors_tokens_missing_from_one_side() -> None:
    # "The" is missing from current: it gets min(smallest shown 0.05, unshown 1 - 0.97 = 0.03) = 0.03.
    current = {k: v for k, v in TOPK.items() if k != "The"}
    p = np.array([0.30, 0.05, 0.62, 0.01])  # Negative, Neutral, Positive, The (renormalised over the union)
    q = np.array([0.30, 0.05, 0.62, 0.03])
    expected = float(np.sum((p / p.sum()) * np.log((p / p.sum()) / (q / q.sum()))))
    assert canary_kl(TOPK, current) == pytest.approx(expected, rel=1e-9)
    assert canary_kl(TOPK, current, floor=1e-4) > canary_kl(TOPK, current)  # a lower floor penalises more
    # A top-k that shows all the mass leaves nothing for a missing token but the 1e-6 last resort.
    pn, qn = np.array([1e-6, 1.0]) / (1 + 1e-6), np.array([0.001, 1.0]) / 1.001  # Negative, Positive
    certain = {"Positive": 1e-7, "Negative": math.log(0.001)}  # +1e-7: a server's rounding, clipped to 0
    assert canary_kl({"Positive": 0.0}, certain) == pytest.approx(float(np.sum(pn * np.log(pn / qn))), rel=1e-9)
    assert canary_kl(certain, {"Positive": 0.0}) > 0.005  # the other way the current top-k lost a 0.1% token


def test_canary_comparison_against_baseline_repeats() -> None:
    rng = np.random.default_rng(0)
    prompts = {"p1": TOPK, "p2": {"Negative": math.log(0.8), "Positive": math.log(0.15), "Neg": math.log(0.02)}}
    repeats = {k: [_jitter(v, rng, 0.02) for _ in range(12)] for k, v in prompts.items()}
    base = canary_baseline(repeats)
    assert len(base.null_scores) == 12 and max(base.null_scores) < 0.01
    same = compare_canaries(base, {k: _jitter(v, rng, 0.02) for k, v in prompts.items()})
    assert not same.drifted and same.statistic == "canary_kl"
    changed = dict(prompts, p1={"Positive": math.log(0.35), "Negative": math.log(0.55), "Neutral": math.log(0.05)})
    verdict = compare_canaries(base, changed)
    assert verdict.drifted and verdict.p_value == pytest.approx(1 / 13) and verdict.value > verdict.threshold
    restored = CanaryBaseline.from_dict(_json(base.to_dict()))
    assert compare_canaries(restored, changed) == verdict
    with pytest.raises(ValueError):
        canary_baseline({"p1": [TOPK]})


def test_drift_test_config_round_trips() -> None:
    config = DriftTest(alpha=1e-3, min_effect=0.1)
    assert DriftTest.from_dict(_json(config.to_dict())) == config
    assert compare(np.array([10, 20]), np.array([20, 10]), config).statistic == "js"
