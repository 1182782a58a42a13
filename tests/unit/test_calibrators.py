"""streams.calibration.calibrators: fitted calibrators, their JSON round trip, and CV selection."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from scipy.special import log_softmax, softmax

from streams.calibration.calibrators import (
    BINARY_ONLY,
    EPS,
    METHODS,
    Calibrator,
    HistogramBinning,
    IdentityCalibrator,
    IsotonicCalibrator,
    LabelBiasCorrection,
    NotFittedError,
    TemperatureScaling,
    VectorScaling,
    from_dict,
    select_calibrator,
    to_dict,
)
from streams.calibration.metrics import accuracy, nll

FITTED = [m for m in METHODS if m != "identity" and m not in BINARY_ONLY]  # K = 3 below; beta: test_calibrators_new.py


def _true_logits(n: int, k: int, seed: int, scale: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Logits z ~ N(0, scale) and labels drawn from softmax(z): softmax(z) is calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, size=(n, k))
    labels = (softmax(z, axis=1).cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return z, labels


def _miscalibrated(n: int, k: int, t_true: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed probabilities softmax(z * t_true): t_true > 1 over-confident, < 1 under-confident."""
    z, labels = _true_logits(n, k, seed)
    return softmax(z * t_true, axis=1), labels, z


def _fitted(method: str, k: int = 3) -> Calibrator:
    probs, labels, _ = _miscalibrated(600, k, 2.0, seed=11)
    return METHODS[method]().fit(probs, labels)


EDGE_ROWS = np.array([
    [1.0, 0.0, 0.0],      # certainty on one label
    [0.0, 0.0, 1.0],
    [0.5, 0.5, 0.0],      # a label missing from the top-k
    [0.2, 0.3, 0.5],
    [1 / 3, 1 / 3, 1 / 3],
])


# ------------------------------------------------------------------------- temperature recovery


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_temperature_scaling_recovers_the_distorting_temperature(t_true: float) -> None:
    # observed log p = t_true * z + c, calibrated = softmax(log p / T): T = t_true undoes it,
    # i.e. 1 / T_fitted is the factor that maps observed log-probabilities back to the true logits.
    probs, labels, z = _miscalibrated(10_000, 4, t_true, seed=3)
    cal = TemperatureScaling().fit(probs, labels)
    assert abs(cal.temperature_ / t_true - 1.0) < 0.05
    assert (cal.temperature_ > 1.0) == (t_true > 1.0)  # over-confident input is softened, and vice versa
    recovered = log_softmax(np.log(probs) / cal.temperature_, axis=1)
    assert np.abs(recovered - log_softmax(z, axis=1)).mean() < 0.1
    assert np.abs(np.log(probs) - log_softmax(z, axis=1)).mean() > 0.5  # the raw ones were far off


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_temperature_within_five_percent_at_n_2000_on_nine_splits_in_ten(t_true: float) -> None:
    """At n = 2000 the estimate's own noise is 2.5-4% (sd), so "within 5%" is a statement about a share
    of samples: at least 90% of 50 seeded draws. (At n = 10,000 every draw is, see above.)"""
    errors = []
    for seed in range(50):
        probs, labels, _ = _miscalibrated(2000, 4, t_true, seed=100 + seed)
        errors.append(abs(TemperatureScaling().fit(probs, labels).temperature_ / t_true - 1.0))
    within = sum(e <= 0.05 for e in errors)
    assert within >= 45, f"{within}/50 within 5%; errors {sorted(errors)[-5:]}"


def test_temperature_fit_is_the_bounded_nll_minimum() -> None:
    """Newton on 1/T lands on the minimum a bounded scalar search finds, sharpening (T < 1, as on the
    Rotten Tomatoes scores) and softening alike, and at a bound when the optimum lies beyond it."""
    from scipy.optimize import minimize_scalar

    for t_true, bounds in ((0.3, (0.05, 20.0)), (3.0, (0.05, 20.0)), (0.3, (0.5, 20.0))):
        probs, labels, _ = _miscalibrated(3000, 2, t_true, seed=21)
        logp = np.log(np.clip(probs, EPS, 1.0))

        def mean_nll(t: float, logp: np.ndarray = logp, labels: np.ndarray = labels) -> float:
            return float(-log_softmax(logp / t, axis=1)[np.arange(len(labels)), labels].mean())

        ref = minimize_scalar(mean_nll, bounds=bounds, method="bounded", options={"xatol": 1e-9}).x
        fitted = TemperatureScaling(bounds=bounds).fit(probs, labels).temperature_
        assert fitted == pytest.approx(ref, rel=1e-5), (t_true, bounds)
        assert mean_nll(fitted) <= mean_nll(ref) + 1e-12
    assert TemperatureScaling(bounds=(0.5, 20.0)).fit(probs, labels).temperature_ == pytest.approx(0.5)


