"""Calibrators map raw label probabilities to calibrated ones. Pure numpy.

Only the identity stands here until fitted calibrators land; the classify path already goes
through this seam (and every result names the calibrator version) so that adding temperature
scaling and friends changes no wiring.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Calibrator(Protocol):
    version: str
    method: str

    def transform(self, probabilities: np.ndarray) -> np.ndarray: ...


class IdentityCalibrator:
    """Raw probabilities unchanged: the honest default before any labelled data exists."""

    method = "identity"
    version = "identity-0"

    def transform(self, probabilities: np.ndarray) -> np.ndarray:
        return probabilities
