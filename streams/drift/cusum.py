"""CUSUM of a mean shift with per-message increments, updated once per window. Pure Python.

Why per message. A CUSUM fed one standardised value per window can only see a drift once a whole
window's mean has moved by a fraction of its standard error; slow drifts then hide below the window
granularity. The log-likelihood ratio of "the mean moved by `shift` standard deviations" is a sum
over messages, and for a window it only needs the window's count and sum (a `WindowSummary` has
both), so the statistic below is the per-message Gaussian CUSUM evaluated at window ends: exact in
its increments, checked once per window, and a handful of numbers of state for a changelogged table.

For a window of n messages with values summing to `total`, against a baseline mean mu and per-message
standard deviation sigma, and a design shift d (in sigmas), the increment of the upward statistic is

    llr = d * z - n * d^2 / 2,   z = (total - n * mu) / sigma

(the downward one uses -d), and S = max(0, S + llr). It alarms when S >= h.

**Threshold.** Under no change, each window's likelihood ratio exp(llr) has mean 1 (exactly for
Gaussian sums, to the central-limit approximation otherwise), so the Shiryaev-Roberts statistic is a
martingale plus time and the CUSUM, which is never above it, alarms after at least exp(h) windows on
average (Lorden 1971; Pollak 1985), whatever the window sizes. `cusum_threshold` therefore sets
h = ln(m * arl0) for m one-sided statistics sharing a false-alarm budget of one per `arl0` windows
(Bonferroni: the alarm rates add up to at most m / exp(h)). It is a bound: measured false-alarm
rates are lower (bench/README.md, "Drift detection"). Evaluating S only at window ends can only
lengthen the run to a false alarm.

**After an alarm** S is held at h while the evidence keeps coming (so a persistent drift stays one
alarm, not a fresh one every few windows) and the alarm lasts until S falls below h / 2; S then
restarts from 0, so a false alarm does not leave a head start for the next one.

**Change point.** The windows since S was last 0 are the ones whose evidence S holds: the start of
the first of them estimates when the change began (the CUSUM's maximum-likelihood change point).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def cusum_threshold(arl0: float, statistics: int = 1) -> float:
    """h = ln(statistics * arl0): at least `arl0` windows between false alarms of any of the statistics.

    Examples
    --------
    >>> round(cusum_threshold(1000.0, statistics=6), 2)
    8.7
    """
    if arl0 < 1 or statistics < 1:
        raise ValueError(f"need arl0 >= 1 and statistics >= 1, got {arl0}, {statistics}")
    return math.log(statistics * arl0)


@dataclass(slots=True)
class MeanShiftCusum:
    """One-sided CUSUM on the mean of per-message values, fed each window's count and sum (river-style).

    Parameters
    ----------
    mean, std
        In-control (baseline) mean and per-message standard deviation of the value.
    shift
        Signed design shift, in baseline standard deviations per message: the change detected
        fastest (a positive shift watches increases, a negative one decreases).
    h
        Alarm threshold on the log-likelihood ratio (`cusum_threshold`).
    stat
        The statistic S (restored state; 0 for a new detector).
    alarm
        Whether an alarm is in progress (restored state).
    since
        Start (seconds) of the first window of the evidence S holds: the estimated change point.
    n_since, total_since
        Messages and their sum since then (for the effect size).

    Examples
    --------
    >>> c = MeanShiftCusum(mean=0.5, std=0.5, shift=-0.1, h=cusum_threshold(1000.0, 2))
    >>> for t, share in enumerate([0.50, 0.51, 0.49, 0.47, 0.45, 0.43, 0.41]):
    ...     c.update(n=500, total=500 * share, start=60.0 * t)
    ...     if c.drift_detected:
    ...         print(f"window {t}: S = {c.stat:.1f}, change from t = {c.since:g} s, effect {c.effect:.3f}")
    ...         break
    window 6: S = 7.6, change from t = 180 s, effect -0.120
    >>> MeanShiftCusum.from_dict(c.to_dict()) == c
    True
    """

    mean: float
    std: float
    shift: float
    h: float
    stat: float = 0.0
    alarm: bool = False
    since: float | None = None
    n_since: int = 0
    total_since: float = 0.0

    @property
    def drift_detected(self) -> bool:
        """True while an alarm is in progress (from the crossing of h until S falls below h / 2)."""
        return self.alarm

    @property
    def effect(self) -> float:
        """Mean shift since the estimated change point, in baseline standard deviations."""
        if not self.n_since or not self.std > 0:
            return 0.0
        return (self.total_since / self.n_since - self.mean) / self.std

    def reset(self) -> None:
        self.stat, self.alarm, self.since, self.n_since, self.total_since = 0.0, False, None, 0, 0.0

    def update(self, n: int, total: float, start: float) -> None:
        """One window: `n` messages whose values sum to `total`; `start` is the window's start (seconds)."""
        if n <= 0 or not self.std > 0:
            return
        z = (total - n * self.mean) / self.std
        stat = self.stat + self.shift * z - n * self.shift * self.shift / 2
        if stat <= 0.0:
            self.reset()
            return
        if self.since is None:
            self.since = start
        self.n_since += n
        self.total_since += total
        if stat >= self.h:
            self.alarm, stat = True, self.h
        elif self.alarm and stat < self.h / 2:
            self.reset()
            return
        self.stat = stat

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "shift": self.shift, "h": self.h, "stat": self.stat,
                "alarm": self.alarm, "since": self.since, "n_since": self.n_since, "total_since": self.total_since}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MeanShiftCusum:
        return cls(float(d["mean"]), float(d["std"]), float(d["shift"]), float(d["h"]), float(d["stat"]),
                   bool(d["alarm"]), None if d["since"] is None else float(d["since"]), int(d["n_since"]),
                   float(d["total_since"]))