def test_temperature_of_calibrated_data_is_near_one() -> None:
    probs, labels, _ = _miscalibrated(10_000, 3, 1.0, seed=4)
    assert TemperatureScaling().fit(probs, labels).temperature_ == pytest.approx(1.0, rel=0.05)


def test_temperature_keeps_the_top_label() -> None:
    probs, labels, _ = _miscalibrated(500, 4, 2.0, seed=5)
    cal = TemperatureScaling().fit(probs, labels)
    assert np.array_equal(cal.transform(probs).argmax(axis=1), probs.argmax(axis=1))


# ----------------------------------------------------------------------- output contract, all


@pytest.mark.parametrize("method", [m for m in METHODS if m not in BINARY_ONLY])
def test_transform_returns_distributions_for_rows_and_batches(method: str) -> None:
    cal = _fitted(method)
    probs, _, _ = _miscalibrated(200, 3, 2.0, seed=12)
    batch = np.vstack([probs, EDGE_ROWS])
    out = cal.transform(batch)
    assert out.shape == batch.shape
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-12)
    for row, expected in zip(batch, out, strict=True):
        single = cal.transform(row)
        assert single.shape == (3,)
        assert np.allclose(single, expected, atol=1e-12)


@pytest.mark.parametrize("method", FITTED)
def test_fitted_calibrators_turn_an_all_zero_row_into_a_distribution(method: str) -> None:
    out = _fitted(method).transform(np.zeros(3))
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    assert out.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("method", FITTED)
def test_fit_accepts_zeros_and_ones_in_the_input(method: str) -> None:
    probs, labels, _ = _miscalibrated(300, 3, 2.0, seed=13)
    probs = np.vstack([probs, EDGE_ROWS, EDGE_ROWS])
    labels = np.r_[labels, [0, 2, 1, 2, 0, 1, 0, 0, 2, 1]]
    out = METHODS[method]().fit(probs, labels).transform(probs)
    assert np.all(np.isfinite(out)) and np.allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in BINARY_ONLY])
