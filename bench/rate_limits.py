"""Rate-limit budgets: the worker's use of a hosted API's budgets and its 429s, beside the ceiling and a user's loop.

How much of the per-minute budgets each row uses and how often it is refused. Prints figures; asserts nothing.

    python bench/rate_limits.py                          # every part, every row: about an hour
    python bench/rate_limits.py --only requests,tokens   # the two 5-minute comparisons: about 32 minutes
    python bench/rate_limits.py --only requests --seconds 60 --rows direct,worker

The synthetic model (`python -m streams synthetic-model`) stands in for the hosted API in rate-limited mode:
`--rpm 600` plus a token budget, answered with 429 + Retry-After past either, OpenAI's `x-ratelimit-*`
headers on every answer, 50 ms (+/- 10) per answer. By default it enforces each per-minute budget per second
(`--burst-s 1`: 10 requests a second, as OpenAI says its limits may be enforced), so a burst is refused at
once; `--server-burst-s 60` holds a whole minute's budget instead. It meters a call as OpenAI does: prompt
tokens (here, the words of the last user message) plus `max_tokens`.

Each part runs three rows, one after the other, each against a fresh server with the same budgets, for the
same `--seconds` from that server's first answer (the server counts, second by second, the calls it let
through, the tokens it metered and the calls it refused, 429):

- **direct**: the ceiling. The server alone, no Kafka: the worker's first-token call through the same openai
  client (`bench/common.py`, as `bench/capacity.py` drives it), each call released when the server's own
  token buckets, mirrored with the exact cost the server will meter, can take it (`ExactPacer`);
- **hand**: what a user would write instead, `bench/handwritten_consumer.py` (aiokafka + openai, the same
  commit rule, 64 calls in flight, the openai client's default 2 retries honouring Retry-After, no pacing; a
  call refused past its retries is written out as an error), with a backlog of its own large enough that it
  is never short of work;
- **worker**: real `python -m streams worker` processes (8 partitions, 64 in flight, 4 openai retries), the
  task declaring the server's budgets, over a backlog larger than the budget allows for the run.

After a Kafka row the consumers stop (SIGTERM: calls in flight finish or are handed back) and every request
below the committed offsets must have an output: the rest would be lost. Errors are the items the worker sent
to review as `model_error` and the items the hand-written consumer wrote out as errors.

Parts:
- `requests`: one consumer, 600 requests and 60,000 tokens a minute (the requests bind);
- `tokens`: the same with 12,000 tokens a minute (the tokens bind: about 41 tokens a call);
- `two`: two consumers in one group sharing the `tokens` budgets (the workers take 4 of the 8 partitions and
  half the budget each: the worker rows print each one's share and calls); `two-requests`: the same with the
  `requests` budgets;
- `unpaced`: one worker with STREAMS_MODEL_PACING=off, the `requests` server: what the openai client's own
  Retry-After handling alone gives (the worker row only).

Texts are 5 to 60 words long, so the pacer's token estimate (characters times a ratio learnt from the
reported usage) has something to learn. End-to-end latency is not reported: with a backlog deeper than the
budget allows, an item's time from request to output is its wait in the backlog, set by the budget.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import HANDWRITTEN_CONCURRENCY, ExactPacer, direct, handwritten  # noqa: E402
from bench.throughput import create_topics  # noqa: E402
from streams.localdev.broker import EmbeddedBroker  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    SyntheticModel,
    Worker,
    produce,
    scrape,
    total,
    wait_ready,
    write_tasks,
)

PARTITIONS = 8
OUTPUTS = ("results", "review", "deadletter")
RPM = 600
ROWS = ("direct", "hand", "worker")
HAND_ITEMS_PER_S = 300  # the hand-written consumer's backlog per second of run: it took about 180 items/s here
WORDS = ("the film", "a cast", "that works", "in places", "but drags", "towards", "its end", "with charm",
         "and wit", "some scenes", "fall flat", "others sing")


def text(i: int) -> str:
    """5 to 60 words, varying from request to request."""
    n = 5 + (i * 37) % 56
    parts: list[str] = []
    while sum(len(p.split()) for p in parts) < n:
        parts.append(WORDS[(i + len(parts)) % len(WORDS)])
    return f"Review {i}: " + " ".join(parts)


def requests(n: int, prefix: str) -> Iterator[tuple[bytes, bytes]]:
    for i in range(n):
        rid = f"{prefix}{i}"
        yield rid.encode(), orjson.dumps({"id": rid, "task": "sentiment", "text": text(i)})


@dataclass
class Part:
    name: str
    tpm: int
    workers: int = 1
    pacing: bool = True
    seconds: float = 300.0

    def flags(self, burst_s: float) -> list[str]:
        return ["--rpm", str(RPM), "--tpm", str(self.tpm), "--burst-s", str(burst_s),
                "--latency-ms", "50", "--latency-jitter-ms", "10"]

    def backlog(self) -> int:
        """Requests queued for a Kafka row: 1.5x the calls the request budget allows in the run, so a consumer
        that keeps to the budget is never short of work."""
        return int(1.5 * RPM / 60 * self.seconds) + 100


@dataclass
class Items:
    """Requests below the committed offsets (the consumer says they are done) and what became of them."""

    committed: int
    outputs: int
    lost: int  # committed without an output
    errors: int  # outputs that are failures: the worker's reviews as model_error, the hand-written consumer's errors


@dataclass
class Row:
    label: str
    window_s: float
    accepted: int
    refused: int
    tokens: int
    peak_per_minute: float  # calls sent (let through + refused) per minute in the busiest 60 s of the window
    peak_tokens_per_minute: float  # tokens metered per minute in the busiest 60 s
    load: tuple[float, float]  # load average (1, 5 min) when the window closed
    items: Items | None = None  # None for the direct generator: no Kafka
    notes: list[str] = field(default_factory=list)


Sample = tuple[float, int, int, int]  # (monotonic time, calls let through, calls refused, tokens metered)


def sample_stats(model: SyntheticModel) -> Sample:
    s = model.stats()
    return time.monotonic(), int(s["requests"]), int(s["rate_limited"]), int(s["metered_tokens"])


def window(model: SyntheticModel, seconds: float) -> list[Sample]:
    """The server's counters every second for `seconds` from its first answer."""
    deadline = time.monotonic() + 180
    samples = [sample_stats(model)]
    while samples[-1][1] == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from the model server in 180 s; see {model.log_path}")
        time.sleep(0.2)
        samples = [sample_stats(model)]
    start = samples[0][0]
    while samples[-1][0] - start < seconds:
        time.sleep(1.0)
        samples.append(sample_stats(model))
    return samples


