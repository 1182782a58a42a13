"""Dirichlet calibration (matrix scaling on log-probabilities) with ODIR regularisation (Kull et al., 2019)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Self

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from streams.calibration.calibrators.core import _fit_inputs, _FittedCalibrator, _floats, _log_probs
from streams.calibration.metrics import EPS

log = logging.getLogger(__name__)

PARAM_BOUND = 20.0
"""|W_ij|, |b_k| <= 20: as for vector scaling, a shift of 20 nats is already a certainty."""


class DirichletCalibration(_FittedCalibrator):
    """softmax(W ln p + b) with a full K x K matrix W (Kull et al., 2019, "Dirichlet calibration").

    The multi-class generalisation of beta calibration: each label's calibrated score may depend on
    every label's raw log-probability, so it can undo confusions between labels that vector scaling
    (a diagonal W) cannot. K^2 + K parameters, so it needs data: selection only tries it when the fit
    set has at least 10 items per parameter. ODIR regularisation (Off-Diagonal and Intercept
    Regularisation) pulls the off-diagonal entries and the intercepts toward 0 with strength `l2`
    (in units of summed NLL), leaving the diagonal free: with little data it falls back to vector
    scaling without biases. Fitted by L-BFGS-B with an analytic gradient, starting at W = I, b = 0.

    Parameters
    ----------
    l2
        Strength of the ODIR penalty.
    version
        Label of the fitted calibrator carried in every result (default "dirichlet-unversioned").

    Attributes
    ----------
    coef_ : ndarray of shape (K, K)
        W.
    intercept_ : ndarray of shape (K,)
        b.

    References
    ----------
    Kull, Perello-Nieto, Kängsepp, Silva Filho, Song, Flach. Beyond temperature scaling: obtaining
    well-calibrated multi-class probabilities with Dirichlet calibration. NeurIPS 2019.

    Examples
    --------
    Three labels where the model confuses label 2 for label 1 a third of the time:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 3000)
    >>> said = np.where((y == 2) & (rng.random(3000) < 1 / 3), 1, y)
    >>> probs = np.full((3000, 3), 0.1)
    >>> probs[np.arange(3000), said] = 0.8
    >>> cal = DirichletCalibration().fit(probs, y)
    >>> cal.transform(np.array([0.1, 0.8, 0.1])).round(2).tolist()  # truly 2/3 and 1/3; ODIR shrinks a little
    [0.0, 0.74, 0.26]
    """

    method: ClassVar[str] = "dirichlet"
    coef_: np.ndarray
    intercept_: np.ndarray

    def __init__(self, l2: float = 1.0, version: str | None = None) -> None:
        super().__init__(version)
        self.l2 = l2

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Self:
        p, y = _fit_inputs(probs, labels)
        n, k = p.shape
        logp = _log_probs(p)
        onehot = np.eye(k)[y]
        off = ~np.eye(k, dtype=bool)

        def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[: k * k].reshape(k, k), theta[k * k:]
            log_q = log_softmax(logp @ w.T + b, axis=1)
            residual = np.exp(log_q) - onehot
            loss = -np.sum(log_q * onehot) + self.l2 * (np.sum(w[off] ** 2) + np.sum(b**2))
            grad_w = residual.T @ logp + 2.0 * self.l2 * np.where(off, w, 0.0)
            grad_b = residual.sum(axis=0) + 2.0 * self.l2 * b
            return loss / n, np.concatenate([grad_w.ravel(), grad_b]) / n

        start = np.r_[np.eye(k).ravel(), np.zeros(k)]
        res = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B",
                       bounds=[(-PARAM_BOUND, PARAM_BOUND)] * (k * k + k))
        if not res.success:
            log.warning("Dirichlet calibration fit did not converge: %s", res.message)
        return self._set(res.x[: k * k].reshape(k, k), res.x[k * k:])

    def _set(self, coef: np.ndarray, intercept: np.ndarray) -> Self:
        coef, intercept = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
        k = len(intercept)
        if k < 2 or coef.shape != (k, k) or intercept.shape != (k,):
            raise ValueError("Dirichlet calibration needs a K x K matrix and K intercepts, K >= 2")
        if np.any(np.abs(coef) > PARAM_BOUND) or np.any(np.abs(intercept) > PARAM_BOUND):
            raise ValueError("Dirichlet calibration parameters outside their bounds")
        self.coef_, self.intercept_, self.n_classes_ = coef, intercept, k
        return self

    def _transform(self, p: np.ndarray) -> np.ndarray:
        q = softmax(np.log(np.maximum(p, EPS)) @ self.coef_.T + self.intercept_, axis=-1)
        return np.asarray(q)

    def params(self) -> dict[str, Any]:
        self._k()
        return {"coef": [_floats(row) for row in self.coef_], "intercept": _floats(self.intercept_), "l2": self.l2,
                "n_classes": self.n_classes_}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        return cls(l2=float(params.get("l2", 1.0)))._set(np.asarray(params["coef"]), np.asarray(params["intercept"]))
