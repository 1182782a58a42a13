"""The answer cache (issue 15, item 4): model calls per request on a stream with repeated texts, and whether cached
results equal fresh ones. Prints figures and PASS/FAIL; asserts nothing.

    python bench/answer_cache.py [--requests 3000] [--repeat-share 0.3] [--in-flight 64] [--latency-ms 20]

The stream: `--requests` requests, of which `--repeat-share` repeat the text of an earlier request (chosen
uniformly among those before it, under a new id, with its whitespace changed), in random order. Each
request goes through the worker's own classify path (`Classifier.process`: method, answer cache, calibrator,
routing, record) with `--in-flight` requests at once, against the synthetic model over HTTP through the
worker's `ModelClient`; the model server counts the calls. No broker: the cache shared between workers is
covered by tests/integration/test_answer_cache.py.

The same stream runs twice per task: without the cache (every request calls the model: the fresh records)
and with it. Every record with the cache must equal the fresh record of the same id, apart from `cached`,
`latency_ms`, `processed_at` (a review item's own `text`, and `usage.cached_tokens`, the server's
prefix-cache state at the call). A fitted temperature-scaling calibrator is in
force in both runs, so equal records also mean hits were calibrated as fresh answers are. Tasks:

- `fixed`: first-token scoring at temperature 0 (the cache is on by default): the acceptance row;
- `shuffled`: the same with `option_order = "shuffled"` and letter codes over 3 labels: a repeat hits only
  when its id draws the same order as an earlier occurrence (1 in 3! per pair);
- `sampled`: temperature 0.7 (the cache is off by default): every request calls.

Also printed: the cost of a lookup (key + get, a hit) and the memory one entry holds (tracemalloc).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streams.calibration.calibrators import TemperatureScaling  # noqa: E402
from streams.calibration.store import calibrator_record  # noqa: E402
from streams.classify.answer_cache import AnswerCache  # noqa: E402
from streams.classify.model_client import ModelClient  # noqa: E402
from streams.classify.records import Source  # noqa: E402
from streams.classify.service import Classifier  # noqa: E402
from streams.confidence.methods.base import MethodResult  # noqa: E402
from streams.confidence.names import FIRST_TOKEN  # noqa: E402
from streams.localdev.synthetic_model import SyntheticConfig, SyntheticModelServer  # noqa: E402
from streams.tasks import TaskRegistry, parse_tasks  # noqa: E402

LABELS = ("fresh", "rotten", "mixed")
TARGET = 0.72
#: Fields a cached record may differ in from the fresh one.
TIMING = ("cached", "latency_ms", "processed_at", "text")


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """The record less `TIMING` and `usage.cached_tokens`: the prompt tokens the server found in its prefix
    cache depend on what it served just before, so two calls of one prompt report different numbers."""
    out = {k: v for k, v in record.items() if k not in TIMING}
    out["usage"] = {k: v for k, v in out["usage"].items() if k != "cached_tokens"}
    return out


def tasks_toml(base_url: str) -> str:
    model = f'[task.model]\nbase_url = "{base_url}"\nname = "synthetic"\n'
    routing = "[task.routing]\nreview_threshold = 0.6\n"
    labels = f"labels = {orjson.dumps(list(LABELS)).decode()}\n"
    return (f'[[task]]\nname = "fixed"\n{labels}{model}{routing}'
            f'[[task]]\nname = "shuffled"\n{labels}codes = "letters"\n{model}{routing}'
            '[task.prompt]\noption_order = "shuffled"\n'
            f'[[task]]\nname = "sampled"\n{labels}{model}temperature = 0.7\n{routing}')


def stream(n: int, repeat_share: float, seed: int) -> list[tuple[str, str, int]]:
    """(id, text, index of the text's first request) per request; exactly round(n * share) repeats."""
    rng = random.Random(seed)
    repeats = round(n * repeat_share)
    kinds = ["new", *rng.sample(["new"] * (n - repeats - 1) + ["repeat"] * repeats, n - 1)]
    out: list[tuple[str, str, int]] = []
    for i, kind in enumerate(kinds):
        if kind == "new":
            marker = rng.choice([*LABELS, None])
            text = f"review {i}: words {rng.random():.6f}" + (f" [[label={marker}]]" if marker else "")
            out.append((f"q{i}", text, i))
        else:
            _, text, first = out[rng.randrange(i)]
            out.append((f"q{i}", "  " + text.replace(" ", "\n", 1), first))
    return out


def calibrator(task: str) -> dict[str, Any]:
    """A temperature-scaling calibrator fitted on synthetic rows, as the calibrators topic would deliver it."""
    rng = np.random.default_rng(1)
    p = rng.dirichlet([2.0] * len(LABELS), size=600)
    y = np.array([rng.choice(len(LABELS), p=row ** 0.5 / (row ** 0.5).sum()) for row in p])
    cal = TemperatureScaling().fit(p, y)
    m = {"ece": 0.0, "brier": 0.0, "nll": 0.0}
    return calibrator_record(task, FIRST_TOKEN, "synthetic", LABELS, cal, 600, 0, m, m, "bench")


def counting(seen: Counter[str]) -> Callable[[str, str], None]:
    """An answer-cache observer counting lookups by outcome."""
    return lambda _, outcome: seen.update([outcome])


async def run_stream(classifier: Classifier, task: str, requests: list[tuple[str, str, int]],
                     in_flight: int) -> dict[str, dict[str, Any]]:
    """Every request through `Classifier.process`, `in_flight` at once, submitted in stream order."""
    slots = asyncio.Semaphore(in_flight)
    records: dict[str, dict[str, Any]] = {}

    async def one(i: int, rid: str, text: str) -> None:
        try:
            raw = orjson.dumps({"id": rid, "task": task, "text": text})
            outs = await classifier.process(raw, rid.encode(), Source("bench", 0, i))
            records[rid] = orjson.loads(outs[0].value)
        finally:
            slots.release()

    pending = []
    for i, (rid, text, _) in enumerate(requests):
        await slots.acquire()
        pending.append(asyncio.create_task(one(i, rid, text)))
    await asyncio.gather(*pending)
    return records


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    config = SyntheticConfig(labels=list(LABELS), label_probs=[0.5, 0.3, 0.2], latency_ms=args.latency_ms,
                             latency_jitter_ms=args.latency_ms / 2, seed=7)
    rows = []
    async with SyntheticModelServer(config) as server:
        tasks: TaskRegistry = parse_tasks(tasks_toml(server.base_url), "bench", env={})
        requests = stream(args.requests, args.repeat_share, args.seed)
        distinct = len({first for _, _, first in requests})
        for task in tasks.tasks:
            installed = calibrator(task)  # one record, so both runs name the same calibrator version
            runs: dict[str, tuple[int, dict[str, dict[str, Any]], Counter[str]]] = {}
            for mode in ("fresh", "cached"):
                # A fixed window (min = max): adaptive concurrency is not what is measured here.
                model = ModelClient(30.0, 2, max_in_flight=args.in_flight, min_in_flight=args.in_flight)
                seen: Counter[str] = Counter()
                answers = AnswerCache(args.entries, 3600.0, observe=counting(seen)) if mode == "cached" else None
                classifier = Classifier(tasks, model, 100_000, 1024, answers=answers)
                assert classifier.calibrators.apply(installed)
                before = server.stats()["requests"]
                records = await run_stream(classifier, task, requests, args.in_flight)
                await model.close()
                runs[mode] = (server.stats()["requests"] - before, records, seen)
            fresh_calls, fresh, _ = runs["fresh"]
            calls, cached, seen = runs["cached"]
            hits = [rid for rid, r in cached.items() if r["cached"]]
            equal = sum(1 for rid in cached if comparable(cached[rid]) == comparable(fresh[rid]))
            rows.append({"task": task, "requests": len(requests), "distinct": distinct, "fresh_calls": fresh_calls,
                         "calls": calls, "per_request": calls / len(requests), "hits": len(hits),
                         "coalesced": seen["coalesced"], "equal": equal,
                         "caches": tasks.tasks[task].caches_answers})
    return rows


def lookup_cost(n: int = 20_000) -> tuple[float, float]:
    """(microseconds per key + hit, bytes per entry) for a 3-label first-token answer and 200-character texts."""
    task = parse_tasks(tasks_toml("http://127.0.0.1:1/v1"), "bench", env={}).tasks["fixed"]
    texts = [f"review {i}: " + "words " * 32 for i in range(n)]
    result = MethodResult(FIRST_TOKEN, np.array([0.5, 0.3, 0.2]), 0.98, requests=1, prompt_tokens=60,
                          completion_tokens=1, latency_ms=20.0, chosen_logprob=-0.7)
    cache = AnswerCache(n, 3600.0)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i, text in enumerate(texts):
        raw = np.array([0.5, 0.3, 0.2])  # an array of its own per entry, as each call's result has
        cache.put(cache.key(task, FIRST_TOKEN, text, f"r{i}"), "fixed", MethodResult(**{**result.__dict__, "raw": raw}))
    per_entry = (tracemalloc.get_traced_memory()[0] - base) / n
    tracemalloc.stop()
    started = time.perf_counter()
    for i, text in enumerate(texts):
        assert cache.get(cache.key(task, FIRST_TOKEN, text, f"h{i}")) is not None
    return (time.perf_counter() - started) / n * 1e6, per_entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeat-share", type=float, default=0.3)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--entries", type=int, default=50_000, help="STREAMS_ANSWER_CACHE_ENTRIES")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    rows = asyncio.run(measure(args))
    print(f"stream: {args.requests} requests, {args.repeat_share:.0%} repeating an earlier text, "
          f"{args.in_flight} in flight, synthetic model {args.latency_ms:g} ms +/- {args.latency_ms / 2:g}")
    print("| task | cache | requests | distinct texts | model calls without cache | model calls with cache | "
          "calls per request | cached (of which coalesced) | cached records equal to fresh |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {'on' if r['caches'] else 'off (samples)'} | {r['requests']} | {r['distinct']} | "
              f"{r['fresh_calls']} | {r['calls']} | {r['per_request']:.3f} | {r['hits']} ({r['coalesced']}) | "
              f"{r['equal']} of {r['requests']} |")
    fixed = next(r for r in rows if r["task"] == "fixed")
    ok_calls = fixed["per_request"] <= TARGET
    ok_equal = all(r["equal"] == r["requests"] for r in rows)
    print(f"acceptance: at most {TARGET} model calls per request with {args.repeat_share:.0%} repeats: "
          f"{fixed['per_request']:.3f} {'PASS' if ok_calls else 'FAIL'}; cached results equal the fresh ones: "
          f"{'PASS' if ok_equal else 'FAIL'}")
    shuffled = next(r for r in rows if r["task"] == "shuffled")
    expected = expected_shuffled_calls(args, math.factorial(len(LABELS)))
    print(f"shuffled order, 3 labels: a repeat hits only under the same drawn order; "
          f"{shuffled['per_request']:.3f} calls per request (about {expected:.3f} expected)")
    us, per_entry = lookup_cost()
    print(f"a hit costs {us:.1f} us (key: NFC, whitespace, BLAKE2b; LRU get) for a 200-character text; "
          f"one entry holds about {per_entry / 1024:.2f} KiB (3 labels): {args.entries} entries about "
          f"{args.entries * per_entry / 2**20:.0f} MiB")
    return 0


def expected_shuffled_calls(args: argparse.Namespace, orders: int) -> float:
    """Calls per request on the same stream if each request's order were uniform over `orders`: a text's
    j-th occurrence calls unless an earlier one drew its order."""
    requests = stream(args.requests, args.repeat_share, args.seed)
    counts: dict[int, int] = {}
    for _, _, first in requests:
        counts[first] = counts.get(first, 0) + 1
    calls = sum(sum((1 - 1 / orders) ** j for j in range(c)) for c in counts.values())
    return calls / len(requests)


if __name__ == "__main__":
    sys.exit(main())
