"""Platt scaling: a sigmoid of the log-odds, fitted to Platt's smoothed targets."""

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
    _floats,
    _normalise,
)
from streams.calibration.metrics import EPS

log = logging.getLogger(__name__)


def _log_odds(p: np.ndarray) -> np.ndarray:
    """log p - log(1 - p), floored at EPS on both sides (rows hold exact zeros and ones)."""
    q = np.clip(p, EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def platt_targets(hits: np.ndarray) -> np.ndarray:
    """Platt's (1999) smoothed targets: (N+ + 1) / (N+ + 2) for positives, 1 / (N- + 2) for negatives.

    A maximum-a-posteriori correction: with 0/1 targets a separable fit set drives the slope to
    infinity; these targets keep the fitted probabilities off 0 and 1 by about one item's worth.
    """
    n_pos = float(hits.sum())
    n_neg = float(len(hits) - n_pos)
    return np.where(hits > 0, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def fit_sigmoids(z: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes a and offsets b, shape (m,), minimising the cross-entropy of sigmoid(a z + b) against soft
    targets, column by column of z and targets (n, m). The columns' losses are independent, so one
    L-BFGS-B run over all 2m parameters fits them together (one scipy call instead of m)."""
    m = z.shape[1]

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = theta[:m], theta[m:]
        s = z * a + b
        loss = -np.sum(targets * log_expit(s) + (1.0 - targets) * log_expit(-s))
        r = expit(s) - targets
        return loss / len(z), np.concatenate([np.sum(r * z, axis=0), np.sum(r, axis=0)]) / len(z)

    res = minimize(loss_and_grad, np.r_[np.ones(m), np.zeros(m)], jac=True, method="L-BFGS-B",
                   bounds=[WEIGHT_BOUNDS] * m + [BIAS_BOUNDS] * m)
    if not res.success:
        log.warning("Platt fit did not converge: %s", res.message)
    return res.x[:m], res.x[m:]


class PlattScaling(_FittedCalibrator):
    """sigmoid(a * logit(p) + b) (Platt, 1999), fitted to Platt's smoothed targets.

    For K = 2 one sigmoid maps the log-odds log(p1 / p0) to the calibrated p1. For K > 2 each label
    gets its own sigmoid of logit(p_k), one-vs-rest, and the row is renormalised (as scikit-learn's
    `CalibratedClassifierCV(method="sigmoid")` does). The slope is kept in [0, 20], so the map never
    turns a score around: a model whose scores run backwards is reported by the signal verdict
    (`streams.calibration.signal`), not silently inverted.

    Parameters
    ----------
    version
        Label of the fitted calibrator carried in every result (default "platt-unversioned").

    Attributes
    ----------
    coef_ : ndarray of shape (1,) for K = 2, else (K,)
        Slopes a.
    intercept_ : ndarray of the same shape
        Offsets b.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> logit = rng.normal(0.0, 1.5, 400)
    >>> labels = (rng.random(400) < 1 / (1 + np.exp(-logit))).astype(int)
    >>> p1 = 1 / (1 + np.exp(-(2 * logit - 1.0)))  # a = b = 0.5 would undo it
    >>> cal = PlattScaling().fit(np.column_stack([1 - p1, p1]), labels)
    >>> cal.coef_.round(2).tolist(), cal.intercept_.round(2).tolist()
    ([0.52], [0.41])
    >>> cal.transform(np.array([0.5, 0.5])).round(2).tolist()
    [0.4, 0.6]
    """

    method: ClassVar[str] = "platt"
    coef_: np.ndarray
    intercept_: np.ndarray

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Self:
        p, y = _fit_inputs(probs, labels)
        k = p.shape[1]
        if k == 2:
            z = (np.log(np.maximum(p[:, 1], EPS)) - np.log(np.maximum(p[:, 0], EPS)))[:, None]
            targets = platt_targets((y == 1).astype(np.float64))[:, None]
        else:
            z = _log_odds(p)
            targets = np.column_stack([platt_targets((y == j).astype(np.float64)) for j in range(k)])
        return self._set(*fit_sigmoids(z, targets), k)

    def _set(self, coef: np.ndarray, intercept: np.ndarray, n_classes: int) -> Self:
        coef, intercept = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
        expected = 1 if n_classes == 2 else n_classes
        if coef.shape != (expected,) or intercept.shape != (expected,) or n_classes < 2:
            raise ValueError(f"Platt scaling over {n_classes} labels needs {expected} slopes and offsets")
        if (np.any(coef < WEIGHT_BOUNDS[0]) or np.any(coef > WEIGHT_BOUNDS[1])
                or np.any(np.abs(intercept) > BIAS_BOUNDS[1])):
            raise ValueError("Platt parameters outside their bounds")
        self.coef_, self.intercept_, self.n_classes_ = coef, intercept, n_classes
        return self

    def _transform(self, p: np.ndarray) -> np.ndarray:
        if self.n_classes_ == 2:
            z = np.log(np.maximum(p[..., 1], EPS)) - np.log(np.maximum(p[..., 0], EPS))
            q1 = expit(self.coef_[0] * z + self.intercept_[0])
            return np.stack([1.0 - q1, q1], axis=-1)
        q = expit(self.coef_ * _log_odds(p) + self.intercept_)
        return _normalise(np.maximum(q, EPS))

    def params(self) -> dict[str, Any]:
        self._k()
        return {"coef": _floats(self.coef_), "intercept": _floats(self.intercept_), "n_classes": self.n_classes_}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        return cls()._set(np.asarray(params["coef"]), np.asarray(params["intercept"]), int(params["n_classes"]))
