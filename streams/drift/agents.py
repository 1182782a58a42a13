"""Drift wiring: hot-path accumulation, windowed Faust tables, verdicts, canaries, alerts.

1. The classify path feeds `accumulator` (a few µs a message); `flush_drift` publishes the partial
   summaries every second to `drift.summaries`, keyed by task.
2. The `drift` agent merges them into windowed Faust tables per task, one tumbling (the unit of
   verdicts) and one hopping (a smoother view); both are changelogged, so windows survive restarts.
   When the first summary of a new tumbling window arrives, the previous window is closed: it is
   compared with the task's baseline, the status goes to `drift.status`, and an alert goes to
   `drift.alerts` once per episode (open, then recovered).
3. `run_canaries`, on the leader only, re-runs each task's canary prompts every
   `drift.canary_interval_s` and publishes their top-k distributions through the same topic; the
   agent compares them with the baseline's canaries (model drift).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import orjson
from aiokafka.errors import ConsumerStoppedError
from faust.types import StreamT

from streams.alerting import post_webhook
from streams.app import app, settings, tasks, topics
from streams.classify.agents import classifier, publish
from streams.classify.service import Output
from streams.drift.canaries import canary_samples
from streams.drift.monitor import Baseline, DriftAccumulator, DriftMonitor, canary_record, summary_record
from streams.drift.statistics import EpisodeTracker, WindowSummary
from streams.kafka_io import TopicFeed
from streams.kafka_security import kafka_client_options
from streams.tasks import Task

log = logging.getLogger(__name__)

accumulator = DriftAccumulator(tasks)
classifier.observe = accumulator.observe

baselines: dict[str, Baseline] = {}
monitors: dict[str, DriftMonitor] = {name: DriftMonitor(task) for name, task in tasks.tasks.items()}


def apply_baseline(record: dict[str, Any]) -> bool:
    if record.get("task") not in tasks:
        return False
    baselines[record["task"]] = Baseline.from_record(record)
    log.info("task %s now compares with baseline %s", record["task"], baselines[record["task"]].ref())
    return True


baseline_feed = TopicFeed(settings.bootstrap_servers, settings.topic("baselines"), apply_baseline,
                          kafka_client_options(settings))


@app.task
async def follow_baselines() -> None:
    try:
        await baseline_feed.follow()
    except ConsumerStoppedError:
        pass  # shutting down


def _windowed(task: Task) -> tuple[Any, Any]:
    d = task.drift
    expires = max(d.window_s * 20, 3600.0)
    base = f"drift-{task.name}"
    tumbling = app.Table(f"{base}-tumbling", default=dict, partitions=settings.partitions).tumbling(
        d.window_s, expires=expires).relative_to_stream()
    hopping = app.Table(f"{base}-hopping", default=dict, partitions=settings.partitions).hopping(
        d.window_s, d.hop_s, expires=expires).relative_to_stream()
    return tumbling, hopping


#: Per task: (tumbling, hopping) windowed tables of WindowSummary dicts.
windows = {name: _windowed(task) for name, task in tasks.tasks.items()}
#: Per task: episode trackers and the start of the open tumbling window (survives restarts).
drift_state = app.Table("drift-state", default=dict, partitions=settings.partitions)

_last_flush = time.time()


@app.timer(interval=1.0)
async def flush_drift() -> None:
    global _last_flush
    try:  # an exception inside a Faust timer stops the worker
        now = time.time()
        for name, summary in accumulator.drain().items():
            record = summary_record(tasks.tasks[name], summary, _last_flush, now)
            await publish(Output("drift_summaries", name.encode(), orjson.dumps(record)))
        _last_flush = now
    except Exception:
        log.exception("drift flush failed")


def _merged(current: dict[str, Any], add: dict[str, Any]) -> dict[str, Any]:
    """Window op: each window covering the timestamp merges the partial summary into its own value."""
    return add if not current else WindowSummary.from_dict(current).merge(WindowSummary.from_dict(add)).to_dict()


_deliveries: set[asyncio.Task[bool]] = set()


async def _emit(task: Task, status: dict[str, Any], alert: dict[str, Any] | None) -> None:
    await publish(Output("drift_status", task.name.encode(), orjson.dumps(status)))
    if alert is not None:
        log.warning("drift alert for %s: %s %s (%s = %.4g, threshold %.4g)", task.name, alert["kind"],
                    alert["state"], alert["statistic"], alert["value"], alert["threshold"])
        await publish(Output("alerts", task.name.encode(), orjson.dumps(alert)))
        if task.drift.webhook_url:
            delivery = asyncio.create_task(post_webhook(task.drift.webhook_url, alert))
            _deliveries.add(delivery)  # asyncio keeps only weak references to tasks
            delivery.add_done_callback(_deliveries.discard)


def _restore(task: Task) -> tuple[DriftMonitor, dict[str, Any]]:
    monitor = monitors[task.name]
    state = dict(drift_state[task.name])
    if "traffic" in state:
        monitor.traffic = EpisodeTracker.from_dict(state["traffic"])
        monitor.canary = EpisodeTracker.from_dict(state["canary"])
    return monitor, state


def _save(task: Task, monitor: DriftMonitor, state: dict[str, Any]) -> None:
    drift_state[task.name] = {**state, "traffic": monitor.traffic.to_dict(), "canary": monitor.canary.to_dict()}


async def on_traffic(task: Task, record: dict[str, Any], timestamp: float) -> None:
    tumbling, hopping = windows[task.name]
    tumbling[task.name].apply(_merged, record["summary"])
    hopping[task.name].apply(_merged, record["summary"])  # every overlapping window, each its own value
    size = task.drift.window_s
    window_start = math.floor(timestamp / size) * size
    monitor, state = _restore(task)
    previous = state.get("window_start")
    state["window_start"] = window_start
    if previous is not None and window_start > previous:
        closed = tumbling[task.name].delta(timestamp - previous - size / 2)  # the window that began at `previous`
        baseline = baselines.get(task.name)
        if closed and baseline is not None and baseline.traffic is not None:
            status, alert = monitor.on_window(WindowSummary.from_dict(closed), previous, previous + size, baseline)
            await _emit(task, status, alert)
    _save(task, monitor, state)


async def on_canary(task: Task, record: dict[str, Any], timestamp: float) -> None:
    baseline = baselines.get(task.name)
    if baseline is None or baseline.canaries is None:
        return
    monitor, state = _restore(task)
    status, alert = monitor.on_canaries(record["samples"], timestamp, baseline)
    await _emit(task, status, alert)
    _save(task, monitor, state)


@app.agent(topics["drift_summaries"], name="drift")
async def drift(stream: StreamT) -> None:
    async for event in stream.events():
        try:
            record = orjson.loads(event.value)
            task = tasks.get(record.get("task", ""))
            if task is None:
                continue
            timestamp = event.message.timestamp  # seconds, set by the producer at flush time
            if record.get("kind") == "traffic":
                await on_traffic(task, record, timestamp)
            elif record.get("kind") == "canary":
                await on_canary(task, record, timestamp)
        except Exception:  # one bad record must not stop drift detection
            log.exception("drift: could not process a summary")


_canary_due: dict[str, float] = {}


@app.timer(interval=1.0, on_leader=True)
async def run_canaries() -> None:
    try:  # an exception inside a Faust timer stops the worker
        now = time.time()
        for name, task in tasks.tasks.items():
            baseline = baselines.get(name)
            if not task.drift.canaries or baseline is None or baseline.canaries is None:
                continue  # nothing to compare with: capture a baseline first (`drift baseline`)
            if now < _canary_due.get(name, 0.0):
                continue
            _canary_due[name] = now + task.drift.canary_interval_s
            samples = await canary_samples(classifier.model, task)
            await publish(Output("drift_summaries", name.encode(), orjson.dumps(canary_record(task, samples, now))))
    except Exception:
        log.exception("canary run failed")
