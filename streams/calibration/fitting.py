"""Fit a calibrator on labelled examples and decide whether it may replace the current one. Pure.

One procedure serves the calibrate command and the online refit from reviewer labels: split into a
fit set and a held-out set (stratified, seeded), choose the method by cross-validated NLL on the fit
set only (one-standard-error rule, never worse than the base rate: `calibrators.selection`), then
judge on the held-out set. The signal verdict (`signal.py`) is measured on the raw scores of all the items.
A refit is published only if its held-out NLL is no worse than the calibrator in force. The current
calibrator may have been fitted on some of those held-out items in an earlier round, which favours
it: the rule errs toward keeping what works.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.calibration.calibrators import Calibrator, select
from streams.calibration.metrics import confidence_and_correct, summary
from streams.calibration.risk_control import ltt_threshold
from streams.calibration.signal import SignalReport, signal_report


@dataclass(frozen=True)
class FitOutcome:
    calibrator: Calibrator
    cv_nll: dict[str, float]
    cv_se: dict[str, float]
    selection: str  # the CV table with standard errors and the reason for the choice
    signal: SignalReport  # raw scores on all the labelled items: is there anything to calibrate?
    fit_size: int
    heldout_size: int
    metrics_before: dict[str, Any]  # raw probabilities, held-out
    metrics_after: dict[str, Any]  # the new calibrator, held-out
    current_metrics: dict[str, Any] | None  # the calibrator in force, held-out
    publish: bool
    reason: str
    risk_control: dict[str, Any] | None
    heldout_index: np.ndarray  # rows of the input judged on (for diagrams of the same split)


def examples_to_arrays(records: Iterable[dict[str, Any]], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labelled-example records -> (probs (n, K), label indices (n,)); the last record per id wins."""
    index = {label: i for i, label in enumerate(labels)}
    latest: dict[str, dict[str, Any]] = {}
    for rec in records:
        raw = rec.get("raw_probabilities") or {}
        if rec.get("label") in index and all(label in raw for label in labels):
            latest[rec["id"]] = rec
    probs = np.array([[float(r["raw_probabilities"][label]) for label in labels] for r in latest.values()])
    y = np.array([index[r["label"]] for r in latest.values()], dtype=np.intp)
    return probs.reshape(-1, len(labels)), y


def stratified_split(y: np.ndarray, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held-out) with each class split in the same proportion."""
    rng = np.random.default_rng(seed)
    fit, hold = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_hold = round(len(idx) * holdout_fraction)
        hold.append(idx[:n_hold])
        fit.append(idx[n_hold:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(hold))


def fit_and_evaluate(probs: np.ndarray, y: np.ndarray, methods: Sequence[str], holdout_fraction: float,
                     current: Calibrator | None = None, target_error: float | None = None,
                     delta: float = 0.1, seed: int = 0, n_boot: int = 1000) -> FitOutcome:
    fit_idx, hold_idx = stratified_split(y, holdout_fraction, seed)
    chosen = select(probs[fit_idx], y[fit_idx], methods=tuple(methods), seed=seed)
    calibrator = chosen.calibrator
    p_hold, y_hold = probs[hold_idx], y[hold_idx]
    calibrated = calibrator.transform(p_hold)
    before = summary(p_hold, y_hold, n_boot=n_boot, seed=seed)
    after = summary(calibrated, y_hold, n_boot=n_boot, seed=seed)
    current_metrics = None
    if current is None:
        publish, reason = True, "no calibrator in force"
    else:
        current_metrics = summary(current.transform(p_hold), y_hold, n_boot=n_boot, seed=seed)
        publish = after["nll"] <= current_metrics["nll"] + 1e-9
        reason = (f"held-out NLL {after['nll']:.4f} {'<=' if publish else '>'} "
                  f"{current_metrics['nll']:.4f} of {current.version}")
    risk = None
    if target_error is not None:
        conf, correct = confidence_and_correct(calibrated, y_hold)
        risk = ltt_threshold(conf, correct, target_error, delta).to_dict()
    verdict = signal_report(probs, y, n_boot=n_boot, seed=seed)
    return FitOutcome(calibrator, chosen.cv_nll, chosen.cv_se, chosen.table(), verdict, len(fit_idx), len(hold_idx),
                      before, after, current_metrics, publish, reason, risk, hold_idx)
