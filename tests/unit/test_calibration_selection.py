"""Issue 19: the new calibrators (constant, Platt, beta, Dirichlet), the one-standard-error selection with the
base-rate floor, the signal verdict, and calibrators and risk control at K = 3, 10 and 50."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy.special import softmax

from streams import schemas
from streams.calibration import commands
from streams.calibration.calibrators import (
    BINARY_ONLY,
    METHODS,
    BetaCalibration,
    Calibrator,
    ConstantCalibrator,
    DirichletCalibration,
    PlattScaling,
    VectorScaling,
    from_dict,
    select,
    to_dict,
)
from streams.calibration.fitting import fit_and_evaluate
from streams.calibration.metrics import confidence_and_correct, nll
from streams.calibration.registry import CalibratorRegistry
from streams.calibration.risk_control import ltt_threshold
from streams.calibration.signal import signal_report
from streams.calibration.store import calibrator_record
from streams.ops.pages import signal_banner
from streams.tasks import parse_tasks


def tempered(n: int, k: int, t_true: float, seed: int, scale: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), reported probabilities softmax(t_true * z): a known temperature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, size=(n, k))
    y = (softmax(z, axis=1).cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return softmax(t_true * z, axis=1), y


def noise(n: int, k: int, seed: int, base: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores independent of the labels (a model with no signal); labels with the given base rates."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k), size=n)
    return probs, rng.choice(k, size=n, p=base)


def anti_correlated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two labels; the model's probability for label 1 falls when label 1 is true."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.5 - 0.15 * (2 * y - 1) + rng.normal(0, 0.15, n), 0.01, 0.99)
    return np.column_stack([1 - p1, p1]), y


# ----------------------------------------------------------------------------- new calibrators


@pytest.mark.parametrize("cls", [ConstantCalibrator, PlattScaling, BetaCalibration, DirichletCalibration])
def test_new_binary_calibrators_give_distributions_and_round_trip_through_json(cls: type[Calibrator]) -> None:
    probs, y = tempered(800, 2, 2.0, seed=1)
    cal = cls().fit(probs, y)
    cal.version = "v1"
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.9, 0.1]])
    out = cal.transform(rows)
    assert out.shape == rows.shape and np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0)
    assert np.allclose(cal.transform(rows[3]), out[3])
    back = from_dict(orjson.loads(orjson.dumps(to_dict(cal))))
    assert back.version == "v1" and back.method == cls.method
    np.testing.assert_allclose(back.transform(rows), out, rtol=1e-12)


def test_platt_uses_platts_smoothed_targets_so_separable_data_stays_off_zero_and_one() -> None:
    probs = np.array([[0.9, 0.1]] * 20 + [[0.1, 0.9]] * 20)
    y = np.array([0] * 20 + [1] * 20)
    q = PlattScaling().fit(probs, y).transform(np.array([0.1, 0.9]))
    assert 0.9 < q[1] < 1 - 1 / 40  # 0/1 targets would push it to the slope bound and q to ~1


def test_beta_is_for_two_labels_only() -> None:
    probs, y = tempered(200, 3, 1.0, seed=2)
    with pytest.raises(ValueError, match="two labels"):
        BetaCalibration().fit(probs, y)


def test_beta_fixes_an_asymmetric_distortion_that_platt_cannot() -> None:
    rng = np.random.default_rng(3)
    reported = rng.uniform(0.001, 0.999, 6000)
    truth = 1 / (1 + np.exp(-(2.0 * np.log(reported) - 0.5 * np.log(1 - reported) + 1.0)))  # a = 2, b = 0.5
    y = (rng.random(6000) < truth).astype(int)
    probs = np.column_stack([1 - reported, reported])
    fit, test = slice(0, 3000), slice(3000, None)
    beta = BetaCalibration().fit(probs[fit], y[fit])
    platt = PlattScaling().fit(probs[fit], y[fit])
    assert abs(beta.a_ - 2.0) < 0.3 and abs(beta.b_ - 0.5) < 0.3  # recovers the distortion
    assert nll(beta.transform(probs[test]), y[test]) < nll(platt.transform(probs[test]), y[test]) - 0.002


# ------------------------------------------------------------------------------ K = 3, 10, 50


# Dirichlet at K = 50 has 2,550 parameters: selection tries it only from 25,500 fit items on (the next test
# checks it is skipped below that), and a fit that size is too slow for a unit test, so it is not listed here.
@pytest.mark.parametrize(("k", "method"), [(k, m) for k in (3, 10, 50) for m in METHODS
                                           if m not in BINARY_ONLY and (m, k) != ("dirichlet", 50)])
def test_every_calibrator_fits_and_transforms_at_many_labels(k: int, method: str) -> None:
    probs, y = tempered(40 * k, k, 2.0, seed=k)
    cal = METHODS[method]().fit(probs, y)
    out = cal.transform(probs[:7])
    assert out.shape == (7, k) and np.all(np.isfinite(out)) and np.allclose(out.sum(axis=1), 1.0)
    back = from_dict(orjson.loads(orjson.dumps(to_dict(cal))))
    np.testing.assert_allclose(back.transform(probs[:7]), out, rtol=1e-12)


@pytest.mark.parametrize("k", [3, 10, 50])
def test_selection_at_many_labels_skips_what_the_data_cannot_support(k: int) -> None:
    n = 1500 if k == 50 else 600  # vector scaling at K = 50: 100 parameters need 1000 fit items
    probs, y = tempered(n, k, 2.0, seed=100 + k)
    chosen = select(probs, y)
    assert "beta" in chosen.skipped  # two labels only
    assert ("dirichlet" in chosen.skipped) == (k > 3)  # k*k + k parameters need 10 fit items each
    assert chosen.cv_nll[chosen.calibrator.method] <= chosen.cv_nll["constant"]
    assert chosen.calibrator.method in ("temperature", "platt", "vector")


@pytest.mark.parametrize("k", [3, 10, 50])
def test_risk_control_keeps_its_guarantee_at_many_labels(k: int) -> None:
    """LTT on calibrated top-label confidences over K labels: realised error <= target on >= 1 - delta of splits."""
    target, delta, met, feasible = 0.1, 0.1, 0, 0
    for seed in range(40):
        probs, y = tempered(3000, k, 1.0, seed=1000 * k + seed, scale=4.0)  # calibrated by construction
        conf, correct = confidence_and_correct(probs, y)
        rc = ltt_threshold(conf[:1500], correct[:1500], target, delta)
        feasible += rc.feasible
        accepted = conf[1500:] >= rc.threshold if rc.feasible else np.zeros(1500, bool)
        met += (not accepted.any()) or (1 - correct[1500:][accepted].mean()) <= target
    # The guarantee is >= 90% of splits in probability; on 40 splits the binomial(40, 0.9) 5th percentile is 33.
    assert met >= 33 and feasible >= 30  # and the confidences are informative enough to certify a threshold


# ----------------------------------------------------------------------------------- selection


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("k", "base"), [(2, (0.5, 0.5)), (2, (0.7, 0.3)), (4, (0.4, 0.3, 0.2, 0.1))])
def test_pure_noise_selects_identity_or_the_constant(seed: int, k: int, base: tuple[float, ...]) -> None:
    probs, y = noise(800, k, seed, base)
    chosen = select(probs, y)
    assert chosen.calibrator.method in ("identity", "constant"), chosen.table()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_a_known_temperature_selects_temperature(seed: int, t_true: float) -> None:
    probs, y = tempered(1500, 2, t_true, seed=200 + seed)
    chosen = select(probs, y)
    assert chosen.calibrator.method == "temperature", chosen.table()


def test_a_lean_that_temperature_cannot_remove_selects_platt_on_300_items() -> None:
    """Labels from sigmoid(z), the model reports sigmoid(2 z - 1): a slope and a lean. Temperature scaling
    fixes the slope only; the one-standard-error rule must not let it stand in for Platt scaling (with
    Nadeau and Bengio's CV-corrected standard errors it did on 8 of these 20 seeds, against 3 without:
    selection module docstring)."""
    picks = []
    for seed in range(20):
        rng = np.random.default_rng(300 + seed)
        z = rng.normal(0.0, 1.5, 300)
        y = (rng.random(300) < 1.0 / (1.0 + np.exp(-z))).astype(int)
        p1 = 1.0 / (1.0 + np.exp(-(2.0 * z - 1.0)))
        picks.append(select(np.column_stack([1 - p1, p1]), y, seed=seed).calibrator.method)
    assert picks.count("platt") >= 15, picks


def test_vector_scaling_is_a_candidate_from_three_labels_on() -> None:
    """At K = 2 vector scaling is beta calibration's model under a prior toward the identity: skipped."""
    probs, y = tempered(600, 2, 2.0, seed=11)
    assert "vector" in select(probs, y).skipped and "beta" in select(probs, y).cv_nll
    probs, y = tempered(600, 3, 2.0, seed=12)
    assert "vector" in select(probs, y).cv_nll
    assert VectorScaling().fit(*tempered(200, 2, 2.0, seed=13)).n_classes_ == 2  # fitting it directly still works


