"""No model call for a text already answered: the answer cache. No Kafka here.

What is cached is a confidence method's raw output (`MethodResult`: raw label probabilities, label mass,
tokens, requests...), before any calibrator, so a hit goes through the same calibration, routing and
drift observation as a fresh call, and a refitted calibrator applies to hits too.

**Key** (`AnswerCache.key`): the task's name, a version and a hash of the normalised text.

- The version hashes everything that decides the raw answer (`answer_fingerprint`): labels, codes,
  descriptions, the whole prompt (system, template, few-shot examples, options), the model endpoint (URL,
  name, temperature, top-k), every confidence setting and member, the method chosen, and `ANSWER_FORMAT`
  (bumped when a method's scoring code changes). Routing, calibration and drift settings are left out: they
  act after the raw answer. For an ensemble the version also names the member calibrators in force, since
  members are calibrated before they are pooled.
- With `option_order = "shuffled"` the request's drawn order is part of the key: the order changes the
  prompt, and the model's position bias is the reason to shuffle, so an answer under one order is not the
  answer under another. A repeated text hits only when its id draws the same order (1 in K! for K labels;
  a replay of the same id always does).
- The text is normalised by Unicode NFC and whitespace collapsed (runs of spaces, tabs and newlines to
  one space, ends stripped); case is kept. Two texts that differ only in whitespace share an answer: the one
  computed for the first seen.

**Bounds.** At most `max_entries` entries, least recently used dropped first; an entry is served for
`ttl_s` seconds from the call that made it (wall clock, so a restart or another worker never serves an
expired one). Only answers with label scores are kept: a call that gave none is asked again next time.

**Single flight.** Identical keys in flight at once share one call: the second request waits for the
first's answer (or its `ModelError`) instead of calling. If the first is cancelled (a revoked partition,
a stop), a waiter makes the call itself.

**Sharing.** `on_store` is told about every new entry (the worker publishes it to its cache topic), and
`apply` installs entries read from there (streams/classify/agents.py), so every worker answers a text any
worker has answered.

>>> import numpy as np
>>> from streams.confidence.methods.base import MethodResult
>>> now = [1000.0]
>>> cache = AnswerCache(max_entries=2, ttl_s=60, clock=lambda: now[0])
>>> cache.put("t/v/a", "t", MethodResult("first_token_logprobs", np.array([0.9, 0.1]), 1.0))
>>> cache.get("t/v/a").raw.tolist(), cache.get("t/v/b") is None
([0.9, 0.1], True)
>>> now[0] += 61  # past the TTL
>>> cache.get("t/v/a") is None, len(cache)
(True, 0)
>>> normalise_text("  Caf\\u0065\\u0301 au\\tlait\\n ") == "Caf\\u00e9 au lait"
True
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Literal

import numpy as np
import orjson

from streams.confidence.methods.base import MethodResult
from streams.confidence.names import ENSEMBLE
from streams.stamps import SCHEMA_VERSION, iso
from streams.tasks import Task, shuffled_order

log = logging.getLogger(__name__)

#: Bumped when a confidence method's scoring code changes what it returns for the same prompt and reply, so
#: entries made by the older code stop matching (the TTL would retire them anyway).
ANSWER_FORMAT = 1

#: Task fields that act only after the raw answer (routing, calibration, drift) or name the task; every other
#: field of `Task` goes into the fingerprint. A new `Task` field is in the fingerprint unless it is listed here.
NOT_IN_ANSWER = frozenset({"name", "review_threshold", "min_label_mass", "target_error", "failure_probability",
                           "audit_rate", "calibration", "drift", "answer_cache"})

#: How a request's answer was found: in the cache, from an identical call in flight, or by calling the model.
Outcome = Literal["hit", "coalesced", "miss"]


def normalise_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, ends stripped; case kept."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def text_hash(text: str) -> str:
    """128-bit BLAKE2b of the normalised text, hex."""
    return hashlib.blake2b(normalise_text(text).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def answer_fingerprint(task: Task, method: str) -> str:
    """A hash of everything in `task` that decides `method`'s raw answer (see the module docstring)."""
    decides = {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.name not in NOT_IN_ANSWER}
    doc = orjson.dumps({"format": ANSWER_FORMAT, "method": method, "task": decides}, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(doc, digest_size=16).hexdigest()


def result_doc(result: MethodResult) -> dict[str, Any]:
    """A `MethodResult` as JSON-ready values, every field (raw as a list; floats round-trip exactly)."""
    doc: dict[str, Any] = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, np.ndarray):
            value = [float(v) for v in value]
        elif isinstance(value, tuple):
            value = list(value)
        doc[f.name] = value
    return doc


_RESULT_FIELDS = {f.name for f in dataclasses.fields(MethodResult)}


def result_from_doc(doc: dict[str, Any]) -> MethodResult:
    """Back from `result_doc`; fields this version does not know are ignored, missing ones take their default."""
    values = {k: v for k, v in doc.items() if k in _RESULT_FIELDS}
    if values.get("raw") is not None:
        values["raw"] = np.asarray(values["raw"], dtype=np.float64)
    if values.get("interval") is not None:
        values["interval"] = tuple(values["interval"])
    return MethodResult(**values)


