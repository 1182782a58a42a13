"""Risk-controlled routing threshold via Learn-then-Test (Angelopoulos, Bates et al., 2021). Pure numpy/scipy.

A team states "auto-accepted items may be wrong at most `target_error` (alpha) of the time, and we accept
a `delta` chance that the threshold we pick breaks that". A threshold eyeballed on calibration data cannot
promise this: the lowest threshold whose empirical error looks fine overfits and misses alpha about half the
time. LTT turns threshold choice into multiple testing with a finite-sample guarantee:

* For a threshold lambda, auto-accept items with ``confidence >= lambda``; ``n`` are accepted, ``k`` of them
  are wrong. The selective risk is ``R(lambda) = P(wrong | accepted)`` and the null is ``H: R(lambda) > alpha``.
* Conditional on ``n``, the accepted calibration items are i.i.d. draws from the accepted population, so
  ``k ~ Binomial(n, R(lambda))`` and ``p = binom.cdf(k, n, alpha)`` is an exact, valid p-value ("binomial").
  The Hoeffding-Bentkus p-value ("hb") is the bound LTT states for general bounded losses; for a 0/1 loss it
  is never smaller than the exact tail, so it only costs coverage and is offered for comparison.
* Fixed-sequence testing walks the grid from strict to lenient and rejects while ``p <= delta``, stopping at
  the first non-rejection. That controls the family-wise error at ``delta`` with no multiplicity correction,
  so with probability >= 1 - delta every rejected lambda, in particular the lowest one (the one returned,
  giving the most coverage), has ``R(lambda) <= alpha``.
* If nothing is rejected no threshold is certified: the result is infeasible with threshold ``+inf``
  (everything goes to review). It never falls back to a guess.

The grid must not depend on the labels. By default it is the observed calibration confidences (thinned to
``max_grid`` quantiles of them): it uses the scores but never the labels, the usual LTT practice (the proof
is for a grid fixed in advance; pass ``grid`` for exactly that).

Thresholds accepting so few items that even zero errors could not reject (``n < log(delta) / log(1 - alpha)``,
about 114 for alpha=2%, delta=10%) or fewer than ``min_accepted`` simply fail to reject. That depends only on
``n`` (no labels), so they are left out of the sequence rather than being allowed to end it before it starts.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats

PValue = Literal["binomial", "hb"]
_METHODS: dict[str, str] = {"binomial": "ltt-binomial", "hb": "ltt-hb"}


@dataclass(frozen=True)
class RiskControlledThreshold:
    """The certified threshold and what it did on the calibration data (for audit and dashboards)."""

    threshold: float  # math.inf when infeasible: nothing is auto-accepted
    target_error: float  # alpha
    delta: float  # allowed probability that the guarantee fails
    feasible: bool
    coverage: float  # share of calibration items auto-accepted at the threshold
    empirical_error: float | None  # error rate among accepted calibration items; None when none accepted
    n_calibration: int
    n_accepted: int
    p_value: float | None  # p-value of the chosen threshold; None when infeasible
    method: str  # "ltt-binomial" or "ltt-hb"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: an infinite threshold becomes None, since JSON has no infinity."""
        return {
            "threshold": None if math.isinf(self.threshold) else float(self.threshold),
            "target_error": float(self.target_error),
            "delta": float(self.delta),
            "feasible": bool(self.feasible),
            "coverage": float(self.coverage),
            "empirical_error": None if self.empirical_error is None else float(self.empirical_error),
            "n_calibration": int(self.n_calibration),
            "n_accepted": int(self.n_accepted),
            "p_value": None if self.p_value is None else float(self.p_value),
            "method": self.method,
        }


