"""The base-rate predictor: every item gets the label frequencies of the fit set, whatever the model said."""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np

from streams.calibration.calibrators.core import _fit_inputs, _FittedCalibrator, _floats


class ConstantCalibrator(_FittedCalibrator):
    """Predict the fit set's label frequencies for every item: p_k = (n_k + 0.5) / (n + 0.5 K).

    The floor any calibrator must beat. When a model has no signal for a task, no map of its scores
    does better than this, and selection falls back to it (`streams.calibration.calibrators.selection`):
    honest probabilities that send every item to review unless one label is that common. The half
    pseudo-count (Jeffreys prior) keeps a label absent from the fit set above zero.

    Parameters
    ----------
    version
        Label of the fitted calibrator carried in every result (default "constant-unversioned").

    Attributes
    ----------
    base_rate_ : ndarray of shape (K,)
        The smoothed label frequencies.

    Examples
    --------
    >>> import numpy as np
    >>> cal = ConstantCalibrator().fit(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 0, 1]))
    >>> cal.base_rate_.round(3).tolist()
    [0.625, 0.375]
    >>> cal.transform(np.array([0.1, 0.9])).round(3).tolist()
    [0.625, 0.375]
    """

    method: ClassVar[str] = "constant"
    base_rate_: np.ndarray

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Self:
        p, y = _fit_inputs(probs, labels)
        k = p.shape[1]
        return self._set((np.bincount(y, minlength=k) + 0.5) / (len(y) + 0.5 * k))

    def _set(self, base_rate: np.ndarray) -> Self:
        base_rate = np.asarray(base_rate, dtype=np.float64)
        if base_rate.ndim != 1 or len(base_rate) < 2 or np.any(base_rate <= 0) or not np.isclose(base_rate.sum(), 1):
            raise ValueError("base_rate must be K >= 2 positive frequencies summing to 1")
        self.base_rate_, self.n_classes_ = base_rate, len(base_rate)
        return self

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.base_rate_, p.shape).copy()

    def params(self) -> dict[str, Any]:
        self._k()
        return {"base_rate": _floats(self.base_rate_), "n_classes": self.n_classes_}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        return cls()._set(np.asarray(params["base_rate"]))
