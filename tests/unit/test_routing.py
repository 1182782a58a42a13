"""streams.classify.routing.route: auto vs review, and why."""

from __future__ import annotations

import numpy as np
import pytest

from streams.classify.routing import REVIEW_REASONS, Route, route


def test_no_logprobs_goes_to_review() -> None:
    assert route(None, 1.0, 0.8, 0.5) == Route("review", "no_logprobs", -1)
    assert route(None, 0.0, 0.0, 0.0) == Route("review", "no_logprobs", -1)


def test_low_label_mass_goes_to_review_before_confidence() -> None:
    r = route(np.array([0.99, 0.01]), 0.49, 0.8, 0.5)
    assert r == Route("review", "low_label_mass", 0)


def test_label_mass_at_minimum_is_enough() -> None:
    assert route(np.array([0.1, 0.9]), 0.5, 0.8, 0.5) == Route("auto", None, 1)


def test_below_threshold_is_low_confidence_with_argmax() -> None:
    assert route(np.array([0.3, 0.7]), 0.9, 0.8, 0.5) == Route("review", "low_confidence", 1)
    assert route(np.array([0.2, 0.45, 0.35]), 1.0, 0.5, 0.5) == Route("review", "low_confidence", 1)


def test_at_threshold_is_auto() -> None:
    assert route(np.array([0.8, 0.2]), 0.9, 0.8, 0.5) == Route("auto", None, 0)


def test_above_threshold_is_auto_with_argmax() -> None:
    assert route(np.array([0.05, 0.05, 0.9]), 1.0, 0.8, 0.5) == Route("auto", None, 2)


def test_all_zero_probabilities_go_to_review_without_label() -> None:
    r = route(np.zeros(2), 1.0, 0.8, 0.5)
    assert r.decision == "review"
    assert r.label_index == -1
    assert r.reason in REVIEW_REASONS
    # With zero mass too, it is the mass that is reported.
    assert route(np.zeros(3), 0.0, 0.8, 0.5) == Route("review", "low_label_mass", -1)


def test_threshold_zero_accepts_anything_with_mass() -> None:
    assert route(np.array([0.5, 0.5]), 1.0, 0.0, 0.5) == Route("auto", None, 0)


def test_reasons_are_declared() -> None:
    reasons = {
        route(None, 1.0, 0.8, 0.5).reason,
        route(np.array([0.9, 0.1]), 0.1, 0.8, 0.5).reason,
        route(np.array([0.6, 0.4]), 1.0, 0.8, 0.5).reason,
    }
    assert reasons == {"no_logprobs", "low_label_mass", "low_confidence"}
    assert reasons <= set(REVIEW_REASONS)


def test_label_index_is_a_python_int() -> None:
    r = route(np.array([0.1, 0.9]), 1.0, 0.8, 0.5)
    assert type(r.label_index) is int


def test_nan_probabilities_go_to_review() -> None:
    r = route(np.array([np.nan, np.nan]), 1.0, 0.8, 0.5)
    assert r.decision == "review"
    assert r.reason == "invalid_scores" and r.label_index == -1


def _numpy_route(calibrated: np.ndarray, label_mass: float, threshold: float | None, min_label_mass: float) -> Route:
    """The numpy formulation the per-row fast path replaced, as the reference it must agree with."""
    if not np.isfinite(calibrated).all():
        return Route("review", "invalid_scores", -1)
    if label_mass < min_label_mass or not calibrated.any():
        return Route("review", "low_label_mass", int(np.argmax(calibrated)) if calibrated.any() else -1)
    best = int(np.argmax(calibrated))
    if threshold is None:
        return Route("review", "not_calibrated", best)
    if calibrated[best] < threshold:
        return Route("review", "low_confidence", best)
    return Route("auto", None, best)


def test_row_fast_path_agrees_with_the_numpy_formulation() -> None:
    rng = np.random.default_rng(5)
    values = [0.0, -0.0, 0.5, 0.25, 1.0, float("nan"), float("inf")]
    for _ in range(5000):
        k = int(rng.integers(2, 6))
        row = np.array([values[int(rng.integers(len(values)))] if rng.random() < 0.4 else float(rng.random())
                        for _ in range(k)])
        mass, threshold = float(rng.random()), (None if rng.random() < 0.1 else float(rng.random()))
        assert route(row, mass, threshold, 0.3) == _numpy_route(row, mass, threshold, 0.3), (row, mass, threshold)


def test_a_list_row_routes_like_the_array_row() -> None:
    for row in ([0.1, 0.9], [0.3, 0.7], [0.0, 0.0], [float("nan"), 0.5], [0.5, 0.5]):
        for mass, threshold in ((1.0, 0.8), (0.2, 0.8), (1.0, None), (1.0, 0.0)):
            assert route(row, mass, threshold, 0.5) == route(np.array(row), mass, threshold, 0.5), (row, mass)


def test_route_takes_one_row_only() -> None:
    with pytest.raises(ValueError, match="one row"):
        route(np.array([[0.1, 0.9], [0.8, 0.2]]), 1.0, 0.8, 0.5)
