"""Nothing lost when workers die: repeated kill -9 on a 20k stream, and a partition handoff between two workers."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from streams.localdev.broker import EmbeddedBroker
from tests.integration.harness import (
    Received,
    SyntheticModel,
    Worker,
    collect,
    produce,
    run,
    scrape,
    total,
    wait_ready,
    write_tasks,
)


def _at_least(count: float) -> Callable[[list[Received]], bool]:
    """`collect`'s stop condition: at least `count` records received."""
    return lambda got: len(got) >= count


def _requests(n: int, prefix: str, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [(f"{prefix}{i}".encode(),
             orjson.dumps({"id": f"{prefix}{i}", "task": "sentiment",
                           "text": f"item {i} [[label={rng.choice(['fresh', 'rotten'])}]]"}))
            for i in range(n)]


def _locate(bootstrap: str, topics: list[str], ids: set[str]) -> list[str]:
    """Where these ids lie on the topics, read again from the start by a fresh consumer."""
    everything = run(collect(bootstrap, topics, lambda g: False, timeout_s=15, settle_s=0))
    return [f"{r.topic}[{r.partition}]@{r.offset}" for r in everything if r.key and r.key.decode() in ids]


#: Worker log lines that tell a rebalance's story: membership, revocation, recovery, stalls, failures.
_STORY = re.compile(r"Joined group|synced group|Revoking|Worker\]: Ready|wait_empty|Recovery|rebalance|"
                    r"WARNING|ERROR|CRITICAL|Traceback|classified so far")


def _worker_stories(worker: Worker, lines: int = 60) -> str:
    """The last lines of each run's log that tell what the group did, for a failure to name its cause."""
    out = []
    for log in sorted(worker.workdir.glob(f"worker-{worker.app_id}-*.log")):
        story = [ln[:240] for ln in log.read_text(errors="replace").splitlines() if _STORY.search(ln)]
        out.append(f"--- {log.name} ({len(story)} lines of note, last {lines}):\n" + "\n".join(story[-lines:]))
    return "\n".join(out)


def _check(got: list[Received], ids: set[str], injected: str, worker: Worker | None = None) -> None:
    seen = Counter(r.json()["id"] for r in got)
    lost = ids - seen.keys()
    if lost and worker is not None:  # a lost id: was it never consumed, never produced, or not read back?
        where = _locate(worker.bootstrap, [worker.topic(t) for t in ("requests", "results", "review")], lost)
        print(f"lost ids {sorted(lost)[:10]} found again at: {where[:20]}")
        print(_worker_stories(worker))
    dup = sum(c - 1 for c in seen.values())
    by_id: dict[str, set[tuple]] = {}
    for r in got:
        p = r.json()
        by_id.setdefault(p["id"], set()).add((p["label"], p["decision"], p["confidence"]))
    differing = sum(len(v) > 1 for v in by_id.values())
    topics = Counter(r.topic.rsplit(".", 1)[-1] for r in got)
    print(f"injected: {injected}; sent {len(ids)}, results {topics['results']}, review {topics['review']}, "
          f"dead letters {topics['deadletter']}, distinct ids {len(seen)}, duplicates {dup}, "
          f"differing duplicates {differing}, lost {len(lost)}")
    assert not lost, f"lost {len(lost)}: {sorted(lost)[:10]}"
    assert differing == 0, "a replayed request must get the same classification"


def test_repeated_kill_9_on_a_20k_stream_loses_nothing(broker: EmbeddedBroker, workdir: Path) -> None:
    n, kills = 20_000, 3
    rng = random.Random(11)
    with SyntheticModel(workdir, "--latency-ms", "20", "--latency-jitter-ms", "15") as model:
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic"),
                        workdir, partitions=4, max_in_flight=256)
        outputs = [worker.topic("results"), worker.topic("review")]
        run(produce(broker.bootstrap, worker.topic("requests"), _requests(n, "k", seed=1)))
        points = sorted(rng.uniform(0.1, 0.8) for _ in range(kills))
        for share in points:  # kill -9 at random points while calls are in flight
            proc = wait_ready(worker.process().start())
            run(collect(broker.bootstrap, outputs, _at_least(share * n), timeout_s=300, settle_s=0))
            time.sleep(rng.uniform(0, 0.5))
            proc.kill()
        with worker.process():
            got = run(collect(broker.bootstrap, outputs,
                              lambda g: len({r.json()["id"] for r in g}) >= n, timeout_s=400, settle_s=2))
    _check(got, {f"k{i}" for i in range(n)}, f"{kills} x kill -9 at {[f'{p:.0%}' for p in points]} of outputs",
           worker)


def _classified(worker_port: int) -> float:
    """Requests this worker has classified, from its own /metrics."""
    return total(scrape(worker_port).get("llm_classify_requests_total", {}))


def test_killing_one_of_two_workers_hands_its_partitions_to_the_other(broker: EmbeddedBroker, workdir: Path) -> None:
    """Two handoffs mid-stream: a second worker joins while the first has calls in flight, classifies its
    share, and dies by kill -9 with calls in flight; the first takes everything back."""
    n = 3000
    with SyntheticModel(workdir, "--latency-ms", "100") as model:
        # 8 calls of 100 ms at once: about 80 requests/s per worker, so the stream outlasts both joins.
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic"),
                        workdir, partitions=8, max_in_flight=8)
        outputs = [worker.topic("results"), worker.topic("review")]
        survivor = wait_ready(worker.process().start())
        survivor_port = worker.web_port
        victim = worker.process()
        try:
            run(produce(broker.bootstrap, worker.topic("requests"), _requests(n, "h", seed=2)))
            run(collect(broker.bootstrap, outputs, lambda g: len(g) >= 100, timeout_s=120, settle_s=0))
            victim_port = worker.web_port
            wait_ready(victim.start())
            victim.wait_until(lambda: _classified(victim_port) >= 100, timeout_s=120)
            at_kill = _classified(victim_port) + _classified(survivor_port)
            victim.kill()
            got = run(collect(broker.bootstrap, outputs, lambda g: len({r.json()["id"] for r in g}) >= n,
                              timeout_s=240, settle_s=2))
            assert survivor.alive(), "the surviving worker keeps running through both rebalances"
        finally:
            survivor.stop()
            victim.stop()
    print(f"classified by both workers when the victim was killed: {at_kill:.0f} of {n}")
    assert at_kill < n * 0.8, "the victim must die mid-stream, with work left to hand over"
    _check(got, {f"h{i}" for i in range(n)}, "a worker joins mid-stream, then is killed with -9", worker)
