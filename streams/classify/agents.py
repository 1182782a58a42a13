"""The classify agent: requests in, one result / review item / dead letter out per request.

Thin wiring around `Classifier` (what to emit) and `InOrderRelease` (when an offset is safe to commit).
Up to STREAMS_MAX_IN_FLIGHT requests are processed at once; an event is acked, and so becomes
committable, only after its output and the outputs of every earlier event on its partition have been
acknowledged by the broker. A crash before that replays the message: at-least-once, idempotent by id.
The worker loads every task's newest calibrators before it classifies (`ClassifyApp.preload`) and
follows the calibrators topic, so new versions apply without restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import faust
from aiokafka.errors import ConsumerStoppedError
from faust.types import TP, EventT, StreamT

from streams.calibration.store import calibrator_feed
from streams.classify.inflight import InOrderRelease, Ticket
from streams.classify.records import Source
from streams.classify.service import Classifier
from streams.ops.metrics import ServiceMetrics
from streams.publishing import Publish

if TYPE_CHECKING:
    from streams.worker import Services

log = logging.getLogger(__name__)


class InFlight:
    """Bounded concurrency with in-order acks, for one agent instance."""

    def __init__(self, limit: int, classifier: Classifier, publish: Publish, metrics: ServiceMetrics,
                 counts: Counter[str], delivered: Counter[tuple[str, int]]) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.release: InOrderRelease[EventT] = InOrderRelease()
        self.running: set[asyncio.Task[None]] = set()
        self.classifier, self.publish, self.metrics = classifier, publish, metrics
        self.counts, self.delivered = counts, delivered

    async def submit(self, event: EventT) -> None:
        await self.slots.acquire()  # back-pressure: stop reading when the window is full
        tp = event.message.tp
        self.delivered[tp] += 1
        ticket = self.release.add(tp, event)
        task = asyncio.create_task(self._handle(event, ticket))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

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
    app.preload.append(("calibrator", feed))

    @app.on_partitions_revoked.connect
    async def on_partitions_revoked(sender: faust.App, /, *args: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0]  # Faust sends the revoked set positionally
        for inflight in instances:
            inflight.revoke(revoked)

    @app.agent(s.topics["requests"], name="classify")
    async def classify(stream: StreamT) -> None:
        inflight = InFlight(settings.max_in_flight, s.classifier, s.publish, s.metrics, counts, s.delivered)
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

    @app.timer(interval=10.0)
    async def progress() -> None:
        try:  # an exception inside a Faust timer stops the worker
            if counts:
                log.info("classified so far: %s; awaiting in-order ack: %d", dict(counts),
                         sum(i.release.pending() for i in instances))
        except Exception:
            log.exception("progress timer failed")
