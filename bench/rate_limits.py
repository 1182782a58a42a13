"""Rate-limit budgets: how much of a hosted API's per-minute budget the worker uses, and how often it is refused.
Prints figures; asserts nothing.

    python bench/rate_limits.py                          # every part: about 25 minutes
    python bench/rate_limits.py --only requests --seconds 60

The synthetic model (`python -m streams synthetic-model`) stands in for the hosted API in rate-limited mode:
`--rpm 600` plus a token budget, answered with 429 + Retry-After past either, OpenAI's `x-ratelimit-*`
headers on every answer, 50 ms (+/- 10) per answer. By default it enforces each per-minute budget per second
(`--burst-s 1`: 10 requests a second, as OpenAI says its limits may be enforced), so a burst is refused at
once; `--server-burst-s 60` holds a whole minute's budget instead. It meters a call as OpenAI does: prompt
tokens (here, the words of the last user message) plus `max_tokens`.

Each part queues a backlog larger than the budget allows for the run (so the worker is never short of work),
starts real `python -m streams worker` processes on one Tansu broker, and counts at the server, second by
second, the calls it let through, the tokens it metered and the calls it refused (429) over `--seconds` from
its first answer. Then the workers stop (SIGTERM: calls in flight finish or are handed back) and every
request below the committed offsets must have an output: the rest would be lost.

- `requests`: one worker, its task declaring the server's budgets, 600 requests and 60,000 tokens a minute
  (the requests bind);
- `tokens`: the same with 12,000 tokens a minute (the tokens bind: about 41 tokens a call);
- `two`: two workers sharing the `tokens` budgets, 4 of the 8 partitions each: their calls together (let
  through and refused) against the budget, and each worker's share; `two-requests`: the same with the
  `requests` budgets;
- `unpaced`: one worker with STREAMS_MODEL_PACING=off, the `requests` server: what the openai client's own
  Retry-After handling alone gives.

Texts are 5 to 60 words long, so the pacer's token estimate (characters times a ratio learnt from the
reported usage) has something to learn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
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


@dataclass
class Figures:
    part: Part
    window_s: float
    accepted: int
    refused: int
    tokens: int
    peak_per_minute: float  # calls sent (let through + refused) per minute in the busiest 60 s of the window
    peak_tokens_per_minute: float  # tokens metered per minute in the busiest 60 s
    lost: int
    outputs: int
    committed: int
    model_errors: int
    per_worker: list[tuple[float, float]] = field(default_factory=list)  # (share, calls) per worker


def sample_stats(model: SyntheticModel) -> tuple[float, int, int, int]:
    s = model.stats()
    return time.monotonic(), int(s["requests"]), int(s["rate_limited"]), int(s["metered_tokens"])


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


def lost_items(bootstrap: str, w: Worker) -> tuple[int, int, int, int]:
    """(requests below the committed offsets without an output, outputs, committed requests, model_error reviews)."""
    committed = asyncio.run(_committed(bootstrap, w.app_id, w.topic("requests")))
    reqs = asyncio.run(_read_all(bootstrap, [w.topic("requests")]))
    outs = asyncio.run(_read_all(bootstrap, [w.topic(t) for t in OUTPUTS]))
    answered = {r.key for r in outs}
    below = [r for r in reqs if r.offset < committed.get(r.partition, 0)]
    model_errors = sum(1 for r in outs if b'"review_reason":"model_error"' in r.value)
    return sum(1 for r in below if r.key not in answered), len(answered), len(below), model_errors


def run_part(part: Part, bootstrap: str, workdir: Path, server_burst_s: float) -> Figures:
    flags = ["--rpm", str(RPM), "--tpm", str(part.tpm), "--burst-s", str(server_burst_s),
             "--latency-ms", "50", "--latency-jitter-ms", "10"]
    with SyntheticModel(workdir, *flags) as model:
        tasks = write_tasks(workdir / f"tasks-{uuid.uuid4().hex[:6]}.toml", model.base_url, model="synthetic",
                            model_extra=f"requests_per_minute = {RPM}\ntokens_per_minute = {part.tpm}")
        w = Worker(bootstrap, tasks, workdir, partitions=PARTITIONS, max_in_flight=64,
                   extra_env={"STREAMS_MODEL_MAX_RETRIES": "4", "STREAMS_MODEL_TIMEOUT_S": "30",
                              "STREAMS_STOP_GRACE_S": "5",
                              "STREAMS_MODEL_PACING": "on" if part.pacing else "off"})
        asyncio.run(ensure_topics(w.settings))
        # A backlog the budget cannot clear in the run: 1.5x the request budget's calls.
        n = int(1.5 * RPM / 60 * part.seconds) + 100
        procs: list[tuple[Any, int]] = []  # (process, its web port)
        try:
            for _ in range(part.workers):
                proc = w.process()  # picks the process's web port
                procs.append((wait_ready(proc.start(), timeout_s=120), w.web_port))
            if part.workers > 1:
                time.sleep(8)  # let the group settle, so the figure is not a rebalance
            asyncio.run(produce(bootstrap, w.topic("requests"), requests(n, "r")))
            samples = [sample_stats(model)]
            while samples[-1][1] == 0:
                time.sleep(0.2)
                samples = [sample_stats(model)]
            start = samples[0][0]
            while samples[-1][0] - start < part.seconds:
                time.sleep(1.0)
                samples.append(sample_stats(model))
            per_worker = []
            for _, port in procs:
                metrics = scrape(port)
                per_worker.append((total(metrics.get("llm_classify_model_budget_share", {})),
                                   total(metrics.get("llm_classify_model_calls_total", {}))))
        finally:
            for proc, _ in procs:
                proc.stop(timeout_s=30)
    t0, a0, r0, k0 = samples[0]
    t1, a1, r1, k1 = samples[-1]
    span = min(60.0, part.seconds)
    peak = peak_tokens = 0.0  # calls sent, and tokens metered, per minute in the busiest `span` seconds
    for i, (t, a, r, k) in enumerate(samples):
        later = [s for s in samples[i:] if s[0] - t <= span + 0.5]
        if later and later[-1][0] - t >= span - 1.0:
            per_minute = 60.0 / (later[-1][0] - t)
            peak = max(peak, ((later[-1][1] - a) + (later[-1][2] - r)) * per_minute)
            peak_tokens = max(peak_tokens, (later[-1][3] - k) * per_minute)
    lost, outputs, committed, model_errors = lost_items(bootstrap, w)
    return Figures(part, t1 - t0, a1 - a0, r1 - r0, k1 - k0, peak, peak_tokens, lost, outputs, committed,
                   model_errors, per_worker)


def report(f: Figures) -> None:
    p = f.part
    minutes = f.window_s / 60
    req_budget, tok_budget = RPM * minutes, p.tpm * minutes
    attempts = f.accepted + f.refused
    mode = "paced" if p.pacing else "UNPACED (STREAMS_MODEL_PACING=off)"
    print(f"\n== {p.name}: {p.workers} worker(s), {mode}; server {RPM} requests/min, {p.tpm} tokens/min; "
          f"{f.window_s:.0f} s from the first answer; load now {os.getloadavg()[0]:.2f} ==")
    print(f"  requests let through {f.accepted:6d} = {f.accepted / req_budget:6.1%} of the request budget "
          f"({req_budget:.0f})")
    print(f"  tokens metered     {f.tokens:8d} = {f.tokens / tok_budget:6.1%} of the token budget ({tok_budget:.0f}); "
          f"{f.tokens / max(1, f.accepted):.1f} per call")
    print(f"  answered 429       {f.refused:8d} = {f.refused / max(1, attempts):6.2%} of {attempts} calls sent")
    print(f"  calls sent (let through + refused) in the busiest {min(60.0, p.seconds):.0f} s: "
          f"{f.peak_per_minute:.0f}/min (request budget {RPM}/min); tokens metered there "
          f"{f.peak_tokens_per_minute:.0f}/min (token budget {p.tpm}/min)")
    if f.per_worker:
        shares = ", ".join(f"share {s:.3f}: {c:.0f} calls" for s, c in f.per_worker)
        print(f"  per worker (its metrics, the whole run): {shares}")
    print(f"  items: {f.committed} committed, {f.outputs} with an output, LOST {f.lost}; "
          f"{f.model_errors} sent to review as model_error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="requests,tokens,two,two-requests,unpaced")
    parser.add_argument("--seconds", type=float, default=300.0, help="the paced one-worker runs")
    parser.add_argument("--short-seconds", type=float, default=180.0, help="the two-worker and unpaced runs")
    parser.add_argument("--server-burst-s", type=float, default=1.0,
                        help="seconds of refill the server's budgets hold (1: enforced per second)")
    parser.add_argument("--keep", type=Path, help="keep logs here instead of a temporary directory")
    args = parser.parse_args()
    wanted = {p.strip() for p in args.only.split(",") if p.strip()}
    parts = [Part("requests", 60_000, seconds=args.seconds), Part("tokens", 12_000, seconds=args.seconds),
             Part("two", 12_000, workers=2, seconds=args.short_seconds),
             Part("two-requests", 60_000, workers=2, seconds=args.short_seconds),
             Part("unpaced", 60_000, pacing=False, seconds=args.short_seconds)]
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; server budgets held for "
          f"{args.server_burst_s:g} s of refill; worker: 8 partitions, 64 in flight, 4 openai retries")
    with tempfile.TemporaryDirectory(prefix="bench-rate-limits-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
            for part in parts:
                if part.name in wanted:
                    report(run_part(part, broker.bootstrap, workdir, args.server_burst_s))


if __name__ == "__main__":
    main()
