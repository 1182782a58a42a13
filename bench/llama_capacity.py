"""The local llama.cpp server (4 slots) under a backlog of long texts: the default worker against fixed limits.

    python bench/llama_capacity.py                      # 600 texts by default, then 150 per fixed limit
    python bench/llama_capacity.py --n 600 --fixed 1,2,4,8 --fixed-n 150

Each run is a real worker (`python -m streams worker`) on the embedded broker, the project's
`movie_sentiment` task (config/tasks.toml) and the local Gemma 3 270M served by llama.cpp with 4 slots
(`streams/localdev/model_server.py`). The texts are three Rotten Tomatoes snippets joined (about 340
characters), each request a distinct text (distinct across runs too: llama.cpp caches evaluated prompts),
queued before the worker starts. A warm-up run comes first (60 texts at a fixed 4, printed, not compared): a
fresh server's first minutes are slower, and whichever run came first paid for them. Then the worker with every
setting at its default (adaptive in-flight limit up to 64), then the same worker with the limit fixed by
hand (`STREAMS_MIN_IN_FLIGHT = STREAMS_MAX_IN_FLIGHT = c`). For each: throughput from the outputs'
timestamps (first to last), items sent to review as `model_error`, the openai client's retries and the
model errors by kind from the worker's /metrics, and the limit it settled on. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import Bench, load, output_timestamps, produce, rate  # noqa: E402
from streams.localdev.broker import EmbeddedBroker  # noqa: E402
from streams.localdev.model_server import LocalModelServer  # noqa: E402
from streams.localdev.sample_data import load_reviews  # noqa: E402
from streams.settings import ENV_DEFAULTS  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402
from tests.integration.harness import Worker, collect, scrape, total, wait_ready  # noqa: E402

TASK = "movie_sentiment"
OUTPUTS = ("results", "review", "deadletter")


def long_texts(n: int) -> list[str]:
    snippets = [r.text for r in load_reviews(3 * n, seed=11)]
    return [" ".join(snippets[3 * i:3 * i + 3]) for i in range(n)]


def requests(texts: list[str], prefix: str) -> Iterator[tuple[bytes, bytes]]:
    for i, text in enumerate(texts):
        rid = f"{prefix}{i}"
        yield rid.encode(), orjson.dumps({"id": rid, "task": TASK, "text": text})


def one_run(bench: Bench, model: LocalModelServer, texts: list[str], fixed: int | None, timeout_s: float,
            name: str = "") -> None:
    defaults = {k: ENV_DEFAULTS[k] for k in ("STREAMS_MODEL_TIMEOUT_S", "STREAMS_MODEL_MAX_RETRIES")}
    extra = {"MODEL_BASE_URL": model.base_url} | defaults  # the harness shortens retries for tests
    if fixed is not None:
        extra |= {"STREAMS_MIN_IN_FLIGHT": str(fixed), "STREAMS_MAX_IN_FLIGHT": str(fixed)}
    w = Worker(bench.bootstrap, REPO / "config" / "tasks.toml", bench.workdir, partitions=4, extra_env=extra)
    if fixed is None:  # the harness sets a limit of its own; the point here is the default
        w.max_in_flight = int(ENV_DEFAULTS["STREAMS_MAX_IN_FLIGHT"])
    asyncio.run(ensure_topics(w.settings))
    tag = uuid.uuid4().hex[:6]
    asyncio.run(produce(bench.bootstrap, w.topic("requests"), requests(texts, tag), partitions=4))
    before = load()
    started = time.monotonic()
    proc = wait_ready(bench.child(w.process()), timeout_s=180)
    try:
        got = asyncio.run(collect(bench.bootstrap, [w.topic(t) for t in OUTPUTS],
                                  lambda rs: len({r.json().get("id") for r in rs}) >= len(texts), timeout_s))
        metrics = scrape(w.web_port)
    finally:
        proc.stop()
    elapsed = time.monotonic() - started
    docs = [r.json() for r in got]
    model_errors = sum(d.get("review_reason") == "model_error" for d in docs)
    stamps = asyncio.run(output_timestamps(bench.bootstrap, [w.topic(t) for t in OUTPUTS], len(docs)))
    errors = {dict(k).get("kind", "?"): int(v) for k, v in metrics.get("llm_classify_model_errors_total", {}).items()}
    limit = [round(v, 1) for v in metrics.get("llm_classify_model_concurrency_limit", {}).values()]
    name = name or ("default (adaptive, max 64)" if fixed is None else f"fixed limit {fixed}")
    print(f"  {name:27s}: {rate(stamps):5.2f} items/s over {len(docs)}/{len(texts)} outputs; model_error "
          f"{model_errors}; retries {total(metrics.get('llm_classify_model_retries_total', {})):.0f}; errors "
          f"{errors or 0}; limit at the end {limit}; {elapsed:.0f} s; {before}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="texts for the default worker")
    parser.add_argument("--fixed", default="1,2,4,8", help="fixed limits to try by hand")
    parser.add_argument("--fixed-n", type=int, default=150, help="texts for each fixed limit")
    parser.add_argument("--skip-default", action="store_true")
    parser.add_argument("--warmup-n", type=int, default=60,
                        help="texts through a worker at a fixed 4 before the runs compared, not compared")
    args = parser.parse_args()
    limits = [int(x) for x in args.fixed.split(",") if x]
    # Every run gets texts of its own: llama.cpp keeps evaluated prompts in a host-memory cache, so a text
    # seen in an earlier run would be answered faster and flatter the later run.
    texts = long_texts(args.warmup_n + args.n + len(limits) * args.fixed_n)
    warmup, texts = texts[:args.warmup_n], texts[args.warmup_n:]
    mean_chars = sum(map(len, texts)) / len(texts)
    with tempfile.TemporaryDirectory(prefix="bench-llama-") as tmp, EmbeddedBroker() as broker, \
            LocalModelServer(log_path=Path(tmp) / "model.log") as model:
        bench = Bench(Path(tmp), broker)
        print(f"== local llama.cpp (Gemma 3 270M, 4 slots), {TASK}, texts of {mean_chars:.0f} characters on "
              f"average ==", flush=True)
        if warmup:  # a fresh server's first minutes are slower (measured: bench/README.md); no run pays them
            one_run(bench, model, warmup, 4, timeout_s=60 + 10.0 * len(warmup), name="warm-up, not compared")
        if not args.skip_default:
            one_run(bench, model, texts[:args.n], None, timeout_s=60 + 10.0 * args.n)
        for i, c in enumerate(limits):
            start = args.n + i * args.fixed_n
            one_run(bench, model, texts[start:start + args.fixed_n], c, timeout_s=60 + 10.0 * args.fixed_n)


if __name__ == "__main__":
    main()
