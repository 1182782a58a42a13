"""streams.calibration.metrics and plots: exact small cases, statistical behaviour, artefacts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from streams.calibration.metrics import (
    accuracy,
    bootstrap_interval,
    brier,
    confidence_and_correct,
    ece,
    ece_floor,
    mce,
    nll,
    reliability_data,
    summary,
)
from streams.calibration.plots import reliability_diagram

# conf = [0.95, 0.55, 0.75, 0.85], correct = [1, 0, 1, 1]; no confidence sits on a bin edge.
PROBS = np.array([[0.95, 0.05], [0.55, 0.45], [0.25, 0.75], [0.15, 0.85]])
LABELS = np.array([0, 1, 1, 1])


def _calibrated(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows from a Dirichlet and labels drawn from each row: calibrated by construction."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.7), size=n)
    labels = (probs.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return probs, labels


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = _calibrated(n, 3, seed)
    sharp = probs**3
    return sharp / sharp.sum(axis=1, keepdims=True), labels


# ---------------------------------------------------------------------------- exact examples


def test_hand_computed_accuracy_nll_brier() -> None:
    assert accuracy(PROBS, LABELS) == 0.75
    assert nll(PROBS, LABELS) == pytest.approx(-(math.log(0.95) + math.log(0.45) + math.log(0.75)
                                                 + math.log(0.85)) / 4, abs=1e-12)
    # per item: 2 * 0.05^2, 2 * 0.55^2, 2 * 0.25^2, 2 * 0.15^2 -> 0.005 + 0.605 + 0.125 + 0.045
    assert brier(PROBS, LABELS) == pytest.approx(0.78 / 4, abs=1e-12)


def test_nll_floors_a_zero_on_the_true_label_and_brier_counts_every_class() -> None:
    probs, labels = np.array([[0.0, 0.5, 0.5]]), np.array([0])
    assert nll(probs, labels) == pytest.approx(-math.log(1e-6))
    assert brier(probs, labels) == pytest.approx(1.0 + 0.25 + 0.25)


def test_confidence_and_correct_are_top_label() -> None:
    conf, correct = confidence_and_correct(PROBS, LABELS)
    assert np.allclose(conf, [0.95, 0.55, 0.75, 0.85])
    assert correct.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_hand_computed_uniform_ece_and_mce() -> None:
    conf, correct = confidence_and_correct(PROBS, LABELS)
    # 5 bins of 0.2: [0.4, 0.6) holds 0.55 (wrong): gap 0.55; [0.6, 0.8) holds 0.75 (right): gap 0.25;
    # [0.8, 1] holds 0.85, 0.95 (both right): gap 0.1. ECE = 0.25*0.55 + 0.25*0.25 + 0.5*0.1.
    assert ece(conf, correct, n_bins=5) == pytest.approx(0.25, abs=1e-12)
    assert mce(conf, correct, n_bins=5) == pytest.approx(0.55, abs=1e-12)


def test_hand_computed_quantile_ece_and_mce() -> None:
    conf, correct = confidence_and_correct(PROBS, LABELS)
    # 2 equal-mass bins split at the median 0.8: {0.55, 0.75} acc 0.5 conf 0.65; {0.85, 0.95} acc 1 conf 0.9.
    assert ece(conf, correct, n_bins=2, strategy="quantile") == pytest.approx(0.5 * 0.15 + 0.5 * 0.1, abs=1e-12)
    assert mce(conf, correct, n_bins=2, strategy="quantile") == pytest.approx(0.15, abs=1e-12)


def test_one_bin_ece_is_the_gap_between_mean_confidence_and_accuracy() -> None:
    conf, correct = confidence_and_correct(PROBS, LABELS)
    assert ece(conf, correct, n_bins=1) == pytest.approx(abs(0.75 - conf.mean()), abs=1e-12)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="strategy"):
        ece(np.array([0.6]), np.array([1.0]), strategy="log")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        nll(PROBS, np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError):
        ece(np.array([0.6, 0.7]), np.array([1.0]))


# ------------------------------------------------------------------- statistical behaviour


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_of_calibrated_data_is_small(strategy: str) -> None:
    conf, correct = confidence_and_correct(*_calibrated(20_000, 3, seed=1))
    assert ece(conf, correct, strategy=strategy) < 0.02  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_of_overconfident_data_is_large(strategy: str) -> None:
    conf, correct = confidence_and_correct(*_overconfident(20_000, seed=2))
    assert ece(conf, correct, strategy=strategy) > 0.05  # type: ignore[arg-type]


def test_ece_floor_is_what_a_calibrated_model_scores_and_shrinks_with_n() -> None:
    """Perfectly calibrated data lands under the floor's 95th percentile about 95% of the time, an
    overconfident model far above it; the floor itself falls like 1 / sqrt(n)."""
    rng = np.random.default_rng(11)
    under = 0
    for _ in range(100):
        conf = rng.uniform(0.5, 0.95, 1500)
        correct = (rng.random(1500) < conf).astype(float)
        mean, q95 = ece_floor(conf, n_sim=100, seed=int(rng.integers(1 << 30)))
        assert 0.0 < mean < q95
        under += ece(conf, correct) <= q95
    assert 88 <= under <= 100
    conf, correct = confidence_and_correct(*_overconfident(1500, seed=12))
    assert ece(conf, correct) > 2 * ece_floor(conf)[1]
    small = ece_floor(rng.uniform(0.5, 0.95, 1000))[0]
    large = ece_floor(rng.uniform(0.5, 0.95, 16000))[0]
    assert 3.0 < small / large < 5.0  # sqrt(16) = 4
    assert ece_floor(conf, seed=3) == ece_floor(conf, seed=3)  # seeded
    with pytest.raises(ValueError):
        ece_floor(np.array([]))


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (200, 5000):
        conf, correct = confidence_and_correct(*_overconfident(n, seed=3))
        low, high = bootstrap_interval(ece, conf, correct, n_boot=500, seed=0)
        assert low <= ece(conf, correct) <= high
        acc_low, acc_high = bootstrap_interval(np.mean, correct, n_boot=500, seed=0)
        assert acc_low <= correct.mean() <= acc_high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_bootstrap_resamples_two_dimensional_arrays_jointly() -> None:
    probs, labels = _calibrated(1000, 3, seed=4)
    low, high = bootstrap_interval(brier, probs, labels, n_boot=300, seed=1)
    assert low < brier(probs, labels) < high
    assert (low, high) == bootstrap_interval(brier, probs, labels, n_boot=300, seed=1)  # seeded


def test_summary_has_every_metric_and_serialises() -> None:
    probs, labels = _overconfident(2000, seed=5)
    s = summary(probs, labels, n_boot=200)
    assert set(s) == {"n", "accuracy", "ece", "ece_interval", "ece_floor", "ece_mass", "ece_mass_interval", "mce",
                      "brier", "nll"}
    assert s["ece_floor"][0] <= s["ece_floor"][1] < 0.05 < s["ece"]  # overconfident: far above the noise floor
    assert s["n"] == 2000
    assert s["ece_interval"][0] <= s["ece"] <= s["ece_interval"][1]
    assert s["ece_mass_interval"][0] <= s["ece_mass"] <= s["ece_mass_interval"][1]
    assert s["mce"] >= s["ece"] > 0.05
    assert orjson.loads(orjson.dumps(s)) == s


def test_summary_of_one_item_has_no_intervals() -> None:
    s = summary(PROBS[:1], LABELS[:1], n_boot=50)
    assert s["n"] == 1 and s["ece_interval"] is None and s["ece_mass_interval"] is None
    assert s["ece"] == pytest.approx(0.05)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_data_counts_sum_to_n_and_match_ece(strategy: str) -> None:
    conf, correct = confidence_and_correct(*_calibrated(3000, 4, seed=6))
    data = reliability_data(conf, correct, n_bins=10, strategy=strategy)  # type: ignore[arg-type]
    assert sum(data["count"]) == data["n"] == 3000
    assert len(data["edges"]) == 11 and len(data["confidence"]) == len(data["accuracy"]) == 10
    assert data["ece"] == pytest.approx(ece(conf, correct, 10, strategy))  # type: ignore[arg-type]
    assert orjson.loads(orjson.dumps(data)) == data
    if strategy == "quantile":  # equal mass: every bin holds about n / 10
        assert max(data["count"]) - min(data["count"]) <= 2
    else:  # top-label confidence of 4 classes is >= 1/4, so the lowest bins are empty -> null
        assert data["count"][0] == 0 and data["confidence"][0] is None and data["accuracy"][0] is None


# ------------------------------------------------------------------------------------ plots


def test_reliability_diagram_writes_png_and_json(tmp_path: Path) -> None:
    before = reliability_data(*confidence_and_correct(*_overconfident(2000, seed=7)))
    after = reliability_data(*confidence_and_correct(*_calibrated(2000, 3, seed=7)))
    out = reliability_diagram({"raw": before, "calibrated": after}, tmp_path / "report" / "sentiment.png",
                              "sentiment: before and after")
    assert out == tmp_path / "report" / "sentiment.png"
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    data = orjson.loads(out.with_suffix(".json").read_bytes())
    assert data["title"] == "sentiment: before and after"
    assert data["curves"]["raw"]["count"] == before["count"]
    assert set(data["curves"]) == {"raw", "calibrated"}


def test_equal_mass_ece_with_given_edges_matches_its_own_bins() -> None:
    from streams.calibration.metrics import bin_edges, ece

    rng = np.random.default_rng(5)
    c = rng.uniform(0.5, 1.0, 500)
    k = (rng.uniform(size=500) < c).astype(float)
    edges = bin_edges(c, 15, "quantile")
    assert ece(c, k, edges=edges) == pytest.approx(ece(c, k, 15, "quantile"))
    # Other edges give another partition, so the argument is really used.
    assert ece(c, k, edges=np.array([0.0, 0.75, 1.0])) != pytest.approx(ece(c, k, edges=edges))
