"""The feedback loop: pending review items, reviewer answers, and online refits of the calibrator.

- `index_review` keeps every pending review item in a changelogged Faust table keyed by request id.
  Review and feedback topics are both keyed by request id with the same partition count, so Faust
  co-partitions them: the worker answering feedback for an id holds that id's table partition.
  Feedback must therefore be keyed by request id with Kafka's default (murmur2) partitioner.
- `feedback` turns an answer into the final `human` result and a labelled example (raw probabilities
  + true label) on the examples topic, keyed by task so one worker sees all of a task's labels.
- `refit` counts new reviewer labels per task; every `calibration.refit_every` of them it reads the
  task's whole example set (the calibrate command's included) to the exact high watermark, fits, and
  publishes only if no worse on held-out.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import orjson
from faust.types import StreamT

from streams.app import app, settings, tasks, topics
from streams.calibration.feedback import human_result, labelled_example, parse_feedback
from streams.calibration.fitting import examples_to_arrays, fit_and_evaluate
from streams.calibration.store import calibrator_record
from streams.classify.agents import classifier, publish
from streams.classify.records import METHOD_FIRST_TOKEN, Source, dead_letter_record
from streams.classify.service import Output
from streams.errors import BadRequest
from streams.kafka_io import read_topic
from streams.kafka_security import kafka_client_options
from streams.tasks import Task

log = logging.getLogger(__name__)

#: Pending review items by request id (the review record as a dict), changelogged.
review_items = app.Table("review-items", default=None, partitions=settings.partitions)


@app.agent(topics["review"], name="index-review")
async def index_review(stream: StreamT) -> None:
    async for key, value in stream.items():
        if key and value:
            review_items[key.decode()] = orjson.loads(value)


@app.agent(topics["feedback"], name="feedback")
async def feedback(stream: StreamT) -> None:
    async for event in stream.events():
        msg = event.message
        for output in handle_feedback(msg.value, msg.key, Source(msg.topic, msg.partition, msg.offset)):
            await publish(output)


def handle_feedback(raw: bytes | None, key: bytes | None, source: Source) -> list[Output]:
    try:
        fb = parse_feedback(raw, tasks)
        item = review_items.get(fb.id)
        if item is None:
            raise BadRequest("unknown_id", f"no pending review item with id '{fb.id}' (unknown, or already answered)", fb.id)
        if item.get("task") != fb.task:
            raise BadRequest("unknown_id", f"review item '{fb.id}' belongs to task '{item.get('task')}', not '{fb.task}'", fb.id)
    except BadRequest as exc:
        record = dead_letter_record(raw, exc.error_type, exc.message, "feedback", source, exc.request_id,
                                    settings.deadletter_excerpt_bytes)
        return [Output("deadletter", exc.request_id.encode() if exc.request_id else key, orjson.dumps(record))]
    task = tasks.tasks[fb.task]
    outputs = [Output("results", fb.id.encode(), orjson.dumps(human_result(item, fb, task.labels)))]
    example = labelled_example(item, fb)
    if example is not None:
        outputs.append(Output("examples", fb.task.encode(), orjson.dumps(example)))
    del review_items[fb.id]  # answered once, not offered again
    return outputs


new_labels: Counter[str] = Counter()


@app.agent(topics["examples"], name="refit")
async def refit(stream: StreamT) -> None:
    async for key, value in stream.items():
        name = key.decode() if key else ""
        task = tasks.get(name)
        if task is None or not value:
            continue
        try:
            doc = orjson.loads(value)
            source, method = doc.get("source"), doc.get("method") or METHOD_FIRST_TOKEN
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if source != "feedback":
            continue  # the calibrate command's examples are fit data, not news: it has just fitted on them
        counter = name if method == METHOD_FIRST_TOKEN else f"{name}/{method}"  # one calibrator per method
        new_labels[counter] += 1
        if new_labels[counter] >= task.calibration.refit_every:
            new_labels[counter] = 0
            try:
                await refit_task(task, method)
            except Exception:  # a failed refit keeps the calibrator in force; the loop goes on
                log.exception("refit of task %s (%s) failed", name, method)


async def read_examples(task: str) -> list[dict[str, Any]]:
    records = await read_topic(settings.bootstrap_servers, settings.topic("examples"), kafka_client_options(settings))
    return [value for _, key, value in records if key == task.encode()]


async def refit_task(task: Task, method: str = METHOD_FIRST_TOKEN) -> dict[str, Any] | None:
    """Refit on every labelled example of the task (and confidence method); publish if no worse on held-out."""
    examples = [e for e in await read_examples(task.name) if (e.get("method") or METHOD_FIRST_TOKEN) == method]
    probs, y = examples_to_arrays(examples, task.labels)
    if len(y) < task.calibration.min_examples or len(set(y.tolist())) < 2:
        log.info("refit of %s skipped: %d labelled examples (need %d, two classes)", task.name, len(y),
                 task.calibration.min_examples)
        return None
    current = classifier.calibrator_for(task.name, method)
    outcome = await asyncio.to_thread(
        fit_and_evaluate, probs, y, task.calibration.methods, task.calibration.holdout_fraction,
        current, task.target_error, task.failure_probability,
    )
    log.info("refit of %s on %d labels: %s -> %s", task.name, len(y), outcome.reason,
             "publishing" if outcome.publish else "keeping the calibrator in force")
    if not outcome.publish:
        return None
    record = calibrator_record(task.name, task.model.name, task.labels, outcome.calibrator, outcome.fit_size,
                               outcome.heldout_size, outcome.metrics_before, outcome.metrics_after, "refit",
                               outcome.cv_nll, outcome.risk_control)
    if outcome.current_metrics is not None:
        record["current_metrics"] = outcome.current_metrics
    key = task.name
    if method != METHOD_FIRST_TOKEN:  # keyed per (task, method) so compaction keeps every method's latest
        record["confidence_method"] = method
        key = f"{task.name}/{method}"
    await publish(Output("calibrators", key.encode(), orjson.dumps(record)))
    return record
