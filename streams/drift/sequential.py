"""Sequential detectors for gradual drift of a scalar per-window signal. Pure numpy/scipy.

Not run by the service yet: the worker judges each window on its own (`streams.drift.homogeneity`);
wiring these detectors into it is a later change. `bench/drift_eval.py` evaluates them on
synthetic streams with known change points, next to river's ADWIN and Page-Hinkley.

Why they exist: each window test forgets the previous window, so a slow drift of the mean entropy
can stay under every per-window test. `Cusum` and `PageHinkley` accumulate evidence across windows.
They are meant to be fed the standardised shift of the window's mean entropy (`entropy_shift_z`),
so that their parameters are in standard-deviation units and `cusum_threshold` sets the alarm
threshold for a target in-control average run length (ARL0 = expected windows between false
alarms). Their state is a few numbers with `to_dict`/`from_dict`, so it can live in a Faust table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from scipy.optimize import brentq

from streams.drift.summary import WindowSummary


def entropy_shift_z(window: WindowSummary, baseline: WindowSummary) -> float:
    """Standardised shift of the window's mean entropy: (mean_w - mean_b) / (s_b / sqrt(n_w)).

    In standard-error units of a window mean, so detector parameters do not depend on window size and
    windows of varying size are comparable. The baseline's own mean error, s_b / sqrt(n_b), is shared
    by every window and acts as an offset the detector cannot average away; with a baseline of >= 100
    windows it is <= 0.1 sigma and barely moves the false-alarm rate. If traffic is overdispersed
    (window means vary more than s_b / sqrt(n_w)), scale by the spread of the baseline's window means.
    """
    s = baseline.entropy_std
    if not window.n or not s > 0:
        return 0.0
    return (window.entropy_mean - baseline.entropy_mean) * math.sqrt(window.n) / s


def cusum_arl(h: float, k: float, shift: float = 0.0) -> float:
    """One-sided CUSUM average run length, Siegmund's approximation, all in sigma units.

    ARL = (exp(-2 D b) + 2 D b - 1) / (2 D^2) with D = shift - k and b = h + 1.166 (b^2 when D = 0).
    With shift = 0 it is the in-control ARL0 (mean windows between false alarms); with the shift to
    detect it is the expected detection delay.
    """
    d, b = shift - k, h + 1.166
    if abs(d) < 1e-9:
        return b * b
    return (math.exp(-2 * d * b) + 2 * d * b - 1) / (2 * d * d)


def cusum_threshold(arl0: float, k: float = 0.5, two_sided: bool = True) -> float:
    """Threshold h (sigma units) giving in-control ARL arl0; two-sided halves each side's ARL.

    For normal window means the approximation is within a few percent of exact ARLs (k = 0.5, h = 4:
    336 vs tabulated 336). False alarms per 1000 windows are then about 1000 / arl0.
    """
    target = 2 * arl0 if two_sided else arl0
    return float(brentq(lambda h: cusum_arl(h, k) - target, 0.0, 100.0))


class Cusum:
    """Two-sided tabular CUSUM against a target mean (river-style API).

    Catches a sustained shift of known size fastest: S+ = max(0, S+ + x - target - k),
    S- = max(0, S- + target - x - k); drift when either exceeds h. After an alarm the sums restart at
    the next update, as in river. The defaults suit standardised input (`entropy_shift_z`): ARL0 =
    5000 windows was chosen by `bench/drift_eval.py --tune`, the smallest of 1000, 2000, 5000, 10000
    whose measured false-alarm rate stayed under 1 per 1000 windows (figures in bench/README.md,
    "Drift detection"); the baseline mean's own error, shared by all windows, makes CUSUM alarm more
    often than its nominal 1000 / ARL0.

    Parameters
    ----------
    k
        Allowance ("delta"), in the input's units: half the shift to catch fastest.
    h
        Alarm threshold ("lambda"); None derives it from `arl0` with `cusum_threshold`.
    target
        In-control mean; None learns it as the mean of the first `min_instances` values.
    min_instances
        No alarm before this many values.
    arl0
        In-control average run length (values between false alarms) that sets h when h is None.

    Examples
    --------
    >>> c = Cusum(k=0.5, h=5.0)
    >>> for t, x in enumerate([0.1, -0.3, 0.2, 2.0, 2.1, 1.9, 2.2]):
    ...     c.update(x)
    ...     if c.drift_detected:
    ...         print("drift at", t, "S+ =", round(c.pos, 2))
    drift at 6 S+ = 6.2
    >>> round(Cusum().h, 2)  # from ARL0 = 5000, two-sided, k = 0.5
    7.35
    """

    def __init__(self, k: float = 0.5, h: float | None = None, target: float | None = 0.0,
                 min_instances: int = 0, arl0: float = 5000.0) -> None:
        self.k = float(k)
        self.h = float(h) if h is not None else cusum_threshold(arl0, self.k)
        self.target = target
        self.min_instances = int(min_instances)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.pos = 0.0
        self.neg = 0.0
        self._warm_sum = 0.0
        self._drift = False

    @property
    def drift_detected(self) -> bool:
        return self._drift

    def update(self, x: float) -> None:
        if self._drift:
            self.pos = self.neg = 0.0
            self._drift = False
        self.n += 1
        if self.target is None:
            self._warm_sum += x
            if self.n >= max(self.min_instances, 1):
                self.target = self._warm_sum / self.n
            return
        self.pos = max(0.0, self.pos + x - self.target - self.k)
        self.neg = max(0.0, self.neg + self.target - x - self.k)
        if self.n >= self.min_instances and (self.pos > self.h or self.neg > self.h):
            self._drift = True

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "h": self.h, "target": self.target, "min_instances": self.min_instances,
                "n": self.n, "pos": self.pos, "neg": self.neg, "warm_sum": self._warm_sum, "drift": self._drift}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cusum:
        c = cls(d["k"], d["h"], d["target"], d["min_instances"])
        c.n, c.pos, c.neg, c._warm_sum, c._drift = d["n"], d["pos"], d["neg"], d["warm_sum"], d["drift"]
        return c


class PageHinkley:
    """Two-sided Page-Hinkley test (river-style API): CUSUM against the running mean of the stream.

    Needs no target, at the price of a mean that absorbs part of the shift once it starts (slower on
    long shifts). m+ accumulates (x - mean_t - delta) and alarms when it rises more than `threshold`
    above its minimum; m- mirrors it for decreases. Once the running mean has settled it behaves as a
    CUSUM with k = delta, h = threshold, so `cusum_threshold` sets the threshold. After an alarm the
    state restarts at the next update, as in river; no fading factor (river's alpha = 1). The
    defaults suit standardised input (`entropy_shift_z`): ARL0 = 2000 windows was chosen by
    `bench/drift_eval.py --tune`, the smallest of 1000, 2000, 5000, 10000 whose measured false-alarm
    rate stayed under 1 per 1000 windows (figures in bench/README.md, "Drift detection"); needing no
    baseline mean, Page-Hinkley alarms less often than a CUSUM with the same threshold.

    Parameters
    ----------
    delta
        Allowance, in the input's units: half the shift to catch fastest.
    threshold
        Alarm threshold; None derives it from `arl0` with `cusum_threshold`.
    min_instances
        Values that pass before any alarm, so the running mean is settled.
    mode
        "both", "up" (increases only) or "down" (decreases only).
    arl0
        In-control average run length (values between false alarms) that sets the threshold when None.

    Examples
    --------
    >>> ph = PageHinkley(delta=0.5, threshold=4.0, min_instances=5)
    >>> for t, x in enumerate([0.1, -0.2, 0.0, 0.2, -0.1, 0.1, 3.0, 3.1, 2.9]):
    ...     ph.update(x)
    ...     if ph.drift_detected:
    ...         print("drift at", t)
    drift at 8
    >>> round(PageHinkley().threshold, 2)  # from ARL0 = 2000, two-sided, delta = 0.5
    6.44
    """

    def __init__(self, delta: float = 0.5, threshold: float | None = None, min_instances: int = 30,
                 mode: Literal["both", "up", "down"] = "both", arl0: float = 2000.0) -> None:
        if mode not in ("both", "up", "down"):
            raise ValueError(f"mode must be 'both', 'up' or 'down', got {mode!r}")
        self.delta = float(delta)
        two_sided = mode == "both"
        self.threshold = float(threshold) if threshold is not None else cusum_threshold(arl0, self.delta, two_sided)
        self.min_instances = int(min_instances)
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.sum_up = self.min_up = 0.0
        self.sum_down = self.max_down = 0.0
        self._drift = False

    @property
    def drift_detected(self) -> bool:
        return self._drift

    def update(self, x: float) -> None:
        if self._drift:
            self.reset()
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.sum_up += x - self.mean - self.delta
        self.min_up = min(self.min_up, self.sum_up)
        self.sum_down += x - self.mean + self.delta
        self.max_down = max(self.max_down, self.sum_down)
        if self.n < self.min_instances:
            return
        up = self.mode != "down" and self.sum_up - self.min_up > self.threshold
        down = self.mode != "up" and self.max_down - self.sum_down > self.threshold
        self._drift = bool(up or down)

    def to_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "threshold": self.threshold, "min_instances": self.min_instances,
                "mode": self.mode, "n": self.n, "mean": self.mean, "sum_up": self.sum_up, "min_up": self.min_up,
                "sum_down": self.sum_down, "max_down": self.max_down, "drift": self._drift}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PageHinkley:
        p = cls(d["delta"], d["threshold"], d["min_instances"], d["mode"])
        p.n, p.mean, p.sum_up, p.min_up = d["n"], d["mean"], d["sum_up"], d["min_up"]
        p.sum_down, p.max_down, p._drift = d["sum_down"], d["max_down"], d["drift"]
        return p
