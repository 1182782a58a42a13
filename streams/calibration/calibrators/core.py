"""The original calibrators and their shared helpers. Pure numpy/scipy, no Kafka.

The classify path calls `transform` on one row of K probabilities per message, so every transform is
a handful of numpy operations with the fitted parameters precomputed; fitting (on held-out reviewed
items) is where scipy does the work. Conventions follow scikit-learn's calibration estimators:
`fit(probs, labels)` returns self and fitted parameters end in `_`. `params()` / `from_params()`
carry a fitted calibrator through JSON (the compacted calibrators topic), and `to_dict` /
`from_dict` add the method name and version so a worker can rebuild whichever calibrator it is sent.

Inputs are rows over K labels, renormalised from top-k logprobs: exact zeros (label not in the
top-k) and exact ones occur. Log-space methods floor probabilities at EPS before taking logs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
from scipy.optimize import isotonic_regression, minimize
from scipy.special import log_softmax

from streams.calibration.metrics import EPS

log = logging.getLogger(__name__)

__all__ = [
    "EPS", "Calibrator", "HistogramBinning", "IdentityCalibrator", "IsotonicCalibrator", "LabelBiasCorrection",
    "NotFittedError", "TemperatureScaling", "VectorScaling",
]

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""Search range for T. Also keeps p ** (1/T) >= EPS ** 20 = 1e-120, so transform never underflows."""
WEIGHT_BOUNDS = (0.0, 20.0)
"""Vector scaling weights: >= 0 keeps each class's calibrated score non-decreasing in its own raw
probability; <= 20 matches the sharpest temperature and, like it, keeps transform from underflowing."""
BIAS_BOUNDS = (-20.0, 20.0)
"""Vector scaling biases: exp(±20) cannot overflow, and a shift of 20 nats is already a certainty."""
_LANE = 3.0
"""One-vs-rest maps are laid end to end, class k's over [0, 1] shifted to [3k, 3k + 1], so a single
np.interp / np.searchsorted call maps a whole row (or batch) instead of one call per class."""


class NotFittedError(ValueError, AttributeError):
    """transform/params called before fit (ValueError and AttributeError, as in scikit-learn)."""


@runtime_checkable
class Calibrator(Protocol):
    """What the classify path and the publisher rely on; every class in METHODS provides it."""

    method: ClassVar[str]
    version: str

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Self: ...

    def transform(self, probabilities: np.ndarray) -> np.ndarray: ...

    def params(self) -> dict[str, Any]: ...

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self: ...


# ---------------------------------------------------------------------------------------- helpers


def _fit_inputs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated (n, K) non-negative finite rows and (n,) int labels in [0, K)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (n, K) with n > 0 and K >= 2, got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1.0 + 1e-9):
        raise ValueError("probs must be finite and lie in [0, 1]")
    if y.shape != (p.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {p.shape[0]} integers, got shape {y.shape} dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1]})")
    return p, y.astype(np.intp)


def _log_probs(p: np.ndarray) -> np.ndarray:
    """log of p clipped to [EPS, 1]: exact zeros become log(EPS) instead of -inf."""
    return np.log(np.clip(p, EPS, 1.0))


def _normalise(q: np.ndarray) -> np.ndarray:
    """Rows of strictly positive scores divided by their sums (works for (K,) and (n, K))."""
    if q.ndim == 1 and q.shape[0] < 8:
        # One message (the classify path): the same sum (numpy adds fewer than 8 numbers left to right)
        # and the same divisions in Python, cheaper than two numpy calls on a tiny array.
        row = q.tolist()
        total = 0.0
        for v in row:
            total += v
        if total > 0.0:  # else (NaN, zero) numpy's own division, warnings and all
            return np.array([v / total for v in row])
    return q / q.sum(axis=-1, keepdims=True)


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a).ravel()]


def _lanes(n_classes: int) -> np.ndarray:
    """Per-class offsets that move class k's probabilities into its own lane (see _LANE)."""
    return _LANE * np.arange(n_classes)


def _in_unit_interval(arrays: Sequence[np.ndarray]) -> bool:
    return all(a.size == 0 or (a.min() >= 0.0 and a.max() <= 1.0) for a in arrays)


def _step_knots(values: np.ndarray) -> np.ndarray:
    """Mask keeping the first and last point of each constant run: np.interp over the kept knots
    equals np.interp over all of them, and the stored function shrinks to a few points per step."""
    keep = np.ones(len(values), dtype=bool)
    change = values[1:] != values[:-1]
    keep[1:-1] = change[:-1] | change[1:]
    return keep


