"""The classify agent: requests in, one result / review item / dead letter out per request.

Thin wiring around `Classifier` (what to emit) and `InOrderRelease` (when an offset is safe to commit).
Up to STREAMS_MAX_IN_FLIGHT requests are processed at once; an event is acked, and so becomes
committable, only after its output and the outputs of every earlier event on its partition have been
acknowledged by the broker. A crash before that replays the message: at-least-once, idempotent by id.
The worker loads every task's newest calibrators before it classifies (`ClassifyApp.preload`) and
follows the calibrators topic, so new versions apply without restart.

On SIGTERM (`ClassifyApp.stopping`) the agent starts no new call, finishes the calls in flight within
STREAMS_STOP_GRACE_S and hands the rest back unacked; Faust then commits what was acked and leaves the
group, so a rolling restart repeats no work that was finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import faust
from aiokafka.errors import ConsumerStoppedError
from faust.types import TP, EventT, StreamT

from streams.calibration.store import calibrator_feed
from streams.classify.answer_cache import AnswerCache, entry_bytes
from streams.classify.inflight import InOrderRelease, Ticket
from streams.classify.pacing import budget_share
from streams.classify.records import Source
from streams.classify.service import Classifier
from streams.classify.stall import AgentProgress
from streams.confidence.methods import MethodResult
from streams.faust_stop import forget_unacked, stop_fetching
from streams.kafka_io import TopicFeed
from streams.kafka_security import kafka_client_options
from streams.ops.metrics import ServiceMetrics
from streams.publishing import Publish

if TYPE_CHECKING:
    from streams.worker import Services

log = logging.getLogger(__name__)

#: New answer-cache entries waiting to be published; beyond this many they are dropped (each costs one call later).
SHARE_QUEUE = 10_000
#: How long a worker may take to read the answer-cache topic at start before it just follows it.
ANSWER_LOAD_S = 600.0


class InFlight:
    """Bounded concurrency with in-order acks, for one agent instance."""

    def __init__(self, limit: int, classifier: Classifier, publish: Publish, metrics: ServiceMetrics,
                 counts: Counter[str], progress: AgentProgress) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.release: InOrderRelease[EventT] = InOrderRelease()
        self.running: set[asyncio.Task[None]] = set()
        self.classifier, self.publish, self.metrics = classifier, publish, metrics
        self.counts, self.progress = counts, progress
        #: Set when the worker stops: no new call starts; an event not started stays unacked (replayed).
        self.stopping = False

    async def submit(self, event: EventT) -> None:
        self.progress.got_event()
        await self.slots.acquire()  # back-pressure: stop reading when the window is full
        if self.stopping:
            self.slots.release()
            return
        ticket = self.release.add(event.message.tp, event)
        task = asyncio.create_task(self._handle(event, ticket))
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        self.progress.waiting()  # for the next event: idle time, unless the stream has one ready

    async def _handle(self, event: EventT, ticket: Ticket) -> None:
        msg = event.message
        try:
            outputs = await self.classifier.process(msg.value, msg.key, Source(msg.topic, msg.partition, msg.offset),
                                                    msg.headers)
            if len(outputs) == 1:  # the usual case: no gather, no extra task
                await self.publish(outputs[0])
            else:
                await asyncio.gather(*(self.publish(o) for o in outputs))
            for o in outputs:
                self.counts[o.topic] += 1
            self.metrics.observe_outputs(outputs)  # /metrics and the dashboard (streams/ops)
        finally:
            self.slots.release()
        for done in self.release.done(ticket):
            done.ack()
            self.progress.acked[done.message.tp] += 1

    async def drain(self, grace_s: float) -> tuple[int, int]:
        """Stop starting calls; wait up to `grace_s` for those in flight; cancel the rest.

        Returns (finished, handed back). What is cancelled, and every event waiting behind it for an
        in-order ack, is never acked: its offset is not committed and the partition's next owner
        replays it (at-least-once). The events are dropped here too, so Faust's wait for unacked
        messages at stop (it holds them weakly) ends instead of waiting for them forever.
        """
        self.stopping = True
        running = set(self.running)
        if not running:
            return 0, 0
        done, late = await asyncio.wait(running, timeout=grace_s) if grace_s > 0 else (set(), running)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
            self.release.discard(self.release.partitions())
        return len(done), len(late)

    def revoke(self, partitions: Iterable[TP]) -> None:
        """Partitions taken away: their pending events must never be acked by this worker now."""
        dropped = self.release.discard(set(partitions))
        if dropped:  # Faust waits for every event to be acked before it revokes, so this is rare
            log.warning("rebalance took %d partition(s) with %d unacked event(s); they will be replayed",
                        len({e.message.tp for e in dropped}), len(dropped))


def register(s: Services) -> None:
    app, settings = s.app, s.settings
    #: Outputs by destination, for the periodic progress log.
    counts: Counter[str] = Counter()
    #: Live agent instances, so the rebalance handler reaches their release queues.
    instances: set[InFlight] = set()
    feed = calibrator_feed(settings, s.calibrators.apply)
    requests_topic = settings.topic("requests")
    app.preload.append(("calibrator", feed))

    async def drain() -> None:
        """SIGTERM: finish (or hand back) the calls in flight before Faust commits and leaves the group."""
        started = time.monotonic()
        stop_fetching(app)
        finished = handed_back = 0
        for inflight in list(instances):
            f, h = await inflight.drain(settings.stop_grace_s)
            finished, handed_back = finished + f, handed_back + h
        unacked = forget_unacked(app, requests_topic)
        log.info("stopping: finished %d model call(s) in flight, handed back %d unfinished after %.1f s "
                 "(STREAMS_STOP_GRACE_S=%g); %d request(s) left uncommitted for the partitions' next owner",
                 finished, handed_back, time.monotonic() - started, settings.stop_grace_s, unacked)

    app.stopping.append(drain)

    @app.on_partitions_revoked.connect
    async def on_partitions_revoked(sender: faust.App, /, *args: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0]  # Faust sends the revoked set positionally
        for inflight in instances:
            inflight.revoke(revoked)

    @app.on_partitions_assigned.connect
    async def on_partitions_assigned(sender: faust.App, /, *args: Any, **kwargs: Any) -> None:
        """Each worker paces its model calls under its share of every endpoint's budget: its share of the
        requests topic's partitions (docs/ARCHITECTURE.md, *Rate-limit budgets*)."""
        assigned: set[TP] = args[0]  # the whole new assignment, every topic's
        mine = sum(1 for tp in assigned if tp.topic == requests_topic)
        try:  # the count the broker reports; the one the worker creates topics with if it has none yet
            total = sender.consumer.topic_partitions(requests_topic) or settings.partitions
        except Exception:  # noqa: BLE001 - an exception here would crash the rebalance: fall back
            total = settings.partitions
        share = budget_share(mine, total)
        s.model.set_share(share)
        log.info("model budget share %.3f: %d of the %d partitions of %s", share, mine, total, requests_topic)

    @app.agent(s.topics["requests"], name="classify")
    async def classify(stream: StreamT) -> None:
        inflight = InFlight(settings.max_in_flight, s.classifier, s.publish, s.metrics, counts, s.progress)
        s.progress.waiting()
        instances.add(inflight)
        try:
            # faust's StreamT leaves noack() out; an agent is always given a faust.Stream, which has it
            async for event in stream.noack().events():  # type: ignore[attr-defined]
                await inflight.submit(event)
        finally:
            instances.discard(inflight)
            for task in inflight.running:
                task.cancel()  # unacked work is replayed after restart

    @app.task
    async def follow_calibrators() -> None:
        """Hot reload: new calibrator versions apply to the next request, without restart."""
        with contextlib.suppress(ConsumerStoppedError):  # the worker is shutting down
            await feed.follow()

    if s.answers is not None:
        share_answers(s, s.answers)

    @app.timer(interval=10.0)
    async def progress() -> None:
        try:  # an exception inside a Faust timer stops the worker
            if counts:
                log.info("classified so far: %s; awaiting in-order ack: %d", dict(counts),
                         sum(i.release.pending() for i in instances))
        except Exception:
            log.exception("progress timer failed")


