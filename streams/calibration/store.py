"""Calibrator records on the compacted calibrators topic: build, restore, and feed them to workers.

Every worker must apply every task's calibrator, so each reads the whole topic itself (no consumer
group) rather than through a Faust agent, whose group would hand each partition to one worker only,
or a Faust global table, whose recovery stops at `end_offsets()` and can come back stale on Tansu.
The initial load reads to the exact fetch high watermark before the worker classifies anything.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from streams.calibration.calibrators import Calibrator, from_dict, to_dict
from streams.kafka_io import TopicFeed
from streams.kafka_security import kafka_client_options
from streams.settings import Settings
from streams.stamps import SCHEMA_VERSION, now_iso


def new_version(task: str, method: str) -> str:
    """Sortable by time, unique across concurrent publishers."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")[:-3]
    return f"{task}.{method}.{stamp}Z.{secrets.token_hex(2)}"


def calibrator_record(task: str, method: str, model: str, labels: tuple[str, ...], calibrator: Calibrator,
                      fit_size: int, heldout_size: int, metrics_before: dict[str, Any], metrics_after: dict[str, Any],
                      source: str, cv_nll: dict[str, float] | None = None,
                      risk_control: dict[str, Any] | None = None, cv_se: dict[str, float] | None = None,
                      signal: dict[str, Any] | None = None) -> dict[str, Any]:
    calibrator.version = new_version(task, calibrator.method)
    state = to_dict(calibrator)
    record: dict[str, Any] = {
        "task": task,
        "confidence_method": method,
        "model": model,
        "labels": list(labels),
        "method": calibrator.method,
        "params": state["params"],
        "n_classes": state["n_classes"],
        "version": calibrator.version,
        "fit_size": fit_size,
        "heldout_size": heldout_size,
        "metrics_before": metrics_before,
        "metrics_after": metrics_after,
        "source": source,
        "fitted_at": now_iso(),
        "schema_version": SCHEMA_VERSION,
    }
    if cv_nll is not None:
        record["cv_nll"] = cv_nll
    if cv_se is not None:
        record["cv_se"] = cv_se
    if risk_control is not None:
        record["risk_control"] = risk_control
    if signal is not None:
        record["signal"] = signal
    return record


def calibrator_from_record(record: dict[str, Any]) -> Calibrator:
    return from_dict({"method": record["method"], "version": record["version"],
                      "n_classes": record["n_classes"], "params": record["params"]})


def calibrator_feed(settings: Settings, apply: Callable[[dict[str, Any]], bool]) -> TopicFeed:
    """Every calibrator record, all existing ones at start, new ones live (hot reload)."""
    return TopicFeed(settings.bootstrap_servers, settings.topic("calibrators"), apply, kafka_client_options(settings))
