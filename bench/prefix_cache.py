"""Prompt tokens a server reuses (issue 15, item 5): the project's prompt (fixed part first, the item's text last)
against the same prompt with the text first, on the local llama.cpp server.

A prefix-caching server evaluates only the prompt tokens after the longest prefix its slot already holds. The
project's prompt keeps everything fixed (system, option list, few-shot turns, the template's lead) in front and
byte-identical across requests, so only the item's turn is evaluated; put the text first and every request
differs from its first tokens on, so the whole prompt is evaluated every time.

Each layout is run on a fresh server (`LocalModelServer`: Gemma 3 270M, llama.cpp via xllamacpp, `--parallel
4`), `--n` texts at 4 at once, through the worker's own path (`Classifier.process`: `MethodRunner`,
`ModelClient.first_token`, the record built as the worker publishes it, metrics as its `CallObserver`). A small
proxy in this process passes each call on to the server untouched and keeps the server's `timings`
(`prompt_n`: prompt tokens evaluated; `cache_n`: reused), so two reports are printed side by side: the server's
own timings and the `usage.cached_tokens` of the result records.

- **text last**: `movie_sentiment` from `config/tasks.toml` as the service runs it (4 few-shot turns, the
  template's lead, then the text);
- **text first**: the same messages with the item's text put in front of the first one
  (`"<<<REVIEW\\n{text}\\nREVIEW>>>\\n\\n"` + the first example's turn); the last turn still holds the text, so
  this prompt is the text's length longer (both sizes are printed).

With `--shuffle`, also the trade-off of `[task.prompt] option_order = "shuffled"`: `fortune_topic` from
`bench/tasks.toml` with letter codes (4 options), fixed against shuffled order, on Debian `fortunes` sayings
(`bench.datasets`). The shuffled option list sits in the system message, so it breaks the shared prefix.

Texts: Rotten Tomatoes snippets of at most 200 characters (the demo's sample data, seed 101). The text-first run
takes most of the time, since every one of its requests evaluates the whole prompt.

    nice -n 10 .venv/bin/python bench/prefix_cache.py [--n 40] [--shuffle [--shuffle-n 16]]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

if __package__ in (None, ""):  # run as `python bench/prefix_cache.py`: import bench from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.classify.model_client import ModelClient
from streams.classify.records import Source
from streams.classify.service import Classifier
from streams.localdev.model_server import LocalModelServer
from streams.localdev.sample_data import load_reviews
from streams.ops.metrics import ServiceMetrics
from streams.tasks import Prompt, Task, TaskRegistry, load_tasks

REPO = Path(__file__).resolve().parents[1]
SLOTS = 4
MAX_CHARS = 200
SEED = 101


@dataclass(frozen=True)
class TextFirstPrompt(Prompt):
    """The project's prompt with the item's text also put in front of its first message: the layout to avoid."""

    def messages(self, text: str) -> list[dict[str, str]]:
        msgs = Prompt.messages(self, text)
        first = msgs[0]
        msgs[0] = {"role": first["role"], "content": f"<<<REVIEW\n{text}\nREVIEW>>>\n\n{first['content']}"}
        return msgs


class TimingsProxy:
    """Passes chat completions on to the server untouched and keeps each answer's `timings`, keyed by the
    content of the call's last message (unique per text here)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.timings: dict[str, dict[str, Any]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        assert self._session is not None
        async with self._session.post(f"{self.upstream}/chat/completions", data=body,
                                      headers={"content-type": "application/json"}) as resp:
            data = await resp.read()
            if resp.status == 200:
                doc = orjson.loads(data)
                last = orjson.loads(body)["messages"][-1]["content"]
                self.timings[last] = doc.get("timings") or {}
            return web.Response(body=data, status=resp.status, content_type="application/json")

    async def __aenter__(self) -> TimingsProxy:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@dataclass(frozen=True)
class Run:
    name: str
    records: list[dict[str, Any]]
    timings: list[dict[str, Any]]
    metric_cached: float
    seconds: float


async def _classify(task: Task, texts: list[str], upstream: str, name: str) -> Run:
    async with TimingsProxy(upstream) as proxy:
        task = replace(task, model=replace(task.model, base_url=proxy.base_url))
        metrics = ServiceMetrics()
        client = ModelClient(600, 1, observer=metrics)
        classifier = Classifier(TaskRegistry({task.name: task}, "bench"), client, 10_000, 256)
        slots = asyncio.Semaphore(SLOTS)

        async def one(i: int, text: str) -> dict[str, Any]:
            async with slots:
                raw = orjson.dumps({"id": f"{name}-{i:03d}", "task": task.name, "text": text})
                outs = await classifier.process(raw, None, Source("bench", 0, i))
            record: dict[str, Any] = orjson.loads(outs[0].value)
            return record

        started = time.perf_counter()
        records = list(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))
        seconds = time.perf_counter() - started
        await client.close()
        timings = [proxy.timings.get(task.for_request(r["id"]).prompt.messages(t)[-1]["content"], {})
                   for r, t in zip(records, texts, strict=True)]
        exposition = metrics.exposition().decode()
        metric_cached = sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
                            if line.startswith("llm_classify_model_cached_prompt_tokens_total{"))
        return Run(name, records, timings, metric_cached, seconds)


def run_layout(task: Task, texts: list[str], name: str) -> Run:
    """One layout on a fresh server, so no run inherits another's cache."""
    with LocalModelServer(parallel=SLOTS, ctx_per_slot=1024) as server:
        print(f"{name}: {len(texts)} requests, {SLOTS} at once ...", file=sys.stderr, flush=True)
        return asyncio.run(_classify(task, texts, server.base_url, name))


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