def binomial_pvalues(errors: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """Exact p-values for H: R > alpha given k errors in n accepted: P(Binomial(n, alpha) <= k)."""
    return np.asarray(scipy.stats.binom.cdf(errors, n, alpha))


def hb_pvalues(errors: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """Hoeffding-Bentkus p-values (LTT/RCPS bound for losses in [0, 1]); never below the exact binomial."""
    errors = np.asarray(errors, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        risk_hat = np.where(n > 0, errors / np.maximum(n, 1.0), 0.0)
    r = np.minimum(risk_hat, alpha)
    # Hoeffding: exp(-n * KL(min(R_hat, alpha) || alpha)) between Bernoullis.
    null = np.stack([np.full_like(r, alpha), np.full_like(r, 1.0 - alpha)])
    kl = scipy.stats.entropy(np.stack([r, 1.0 - r]), null, axis=0)
    hoeffding = np.exp(-n * kl)
    # Bentkus: e * P(Binomial(n, alpha) <= ceil(n * R_hat)); n * R_hat = k exactly for a 0/1 loss.
    bentkus = math.e * scipy.stats.binom.cdf(np.ceil(errors), n, alpha)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


_PVALUE_FUNCTIONS = {"binomial": binomial_pvalues, "hb": hb_pvalues}


def _validate(
    confidence: np.ndarray,
    correct: np.ndarray,
    target_error: float,
    delta: float,
    pvalue: str,
    max_grid: int,
    min_accepted: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Reject malformed input loudly: a silently wrong threshold would void the guarantee."""
    conf = np.asarray(confidence, dtype=float)
    corr = np.asarray(correct)
    if conf.ndim != 1 or corr.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D arrays, got shapes {conf.shape} and {corr.shape}")
    if conf.shape != corr.shape:
        raise ValueError(f"confidence and correct must have the same length, got {conf.size} and {corr.size}")
    if conf.size == 0:
        raise ValueError("need at least one labelled calibration item, got none")
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidence must be finite (no NaN or inf)")
    if corr.dtype != bool:
        if not np.all(np.isin(corr, (0, 1))):
            raise ValueError("correct must be boolean (or 0/1)")
        corr = corr.astype(bool)
    if not (isinstance(target_error, numbers.Real) and 0.0 < target_error < 1.0):
        raise ValueError(f"target_error (alpha) must be strictly between 0 and 1, got {target_error!r}")
    if not (isinstance(delta, numbers.Real) and 0.0 < delta < 1.0):
        raise ValueError(f"delta must be strictly between 0 and 1, got {delta!r}")
    if pvalue not in _PVALUE_FUNCTIONS:
        raise ValueError(f"pvalue must be one of {sorted(_PVALUE_FUNCTIONS)}, got {pvalue!r}")
    if max_grid < 1:
        raise ValueError(f"max_grid must be at least 1, got {max_grid}")
    if min_accepted < 1:
        raise ValueError(f"min_accepted must be at least 1, got {min_accepted}")
    return conf, corr


def _default_grid(conf: np.ndarray, max_grid: int) -> np.ndarray:
    """Observed confidences (labels unused), thinned to observed-value quantiles when there are too many."""
    grid = np.unique(conf)
    if grid.size > max_grid:
        ordered = np.sort(conf)  # evenly spaced order statistics = empirical quantiles, always observed values
        grid = np.unique(ordered[np.linspace(0, conf.size - 1, max_grid).round().astype(np.intp)])
    return grid


def ltt_threshold(
    confidence: np.ndarray,
    correct: np.ndarray,
    target_error: float,
    delta: float,
    pvalue: PValue = "binomial",
    max_grid: int = 1000,
    *,
    grid: np.ndarray | None = None,
    min_accepted: int = 1,
) -> RiskControlledThreshold:
    """Lowest threshold certified by fixed-sequence LTT so that P(R(threshold) <= alpha) >= 1 - delta.

    `confidence` is the routed score (e.g. top calibrated probability), `correct` whether that item's label
    was right. `grid` (optional) pre-specifies candidate thresholds; it must not be chosen by looking at
    labels. Returns an infeasible result (threshold inf) rather than an uncertified threshold.
    """
    conf, corr = _validate(confidence, correct, target_error, delta, pvalue, max_grid, min_accepted)
    if grid is None:
        candidates = _default_grid(conf, max_grid)
    else:
        candidates = np.unique(np.asarray(grid, dtype=float))
        if candidates.size == 0 or not np.all(np.isfinite(candidates)):
            raise ValueError("grid must be a non-empty array of finite thresholds")
    candidates = candidates[::-1]  # strict -> lenient: the fixed testing order

    # n and k for every candidate in one pass: sort once by confidence, descending.
    order = np.argsort(-conf, kind="stable")
    sorted_desc = conf[order]
    errors_cum = np.concatenate([[0], np.cumsum(~corr[order])])
    n = np.searchsorted(-sorted_desc, -candidates, side="right")  # count of conf >= lambda
    k = errors_cum[n]

    pfun = _PVALUE_FUNCTIONS[pvalue]
    # Label-free: where even zero errors cannot reach delta, the test cannot reject; skip it (see module doc).
    testable = (n >= min_accepted) & (pfun(np.zeros_like(n), n, target_error) <= delta)
    p = np.where(testable, pfun(k, n, target_error), 1.0)

    n_cal = int(conf.size)
    method = _METHODS[pvalue]
    start = int(np.argmax(testable)) if testable.any() else candidates.size
    rejected = p[start:] <= delta
    n_rejected = int(np.argmin(rejected)) if not rejected.all() else int(rejected.size)
    if n_rejected == 0:
        alpha, d = float(target_error), float(delta)
        return RiskControlledThreshold(math.inf, alpha, d, False, 0.0, None, n_cal, 0, None, method)

    chosen = start + n_rejected - 1  # last rejection before the sequence stopped: the most lenient certified
    n_acc = int(n[chosen])
    return RiskControlledThreshold(
        threshold=float(candidates[chosen]),
        target_error=float(target_error),
        delta=float(delta),
        feasible=True,
        coverage=n_acc / n_cal,
        empirical_error=int(k[chosen]) / n_acc,
        n_calibration=n_cal,
        n_accepted=n_acc,
        p_value=float(p[chosen]),
        method=method,
    )


def accept(confidence: np.ndarray, rc: RiskControlledThreshold) -> np.ndarray:
    """Auto-accept mask (conf >= threshold); an infeasible result accepts nothing, sending all to review."""
    return np.asarray(confidence, dtype=float) >= rc.threshold
