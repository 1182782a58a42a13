"""The classify agent: requests in, one result / review item / dead letter out per request.

The worker loads every task's newest calibrator before it classifies (see `streams.app`), and
follows the calibrators topic so new versions apply without restart.

Thin wiring around `Classifier` (what to emit) and `InOrderRelease` (when an offset is safe to commit).
Up to STREAMS_MAX_IN_FLIGHT requests are processed at once; an event is acked, and so becomes
committable, only after its output and the outputs of every earlier event on its partition have been
acknowledged by the broker. A crash before that replays the message: at-least-once, idempotent by id.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from aiokafka.errors import ConsumerStoppedError
import faust
from faust.types import TP, EventT, StreamT

from streams.app import app, settings, tasks, topics
from streams.calibration.store import calibrator_feed as make_calibrator_feed
from streams.classify.inflight import InOrderRelease, Ticket
from streams.classify.model_client import ModelClient
from streams.classify.records import Source
from streams.classify.service import Classifier, Output
from streams.ops.metrics import METRICS

log = logging.getLogger(__name__)

classifier = Classifier(
    tasks,
    ModelClient(settings.model_timeout_s, settings.model_max_retries),
    settings.max_text_chars,
    settings.deadletter_excerpt_bytes,
)
#: Outputs by destination, for the periodic progress log (and later the metrics endpoint).
counts: Counter[str] = Counter()
#: Requests delivered per partition (a TP equals its (topic, partition) tuple), for the stall watch.
delivered: Counter[TP] = Counter()


#: Topic names by logical name, for sending straight to the producer.
topic_names: dict[str, str] = {logical: topic.get_topic_name() for logical, topic in topics.items()}


async def publish(output: Output) -> None:
    """Send and wait for the broker's acknowledgement; retry forever rather than lose a record.

    Straight to the worker's producer (Faust's own aiokafka producer: acks=all, linger and batch size
    from `streams.app`) rather than through `Topic.send`, whose channel, future-message and sensor
    layers cost more per record than the send itself (bench/README.md, Throughput).
    """
    delay = 0.1
    while True:
        try:
            producer = await app.maybe_start_producer()
            fut = await producer.send(topic_names[output.topic], output.key, output.value, None, None, None)
            await fut
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("publishing to %s failed (%r); retrying in %.1fs", output.topic, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class InFlight:
    """Bounded concurrency with in-order acks, for one agent instance."""

    def __init__(self, limit: int) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.release: InOrderRelease[EventT] = InOrderRelease()
        self.running: set[asyncio.Task[None]] = set()

    async def submit(self, event: EventT) -> None:
        await self.slots.acquire()  # back-pressure: stop reading when the window is full
        tp = event.message.tp
        delivered[tp] += 1
        ticket = self.release.add(tp, event)
        task = asyncio.create_task(self._handle(event, ticket))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _handle(self, event: EventT, ticket: Ticket) -> None:
        msg = event.message
        try:
            outputs = await classifier.process(msg.value, msg.key, Source(msg.topic, msg.partition, msg.offset))
            if len(outputs) == 1:  # the usual case: no gather, no extra task
                await publish(outputs[0])
            else:
                await asyncio.gather(*(publish(o) for o in outputs))
            for o in outputs:
                counts[o.topic] += 1
            METRICS.observe_outputs(outputs)  # /metrics and the dashboard (streams/ops)
        finally:
            self.slots.release()
        for done in self.release.done(ticket):
            done.ack()

    def revoke(self, partitions: set[TP]) -> None:
        """Partitions taken away: their pending events must never be acked by this worker now."""
        dropped = self.release.discard(partitions)
        if dropped:  # Faust waits for every event to be acked before it revokes, so this is rare
            log.warning("rebalance took %d partition(s) with %d unacked event(s); they will be replayed",
                        len({e.message.tp for e in dropped}), len(dropped))


#: Live agent instances, so the rebalance handler reaches their release queues.
instances: set[InFlight] = set()


@app.on_partitions_revoked.connect
async def on_partitions_revoked(app: faust.App, revoked: set[TP], **kwargs: object) -> None:
    for inflight in instances:
        inflight.revoke(revoked)


@app.agent(topics["requests"], name="classify")
async def classify(stream: StreamT) -> None:
    inflight = InFlight(settings.max_in_flight)
    instances.add(inflight)
    try:
        async for event in stream.noack().events():
            await inflight.submit(event)
    finally:
        instances.discard(inflight)
        for task in inflight.running:
            task.cancel()  # unacked work is replayed after restart


calibrator_feed = make_calibrator_feed(settings, classifier.apply_calibrator)


@app.task
async def follow_calibrators() -> None:
    """Hot reload: new calibrator versions apply to the next request, without restart."""
    try:
        await calibrator_feed.follow()
    except ConsumerStoppedError:
        pass  # the worker is shutting down


@app.timer(interval=10.0)
async def progress() -> None:
    try:  # an exception inside a Faust timer stops the worker
        if counts:
            log.info("classified so far: %s; awaiting in-order ack: %d", dict(counts),
                     sum(i.release.pending() for i in instances))
    except Exception:
        log.exception("progress timer failed")
