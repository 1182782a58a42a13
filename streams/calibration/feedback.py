"""Reviewer answers: validation, the final `human` result, and the labelled example for refits. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from streams.classify.requests import MAX_ID_CHARS
from streams.confidence.names import FIRST_TOKEN
from streams.errors import BadRequest
from streams.stamps import SCHEMA_VERSION, now_iso
from streams.tasks import TaskRegistry


@dataclass(frozen=True, slots=True)
class Feedback:
    id: str
    task: str
    label: str
    reviewer: str | None
    note: str | None


def parse_feedback(raw: bytes | None, tasks: TaskRegistry) -> Feedback:
    """Decode and validate one reviewer answer; raises BadRequest (dead letter) with what to fix."""
    if not raw:
        raise BadRequest("empty_message", "feedback value is empty; send {id, task, label}")
    try:
        raw.decode("utf-8")
        doc = orjson.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("invalid_utf8", "feedback is not valid UTF-8") from None
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid_json", f"feedback is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("invalid_field", "feedback must be a JSON object")
    rid = doc.get("id") if isinstance(doc.get("id"), str) and 0 < len(doc["id"]) <= MAX_ID_CHARS else None
    for name in ("id", "task", "label"):
        if name not in doc:
            raise BadRequest("missing_field", f"feedback field '{name}' is required", rid)
        if not isinstance(doc[name], str) or not doc[name]:
            raise BadRequest("invalid_field", f"feedback field '{name}' must be a non-empty string", rid)
    if rid is None:
        raise BadRequest("invalid_field", f"feedback field 'id' must be 1 to {MAX_ID_CHARS} characters")
    for name in ("reviewer", "note"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise BadRequest("invalid_field", f"feedback field '{name}' must be a string", rid)
    task = tasks.get(doc["task"])
    if task is None:
        raise BadRequest("unknown_task", f"task '{doc['task'][:100]}' is not in the task file", rid)
    if doc["label"] not in task.labels:
        raise BadRequest("unknown_label", f"label '{doc['label'][:100]}' is not one of {list(task.labels)}", rid)
    return Feedback(rid, task.name, doc["label"], doc.get("reviewer"), doc.get("note"))


def human_result(item: dict[str, Any], fb: Feedback, labels: tuple[str, ...]) -> dict[str, Any]:
    """The final decision downstream services read: the reviewer's label, the model's view kept."""
    record = {
        "id": fb.id,
        "task": fb.task,
        "label": fb.label,
        "confidence": 1.0,
        "probabilities": {label: 1.0 if label == fb.label else 0.0 for label in labels},
        "raw_probabilities": item.get("raw_probabilities") or {},
        "entropy": 0.0,
        "label_mass": item.get("label_mass", 0.0),
        "decision": "human",
        "method": "human",
        "model": item.get("model"),
        "calibrator_version": item.get("calibrator_version"),
        "usage": item.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0},
        "latency_ms": item.get("latency_ms"),
        "metadata": item.get("metadata"),
        "processed_at": now_iso(),
        "schema_version": SCHEMA_VERSION,
    }
    if item.get("review_reason") is not None:
        record["review_reason"] = item["review_reason"]
    if fb.reviewer is not None:
        record["reviewer"] = fb.reviewer
    if fb.note is not None:
        record["note"] = fb.note
    return record


def labelled_example(item: dict[str, Any], fb: Feedback) -> dict[str, Any] | None:
    """The item's raw probabilities with the true label; None when the model gave no scores."""
    raw = item.get("raw_probabilities") or {}
    if not raw:
        return None
    return {
        "id": fb.id,
        "task": fb.task,
        "model": item.get("model") or "unknown",
        "label": fb.label,
        "raw_probabilities": raw,
        "calibrator_version": item.get("calibrator_version"),
        "method": item.get("method") or FIRST_TOKEN,  # each method gets its own calibrator
        "review_reason": item.get("review_reason"),
        "reviewer": fb.reviewer,
        "source": "feedback",
        "labelled_at": now_iso(),
        "schema_version": SCHEMA_VERSION,
    }
