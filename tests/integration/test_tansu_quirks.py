"""Regression test of a measured Tansu quirk that decides where exact state may live.

Tansu answers ListOffsets(latest) with the last batch's base offset + 1, so `end_offsets()` can
stop short of the real end of a topic when the last batch held several records, while the fetch
high watermark is right. State that must be exact (calibrators, baselines) is therefore read up to
the fetch high watermark, never up to `end_offsets()`.
"""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.localdev.broker import EmbeddedBroker
from tests.integration.harness import run


async def _measure(bootstrap: str, n: int) -> tuple[int, int, int]:
    topic = f"quirk-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
    await producer.start()
    batch = producer.create_batch()
    for i in range(n):  # one batch of n records
        assert batch.append(key=None, value=str(i).encode(), timestamp=None) is not None
    await (await producer.send_batch(batch, topic, partition=0))
    await producer.stop()
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got = 0
        for _ in range(50):
            got += sum(len(m) for m in (await consumer.getmany(tp, timeout_ms=200)).values())
            if got >= n:
                break
        return end, got, consumer.highwater(tp)
    finally:
        await consumer.stop()


def test_list_offsets_latest_may_stop_short_but_fetch_high_watermark_is_exact(broker: EmbeddedBroker) -> None:
    n = 10
    end, got, highwater = run(_measure(broker.bootstrap, n))
    print(f"records {n}: end_offsets()={end}, fetched={got}, fetch high watermark={highwater}")
    assert got == n and highwater == n, "the fetch high watermark is what exact state must be read up to"
    # Tansu 0.6 answers 1 here (base offset 0 + 1). If a new broker answers n, the quirk is gone:
    # the test still passes, and this note can go.
    assert end in (1, n)
