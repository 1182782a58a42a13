"""Calibration metrics over rows of label probabilities. Pure numpy/scipy.

These decide whether a fitted calibrator is published (metrics before/after on held-out reviewed
items), so each is the textbook definition with every convention spelled out: bins are explicit,
the NLL floor is the calibrators' floor, and intervals come from a seeded bootstrap so a report can
be reproduced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from scipy.stats import bootstrap

EPS = 1e-6
"""Probability floor. Raw rows hold exact zeros (a label missing from the top-k logprobs), whose log
is -inf; flooring at EPS keeps NLL finite and is the same floor the calibrators take logs at, so the
NLL before and after calibration is measured on one scale. -log(EPS) ≈ 13.8 caps one item's NLL."""

Strategy = Literal["uniform", "quantile"]


def _rows_and_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) float rows and (n,) int labels in range, or a ValueError naming what is wrong."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must have shape (n, K) with n > 0, got {p.shape}")
    if y.shape != (p.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {p.shape[0]} integers, got shape {y.shape} dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1]})")
    return p, y.astype(np.intp)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels, with the true probability floored at EPS."""
    p, y = _rows_and_labels(probs, labels)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], EPS))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over items of sum over classes of (p - one-hot)^2, in [0, 2]."""
    p, y = _rows_and_labels(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of items whose top label (first on ties, as argmax) is the true one."""
    p, y = _rows_and_labels(probs, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and 0/1 correctness (float, so bin sums are plain weighted counts)."""
    p, y = _rows_and_labels(probs, labels)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def bin_edges(conf: np.ndarray, n_bins: int = 15, strategy: Strategy = "uniform") -> np.ndarray:
    """n_bins + 1 edges over [0, 1] (equal width) or at quantiles of conf (equal mass).

    Equal mass is approximate under ties: repeated quantiles give empty bins, which weigh nothing.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1))
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")


def _binned(conf: np.ndarray, correct: np.ndarray, n_bins: int, strategy: Strategy,
            edges: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(edges, count, sum of confidence, sum of correct) per bin; bins are [lo, hi), the last closed.

    Given edges override n_bins and strategy (a bootstrap keeps the full sample's bins).
    """
    c = np.asarray(conf, dtype=np.float64)
    k = np.asarray(correct, dtype=np.float64)
    if c.ndim != 1 or c.shape != k.shape or c.size == 0:
        raise ValueError(f"conf and correct must be equal-length non-empty 1-D arrays, got {c.shape}, {k.shape}")
    if edges is None:
        edges = bin_edges(c, n_bins, strategy)
    n_bins = len(edges) - 1
    idx = np.searchsorted(edges[1:-1], c, side="right")
    count = np.bincount(idx, minlength=n_bins)
    return edges, count, np.bincount(idx, weights=c, minlength=n_bins), np.bincount(idx, weights=k, minlength=n_bins)


def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15, strategy: Strategy = "uniform",
        edges: np.ndarray | None = None) -> float:
    """Expected calibration error: sum over bins of (bin share) * |accuracy - mean confidence|."""
    _, count, conf_sum, correct_sum = _binned(conf, correct, n_bins, strategy, edges)
    return float(np.abs(correct_sum - conf_sum).sum() / count.sum())


def mce(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15, strategy: Strategy = "uniform") -> float:
    """Maximum calibration error: the largest |accuracy - mean confidence| over non-empty bins."""
    _, count, conf_sum, correct_sum = _binned(conf, correct, n_bins, strategy)
    full = count > 0
    return float(np.max(np.abs(correct_sum[full] - conf_sum[full]) / count[full]))


