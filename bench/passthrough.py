"""The ceiling: raw aiokafka consume -> produce, with no Faust and no work per message.

`python bench/passthrough.py --bootstrap HOST:PORT --source T1 --dest T2 --group G` consumes T1 as a
member of group G and produces every record (same key and value) to T2. Offsets are committed only
after the batch's records are acknowledged by the broker (acks=all), the same rule the worker follows,
so the figure is the best a correct consume -> produce loop in Python can do on this broker.
`bench/throughput.py` runs it as a separate process, like a worker, and compares the pipeline with it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def passthrough(bootstrap: str, source: str, dest: str, group: str, max_records: int) -> None:
    consumer = AIOKafkaConsumer(
        source, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=600,
        max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=16 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=max_records)
            if not batch:
                continue
            acks = []
            for records in batch.values():
                for r in records:
                    acks.append(await producer.send(dest, r.value, key=r.key))
            await asyncio.gather(*acks)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--max-records", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(passthrough(args.bootstrap, args.source, args.dest, args.group, args.max_records))


if __name__ == "__main__":
    main()
