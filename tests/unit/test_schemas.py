"""The payload schemas in schemas/ are valid, and what the service really emits matches them."""

from __future__ import annotations

import asyncio
import base64
import copy
import subprocess
import sys
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator

from streams import schemas
from streams.classify.model_client import ModelReply
from streams.classify.probabilities import normalised_entropy
from streams.classify.records import Source, classification_record, dead_letter_record
from streams.classify.requests import ERROR_TYPES, ClassificationRequest, parse_request
from streams.classify.routing import REVIEW_REASONS, Route, route
from streams.confidence.methods import MethodResult
from streams.confidence.names import FIRST_TOKEN
from streams.errors import BadRequest, ModelError
from streams.settings import TOPIC_NAMES
from streams.tasks import TaskRegistry, parse_tasks

TASKS_TOML = """
[[task]]
name = "sentiment"
labels = ["positive", "negative", "neutral"]

[task.model]
base_url = "http://localhost:8080/v1"
name = "gemma-3-270m"

[task.routing]
review_threshold = 0.8
min_label_mass = 0.5
"""
LABELS = ("positive", "negative", "neutral")
MAX_TEXT = 50
EXCERPT = 1024
SOURCE = Source("classify.requests", 3, 42)


@pytest.fixture(scope="module")
def tasks() -> TaskRegistry:
    return parse_tasks(TASKS_TOML, "test", env={})


def _request(text: str = "I loved it", metadata: dict[str, Any] | None = None) -> ClassificationRequest:
    return ClassificationRequest("req-1", "sentiment", text, metadata, "2025-01-01T00:00:00Z")


def _reply(top_logprobs: list[tuple[str, float]] | None = None) -> ModelReply:
    return ModelReply(top_logprobs, "positive", -0.05, prompt_tokens=31, completion_tokens=1,
                      latency_ms=12.3456, model="gemma-3-270m")


def _classified(calibrated: np.ndarray | None, mass: float, reply: ModelReply | None,
                model_error: str | None = None, forced: Route | None = None) -> dict[str, Any]:
    decision = forced or route(calibrated, mass, 0.8, 0.5) if calibrated is not None else \
        forced or Route("review", "no_logprobs", -1)
    entropy = normalised_entropy(calibrated) if calibrated is not None and calibrated.any() else None
    result = None if reply is None else MethodResult(
        FIRST_TOKEN, calibrated, mass, None if calibrated is not None else "no_logprobs", requests=1,
        prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens, latency_ms=reply.latency_ms,
        chosen_logprob=reply.chosen_logprob)
    record = classification_record(
        _request(metadata={"source": "unit"}), LABELS, decision, FIRST_TOKEN, result, calibrated, entropy,
        "gemma-3-270m", "identity-0", model_error,
    )
    return orjson.loads(orjson.dumps(record))  # what consumers see on the wire


def _errors(name: str, record: Any) -> list[str]:
    return [e.message for e in schemas.validator(name).iter_errors(record)]


# ------------------------------------------------------------------ the schemas themselves


@pytest.mark.parametrize("name", schemas.SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = schemas.load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://llm-confidence-streams.dev/schemas/{name}.schema.json"
    assert schema["title"] and schema["description"]
    expected_open = name == "classification_request"  # producers may add their own fields
    assert schema.get("additionalProperties") is expected_open


def test_every_schema_file_is_named_and_every_topic_has_one() -> None:
    on_disk = {p.name.removesuffix(".schema.json") for p in schemas.SCHEMAS_DIR.glob("*.schema.json")}
    assert on_disk == set(schemas.SCHEMA_NAMES)
    assert set(schemas.SCHEMA_FOR_TOPIC) == set(TOPIC_NAMES)
    assert set(schemas.SCHEMA_FOR_TOPIC.values()) | set(schemas.NON_TOPIC_SCHEMAS) == set(schemas.SCHEMA_NAMES)


def test_unknown_schema_name_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="known: classification_request"):
        schemas.validator("results")


def test_validator_is_cached() -> None:
    assert schemas.validator("feedback") is schemas.validator("feedback")


