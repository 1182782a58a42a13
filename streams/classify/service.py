"""One request's whole path, from raw bytes to the records to publish. No Kafka here.

The Faust agent only feeds bytes in and publishes what comes out, so this path is tested and
benchmarked without a broker, and the worker cannot stop on bad input: every failure becomes a
dead letter or a review item.
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from streams.calibration.calibrators import Calibrator, IdentityCalibrator
from streams.calibration.store import calibrator_from_record
from streams.classify.model_client import ModelClient, ModelReply
from streams.classify.probabilities import LabelMatcher, label_scores, normalised_entropy
from streams.classify.records import METHOD_FIRST_TOKEN, Source, classification_record, dead_letter_record
from streams.classify.requests import ClassificationRequest, parse_request
from streams.classify.routing import Route, route
from streams.confidence.methods import ConfidenceRunner, MethodResult, choose_method
from streams.confidence.probe import ProbeCache
from streams.errors import BadRequest, ModelError
from streams.tasks import Task, TaskRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Output:
    """A record to publish: logical topic name (results/review/deadletter), key and value bytes."""

    topic: str
    key: bytes | None
    value: bytes


def audit_draw(request_id: str) -> float:
    """A uniform number fixed by the id, so a replayed request is audited (or not) the same way."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Classifier:
    def __init__(self, tasks: TaskRegistry, model: ModelClient, max_text_chars: int, excerpt_bytes: int) -> None:
        self.tasks = tasks
        self.model = model
        self.max_text_chars = max_text_chars
        self.excerpt_bytes = excerpt_bytes
        self.matchers = {name: LabelMatcher(t.labels) for name, t in tasks.tasks.items()}
        self.calibrators: dict[str, Calibrator] = {name: IdentityCalibrator() for name in tasks.tasks}
        #: Thresholds chosen with a risk guarantee, for tasks that set routing.target_error.
        self.risk_thresholds: dict[str, float] = {}
        #: Called with (task, label index, confidence, entropy, label mass, chosen-token logprob) for
        #: every item that got a label distribution; the drift accumulator in the worker.
        self.observe: Callable[[Task, int, float, float, float, float], None] | None = None
        #: Other confidence methods (streams/confidence/): each (task, method) has its own calibrator and
        #: risk threshold; the first-token method keeps using `calibrators` / `risk_thresholds` above.
        self.runner = ConfidenceRunner(model)
        self.probes = ProbeCache(model)
        self.method_calibrators: dict[tuple[str, str], Calibrator] = {}
        self.method_risk_thresholds: dict[tuple[str, str], float] = {}

    def calibrator_for(self, task: str, method: str) -> Calibrator:
        if method == METHOD_FIRST_TOKEN:
            return self.calibrators[task]
        found = self.method_calibrators.get((task, method))
        if found is None:
            found = self.method_calibrators[(task, method)] = IdentityCalibrator()
        return found

    def threshold_for(self, task: Task, method: str) -> float | None:
        if method == METHOD_FIRST_TOKEN or task.target_error is None:
            return self.threshold(task)
        return self.method_risk_thresholds.get((task.name, method))

    def threshold(self, task: Task) -> float | None:
        """The confidence needed for auto-accept; None when a risk-controlled task has no valid one yet."""
        if task.target_error is None:
            return task.review_threshold
        return self.risk_thresholds.get(task.name)

    def apply_calibrator(self, record: dict[str, Any]) -> bool:
        """Install a calibrator record (from the calibrators topic); False when it is not for us."""
        task = self.tasks.get(record.get("task", ""))
        if task is None:
            return False
        if tuple(record.get("labels", task.labels)) != task.labels:
            log.warning("calibrator %s is for labels %s, task %s has %s; ignored",
                        record.get("version"), record.get("labels"), task.name, task.labels)
            return False
        method = record.get("confidence_method", METHOD_FIRST_TOKEN)
        if method == METHOD_FIRST_TOKEN:
            self.calibrators[task.name] = calibrator_from_record(record)
            thresholds: dict[Any, float] = self.risk_thresholds
            key: Any = task.name
        else:  # a calibrator for another confidence method (or an ensemble member) of this task
            self.method_calibrators[(task.name, method)] = calibrator_from_record(record)
            thresholds, key = self.method_risk_thresholds, (task.name, method)
        rc = record.get("risk_control")
        if task.target_error is not None:
            if rc and rc.get("feasible") and rc.get("target_error") == task.target_error \
                    and rc.get("delta") == task.failure_probability:
                thresholds[key] = float(rc["threshold"])
            else:
                thresholds.pop(key, None)
                log.warning("calibrator %s has no feasible threshold for target error %s at %s; "
                            "task %s sends everything to review", record["version"], task.target_error,
                            task.failure_probability, task.name)
        log.info("task %s (%s) now uses calibrator %s (%s)", task.name, method, record["version"], record["method"])
        return True

    async def process(self, raw: bytes | None, key: bytes | None, source: Source) -> list[Output]:
        """One output per input message (two when an auto-accepted item is also sampled for audit)."""
        try:
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
        if task.confidence.methods != (METHOD_FIRST_TOKEN,):
            return await self._classify_method(request, task)
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
            decision = route(None, 0.0, None, task.min_label_mass)
        else:
            scores = label_scores(reply.top_logprobs, self.matchers[task.name])
            raw_p, mass = scores.probabilities, scores.label_mass
            calibrated = calibrator.transform(raw_p) if mass > 0 else raw_p
            entropy = normalised_entropy(calibrated) if mass > 0 else None
            decision = route(calibrated, mass, self.threshold(task), task.min_label_mass)
            if self.observe is not None and decision.label_index >= 0 and entropy is not None:
                self.observe(task, decision.label_index, float(calibrated[decision.label_index]), entropy, mass,
                             reply.chosen_logprob if reply.chosen_logprob is not None else 0.0)

        def build(d: Route, audit: bool = False) -> Output:
            record = classification_record(request, task.labels, d, raw_p, calibrated, entropy, mass, reply,
                                           task.model.name, calibrator.version, model_error, audit)
            return Output("results" if d.decision == "auto" else "review", request.id.encode(), orjson.dumps(record))

        outputs = [build(decision)]
        if decision.decision == "auto" and task.audit_rate > 0 and audit_draw(request.id) < task.audit_rate:
            # Labels from audited confident items keep accuracy on auto-accepted traffic measurable.
            outputs.append(build(Route("review", "audit", decision.label_index), audit=True))
        return outputs

    async def method_for(self, task: Task) -> str:
        """The first of the task's methods its endpoint(s) support (probed once, cached)."""
        if len(task.confidence.methods) == 1:
            return task.confidence.methods[0]
        from streams.confidence.methods import task_endpoints

        for ep in task_endpoints(task):
            await self.probes.get(ep)
        caps = {(k[0], k[1]): v for k, (_, v) in self.probes.results.items()}
        method, why = choose_method(task, lambda ep: caps.get((ep.base_url, ep.name)))
        return method

    async def _classify_method(self, request: ClassificationRequest, task: Task) -> list[Output]:
        """The path for tasks that list confidence methods: probe, run the chosen one, its calibrator."""
        method = await self.method_for(task)
        calibrator = self.calibrator_for(task.name, method)
        result: MethodResult | None = None
        model_error: str | None = None
        try:
            caps = {(k[0], k[1]): v for k, (_, v) in self.probes.results.items()}
            result = await self.runner.run(
                task, method, request.text, request.id, lambda ep: caps.get((ep.base_url, ep.name)),
                lambda member, p: self.calibrator_for(task.name, member).transform(p))
        except ModelError as exc:
            model_error = f"{exc.kind}: {exc.message}"
        raw_p = calibrated = entropy = None
        mass = 0.0
        reply: ModelReply | None = None
        extra: dict[str, Any] = {}
        if result is None:
            decision = Route("review", "model_error", -1)
        else:
            reply = ModelReply(None, None, result.chosen_logprob, result.prompt_tokens, result.completion_tokens,
                               result.latency_ms, task.model.name)
            extra["requests"] = result.requests
            if result.samples is not None:
                extra["samples"] = result.samples
            if result.interval is not None:
                extra["confidence_interval"] = [round(result.interval[0], 6), round(result.interval[1], 6)]
            if result.settled is not None:
                extra["settled"] = result.settled
            if result.ambiguous:
                extra["ambiguous"] = True
            if result.members:
                extra["members"] = {k: dict(zip(task.labels, v)) for k, v in result.members.items()}
            mass = result.label_mass
            if result.raw is None:
                decision = Route("review", result.reason or "no_logprobs", -1)
            else:
                raw_p = result.raw
                calibrated = calibrator.transform(raw_p) if mass > 0 else raw_p
                entropy = normalised_entropy(calibrated) if mass > 0 else None
                decision = route(calibrated, mass, self.threshold_for(task, method), task.min_label_mass)
                if self.observe is not None and decision.label_index >= 0 and entropy is not None:
                    self.observe(task, decision.label_index, float(calibrated[decision.label_index]), entropy,
                                 mass, result.chosen_logprob if result.chosen_logprob is not None else 0.0)

        def build(d: Route, audit: bool = False) -> Output:
            record = classification_record(request, task.labels, d, raw_p, calibrated, entropy, mass, reply,
                                           task.model.name, calibrator.version, model_error, audit, method, extra)
            return Output("results" if d.decision == "auto" else "review", request.id.encode(), orjson.dumps(record))

        outputs = [build(decision)]
        if decision.decision == "auto" and task.audit_rate > 0 and audit_draw(request.id) < task.audit_rate:
            outputs.append(build(Route("review", "audit", decision.label_index), audit=True))
        return outputs

    def _dead_letter(self, raw: bytes | None, key: bytes | None, error_type: str, message: str,
                     stage: str, source: Source, request_id: str | None) -> Output:
        record = dead_letter_record(raw, error_type, message, stage, source, request_id, self.excerpt_bytes)
        out_key = request_id.encode() if request_id else key
        return Output("deadletter", out_key, orjson.dumps(record))
