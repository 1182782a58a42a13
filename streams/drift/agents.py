"""Drift wiring: per-second flushes, the drift agent, canaries, baselines. The logic is in the pure
modules: `DriftAccumulator` (hot path), `TaskDrift` (windows, verdicts, episodes), `DriftMonitor`.

1. The classify path feeds the accumulator (a few µs a message); `flush_drift` publishes the partial
   summaries every second to `drift.summaries`, keyed by task, so one worker sees a task's traffic.
2. The `drift` agent hands each summary to the task's `TaskDrift`, whose state (the open tumbling
   window and the episode trackers) is in the changelogged `drift-state` table. When a summary of a
   later window arrives, the open window is judged against the baseline; the status goes to
   `drift.status` and an alert to `drift.alerts` once per episode (open, then recovered).
3. `run_canaries`, on the leader only, re-runs each task's canary prompts every
   `drift.canary_interval_s` and publishes their top-k distributions through the same topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka.errors import ConsumerStoppedError
from faust.types import StreamT

from streams.alerting import post_webhook
from streams.drift.canaries import canary_samples
from streams.drift.monitor import Baseline, canary_record, summary_record
from streams.drift.windows import TaskDrift
from streams.kafka_io import TopicFeed
from streams.kafka_security import kafka_client_options
from streams.publishing import Output

if TYPE_CHECKING:
    from streams.worker import Services

log = logging.getLogger(__name__)


def register(s: Services) -> None:
    app, settings, tasks = s.app, s.settings, s.tasks
    baselines: dict[str, Baseline] = {}

    def apply_baseline(record: dict[str, Any]) -> bool:
        if record.get("task") not in tasks:
            return False
        baselines[record["task"]] = Baseline.from_record(record)
        log.info("task %s now compares with baseline %s", record["task"], baselines[record["task"]].ref())
        return True

    feed = TopicFeed(settings.bootstrap_servers, settings.topic("baselines"), apply_baseline,
                     kafka_client_options(settings))
    app.preload.append(("drift baseline", feed))
    #: Per task: the open window and the episode trackers (survive restarts).
    drift_state = app.Table("drift-state", default=dict, partitions=settings.partitions)
    judges = {name: TaskDrift(task, drift_state, baselines) for name, task in tasks.tasks.items()}
    deliveries: set[asyncio.Task[bool]] = set()  # asyncio keeps only weak references to tasks
    last_flush = [time.time()]
    canary_due: dict[str, float] = {}

    async def emit(name: str, outputs: list[Output]) -> None:
        for output in outputs:
            await s.publish(output)
            webhook = tasks.tasks[name].drift.webhook_url
            if output.topic == "alerts" and webhook:
                delivery = asyncio.create_task(post_webhook(webhook, orjson.loads(output.value)))
                deliveries.add(delivery)
                delivery.add_done_callback(deliveries.discard)

    @app.task
    async def follow_baselines() -> None:
        with contextlib.suppress(ConsumerStoppedError):  # shutting down
            await feed.follow()

    @app.timer(interval=1.0)
    async def flush_drift() -> None:
        try:  # an exception inside a Faust timer stops the worker
            now = time.time()
            for name, summary in s.accumulator.drain().items():
                record = summary_record(tasks.tasks[name], summary, last_flush[0], now)
                await s.publish(Output("drift_summaries", name.encode(), orjson.dumps(record)))
            last_flush[0] = now
        except Exception:
            log.exception("drift flush failed")

    @app.agent(s.topics["drift_summaries"], name="drift")
    async def drift(stream: StreamT) -> None:
        async for event in stream.events():
            try:
                record = orjson.loads(event.value)
                name = record.get("task", "")
                judge = judges.get(name)
                if judge is None:
                    continue
                timestamp = event.message.timestamp  # seconds, set by the producer at flush time
                if record.get("kind") == "traffic":
                    await emit(name, judge.on_traffic(record["summary"], timestamp))
                elif record.get("kind") == "canary":
                    await emit(name, judge.on_canary(record["samples"], timestamp))
            except Exception:  # one bad record must not stop drift detection
                log.exception("drift: could not process a summary")

    @app.timer(interval=1.0, on_leader=True)
    async def run_canaries() -> None:
        try:  # an exception inside a Faust timer stops the worker
            now = time.time()
            for name, task in tasks.tasks.items():
                baseline = baselines.get(name)
                if not task.drift.canaries or baseline is None or baseline.canaries is None:
                    continue  # nothing to compare with: capture a baseline first (`drift baseline`)
                if now < canary_due.get(name, 0.0):
                    continue
                canary_due[name] = now + task.drift.canary_interval_s
                samples = await canary_samples(s.model, task)
                await s.publish(Output("drift_summaries", name.encode(),
                                       orjson.dumps(canary_record(task, samples, now))))
        except Exception:
            log.exception("canary run failed")
