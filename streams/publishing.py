"""Records to publish, and the worker's publisher: straight to Faust's own aiokafka producer.

Every agent emits `Output`s (logical topic, key, value) and hands them to a `Publish` callable; the
worker's is `KafkaPublisher`, tests pass a list's append. No Faust import here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.trace import SpanKind

from streams.ops.tracing import Tracing

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Output:
    """A record to publish: logical topic name (results/review/deadletter/...), key and value bytes."""

    topic: str
    key: bytes | None
    value: bytes
    #: Kafka headers: the request's W3C trace context (streams/ops/tracing.py), carried to every output.
    headers: list[tuple[str, bytes]] | None = None


#: Sends one output and returns once the broker has acknowledged it.
Publish = Callable[[Output], Awaitable[None]]


class _Producer(Protocol):
    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: Any) -> Awaitable[Any]: ...


class KafkaPublisher:
    """Send and wait for the broker's acknowledgement; retry forever rather than lose a record.

    Straight to the worker's producer (Faust's own aiokafka producer: acks=all, linger and batch size
    from `streams.faust_tuning`) rather than through `Topic.send`, whose channel, future-message and
    sensor layers cost more per record than the send itself (bench/README.md, Throughput).
    """

    def __init__(self, producer: Callable[[], Awaitable[_Producer]], topic_names: Mapping[str, str],
                 tracing: Tracing | None = None) -> None:
        self._producer = producer
        self.topic_names = dict(topic_names)
        self.tracing = tracing if tracing is not None else Tracing()

    async def __call__(self, output: Output) -> None:
        if self.tracing.enabled:
            with self.tracing.span(f"publish {output.topic}", output.headers, SpanKind.PRODUCER):
                await self._send(output)
        else:
            await self._send(output)

    async def _send(self, output: Output) -> None:
        delay = 0.1
        while True:
            try:
                producer = await self._producer()
                fut = await producer.send(self.topic_names[output.topic], output.key, output.value, None, None,
                                          output.headers or None)
                await fut
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any send failure: retry forever rather than lose the record
                log.warning("publishing to %s failed (%r); retrying in %.1fs", output.topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
