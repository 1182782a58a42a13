"""The client floor: the worker's model call alone, with no Kafka, as many at once as the worker allows.

    python bench/client_floor.py --tasks TASKS.toml --n 20000 --concurrency 512 [--via openai|model_client]

`--via openai` (the default) makes exactly the request `ModelClient.first_token` makes, through the same
`openai.AsyncOpenAI` (its aiohttp transport, its retries) and nothing else: `client.post` with the task's
first-token body, the answer read as bytes. `--via model_client` goes through `ModelClient.first_token`
itself (circuit breaker, bad-body retries, parsing into a `ModelReply`). `--concurrency` coroutines each
loop over calls, like the worker's in-flight window. After 500 warm-up calls, prints one JSON line:
calls per second and this process's CPU microseconds per call. One call per request is what the worker
needs, so this rate bounds any single-process worker from above: `bench/throughput.py` prints it next
to the pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import openai
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.classify.model_client import ModelClient
from streams.tasks import Task, load_tasks

TEXT = "A warm, funny and moving film with a superb cast; the second act drags a little but the ending lands."
WARM_UP = 500


def openai_call(task: Task, timeout_s: float,
                max_retries: int) -> tuple[Callable[[], Awaitable[object]], openai.AsyncOpenAI]:
    endpoint = task.model
    client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key(), timeout=timeout_s,
                                max_retries=max_retries, http_client=openai.DefaultAioHttpClient(timeout=timeout_s))
    body = {"model": endpoint.name, "messages": task.prompt.messages(TEXT), "max_tokens": 1,
            "temperature": endpoint.temperature, "logprobs": True, "top_logprobs": endpoint.top_logprobs}

    async def call() -> object:
        resp = await client.post("/chat/completions", body=body, cast_to=httpx2.Response)
        return resp.content

    return call, client


async def run(call: Callable[[], Awaitable[object]], n: int, concurrency: int) -> tuple[float, float]:
    """(calls per second, CPU seconds) over n calls made by `concurrency` looping callers."""
    left = [n]

    async def caller() -> None:
        while left[0] > 0:
            left[0] -= 1
            await call()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return n / (time.perf_counter() - wall0), time.process_time() - cpu0


async def main_async(args: argparse.Namespace) -> dict[str, float | int | str]:
    task = next(iter(load_tasks(args.tasks).tasks.values()))
    if args.via == "openai":
        call, client = openai_call(task, args.timeout, args.max_retries)
        close = client.close
    else:
        model = ModelClient(args.timeout, args.max_retries)

        async def call() -> object:
            return await model.first_token(task, TEXT)

        close = model.close
    try:
        await run(call, WARM_UP, min(args.concurrency, WARM_UP))
        rate, cpu = await run(call, args.n, args.concurrency)
    finally:
        await close()
    return {"via": args.via, "n": args.n, "concurrency": args.concurrency, "rate": rate,
            "cpu_us_per_call": cpu / args.n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=Path, required=True, help="a task file; its first task's model is called")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--via", choices=("openai", "model_client"), default="openai")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--max-retries", type=int, default=2)
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(main_async(args))).decode())


if __name__ == "__main__":
    main()