def entry_record(key: str, task: str, stored_at: float, result: MethodResult) -> dict[str, Any]:
    """The record on the cache topic (schemas/answer_cache_entry.schema.json); keyed by `key`."""
    return {"key": key, "task": task, "stored_at": iso(stored_at), "result": result_doc(result),
            "schema_version": SCHEMA_VERSION}


class _LeaderGone(Exception):
    """The request making the shared call was cancelled; a waiter calls itself."""


class AnswerCache:
    """Raw answers by key: LRU-bounded, expiring, single-flight (see the module docstring)."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.time,
                 on_store: Callable[[str, str, float, MethodResult], None] | None = None,
                 observe: Callable[[str, Outcome], None] | None = None) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("an answer cache needs max_entries >= 1 and ttl_s > 0")
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        #: Told (key, task, stored_at, result) about each answer this process stores (the worker publishes it).
        self.on_store = on_store
        #: Told (task, outcome) about each lookup (the worker's metrics).
        self.observe = observe
        self._entries: OrderedDict[str, tuple[float, MethodResult]] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[MethodResult]] = {}
        self._versions: dict[tuple[str, str], tuple[Task, str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ keys

    def key(self, task: Task, method: str, text: str, request_id: str, member_versions: Iterable[str] = ()) -> str:
        """`task/variant/text hash`; the variant hashes the fingerprint, the shuffled order and member calibrators."""
        cached = self._versions.get((task.name, method))
        if cached is None or cached[0] is not task:
            cached = self._versions[(task.name, method)] = (task, answer_fingerprint(task, method))
        parts = [cached[1]]
        if task.prompt.option_order == "shuffled":
            parts.append(",".join(map(str, shuffled_order(request_id, len(task.labels)))))
        if method == ENSEMBLE:
            parts.extend(member_versions)
        variant = hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest() if len(parts) > 1 \
            else cached[1][:16]
        return f"{task.name}/{variant}/{text_hash(text)}"

    # ------------------------------------------------------------------ entries

    def get(self, key: str) -> MethodResult | None:
        """The answer stored under `key`, unless it has expired (then it is dropped)."""
        found = self._entries.get(key)
        if found is None:
            return None
        if self.clock() - found[0] >= self.ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[1]

    def put(self, key: str, task: str, result: MethodResult, stored_at: float | None = None,
            share: bool = True) -> None:
        """Store an answer made at `stored_at` (now by default); an expired one is not stored."""
        at = self.clock() if stored_at is None else stored_at
        if self.clock() - at >= self.ttl_s:
            return
        current = self._entries.get(key)
        if current is not None and current[0] > at:
            return  # a newer answer is already here (records from two partitions can arrive out of order)
        self._entries[key] = (at, result)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        if share and self.on_store is not None:
            self.on_store(key, task, at, result)

    def apply(self, record: dict[str, Any]) -> bool:
        """Install an entry read from the cache topic; False when it has expired or does not read."""
        key, task, result = record.get("key"), record.get("task"), record.get("result")
        if not isinstance(key, str) or not isinstance(task, str) or not isinstance(result, dict):
            return False
        try:
            stored_at = datetime.fromisoformat(str(record["stored_at"]).replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError):
            return False
        if self.clock() - stored_at >= self.ttl_s:
            return False
        before = self._entries.get(key)
        self.put(key, task, result_from_doc(result), stored_at, share=False)
        return self._entries.get(key) is not before

    # ------------------------------------------------------------------ lookups

    async def answer(self, key: str, task: str,
                     call: Callable[[], Awaitable[MethodResult]]) -> tuple[MethodResult, Outcome]:
        """The stored answer, else the answer of an identical call in flight, else `call()` (stored when it has
        label scores). A `ModelError` of the shared call is raised to every request that waited for it."""
        while True:
            found = self.get(key)
            if found is not None:
                return self._seen(task, found, "hit")
            pending = self._in_flight.get(key)
            if pending is None:
                break
            try:
                result = await asyncio.shield(pending)  # a waiter's cancellation must not cancel the shared call
            except _LeaderGone:
                continue
            return self._seen(task, result, "coalesced")
        future: asyncio.Future[MethodResult] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await call()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        except BaseException:  # cancelled: whoever waits calls for itself
            future.set_exception(_LeaderGone())
            future.exception()
            raise
        finally:
            del self._in_flight[key]
        future.set_result(result)
        if result.raw is not None:
            self.put(key, task, result)
        return self._seen(task, result, "miss")

    def _seen(self, task: str, result: MethodResult, outcome: Outcome) -> tuple[MethodResult, Outcome]:
        if self.observe is not None:
            self.observe(task, outcome)
        return result, outcome


def entry_bytes(key: str, task: str, stored_at: float, result: MethodResult) -> tuple[bytes, bytes]:
    """(Kafka key, value) of an entry on the cache topic."""
    return key.encode(), orjson.dumps(entry_record(key, task, stored_at, result))


def served(result: MethodResult, started: float) -> MethodResult:
    """A cached answer as this request's result: the same answer, with the time this request waited for it
    (`started`: time.perf_counter() before the lookup) as its latency."""
    return dataclasses.replace(result, latency_ms=(time.perf_counter() - started) * 1000.0)