def row(label: str, samples: list[Sample], seconds: float) -> Row:
    t0, a0, r0, k0 = samples[0]
    t1, a1, r1, k1 = samples[-1]
    span = min(60.0, seconds)
    peak = peak_tokens = 0.0  # calls sent, and tokens metered, per minute in the busiest `span` seconds
    for i, (t, a, r, k) in enumerate(samples):
        later = [s for s in samples[i:] if s[0] - t <= span + 0.5]
        if later and later[-1][0] - t >= span - 1.0:
            per_minute = 60.0 / (later[-1][0] - t)
            peak = max(peak, ((later[-1][1] - a) + (later[-1][2] - r)) * per_minute)
            peak_tokens = max(peak_tokens, (later[-1][3] - k) * per_minute)
    one, five, _ = os.getloadavg()
    return Row(label, t1 - t0, a1 - a0, r1 - r0, k1 - k0, peak, peak_tokens, (one, five))


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: (await consumer.committed(TopicPartition(topic, p))) or 0 for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def _read_all(bootstrap: str, topics: list[str], until_idle_s: float = 3.0) -> list[Any]:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    records: list[Any] = []
    try:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < until_idle_s:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for recs in batch.values():
                records.extend(recs)
            if batch:
                idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return records


def items(bootstrap: str, group: str, source: str, outputs: list[str], error: bytes) -> Items:
    """Every request below the group's committed offsets must have an output (by key); `error` marks a failure."""
    committed = asyncio.run(_committed(bootstrap, group, source))
    reqs = asyncio.run(_read_all(bootstrap, [source]))
    outs = asyncio.run(_read_all(bootstrap, outputs))
    answered = {r.key for r in outs}
    below = [r for r in reqs if r.offset < committed.get(r.partition, 0)]
    return Items(len(below), len(answered), sum(1 for r in below if r.key not in answered),
                 sum(1 for r in outs if error in r.value))


