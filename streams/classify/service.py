"""One request's whole path, from raw bytes to the records to publish. No Kafka here.

The Faust agent only feeds bytes in and publishes what comes out, so this path is tested and
benchmarked without a broker, and the worker cannot stop on bad input: every failure becomes a
dead letter or a review item.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass

import orjson

from streams.calibration.calibrators import Calibrator, IdentityCalibrator
from streams.classify.model_client import ModelClient, ModelReply
from streams.classify.probabilities import LabelMatcher, label_scores, normalised_entropy
from streams.classify.records import Source, classification_record, dead_letter_record
from streams.classify.requests import ClassificationRequest, parse_request
from streams.classify.routing import Route, route
from streams.errors import BadRequest, ModelError
from streams.tasks import TaskRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Output:
    """A record to publish: logical topic name (results/review/deadletter), key and value bytes."""

    topic: str
    key: bytes | None
    value: bytes


class Classifier:
    def __init__(self, tasks: TaskRegistry, model: ModelClient, max_text_chars: int, excerpt_bytes: int) -> None:
        self.tasks = tasks
        self.model = model
        self.max_text_chars = max_text_chars
        self.excerpt_bytes = excerpt_bytes
        self.matchers = {name: LabelMatcher(t.labels) for name, t in tasks.tasks.items()}
        self.calibrators: dict[str, Calibrator] = {name: IdentityCalibrator() for name in tasks.tasks}

    async def process(self, raw: bytes | None, key: bytes | None, source: Source) -> Output:
        """Exactly one output per input message, whatever happens inside."""
        try:
            request = parse_request(raw, self.tasks, self.max_text_chars)
        except BadRequest as exc:
            return self._dead_letter(raw, key, exc.error_type, exc.message, "validate", source, exc.request_id)
        try:
            return await self._classify(request)
        except Exception as exc:  # a bug must not stop the worker or lose the message
            log.exception("internal error on %s/%s@%s", source.topic, source.partition, source.offset)
            summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:500]
            return self._dead_letter(raw, key, "internal_error", f"unexpected error: {summary}", "classify", source, request.id)

    async def _classify(self, request: ClassificationRequest) -> Output:
        task = self.tasks.tasks[request.task]
        calibrator = self.calibrators[task.name]
        reply: ModelReply | None = None
        model_error: str | None = None
        try:
            reply = await self.model.first_token(task, request.text)
        except ModelError as exc:
            model_error = f"{exc.kind}: {exc.message}"
        raw_p = calibrated = entropy = None
        mass = 0.0
        if reply is None:
            decision = Route("review", "model_error", -1)
        elif reply.top_logprobs is None:
            decision = route(None, 0.0, task.review_threshold, task.min_label_mass)
        else:
            scores = label_scores(reply.top_logprobs, self.matchers[task.name])
            raw_p, mass = scores.probabilities, scores.label_mass
            calibrated = calibrator.transform(raw_p) if mass > 0 else raw_p
            entropy = normalised_entropy(calibrated) if mass > 0 else None
            decision = route(calibrated, mass, task.review_threshold, task.min_label_mass)
        record = classification_record(
            request, task.labels, decision, raw_p, calibrated, entropy, mass, reply,
            task.model.name, calibrator.version, model_error,
        )
        topic = "results" if decision.decision == "auto" else "review"
        return Output(topic, request.id.encode(), orjson.dumps(record))

    def _dead_letter(self, raw: bytes | None, key: bytes | None, error_type: str, message: str,
                     stage: str, source: Source, request_id: str | None) -> Output:
        record = dead_letter_record(raw, error_type, message, stage, source, request_id, self.excerpt_bytes)
        out_key = request_id.encode() if request_id else key
        return Output("deadletter", out_key, orjson.dumps(record))
