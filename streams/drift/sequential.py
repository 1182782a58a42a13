"""The sequential detectors of one task: a pair of `MeanShiftCusum` per traffic signal. Pure numpy.

The window test (`streams.drift.homogeneity.compare_window`) forgets each window once judged, so a
slow drift is caught only when one window alone differs enough. These detectors accumulate evidence
across windows, message by message, on the signals a window summary carries:

- `label_share[L]`: the share of messages labelled L (one label for a binary task, as the two shares
  move together; every label otherwise), per-message standard deviation sqrt(p (1 - p)) with p the
  baseline's share (Jeffreys-smoothed, so a label unseen in the baseline still has a spread);
- `entropy_mean`: normalised entropy, from the summary's exact sums;
- `confidence_mean`: calibrated confidence, from its histogram's bin midpoints (the summary keeps no
  sum of confidence; a shift of the distribution moves the binned mean just as well).

Each signal gets an upward and a downward CUSUM with design shift `shift` baseline standard
deviations per message, against the baseline's mean moved `margin` of its standard errors towards the
side watched (the baseline mean's own error would otherwise bias every window the same way; see
`SequentialDrift`). The threshold splits one false-alarm budget, `arl0` windows between false
alarms of the whole set, over all its one-sided statistics (Bonferroni, `cusum_threshold`), as the
window test's Holm correction does over its families. The state is built from the baseline and
restarts when the baseline changes (`SequentialDrift.baseline`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.drift.cusum import MeanShiftCusum, cusum_threshold
from streams.drift.summary import WindowSummary


def min_baseline_messages(shift: float) -> int:
    """Messages a baseline needs for its own error to stay small next to the CUSUMs' reference shift.

    A baseline of N messages misplaces each signal's mean by about 1/sqrt(N) standard deviations, and
    every window inherits that error; a CUSUM only ignores a persistent offset below `shift` / 2. Four
    standard errors under that (a 1-in-30,000 event per signal) needs N >= (8 / shift)^2.

    >>> min_baseline_messages(0.05)
    25600
    """
    return math.ceil((8.0 / shift) ** 2)


def _midpoints(bins: int) -> np.ndarray:
    return (np.arange(bins) + 0.5) / bins


def signals(window: WindowSummary, labels: Sequence[str]) -> dict[str, tuple[int, float]]:
    """The window's (messages, sum of the per-message value) for every signal."""
    shares = labels[:1] if len(labels) == 2 else labels
    out = {f"label_share[{label}]": (window.n, float(window.label_counts[i])) for i, label in enumerate(shares)}
    out["entropy_mean"] = (window.n, window.entropy_sum)
    out["confidence_mean"] = (window.n, float(window.confidence_hist @ _midpoints(window.confidence_hist.shape[0])))
    return out


def references(baseline: WindowSummary, labels: Sequence[str]) -> dict[str, tuple[float, float]]:
    """The baseline's (mean, per-message standard deviation) for every signal."""
    shares = labels[:1] if len(labels) == 2 else labels
    out = {}
    for i, label in enumerate(shares):
        p = (float(baseline.label_counts[i]) + 0.5) / (baseline.n + 1.0)
        out[f"label_share[{label}]"] = (p, math.sqrt(p * (1 - p)))
    # A spread is never taken below the summary's resolution (Sheppard's w^2 / 12 for bins of width w):
    # a baseline whose values all sit in one bin has a variance of float rounding error, and dividing a
    # window's equal mean by it would read rounding noise as a shift of many standard deviations.
    def floor(hist: np.ndarray) -> float:
        return 1.0 / (12.0 * hist.shape[0] ** 2)

    out["entropy_mean"] = (baseline.entropy_mean, math.sqrt(baseline.entropy_std ** 2 + floor(baseline.entropy_hist)))
    mid, hist = _midpoints(baseline.confidence_hist.shape[0]), baseline.confidence_hist
    mean = float(hist @ mid) / baseline.n
    out["confidence_mean"] = (mean, math.sqrt(max(float(hist @ (mid - mean) ** 2) / baseline.n, 0.0) + floor(hist)))
    return out


@dataclass(frozen=True)
class Firing:
    """One statistic in alarm: which signal and direction, its value and threshold, since when, how large."""

    signal: str  # e.g. "label_share[pos] down"
    value: float  # S
    threshold: float  # h
    since: float | None  # estimated change point (start of a window, seconds)
    effect: float  # mean shift since then, in baseline standard deviations