def test_never_chooses_a_method_worse_than_the_base_rate_on_cv() -> None:
    probs, y = noise(600, 2, 9, (0.8, 0.2))
    chosen = select(probs, y, methods=("identity", "temperature", "histogram"))  # constant not listed
    assert chosen.calibrator.method == "constant" and "constant" in chosen.cv_nll
    assert all(chosen.cv_nll["constant"] <= v for v in chosen.cv_nll.values())


def test_cv_table_prints_standard_errors_and_the_reason() -> None:
    probs, y = tempered(1000, 2, 2.0, seed=5)
    chosen = select(probs, y)
    table = chosen.table()
    assert "SE" in table and "<- chosen" in table and chosen.reason in table
    assert all(se > 0 for se in chosen.cv_se.values())


# -------------------------------------------------------------------------------- signal verdict


def test_signal_verdict_on_anti_correlated_scores() -> None:
    probs, y = anti_correlated(600, seed=1)
    report = signal_report(probs, y, n_boot=300)
    assert report.verdict == "anti_correlated" and report.auroc_interval[1] < 0.5
    warning = report.warning()
    assert warning is not None and "backwards" in warning and "review" in warning and "prompt" in warning


def test_signal_verdict_on_noise_and_on_a_good_model() -> None:
    probs, y = noise(800, 3, seed=2)
    assert signal_report(probs, y, n_boot=300).verdict == "no_signal"
    probs, y = tempered(800, 3, 1.0, seed=3)
    good = signal_report(probs, y, n_boot=300)
    assert good.verdict == "signal" and good.warning() is None and good.auroc_interval[0] > 0.7
    assert good.accuracy > good.majority_rate