def run_direct(part: Part, workdir: Path, burst_s: float) -> Row:
    """The ceiling: the server alone, no Kafka, each call released when the server's own buckets can take it."""
    with SyntheticModel(workdir, *part.flags(burst_s)) as model:
        pacer = ExactPacer(RPM, part.tpm, burst_s)
        result: list[tuple[int, int]] = []
        # 4 callers: at 50 ms a call, enough that the pacer, not the calls, sets the pace.
        thread = threading.Thread(target=lambda: result.append(asyncio.run(
            direct(model.base_url, 4, part.seconds + 5.0, text, pacer))))
        thread.start()
        try:
            samples = window(model, part.seconds)
        finally:
            thread.join()
    r = row("direct generator, paced exactly", samples, part.seconds)
    if result and result[0][1]:
        r.notes.append(f"direct generator: {result[0][1]} calls failed after the openai client's retries")
    return r


def run_handwritten(part: Part, bootstrap: str, workdir: Path, burst_s: float) -> Row:
    """What a user would write: `bench/handwritten_consumer.py`, `part.workers` of them in one group, no pacing."""
    tag = uuid.uuid4().hex[:8]
    src, dst, group = f"hand-{tag}.in", f"hand-{tag}.out", f"hand-{tag}"
    asyncio.run(create_topics(bootstrap, [src, dst]))
    with SyntheticModel(workdir, *part.flags(burst_s)) as model:
        procs = []
        try:
            for i in range(part.workers):
                procs.append(handwritten(bootstrap, src, dst, group, model.base_url,
                                         workdir / f"hand-{tag}-{i}.log").start())
            time.sleep(8 if part.workers > 1 else 2)  # let the group settle, so the figure is not a rebalance
            # Its calls refused past the openai client's retries are written out as errors in a fraction of a
            # second, so it takes items far faster than the budget: a backlog of its own, so that it is not short
            # of work either (the row says so if it was).
            n = int(HAND_ITEMS_PER_S * part.seconds * part.workers) + 100
            asyncio.run(produce(bootstrap, src, requests(n, "h")))
            samples = window(model, part.seconds)
        finally:
            for proc in procs:
                proc.stop(timeout_s=30)
    label = f"hand-written, {HANDWRITTEN_CONCURRENCY} in flight" + (f", x{part.workers}" if part.workers > 1 else "")
    r = row(label, samples, part.seconds)
    r.items = items(bootstrap, group, src, [dst], b'"error"')
    if r.items.committed >= n:
        r.notes.append(f"hand-written: its backlog of {n} ran out before the window closed: raise HAND_ITEMS_PER_S")
    return r


def run_worker(part: Part, bootstrap: str, workdir: Path, burst_s: float) -> Row:
    with SyntheticModel(workdir, *part.flags(burst_s)) as model:
        tasks = write_tasks(workdir / f"tasks-{uuid.uuid4().hex[:6]}.toml", model.base_url, model="synthetic",
                            model_extra=f"requests_per_minute = {RPM}\ntokens_per_minute = {part.tpm}")
        w = Worker(bootstrap, tasks, workdir, partitions=PARTITIONS, max_in_flight=64,
                   extra_env={"STREAMS_MODEL_MAX_RETRIES": "4", "STREAMS_MODEL_TIMEOUT_S": "30",
                              "STREAMS_STOP_GRACE_S": "5",
                              "STREAMS_MODEL_PACING": "on" if part.pacing else "off"})
        asyncio.run(ensure_topics(w.settings))
        procs: list[tuple[Any, int]] = []  # (process, its web port)
        try:
            for _ in range(part.workers):
                proc = w.process()  # picks the process's web port
                procs.append((wait_ready(proc.start(), timeout_s=120), w.web_port))
            if part.workers > 1:
                time.sleep(8)  # let the group settle, so the figure is not a rebalance
            asyncio.run(produce(bootstrap, w.topic("requests"), requests(part.backlog(), "r")))
            samples = window(model, part.seconds)
            per_worker = []
            for _, port in procs:
                metrics = scrape(port)
                per_worker.append((total(metrics.get("llm_classify_model_budget_share", {})),
                                   total(metrics.get("llm_classify_model_calls_total", {}))))
        finally:
            for proc, _ in procs:
                proc.stop(timeout_s=30)
    label = ("worker, paced" if part.pacing else "worker, UNPACED") + (f", x{part.workers}" if part.workers > 1 else "")
    r = row(label, samples, part.seconds)
    r.items = items(bootstrap, w.app_id, w.topic("requests"), [w.topic(t) for t in OUTPUTS],
                    b'"review_reason":"model_error"')
    if part.workers > 1:
        shares = ", ".join(f"share {s:.3f}: {c:.0f} calls" for s, c in per_worker)
        r.notes.append(f"per worker (its metrics, the whole run): {shares}")
    return r