class SequentialDrift:
    """Every signal's two CUSUMs for one task against one baseline; state round-trips through a dict.

    Parameters
    ----------
    labels
        The task's labels, in order.
    baseline
        The baseline summary the signals are compared with.
    baseline_ref
        Identifies the baseline (its version): the state restarts when it changes.
    arl0
        Windows between false alarms of the whole set, at least (`drift.sequential_arl0`).
    shift
        Design shift in baseline standard deviations per message (`drift.sequential_shift`).
    margin
        Each side's reference mean is moved this many standard errors of the baseline's mean towards
        the side it watches (`drift.sequential_margin`). The baseline's error is shared by every window,
        so uncorrected it shortens one side's run to a false alarm for as long as the baseline is used.

    Examples
    --------
    >>> import numpy as np
    >>> from streams.drift.summary import WindowSummary
    >>> def window(share, n=500, seed=0):
    ...     rng = np.random.default_rng(seed)
    ...     s = WindowSummary.empty(2)
    ...     labels = (rng.random(n) >= share).astype(int)
    ...     s.add_many(labels, rng.uniform(0.6, 1, n), rng.uniform(0, 0.8, n), np.ones(n), np.zeros(n))
    ...     return s
    >>> seq = SequentialDrift(["pos", "neg"], window(0.55, 20_000), "b1", arl0=1000.0, shift=0.05)
    >>> len(seq.detectors), round(seq.threshold, 2)  # label share, entropy, confidence; up and down
    (6, 8.7)
    >>> for t in range(20):  # the positive share falls by 0.625 points a window
    ...     fired = seq.update(window(0.55 - 0.00625 * t, seed=t + 1), start=300.0 * t)
    ...     if fired:
    ...         print(t, fired[0].signal, fired[0].since, round(fired[0].effect, 2))
    ...         break
    9 label_share[pos] down 1500.0 -0.1
    >>> SequentialDrift.from_dict(seq.to_dict()).to_dict() == seq.to_dict()
    True
    """

    def __init__(self, labels: Sequence[str], baseline: WindowSummary, baseline_ref: str, arl0: float,
                 shift: float, margin: float = 1.0) -> None:
        self.baseline = baseline_ref
        refs = references(baseline, labels)
        self.labels = list(labels)
        self.threshold = cusum_threshold(arl0, 2 * len(refs))
        se = 1.0 / math.sqrt(max(baseline.n, 1))  # the baseline mean's standard error, in sigmas
        self.detectors = {f"{name} {side}": MeanShiftCusum(mean + sign * margin * se * std, std, sign * shift,
                                                           self.threshold)
                          for name, (mean, std) in refs.items() for side, sign in (("up", 1.0), ("down", -1.0))}

    @property
    def in_alarm(self) -> bool:
        return any(d.drift_detected for d in self.detectors.values())

    def update(self, window: WindowSummary, start: float) -> list[Firing]:
        """Feed one closed window; returns the statistics that crossed their threshold in it."""
        values = signals(window, self.labels)
        fired = []
        for key, det in self.detectors.items():
            was = det.drift_detected
            n, total = values[key.rsplit(" ", 1)[0]]
            det.update(n, total, start)
            if det.drift_detected and not was:
                fired.append(Firing(key, det.stat, det.h, det.since, det.effect))
        return sorted(fired, key=lambda f: -abs(f.effect))

    def alarms(self) -> list[Firing]:
        """Every statistic in alarm now, largest effect first."""
        return sorted((Firing(k, d.stat, d.h, d.since, d.effect) for k, d in self.detectors.items()
                       if d.drift_detected), key=lambda f: -abs(f.effect))

    def values(self) -> dict[str, float]:
        return {k: d.stat for k, d in self.detectors.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "labels": self.labels, "threshold": self.threshold,
                "detectors": {k: d.to_dict() for k, d in self.detectors.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SequentialDrift:
        seq = cls.__new__(cls)
        seq.baseline, seq.labels, seq.threshold = d["baseline"], list(d["labels"]), float(d["threshold"])
        seq.detectors = {k: MeanShiftCusum.from_dict(v) for k, v in d["detectors"].items()}
        return seq
