"""One task's drift windows: partial summaries merge into the open tumbling window; the first summary
of a later window closes it, and the closed window is judged against the baseline. No Faust here: the
state lives in any mutable mapping (the worker's changelogged `drift-state` table, so windows,
episodes and the sequential detectors' evidence survive restarts), and the records to publish are
returned.

Windows are aligned on the summaries' Kafka timestamps (the flush time): window = floor(t / size).
A summary stamped before the open window (another worker's flush crossing the boundary, a second
late at most) is merged into the open window rather than dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson

from streams.drift.episodes import EpisodeTracker
from streams.drift.monitor import Baseline, DriftMonitor
from streams.drift.sequential import SequentialDrift
from streams.drift.summary import WindowSummary
from streams.publishing import Output
from streams.tasks import Task

log = logging.getLogger(__name__)


class TaskDrift:
    """Judges one task's traffic windows and canary runs; returns status and alert records."""

    def __init__(self, task: Task, state: MutableMapping[str, Any], baselines: Mapping[str, Baseline]) -> None:
        self.task, self.state, self.baselines = task, state, baselines
        self.monitor = DriftMonitor(task)

    def _restore(self) -> dict[str, Any]:
        saved = dict(self.state.get(self.task.name) or {})
        if "traffic" in saved:
            self.monitor.traffic = EpisodeTracker.from_dict(saved["traffic"])
            self.monitor.canary = EpisodeTracker.from_dict(saved["canary"])
        seq = saved.get("sequential")
        self.monitor.sequential = SequentialDrift.from_dict(seq) if seq else None
        return saved

    def _save(self, saved: dict[str, Any]) -> None:
        seq = self.monitor.sequential
        self.state[self.task.name] = {**saved, "traffic": self.monitor.traffic.to_dict(),
                                      "canary": self.monitor.canary.to_dict(),
                                      "sequential": seq.to_dict() if seq is not None else None}

    def on_traffic(self, summary: Mapping[str, Any], timestamp: float) -> list[Output]:
        """A partial summary stamped `timestamp` (seconds); judges the previous window when this one is later."""
        size = self.task.drift.window_s
        start = math.floor(timestamp / size) * size
        saved = self._restore()
        open_start = saved.get("window_start")
        outputs: list[Output] = []
        if open_start is None or start <= open_start:
            merged = WindowSummary.from_dict(summary)
            if saved.get("window"):
                merged = WindowSummary.from_dict(saved["window"]).merge(merged)
            saved["window"] = merged.to_dict()
            saved.setdefault("window_start", start)
        else:
            closed = WindowSummary.from_dict(saved["window"]) if saved.get("window") else None
            baseline = self.baselines.get(self.task.name)
            if closed is not None and closed.n > 0 and baseline is not None and baseline.traffic is not None:
                status, alert = self.monitor.on_window(closed, open_start, open_start + size, baseline)
                outputs = self._records(status, alert)
            saved["window_start"], saved["window"] = start, dict(summary)
        self._save(saved)
        return outputs

    def on_canary(self, samples: dict[str, list[dict[str, float]]], timestamp: float) -> list[Output]:
        baseline = self.baselines.get(self.task.name)
        if baseline is None or baseline.canaries is None:
            return []
        saved = self._restore()
        status, alert = self.monitor.on_canaries(samples, timestamp, baseline)
        self._save(saved)
        return self._records(status, alert)

    def _records(self, status: dict[str, Any], alert: dict[str, Any] | None) -> list[Output]:
        key = self.task.name.encode()
        outputs = [Output("drift_status", key, orjson.dumps(status))]
        if alert is not None:
            log.warning("drift alert for %s: %s %s (%s = %.4g, threshold %.4g)", self.task.name, alert["kind"],
                        alert["state"], alert["statistic"], alert["value"], alert["threshold"])
            outputs.append(Output("alerts", key, orjson.dumps(alert)))
        return outputs
