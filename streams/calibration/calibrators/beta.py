"""Beta calibration for two labels (Kull, Silva Filho and Flach, 2017)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Self

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from streams.calibration.calibrators.core import (
    BIAS_BOUNDS,
    WEIGHT_BOUNDS,
    _fit_inputs,
    _FittedCalibrator,
)
from streams.calibration.metrics import EPS

log = logging.getLogger(__name__)


class BetaCalibration(_FittedCalibrator):
    """p1' = sigmoid(a ln p1 - b ln p0 + c) with a, b >= 0: beta calibration (Kull et al., 2017).

    Two slopes instead of Platt's one: the map can be S-shaped or inverse-S-shaped and need not be
    symmetric, which suits scores piled up near 0 or 1 (Platt is the case a = b). It is the logistic
    regression of the label on (ln p1, -ln p0), the "abm" model of the paper, fitted by NLL with
    L-BFGS-B; a, b >= 0 keeps the map non-decreasing. Two labels only (selection skips it otherwise).

    Parameters
    ----------
    version
        Label of the fitted calibrator carried in every result (default "beta-unversioned").

    Attributes
    ----------
    a_, b_, c_ : float
        The fitted parameters.

    References
    ----------
    Kull, Silva Filho, Flach. Beta calibration: a well-founded and easily implemented improvement on
    logistic calibration for binary classifiers. AISTATS 2017.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> logit = rng.normal(0.0, 1.5, 400)
    >>> labels = (rng.random(400) < 1 / (1 + np.exp(-logit))).astype(int)
    >>> p1 = 1 / (1 + np.exp(-2 * logit))  # over-confident: a = b = 0.5 would undo it
    >>> cal = BetaCalibration().fit(np.column_stack([1 - p1, p1]), labels)
    >>> round(cal.a_, 2), round(cal.b_, 2), round(cal.c_, 2)
    (0.61, 0.46, 0.06)
    >>> cal.transform(np.array([0.9, 0.1])).round(2).tolist()
    [0.79, 0.21]
    """

    method: ClassVar[str] = "beta"
    a_: float
    b_: float
    c_: float

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Self:
        p, y = _fit_inputs(probs, labels)
        if p.shape[1] != 2:
            raise ValueError(f"beta calibration is for two labels, got {p.shape[1]}")
        x = np.column_stack([np.log(np.maximum(p[:, 1], EPS)), -np.log(np.maximum(p[:, 0], EPS)), np.ones(len(y))])
        t = (y == 1).astype(np.float64)

        def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            s = x @ theta
            loss = -np.sum(t * log_expit(s) + (1.0 - t) * log_expit(-s))
            return loss / len(t), x.T @ (expit(s) - t) / len(t)

        res = minimize(loss_and_grad, np.array([1.0, 1.0, 0.0]), jac=True, method="L-BFGS-B",
                       bounds=[WEIGHT_BOUNDS, WEIGHT_BOUNDS, BIAS_BOUNDS])
        if not res.success:
            log.warning("beta calibration fit did not converge: %s", res.message)
        return self._set(*(float(v) for v in res.x))

    def _set(self, a: float, b: float, c: float) -> Self:
        if not (WEIGHT_BOUNDS[0] <= a <= WEIGHT_BOUNDS[1] and WEIGHT_BOUNDS[0] <= b <= WEIGHT_BOUNDS[1]
                and abs(c) <= BIAS_BOUNDS[1]):
            raise ValueError("beta calibration parameters outside their bounds")
        self.a_, self.b_, self.c_, self.n_classes_ = a, b, c, 2
        return self

    def _transform(self, p: np.ndarray) -> np.ndarray:
        s = self.a_ * np.log(np.maximum(p[..., 1], EPS)) - self.b_ * np.log(np.maximum(p[..., 0], EPS)) + self.c_
        q1 = expit(s)
        return np.stack([1.0 - q1, q1], axis=-1)

    def params(self) -> dict[str, Any]:
        self._k()
        return {"a": self.a_, "b": self.b_, "c": self.c_, "n_classes": 2}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        return cls()._set(float(params["a"]), float(params["b"]), float(params["c"]))
