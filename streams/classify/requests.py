"""Parsing and validating raw request bytes. Pure: bytes in, a request or a typed BadRequest out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from streams.errors import BadRequest
from streams.tasks import TaskRegistry

MAX_ID_CHARS = 256

#: Every error type a request can be dead-lettered with (mirrored in schemas/dead_letter.schema.json).
ERROR_TYPES = (
    "empty_message",
    "invalid_utf8",
    "invalid_json",
    "missing_field",
    "invalid_field",
    "unknown_task",
    "text_too_long",
)


@dataclass(frozen=True, slots=True)
class ClassificationRequest:
    id: str
    task: str
    text: str
    metadata: dict[str, Any] | None
    created_at: str | None


def _field(doc: dict[str, Any], name: str, kind: type, kind_name: str, request_id: str | None) -> Any:
    if name not in doc:
        raise BadRequest("missing_field", f"field '{name}' is required ({kind_name})", request_id)
    value = doc[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(
            "invalid_field", f"field '{name}' must be a {kind_name}, got {type(value).__name__}", request_id
        )
    return value


def parse_request(raw: bytes | None, tasks: TaskRegistry, max_text_chars: int) -> ClassificationRequest:
    """Decode and validate one request; raises BadRequest with an actionable message."""
    if not raw:
        raise BadRequest("empty_message", "message value is empty; send a JSON ClassificationRequest")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("invalid_utf8",
                         f"value is not valid UTF-8 (byte {exc.start}): encode requests as UTF-8 JSON") from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid_json", f"value is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("invalid_field", f"request must be a JSON object, got {type(doc).__name__}")
    rid = doc.get("id") if isinstance(doc.get("id"), str) else None
    request_id = _field(doc, "id", str, "non-empty string", rid)
    if not request_id or len(request_id) > MAX_ID_CHARS:
        raise BadRequest("invalid_field", f"field 'id' must be 1 to {MAX_ID_CHARS} characters", None)
    task = _field(doc, "task", str, "string naming a task", request_id)
    text = _field(doc, "text", str, "string", request_id)
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequest("invalid_field", f"field 'metadata' must be an object, got {type(metadata).__name__}",
                         request_id)
    if metadata:
        try:  # orjson reads 1024 levels deep but writes 254: refuse now, not after a paid model call
            orjson.dumps(metadata)
        except orjson.JSONEncodeError:
            raise BadRequest("invalid_field", "field 'metadata' is nested too deeply to pass through",
                             request_id) from None
    created_at = doc.get("created_at")
    if created_at is not None and not isinstance(created_at, str):
        raise BadRequest("invalid_field", "field 'created_at' must be an ISO-8601 string", request_id)
    if task not in tasks:
        known = ", ".join(sorted(tasks.tasks)) or "none"
        raise BadRequest("unknown_task", f"task '{task[:100]}' is not in the task file (known: {known})", request_id)
    if len(text) > max_text_chars:
        raise BadRequest(
            "text_too_long",
            f"text has {len(text)} characters; the limit is {max_text_chars} (STREAMS_MAX_TEXT_CHARS)",
            request_id,
        )
    if not text.strip():
        raise BadRequest("invalid_field", "field 'text' is empty or only whitespace", request_id)
    return ClassificationRequest(request_id, task, text, metadata, created_at)