def test_importing_the_module_does_not_need_jsonschema() -> None:
    code = "import sys, streams.schemas; assert 'jsonschema' not in sys.modules, 'imported eagerly'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_mirrored_enums_match_the_code() -> None:
    review = schemas.load_schema("review_item")["properties"]["review_reason"]["enum"]
    assert tuple(review) == REVIEW_REASONS
    error_types = set(schemas.load_schema("dead_letter")["properties"]["error_type"]["enum"])
    assert set(ERROR_TYPES) | {"internal_error", "unknown_label", "unknown_id"} == error_types


# ------------------------------------------------------------------ requests


def test_request_schema_accepts_what_the_parser_accepts(tasks: TaskRegistry) -> None:
    doc = {"id": "r1", "task": "sentiment", "text": "fine", "metadata": {"a": [1]},
           "created_at": "2025-01-01T00:00:00Z", "schema_version": 1, "producer_field": True}
    parse_request(orjson.dumps(doc), tasks, MAX_TEXT)  # does not raise
    schemas.validate("classification_request", doc)


@pytest.mark.parametrize("doc", [
    {"task": "sentiment", "text": "x"},
    {"id": "", "task": "sentiment", "text": "x"},
    {"id": "x" * 257, "task": "sentiment", "text": "x"},
    {"id": "r1", "task": "sentiment", "text": "   "},
    {"id": "r1", "task": "sentiment", "text": 5},
    {"id": "r1", "task": "sentiment", "text": "x", "metadata": [1]},
])
def test_request_schema_rejects_what_the_parser_rejects(doc: dict[str, Any], tasks: TaskRegistry) -> None:
    with pytest.raises(BadRequest):
        parse_request(orjson.dumps(doc), tasks, MAX_TEXT)
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate("classification_request", doc)


# ------------------------------------------------------------------ results and review items


def test_auto_result_validates() -> None:
    rec = _classified(np.array([0.9, 0.07, 0.03]), 0.95, _reply([("positive", -0.1)]))
    assert rec["decision"] == "auto" and rec["label"] == "positive"
    schemas.validate("classification_result", rec)
    assert _errors("review_item", rec)  # not a review item


def test_review_low_confidence_validates() -> None:
    rec = _classified(np.array([0.5, 0.3, 0.2]), 0.9, _reply([("positive", -0.7)]))
    assert rec["decision"] == "review" and rec["review_reason"] == "low_confidence"
    assert rec["text"] == "I loved it" and rec["label"] == "positive"
    schemas.validate("review_item", rec)
    assert _errors("classification_result", rec)


def test_review_low_label_mass_with_no_label_validates() -> None:
    rec = _classified(np.zeros(3), 0.0, _reply([("Sure", -0.01)]))
    assert rec["review_reason"] == "low_label_mass" and rec["label"] is None
    assert rec["probabilities"] == {"positive": 0.0, "negative": 0.0, "neutral": 0.0}
    schemas.validate("review_item", rec)


def test_review_no_logprobs_validates() -> None:
    rec = _classified(None, 0.0, _reply(None))
    assert rec["review_reason"] == "no_logprobs"
    assert rec["label"] is None and rec["confidence"] is None and rec["entropy"] is None
    assert rec["probabilities"] == {} and rec["raw_probabilities"] == {}
    schemas.validate("review_item", rec)


def test_review_model_error_validates() -> None:
    rec = _classified(None, 0.0, None, model_error="timeout: no answer after 3 tries",
                      forced=Route("review", "model_error", -1))
    assert rec["model_error"] == "timeout: no answer after 3 tries"
    assert rec["latency_ms"] is None and rec["usage"] == {"prompt_tokens": 0, "completion_tokens": 0,
                                                             "cached_tokens": 0}
    schemas.validate("review_item", rec)
    missing = {k: v for k, v in rec.items() if k != "model_error"}
    assert _errors("review_item", missing)  # reason model_error needs the error


