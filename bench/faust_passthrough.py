"""The Faust floors: the worker's Kafka path with no model call, or with the model call and nothing else.

    BENCH_BOOTSTRAP=HOST:PORT BENCH_SOURCE=T1 BENCH_DEST=T2 BENCH_GROUP=G \
        python bench/faust_passthrough.py worker --without-web -l warn

One Faust agent reads T1 exactly as the classify agent does (`stream.noack().events()`), sends each
record's key and value straight to Faust's producer as `streams.classify.agents.publish` does, and acks
the event only once the broker has acknowledged the copy, so commits never pass unwritten output. The
producer, consumer and commit options are the worker's (`streams.faust_tuning`). Whatever rate this
reaches is the most any Faust worker with that delivery rule can reach on this broker, before a single
model call.

With `BENCH_TASKS=TASKS.toml` (and `BENCH_MAX_IN_FLIGHT`, default 512) each record first makes the
worker's model call, `ModelClient.first_token` for the file's first task, up to that many at once, and is
forwarded when it answers: the worker's Kafka path plus its model call in one process, without parsing,
statistics, records, metrics or the worker's other agents. `bench/throughput.py` runs both next to raw
aiokafka (`bench/passthrough.py`) and the full worker.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import faust
from faust.types import EventT, StreamT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.client_floor import TEXT  # the same request as the client floor's
from streams.classify.model_client import ModelClient
from streams.faust_tuning import FAUST_TUNING
from streams.tasks import load_tasks


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


def _ack_when_written(event: EventT) -> Callable[[object], object]:
    return lambda _: event.ack()


@app.agent(source)
async def forward(stream: StreamT) -> None:
    producer = await app.maybe_start_producer()
    tasks_file = os.environ.get("BENCH_TASKS")
    if not tasks_file:
        # faust's StreamT leaves noack() out; the agent is always given a faust.Stream, which has it
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            msg = event.message
            fut = await producer.send(DEST, msg.key, msg.value, None, None, None)
            fut.add_done_callback(_ack_when_written(event))
        return
    task = next(iter(load_tasks(Path(tasks_file)).tasks.values()))
    model = ModelClient(30.0, 2)
    slots = asyncio.Semaphore(int(os.environ.get("BENCH_MAX_IN_FLIGHT", "512")))
    running: set[asyncio.Task[None]] = set()

    async def call_then_forward(event: EventT) -> None:
        try:
            await model.first_token(task, TEXT)
            msg = event.message
            await (await producer.send(DEST, msg.key, msg.value, None, None, None))
            event.ack()
        finally:
            slots.release()

    async for event in stream.noack().events():  # type: ignore[attr-defined]  # as above
        await slots.acquire()
        running.add(job := asyncio.create_task(call_then_forward(event)))
        job.add_done_callback(running.discard)


if __name__ == "__main__":
    app.main()