def report(part: Part, rows: list[Row], burst_s: float) -> None:
    print(f"\n== {part.name}: server {RPM} requests/min and {part.tpm} tokens/min (held for {burst_s:g} s of refill), "
          f"{part.seconds:.0f} s from each row's first answer ==")
    busiest = f"busiest {min(60.0, part.seconds):.0f} s"
    print(f"  {'':34} {'let through':>15} | {'budget used':>16} | {'answered 429':>14} | {busiest:>17} | "
          f"{'items below committed offsets':>29} |")
    print(f"  {'row':34} {'calls':>6} {'tokens':>8} | {'requests':>8} {'tokens':>7} | {'calls':>6} {'of sent':>7} | "
          f"{'calls/min':>9} {'tok/min':>7} | {'committed':>9} {'lost':>5} {'errors':>6} {'':>6} | load 1/5 min")
    for r in rows:
        minutes = r.window_s / 60
        sent = r.accepted + r.refused
        if r.items is None:
            kafka = f"{'-':>9} {'-':>5} {'-':>6} {'':>6}"
        else:
            i = r.items
            kafka = f"{i.committed:9d} {i.lost:5d} {i.errors:6d} {i.errors / max(1, i.committed):6.1%}"
        print(f"  {r.label:34} {r.accepted:6d} {r.tokens:8d} | {r.accepted / (RPM * minutes):8.1%} "
              f"{r.tokens / (part.tpm * minutes):7.1%} | {r.refused:6d} {r.refused / max(1, sent):7.2%} | "
              f"{r.peak_per_minute:9.0f} {r.peak_tokens_per_minute:7.0f} | {kafka} | {r.load[0]:.2f}/{r.load[1]:.2f}")
    for r in rows:
        for note in r.notes:
            print(f"  {note}")
    print(f"  windows: {', '.join(f'{r.window_s:.0f}' for r in rows)} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="requests,tokens,two,two-requests,unpaced")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help="which of direct, hand, worker to run for each paced part (unpaced: the worker only)")
    parser.add_argument("--seconds", type=float, default=300.0, help="the one-consumer paced parts")
    parser.add_argument("--short-seconds", type=float, default=180.0, help="the two-consumer and unpaced parts")
    parser.add_argument("--server-burst-s", type=float, default=1.0,
                        help="seconds of refill the server's budgets hold (1: enforced per second)")
    parser.add_argument("--keep", type=Path, help="keep logs here instead of a temporary directory")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows as it happens
    wanted = {p.strip() for p in args.only.split(",") if p.strip()}
    rows = [r for r in ROWS if r in {x.strip() for x in args.rows.split(",")}]
    parts = [Part("requests", 60_000, seconds=args.seconds), Part("tokens", 12_000, seconds=args.seconds),
             Part("two", 12_000, workers=2, seconds=args.short_seconds),
             Part("two-requests", 60_000, workers=2, seconds=args.short_seconds),
             Part("unpaced", 60_000, pacing=False, seconds=args.short_seconds)]
    burst = args.server_burst_s
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; server budgets held for {burst:g} s of "
          f"refill; worker: 8 partitions, 64 in flight, 4 openai retries; hand-written: {HANDWRITTEN_CONCURRENCY} in "
          "flight, the openai client's 2 retries; direct: the server's own buckets, 4 callers")
    print("errors: items the worker sent to review as model_error; items the hand-written consumer wrote out as "
          "errors (refused past the openai client's retries)")
    with tempfile.TemporaryDirectory(prefix="bench-rate-limits-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
            for part in parts:
                if part.name not in wanted:
                    continue
                results = []
                for which in rows if part.pacing else ["worker"]:
                    if which == "direct":
                        results.append(run_direct(part, workdir, burst))
                    elif which == "hand":
                        results.append(run_handwritten(part, broker.bootstrap, workdir, burst))
                    else:
                        results.append(run_worker(part, broker.bootstrap, workdir, burst))
                report(part, results, burst)


if __name__ == "__main__":
    main()
