"""The answer cache across two workers, on the real broker and the synthetic model (issue 15, item 4)."""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path
from typing import Any

import orjson

from streams.localdev.broker import EmbeddedBroker
from tests.integration.harness import (
    Received,
    SyntheticModel,
    Worker,
    collect,
    http_json,
    produce,
    run,
    scrape,
    total,
    wait_ready,
    write_tasks,
)

#: Fields a cached record may differ in from the fresh one: the id, the flag, and timing.
TIMING = ("id", "cached", "latency_ms", "processed_at")


def _ready(port: int) -> bool:
    try:
        return bool(http_json(f"http://127.0.0.1:{port}/readyz").get("ready"))
    except (urllib.error.URLError, OSError):
        return False


def _requests(ids: list[str], text_of: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(i.encode(), orjson.dumps({"id": i, "task": "sentiment", "text": text_of[i]})) for i in ids]


def _cache(port: int) -> tuple[float, dict[str, float]]:
    """(entries held, lookups by outcome) from a worker's /metrics."""
    m = scrape(port)
    entries = total(m.get("llm_classify_answer_cache_entries", {}))
    lookups = m.get("llm_classify_answer_cache_total", {})
    return entries, {o: total(lookups, outcome=o) for o in ("hit", "coalesced", "miss")}


def _by_id(got: list[Received]) -> dict[str, dict[str, Any]]:
    return {r.json()["id"]: r.json() for r in got}


def test_repeated_texts_across_two_workers_are_answered_once(broker: EmbeddedBroker, workdir: Path) -> None:
    """30 texts, then each again twice under new ids (landing on either worker): 30 model calls for 90
    requests, every repeat `cached: true` and equal to its first answer apart from id, flag and timing."""
    n, repeats = 30, 2
    texts = {f"o{i}": f"review {i}: {'great' if i % 2 else 'dull'} [[label={'fresh' if i % 2 else 'rotten'}]]"
             for i in range(n)}
    again = {f"r{k}-{i}": "  " + texts[f"o{i}"].replace(" ", "\n ") for k in range(repeats) for i in range(n)}
    with SyntheticModel(workdir, "--latency-ms", "20") as model:
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic"),
                        workdir, partitions=4)
        outputs = [worker.topic("results"), worker.topic("review")]
        first = worker.process()  # each process gets a web port of its own, set on the worker as it is made
        ports = [worker.web_port]
        second = worker.process()
        ports.append(worker.web_port)
        with first, second:  # started together, so the group forms once
            for proc in (first, second):
                wait_ready(proc)
            deadline = time.monotonic() + 30
            while not all(_ready(p) for p in ports):  # both hold partitions, no rebalance under way
                assert time.monotonic() < deadline, "the two workers did not settle"
                time.sleep(0.3)
            run(produce(broker.bootstrap, worker.topic("requests"), _requests(list(texts), texts)))
            fresh = _by_id(run(collect(broker.bootstrap, outputs, lambda g: len(g) >= n, timeout_s=30, settle_s=0)))
            deadline = time.monotonic() + 15
            while not all(_cache(p)[0] >= n for p in ports):  # each worker holds every answer, its own or shared
                assert time.monotonic() < deadline, f"answers not shared: {[_cache(p) for p in ports]}"
                time.sleep(0.2)
            run(produce(broker.bootstrap, worker.topic("requests"), _requests(list(again), again)))
            got = _by_id(run(collect(broker.bootstrap, outputs, lambda g: len(g) >= n + len(again), timeout_s=30,
                                     settle_s=0.5)))
            per_worker = [_cache(p)[1] for p in ports]
        calls = model.stats()["requests"]
    print(f"requests {n + len(again)}, model calls {calls}, lookups per worker {per_worker}")
    assert set(got) == set(texts) | set(again)
    assert calls == n, f"{calls} model calls for {n} distinct texts"
    assert not any(got[i]["cached"] for i in texts) and all(got[i]["cached"] for i in again)
    assert all(w["miss"] > 0 and w["hit"] > 0 for w in per_worker), \
        f"each worker answered repeats of texts, some first seen by the other: {per_worker}"
    assert sum(w["hit"] for w in per_worker) == len(again)
    for rid in again:
        original = fresh[f"o{rid.split('-')[1]}"]
        cached = {k: v for k, v in got[rid].items() if k not in (*TIMING, "text")}
        assert cached == {k: v for k, v in original.items() if k not in (*TIMING, "text")}, rid
