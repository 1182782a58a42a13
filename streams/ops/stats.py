"""What the dashboard plots: traffic counts, their history, drift statistics over time. Pure: no Kafka.

The worker feeds `TrafficStats` from the records it emits (so throughput, review rate and the
confidence histogram are this worker's share; Prometheus sums workers), samples it into `History`
every few seconds, and feeds `DriftHistory` from the drift-status topic (every worker reads all of
it, so drift plots are the whole service's). Every buffer is bounded.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.ops.review_queue import Outcome, parse_time

OUTCOMES = ("auto", "review", "audit", "dead_letter")
CONFIDENCE_BINS = 20


def outcome_of(topic: str, record: Mapping[str, Any]) -> str | None:
    """The request outcome a record stands for: auto, review, audit (copy of an auto item) or dead_letter."""
    if topic == "deadletter":
        return "dead_letter"
    if topic == "review":
        return "audit" if record.get("audit") else "review"
    if topic == "results" and record.get("decision") == "auto":
        return "auto"
    return None


@dataclass
class TrafficStats:
    """Cumulative counts per task since the worker started."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    confidence: dict[str, list[int]] = field(default_factory=dict)  # CONFIDENCE_BINS equal-width bins

    def observe(self, task: str, outcome: str, confidence: float | None) -> None:
        self.counts.setdefault(task, Counter())[outcome] += 1
        if confidence is not None and outcome in ("auto", "review"):  # audit copies would count twice
            bins = self.confidence.setdefault(task, [0] * CONFIDENCE_BINS)
            bins[min(max(int(confidence * CONFIDENCE_BINS), 0), CONFIDENCE_BINS - 1)] += 1


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    counts: dict[str, int]
    depth: int
    oldest_age_s: float


@dataclass
class History:
    """Per task, a ring of periodic samples; rates come from consecutive samples."""

    maxlen: int = 720  # one hour at the default 5 s
    samples: dict[str, deque[Sample]] = field(default_factory=dict)

    def sample(self, at: float, stats: TrafficStats, queue: Mapping[str, Mapping[str, float]],
               tasks: Iterable[str]) -> None:
        for task in tasks:
            q = queue.get(task, {})
            counts = dict(stats.counts.get(task, Counter()))
            ring = self.samples.setdefault(task, deque(maxlen=self.maxlen))
            ring.append(Sample(at, counts, int(q.get("depth", 0)), float(q.get("oldest_age_s", 0.0))))

    def rates(self, task: str) -> dict[str, list[tuple[float, float]]]:
        """Throughput (classified/s), review rate (share of classified items sent to review), queue depth, age."""
        ring = list(self.samples.get(task, ()))
        out: dict[str, list[tuple[float, float]]] = {"throughput": [], "review_rate": [], "depth": [],
                                                     "oldest_age_s": []}
        for prev, cur in itertools.pairwise(ring):
            dt = cur.at - prev.at
            if dt <= 0:
                continue
            auto = cur.counts.get("auto", 0) - prev.counts.get("auto", 0)
            review = cur.counts.get("review", 0) - prev.counts.get("review", 0)
            out["throughput"].append((cur.at, (auto + review) / dt))
            if auto + review:
                out["review_rate"].append((cur.at, review / (auto + review)))
        for s in ring:
            out["depth"].append((s.at, float(s.depth)))
            out["oldest_age_s"].append((s.at, s.oldest_age_s))
        return out


@dataclass
class DriftHistory:
    """Per task, the drift statistics of each status record over time, with their thresholds."""

    maxlen: int = 500
    points: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, record: Mapping[str, Any], now: float) -> bool:
        task = record.get("task")
        last = record.get("last")
        if not isinstance(task, str) or not isinstance(last, Mapping):
            return False
        self.latest[task] = dict(record)
        at = parse_time(record.get("updated_at"), now)
        values: dict[str, tuple[float, float, bool]] = {}
        traffic = last.get("traffic") or {}
        for family, v in (traffic.get("families") or {}).items():
            if isinstance(v, Mapping) and isinstance(v.get("value"), (int, float)):
                values[family] = (float(v["value"]), float(v.get("threshold", 0.0)), bool(v.get("drifted")))
        canary = last.get("canary") or {}
        if isinstance(canary.get("value"), (int, float)):
            values["canary"] = (float(canary["value"]), float(canary.get("threshold", 0.0)),
                                bool(canary.get("drifted")))
        if not values:
            return False
        ring = self.points.setdefault(task, deque(maxlen=self.maxlen))
        if ring and ring[-1]["values"] == values:
            return True  # a canary-only update repeats the traffic values: keep one point
        ring.append({"at": at, "values": values, "statistic": _statistic(traffic)})
        return True

    def series(self, task: str) -> dict[str, list[tuple[float, float, float, bool]]]:
        """family -> [(time, value, threshold, drifted)]."""
        out: dict[str, list[tuple[float, float, float, bool]]] = {}
        for point in self.points.get(task, ()):
            for family, (value, threshold, drifted) in point["values"].items():
                out.setdefault(family, []).append((point["at"], value, threshold, drifted))
        return out


def _statistic(traffic: Mapping[str, Any]) -> str:
    for v in (traffic.get("families") or {}).values():
        if isinstance(v, Mapping) and v.get("statistic"):
            return str(v["statistic"])
    return "js"


def reliability(outcomes: Iterable[Outcome], bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins of model confidence on answered items: mean confidence, accuracy, count.

    Routing depends on the confidence (and a hash of the id for audits), so within a bin the
    answered items are not selected by correctness, and the per-bin accuracy is a fair estimate.
    """
    sums = [[0.0, 0, 0] for _ in range(bins)]
    for o in outcomes:
        if o.confidence is None or o.model_label is None:
            continue
        b = sums[min(max(int(o.confidence * bins), 0), bins - 1)]
        b[0] += o.confidence
        b[1] += int(o.correct)
        b[2] += 1
    return [{"lo": i / bins, "hi": (i + 1) / bins, "confidence": s[0] / s[2], "accuracy": s[1] / s[2], "n": s[2]}
            for i, s in enumerate(sums) if s[2]]


def audited_accuracy(outcomes: Iterable[Outcome]) -> tuple[float | None, int]:
    """Accuracy of the model on audited (auto-accepted, sampled) items a reviewer answered, and how many."""
    audited = [o for o in outcomes if o.audit and o.model_label is not None]
    if not audited:
        return None, 0
    return sum(o.correct for o in audited) / len(audited), len(audited)
