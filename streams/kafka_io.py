"""Reading a whole topic exactly, for state that must not come back stale (calibrators, examples).

`end_offsets()` is not trusted: Tansu answers ListOffsets(latest) with the last batch's base
offset + 1, so it can stop short of the real end (tests/integration/test_tansu_quirks.py). The
fetch high watermark is exact, so a topic is "read" once every partition's position has reached the
high watermark reported by a fetch response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import ConsumerStoppedError

log = logging.getLogger(__name__)


async def assign_all(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 30.0) -> list[TopicPartition]:
    """Assign every partition of `topic` (no consumer group: every reader sees everything)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            return tps
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topic {topic} has no partitions after {timeout_s:.0f}s; is it created?")
        await consumer._client.force_metadata_update()  # private: aiokafka has no public call for this
        await asyncio.sleep(0.2)


def caught_up(consumer: AIOKafkaConsumer, tps: list[TopicPartition], positions: dict[TopicPartition, int]) -> bool:
    for tp in tps:
        hw = consumer.highwater(tp)
        if hw is None or positions.get(tp, 0) < hw:
            return False
    return True


async def read_to_high_watermark(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                                 timeout_s: float = 30.0) -> AsyncIterator[ConsumerRecord]:
    """Yield every record currently in the assigned partitions, up to the exact fetch high watermark."""
    positions = {tp: await consumer.position(tp) for tp in tps}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not caught_up(consumer, tps, positions):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"could not read {sorted({tp.topic for tp in tps})} to its end within {timeout_s:.0f}s")
        batch = await consumer.getmany(*tps, timeout_ms=200)
        for tp, records in batch.items():
            for record in records:
                positions[tp] = record.offset + 1
                yield record
        for tp in tps:  # empty partitions: the position is what the fetcher reached
            positions[tp] = max(positions[tp], await consumer.position(tp))


class TopicFeed:
    """Applies every JSON record of a topic in order: all existing ones first (read to the exact high
    watermark), then new ones as they arrive. No consumer group: every process sees every record,
    which is what state that each worker must hold in full (calibrators, baselines) needs."""

    def __init__(self, bootstrap: str, topic: str, apply: Callable[[dict[str, Any]], bool],
                 client_options: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        #: Extra AIOKafkaConsumer arguments (security: streams.kafka_security.kafka_client_options).
        self.client_options = dict(client_options or {})
        self.topic = topic
        self.apply = apply
        self.consumer: AIOKafkaConsumer | None = None
        self.tps: list[TopicPartition] = []
        self.applied = 0

    def _offer(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            if self.apply(orjson.loads(value)):
                self.applied += 1
        except Exception:  # a bad record must not stop the worker or block newer ones
            log.exception("ignoring an unusable record on %s", self.topic)

    async def load(self, timeout_s: float = 60.0) -> int:
        """Read the topic to its exact end, applying each record; return how many applied."""
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                         group_id=None, auto_offset_reset="earliest", **self.client_options)
        await self.consumer.start()
        self.tps = await assign_all(self.consumer, self.topic, timeout_s)
        async for record in read_to_high_watermark(self.consumer, self.tps, timeout_s):
            self._offer(record.value)
        return self.applied

    async def follow(self) -> None:
        """Apply new records until cancelled or stopped."""
        assert self.consumer is not None, "call load() first"
        while True:
            try:
                batch = await self.consumer.getmany(*self.tps, timeout_ms=1000)
            except (asyncio.CancelledError, ConsumerStoppedError):
                raise
            except Exception:
                log.exception("feed of %s: fetch failed; retrying", self.topic)
                await asyncio.sleep(1)
                continue
            for records in batch.values():
                for record in records:
                    self._offer(record.value)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


async def read_topic(bootstrap: str, topic: str, client_options: dict[str, Any] | None = None,
                     timeout_s: float = 120.0) -> list[tuple[float, bytes | None, dict[str, Any]]]:
    """Every JSON record of a topic, to the exact high watermark, as (timestamp s, key, value).

    Unreadable values are skipped with a warning: one bad record must not hide the rest.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", **(client_options or {}))
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, timeout_s)
        out = []
        async for rec in read_to_high_watermark(consumer, tps, timeout_s):
            if not rec.value:
                continue
            try:
                out.append((rec.timestamp / 1000.0, rec.key, orjson.loads(rec.value)))
            except orjson.JSONDecodeError:
                log.warning("skipping an unreadable record on %s at %s@%s", topic, rec.partition, rec.offset)
        return out
    finally:
        await consumer.stop()
