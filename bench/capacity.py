"""A model server with a fixed capacity: the worker's adaptive limit against the server's best and a user's loop.

    python bench/capacity.py                       # 32 slots x 200 ms, then 8 slots mid-run (about 6 minutes)
    python bench/capacity.py --slots 32 --slots-after 8 --latency-ms 200 --seconds 60

The synthetic model in capacity mode (`--slots`: N requests decoded at once, the rest queued, latency =
queueing + service time, as vLLM and llama.cpp behave) is driven, in one run, by:

1. **the direct generator** (the ceiling: the server alone, no Kafka): `c` callers through the same
   `openai.AsyncOpenAI` call the worker makes, for each `c` of a sweep, at N slots and then at the
   smaller number; its best throughput, and the lowest p95 latency among the `c` within 95% of it;
2. **the worker** (`python -m streams worker`, every setting at its default: no limit configured) over a
   backlog; the slots drop mid-run by `POST /control`, and the p95 latency is followed every 5 s until it
   is back within 1.25x of the direct generator's at the new capacity;
3. **the same worker with its limit fixed by hand** at the direct generator's best number of callers:
   how much the adaptive limit costs against knowing the answer;
4. **a hand-written aiokafka + openai consumer** (`bench/handwritten_consumer.py`, 64 calls in flight, the
   same commit rule): what a user would write instead.

Latency is measured at the server (arrival to answer, `GET /stats?window_s=`), the same point for all
three. Prints figures and ratios; asserts nothing. Results are in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import HANDWRITTEN_CONCURRENCY, direct, handwritten  # noqa: E402
from bench.throughput import PARTITIONS, TEXTS, Bench, create_topics, load, produce  # noqa: E402
from streams.localdev.broker import EmbeddedBroker  # noqa: E402
from streams.settings import ENV_DEFAULTS  # noqa: E402
from tests.integration.harness import SyntheticModel, wait_ready  # noqa: E402

TEXT = "A warm, funny and moving film with a superb cast; the second act drags a little but the ending lands."
RECOVERED = 1.25  # p95 within this factor of the direct generator's at the same capacity


def requests(n: int, prefix: str) -> Iterator[tuple[bytes, bytes]]:
    """n requests with distinct texts: a repeated text would be answered from the worker's answer cache."""
    for i in range(n):
        rid = f"{prefix}{i}"
        yield rid.encode(), orjson.dumps({"id": rid, "task": "sentiment", "text": f"{TEXTS[i % len(TEXTS)]} #{i}"})


