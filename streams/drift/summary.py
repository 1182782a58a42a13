"""Window summaries: what a drift window keeps of its messages. Pure numpy, no Kafka.

A window (tumbling or hopping, per task and model) is summarised by a `WindowSummary`: message
count, label counts, histograms of confidence and of normalised entropy on fixed bins over [0, 1],
and sums for the means of entropy, label mass and chosen-token logprob. The baseline is the `merge`
of the summaries of a reference period. `streams.drift.homogeneity.compare_window` compares the
current window's three count vectors (labels, confidence, entropy) with the baseline's.

Every state is a few numbers with `to_dict`/`from_dict`, so it can live in a Faust table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


def _bins(x: npt.ArrayLike, bins: int) -> np.ndarray:
    """Bin indices of x in `bins` equal bins over [0, 1]: [lo, hi), the last closed, outside clipped.

    The same float product and truncation as `WindowSummary.add`, so batch and per-message agree.
    """
    return np.clip((np.asarray(x, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


@dataclass(eq=False, slots=True)
class WindowSummary:
    """Counts and sums for one window of one task and model; `merge` adds windows or partitions.

    A drift verdict needs distributions, not messages: counts and sums are O(1) to update on the hot
    path, small enough for a changelogged table, and add up exactly across partitions, workers and
    hopping windows. Only messages that named a label are added (review items with a null label carry
    no distribution). Confidence and entropy are in [0, 1]; values outside are clipped into the end
    bins. The count arrays are updated in place through cached memoryviews (cheaper per message than
    numpy item assignment), so replace a summary rather than rebinding its arrays.

    Parameters
    ----------
    label_counts
        Messages per task label, in the task's label order (int64).
    confidence_hist
        Messages per equal bin of calibrated confidence over [0, 1] (int64).
    entropy_hist
        Messages per equal bin of normalised entropy over [0, 1] (int64).
    n
        Number of messages.
    entropy_sum, entropy_sumsq
        Sum and sum of squares of normalised entropy (mean and per-message spread).
    label_mass_sum, chosen_logprob_sum
        Sums of label mass and of the chosen token's logprob (their window means).

    Examples
    --------
    >>> import numpy as np
    >>> s = WindowSummary.empty(n_labels=2, bins=4)
    >>> s.add(label_index=1, confidence=0.9, entropy=0.3, label_mass=0.98, chosen_logprob=-0.1)
    >>> s.add_many(np.array([0, 1]), np.array([0.6, 0.8]), np.array([0.9, 0.5]),
    ...            np.array([1.0, 0.95]), np.array([-0.5, -0.2]))
    >>> s.n, s.label_counts.tolist(), s.confidence_hist.tolist()
    (3, [1, 2], [0, 0, 1, 2])
    >>> round(s.entropy_mean, 3), round(s.entropy_std, 3)
    (0.567, 0.249)
    >>> both = s.merge(s)
    >>> both.n, both.label_counts.tolist()
    (6, [2, 4])
    >>> WindowSummary.from_dict(s.to_dict()).to_dict() == s.to_dict()
    True
    """

    label_counts: np.ndarray  # int64, one per task label, in the task's label order
    confidence_hist: np.ndarray  # int64, equal bins over [0, 1]
    entropy_hist: np.ndarray  # int64, equal bins over [0, 1] (normalised entropy)
    n: int = 0
    entropy_sum: float = 0.0
    entropy_sumsq: float = 0.0  # for the per-message spread that standardises the sequential detectors
    label_mass_sum: float = 0.0
    chosen_logprob_sum: float = 0.0
    _views: tuple[Any, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("label_counts", "confidence_hist", "entropy_hist"):
            a = np.ascontiguousarray(getattr(self, name), dtype=np.int64)
            if a.ndim != 1 or a.shape[0] < 1:
                raise ValueError(f"{name} must be a non-empty vector, got shape {a.shape}")
            setattr(self, name, a)
        self._views = (self.label_counts.data, self.confidence_hist.data, self.entropy_hist.data,
                       self.confidence_hist.shape[0], self.entropy_hist.shape[0])

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (and deepcopy) through the JSON form: memoryviews cannot be pickled."""
        return (WindowSummary.from_dict, (self.to_dict(),))

    @classmethod
    def empty(cls, n_labels: int, bins: int = 10) -> WindowSummary:
        if n_labels < 1 or bins < 1:
            raise ValueError(f"need n_labels >= 1 and bins >= 1, got {n_labels}, {bins}")
        z = np.zeros
        return cls(z(n_labels, np.int64), z(bins, np.int64), z(bins, np.int64))

    def add(self, label_index: int, confidence: float, entropy: float, label_mass: float,
            chosen_logprob: float) -> None:
        """One message, O(1): three integer increments and four float sums, no allocation."""
        labels, conf, ent, cb, eb = self._views
        if label_index < 0:
            raise IndexError(f"label_index must be >= 0, got {label_index}")  # -1 would count the last label
        labels[label_index] += 1
        i = int(confidence * cb)
        conf[i if 0 <= i < cb else (0 if i < 0 else cb - 1)] += 1
        i = int(entropy * eb)
        ent[i if 0 <= i < eb else (0 if i < 0 else eb - 1)] += 1
        self.n += 1
        self.entropy_sum += entropy
        self.entropy_sumsq += entropy * entropy
        self.label_mass_sum += label_mass
        self.chosen_logprob_sum += chosen_logprob

    def add_many(self, label_index: npt.ArrayLike, confidence: npt.ArrayLike, entropy: npt.ArrayLike,
                 label_mass: npt.ArrayLike, chosen_logprob: npt.ArrayLike) -> None:
        """A batch of messages (e.g. a `stream.take()` batch); equal to calling `add` for each."""
        li = np.asarray(label_index, dtype=np.int64)
        e = np.asarray(entropy, dtype=np.float64)
        self.n += int(li.shape[0])
        self.label_counts += np.bincount(li, minlength=self.label_counts.shape[0])
        self.confidence_hist += np.bincount(_bins(confidence, self.confidence_hist.shape[0]),
                                            minlength=self.confidence_hist.shape[0])
        self.entropy_hist += np.bincount(_bins(e, self.entropy_hist.shape[0]), minlength=self.entropy_hist.shape[0])
        self.entropy_sum += float(e.sum())
        self.entropy_sumsq += float(e @ e)
        self.label_mass_sum += float(np.sum(label_mass))
        self.chosen_logprob_sum += float(np.sum(chosen_logprob))

    def merge(self, other: WindowSummary) -> WindowSummary:
        """A new summary of both windows' messages (hopping windows, partitions, a baseline period)."""
        if (self.label_counts.shape != other.label_counts.shape
                or self.confidence_hist.shape != other.confidence_hist.shape
                or self.entropy_hist.shape != other.entropy_hist.shape):
            raise ValueError("cannot merge summaries with different labels or bins")
        return WindowSummary(
            self.label_counts + other.label_counts, self.confidence_hist + other.confidence_hist,
            self.entropy_hist + other.entropy_hist, self.n + other.n,
            self.entropy_sum + other.entropy_sum, self.entropy_sumsq + other.entropy_sumsq,
            self.label_mass_sum + other.label_mass_sum, self.chosen_logprob_sum + other.chosen_logprob_sum)

    def _mean(self, total: float) -> float:
        return total / self.n if self.n else math.nan

    @property
    def entropy_mean(self) -> float:
        return self._mean(self.entropy_sum)

    @property
    def entropy_std(self) -> float:
        """Per-message standard deviation of entropy (population form; NaN when empty)."""
        if not self.n:
            return math.nan
        return math.sqrt(max(self.entropy_sumsq / self.n - self.entropy_mean**2, 0.0))

    @property
    def label_mass_mean(self) -> float:
        return self._mean(self.label_mass_sum)

    @property
    def chosen_logprob_mean(self) -> float:
        return self._mean(self.chosen_logprob_sum)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "label_counts": self.label_counts.tolist(),
            "confidence_hist": self.confidence_hist.tolist(),
            "entropy_hist": self.entropy_hist.tolist(),
            "entropy_sum": self.entropy_sum,
            "entropy_sumsq": self.entropy_sumsq,
            "label_mass_sum": self.label_mass_sum,
            "chosen_logprob_sum": self.chosen_logprob_sum,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowSummary:
        a = lambda key: np.asarray(d[key], dtype=np.int64)  # noqa: E731
        return cls(a("label_counts"), a("confidence_hist"), a("entropy_hist"), int(d["n"]),
                   float(d["entropy_sum"]), float(d["entropy_sumsq"]), float(d["label_mass_sum"]),
                   float(d["chosen_logprob_sum"]))