def test_json_round_trip_restores_an_identical_calibrator(method: str) -> None:
    cal = _fitted(method)
    cal.version = f"{method}-2024-06-01T00:00:00Z"
    record = orjson.loads(orjson.dumps(to_dict(cal)))
    assert set(record) == {"method", "version", "n_classes", "params"}
    assert record["method"] == method
    restored = from_dict(record)
    assert type(restored) is type(cal)
    assert restored.version == cal.version
    probs, _, _ = _miscalibrated(300, 3, 2.0, seed=14)
    batch = np.vstack([probs, EDGE_ROWS])
    assert np.allclose(restored.transform(batch), cal.transform(batch), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", FITTED)
def test_unversioned_default_and_k_check(method: str) -> None:
    cal = _fitted(method)
    assert cal.version == f"{method}-unversioned"
    assert to_dict(cal)["n_classes"] == 3
    with pytest.raises(ValueError, match="expects shape"):
        cal.transform(np.array([0.5, 0.5]))


@pytest.mark.parametrize("method", FITTED)
def test_unfitted_calibrator_refuses_to_transform(method: str) -> None:
    with pytest.raises(NotFittedError):
        METHODS[method]().transform(np.array([0.5, 0.5]))


def test_identity_keeps_its_version_and_the_raw_row() -> None:
    cal = IdentityCalibrator()
    assert cal.version == "identity-0" and cal.method == "identity"
    row = np.array([0.25, 0.75, 0.0])
    assert np.array_equal(cal.transform(row), row)
    assert isinstance(cal, Calibrator)


def test_from_dict_rejects_unknown_methods_and_bad_params() -> None:
    with pytest.raises(ValueError, match="unknown calibration method"):
        from_dict({"method": "magic", "version": "x", "params": {}})
    with pytest.raises(ValueError, match="temperature"):
        from_dict({"method": "temperature", "version": "x", "params": {"temperature": 0.0, "n_classes": 2}})
    good = to_dict(_fitted("vector"))
    with pytest.raises(ValueError, match="n_classes"):
        from_dict({**good, "n_classes": 5})


def test_fit_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        TemperatureScaling().fit(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([0, 2]))


# ------------------------------------------------------------------- each method does its job


@pytest.mark.parametrize("method", ["temperature", "vector", "isotonic", "histogram"])
@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_fitting_improves_held_out_nll_on_miscalibrated_data(method: str, t_true: float) -> None:
    probs, labels, _ = _miscalibrated(4000, 3, t_true, seed=21)
    fit, test = slice(0, 2000), slice(2000, None)
    cal = METHODS[method]().fit(probs[fit], labels[fit])
    raw, calibrated = nll(probs[test], labels[test]), nll(cal.transform(probs[test]), labels[test])
    assert calibrated < raw - 0.02, (raw, calibrated)


def test_vector_scaling_corrects_a_per_class_bias_that_temperature_cannot() -> None:
    z, labels = _true_logits(4000, 3, seed=22)
    probs = softmax(z * 1.5 + np.log([0.6, 0.3, 0.1]), axis=1)
    fit, test = slice(0, 2000), slice(2000, None)
    vector = VectorScaling().fit(probs[fit], labels[fit])
    temperature = TemperatureScaling().fit(probs[fit], labels[fit])
    assert (nll(vector.transform(probs[test]), labels[test])
            < nll(temperature.transform(probs[test]), labels[test]) - 0.01)


def test_vector_scaling_stays_near_identity_with_little_data() -> None:
    probs, labels, _ = _miscalibrated(8, 3, 1.0, seed=23)
    cal = VectorScaling().fit(probs, labels)
    assert np.all(np.abs(cal.coef_ - 1.0) < 1.0) and np.all(np.abs(cal.intercept_) < 1.0)


def test_isotonic_maps_are_non_decreasing_step_functions() -> None:
    cal = _fitted("isotonic")
    assert isinstance(cal, IsotonicCalibrator)
    for x, y in zip(cal.x_thresholds_, cal.y_thresholds_, strict=True):
        assert np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0)
        assert y.min() >= 0 and y.max() <= 1


