"""The payloads this service emits, built as plain dicts that match schemas/*.schema.json."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from streams.classify.model_client import ModelReply
from streams.classify.requests import ClassificationRequest
from streams.classify.routing import Route

SCHEMA_VERSION = 1
METHOD_FIRST_TOKEN = "first_token_logprobs"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a consumed message came from, for dead letters and logs."""

    topic: str
    partition: int
    offset: int


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rounded(labels: tuple[str, ...], p: np.ndarray) -> dict[str, float]:
    return {label: round(float(v), 6) for label, v in zip(labels, p)}


def classification_record(
    request: ClassificationRequest,
    labels: tuple[str, ...],
    route: Route,
    raw: np.ndarray | None,
    calibrated: np.ndarray | None,
    entropy: float | None,
    label_mass: float,
    reply: ModelReply | None,
    model: str,
    calibrator_version: str,
    model_error: str | None = None,
    audit: bool = False,
    method: str = METHOD_FIRST_TOKEN,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ClassificationResult (decision auto) or a ReviewItem (decision review, with the text)."""
    idx = route.label_index
    record: dict[str, Any] = {
        "id": request.id,
        "task": request.task,
        "label": labels[idx] if idx >= 0 else None,
        "confidence": round(float(calibrated[idx]), 6) if calibrated is not None and idx >= 0 else None,
        "probabilities": _rounded(labels, calibrated) if calibrated is not None else {},
        "raw_probabilities": _rounded(labels, raw) if raw is not None else {},
        "entropy": round(entropy, 6) if entropy is not None else None,
        "label_mass": round(label_mass, 6),
        "decision": route.decision,
        "method": method,
        "model": model,
        "calibrator_version": calibrator_version,
        "usage": {
            "prompt_tokens": reply.prompt_tokens if reply else 0,
            "completion_tokens": reply.completion_tokens if reply else 0,
        },
        "latency_ms": round(reply.latency_ms, 3) if reply else None,
        "metadata": request.metadata,
        "processed_at": now_iso(),
        "schema_version": SCHEMA_VERSION,
    }
    if extra:  # method details: samples, requests, confidence_interval, ambiguous, settled, members
        record.update(extra)
    if route.decision == "review":
        record["review_reason"] = route.reason
        record["text"] = request.text
        if model_error is not None:
            record["model_error"] = model_error
        if audit:
            record["audit"] = True
    return record


def dead_letter_record(
    raw: bytes | None,
    error_type: str,
    message: str,
    stage: str,
    source: Source,
    request_id: str | None,
    excerpt_bytes: int,
) -> dict[str, Any]:
    """Enough for a person to find, understand and replay the message: the reason and the bytes."""
    data = raw or b""
    kept = data[:excerpt_bytes]
    return {
        "id": request_id,
        "error_type": error_type,
        "message": message,
        "stage": stage,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        "original_b64": base64.b64encode(kept).decode("ascii"),
        "original_excerpt": kept.decode("utf-8", errors="replace"),
        "original_size": len(data),
        "original_truncated": len(kept) < len(data),
        "failed_at": now_iso(),
        "schema_version": SCHEMA_VERSION,
    }
