"""The Faust floor: the worker's Kafka path with no model call and no work per message.

    BENCH_BOOTSTRAP=HOST:PORT BENCH_SOURCE=T1 BENCH_DEST=T2 BENCH_GROUP=G \
        python bench/faust_passthrough.py worker --without-web -l warn

One Faust agent reads T1 exactly as the classify agent does (`stream.noack().events()`), sends each
record's key and value straight to Faust's producer as `streams.classify.agents.publish` does, and acks
the event only once the broker has acknowledged the copy, so commits never pass unwritten output. The
producer, consumer and commit options are the worker's (`streams.faust_tuning`). Whatever rate this reaches is the most
any Faust worker with that delivery rule can reach on this broker, before a single model call;
`bench/throughput.py` runs it next to raw aiokafka (`bench/passthrough.py`) and the full worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import faust
from faust.types import EventT, StreamT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.faust_tuning import FAUST_TUNING  # noqa: E402


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set; see the docstring of {__file__}")
    return value


BOOTSTRAP, SOURCE, DEST, GROUP = (_env(n) for n in ("BENCH_BOOTSTRAP", "BENCH_SOURCE", "BENCH_DEST", "BENCH_GROUP"))

app = faust.App(
    GROUP,
    broker=f"kafka://{BOOTSTRAP}",
    datadir=os.environ.get("BENCH_DATADIR", f"/tmp/faust-passthrough-{GROUP}"),
    web_enabled=False,
    broker_session_timeout=6.0,
    broker_heartbeat_interval=0.6,
    **FAUST_TUNING,
    topic_disable_leader=True,
)
source = app.topic(SOURCE, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


def _ack_when_written(event: EventT) -> object:
    return lambda _: event.ack()


@app.agent(source)
async def forward(stream: StreamT) -> None:
    producer = await app.maybe_start_producer()
    async for event in stream.noack().events():
        msg = event.message
        fut = await producer.send(DEST, msg.key, msg.value, None, None, None)
        fut.add_done_callback(_ack_when_written(event))


if __name__ == "__main__":
    app.main()