def _skewed(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident and biased toward label 0, so each class needs a different one-vs-rest map."""
    z, labels = _true_logits(n, 3, seed)
    return softmax(z * 1.5 + np.log([0.6, 0.3, 0.1]), axis=1), labels


def _renormalised(q: np.ndarray) -> np.ndarray:
    q = np.maximum(q, EPS)
    return q / q.sum(axis=1, keepdims=True)


def test_isotonic_applies_each_class_its_own_map() -> None:
    probs, labels = _skewed(2000, seed=24)
    cal = IsotonicCalibrator().fit(probs, labels)
    grid = np.linspace(0, 1, 101)
    maps = [np.interp(grid, x, y) for x, y in zip(cal.x_thresholds_, cal.y_thresholds_, strict=True)]
    assert np.abs(maps[0] - maps[2]).max() > 0.1  # the classes really differ
    knots = zip(cal.x_thresholds_, cal.y_thresholds_, strict=True)
    expected = _renormalised(np.column_stack([np.interp(probs[:, k], x, y) for k, (x, y) in enumerate(knots)]))
    assert np.allclose(cal.transform(probs), expected, rtol=0, atol=1e-12)


def test_histogram_applies_each_class_its_own_bins() -> None:
    probs, labels = _skewed(2000, seed=25)
    cal = HistogramBinning().fit(probs, labels)
    assert not np.allclose(cal.edges_[0], cal.edges_[2])
    bins = zip(cal.edges_, cal.values_, strict=True)
    expected = _renormalised(np.column_stack(
        [v[np.searchsorted(e, probs[:, k], side="left")] for k, (e, v) in enumerate(bins)]))
    assert np.allclose(cal.transform(probs), expected, rtol=0, atol=1e-12)


def test_histogram_prior_keeps_small_bins_off_zero_and_one() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])
    cal = HistogramBinning(n_bins=4).fit(probs, np.array([0, 0, 1, 1]))
    for values in cal.values_:
        assert np.all(values > 0) and np.all(values < 1)
    # a bin of one positive item with prior 2 at base rate 0.5: (1 + 2 * 0.5) / (1 + 2)
    assert cal.values_[0].max() == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------- label bias


def _biased(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels; the model adds a log-prior favouring label 0."""
    z, labels = _true_logits(n, 3, seed)
    return softmax(z + np.log([0.6, 0.3, 0.1]), axis=1), labels


def _distance_from_uniform(predicted: np.ndarray, k: int) -> float:
    return float(np.abs(np.bincount(predicted, minlength=k) / len(predicted) - 1 / k).sum())


def test_label_bias_correction_removes_a_known_log_prior() -> None:
    probs, labels = _biased(6000, seed=31)
    fit, test = slice(0, 3000), slice(3000, None)
    cal = LabelBiasCorrection().fit(probs[fit], labels[fit])
    assert cal.mean_p_.argmax() == 0 and cal.mean_p_.argmin() == 2
    corrected = cal.transform(probs[test])
    before = _distance_from_uniform(probs[test].argmax(axis=1), 3)
    after = _distance_from_uniform(corrected.argmax(axis=1), 3)
    assert after < before / 2, (before, after)
    assert accuracy(corrected, labels[test]) > accuracy(probs[test], labels[test]) + 0.02


def test_label_bias_fit_ignores_labels() -> None:
    probs, labels = _biased(500, seed=32)
    a = LabelBiasCorrection().fit(probs, labels)
    b = LabelBiasCorrection().fit(probs, np.zeros_like(labels))
    assert np.array_equal(a.mean_p_, b.mean_p_)


def test_label_bias_reads_records_that_still_carry_decay() -> None:
    # Records published while LabelBiasCorrection had an `update` method also carry its "decay".
    old = {"method": "label_bias", "version": "label_bias-7", "n_classes": 3,
           "params": {"mean_p": [0.5, 0.3, 0.2], "decay": 0.999, "n_classes": 3}}
    cal = from_dict(orjson.loads(orjson.dumps(old)))
    assert isinstance(cal, LabelBiasCorrection) and cal.version == "label_bias-7"
    np.testing.assert_allclose(cal.mean_p_, [0.5, 0.3, 0.2])
    assert "decay" not in cal.params() and from_dict(to_dict(cal)).params() == cal.params()


# -------------------------------------------------------------------------------- selection


def test_select_calibrator_picks_a_scaling_method_on_temperature_distorted_data() -> None:
    probs, labels, _ = _miscalibrated(3000, 3, 2.5, seed=41)
    fit, test = slice(0, 1500), slice(1500, None)
    cal, scores = select_calibrator(probs[fit], labels[fit])
    assert set(scores) == set(METHODS) - BINARY_ONLY  # K = 3: beta is for two labels
    assert cal.method == "temperature"  # a known temperature: the simplest method within one SE of the best
    assert scores["temperature"] < scores["identity"] - 0.1
    assert nll(cal.transform(probs[test]), labels[test]) < nll(probs[test], labels[test]) - 0.1


def test_select_calibrator_does_not_beat_identity_by_much_on_calibrated_data() -> None:
    probs, labels, _ = _miscalibrated(3000, 3, 1.0, seed=42)
    fit, test = slice(0, 1500), slice(1500, None)
    cal, scores = select_calibrator(probs[fit], labels[fit])
    assert scores["identity"] - min(scores.values()) < 0.01
    assert nll(cal.transform(probs[test]), labels[test]) < nll(probs[test], labels[test]) + 0.01


def test_select_calibrator_is_deterministic_and_honours_methods() -> None:
    probs, labels, _ = _miscalibrated(400, 3, 2.0, seed=43)
    a = select_calibrator(probs, labels, methods=("identity", "temperature"), folds=4, seed=7)
    b = select_calibrator(probs, labels, methods=("identity", "temperature"), folds=4, seed=7)
    assert a[1] == b[1] and set(a[1]) == {"identity", "temperature", "constant"}  # the floor is always scored
    with pytest.raises(ValueError, match="unknown"):
        select_calibrator(probs, labels, methods=("identity", "nonsense"))


def test_select_calibrator_falls_back_to_identity_with_too_little_data() -> None:
    probs, labels, _ = _miscalibrated(9, 3, 2.5, seed=44)
    cal, scores = select_calibrator(probs, labels, folds=5)
    assert isinstance(cal, IdentityCalibrator) and scores == {}


def test_eps_is_the_documented_floor() -> None:
    assert EPS == 1e-6
