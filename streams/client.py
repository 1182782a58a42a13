"""A client for the services around the classifier: the producers that send texts and the consumers
that act on what became of them.

Why a client rather than raw aiokafka:

- **Validation before a request leaves.** `publish` runs the worker's own parser
  (`streams.classify.requests.parse_request`) on the exact bytes it is about to send, so a missing
  field or an over-long text raises `InvalidRequest` in the caller instead of becoming a dead letter
  that somebody reads much later.
- **Outcomes once per request.** Delivery is at-least-once: a worker that crashes replays every
  request whose offset it had not committed, so a consumer can see an id twice. `outcomes()` yields
  typed records deduplicated by id within a bounded window (an LRU), and lets a reviewer's `human`
  decision through as the final word while dropping a model decision that arrives after it.
- **Traces.** A request published while the caller has an OpenTelemetry span open carries that
  span's W3C trace context in its headers; the worker carries it to every output (streams/ops/tracing.py).
- **Request/reply.** `classify()` publishes one request and waits for its result, review item or
  dead letter, following the output topics from their end without a consumer group, so it never
  takes partitions away from the services that consume them.

Usage (every topic name takes the configured prefix; Kafka security comes from the settings):

    async with StreamsClient.from_settings(Settings.from_env()) as client:
        outcome = await client.classify("A triumph.", "movie_sentiment", timeout=30)

        async with client.outcomes(start="latest") as stream:  # positions fixed before publishing
            ids = await client.publish_many({"task": "movie_sentiment", "text": t} for t in texts)
            async for outcome in stream:
                ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from streams.errors import BadRequest
from streams.kafka_security import kafka_client_options
from streams.ops.tracing import current_headers
from streams.settings import ENV_DEFAULTS, TOPIC_NAMES, Settings

if TYPE_CHECKING:
    from streams.tasks import TaskRegistry

log = logging.getLogger(__name__)

#: The worker's default text limit (STREAMS_MAX_TEXT_CHARS), for clients built without Settings.
DEFAULT_MAX_TEXT_CHARS = int(ENV_DEFAULTS["STREAMS_MAX_TEXT_CHARS"])
#: Ids remembered per consumer for deduplication. A replay follows its original within the worker's
#: uncommitted window (seconds of traffic), so this covers it with a wide margin at modest memory.
DEFAULT_DEDUP_WINDOW = 100_000

Start = Literal["earliest", "latest"]


# --------------------------------------------------------------------------- errors


class InvalidRequest(BadRequest):
    """The worker would dead-letter this request with `error_type`; raised before anything is sent."""


class DeadLettered(RuntimeError):
    """The worker refused the request; `dead_letter` says why and what to fix."""

    def __init__(self, dead_letter: DeadLetter) -> None:
        self.dead_letter = dead_letter
        super().__init__(f"request {dead_letter.id!r} was dead-lettered ({dead_letter.error_type}): "
                         f"{dead_letter.message}")


class ClassifyTimeout(TimeoutError):
    """No outcome within the timeout. `published` tells whether the request left: if it did, its
    outcome will still arrive on the topics, and retrying with the same `request_id` is safe."""

    def __init__(self, request_id: str, timeout: float | None, published: bool) -> None:
        self.request_id = request_id
        self.timeout = timeout
        self.published = published
        where = "after publishing" if published else "before the request was published"
        super().__init__(f"no outcome for request {request_id!r} within {timeout}s ({where})")


# --------------------------------------------------------------------------- requests


class _TaskNames:
    """The two things `parse_request` reads of a TaskRegistry (`in`, and `.tasks` for its message),
    from task names alone. `None` accepts every task: a producer need not hold the task file, and
    the worker still dead-letters an unknown task."""

    def __init__(self, names: Collection[str] | None) -> None:
        self.any = names is None
        self.tasks: dict[str, None] = dict.fromkeys(names or ())

    def __contains__(self, name: object) -> bool:
        return self.any or name in self.tasks


def _registry(tasks: TaskRegistry | Collection[str] | None) -> TaskRegistry:
    from streams.tasks import TaskRegistry  # lazy: the task module loads numpy and scipy (about a second)

    if isinstance(tasks, TaskRegistry):
        return tasks
    names = [tasks] if isinstance(tasks, str) else (None if tasks is None else list(tasks))
    return cast("TaskRegistry", _TaskNames(names))


def new_request(text: str, task: str, *, id: str | None = None, metadata: Mapping[str, Any] | None = None,
                **fields: Any) -> dict[str, Any]:
    """A request record (schemas/classification_request.schema.json) with a fresh uuid4 id if none is given.

    Extra `fields` are sent as they are (the schema allows them); data to get back on the result
    belongs in `metadata`, which the worker passes through untouched.
    """
    request: dict[str, Any] = {"id": id if id is not None else str(uuid.uuid4()), "task": task, "text": text}
    if metadata is not None:
        request["metadata"] = dict(metadata)
    request.update(fields)
    return request


def validate_request(request: Mapping[str, Any], *, tasks: TaskRegistry | Collection[str] | None = None,
                     max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> bytes:
    """The request as the bytes to publish, or `InvalidRequest` with the worker's own error type and message.

    The worker's parser runs on these exact bytes, so what passes here is what the worker accepts (the
    task name is checked only when `tasks` is given: a TaskRegistry or task names).
    """
    rid = request.get("id")
    rid = rid if isinstance(rid, str) else None
    try:
        raw = orjson.dumps(dict(request))
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidRequest("invalid_field", f"request cannot be encoded as JSON: {exc}", rid) from None
    from streams.classify.requests import parse_request  # lazy, as in _registry

    try:
        parse_request(raw, _registry(tasks), max_text_chars)
    except BadRequest as bad:
        raise InvalidRequest(bad.error_type, bad.message, bad.request_id) from None
    return raw


def prepare_request(request: Mapping[str, Any], *, tasks: TaskRegistry | Collection[str] | None = None,
                    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> tuple[str, bytes]:
    """(id, value bytes) for a request: a uuid4 id added when `id` is absent or None, then validated."""
    doc = dict(request)
    if doc.get("id") is None:
        doc = {**doc, "id": str(uuid.uuid4())}
    raw = validate_request(doc, tasks=tasks, max_text_chars=max_text_chars)
    return doc["id"], raw


# --------------------------------------------------------------------------- typed records


@dataclass(frozen=True, slots=True)
class Classification:
    """What the model (or a reviewer) decided about one request: the fields downstream services act on,
    and the whole record in `raw` for the rest (calibrator_version, usage, latency_ms ...)."""

    id: str
    task: str
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] = field(hash=False)
    decision: str  # "auto" or "human" (Result), "review" (ReviewItem)
    review_reason: str | None
    method: str
    model: str
    metadata: dict[str, Any] | None = field(hash=False)
    raw: dict[str, Any] = field(hash=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Result(Classification):
    """A final decision from the results topic: `decision` is "auto" (the model) or "human" (a reviewer)."""

    @property
    def final(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class ReviewItem(Classification):
    """An item waiting for a person, from the review topic; a `human` Result follows once answered.
    `audit` marks a copy of an auto-accepted item sampled for checking (its Result exists too)."""

    text: str
    audit: bool

    @property
    def final(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A request the worker refused (or a reviewer's answer it could not use: `stage` "feedback")."""

    id: str | None
    error_type: str
    message: str
    stage: str
    source: tuple[str, int, int] | None  # topic, partition, offset of the refused message
    raw: dict[str, Any] = field(hash=False, repr=False, compare=False)