def http(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


class Server:
    def __init__(self, model: SyntheticModel) -> None:
        self.root = model.base_url.removesuffix("/v1")
        self.base_url = model.base_url

    def window(self, seconds: float) -> tuple[float, float | None]:
        """Answers per second and p95 latency (ms) over the last `seconds`, as the server measured them."""
        lat = http(f"{self.root}/stats?window_s={seconds}")["latency"]
        return lat["answers"] / seconds, lat["p95_ms"]

    def slots(self, n: int) -> None:
        http(f"{self.root}/control", {"slots": n})


def sweep(server: Server, slots: int, seconds: float) -> tuple[float, float, int]:
    """Direct generator over a range of concurrencies; (best throughput, lowest p95 within 95% of it, and the
    number of callers that gave that p95)."""
    rows = []
    for c in sorted({max(1, slots // 2), slots * 3 // 4, slots, slots + slots // 8, slots * 5 // 4, slots * 3 // 2,
                     slots * 2}):
        asyncio.run(direct(server.base_url, c, seconds, lambda _: TEXT))
        rate, p95 = server.window(seconds - 1.0)  # the first second is warm-up
        rows.append((c, rate, p95 or 0.0))
        print(f"    direct, {c:3d} callers: {rate:6.1f} calls/s, p95 {p95:6.0f} ms")
    best = max(r for _, r, _ in rows)
    c, _, p95 = min((row for row in rows if row[1] >= 0.95 * best), key=lambda row: row[2])
    print(f"  ceiling at {slots} slots: {best:.1f} calls/s; p95 {p95:.0f} ms at {c} callers (the lowest p95 "
          "within 95% of the best throughput)")
    return best, p95, c


def worker_run(bench: Bench, model: SyntheticModel, server: Server, args: argparse.Namespace,
               best: tuple[float, float, int], best_after: tuple[float, float, int]) -> None:
    w = bench.worker(model.base_url, int(ENV_DEFAULTS["STREAMS_MAX_IN_FLIGHT"]))  # the default: no limit configured
    # Enough that the backlog outlasts the run (start-up, adaptation, both phases); the rest is left unread.
    n = int(best[0] * (args.seconds + 90) + best_after[0] * (args.seconds_after + 30))
    asyncio.run(produce(bench.bootstrap, w.topic("requests"), requests(n, "w")))
    proc = wait_ready(bench.child(w.process()), timeout_s=120)
    try:
        start = time.monotonic()
        while server.window(5.0)[0] < 1.0:  # until the worker's calls arrive
            time.sleep(0.5)
        time.sleep(20.0)  # adaptation from the initial limit
        time.sleep(max(0.0, args.seconds - 20.0 - 1.0))
        rate, p95 = server.window(args.seconds - 20.0)
        print(f"  worker at {args.slots} slots (default settings, {n} requests queued; {load()}):")
        print(f"    {rate:6.1f} msg/s = {rate / best[0]:.1%} of the ceiling; p95 {p95:.0f} ms = "
              f"{(p95 or 0) / best[1]:.2f}x the ceiling's; limit {limit_of(w.web_port, w.auth_headers)}")
        server.slots(args.slots_after)
        dropped = time.monotonic()
        print(f"  slots {args.slots} -> {args.slots_after} at t = {dropped - start:.0f} s:")
        recovered_at = None
        while time.monotonic() - dropped < args.seconds_after:
            time.sleep(5.0)
            rate, p95 = server.window(5.0)
            ratio = (p95 or 0) / best_after[1]
            print(f"    +{time.monotonic() - dropped:4.0f} s: {rate:6.1f} msg/s, p95 {p95:6.0f} ms = {ratio:.2f}x, "
                  f"limit {limit_of(w.web_port, w.auth_headers)}")
            if ratio <= RECOVERED and recovered_at is None:
                recovered_at = time.monotonic() - dropped
            elif ratio > RECOVERED:
                recovered_at = None
        rate, p95 = server.window(min(args.seconds_after, 20.0))
        print(f"    last {min(args.seconds_after, 20.0):.0f} s: {rate:.1f} msg/s = {rate / best_after[0]:.1%} of the "
              f"ceiling at {args.slots_after} slots; p95 {(p95 or 0) / best_after[1]:.2f}x its p95")
        print(f"    p95 within {RECOVERED}x of the new optimum (and staying) from "
              + (f"+{recovered_at:.0f} s after the drop" if recovered_at is not None else "never in the run"))
    finally:
        proc.stop()
        server.slots(args.slots)


def limit_of(port: int, headers: dict[str, str]) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            lines = resp.read().decode().splitlines()
    except OSError:
        return "?"
    return ", ".join(line.rsplit(" ", 1)[1] for line in lines
                     if line.startswith("llm_classify_model_concurrency_limit{")) or "?"


def fixed_run(bench: Bench, model: SyntheticModel, server: Server, args: argparse.Namespace,
              best: tuple[float, float, int]) -> None:
    """The same worker with its limit fixed by hand at the direct generator's best number of callers."""
    c = best[2]
    w = bench.worker(model.base_url, c, {"STREAMS_MIN_IN_FLIGHT": str(c)})
    asyncio.run(produce(bench.bootstrap, w.topic("requests"), requests(int(best[0] * (args.seconds + 60)), "f")))
    proc = wait_ready(bench.child(w.process()), timeout_s=120)
    try:
        while server.window(5.0)[0] < 1.0:
            time.sleep(0.5)
        time.sleep(args.seconds)
        rate, p95 = server.window(args.seconds - 20.0)
        print(f"  worker with the limit fixed by hand at {c} (STREAMS_MIN_IN_FLIGHT = STREAMS_MAX_IN_FLIGHT), at "
              f"{args.slots} slots ({load()}):")
        print(f"    {rate:6.1f} msg/s = {rate / best[0]:.1%} of the ceiling; p95 {p95:.0f} ms = "
              f"{(p95 or 0) / best[1]:.2f}x the ceiling's")
    finally:
        proc.stop()


def handwritten_run(bench: Bench, server: Server, args: argparse.Namespace, best: tuple[float, float, int]) -> None:
    tag = uuid.uuid4().hex[:8]
    src, dst, group = f"hand-{tag}.in", f"hand-{tag}.out", f"hand-{tag}"
    asyncio.run(create_topics(bench.bootstrap, [src, dst]))
    asyncio.run(produce(bench.bootstrap, src, requests(int(best[0] * (args.seconds + 60)), "h")))
    log = bench.workdir / f"hand-{tag}.log"
    proc = bench.child(handwritten(bench.bootstrap, src, dst, group, server.base_url, log))
    try:
        while server.window(5.0)[0] < 1.0:
            time.sleep(0.5)
        time.sleep(args.seconds)
        rate, p95 = server.window(args.seconds - 10.0)
        print(f"  hand-written aiokafka + openai, {HANDWRITTEN_CONCURRENCY} in flight, at {args.slots} slots "
              f"({load()}):")
        print(f"    {rate:6.1f} msg/s = {rate / best[0]:.1%} of the ceiling; p95 {p95:.0f} ms = "
              f"{(p95 or 0) / best[1]:.2f}x the ceiling's")
    finally:
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--slots-after", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--jitter-ms", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="worker run at the first capacity")
    parser.add_argument("--seconds-after", type=float, default=45.0, help="worker run after the drop")
    parser.add_argument("--sweep-seconds", type=float, default=6.0)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows as it happens
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp, EmbeddedBroker() as broker:
        bench = Bench(Path(tmp), broker)
        flags = ["--slots", str(args.slots), "--latency-ms", str(args.latency_ms),
                 "--latency-jitter-ms", str(args.jitter_ms)]
        with SyntheticModel(Path(tmp), *flags) as model:
            server = Server(model)
            print(f"== capacity mode: {args.slots} slots x {args.latency_ms:.0f} +/- {args.jitter_ms:.0f} ms, then "
                  f"{args.slots_after} slots; {PARTITIONS} partitions; {load()} ==")
            best = sweep(server, args.slots, args.sweep_seconds)
            server.slots(args.slots_after)
            best_after = sweep(server, args.slots_after, args.sweep_seconds)
            server.slots(args.slots)
            worker_run(bench, model, server, args, best, best_after)
            fixed_run(bench, model, server, args, best)
            handwritten_run(bench, server, args, best)


if __name__ == "__main__":
    main()
