"""Pooling several methods' (or models') label distributions into one. Pure numpy.

- ``mean``: linear pooling, sum_i w_i p_i / sum_i w_i. Robust: one overconfident member cannot drive
  a label to 0 or 1 on its own.
- ``loglinear``: geometric pooling, prod_i p_i^(w_i / sum w), renormalised. Agreement sharpens the
  result, so it is usually overconfident before calibration; probabilities are floored at 1e-6
  first, since first-token scores give exactly 0 to labels missing from the top-k.

Each member's probabilities are its *calibrated* ones (every method has its own calibrator), and the
pooled distribution gets a calibrator of its own (method ``ensemble``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POOLINGS = ("mean", "loglinear")
FLOOR = 1e-6


def pool(members: Sequence[np.ndarray], weights: Sequence[float] | None = None, how: str = "mean") -> np.ndarray:
    """One distribution over the labels from the members' distributions (rows may be a batch: (n, K))."""
    if how not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
    if not members:
        raise ValueError("nothing to pool")
    p = np.stack([np.asarray(m, dtype=np.float64) for m in members])  # (m, [n,] K)
    w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(members),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights: one non-negative number per member, not all zero")
    w = (w / w.sum()).reshape((-1,) + (1,) * (p.ndim - 1))
    if how == "mean":
        out = (w * p).sum(axis=0)
    else:
        logp = np.log(np.clip(p, FLOOR, 1.0))
        z = (w * logp).sum(axis=0)
        z -= z.max(axis=-1, keepdims=True)
        out = np.exp(z)
    return out / out.sum(axis=-1, keepdims=True)
