"""Does the model know anything about this task? AUROC and accuracy against the majority label. Pure.

Calibration makes probabilities honest; it cannot create signal. A model whose scores rank the labels
no better than chance gets, at best, the constant base-rate predictor, which sends every item to
review: the command must say so plainly rather than publish a calibrator that looks like a fix.
The verdict is measured on raw scores, with percentile-bootstrap intervals:

- AUROC: for each label, the probability that a random item of that label gets a higher raw score
  for it than a random item of another label (Mann-Whitney), averaged over labels (one-vs-rest,
  macro). 0.5 is chance, below 0.5 the scores run backwards.
- Accuracy of the raw top label minus the majority label's share (the accuracy of always answering
  the commonest label), resampled together.

Verdict: "anti_correlated" when the AUROC interval lies below 0.5, "no_signal" when it contains 0.5,
otherwise "signal". The calibrator record carries it, and a worker sends every item of a task whose
calibrator says anything but "signal" to review (`CalibratorRegistry.threshold`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import rankdata

Verdict = Literal["signal", "no_signal", "anti_correlated"]


def _auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC along the last axis (ties count half): scores and positive of shape (..., n)."""
    ranks = rankdata(scores, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(((ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auroc(probs: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """One-vs-rest AUROC averaged over labels with both positives and negatives; one value per row of
    `rows` (resampled index sets, shape (B, n)), or a 0-d array for the data as given."""
    idx = np.arange(len(labels))[None, :] if rows is None else rows
    k = probs.shape[1]
    per_label = []
    for j in range(1 if k == 2 else 0, k):  # with two labels, label 0's AUROC equals label 1's
        a = _auroc(probs[idx, j], (labels[idx] == j).astype(np.float64))
        per_label.append(a)
    out = np.nanmean(np.stack(per_label), axis=0)
    return out[0] if rows is None else out


@dataclass(frozen=True)
class SignalReport:
    """The signal verdict of raw scores on labelled items (see module docstring).

    Attributes
    ----------
    verdict
        "signal", "no_signal" or "anti_correlated".
    auroc, auroc_interval
        Macro one-vs-rest AUROC of the raw scores and its bootstrap interval.
    accuracy, majority_rate, majority_label
        Raw top-label accuracy, and the share of the commonest label (its index).
    gap_interval
        Bootstrap interval of accuracy - majority_rate.
    n, level
        Items, and the intervals' confidence level.
    """

    verdict: Verdict
    auroc: float
    auroc_interval: tuple[float, float]
    accuracy: float
    majority_rate: float
    majority_label: int
    gap_interval: tuple[float, float]
    n: int
    level: float

    def to_dict(self, labels: tuple[str, ...] | None = None) -> dict[str, Any]:
        """JSON-ready, as stored in the calibrator record's `signal` field."""
        d = asdict(self)
        d["auroc_interval"], d["gap_interval"] = list(self.auroc_interval), list(self.gap_interval)
        if labels is not None:
            d["majority_label"] = labels[self.majority_label]
        return d

    def summary(self, labels: tuple[str, ...]) -> str:
        lo, hi = self.auroc_interval
        glo, ghi = self.gap_interval
        return (f"signal: AUROC of raw scores {self.auroc:.3f} [{lo:.3f}, {hi:.3f}]; raw top label right on "
                f"{self.accuracy:.1%}, always answering {labels[self.majority_label]!r} on {self.majority_rate:.1%} "
                f"(difference [{glo:+.1%}, {ghi:+.1%}], {self.level:.0%} bootstrap intervals, n={self.n}): "
                f"{self.verdict}")

    def warning(self) -> str | None:
        """The plain-language warning for a model with no usable signal, or None."""
        if self.verdict == "signal":
            return None
        what = ("the scores run backwards: the more confident the model, the more often it is wrong"
                if self.verdict == "anti_correlated" else
                "the raw scores rank this task's labels no better than chance")
        return (f"WARNING: the model does no better than the base rate on this task: {what} "
                f"(AUROC {self.auroc:.3f}, {self.level:.0%} interval {self.auroc_interval[0]:.3f}-"
                f"{self.auroc_interval[1]:.3f}). No calibrator can add signal, so every item of this task will go "
                "to review (workers route on this verdict). Change the prompt, the examples or the model, then "
                "calibrate again.")


def signal_report(probs: np.ndarray, labels: np.ndarray, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> SignalReport:
    """The verdict on raw probabilities (n, K) and true label indices (n,).

    Examples
    --------
    Scores that run against the labels:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 400)
    >>> p1 = np.clip(0.5 - 0.2 * (2 * y - 1) + rng.normal(0, 0.2, 400), 0, 1)
    >>> report = signal_report(np.column_stack([1 - p1, p1]), y, n_boot=200)
    >>> report.verdict, round(report.auroc, 2)
    ('anti_correlated', 0.09)
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.intp)
    if p.ndim != 2 or p.shape[0] != len(y) or len(y) < 2:
        raise ValueError(f"need (n, K) probabilities and n labels with n >= 2, got {p.shape} and {y.shape}")
    n, k = p.shape
    rows = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    alpha = (1.0 - level) / 2.0
    auroc = float(macro_auroc(p, y))
    boot_auroc = macro_auroc(p, y, rows)
    auroc_interval = tuple(float(v) for v in np.nanquantile(boot_auroc, [alpha, 1.0 - alpha]))
    counts = np.bincount(y, minlength=k)
    majority = int(counts.argmax())
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    boot_gap = correct[rows].mean(axis=1) - np.stack([(y[rows] == j).mean(axis=1) for j in range(k)]).max(axis=0)
    gap_interval = tuple(float(v) for v in np.quantile(boot_gap, [alpha, 1.0 - alpha]))
    lo, hi = auroc_interval
    verdict: Verdict = "anti_correlated" if hi < 0.5 else "no_signal" if lo <= 0.5 else "signal"
    return SignalReport(verdict, auroc, (lo, hi), float(correct.mean()), float(counts[majority] / n), majority,
                        (gap_interval[0], gap_interval[1]), n, level)
