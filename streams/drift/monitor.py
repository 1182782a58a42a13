"""Drift bookkeeping between the statistics and the Faust wiring. Pure: no Kafka here.

- `DriftAccumulator` collects every classified message into a per-task `WindowSummary` on the hot
  path (O(1)); the worker drains it every second into partial summaries on `drift.summaries`,
  keyed by task, so one worker sees a task's whole traffic in its windows.
- `Baseline` is what a window is compared with: a traffic summary and, optionally, canary top-k
  distributions with their repeat-to-repeat spread.
- `DriftMonitor` holds one task's episode state and sequential detectors, and turns a closed window
  (or a canary run) into a status record and, once per episode, an alert: the window test and the
  CUSUMs feed one `EpisodeTracker`, so a drift is one episode whichever detector sees it first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.drift.canary_stats import CanaryBaseline, compare_canaries, pool_topk
from streams.drift.episodes import EpisodeTracker
from streams.drift.homogeneity import DriftTest, compare_window
from streams.drift.sequential import Firing, SequentialDrift
from streams.drift.summary import WindowSummary
from streams.stamps import SCHEMA_VERSION, iso, now_iso
from streams.tasks import Task, TaskRegistry

BINS = 10


class DriftAccumulator:
    """Per-task summaries of the messages classified since the last drain."""

    def __init__(self, tasks: TaskRegistry) -> None:
        self.tasks = tasks
        self.current: dict[str, WindowSummary] = {}

    def observe(self, task: Task, label_index: int, confidence: float, entropy: float, label_mass: float,
                chosen_logprob: float) -> None:
        summary = self.current.get(task.name)
        if summary is None:
            summary = self.current[task.name] = WindowSummary.empty(len(task.labels), BINS)
        summary.add(label_index, confidence, entropy, label_mass, chosen_logprob)

    def drain(self) -> dict[str, WindowSummary]:
        out, self.current = self.current, {}
        return out


def summary_record(task: Task, summary: WindowSummary, start: float, end: float) -> dict[str, Any]:
    return {"kind": "traffic", "task": task.name, "model": task.model.name, "labels": list(task.labels),
            "summary": summary.to_dict(), "start": iso(start), "end": iso(end), "schema_version": SCHEMA_VERSION}


def canary_record(task: Task, samples: dict[str, list[dict[str, float]]], at: float) -> dict[str, Any]:
    """One canary run: {prompt: [top-k token -> logprob, one per repeat]}."""
    return {"kind": "canary", "task": task.name, "model": task.model.name, "samples": samples,
            "start": iso(at), "end": iso(at), "schema_version": SCHEMA_VERSION}


@dataclass
class Baseline:
    task: str
    model: str
    version: str
    traffic: WindowSummary | None
    canaries: CanaryBaseline | None
    start: str
    end: str

    def ref(self) -> str:
        n = self.traffic.n if self.traffic is not None else 0
        return f"{self.version} ({n} messages, {self.start} .. {self.end})"

    def to_record(self) -> dict[str, Any]:
        return {"task": self.task, "model": self.model, "version": self.version,
                "traffic": self.traffic.to_dict() if self.traffic is not None else None,
                "canaries": self.canaries.to_dict() if self.canaries is not None else None,
                "start": self.start, "end": self.end, "created_at": now_iso(), "schema_version": SCHEMA_VERSION}

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Baseline:
        return cls(d["task"], d["model"], d["version"],
                   WindowSummary.from_dict(d["traffic"]) if d.get("traffic") else None,
                   CanaryBaseline.from_dict(d["canaries"]) if d.get("canaries") else None,
                   d["start"], d["end"])


def drift_test(task: Task) -> DriftTest:
    return DriftTest(alpha=task.drift.alpha, min_effect=task.drift.min_effect)


@dataclass
class DriftMonitor:
    """One task's drift state: episode trackers for traffic and canaries, the sequential detectors
    (built from the baseline on the first window, rebuilt when the baseline changes), the last values."""

    task: Task
    traffic: EpisodeTracker = field(init=False)
    canary: EpisodeTracker = field(init=False)
    sequential: SequentialDrift | None = None
    last: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = self.task.drift
        self.traffic = EpisodeTracker(d.confirm_windows, d.clear_windows)
        self.canary = EpisodeTracker(d.confirm_windows, d.clear_windows)

    def on_window(self, window: WindowSummary, start: float, end: float,
                  baseline: Baseline) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A closed window against the baseline -> (status, alert or None)."""
        assert baseline.traffic is not None
        verdict = compare_window(window, baseline.traffic, drift_test(self.task))
        family, strongest = verdict.strongest()
        d = self.task.drift
        if self.sequential is None or self.sequential.baseline != baseline.version:
            self.sequential = SequentialDrift(self.task.labels, baseline.traffic, baseline.version,
                                              d.sequential_arl0, d.sequential_shift, d.sequential_margin)
        fired = self.sequential.update(window, start)
        self.last["traffic"] = {
            "window_start": iso(start), "window_end": iso(end), "n": window.n, "drifted": verdict.drifted,
            "families": {name: v.to_dict() for name, v in verdict.verdicts.items()},
            "sequential": {"threshold": self.sequential.threshold, "statistics": self.sequential.values(),
                           "in_alarm": [f.signal for f in self.sequential.alarms()]},
            "entropy_mean": window.entropy_mean, "label_mass_mean": window.label_mass_mean,
            "chosen_logprob_mean": window.chosen_logprob_mean,
        }
        event = self.traffic.update(verdict.drifted or self.sequential.in_alarm)
        alert = None
        if event is not None:
            # Live traffic moved: model drift if the canaries moved too, else the data changed.
            kind = "model" if self.canary.active else "data"
            cusum = (fired or self.sequential.alarms()) if event == "open" else []
            if cusum and not verdict.drifted:
                alert = self._alert(kind, event, "cusum_llr", cusum[0].value, cusum[0].threshold, None, start, end,
                                    baseline, detector="cusum", firing=cusum[0])
            else:
                alert = self._alert(kind, event, f"{family}_{strongest.statistic}", strongest.value,
                                    strongest.threshold, strongest.p_value, start, end, baseline,
                                    detector="window_test", signal=family)
        return self.status(baseline), alert

    def on_canaries(self, samples: dict[str, list[dict[str, float]]], at: float,
                    baseline: Baseline) -> tuple[dict[str, Any], dict[str, Any] | None]:
        assert baseline.canaries is not None
        pooled = {prompt: pool_topk(runs) for prompt, runs in samples.items() if prompt in baseline.canaries.reference}
        if set(pooled) != set(baseline.canaries.reference):
            return self.status(baseline), None  # canaries changed in the task file: needs a new baseline
        verdict = compare_canaries(baseline.canaries, pooled, min_effect=self.task.drift.canary_min_effect)
        self.last["canary"] = {"at": iso(at), **verdict.to_dict()}
        event = self.canary.update(verdict.drifted)
        alert = None
        if event is not None:
            alert = self._alert("model", event, "canary_kl", verdict.value, verdict.threshold, verdict.p_value,
                                at, at, baseline, detector="canary", signal="canary_kl")
        return self.status(baseline), alert

    def status(self, baseline: Baseline | None) -> dict[str, Any]:
        return {"task": self.task.name, "model": self.task.model.name,
                "baseline": baseline.ref() if baseline else None,
                "data_drift_open": self.traffic.active, "model_drift_open": self.canary.active,
                "last": self.last, "updated_at": now_iso(), "schema_version": SCHEMA_VERSION}

    def _alert(self, kind: str, event: str, statistic: str, value: float, threshold: float, p_value: float | None,
               start: float, end: float, baseline: Baseline, detector: str, signal: str = "",
               firing: Firing | None = None) -> dict[str, Any]:
        """The alert record. On open, `change_point` estimates when the drift began: the CUSUM's last
        zero for a sequential alarm, the window's start for the window test and the canaries."""
        opening = event == "open"
        change = (firing.since if firing is not None and firing.since is not None else start) if opening else None
        return {"task": self.task.name, "model": self.task.model.name, "kind": kind,
                "state": "open" if opening else "recovered", "statistic": statistic,
                "value": float(value), "threshold": float(threshold),
                "p_value": float(p_value) if p_value is not None else None,
                "window_start": iso(start), "window_end": iso(end), "baseline_ref": baseline.ref(),
                "detector": detector, "signal": firing.signal if firing is not None else signal,
                "change_point": iso(change) if change is not None else None,
                "effect": float(firing.effect) if firing is not None else float(value),
                "raised_at": now_iso(), "schema_version": SCHEMA_VERSION}