def ece_floor(conf: np.ndarray, n_bins: int = 15, strategy: Strategy = "uniform", n_sim: int = 200, q: float = 0.95,
              seed: int = 0) -> tuple[float, float]:
    """Mean and q-quantile of the ECE that a perfectly calibrated model with these confidences shows.

    The binned ECE is biased upward by sampling noise, roughly sqrt(bins / n), so even a perfect model
    scores above 0 (bench/README.md has measured floors). Redrawing each item's correctness as
    Bernoulli(confidence) (consistency resampling, Broecker & Smith 2007) gives that floor for this
    very sample, so a measured ECE below the q-quantile cannot be told from perfect calibration.
    """
    c = np.asarray(conf, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"conf must be a non-empty 1-D array, got shape {c.shape}")
    edges = bin_edges(c, n_bins, strategy)
    rng = np.random.default_rng(seed)
    sims = np.array([ece(c, (rng.random(c.size) < c).astype(np.float64), edges=edges) for _ in range(n_sim)])
    return float(sims.mean()), float(np.quantile(sims, q))


def bootstrap_interval(fn: Callable[..., float], *arrays: np.ndarray, n_boot: int = 1000,
                       alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of fn(*arrays), resampling items (axis 0) jointly.

    scipy.stats.bootstrap resamples an index vector so arrays of any shape stay paired. Note that a
    percentile interval of ECE sits slightly above the point estimate: resampling adds noise and
    |gap| turns noise into error, so on well-calibrated data the estimate can touch the lower end.
    """
    if not arrays:
        raise ValueError("bootstrap_interval needs at least one array")
    data = [np.asarray(a) for a in arrays]
    n = len(data[0])
    if n < 2 or any(len(a) != n for a in data):
        raise ValueError("arrays must share a length of at least 2 along axis 0")

    def statistic(i: np.ndarray) -> float:
        return fn(*(a[i] for a in data))

    res = bootstrap((np.arange(n),), statistic, vectorized=False, n_resamples=n_boot,
                    confidence_level=1.0 - alpha, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summary(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15, n_boot: int = 1000,
            seed: int = 0) -> dict[str, Any]:
    """The metrics a calibrator record carries (metrics_before / metrics_after), JSON-ready.

    With a single item there is nothing to resample, so both intervals are None (JSON null).
    """
    p, y = _rows_and_labels(probs, labels)
    conf, correct = confidence_and_correct(p, y)

    def interval(fn: Callable[[np.ndarray, np.ndarray], float]) -> list[float] | None:
        return list(bootstrap_interval(fn, conf, correct, n_boot=n_boot, seed=seed)) if len(y) > 1 else None

    def ece_uniform(c: np.ndarray, k: np.ndarray) -> float:
        return ece(c, k, n_bins, "uniform")

    # Equal-mass bins are placed once, on the sample itself. Re-placing them on each bootstrap
    # resample, whose repeated items tie at the quantiles, would empty bins and shift the whole
    # interval above the estimate.
    mass_edges = bin_edges(conf, n_bins, "quantile")

    def ece_mass(c: np.ndarray, k: np.ndarray) -> float:
        return ece(c, k, edges=mass_edges)

    return {
        "n": len(y),
        "accuracy": accuracy(p, y),
        "ece": ece_uniform(conf, correct),
        "ece_interval": interval(ece_uniform),
        "ece_floor": list(ece_floor(conf, n_bins, "uniform", seed=seed)),  # [mean, 95th pct] if perfectly calibrated
        "ece_mass": ece_mass(conf, correct),
        "ece_mass_interval": interval(ece_mass),
        "mce": mce(conf, correct, n_bins, "uniform"),
        "brier": brier(p, y),
        "nll": nll(p, y),
    }


def reliability_data(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15,
                     strategy: Strategy = "uniform") -> dict[str, Any]:
    """Per-bin count, mean confidence and accuracy (null for empty bins), plus ECE; JSON-ready."""
    edges, count, conf_sum, correct_sum = _binned(conf, correct, n_bins, strategy)
    full = count > 0
    mean_conf = np.divide(conf_sum, count, out=np.zeros(n_bins), where=full)
    acc = np.divide(correct_sum, count, out=np.zeros(n_bins), where=full)
    return {
        "strategy": strategy,
        "n": int(count.sum()),
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": [float(v) if f else None for v, f in zip(mean_conf, full, strict=True)],
        "accuracy": [float(v) if f else None for v, f in zip(acc, full, strict=True)],
        "ece": float(np.abs(correct_sum - conf_sum).sum() / count.sum()),
    }
