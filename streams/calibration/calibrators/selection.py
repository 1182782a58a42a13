"""Choose a calibrator by cross-validated log loss, with a one-standard-error rule and the base rate as floor.

Picking the lowest cross-validated score among many candidates overfits the choice: on a few hundred
items a flexible method (histogram binning, isotonic) often wins the CV by noise and then does worse on
new items than a one-parameter map. So, as in Breiman's one-standard-error rule:

1. Every candidate's out-of-fold predictions are scored item by item with the log loss (a proper
   scoring rule); its CV score is the mean, its standard error the items' standard deviation / sqrt(n).
2. A candidate worse than the constant base-rate predictor is never chosen (the constant is always
   scored, listed or not): if nothing beats it, the model's scores carry no usable signal.
3. Among the rest, the simplest (lowest `COMPLEXITY`) whose score is within one standard error of the
   best wins; ties in complexity go to the lower score. The standard error here is that of the
   difference from the best, item by item (the candidates are scored on the same items, so their
   losses move together): the per-method error above is several times larger and, on a few hundred
   items, would excuse a real loss (on 300 Rotten Tomatoes items it let temperature scaling, which
   cannot fix the model's lean, stand in for Platt on 5 of 20 splits; bench/README.md).
4. The standard errors are the naive ones, s / sqrt(n) over the out-of-fold losses. Nadeau and Bengio's
   (2003) correction for cross-validation (x 1.5 at 5 folds) was tried: it stopped beta calibration from
   winning on about one Rotten Tomatoes or first-names split in six where Platt scaling did as well on
   new items, but on synthetic Platt-distorted scores (300 items) it let temperature scaling, which cannot
   remove a lean, stand in for Platt on 12 of 40 seeds instead of 1, at +0.005 held-out NLL against
   about +0.0002 saved on the real sets (bench/README.md). Choosing too simple a map costs more than one
   extra parameter, so the rule keeps the smaller yardstick.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from streams.calibration.calibrators.core import Calibrator, IdentityCalibrator, _fit_inputs
from streams.calibration.calibrators.methods import COMPLEXITY, DEFAULT_METHODS, METHODS, unsuitable
from streams.calibration.metrics import EPS

log = logging.getLogger(__name__)

FLOOR = "constant"


@dataclass(frozen=True)
class Selection:
    """The outcome of `select`: the refitted calibrator and the CV table it was chosen from.

    Attributes
    ----------
    calibrator
        The chosen method refitted on all the data.
    cv_nll, cv_se
        Mean out-of-fold NLL and its standard error per method tried.
    skipped
        Methods not tried, with the reason (too few items for their parameters, two labels only).
    best
        The method with the lowest CV NLL (may differ from the chosen one).
    se_gap
        Standard error of each method's per-item CV loss minus the best's (the one-SE rule's yardstick).
    reason
        One line: why the chosen method won.
    """

    calibrator: Calibrator
    cv_nll: dict[str, float]
    cv_se: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)
    best: str | None = None
    reason: str = ""
    se_gap: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """The CV table as printed by the calibrate command: method, rank, CV NLL, SE, verdict."""
        chosen = self.calibrator.method
        floor = self.cv_nll.get(FLOOR)
        best = self.cv_nll[self.best] if self.best else None
        lines = [f"{'method':<13}{'rank':>5}{'CV NLL':>10}{'SE':>9}{'SE vs best':>12}  "]
        for m, v in sorted(self.cv_nll.items(), key=lambda kv: kv[1]):
            gap = self.se_gap.get(m, 0.0)
            note = ("<- chosen" if m == chosen else
                    "worse than the base rate" if floor is not None and v > floor else
                    "within 1 SE, more complex" if best is not None and v <= best + gap else "")
            row = f"{m:<13}{COMPLEXITY.get(m, 9):>5}{v:>10.4f}{self.cv_se[m]:>9.4f}{gap:>12.4f}  {note}"
            lines.append(row.rstrip())
        lines += [f"{m:<13}{'':>5}{'-':>10}{'-':>9}{'-':>12}  skipped: {why}" for m, why in self.skipped.items()]
        return "\n".join([*lines, self.reason])


def _stratified_folds(labels: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per item: shuffle, group by label, deal round-robin, so every fold sees every label
    in about its overall share (small labels would otherwise vanish from some folds)."""
    shuffled = rng.permutation(len(labels))
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    fold = np.empty(len(labels), dtype=np.intp)
    fold[order] = np.arange(len(labels)) % folds
    return fold


def _cv_losses(cls: type[Calibrator], p: np.ndarray, y: np.ndarray, fold: np.ndarray, folds: int) -> np.ndarray:
    """Per-item log loss of out-of-fold predictions."""
    out = np.empty_like(p)
    for f in range(folds):
        test = fold == f
        out[test] = cls().fit(p[~test], y[~test]).transform(p[test])
    return -np.log(np.maximum(out[np.arange(len(y)), y], EPS))


def select(probs: np.ndarray, labels: np.ndarray, methods: Sequence[str] = DEFAULT_METHODS, folds: int = 5,
           seed: int = 0) -> Selection:
    """Choose among `methods` by K-fold CV NLL with the one-standard-error rule (module docstring).

    Everything here is the fit set; the caller keeps its test split away, so the reported before/after
    metrics are not the ones the choice was made on. With fewer than 2 * folds items the CV scores would
    be noise: the identity is returned with an empty table, and a warning logged.
    """
    p, y = _fit_inputs(probs, labels)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown or no methods {unknown}; known: {sorted(METHODS)}")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if len(y) < 2 * folds:
        log.warning("select_calibrator: %d items < 2 * %d folds, keeping the identity", len(y), folds)
        return Selection(IdentityCalibrator(), {}, {}, reason="too few items to cross-validate: identity")
    n, k = p.shape
    fit_n = n - n // folds
    fold = _stratified_folds(y, folds, np.random.default_rng(seed))
    candidates = list(dict.fromkeys([*methods, FLOOR]))
    # The floor is always fitted: it is what every method is judged against, however few the items.
    skipped = {m: why for m in candidates if m != FLOOR and (why := unsuitable(m, k, fit_n)) is not None}
    losses = {m: _cv_losses(METHODS[m], p, y, fold, folds) for m in candidates if m not in skipped}
    mean = {m: float(v.mean()) for m, v in losses.items()}
    se = {m: float(v.std(ddof=1) / np.sqrt(n)) for m, v in losses.items()}
    best = min(mean, key=mean.__getitem__)
    se_gap = {m: float((v - losses[best]).std(ddof=1) / np.sqrt(n)) for m, v in losses.items()}
    eligible = [m for m in mean if mean[m] <= mean[FLOOR]]
    within = [m for m in eligible if mean[m] <= mean[best] + se_gap[m]]
    chosen = min(within, key=lambda m: (COMPLEXITY.get(m, 9), mean[m]))
    if chosen == FLOOR and best == FLOOR:
        reason = "no method beats the constant base-rate predictor on CV: the scores carry no usable signal"
    elif chosen == best:
        reason = f"{chosen}: lowest CV NLL"
    else:
        reason = (f"{chosen}: simplest within one standard error of the best ({best} {mean[best]:.4f}; "
                  f"{chosen} {mean[chosen] - mean[best]:+.4f}, SE of the difference {se_gap[chosen]:.4f})")
    return Selection(METHODS[chosen]().fit(p, y), mean, se, skipped, best, reason, se_gap)


def select_calibrator(probs: np.ndarray, labels: np.ndarray, methods: Sequence[str] = DEFAULT_METHODS,
                      folds: int = 5, seed: int = 0) -> tuple[Calibrator, dict[str, float]]:
    """`select`, returning (calibrator, CV NLL per method) only.

    Examples
    --------
    Scores that carry no information about the labels: nothing beats the base rate.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> p1 = rng.random(500)
    >>> cal, scores = select_calibrator(np.column_stack([1 - p1, p1]), rng.integers(0, 2, 500))
    >>> cal.method
    'constant'
    """
    chosen = select(probs, labels, methods, folds, seed)
    return chosen.calibrator, chosen.cv_nll