def share_answers(s: Services, answers: AnswerCache) -> None:
    """Every worker's answers in every worker's answer cache, through the answer-cache topic.

    A cache topic that every worker reads whole (no group), rather than a Faust global table: the table's
    recovery stops at `end_offsets()`, which Tansu reports short (as for the calibrators), and the topic is an
    ordinary compacted one on Kafka. New entries are published off the request's path: queued (bounded; the
    cache is an optimisation, so a full queue drops) and sent without waiting for each acknowledgement. The
    topic is read in the background, not before the first request: until it is, a repeat is merely called
    again. Expired entries are skipped on reading (`AnswerCache.apply`), so a restart serves none.
    """
    app, settings = s.app, s.settings
    topic = settings.topic("answer_cache")
    pending: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(maxsize=SHARE_QUEUE)

    def on_store(key: str, task: str, stored_at: float, result: MethodResult) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            pending.put_nowait(entry_bytes(key, task, stored_at, result))

    def sent(fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("an answer-cache entry was not published (%r); that text will be called again elsewhere",
                        fut.exception())

    answers.on_store = on_store
    feed = TopicFeed(settings.bootstrap_servers, topic, answers.apply, kafka_client_options(settings))
    app.stopping.append(feed.stop)

    @app.task
    async def publish_answers() -> None:
        producer = await app.maybe_start_producer()
        while True:
            key, value = await pending.get()
            try:
                asyncio.ensure_future(await producer.send(topic, key, value, None, None, None)).add_done_callback(sent)
            except Exception as exc:  # noqa: BLE001 - the entry is lost, not the request
                log.warning("an answer-cache entry was not published (%r)", exc)

    @app.task
    async def follow_answers() -> None:
        on = sorted(name for name, t in s.tasks.tasks.items() if t.caches_answers)
        log.info("answer cache on for %s (%d entries, TTL %g s), off for %s", on, answers.max_entries,
                 answers.ttl_s, sorted(set(s.tasks.tasks) - set(on)) or "none")
        with contextlib.suppress(ConsumerStoppedError):  # the worker is shutting down
            try:
                log.info("answer cache: %d entries loaded from %s", await feed.load(ANSWER_LOAD_S), topic)
            except TimeoutError as exc:
                log.warning("answer cache: %s; following the topic from where the read got to", exc)
            except (asyncio.CancelledError, ConsumerStoppedError):
                raise
            except Exception:  # the cache is an optimisation: the worker goes on with its own answers
                log.exception("answer cache: reading %s failed; this worker keeps its own answers only", topic)
                return
            await feed.follow()