def _isotonic_knots(scores: np.ndarray, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Increasing step function from one class's raw probability to its observed frequency.

    Tied scores are pooled first (mean target, weight = count), so the fit is a function of the score.
    """
    xs, inverse = np.unique(scores, return_inverse=True)
    counts = np.bincount(inverse)
    means = np.bincount(inverse, weights=hits) / counts
    fitted = isotonic_regression(means, weights=counts, increasing=True).x
    keep = _step_knots(fitted)
    return xs[keep], fitted[keep]


def _equal_mass_bins(scores: np.ndarray, hits: np.ndarray, n_bins: int,
                     prior_strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Inner edges at quantiles of one class's scores and each bin's smoothed frequency.

    Bins are right-closed, (lo, hi], so the usual mass point at exactly 0 (label not in the top-k)
    gets a bin of its own. A bin's value is (hits + m * base) / (count + m): a Beta prior of strength m
    centred on the class's base rate, so small bins are pulled toward it and empty ones equal it.
    """
    edges = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
    idx = np.searchsorted(edges, scores, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    positives = np.bincount(idx, weights=hits, minlength=len(edges) + 1)
    base = float(hits.mean())
    return edges, (positives + prior_strength * base) / (counts + prior_strength)


# ------------------------------------------------------------------------------------ calibrators


class IdentityCalibrator:
    """Raw probabilities unchanged: the honest default before any labelled data exists.

    It works for any K and never renormalises, so `calibrated` equals `raw` in every result.

    Parameters
    ----------
    version
        Label carried in every result (default "identity-0").

    Examples
    --------
    >>> import numpy as np
    >>> IdentityCalibrator().fit(np.array([[0.7, 0.3]])).transform(np.array([0.7, 0.3])).tolist()
    [0.7, 0.3]
    """

    method: ClassVar[str] = "identity"
    n_classes_: int | None = None

    def __init__(self, version: str = "identity-0") -> None:
        self.version = version

    def fit(self, probs: np.ndarray, labels: np.ndarray | None = None) -> Self:
        """Nothing to learn."""
        return self

    def transform(self, probabilities: np.ndarray) -> np.ndarray:
        return np.asarray(probabilities, dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        return cls()

    def __repr__(self) -> str:
        return f"IdentityCalibrator(version={self.version!r})"


class _FittedCalibrator:
    """Shared plumbing: the version default, the K check and the not-fitted error."""

    method: ClassVar[str]
    n_classes_: int

    def __init__(self, version: str | None = None) -> None:
        self.version = version if version is not None else f"{self.method}-unversioned"

    def transform(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated rows, same shape as the input ((K,) or (n, K)), non-negative, summing to 1."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.shape[-1:] != (self._k(),) or p.ndim > 2:
            raise ValueError(f"{self.method} calibrator expects shape (K,) or (n, K) with K={self.n_classes_}, "
                             f"got {p.shape}")
        return self._transform(p)

    def _transform(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _k(self) -> int:
        try:
            return self.n_classes_
        except AttributeError:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit or from_params") from None

    def __repr__(self) -> str:
        fitted = getattr(self, "n_classes_", None)
        return f"{type(self).__name__}(version={self.version!r}, n_classes_={fitted})"


def _fit_inverse_temperature(logp: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """argmin over beta in [lo, hi] of mean NLL of softmax(beta * log p): safeguarded Newton.

    The NLL, mean(logsumexp(beta * logp) - beta * logp_y), is convex in beta = 1/T; its first and
    second derivatives are the mean of E_q[log p] - log p_y and of Var_q[log p] under
    q = softmax(beta * log p). Newton converges in a handful of softmax passes, far fewer than a
    bounded scalar search; a step leaving the bracket falls back to bisection, so the bounds hold.
    """
    # Shifting each row by its maximum changes neither softmax nor the derivatives, and keeps
    # exp(beta * z) in (0, 1]: no max-subtraction per pass. Rows as columns: K contiguous passes.
    z = (logp - logp.max(axis=1, keepdims=True)).T.copy()
    target = float(np.mean(z[y, np.arange(len(y))]))
    z_sq = z * z
    beta = min(max(1.0, lo), hi)
    for _ in range(100):
        e = np.exp(beta * z)
        total = e.sum(axis=0)
        mean = (e * z).sum(axis=0) / total
        grad = float(mean.mean()) - target
        if grad == 0.0:
            return beta
        curv = float(((e * z_sq).sum(axis=0) / total - mean * mean).mean())
        if grad > 0:
            hi = beta
        else:
            lo = beta
        step = beta - grad / curv if curv > 1e-15 else math.nan
        new = step if lo <= step <= hi else 0.5 * (lo + hi)
        if abs(new - beta) <= 1e-10 * max(1.0, beta) or hi - lo <= 1e-12 * max(1.0, hi):
            return new
        beta = new
    return beta


class TemperatureScaling(_FittedCalibrator):
    """softmax(log p / T), one parameter for all classes (Guo et al., 2017).

    T > 1 softens over-confident rows, T < 1 sharpens under-confident ones; the top label never
    changes, so accuracy is untouched. T is found by minimising NLL over beta = 1/T, where the
    objective is convex (see `_fit_inverse_temperature`).

    Parameters
    ----------
    bounds
        Search range (low, high) for T, within TEMPERATURE_BOUNDS.
    version
        Label of the fitted calibrator carried in every result (default "temperature-unversioned").

    Examples
    --------
    A model that reports twice its true logit (over-confident) is fixed by T close to 2:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> logit = rng.normal(0.0, 1.5, 400)
    >>> labels = (rng.random(400) < 1 / (1 + np.exp(-logit))).astype(int)
    >>> p1 = 1 / (1 + np.exp(-2 * logit))
    >>> cal = TemperatureScaling().fit(np.column_stack([1 - p1, p1]), labels)
    >>> round(cal.temperature_, 2)
    1.88
    >>> cal.transform(np.array([0.9, 0.1])).round(3).tolist()
    [0.763, 0.237]
    """

    method: ClassVar[str] = "temperature"
    temperature_: float

    def __init__(self, bounds: tuple[float, float] = TEMPERATURE_BOUNDS, version: str | None = None) -> None:
        super().__init__(version)
        self.bounds = bounds

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Self:
        p, y = _fit_inputs(probs, labels)
        low, high = self.bounds
        if not TEMPERATURE_BOUNDS[0] <= low < high <= TEMPERATURE_BOUNDS[1]:
            raise ValueError(f"bounds must lie within {TEMPERATURE_BOUNDS}, got {self.bounds}")
        logp = _log_probs(p)
        return self._set(1.0 / _fit_inverse_temperature(logp, y, 1.0 / high, 1.0 / low), p.shape[1])

    def _set(self, temperature: float, n_classes: int) -> Self:
        low, high = TEMPERATURE_BOUNDS
        if not low <= temperature <= high:
            raise ValueError(f"temperature must lie in [{low}, {high}], got {temperature}")
        self.temperature_, self.n_classes_ = temperature, n_classes
        self._inverse_t = 1.0 / temperature
        return self

    def _transform(self, p: np.ndarray) -> np.ndarray:
        # exp(log p / T) = p ** (1/T); the bounds on T keep it from underflowing (see above).
        return _normalise(np.maximum(p, EPS) ** self._inverse_t)

    def params(self) -> dict[str, Any]:
        self._k()
        return {"temperature": self.temperature_, "n_classes": self.n_classes_, "bounds": list(self.bounds)}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        cal = cls(bounds=tuple(params.get("bounds", TEMPERATURE_BOUNDS)))
        return cal._set(float(params["temperature"]), int(params["n_classes"]))


class VectorScaling(_FittedCalibrator):
    """softmax(w * log p + b) with a weight and a bias per class (Guo et al., 2017).

    For K = 2 this is Platt scaling on the log-odds when w0 = w1 (then the logit is
    w * log(p1/p0) + b1 - b0); free w0, w1 give the slightly richer beta-calibration form
    a*log(p1) - c*log(p0) + d (Kull et al., 2017), which contains Platt. Use method "vector" for both.

    Fitting minimises (sum of NLL + l2 * (|w - 1|^2 + |b|^2)) / n with L-BFGS-B and an analytic
    gradient. The penalty is a Gaussian prior centred on the identity (w = 1, b = 0) with a fixed
    strength, so with little data the fit stays near the raw probabilities and with much data the
    likelihood dominates; it also pins down b, which softmax only sees up to a constant.

    Parameters
    ----------
    l2
        Strength of the penalty toward the identity (w = 1, b = 0).
    version
        Label of the fitted calibrator carried in every result (default "vector-unversioned").

    Examples
    --------
    A model that leans toward label 0 by one nat: the biases take the lean out (shrunk a little by
    the penalty), which temperature scaling cannot do:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> logit = rng.normal(0.0, 1.5, 400)
    >>> labels = (rng.random(400) < 1 / (1 + np.exp(-logit))).astype(int)
    >>> p1 = 1 / (1 + np.exp(-(logit - 1.0)))
    >>> cal = VectorScaling().fit(np.column_stack([1 - p1, p1]), labels)
    >>> cal.coef_.round(2).tolist(), round(float(cal.intercept_[1] - cal.intercept_[0]), 2)
    ([1.08, 1.04], 0.9)
    >>> cal.transform(np.array([0.6, 0.4])).round(2).tolist()
    [0.38, 0.62]
    """

    method: ClassVar[str] = "vector"
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

        def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:k], theta[k:]
            log_q = log_softmax(logp * w + b, axis=1)
            residual = np.exp(log_q) - onehot  # d(sum NLL)/d(logits)
            loss = -np.sum(log_q * onehot) + self.l2 * (np.sum((w - 1.0) ** 2) + np.sum(b**2))
            grad_w = np.sum(residual * logp, axis=0) + 2.0 * self.l2 * (w - 1.0)
            grad_b = np.sum(residual, axis=0) + 2.0 * self.l2 * b
            return loss / n, np.concatenate([grad_w, grad_b]) / n

        res = minimize(loss_and_grad, np.r_[np.ones(k), np.zeros(k)], jac=True, method="L-BFGS-B",
                       bounds=[WEIGHT_BOUNDS] * k + [BIAS_BOUNDS] * k)
        if not res.success:
            log.warning("vector scaling fit did not converge: %s", res.message)
        return self._set(res.x[:k], res.x[k:])

    def _set(self, coef: np.ndarray, intercept: np.ndarray) -> Self:
        coef, intercept = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
        if coef.shape != intercept.shape or coef.ndim != 1:
            raise ValueError("coef and intercept must be 1-D of equal length")
        if (np.any(coef < WEIGHT_BOUNDS[0]) or np.any(coef > WEIGHT_BOUNDS[1])
                or np.any(np.abs(intercept) > BIAS_BOUNDS[1])):
            raise ValueError("vector scaling parameters outside their bounds")
        self.coef_, self.intercept_, self.n_classes_ = coef, intercept, len(coef)
        self._exp_intercept = np.exp(intercept)
        return self

    def _transform(self, p: np.ndarray) -> np.ndarray:
        # exp(w log p + b) = p ** w * e ** b, without the log, max-shift and exp of a softmax.
        return _normalise(np.maximum(p, EPS) ** self.coef_ * self._exp_intercept)

    def params(self) -> dict[str, Any]:
        self._k()
        return {"coef": _floats(self.coef_), "intercept": _floats(self.intercept_), "l2": self.l2,
                "n_classes": self.n_classes_}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        cal = cls(l2=float(params.get("l2", 1.0)))
        return cal._set(np.asarray(params["coef"]), np.asarray(params["intercept"]))


class IsotonicCalibrator(_FittedCalibrator):
    """One-vs-rest isotonic regression of each class's probability, then renormalised
    (Zadrozny & Elkan, 2002).

    Non-parametric, so it fixes any monotone distortion, but it needs more data than the scaling
    methods and is a step function. Each class's map is stored as knots (x_thresholds_[k],
    y_thresholds_[k]) and applied with np.interp, constant beyond the ends as in scikit-learn: the
    knots are padded with their end values at -0.5 and 1.5 and laid in lanes (see _LANE).
    Outputs are floored at EPS before renormalising: a calibrated 0 would make one surprise cost
    infinite NLL, and a row where every class maps to 0 (a region where the fit set saw no positives
    for any class) comes out uniform, which routes the item to review rather than guessing.

    Parameters
    ----------
    version
        Label of the fitted calibrator carried in every result (default "isotonic-unversioned").

    Examples
    --------
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    >>> cal = IsotonicCalibrator().fit(probs, np.array([0, 0, 1, 0, 1, 1, 1]))
    >>> cal.x_thresholds_[0].tolist(), cal.y_thresholds_[0].round(3).tolist()  # class 0's steps
    ([0.2, 0.3, 0.6, 0.7, 0.8, 0.9], [0.0, 0.0, 0.333, 0.333, 1.0, 1.0])
    >>> cal.transform(np.array([0.65, 0.35])).round(3).tolist()
    [0.333, 0.667]
    """

    method: ClassVar[str] = "isotonic"
    x_thresholds_: list[np.ndarray]
    y_thresholds_: list[np.ndarray]

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Self:
        p, y = _fit_inputs(probs, labels)
        knots = [_isotonic_knots(p[:, k], (y == k).astype(np.float64)) for k in range(p.shape[1])]
        return self._set([x for x, _ in knots], [v for _, v in knots])

    def _set(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> Self:
        xs = [np.asarray(x, dtype=np.float64) for x in xs]
        ys = [np.asarray(v, dtype=np.float64) for v in ys]
        if (len(xs) != len(ys) or len(xs) < 2
                or any(x.shape != v.shape or x.size == 0 for x, v in zip(xs, ys, strict=True))):
            raise ValueError("need non-empty, equal-length knots for each of K >= 2 classes")
        if not _in_unit_interval(xs + ys) or any(np.any(np.diff(x) <= 0) for x in xs):
            raise ValueError("knots must be increasing probabilities in [0, 1]")
        self.x_thresholds_, self.y_thresholds_, self.n_classes_ = xs, ys, len(xs)
        self._lanes = _lanes(len(xs))
        self._x_all = np.concatenate([np.r_[-0.5, x, 1.5] + lane for x, lane in zip(xs, self._lanes, strict=True)])
        self._y_all = np.concatenate([np.r_[v[0], v, v[-1]] for v in ys])
        return self

    def _transform(self, p: np.ndarray) -> np.ndarray:
        q = np.interp(p + self._lanes, self._x_all, self._y_all)
        return _normalise(np.maximum(q, EPS, out=q))

    def params(self) -> dict[str, Any]:
        self._k()
        return {"x_thresholds": [_floats(x) for x in self.x_thresholds_],
                "y_thresholds": [_floats(v) for v in self.y_thresholds_], "n_classes": self.n_classes_}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        return cls()._set([np.asarray(x) for x in params["x_thresholds"]],
                          [np.asarray(v) for v in params["y_thresholds"]])


class HistogramBinning(_FittedCalibrator):
    """One-vs-rest histogram binning (Zadrozny & Elkan, 2001): each class's probability is replaced
    by the smoothed empirical frequency of its equal-mass bin, then rows are renormalised.

    Equal-mass bins put resolution where the scores are. The smoothing (see `_equal_mass_bins`) is
    a Beta prior with `prior_strength` pseudo-items at the class's base rate, so a bin of 3 items
    that were all positive says 0.75ish, not 1, and an empty bin says the base rate. Stored per
    class as inner edges_[k] (bins right-closed) and values_[k] (one more than edges); applied with
    one np.searchsorted over all classes' edges laid in lanes (see _LANE).

    Parameters
    ----------
    n_bins
        Equal-mass bins per class (fewer when scores tie at the quantiles).
    prior_strength
        Pseudo-items at the class's base rate added to every bin (> 0).
    version
        Label of the fitted calibrator carried in every result (default "histogram-unversioned").

    Examples
    --------
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    >>> cal = HistogramBinning(n_bins=2).fit(probs, np.array([0, 0, 1, 0, 1, 1, 1]))
    >>> cal.edges_[0].tolist(), cal.values_[0].round(3).tolist()  # class 0: p <= 0.6, p > 0.6
    ([0.6], [0.31, 0.571])
    >>> cal.transform(np.array([0.65, 0.35])).round(3).tolist()
    [0.56, 0.44]
    """

    method: ClassVar[str] = "histogram"
    edges_: list[np.ndarray]
    values_: list[np.ndarray]

    def __init__(self, n_bins: int = 10, prior_strength: float = 2.0, version: str | None = None) -> None:
        super().__init__(version)
        self.n_bins = n_bins
        self.prior_strength = prior_strength

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Self:
        p, y = _fit_inputs(probs, labels)
        if self.n_bins < 1 or self.prior_strength <= 0:
            raise ValueError("n_bins must be >= 1 and prior_strength > 0")
        bins = [_equal_mass_bins(p[:, k], (y == k).astype(np.float64), self.n_bins, self.prior_strength)
                for k in range(p.shape[1])]
        return self._set([e for e, _ in bins], [v for _, v in bins])

    def _set(self, edges: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> Self:
        edges = [np.asarray(e, dtype=np.float64).reshape(-1) for e in edges]
        values = [np.asarray(v, dtype=np.float64) for v in values]
        if (len(edges) != len(values) or len(edges) < 2
                or any(len(v) != len(e) + 1 for e, v in zip(edges, values, strict=True))):
            raise ValueError("each class needs len(values) == len(edges) + 1, for K >= 2 classes")
        if not _in_unit_interval(edges + values) or any(np.any(np.diff(e) <= 0) for e in edges):
            raise ValueError("edges must be increasing and edges and values must lie in [0, 1]")
        self.edges_, self.values_, self.n_classes_ = edges, values, len(edges)
        self._lanes = _lanes(len(edges))
        self._edges_all = np.concatenate([e + lane for e, lane in zip(edges, self._lanes, strict=True)])
        self._values_all = np.concatenate(values)
        # searchsorted over all lanes counts every earlier class's edges; class k's values start
        # after those plus k (each class has one value more than edges).
        self._value_shift = np.arange(len(edges))
        return self

    def _transform(self, p: np.ndarray) -> np.ndarray:
        q = self._values_all[np.searchsorted(self._edges_all, p + self._lanes, side="left") + self._value_shift]
        return _normalise(np.maximum(q, EPS, out=q))

    def params(self) -> dict[str, Any]:
        self._k()
        return {"edges": [_floats(e) for e in self.edges_], "values": [_floats(v) for v in self.values_],
                "n_bins": self.n_bins, "prior_strength": self.prior_strength, "n_classes": self.n_classes_}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        cal = cls(n_bins=int(params.get("n_bins", 10)), prior_strength=float(params.get("prior_strength", 2.0)))
        return cal._set([np.asarray(e) for e in params["edges"]], [np.asarray(v) for v in params["values"]])


class LabelBiasCorrection(_FittedCalibrator):
    """Divide out the model's prior preference for some labels: p_cal ∝ p / mean_p_.

    The idea of contextual calibration (Zhao et al., 2021) and batch calibration (Zhou et al., 2024):
    an LLM's label distribution carries a prompt-induced bias, visible as a skewed average prediction
    over traffic. mean_p_ is estimated from probabilities alone, so it needs no labels. It is the
    ARITHMETIC mean, as in batch calibration: raw rows hold exact zeros (label not in the top-k), and
    a geometric mean would be driven by the EPS floor rather than by the model. The correction can
    change the top label; that is its point.

    Parameters
    ----------
    version
        Label of the fitted calibrator carried in every result (default "label_bias-unversioned").

    Examples
    --------
    >>> import numpy as np
    >>> probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])  # the model leans toward label 0
    >>> cal = LabelBiasCorrection().fit(probs)
    >>> cal.mean_p_.round(3).tolist()
    [0.7, 0.3]
    >>> cal.transform(np.array([0.6, 0.4])).round(3).tolist()  # below its usual 0.7: label 1 wins
    [0.391, 0.609]
    """

    method: ClassVar[str] = "label_bias"
    mean_p_: np.ndarray

    def fit(self, probs: np.ndarray, labels: np.ndarray | None = None) -> Self:
        """Estimate mean_p_ from probs; labels are accepted for the common interface and unused."""
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
            raise ValueError(f"probs must have shape (n, K) with n > 0 and K >= 2, got {p.shape}")
        return self._set(p.mean(axis=0))

    def _set(self, mean_p: np.ndarray) -> Self:
        mean_p = np.asarray(mean_p, dtype=np.float64)
        if mean_p.ndim != 1 or len(mean_p) < 2 or not np.all(np.isfinite(mean_p)) or np.any(mean_p < 0):
            raise ValueError("mean_p must be a finite non-negative vector over K >= 2 labels")
        self.mean_p_, self.n_classes_ = mean_p, len(mean_p)
        self._inverse_mean = 1.0 / np.maximum(mean_p, EPS)  # a label never seen must not divide by 0
        return self

    def _transform(self, p: np.ndarray) -> np.ndarray:
        return _normalise(np.maximum(p, EPS) * self._inverse_mean)

    def params(self) -> dict[str, Any]:
        self._k()
        return {"mean_p": _floats(self.mean_p_), "n_classes": self.n_classes_}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        # Records published before `update` was removed also carry "decay"; it is ignored.
        return cls()._set(np.asarray(params["mean_p"]))
