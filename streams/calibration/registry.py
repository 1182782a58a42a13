"""Which calibrator and risk threshold apply to a (task, method, model): one registry for the worker,
the refit agent and the calibrate command.

A calibrator record names its task, its confidence method (`confidence_method`; absent in records
written before methods existed, meaning first-token) and the model whose scores it was fitted on.
`CalibratorKey` is built from those fields in one place, and is also the record's key on the compacted
calibrators topic, so compaction keeps the newest calibrator of every (task, method, model). When
two records for one key arrive (a replay, or records read from two partitions), the one fitted last
wins, whatever the read order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.calibration.calibrators import Calibrator, IdentityCalibrator
from streams.calibration.store import calibrator_from_record
from streams.confidence.names import FIRST_TOKEN
from streams.tasks import Task, TaskRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CalibratorKey:
    """One calibrator per task, confidence method and model (an ensemble member may use another model)."""

    task: str
    method: str
    model: str

    @classmethod
    def of_record(cls, record: Mapping[str, Any], method_field: str = "confidence_method") -> CalibratorKey:
        """The key of a calibrator record; of a labelled example with `method_field="method"`."""
        return cls(str(record.get("task", "")), str(record.get(method_field) or FIRST_TOKEN),
                   str(record.get("model", "")))

    def topic_key(self) -> bytes:
        """The record's key on the calibrators topic."""
        return f"{self.task}/{self.method}@{self.model}".encode()


@dataclass(frozen=True, slots=True)
class Installed:
    calibrator: Calibrator
    threshold: float | None  # a feasible risk-controlled threshold for the task's target, if any
    fitted_at: str
    signal: dict[str, Any] | None = None  # the record's signal verdict (streams/calibration/signal.py)


class CalibratorRegistry:
    """Calibrators and risk-controlled thresholds by `CalibratorKey`; identity until a record arrives."""

    def __init__(self, tasks: TaskRegistry) -> None:
        self.tasks = tasks
        self._installed: dict[CalibratorKey, Installed] = {}
        self._identity = IdentityCalibrator()

    def calibrator(self, task: str, method: str, model: str) -> Calibrator:
        found = self._installed.get(CalibratorKey(task, method, model))
        return found.calibrator if found is not None else self._identity

    def threshold(self, task: Task, method: str) -> float | None:
        """The confidence needed for auto-accept; None (everything to review) when a risk-controlled task has no
        valid one yet, or when the calibrator in force found no signal in the model's scores."""
        found = self._installed.get(CalibratorKey(task.name, method, task.model.name))
        if found is not None and found.signal is not None and found.signal.get("verdict", "signal") != "signal":
            return None
        if task.target_error is None:
            return task.review_threshold
        return found.threshold if found is not None else None

    def signals(self) -> dict[str, dict[str, Any]]:
        """The signal verdict of every installed calibrator that carries one, by topic key (for the dashboard)."""
        return {key.topic_key().decode(): found.signal for key, found in self._installed.items()
                if found.signal is not None}

    def apply(self, record: dict[str, Any]) -> bool:
        """Install a calibrator record (from the calibrators topic); False when it is not for us."""
        key = CalibratorKey.of_record(record)
        task = self.tasks.get(key.task)
        if task is None:
            return False
        if tuple(record.get("labels", task.labels)) != task.labels:
            log.warning("calibrator %s is for labels %s, task %s has %s; ignored",
                        record.get("version"), record.get("labels"), task.name, task.labels)
            return False
        fitted_at = str(record.get("fitted_at", ""))
        current = self._installed.get(key)
        if current is not None and fitted_at < current.fitted_at:
            log.info("calibrator %s for %s is older than the one in force; ignored", record.get("version"), key)
            return False
        threshold = None
        if task.target_error is not None:
            rc = record.get("risk_control")
            if rc and rc.get("feasible") and rc.get("target_error") == task.target_error \
                    and rc.get("delta") == task.failure_probability:
                threshold = float(rc["threshold"])
            else:
                log.warning("calibrator %s has no feasible threshold for target error %s at %s; "
                            "task %s sends everything to review", record.get("version"), task.target_error,
                            task.failure_probability, task.name)
        signal = record.get("signal")
        if isinstance(signal, dict) and signal.get("verdict", "signal") != "signal":
            log.warning("calibrator %s found no signal in %s's scores for task %s (%s): every item goes to review",
                        record.get("version"), key.model, task.name, signal.get("verdict"))
        self._installed[key] = Installed(calibrator_from_record(record), threshold, fitted_at,
                                         signal if isinstance(signal, dict) else None)
        log.info("task %s (%s on %s) now uses calibrator %s (%s)", task.name, key.method, key.model,
                 record.get("version"), record.get("method"))
        return True
