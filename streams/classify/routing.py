"""Where an item goes: auto-accepted to results, or to a person. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Why an item went to review (mirrored in schemas/review_item.schema.json).
REVIEW_REASONS = (
    "low_confidence", "low_label_mass", "no_logprobs", "model_error", "invalid_scores", "not_calibrated", "audit",
    "ambiguous",
)


@dataclass(frozen=True, slots=True)
class Route:
    decision: str  # "auto" | "review"
    reason: str | None
    label_index: int  # -1 when no label can be named


def route(calibrated: np.ndarray | Sequence[float] | None, label_mass: float, threshold: float | None,
          min_label_mass: float) -> Route:
    """Where one message goes. Never guess: missing logprobs or a low label mass go to review before
    confidence is even read.

    `calibrated` is one row of calibrated label probabilities (a 1-D array or a list), or None when
    the reply had no logprobs. `threshold` None means no valid threshold exists yet (risk-controlled
    task without a calibrator that meets its target): everything goes to review. The decisions are
    made on a Python list (cheaper than numpy calls on a few labels); `p.index(max(p))` is numpy's
    argmax (the first maximum) once NaN is ruled out.
    """
    if calibrated is None:
        return Route("review", "no_logprobs", -1)
    if isinstance(calibrated, np.ndarray):
        if calibrated.ndim != 1:
            raise ValueError(f"route takes one row of label probabilities, got shape {calibrated.shape}")
        p: Sequence[float] = calibrated.tolist()
    else:
        p = calibrated
    if not all(map(math.isfinite, p)):  # a broken endpoint or calibrator: never route NaN to auto
        return Route("review", "invalid_scores", -1)
    if label_mass < min_label_mass or not any(p):
        return Route("review", "low_label_mass", p.index(max(p)) if any(p) else -1)
    best = p.index(max(p))
    if threshold is None:
        return Route("review", "not_calibrated", best)
    if p[best] < threshold:
        return Route("review", "low_confidence", best)
    return Route("auto", None, best)
