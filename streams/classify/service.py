"""One request's whole path, from raw bytes to the records to publish. No Kafka here.

The Faust agent only feeds bytes in and publishes what comes out, so this path is tested and
benchmarked without a broker, and the worker cannot stop on bad input: every failure becomes a
dead letter or a review item. Every confidence method takes the same path: choose the method (the
task's only one, or the first its endpoint supports), run it through `MethodRunner`, apply the
(task, method, model) calibrator from `CalibratorRegistry`, route, and report to the drift observer.
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import orjson

from streams.calibration.registry import CalibratorRegistry
from streams.classify.answer_cache import AnswerCache, served
from streams.classify.model_client import ModelClient
from streams.classify.probabilities import normalised_entropy
from streams.classify.records import Source, classification_record, dead_letter_record
from streams.classify.requests import ClassificationRequest, parse_request
from streams.classify.routing import Route, route
from streams.confidence.capabilities import Capabilities
from streams.confidence.methods import MethodResult, MethodRunner, choose_method, task_endpoints
from streams.confidence.names import ENSEMBLE
from streams.confidence.probe import ProbeCache
from streams.errors import BadRequest, ModelError
from streams.ops.tracing import Headers, Tracing, trace_headers
from streams.publishing import Output
from streams.tasks import ModelEndpoint, Task, TaskRegistry

log = logging.getLogger(__name__)

#: Told about every item that got a label distribution: (task, label index, confidence, normalised
#: entropy, label mass, chosen-token logprob); the drift accumulator in the worker.
Observe = Callable[[Task, int, float, float, float, float], None]


def audit_draw(request_id: str) -> float:
    """A uniform number fixed by the id, so a replayed request is audited (or not) the same way."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Classifier:
    """Bytes in, exactly one output out (two when an auto-accepted item is also sampled for audit)."""

    def __init__(self, tasks: TaskRegistry, model: ModelClient, max_text_chars: int, excerpt_bytes: int,
                 calibrators: CalibratorRegistry | None = None, observe: Observe | None = None,
                 tracing: Tracing | None = None, answers: AnswerCache | None = None) -> None:
        self.tasks = tasks
        self.model = model
        self.max_text_chars = max_text_chars
        self.excerpt_bytes = excerpt_bytes
        self.calibrators = calibrators if calibrators is not None else CalibratorRegistry(tasks)
        self.observe = observe
        self.tracing = tracing if tracing is not None else Tracing()
        self.runner = MethodRunner(model)
        self.probes = ProbeCache(model)
        #: Raw answers of texts already answered, for tasks whose `caches_answers` (None: every call is made).
        self.answers = answers

    def caps_of(self, endpoint: ModelEndpoint) -> Capabilities | None:
        """The endpoint's probed capabilities, as cached (None until probed)."""
        hit = self.probes.results.get((endpoint.base_url, endpoint.name))
        return hit[1] if hit is not None else None

    async def method_for(self, task: Task) -> str:
        """The first of the task's methods its endpoint(s) support (probed once, cached)."""
        if len(task.confidence.methods) == 1:
            return task.confidence.methods[0]
        for ep in task_endpoints(task):
            await self.probes.get(ep)
        return choose_method(task, self.caps_of)[0]

    def member_calibrated(self, task: Task) -> Callable[[str, str, np.ndarray], np.ndarray]:
        return lambda method, model, p: self.calibrators.calibrator(task.name, method, model).transform(p)

    async def process(self, raw: bytes | None, key: bytes | None, source: Source,
                      headers: Headers = None) -> list[Output]:
        """One output per input message (two when an auto-accepted item is also sampled for audit).

        Every output carries the request's trace context (`headers`), under this worker's own span when
        tracing is on (streams/ops/tracing.py).
        """
        if not self.tracing.enabled:  # the hot path when tracing is off: pass the trace headers on, no span
            outputs = await self._process(raw, key, source)
            trace = trace_headers(headers)
        else:
            with self.tracing.consumed("classify", headers, topic=source.topic, partition=source.partition,
                                       offset=source.offset) as trace:
                outputs = await self._process(raw, key, source)
        if trace:
            outputs = [replace(o, headers=trace) for o in outputs]
        return outputs

    async def _process(self, raw: bytes | None, key: bytes | None, source: Source) -> list[Output]:
        try:
            if self.tracing.enabled:
                with self.tracing.span("parse request"):
                    request = parse_request(raw, self.tasks, self.max_text_chars)
            else:
                request = parse_request(raw, self.tasks, self.max_text_chars)
        except BadRequest as exc:
            return [self._dead_letter(raw, key, exc.error_type, exc.message, "validate", source, exc.request_id)]
        try:
            return await self._classify(request)
        except Exception as exc:  # a bug must not stop the worker or lose the message
            log.exception("internal error on %s/%s@%s", source.topic, source.partition, source.offset)
            summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:500]
            return [self._dead_letter(raw, key, "internal_error", f"unexpected error: {summary}", "classify",
                                      source, request.id)]

    async def _classify(self, request: ClassificationRequest) -> list[Output]:
        task = self.tasks.tasks[request.task]
        method = await self.method_for(task)
        calibrator = self.calibrators.calibrator(task.name, method, task.model.name)
        result: MethodResult | None = None
        model_error: str | None = None
        cached = False
        try:
            if self.answers is not None and task.caches_answers:
                result, cached = await self._answer(self.answers, task, method, request)
            else:
                result = await self.runner.run(task, method, request.text, request.id, self.caps_of,
                                               self.member_calibrated(task))
        except ModelError as exc:
            model_error = f"{exc.kind}: {exc.message}"
        calibrated: np.ndarray | None = None
        entropy: float | None = None
        if result is None:
            decision = Route("review", "model_error", -1)
        elif result.raw is None:
            decision = Route("review", result.reason or "no_logprobs", -1)
        else:
            mass = result.label_mass
            calibrated = calibrator.transform(result.raw) if mass > 0 else result.raw
            entropy = normalised_entropy(calibrated) if mass > 0 else None
            decision = route(calibrated, mass, self.calibrators.threshold(task, method), task.min_label_mass)
            if self.observe is not None and decision.label_index >= 0 and entropy is not None:
                self.observe(task, decision.label_index, float(calibrated[decision.label_index]), entropy, mass,
                             result.chosen_logprob if result.chosen_logprob is not None else 0.0)

        def build(d: Route, audit: bool = False) -> Output:
            record = classification_record(request, task.labels, d, method, result, calibrated, entropy,
                                           task.model.name, calibrator.version, model_error, audit, cached)
            return Output("results" if d.decision == "auto" else "review", request.id.encode(), orjson.dumps(record))

        outputs = [build(decision)]
        if decision.decision == "auto" and task.audit_rate > 0 and audit_draw(request.id) < task.audit_rate:
            # Labels from audited confident items keep accuracy on auto-accepted traffic measurable.
            outputs.append(build(Route("review", "audit", decision.label_index), audit=True))
        return outputs

    async def _answer(self, answers: AnswerCache, task: Task, method: str,
                      request: ClassificationRequest) -> tuple[MethodResult, bool]:
        """(raw answer, whether it came without a call): from the cache, an identical call in flight, or the model.
        Cached before calibration, so the calibrator in force and routing apply to it as to a fresh answer."""
        started = time.perf_counter()
        members: tuple[str, ...] = ()
        if method == ENSEMBLE:  # members are calibrated before pooling: their calibrators are part of the answer
            members = tuple(self.calibrators.calibrator(task.name, m.method, (m.model or task.model).name).version
                            for m in task.confidence.ensemble_members)
        key = answers.key(task, method, request.text, request.id, members)
        result, outcome = await answers.answer(key, task.name, lambda: self.runner.run(
            task, method, request.text, request.id, self.caps_of, self.member_calibrated(task)))
        return (result, False) if outcome == "miss" else (served(result, started), True)

    def _dead_letter(self, raw: bytes | None, key: bytes | None, error_type: str, message: str,
                     stage: str, source: Source, request_id: str | None) -> Output:
        record = dead_letter_record(raw, error_type, message, stage, source, request_id, self.excerpt_bytes)
        out_key = request_id.encode() if request_id else key
        return Output("deadletter", out_key, orjson.dumps(record))
