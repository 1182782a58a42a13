"""streams.calibration.risk_control: Learn-then-Test thresholds with a finite-sample error guarantee."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
import scipy.stats

from streams.calibration.risk_control import (
    RiskControlledThreshold,
    accept,
    binomial_pvalues,
    hb_pvalues,
    ltt_threshold,
)

ALPHA = 0.02
DELTA = 0.10
N_CAL = 2_000
N_TEST = 20_000
N_SPLITS = 1_000  # the within-target share is ~0.94 here; 1000 splits put 0.90 about five standard errors away


def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Informative confidence: conf ~ Beta(2.2, 1), P(correct | conf) = 1 - (1 - conf)^2; ~15% wrong overall."""
    conf = rng.beta(2.2, 1.0, n)
    correct = rng.random(n) < 1.0 - (1.0 - conf) ** 2
    return conf, correct


def naive_threshold(conf: np.ndarray, correct: np.ndarray, alpha: float) -> float:
    """The tempting rule: the lowest threshold whose calibration error rate is <= alpha (no guarantee)."""
    order = np.argsort(-conf, kind="stable")
    err = np.cumsum(~correct[order]) / np.arange(1, conf.size + 1)
    ok = np.nonzero(err <= alpha)[0]
    return float(conf[order][ok[-1]]) if ok.size else math.inf


def held_out_error(conf: np.ndarray, correct: np.ndarray, threshold: float) -> float:
    """Error rate among auto-accepted held-out items; accepting nothing makes no errors."""
    accepted = conf >= threshold
    return float((~correct[accepted]).mean()) if accepted.any() else 0.0


@pytest.fixture(scope="module")
def simulation() -> dict[str, np.ndarray]:
    """Per split: fresh calibration and held-out draws; LTT and the naive rule both fitted on calibration."""
    rng = np.random.default_rng(20240611)
    ltt_error, ltt_coverage, naive_error = np.empty(N_SPLITS), np.empty(N_SPLITS), np.empty(N_SPLITS)
    for i in range(N_SPLITS):
        cal_conf, cal_ok = draw(rng, N_CAL)
        test_conf, test_ok = draw(rng, N_TEST)
        rc = ltt_threshold(cal_conf, cal_ok, ALPHA, DELTA)
        ltt_error[i] = held_out_error(test_conf, test_ok, rc.threshold)
        ltt_coverage[i] = accept(test_conf, rc).mean()
        naive_error[i] = held_out_error(test_conf, test_ok, naive_threshold(cal_conf, cal_ok, ALPHA))
    return {"ltt_error": ltt_error, "ltt_coverage": ltt_coverage, "naive_error": naive_error}


# --- the guarantee ----------------------------------------------------------------------------------


def test_overall_error_is_about_fifteen_percent() -> None:
    _, correct = draw(np.random.default_rng(1), 200_000)
    assert 0.12 < 1.0 - correct.mean() < 0.18


def test_ltt_held_out_error_within_target_in_at_least_1_minus_delta_of_splits(
    simulation: dict[str, np.ndarray],
) -> None:
    frac = float(np.mean(simulation["ltt_error"] <= ALPHA))
    mean_cov = float(simulation["ltt_coverage"].mean())
    print(f"\nLTT: held-out error <= {ALPHA:.0%} in {frac:.3f} of {N_SPLITS} splits; mean coverage {mean_cov:.3f}")
    assert frac >= 1.0 - DELTA
    assert mean_cov > 0.20  # not passed trivially by sending everything to review


def test_naive_rule_violates_target_too_often(simulation: dict[str, np.ndarray]) -> None:
    rate = float(np.mean(simulation["naive_error"] > ALPHA))
    print(f"\nnaive rule: held-out error > {ALPHA:.0%} in {rate:.3f} of {N_SPLITS} splits")
    assert rate > DELTA  # the guarantee test above can fail, and does for a rule without the guarantee


# --- exact behaviour ----------------------------------------------------------------------------------


def _staircase() -> tuple[np.ndarray, np.ndarray]:
    """0.99: 100 right; 0.9: 100 with 2 wrong; 0.8: 100 with 20 wrong; 0.7: 400 right."""
    conf = np.repeat([0.99, 0.9, 0.8, 0.7], [100, 100, 100, 400])
    correct = np.ones(conf.size, dtype=bool)
    correct[100:102] = False
    correct[200:220] = False
    return conf, correct


def test_exact_binomial_fixed_sequence_by_hand() -> None:
    conf, correct = _staircase()
    alpha, delta = 0.05, 0.10
    p99 = 0.95**100  # ~0.0059 <= 0.1: reject
    p90 = sum(math.comb(200, j) * alpha**j * (1 - alpha) ** (200 - j) for j in range(3))  # k=2, n=200: ~0.0023
    p80 = scipy.stats.binom.cdf(22, 300, alpha)  # ~0.97: stop here
    p70 = scipy.stats.binom.cdf(22, 700, alpha)  # ~0.011 would reject, but the sequence has already stopped
    assert p99 <= delta and p90 <= delta and p80 > delta and p70 <= delta

    rc = ltt_threshold(conf, correct, alpha, delta)
    assert rc.feasible
    assert rc.threshold == 0.9
    assert rc.n_accepted == 200 and rc.n_calibration == 700
    assert rc.coverage == pytest.approx(200 / 700)
    assert rc.empirical_error == pytest.approx(2 / 200)
    assert rc.p_value == pytest.approx(p90, rel=1e-9)
    assert rc.method == "ltt-binomial"
    assert accept(conf, rc).sum() == 200


def test_single_level_all_correct() -> None:
    rc = ltt_threshold(np.full(100, 0.99), np.ones(100, dtype=bool), 0.05, 0.10)
    assert rc.feasible and rc.threshold == 0.99
    assert rc.p_value == pytest.approx(0.95**100)