def summarise(run: Run) -> dict[str, float]:
    usage = [r["usage"] for r in run.records]
    warm = run.timings[SLOTS:]  # after each slot's first request
    return {
        "prompt": _mean(u["prompt_tokens"] for u in usage),
        "evaluated": _mean(t.get("prompt_n", float("nan")) for t in run.timings),
        "evaluated_warm": _mean(t.get("prompt_n", float("nan")) for t in warm),
        "cache_n": _mean(t.get("cache_n", float("nan")) for t in run.timings),
        "cached_usage": _mean(u.get("cached_tokens", 0) for u in usage),
        "cached_sum": float(sum(u.get("cached_tokens", 0) for u in usage)),
        "prompt_ms": _mean(t.get("prompt_ms", float("nan")) for t in run.timings),
        "agree": float(sum(u.get("cached_tokens", 0) == t.get("cache_n") for u, t in zip(usage, run.timings,
                                                                                         strict=True))),
    }


def report(runs: list[Run]) -> dict[str, dict[str, float]]:
    print(f"{'layout':<22}{'n':>4}{'prompt tok':>12}{'evaluated':>11}{'(warm)':>9}{'cached':>9}"
          f"{'usage cached':>14}{'prompt ms':>11}{'wall s':>8}")
    out = {}
    for run in runs:
        s = out[run.name] = summarise(run)
        print(f"{run.name:<22}{len(run.records):>4}{s['prompt']:>12.1f}{s['evaluated']:>11.1f}"
              f"{s['evaluated_warm']:>9.1f}{s['cache_n']:>9.1f}{s['cached_usage']:>14.1f}{s['prompt_ms']:>11.0f}"
              f"{run.seconds:>8.1f}")
    for run in runs:
        s = out[run.name]
        print(f"  {run.name}: result usage cached_tokens equals the server's timings.cache_n on "
              f"{s['agree']:.0f}/{len(run.records)} records; llm_classify_model_cached_prompt_tokens_total "
              f"{run.metric_cached:.0f} (records' sum {s['cached_sum']:.0f})")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/prefix_cache.py", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="texts per layout")
    parser.add_argument("--shuffle", action="store_true",
                        help="also fortune_topic with letter codes, fixed against shuffled option order")
    parser.add_argument("--shuffle-n", type=int, default=16, help="sayings per option order with --shuffle")
    args = parser.parse_args(argv)

    movie = load_tasks(REPO / "config" / "tasks.toml", os.environ).get("movie_sentiment")
    assert movie is not None
    reviews = [r.text for r in load_reviews(seed=SEED, max_chars=MAX_CHARS)]
    texts = list(dict.fromkeys(reviews))[: args.n]  # unique, so each call's timings are found by its text
    text_first = replace(movie, prompt=TextFirstPrompt(**{f: getattr(movie.prompt, f)
                                                          for f in movie.prompt.__dataclass_fields__}))
    started = time.perf_counter()
    runs = [run_layout(movie, texts, "text last (project)"), run_layout(text_first, texts, "text first")]
    if args.shuffle:
        from bench.datasets import fortunes

        topic = load_tasks(REPO / "bench" / "tasks.toml", os.environ).get("fortune_topic")
        assert topic is not None
        sayings = list(dict.fromkeys(t for _, t, _ in fortunes(args.shuffle_n * 3, SEED)))[: args.shuffle_n]
        coded = _with_letter_codes(topic)
        runs += [run_layout(coded, sayings, "options fixed"),
                 run_layout(_shuffled(coded), sayings, "options shuffled")]

    per_order = f" ({args.shuffle_n} per option order)" if args.shuffle else ""
    print(f"\nLocal llama.cpp (Gemma 3 270M, {SLOTS} slots), {args.n} texts per layout{per_order}, "
          f"{time.perf_counter() - started:.0f} s in all; means per request")
    out = report(runs)
    last, first = out["text last (project)"], out["text first"]
    ratio = last["evaluated"] / first["evaluated"]
    print(f"\nprompt tokens evaluated per request, text last / text first: {last['evaluated']:.1f} / "
          f"{first['evaluated']:.1f} = {ratio:.3f} ({1 - ratio:.0%} fewer); per prompt token "
          f"{last['evaluated'] / last['prompt']:.3f} / {first['evaluated'] / first['prompt']:.3f}")
    print(f"cached part in the result usage (text last): {last['cached_usage']:.1f} of {last['prompt']:.1f} "
          f"prompt tokens ({last['cached_usage'] / last['prompt']:.0%})")
    verdict = ratio <= 0.5 and last["cached_usage"] > 0
    print("acceptance (evaluated falls by at least half, usage shows the cached part): "
          f"{'PASS' if verdict else 'FAIL'}")
    if args.shuffle:
        fixed, shuffled = out["options fixed"], out["options shuffled"]
        print(f"option order: evaluated per request fixed {fixed['evaluated']:.1f}, shuffled "
              f"{shuffled['evaluated']:.1f} ({shuffled['evaluated'] / fixed['evaluated']:.1f}x)")
    return 0 if verdict else 1


def _with_letter_codes(task: Task) -> Task:
    """fortune_topic answering with letter codes A-D from an option list (the shuffle needs a list to reorder)."""
    from streams.tasks import answered, option_list

    codes = tuple("ABCD"[: len(task.labels)])
    prompt = replace(task.prompt, options=option_list(task.labels, codes, ()),
                     examples=answered(task.prompt.examples, task.labels, codes),
                     template=task.prompt.template.replace(
                         "Answer computers, politics, science or food:", "Answer with the code:"))
    return replace(task, codes=codes, positional_codes=True, prompt=prompt)


def _shuffled(task: Task) -> Task:
    return replace(task, prompt=replace(task.prompt, option_order="shuffled"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