TASKS = """
[[task]]
name = "t"
labels = ["yes", "no"]
[task.model]
base_url = "http://127.0.0.1:8080/v1"
name = "m"
"""


def test_calibrate_prints_the_no_signal_warning_on_pure_noise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tasks.toml").write_text(TASKS)
    monkeypatch.setenv("STREAMS_TASKS_FILE", str(tmp_path / "tasks.toml"))
    probs, y = noise(600, 2, seed=4, base=(0.6, 0.4))
    labels = ("yes", "no")
    scores = tmp_path / "scores.jsonl"
    scores.write_bytes(b"\n".join(orjson.dumps({"id": f"i{i}", "label": labels[c], "label_mass": 1.0,
                                                "raw_probabilities": dict(zip(labels, p.tolist(), strict=True))})
                                  for i, (p, c) in enumerate(zip(probs, y, strict=True))))
    rc = commands.main(["--task", "t", "--scores", str(scores), "--no-publish", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "WARNING: the model does no better than the base rate" in out and "go to review" in out
    assert "SE" in out and "<- chosen" in out
    record = orjson.loads((tmp_path / "out" / "calibrator.json").read_bytes())
    assert record["method"] in ("identity", "constant") and record["signal"]["verdict"] == "no_signal"
    schemas.validate("calibrator", record)


def test_a_no_signal_record_sends_everything_to_review_and_reaches_the_dashboard() -> None:
    tasks = parse_tasks(TASKS, "tasks.toml", {})
    task = tasks.tasks["t"]
    registry = CalibratorRegistry(tasks)
    probs, y = noise(400, 2, seed=6)
    outcome = fit_and_evaluate(probs, y, ("identity", "constant", "temperature"), 0.3, n_boot=200)
    record = calibrator_record("t", "first_token_logprobs", "m", task.labels, outcome.calibrator, outcome.fit_size,
                               outcome.heldout_size, outcome.metrics_before, outcome.metrics_after, "calibrate",
                               outcome.cv_nll, None, outcome.cv_se, outcome.signal.to_dict(task.labels))
    schemas.validate("calibrator", record)
    assert registry.threshold(task, "first_token_logprobs") == task.review_threshold
    assert registry.apply(record)
    assert registry.threshold(task, "first_token_logprobs") is None  # routed to review: not_calibrated
    signals = registry.signals()
    assert signals["t/first_token_logprobs@m"]["verdict"] == "no_signal"
    html = signal_banner("t", signals)
    assert "No signal" in html and "review" in html and 'data-verdict="no_signal"' in html
    assert signal_banner("other", signals) == ""


def test_the_base_rate_floor_is_fitted_however_few_the_items() -> None:
    """10 labels and 100 items: too few for the floor's own 10-items-per-parameter rule, yet it is the floor
    every method is judged against, so selection must fit it rather than fail looking it up."""
    probs, y = tempered(100, 10, 2.0, seed=7)
    chosen = select(probs, y)
    assert "constant" not in chosen.skipped and "constant" in chosen.cv_nll