def test_too_few_items_fail_to_reject_without_ending_the_sequence() -> None:
    # One item above the staircase: n=1 can never reach p <= delta, so it is skipped, not fatal.
    conf, correct = _staircase()
    conf, correct = np.append(conf, 0.999), np.append(correct, True)
    assert ltt_threshold(conf, correct, 0.05, 0.10).threshold == 0.9
    # But a required minimum above every level's count leaves nothing testable.
    rc = ltt_threshold(conf, correct, 0.05, 0.10, min_accepted=10_000)
    assert not rc.feasible and rc.threshold == math.inf


def test_infeasible_when_confidence_is_uninformative() -> None:
    rng = np.random.default_rng(7)
    conf = rng.random(5_000)
    correct = rng.random(5_000) < 0.5
    rc = ltt_threshold(conf, correct, ALPHA, DELTA)
    assert not rc.feasible
    assert rc.threshold == math.inf
    assert rc.n_accepted == 0 and rc.coverage == 0.0
    assert rc.empirical_error is None and rc.p_value is None
    assert not accept(conf, rc).any()
    assert not accept(np.array([1.0, 1e9]), rc).any()
    d = rc.to_dict()
    assert d["threshold"] is None and d["feasible"] is False
    json.dumps(d)


def test_to_dict_is_json_serialisable_when_feasible() -> None:
    conf, correct = _staircase()
    d = json.loads(json.dumps(ltt_threshold(conf, correct, 0.05, 0.10).to_dict()))
    assert d["threshold"] == 0.9 and d["n_accepted"] == 200 and d["method"] == "ltt-binomial"
    assert set(d) == set(RiskControlledThreshold.__dataclass_fields__)


def test_grid_thinning_and_prespecified_grid(one_dataset: tuple[np.ndarray, np.ndarray]) -> None:
    conf, correct = one_dataset
    thinned = ltt_threshold(conf, correct, ALPHA, DELTA, max_grid=50)
    assert thinned.feasible and thinned.threshold in set(conf.tolist())  # quantiles are observed values
    fixed_grid = np.linspace(0.0, 1.0, 201)
    fixed = ltt_threshold(conf, correct, ALPHA, DELTA, grid=fixed_grid)
    assert fixed.feasible and np.isclose(fixed_grid, fixed.threshold).any()
    assert fixed.n_accepted == int((conf >= fixed.threshold).sum())


# --- monotonicity and the HB variant -----------------------------------------------------------------


@pytest.fixture(scope="module")
def one_dataset() -> tuple[np.ndarray, np.ndarray]:
    return draw(np.random.default_rng(99), 3_000)


def test_larger_delta_never_raises_threshold(one_dataset: tuple[np.ndarray, np.ndarray]) -> None:
    conf, correct = one_dataset
    thresholds = [ltt_threshold(conf, correct, ALPHA, d).threshold for d in (0.01, 0.05, 0.1, 0.2, 0.5)]
    assert all(np.isfinite(thresholds))
    assert all(a >= b for a, b in itertools.pairwise(thresholds)), thresholds
    assert thresholds[0] > thresholds[-1]


def test_larger_alpha_never_raises_threshold(one_dataset: tuple[np.ndarray, np.ndarray]) -> None:
    conf, correct = one_dataset
    thresholds = [ltt_threshold(conf, correct, a, DELTA).threshold for a in (0.01, 0.02, 0.05, 0.1, 0.2)]
    assert all(a >= b for a, b in itertools.pairwise(thresholds)), thresholds
    assert thresholds[0] > thresholds[-1]


def test_hb_pvalues_never_below_binomial() -> None:
    n = np.repeat(np.arange(1, 401), 401)
    k = np.tile(np.arange(0, 401), 400)
    keep = k <= n
    for alpha in (0.01, 0.02, 0.1, 0.3):
        hb = hb_pvalues(k[keep], n[keep], alpha)
        exact = binomial_pvalues(k[keep], n[keep], alpha)
        assert np.all(hb >= exact * (1 - 1e-12))
        assert np.all((hb >= 0) & (hb <= 1))


def test_hb_at_least_as_conservative_as_binomial(one_dataset: tuple[np.ndarray, np.ndarray]) -> None:
    conf, correct = one_dataset
    for alpha in (0.02, 0.05, 0.1):
        exact = ltt_threshold(conf, correct, alpha, DELTA)
        hb = ltt_threshold(conf, correct, alpha, DELTA, pvalue="hb")
        assert hb.method == "ltt-hb"
        assert hb.threshold >= exact.threshold
        assert hb.coverage <= exact.coverage
    assert ltt_threshold(conf, correct, 0.05, DELTA, pvalue="hb").feasible  # the comparison is not inf >= inf


# --- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_error": 0.0}, "target_error"),
        ({"target_error": 1.0}, "target_error"),
        ({"target_error": -0.1}, "target_error"),
        ({"target_error": float("nan")}, "target_error"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.5}, "delta"),
        ({"pvalue": "wald"}, "pvalue"),
        ({"max_grid": 0}, "max_grid"),
        ({"correct": np.ones(9, dtype=bool)}, "same length"),
        ({"confidence": np.array([]), "correct": np.array([], dtype=bool)}, "at least one"),
        ({"confidence": np.array([0.5] * 9 + [np.nan])}, "finite"),
        ({"correct": np.full(10, 2)}, "boolean"),
    ],
)
def test_invalid_input_raises(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "confidence": np.linspace(0, 1, 10),
        "correct": np.ones(10, dtype=bool),
        "target_error": 0.05,
        "delta": 0.1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ltt_threshold(**args)
