"""The review queue: review items that have no reviewer answer yet. Pure: no Kafka here.

The state is derived from the two topics that define it, the review topic (items) and the feedback
topic (answers), so every worker can rebuild it after a restart by reading both to their high
watermark, and every worker holds the whole queue (not only its partitions). It mirrors what the
feedback agent accepts: an answer removes an item only when the id is pending, the task matches and
the label is one of the task's labels.

Bounded: at most `max_items` pending items are held (beyond that, new items are counted in
`overflow` and not offered until a restart re-reads the oldest ones); answered ids are remembered
in an LRU of `max_answered`, so an item answered once is not offered again even when a replay
re-emits it or its answer is read before it.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from streams.stamps import SCHEMA_VERSION, now_iso

Order = Literal["oldest", "confidence"]


def parse_time(value: Any, default: float) -> float:
    """ISO-8601 (the records' `processed_at`) to epoch seconds; `default` when absent or unreadable."""
    if not isinstance(value, str):
        return default
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


@dataclass(frozen=True, slots=True)
class PendingItem:
    """What a reviewer needs to decide, and what the dashboard needs to judge the model afterwards."""

    id: str
    task: str
    text: str
    label: str | None
    confidence: float | None
    probabilities: dict[str, float]
    reason: str
    audit: bool
    model_error: str | None
    queued_at: float  # epoch seconds (the item's processed_at)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "text": self.text, "label": self.label,
                "confidence": self.confidence, "probabilities": self.probabilities, "reason": self.reason,
                "audit": self.audit, "model_error": self.model_error, "queued_at": self.queued_at}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One answered item: the model's view at routing time against the reviewer's label."""

    task: str
    confidence: float | None
    model_label: str | None
    human_label: str
    audit: bool
    answered_at: float

    @property
    def correct(self) -> bool:
        return self.model_label == self.human_label


@dataclass
class ReviewQueue:
    labels: Mapping[str, tuple[str, ...]]  # task -> labels; items and answers for other tasks are ignored
    max_items: int = 100_000
    max_answered: int = 200_000
    max_outcomes: int = 5_000  # per task, newest kept (reliability diagram, audited accuracy)
    pending: dict[str, PendingItem] = field(default_factory=dict)
    answered: OrderedDict[str, None] = field(default_factory=OrderedDict)
    outcomes: dict[str, deque[Outcome]] = field(default_factory=dict)
    overflow: int = 0  # items not held because the queue was full

    def add_item(self, record: Mapping[str, Any], now: float) -> bool:
        """A record from the review topic; True when it became pending."""
        rid, task = record.get("id"), record.get("task")
        if (not isinstance(rid, str) or not isinstance(task, str) or task not in self.labels
                or not isinstance(record.get("text"), str)):
            return False
        if rid in self.pending or rid in self.answered:
            return False  # a replayed duplicate, or already answered: not offered again
        if len(self.pending) >= self.max_items:
            self.overflow += 1
            return False
        confidence = record.get("confidence")
        self.pending[rid] = PendingItem(
            id=rid, task=task, text=record["text"], label=record.get("label"),
            confidence=float(confidence) if isinstance(confidence, (int, float)) else None,
            probabilities={k: float(v) for k, v in (record.get("probabilities") or {}).items()},
            reason=str(record.get("review_reason") or "unknown"), audit=bool(record.get("audit")),
            model_error=record.get("model_error"), queued_at=parse_time(record.get("processed_at"), now),
        )
        return True

    def add_answer(self, record: Mapping[str, Any], now: float) -> Outcome | None:
        """A record from the feedback topic; the outcome when it answered a pending item."""
        rid, task, label = record.get("id"), record.get("task"), record.get("label")
        if (not isinstance(rid, str) or not isinstance(task, str) or task not in self.labels
                or label not in self.labels[task]):
            return None  # the feedback agent dead-letters these; the item stays pending
        item = self.pending.get(rid)
        if item is not None and item.task != task:
            return None
        self._remember(rid)
        if item is None:
            return None  # answered before we saw the item (two topics), or answered twice
        del self.pending[rid]
        outcome = Outcome(task, item.confidence, item.label, label, item.audit,
                          parse_time(record.get("answered_at"), now))
        self.outcomes.setdefault(task, deque(maxlen=self.max_outcomes)).append(outcome)
        return outcome

    def _remember(self, rid: str) -> None:
        self.answered[rid] = None
        self.answered.move_to_end(rid)
        while len(self.answered) > self.max_answered:
            self.answered.popitem(last=False)

    def is_pending(self, rid: str) -> bool:
        return rid in self.pending

    def items(self, task: str | None = None, order: Order = "oldest", limit: int = 50,
              exclude: Iterable[str] = ()) -> list[PendingItem]:
        """Pending items, oldest first or lowest confidence first (items without a confidence first)."""
        skip = set(exclude)
        chosen = [i for i in self.pending.values() if (task is None or i.task == task) and i.id not in skip]
        if order == "confidence":
            chosen.sort(key=lambda i: (-1.0 if i.confidence is None else i.confidence, i.queued_at, i.id))
        else:
            chosen.sort(key=lambda i: (i.queued_at, i.id))  # ties (same millisecond) in a fixed order
        return chosen[:max(limit, 0)]

    def depth(self, task: str) -> int:
        return sum(1 for i in self.pending.values() if i.task == task)

    def oldest_age_s(self, task: str, now: float) -> float:
        """Seconds the oldest pending item of the task has waited; 0 when none waits."""
        oldest = min((i.queued_at for i in self.pending.values() if i.task == task), default=None)
        return 0.0 if oldest is None else max(now - oldest, 0.0)

    def stats(self, now: float) -> dict[str, dict[str, float]]:
        """Per task: depth and oldest age, in one pass over the pending items."""
        out = {t: {"depth": 0, "oldest_age_s": 0.0} for t in self.labels}
        oldest: dict[str, float] = {}
        for item in self.pending.values():
            out[item.task]["depth"] += 1
            oldest[item.task] = min(oldest.get(item.task, math.inf), item.queued_at)
        for task, t in oldest.items():
            out[task]["oldest_age_s"] = max(now - t, 0.0)
        return out


def answer_record(item: PendingItem, label: str, reviewer: str | None = None, note: str | None = None,
                  answered_at: str | None = None) -> dict[str, Any]:
    """The feedback record (schemas/feedback.schema.json) a reviewer's choice becomes; key it by id."""
    record: dict[str, Any] = {"id": item.id, "task": item.task, "label": label,
                              "answered_at": answered_at or now_iso(), "schema_version": SCHEMA_VERSION}
    if reviewer:
        record["reviewer"] = reviewer[:200]
    if note:
        record["note"] = note[:2000]
    return record
