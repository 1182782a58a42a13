"""Every calibration method by name, how many parameters each fits, and the JSON form of a fitted one."""

from __future__ import annotations

from typing import Any

from streams.calibration.calibrators.beta import BetaCalibration
from streams.calibration.calibrators.constant import ConstantCalibrator
from streams.calibration.calibrators.core import (
    Calibrator,
    HistogramBinning,
    IdentityCalibrator,
    IsotonicCalibrator,
    LabelBiasCorrection,
    TemperatureScaling,
    VectorScaling,
)
from streams.calibration.calibrators.dirichlet import DirichletCalibration
from streams.calibration.calibrators.platt import PlattScaling

METHODS: dict[str, type[Calibrator]] = {
    cls.method: cls
    for cls in (IdentityCalibrator, ConstantCalibrator, TemperatureScaling, PlattScaling, VectorScaling,
                LabelBiasCorrection, BetaCalibration, DirichletCalibration, HistogramBinning, IsotonicCalibrator)
}
DEFAULT_METHODS: tuple[str, ...] = ("identity", "constant", "temperature", "platt", "vector", "beta", "dirichlet",
                                    "isotonic", "histogram", "label_bias")
"""Candidates of the cross-validated selection unless a task lists its own (`[task.calibration] methods`)."""

COMPLEXITY: dict[str, int] = {
    "identity": 0, "constant": 1, "temperature": 2, "platt": 3, "vector": 3, "label_bias": 3, "beta": 4,
    "dirichlet": 5, "histogram": 6, "isotonic": 6,
}
"""Rank for the one-standard-error rule: among methods whose CV loss is within one standard error of
the best, the lowest rank wins (identity < constant < temperature < Platt/vector < beta < Dirichlet <
histogram/isotonic). Non-parametric methods rank last: their effective number of parameters grows
with the data."""

BINARY_ONLY: frozenset[str] = frozenset({"beta"})
ITEMS_PER_PARAMETER = 10
"""A parametric method is tried only with at least this many fit items per parameter."""


def n_params(method: str, k: int) -> int | None:
    """Parameters a method fits on K labels; None for the non-parametric ones (binning, isotonic)."""
    return {"identity": 0, "constant": k - 1, "temperature": 1, "platt": 2 if k == 2 else 2 * k,
            "vector": 2 * k, "label_bias": k, "beta": 3, "dirichlet": k * k + k}.get(method)


MANY_LABELS_ONLY: frozenset[str] = frozenset({"vector"})
"""With two labels, vector scaling's logit w1 ln p1 - w0 ln p0 + b1 - b0 is beta calibration's model, held
toward the identity by its prior: a duplicate of beta that the prior fits worse when the model is far from
calibrated (bench/README.md), so selection tries it for K > 2 only. Fitting it directly still works."""


def unsuitable(method: str, k: int, n: int) -> str | None:
    """Why a method is not tried on n items over K labels, or None when it is."""
    if method in BINARY_ONLY and k != 2:
        return "two labels only"
    if method in MANY_LABELS_ONLY and k == 2:
        return "three labels or more (two: beta calibration)"
    params = n_params(method, k)
    if params is not None and params > 1 and n < ITEMS_PER_PARAMETER * params:
        return f"{params} parameters need >= {ITEMS_PER_PARAMETER * params} items"
    return None


def to_dict(cal: Calibrator) -> dict[str, Any]:
    """{"method", "version", "n_classes", "params"}: JSON-ready, restored by from_dict."""
    return {"method": cal.method, "version": cal.version, "n_classes": getattr(cal, "n_classes_", None),
            "params": cal.params()}


def from_dict(d: dict[str, Any]) -> Calibrator:
    """Rebuild a fitted calibrator from to_dict's output (e.g. after JSON), keeping its version."""
    try:
        cls = METHODS[d["method"]]
    except KeyError:
        raise ValueError(f"unknown calibration method {d.get('method')!r}; known: {sorted(METHODS)}") from None
    cal = cls.from_params(d.get("params", {}))
    cal.version = str(d["version"])
    declared = d.get("n_classes")
    if declared is not None and getattr(cal, "n_classes_", None) not in (None, declared):
        raise ValueError(f"n_classes {declared} does not match the params ({cal.n_classes_})")  # type: ignore[attr-defined]
    return cal
