"""Effect sizes between count vectors: how far a window's distribution moved from the baseline's.

Pure numpy/scipy. The drift verdict (`streams.drift.homogeneity`) needs a *size* next to its test:
a test alone calls a meaningless shift "significant" in a huge window. The size is the
Jensen-Shannon divergence in bits: symmetric, bounded by 1, and finite even when one side has an
empty bin. It is computed on additively smoothed distributions, so a window that merely saw no
message in some bin is not an infinite departure.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.special import rel_entr


def smoothed_distribution(counts: npt.ArrayLike, alpha: float = 0.5) -> np.ndarray:
    """(counts + alpha) / (n + K alpha): additive smoothing; alpha = 0.5 is the Jeffreys prior.

    Without it one empty bin makes a divergence such as KL(P || Q) infinite (Q = 0 where P > 0),
    which says nothing useful about a window that merely saw no message there. With it every bin gets
    a pseudo-count and the bias vanishes as n grows (it is the posterior mean under a Dirichlet(alpha)
    prior).

    Parameters
    ----------
    counts
        Non-negative counts, one per bin.
    alpha
        Pseudo-count added to every bin (>= 0); 0 gives the plain relative frequencies.

    Examples
    --------
    >>> smoothed_distribution([3, 0, 1]).round(3).tolist()
    [0.636, 0.091, 0.273]
    >>> smoothed_distribution([3, 0, 1], alpha=0.0).tolist()
    [0.75, 0.0, 0.25]
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum() + alpha * c.shape[-1]
    if alpha < 0 or total <= 0:
        raise ValueError(f"need alpha >= 0 and some mass, got alpha={alpha}, total={total}")
    return (c + alpha) / total


def js_divergence(p_counts: npt.ArrayLike, q_counts: npt.ArrayLike, alpha: float = 0.5) -> float:
    """Jensen-Shannon divergence in bits (so in [0, 1]) between two smoothed count vectors.

    Symmetric and finite even without smoothing. Equal to `scipy.spatial.distance.jensenshannon(p,
    q, base=2) ** 2` (the tests pin it), computed with `rel_entr` directly, which is cheaper.

    Parameters
    ----------
    p_counts, q_counts
        Count vectors over the same bins.
    alpha
        Additive smoothing of both (see `smoothed_distribution`).

    Examples
    --------
    >>> round(js_divergence([60, 40], [40, 60], alpha=0.0), 4)
    0.029
    >>> js_divergence([7, 0], [0, 7], alpha=0.0)  # disjoint supports: the maximum, 1 bit
    1.0
    """
    p, q = smoothed_distribution(p_counts, alpha), smoothed_distribution(q_counts, alpha)
    m = 0.5 * (p + q)
    return float((rel_entr(p, m).sum() + rel_entr(q, m).sum()) / (2.0 * math.log(2.0)))


def effect_size(window_counts: npt.ArrayLike, baseline_counts: npt.ArrayLike, alpha: float = 0.5) -> float:
    """The drift verdict's effect size: JS divergence (bits) of the window from the baseline.

    Examples
    --------
    >>> round(effect_size([80, 120], [6000, 4000]), 4)
    0.0289
    """
    return js_divergence(window_counts, baseline_counts, alpha)