Outcome = Result | ReviewItem | DeadLetter

#: Logical topic -> the record type it carries.
OUTCOME_TOPICS = ("results", "review", "deadletter")


def _str(doc: Mapping[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _opt_str(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    return value if isinstance(value, str) else None


def _classification_fields(doc: dict[str, Any]) -> dict[str, Any]:
    confidence = doc.get("confidence")
    probabilities = doc.get("probabilities") or {}
    metadata = doc.get("metadata")
    return {
        "id": _str(doc, "id"), "task": _str(doc, "task"), "label": _opt_str(doc, "label"),
        "confidence": float(confidence) if isinstance(confidence, int | float) else None,
        "probabilities": {str(k): float(v) for k, v in probabilities.items()} if isinstance(probabilities, dict)
        else {},
        "decision": _str(doc, "decision"), "review_reason": _opt_str(doc, "review_reason"),
        "method": _opt_str(doc, "method") or "", "model": _opt_str(doc, "model") or "",
        "metadata": metadata if isinstance(metadata, dict) else None, "raw": doc,
    }


def parse_outcome(topic: str, value: bytes | Mapping[str, Any]) -> Outcome:
    """A record of the results, review or deadletter topic (logical name) as its typed form.

    Raises ValueError on a record that is not one (not JSON, not an object, a field of the wrong type).
    """
    doc = dict(value) if isinstance(value, Mapping) else orjson.loads(value)
    if not isinstance(doc, dict):
        raise ValueError(f"a {topic} record must be a JSON object, got {type(doc).__name__}")
    if topic == "results":
        fields = _classification_fields(doc)
        if fields["decision"] not in ("auto", "human") or fields["label"] is None:
            raise ValueError(f"a result needs decision auto or human and a label, got {fields['decision']!r}")
        return Result(**fields)
    if topic == "review":
        fields = _classification_fields(doc)
        if fields["decision"] != "review":
            raise ValueError(f"a review item needs decision review, got {fields['decision']!r}")
        return ReviewItem(**fields, text=_opt_str(doc, "text") or "", audit=doc.get("audit") is True)
    if topic == "deadletter":
        src = doc.get("source")
        source = ((str(src.get("topic")), int(src.get("partition", -1)), int(src.get("offset", -1)))
                  if isinstance(src, dict) else None)
        return DeadLetter(id=_opt_str(doc, "id"), error_type=_str(doc, "error_type"), message=_str(doc, "message"),
                          stage=_opt_str(doc, "stage") or "", source=source, raw=doc)
    raise ValueError(f"unknown outcome topic {topic!r}; use one of {', '.join(OUTCOME_TOPICS)}")


# --------------------------------------------------------------------------- deduplication


class DedupWindow:
    """The keys seen lately, each with whether its human decision has been seen, the least recently
    seen evicted first once `size` are held. Bounded, because a consumer runs for months: a replay
    follows its original within seconds to minutes, so a window of recent ids catches it."""

    def __init__(self, size: int = DEFAULT_DEDUP_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"a dedup window holds at least 1 id, got {size}")
        self.size = size
        self._seen: OrderedDict[Hashable, bool] = OrderedDict()

    def admit(self, key: Hashable, human: bool = False) -> bool:
        """True when this is news: the first decision for `key`, or the first human one after the model's.
        A model decision after the human one, and every repeat, is not."""
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = human
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True
        self._seen.move_to_end(key)
        if human and not seen:
            self._seen[key] = True
            return True
        return False

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)


class OutcomeFilter:
    """Which outcomes a consumer is shown: each request's first decision once, and a human decision once more.

    `window` ids are remembered (0: no deduplication). Audit copies of auto-accepted items are left out
    unless `include_audit` (their Result carries the decision; when included they are deduplicated
    apart from it). Dead letters are left out unless `dead_letters`, and are deduplicated by the
    position of the message they refused, which a replay repeats, rather than by id, which a
    reviewer's refused answer shares with the request's result.
    """

    def __init__(self, window: int = DEFAULT_DEDUP_WINDOW, *, include_audit: bool = False,
                 dead_letters: bool = False) -> None:
        self.include_audit = include_audit
        self.dead_letters = dead_letters
        self._ids = DedupWindow(window) if window else None
        self._dead = DedupWindow(window) if window else None
        self.dropped = 0  # duplicates and superseded model decisions

    def admit(self, outcome: Outcome) -> bool:
        if isinstance(outcome, DeadLetter):
            if not self.dead_letters:
                return False
            key: Hashable = (outcome.id, outcome.error_type, outcome.source)
            window = self._dead
            human = False
        else:
            if isinstance(outcome, ReviewItem) and outcome.audit:
                if not self.include_audit:
                    return False
                key = ("audit", outcome.id)
            else:
                key = outcome.id
            window = self._ids
            human = outcome.decision == "human"
        if window is None or window.admit(key, human):
            return True
        self.dropped += 1
        return False


# --------------------------------------------------------------------------- consuming


async def _partitions(consumer: AIOKafkaConsumer, topics: list[str], timeout_s: float) -> list[TopicPartition]:
    """Every partition of `topics`, waiting for topics the worker has not created yet. Metadata is asked
    for all topics, never by name, so a client never auto-creates one with the broker's default count."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        missing = [t for t in topics if not consumer.partitions_for_topic(t)]
        if not missing:
            return [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))]
        if loop.time() > deadline:
            raise TimeoutError(f"topics {missing} have no partitions after {timeout_s:.0f}s: is the prefix right, "
                               "and has a worker (which creates the topics) started?")
        await consumer._client.force_metadata_update()  # private: aiokafka has no public call for this
        await asyncio.sleep(0.2)


class OutcomeStream:
    """Typed outcomes from the results and review topics (and dead letters, if asked), filtered by an
    `OutcomeFilter`. An async iterator and an async context manager; build it with `client.outcomes()`.

    Without a group it reads every partition itself and `start()` (or entering it) fixes the start
    positions, so whatever is published afterwards is seen. With `group_id` it shares partitions with
    the group's other members and commits, every `commit_interval_s` and on a clean close, only the
    records the caller has finished with: those before the one it asks for next.
    """

    def __init__(self, client: StreamsClient, *, start: Start = "earliest", group_id: str | None = None,
                 dead_letters: bool = False, include_audit: bool = False, window: int | None = None,
                 idle_timeout: float | None = None, commit_interval_s: float = 1.0,
                 consumer_options: Mapping[str, Any] | None = None) -> None:
        if start not in ("earliest", "latest"):
            raise ValueError(f"start must be 'earliest' or 'latest', got {start!r}")
        self.client = client
        self.offset_reset: Start = start
        self.group_id = group_id
        self.idle_timeout = idle_timeout
        self.commit_interval_s = commit_interval_s
        self.filter = OutcomeFilter(client.dedup_window if window is None else window,
                                    include_audit=include_audit, dead_letters=dead_letters)
        logical = list(OUTCOME_TOPICS if dead_letters else OUTCOME_TOPICS[:2])
        self.kinds = {client.topic(name): name for name in logical}
        self.consumer_options = dict(consumer_options or {})
        self.consumer: AIOKafkaConsumer | None = None
        self.skipped = 0  # records that were not readable outcomes
        self._buffer: deque[ConsumerRecord] = deque()
        self._current: ConsumerRecord | None = None
        self._done: dict[TopicPartition, int] = {}  # group: next offset to commit, per partition
        self._last_commit = 0.0
        self._started = asyncio.Lock()
        self._closed = False

    async def start(self) -> OutcomeStream:
        """Connect and fix where reading starts (no group) or join the group; idempotent."""
        async with self._started:
            if self.consumer is not None:
                return self
            if self._closed:
                raise RuntimeError("this outcome stream is closed")
            consumer = AIOKafkaConsumer(bootstrap_servers=self.client.bootstrap_servers, group_id=self.group_id,
                                        enable_auto_commit=False, auto_offset_reset=self.offset_reset,
                                        **(self.client.client_options | self.consumer_options))
            try:
                await consumer.start()
                topics = list(self.kinds)
                if self.group_id is None:
                    tps = await _partitions(consumer, topics, self.client.topic_timeout_s)
                    consumer.assign(tps)
                    if self.offset_reset == "latest":
                        await consumer.seek_to_end(*tps)
                    else:
                        await consumer.seek_to_beginning(*tps)
                    for tp in tps:  # resolve now: a position left to the first fetch could skip early replies
                        await consumer.position(tp)
                else:
                    consumer.subscribe(topics)
            except BaseException:
                await consumer.stop()
                raise
            self.consumer = consumer
            self._last_commit = time.monotonic()
            self.client._streams.add(self)
        return self

    def __aiter__(self) -> OutcomeStream:
        return self

    async def __anext__(self) -> Outcome:
        consumer = self.consumer or (await self.start()).consumer
        assert consumer is not None
        self._finish_current()
        idle_since = time.monotonic()
        while True:
            while self._buffer:
                record = self._buffer.popleft()
                outcome = self._outcome(record)
                if outcome is not None and self.filter.admit(outcome):
                    self._current = record
                    return outcome
                self._finished(record)
            await self._maybe_commit()
            wait_ms = 500 if self.idle_timeout is None else max(1, min(500, int(self.idle_timeout * 1000)))
            batch = await consumer.getmany(timeout_ms=wait_ms)
            for records in batch.values():
                self._buffer.extend(records)
            if self._buffer:
                idle_since = time.monotonic()
            elif self.idle_timeout is not None and time.monotonic() - idle_since >= self.idle_timeout:
                raise StopAsyncIteration

    def _outcome(self, record: ConsumerRecord) -> Outcome | None:
        kind = self.kinds.get(record.topic)
        if kind is None or not record.value:
            return None
        try:
            return parse_outcome(kind, record.value)
        except (ValueError, TypeError) as exc:  # one bad record must not stop a consumer
            self.skipped += 1
            log.warning("skipping an unreadable record on %s[%s]@%s: %s", record.topic, record.partition,
                        record.offset, exc)
            return None

    def _finished(self, record: ConsumerRecord) -> None:
        if self.group_id is not None:
            self._done[TopicPartition(record.topic, record.partition)] = record.offset + 1

    def _finish_current(self) -> None:
        if self._current is not None:
            self._finished(self._current)
            self._current = None

    async def _maybe_commit(self, force: bool = False) -> None:
        if self.group_id is None or not self._done or self.consumer is None:
            return
        if not force and time.monotonic() - self._last_commit < self.commit_interval_s:
            return
        owned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in self._done.items() if tp in owned}
        self._done.clear()
        self._last_commit = time.monotonic()
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # e.g. a rebalance took the partitions: their records come again elsewhere
            log.warning("could not commit %d partition(s) of group %s: %r", len(offsets), self.group_id, exc)

    async def commit(self) -> None:
        """Commit now what the caller has finished with (group streams; a no-op otherwise)."""
        await self._maybe_commit(force=True)

    async def close(self, finished: bool = True) -> None:
        """Stop reading. `finished`: the record last yielded was handled, so a group may commit it."""
        if self._closed:
            return
        self._closed = True
        self.client._streams.discard(self)
        if self.consumer is None:
            return
        if finished:
            self._finish_current()
        try:
            await self._maybe_commit(force=True)
        finally:
            await self.consumer.stop()

    async def __aenter__(self) -> OutcomeStream:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close(finished=exc_type is None)


# --------------------------------------------------------------------------- the client


@dataclass
class _Waiter:
    future: asyncio.Future[Result | ReviewItem]
    wait_for_human: bool


def _bootstrap(servers: str) -> str:
    """aiokafka's host:port[,host:port] from that or from STREAMS_BROKER's kafka://host:port[;...]."""
    parts = [p.strip() for p in servers.replace(";", ",").split(",") if p.strip()]
    return ",".join(p.split("://", 1)[-1] for p in parts)


class StreamsClient:
    """Publish requests, read outcomes, or classify one text and wait: the Kafka side of the service for
    other Python services. Use it as an async context manager; it opens connections on first use.

    `tasks` (a TaskRegistry or task names) lets `publish` refuse an unknown task too; without it the
    worker does. `max_text_chars` should match the worker's STREAMS_MAX_TEXT_CHARS (`from_settings`
    takes it from the same environment).
    """

    def __init__(self, bootstrap_servers: str, *, topic_prefix: str = "",
                 client_options: Mapping[str, Any] | None = None,
                 tasks: TaskRegistry | Collection[str] | None = None,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, dedup_window: int = DEFAULT_DEDUP_WINDOW,
                 topic_timeout_s: float = 30.0, producer_options: Mapping[str, Any] | None = None) -> None:
        self.bootstrap_servers = _bootstrap(bootstrap_servers)
        self.topic_prefix = topic_prefix
        #: Security and other arguments for every aiokafka client (see streams.kafka_security).
        self.client_options = dict(client_options or {})
        self.tasks = tasks
        self.max_text_chars = max_text_chars
        if dedup_window < 0:
            raise ValueError(f"dedup_window must be >= 0 (0: off), got {dedup_window}")
        self.dedup_window = dedup_window
        self.topic_timeout_s = topic_timeout_s
        self.producer_options = {"acks": "all", "linger_ms": 5} | dict(producer_options or {})
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._streams: set[OutcomeStream] = set()
        self._waiters: dict[str, _Waiter] = {}
        self._follower_ready: asyncio.Future[None] | None = None
        self._follower: OutcomeStream | None = None
        self._dispatch: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, tasks: TaskRegistry | Collection[str] | None = None,
                      **options: Any) -> StreamsClient:
        """A client on the worker's own configuration: brokers, topic prefix, TLS/SASL, text limit."""
        return cls(settings.bootstrap_servers, topic_prefix=settings.topic_prefix,
                   client_options=kafka_client_options(settings), tasks=tasks,
                   max_text_chars=settings.max_text_chars, **options)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, tasks: TaskRegistry | Collection[str] | None = None,
                 **options: Any) -> StreamsClient:
        """`from_settings(Settings.from_env(env))`: the STREAMS_* variables the worker reads."""
        return cls.from_settings(Settings.from_env(env), tasks=tasks, **options)

    def topic(self, logical: str) -> str:
        """The topic name of a logical one ("requests", "results" ...), with the prefix."""
        return f"{self.topic_prefix}{TOPIC_NAMES[logical]}"

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> StreamsClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Flush what was published, stop the reply follower and every open outcome stream."""
        self._closed = True
        if self._dispatch is not None:
            self._dispatch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatch
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(RuntimeError("the client was closed"))
        for stream in list(self._streams):
            await stream.close(finished=False)
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def _producer_started(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            if self._producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers,
                                            **(self.client_options | self.producer_options))
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    # ---------------------------------------------------------------- publishing

    def prepare(self, request: Mapping[str, Any]) -> tuple[str, bytes]:
        """(id, bytes) of a request as `publish_request` would send it; raises InvalidRequest."""
        return prepare_request(request, tasks=self.tasks, max_text_chars=self.max_text_chars)

    async def publish(self, text: str, task: str, *, id: str | None = None,
                      metadata: Mapping[str, Any] | None = None, **fields: Any) -> str:
        """Publish one request (keyed by its id; a uuid4 if none is given) and return the id once the
        broker has acknowledged it. Raises InvalidRequest, sending nothing, if the worker would refuse it."""
        return await self.publish_request(new_request(text, task, id=id, metadata=metadata, **fields))

    async def publish_request(self, request: Mapping[str, Any]) -> str:
        """Publish a request record as given (an id added if absent); returns its id once acknowledged."""
        return (await self.publish_many([request]))[0]

    async def publish_many(self, requests: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publish requests and wait for every acknowledgement; returns their ids in order.

        All are validated first, so one bad request raises InvalidRequest before any is sent.
        """
        prepared = [self.prepare(r) for r in requests]
        producer = await self._producer_started()
        topic = self.topic("requests")
        headers = current_headers() or None  # the caller's trace context, when it has a span open
        sent = [await producer.send(topic, raw, key=rid.encode(), headers=headers) for rid, raw in prepared]
        await asyncio.gather(*sent)
        return [rid for rid, _ in prepared]

    # ---------------------------------------------------------------- consuming

    def outcomes(self, *, start: Start = "earliest", group_id: str | None = None, dead_letters: bool = False,
                 include_audit: bool = False, window: int | None = None, idle_timeout: float | None = None,
                 commit_interval_s: float = 1.0) -> OutcomeStream:
        """Results and review items (dead letters too if asked) as typed records, each id once.

        `start`: from the beginning of the topics or from their end (with no group, the end as of
        `start()`/entering, so enter it before publishing what it should see). `group_id`: share the
        partitions with other members and resume from committed offsets; `start` then applies only
        when the group has none. `window`: ids remembered for deduplication (default: the client's;
        0: off). `idle_timeout`: stop iterating after that many seconds without a record.

        On Tansu, whose "latest" offset can stop short of the end (README, Notes on the local stack), a
        "latest" stream may also yield a few records from just before it started.
        """
        return OutcomeStream(self, start=start, group_id=group_id, dead_letters=dead_letters,
                             include_audit=include_audit, window=window, idle_timeout=idle_timeout,
                             commit_interval_s=commit_interval_s)

    # ---------------------------------------------------------------- request/reply

    async def classify(self, text: str, task: str, *,
                       timeout: float | None = 60.0,  # noqa: ASYNC109 (a deadline covering the publish too)
                       id: str | None = None, metadata: Mapping[str, Any] | None = None,
                       wait_for_human: bool = False) -> Result | ReviewItem:
        """Publish one request and return its outcome: a Result (decided), or a ReviewItem when it went
        to review (with `wait_for_human`, the reviewer's Result instead).

        Raises InvalidRequest before publishing, DeadLettered if the worker refused it, and
        ClassifyTimeout when `timeout` seconds (publishing included) pass first.
        """
        rid, raw = self.prepare(new_request(text, task, id=id, metadata=metadata))
        if rid in self._waiters:
            raise ValueError(f"request {rid!r} is already waiting for its outcome in this client")
        future: asyncio.Future[Result | ReviewItem] = asyncio.get_running_loop().create_future()
        published = False
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await self._follow()  # the reply topics are read from before the request leaves
                self._waiters[rid] = _Waiter(future, wait_for_human)
                producer = await self._producer_started()
                ack = await producer.send(self.topic("requests"), raw, key=rid.encode(),
                                          headers=current_headers() or None)
                await asyncio.shield(ack)  # a timeout must not cancel the producer's own future
                published = True
                return await future
        except TimeoutError:
            if deadline.expired():
                raise ClassifyTimeout(rid, timeout, published) from None
            raise
        finally:
            if self._waiters.get(rid) is not None and self._waiters[rid].future is future:
                del self._waiters[rid]
            if future.done() and not future.cancelled():
                future.exception()  # retrieved, so a late dead letter is not reported as unhandled

    async def _follow(self) -> None:
        """Start (once, shared by every call) the follower of the output topics from their end."""
        if self._closed:
            raise RuntimeError("the client is closed")
        ready = self._follower_ready
        broken = ready is not None and ready.done() and (
            ready.cancelled() or ready.exception() is not None or self._dispatch is None or self._dispatch.done())
        if ready is None or broken:
            ready = self._follower_ready = asyncio.ensure_future(self._start_follower())
        await asyncio.shield(ready)

    async def _start_follower(self) -> None:
        if self._follower is not None:
            await self._follower.close(finished=False)
        # No deduplication: a waiter takes the first answer for its id, and a retried id must get its own.
        stream = OutcomeStream(self, start="latest", dead_letters=True, window=0,
                               consumer_options={"fetch_max_wait_ms": 100})
        await stream.start()
        self._follower = stream
        self._dispatch = asyncio.create_task(self._route(stream), name="streams-client-replies")

    async def _route(self, stream: OutcomeStream) -> None:
        """Hand each outcome to the call waiting for its id."""
        try:
            async for outcome in stream:
                waiter = self._waiters.get(outcome.id) if outcome.id is not None else None
                if waiter is None or waiter.future.done():
                    continue
                if isinstance(outcome, DeadLetter):
                    if outcome.stage != "feedback":  # a refused answer from a reviewer is not about the request
                        waiter.future.set_exception(DeadLettered(outcome))
                elif isinstance(outcome, Result) or not waiter.wait_for_human:
                    waiter.future.set_result(outcome)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dead follower must fail its waiters now, not at their timeouts
            log.exception("the reply follower stopped; waiting calls fail, the next call starts a new one")
            for waiter in self._waiters.values():
                if not waiter.future.done():
                    waiter.future.set_exception(ConnectionError(f"the reply follower stopped: {exc!r}"))