def test_human_result_validates() -> None:
    rec = _classified(np.array([0.5, 0.3, 0.2]), 0.9, _reply([("positive", -0.7)]))
    human = {k: v for k, v in rec.items() if k not in ("text",)}
    human.update(decision="human", label="negative", confidence=0.3, method="human",
                 reviewer="ana", note="sarcasm")
    schemas.validate("classification_result", human)
    auto_with_reviewer = {**human, "decision": "auto", "method": "first_token_logprobs"}
    assert _errors("classification_result", auto_with_reviewer)


# ------------------------------------------------------------------ negative checks


def test_result_missing_confidence_fails() -> None:
    rec = _classified(np.array([0.9, 0.07, 0.03]), 0.95, _reply([("positive", -0.1)]))
    del rec["confidence"]
    with pytest.raises(jsonschema.ValidationError, match="confidence"):
        schemas.validate("classification_result", rec)


def test_result_with_review_decision_fails() -> None:
    rec = _classified(np.array([0.9, 0.07, 0.03]), 0.95, _reply([("positive", -0.1)]))
    rec["decision"] = "review"
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate("classification_result", rec)


@pytest.mark.parametrize("change", [
    {"text": "the request text must not leak to results"},
    {"confidence": None},
    {"confidence": 1.5},
    {"processed_at": "yesterday"},
    {"processed_at": "2025-02-30T00:00:00Z"},
    {"schema_version": 2},
    {"probabilities": {"positive": "0.9"}},
])
def test_result_shape_violations_fail(change: dict[str, Any]) -> None:
    rec = _classified(np.array([0.9, 0.07, 0.03]), 0.95, _reply([("positive", -0.1)]))
    rec.update(change)
    assert _errors("classification_result", rec)


# ------------------------------------------------------------------ dead letters

BAD_INPUTS: dict[str, bytes] = {
    "empty_message": b"",
    "invalid_utf8": b'{"id": "r1", "text": "\xff\xfe"}',
    "invalid_json": b'{"id": "r1", "task": ',
    "missing_field": b'{"id": "r1", "task": "sentiment"}',
    "invalid_field": b'{"id": "r1", "task": "sentiment", "text": 5}',
    "unknown_task": b'{"id": "r1", "task": "toxicity", "text": "hello"}',
    "text_too_long": b'{"id": "r1", "task": "sentiment", "text": "' + b"a" * (MAX_TEXT + 1) + b'"}',
}


def test_every_error_type_has_a_bad_input() -> None:
    assert set(BAD_INPUTS) == set(ERROR_TYPES)


@pytest.mark.parametrize("error_type", ERROR_TYPES)
def test_dead_letter_for_each_error_type_validates(error_type: str, tasks: TaskRegistry) -> None:
    raw = BAD_INPUTS[error_type]
    with pytest.raises(BadRequest) as info:
        parse_request(raw, tasks, MAX_TEXT)
    exc = info.value
    assert exc.error_type == error_type
    rec = orjson.loads(orjson.dumps(
        dead_letter_record(raw, exc.error_type, exc.message, "validate", SOURCE, exc.request_id, EXCERPT)
    ))
    schemas.validate("dead_letter", rec)
    assert base64.b64decode(rec["original_b64"]) == raw
    assert rec["original_size"] == len(raw) and rec["original_truncated"] is False


def test_truncated_internal_error_dead_letter_validates() -> None:
    raw = '{"id": "r1", "task": "sentiment", "text": "é"}'.encode()
    rec = dead_letter_record(raw, "internal_error", "unexpected error: ZeroDivisionError", "classify",
                             SOURCE, "r1", excerpt_bytes=len(raw) - 3)  # cuts into the two-byte é
    schemas.validate("dead_letter", rec)
    assert rec["original_truncated"] is True and rec["original_size"] == len(raw)


def test_dead_letter_of_none_value_validates() -> None:
    rec = dead_letter_record(None, "empty_message", "message value is empty", "validate", SOURCE, None, EXCERPT)
    schemas.validate("dead_letter", rec)
    assert rec["original_b64"] == "" and rec["id"] is None


