"""Calibrators map raw label probabilities to calibrated ones. Pure numpy/scipy, no Kafka.

One method per module (`core` holds the original six and the shared helpers); `methods` names them all
and carries a fitted one through JSON; `selection` chooses among them by cross-validation. Everything
is importable from here.

The classify path calls `transform` on one row of K probabilities per message, so every transform is
a handful of numpy operations with the fitted parameters precomputed; fitting (on held-out reviewed
items) is where scipy does the work. Conventions follow scikit-learn's calibration estimators:
`fit(probs, labels)` returns self and fitted parameters end in `_`. `params()` / `from_params()`
carry a fitted calibrator through JSON (the compacted calibrators topic), and `to_dict` /
`from_dict` add the method name and version so a worker can rebuild whichever calibrator it is sent.
"""

from streams.calibration.calibrators.beta import BetaCalibration
from streams.calibration.calibrators.constant import ConstantCalibrator
from streams.calibration.calibrators.core import (
    EPS,
    Calibrator,
    HistogramBinning,
    IdentityCalibrator,
    IsotonicCalibrator,
    LabelBiasCorrection,
    NotFittedError,
    TemperatureScaling,
    VectorScaling,
)
from streams.calibration.calibrators.dirichlet import DirichletCalibration
from streams.calibration.calibrators.methods import (
    BINARY_ONLY,
    COMPLEXITY,
    DEFAULT_METHODS,
    METHODS,
    from_dict,
    n_params,
    to_dict,
    unsuitable,
)
from streams.calibration.calibrators.platt import PlattScaling
from streams.calibration.calibrators.selection import Selection, select, select_calibrator

__all__ = [
    "BINARY_ONLY", "COMPLEXITY", "DEFAULT_METHODS", "EPS", "METHODS", "BetaCalibration", "Calibrator",
    "ConstantCalibrator", "DirichletCalibration", "HistogramBinning", "IdentityCalibrator",
    "IsotonicCalibrator", "LabelBiasCorrection", "NotFittedError", "PlattScaling", "Selection",
    "TemperatureScaling", "VectorScaling", "from_dict", "n_params", "select", "select_calibrator", "to_dict",
    "unsuitable",
]
