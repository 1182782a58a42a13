"""What a user would write instead of the service: aiokafka + openai, a fixed number of calls in flight.

    python bench/handwritten_consumer.py --bootstrap HOST:PORT --source T1 --dest T2 --group G \
        --base-url URL --model NAME [--concurrency 64]

It consumes T1 as a member of group G; for each request it asks the model for one token with its top
logprobs (the same body as `ModelClient.first_token`, through `openai.AsyncOpenAI` with its default
retries: 2, honouring the server's `Retry-After`), renormalises over the two labels and produces a small
JSON result to T2. A call that still fails after the retries (a 429 from a rate-limited server, a timeout)
produces `{"error": "<exception name>"}` as the result: the user's dead letter, the worker's review as
`model_error`. Offsets are committed the way the worker commits them: only after every record of the batch
has its output acknowledged by the broker. Up to `--concurrency` calls run at once, the usual semaphore: a
number guessed once, as users do; no pacing. `bench/capacity.py` and `bench/rate_limits.py` run it next to
the worker against the same model server.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
from pathlib import Path

import httpx2
import openai
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import first_token_body, openai_client

LABELS = ("fresh", "rotten")


async def classify(client: openai.AsyncOpenAI, model: str, text: str) -> dict[str, object]:
    try:
        resp = await client.post("/chat/completions", body=first_token_body(text, model), cast_to=httpx2.Response)
    except openai.OpenAIError as exc:
        return {"error": type(exc).__name__}
    top = orjson.loads(resp.content)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    mass = {label: sum(math.exp(t["logprob"]) for t in top if t["token"].strip().lower() == label)
            for label in LABELS}
    total = sum(mass.values()) or 1.0
    return {label: p / total for label, p in mass.items()}


async def consume(args: argparse.Namespace) -> None:
    consumer = AIOKafkaConsumer(
        args.source, bootstrap_servers=args.bootstrap, group_id=args.group, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=600)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=5)
    client = openai_client(args.base_url)
    gate = asyncio.Semaphore(args.concurrency)
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def handle(value: bytes, key: bytes | None) -> asyncio.Future[object]:
        async with gate:
            request = orjson.loads(value)
            result = await classify(client, args.model, request["text"])
        return await producer.send(args.dest, orjson.dumps({"id": request["id"], "result": result}), key=key)

    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=args.concurrency)
            if not batch:
                continue
            acks = await asyncio.gather(*(handle(r.value, r.key) for records in batch.values() for r in records))
            await asyncio.gather(*acks)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
    finally:
        await consumer.stop()
        await producer.stop()
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", default="synthetic")
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    main()
