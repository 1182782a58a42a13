"""Calibrators on the compacted calibrators topic: publish, load the newest at start, follow for hot reload.

Every worker must apply every task's calibrator, so each reads the whole topic itself (no consumer
group) rather than through a Faust agent, whose group would hand each partition to one worker only,
or a Faust global table, whose recovery stops at `end_offsets()` and can come back stale on Tansu.
The initial load reads to the exact fetch high watermark before the worker classifies anything.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import ConsumerStoppedError

from streams.calibration.calibrators import Calibrator, from_dict, to_dict
from streams.classify.records import SCHEMA_VERSION, now_iso
from streams.kafka_io import assign_all, read_to_high_watermark
from streams.settings import Settings

log = logging.getLogger(__name__)


def new_version(task: str, method: str) -> str:
    """Sortable by time, unique across concurrent publishers."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")[:-3]
    return f"{task}.{method}.{stamp}Z.{secrets.token_hex(2)}"


def calibrator_record(task: str, model: str, labels: tuple[str, ...], calibrator: Calibrator, fit_size: int,
                      heldout_size: int, metrics_before: dict[str, Any], metrics_after: dict[str, Any],
                      source: str, cv_nll: dict[str, float] | None = None,
                      risk_control: dict[str, Any] | None = None) -> dict[str, Any]:
    calibrator.version = new_version(task, calibrator.method)
    state = to_dict(calibrator)
    record: dict[str, Any] = {
        "task": task,
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
    if risk_control is not None:
        record["risk_control"] = risk_control
    return record


def calibrator_from_record(record: dict[str, Any]) -> Calibrator:
    return from_dict({"method": record["method"], "version": record["version"],
                      "n_classes": record["n_classes"], "params": record["params"]})


async def publish_calibrator(settings: Settings, record: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic("calibrators"), orjson.dumps(record), key=record["task"].encode())
    finally:
        await producer.stop()


class CalibratorFeed:
    """Applies calibrator records as they appear: all existing ones at start, new ones live."""

    def __init__(self, settings: Settings, apply: Callable[[dict[str, Any]], bool]) -> None:
        self.settings = settings
        self.apply = apply
        self.consumer: AIOKafkaConsumer | None = None
        self.tps: list = []
        self.applied = 0

    def _offer(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            record = orjson.loads(value)
            if self.apply(record):
                self.applied += 1
        except Exception:  # a bad record must not stop the worker or block newer calibrators
            log.exception("ignoring an unusable calibrator record")

    async def load(self, timeout_s: float = 60.0) -> int:
        """Read the topic to its exact end and apply each record in order; return how many applied."""
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers,
                                         enable_auto_commit=False, group_id=None, auto_offset_reset="earliest")
        await self.consumer.start()
        self.tps = await assign_all(self.consumer, self.settings.topic("calibrators"), timeout_s)
        async for record in read_to_high_watermark(self.consumer, self.tps, timeout_s):
            self._offer(record.value)
        return self.applied

    async def follow(self) -> None:
        """Apply new calibrators without restart, until cancelled."""
        assert self.consumer is not None, "call load() first"
        while True:
            try:
                batch = await self.consumer.getmany(*self.tps, timeout_ms=1000)
            except (asyncio.CancelledError, ConsumerStoppedError):
                raise
            except Exception:
                log.exception("calibrator feed: fetch failed; retrying")
                await asyncio.sleep(1)
                continue
            for records in batch.values():
                for record in records:
                    self._offer(record.value)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
