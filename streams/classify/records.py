"""The payloads this service emits, built as plain dicts that match schemas/*.schema.json."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.classify.requests import ClassificationRequest
from streams.classify.routing import Route
from streams.confidence.methods.base import MethodResult
from streams.stamps import SCHEMA_VERSION, now_iso


@dataclass(frozen=True, slots=True)
class Source:
    """Where a consumed message came from, for dead letters and logs."""

    topic: str
    partition: int
    offset: int


def _rounded(labels: tuple[str, ...], p: np.ndarray) -> dict[str, float]:
    return {label: round(float(v), 6) for label, v in zip(labels, p, strict=True)}


def classification_record(
    request: ClassificationRequest,
    labels: tuple[str, ...],
    route: Route,
    method: str,
    result: MethodResult | None,
    calibrated: np.ndarray | None,
    entropy: float | None,
    model: str,
    calibrator_version: str,
    model_error: str | None = None,
    audit: bool = False,
    cached: bool = False,
) -> dict[str, Any]:
    """A ClassificationResult (decision auto) or a ReviewItem (decision review, with the text).

    `result` is None when the model call failed (`model_error` says how); `cached`: it is an answer made for an
    earlier request with the same text (streams/classify/answer_cache.py), and this request made no call.
    """
    idx = route.label_index
    raw = result.raw if result is not None else None
    label_mass = result.label_mass if result is not None else 0.0
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
            "prompt_tokens": result.prompt_tokens if result else 0,
            "completion_tokens": result.completion_tokens if result else 0,
            "cached_tokens": result.cached_tokens if result else 0,
        },
        "latency_ms": round(result.latency_ms, 3) if result else None,
        "cached": cached,
        "metadata": request.metadata,
        "processed_at": now_iso(),
        "schema_version": SCHEMA_VERSION,
    }
    if result is not None:
        record.update(method_details(result, labels))
    if route.decision == "review":
        record["review_reason"] = route.reason
        record["text"] = request.text
        if model_error is not None:
            record["model_error"] = model_error
        if audit:
            record["audit"] = True
    return record


def method_details(result: MethodResult, labels: tuple[str, ...]) -> dict[str, Any]:
    """What a method reports beyond probabilities: requests always; samples, interval, members when it has them."""
    out: dict[str, Any] = {"requests": result.requests}
    if result.samples is not None:
        out["samples"] = result.samples
    if result.interval is not None:
        out["confidence_interval"] = [round(result.interval[0], 6), round(result.interval[1], 6)]
    if result.settled is not None:
        out["settled"] = result.settled
    if result.ambiguous:
        out["ambiguous"] = True
    if result.members:
        out["members"] = {k: dict(zip(labels, v, strict=True)) for k, v in result.members.items()}
    return out


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
