"""The feedback loop's logic: a reviewer's answer becomes a final result and a labelled example, and
enough new labels refit the calibrator. No Faust here: the review-item table is any mutable mapping,
and reading examples and publishing are injected, so both are unit-tested with plain objects.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from streams.calibration.feedback import human_result, labelled_example, parse_feedback
from streams.calibration.fitting import examples_to_arrays, fit_and_evaluate
from streams.calibration.registry import CalibratorKey, CalibratorRegistry
from streams.calibration.store import calibrator_record
from streams.classify.records import Source, dead_letter_record
from streams.errors import BadRequest
from streams.ops.tracing import Headers, trace_headers
from streams.publishing import Output, Publish
from streams.tasks import TaskRegistry

log = logging.getLogger(__name__)


TRACE_KEY = "_trace"  # the review item's trace headers, kept beside the record in the review-items table


def with_trace(item: dict[str, Any], headers: Headers) -> dict[str, Any]:
    """The review record with its message's trace context, so the human result joins the request's trace."""
    trace = trace_headers(headers)
    if trace:
        item[TRACE_KEY] = [[k, bytes(v).decode("latin-1")] for k, v in trace]
    return item


#: How long an answer waits for its review item to be indexed before it is dead-lettered as unknown.
ITEM_GRACE_S = 5.0


class FeedbackHandler:
    """An answer for a pending review item -> the `human` result and a labelled example; else a dead letter.

    `review_items` maps request id to the pending review record (the worker's changelogged table).
    """

    def __init__(self, tasks: TaskRegistry, review_items: MutableMapping[str, Any], excerpt_bytes: int) -> None:
        self.tasks, self.review_items, self.excerpt_bytes = tasks, review_items, excerpt_bytes

    async def item_indexed(self, raw: bytes | None, wait_s: float = ITEM_GRACE_S, poll_s: float = 0.05) -> bool:
        """Wait (up to `wait_s`) for the answered id's review item to reach the table.

        The review item and its answer are co-partitioned but read by two agents, so an answer sent as
        soon as the item appeared on the review topic can overtake the item's indexing; without this
        wait it would be dead-lettered as `unknown_id`. False when the id never shows (a duplicate or
        unknown answer, dead-lettered after the wait), or when the answer has no readable id.
        """
        try:
            rid = orjson.loads(raw or b"").get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return False
        if not isinstance(rid, str):
            return False
        deadline = asyncio.get_running_loop().time() + wait_s
        while self.review_items.get(rid) is None:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    def __call__(self, raw: bytes | None, key: bytes | None, source: Source) -> list[Output]:
        try:
            fb = parse_feedback(raw, self.tasks)
            item = self.review_items.get(fb.id)
            if item is None:
                raise BadRequest("unknown_id", f"no pending review item with id '{fb.id}' (unknown, or already "
                                 "answered)", fb.id)
            if item.get("task") != fb.task:
                raise BadRequest("unknown_id", f"review item '{fb.id}' belongs to task '{item.get('task')}', "
                                 f"not '{fb.task}'", fb.id)
        except BadRequest as exc:
            record = dead_letter_record(raw, exc.error_type, exc.message, "feedback", source, exc.request_id,
                                        self.excerpt_bytes)
            return [Output("deadletter", exc.request_id.encode() if exc.request_id else key, orjson.dumps(record))]
        task = self.tasks.tasks[fb.task]
        trace = [(k, v.encode("latin-1")) for k, v in item.get(TRACE_KEY) or ()] or None
        outputs = [Output("results", fb.id.encode(), orjson.dumps(human_result(item, fb, task.labels)), trace)]
        example = labelled_example(item, fb)
        if example is not None:
            outputs.append(Output("examples", fb.task.encode(), orjson.dumps(example), trace))
        del self.review_items[fb.id]  # answered once, not offered again
        return outputs


class Refitter:
    """Counts reviewer labels per calibrator; every `calibration.refit_every` of them, refits on all of
    that calibrator's labelled examples and publishes only if no worse on held-out."""

    def __init__(self, tasks: TaskRegistry, calibrators: CalibratorRegistry,
                 read_examples: Callable[[str], Awaitable[list[dict[str, Any]]]], publish: Publish) -> None:
        self.tasks, self.calibrators, self.read_examples, self.publish = tasks, calibrators, read_examples, publish
        self.new_labels: Counter[CalibratorKey] = Counter()

    @staticmethod
    def key_of(example: dict[str, Any]) -> CalibratorKey:
        return CalibratorKey.of_record(example, method_field="method")

    async def on_example(self, value: bytes | None) -> dict[str, Any] | None:
        """One record of the examples topic; the published calibrator record when it triggered a refit."""
        try:
            doc = orjson.loads(value or b"")
            source = doc.get("source")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        if source != "feedback":
            return None  # the calibrate command's examples are fit data, not news: it has just fitted on them
        key = self.key_of(doc)
        task = self.tasks.get(key.task)
        if task is None:
            return None
        self.new_labels[key] += 1
        if self.new_labels[key] < task.calibration.refit_every:
            return None
        self.new_labels[key] = 0
        try:
            return await self.refit(key)
        except Exception:  # a failed refit keeps the calibrator in force; the loop goes on
            log.exception("refit of %s failed", key)
            return None

    async def refit(self, key: CalibratorKey) -> dict[str, Any] | None:
        """Refit on every labelled example of the key; publish if no worse on held-out."""
        task = self.tasks.tasks[key.task]
        examples = [e for e in await self.read_examples(task.name) if self.key_of(e) == key]
        probs, y = examples_to_arrays(examples, task.labels)
        if len(y) < task.calibration.min_examples or len(set(y.tolist())) < 2:
            log.info("refit of %s skipped: %d labelled examples (need %d, two classes)", key, len(y),
                     task.calibration.min_examples)
            return None
        current = self.calibrators.calibrator(key.task, key.method, key.model)
        outcome = await asyncio.to_thread(
            fit_and_evaluate, probs, y, task.calibration.methods, task.calibration.holdout_fraction,
            current, task.target_error, task.failure_probability,
        )
        log.info("refit of %s on %d labels: %s -> %s", key, len(y), outcome.reason,
                 "publishing" if outcome.publish else "keeping the calibrator in force")
        if not outcome.publish:
            return None
        record = calibrator_record(task.name, key.method, key.model, task.labels, outcome.calibrator,
                                   outcome.fit_size, outcome.heldout_size, outcome.metrics_before,
                                   outcome.metrics_after, "refit", outcome.cv_nll, outcome.risk_control, outcome.cv_se,
                                   outcome.signal.to_dict(task.labels))
        if outcome.current_metrics is not None:
            record["current_metrics"] = outcome.current_metrics
        await self.publish(Output("calibrators", key.topic_key(), orjson.dumps(record)))
        return record