@pytest.mark.parametrize("change", [
    {"error_type": "kaboom"},
    {"stage": "publish"},
    {"source": {"topic": "classify.requests", "partition": -1, "offset": 0}},
    {"id": ""},
])
def test_dead_letter_violations_fail(change: dict[str, Any]) -> None:
    rec = dead_letter_record(b"{", "invalid_json", "value is not valid JSON", "validate", SOURCE, None, EXCERPT)
    schemas.validate("dead_letter", rec)
    bad = {**copy.deepcopy(rec), **change}
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate("dead_letter", bad)


# ------------------------------------------------------------------ the service's real outputs


class _FakeModel:
    """Answers by text: 'sure' -> confident, 'meh' -> unsure, 'silent' -> no logprobs, 'down' -> error."""

    async def first_token(self, task: Any, text: str) -> ModelReply:
        if text == "down":
            raise ModelError("timeout", "no answer after 3 tries")
        if text == "silent":
            return _reply(None)
        if text == "meh":
            return _reply([("positive", -0.9), ("negative", -1.2), ("neutral", -1.5)])
        return _reply([("positive", -0.01), ("negative", -6.0)])


@pytest.mark.parametrize(("text", "topic", "reason"), [
    ("sure", "results", None),
    ("meh", "review", "low_confidence"),
    ("silent", "review", "no_logprobs"),
    ("down", "review", "model_error"),
])
def test_service_outputs_match_their_topic_schema(text: str, topic: str, reason: str | None,
                                                  tasks: TaskRegistry) -> None:
    from streams.classify.service import Classifier

    classifier = Classifier(tasks, _FakeModel(), MAX_TEXT, EXCERPT)  # type: ignore[arg-type]
    raw = orjson.dumps({"id": "r1", "task": "sentiment", "text": text})
    outs = asyncio.run(classifier.process(raw, b"r1", SOURCE))
    assert len(outs) == 1
    out = outs[0]
    assert out.topic == topic
    rec = orjson.loads(out.value)
    assert rec.get("review_reason") == reason
    schemas.validate(schemas.SCHEMA_FOR_TOPIC[out.topic], rec)


def test_service_dead_letter_matches_schema(tasks: TaskRegistry) -> None:
    from streams.classify.service import Classifier

    classifier = Classifier(tasks, _FakeModel(), MAX_TEXT, EXCERPT)  # type: ignore[arg-type]
    (out,) = asyncio.run(classifier.process(b"not json", None, SOURCE))
    assert out.topic == "deadletter"
    schemas.validate(schemas.SCHEMA_FOR_TOPIC[out.topic], orjson.loads(out.value))


# ------------------------------------------------------------------ contracts for upcoming features


def test_feedback_calibrator_and_alert_examples() -> None:
    schemas.validate("feedback", {"id": "r1", "task": "sentiment", "label": "negative", "reviewer": "ana",
                                  "note": "sarcasm", "answered_at": "2025-01-01T10:00:00.5+02:00",
                                  "schema_version": 1})
    assert _errors("feedback", {"id": "r1", "task": "sentiment", "lable": "negative"})
    metrics = {"ece": 0.08, "brier": 0.2, "nll": 0.5}
    calibrator = {"task": "sentiment", "model": "gemma-3-270m", "method": "temperature",
                  "params": {"temperature": 1.7}, "version": "temperature-3", "fit_size": 500,
                  "labels": ["positive", "negative"], "n_classes": 2,
                  "metrics_before": {**metrics, "mce": 0.3}, "metrics_after": {"ece": 0.02, "brier": 0.18, "nll": 0.4},
                  "fitted_at": "2025-01-01T00:00:00Z", "schema_version": 1}
    schemas.validate("calibrator", calibrator)
    assert _errors("calibrator", {**calibrator, "metrics_after": {"ece": 0.02}})
    alert = {"task": "sentiment", "model": "gemma-3-270m", "kind": "data", "state": "open",
             "statistic": "js", "value": 0.21, "threshold": 0.1, "p_value": None,
             "window_start": "2025-01-01T00:00:00Z", "window_end": "2025-01-01T01:00:00Z",
             "baseline_ref": "baseline-2024-12", "raised_at": "2025-01-01T01:00:01Z", "schema_version": 1}
    schemas.validate("drift_alert", alert)
    assert _errors("drift_alert", {**alert, "kind": "concept"})
