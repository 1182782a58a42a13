"""The throughput benchmark's floors do what their figures claim (bench/README.md, Throughput).

Not timings: that the Faust floor forwards every record and commits behind it (with the model call, one
call per record, at the concurrency it names), and that the client floor makes exactly the calls it
counts, at the concurrency it names, against the real synthetic model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson

from bench.throughput import committed, create_topics, wait_committed
from streams.localdev.broker import EmbeddedBroker
from streams.localdev.processes import ChildProcess
from tests.integration.harness import REPO, Received, SyntheticModel, collect, produce, run, write_tasks


def _faust_floor(broker: EmbeddedBroker, workdir: Path,
                 extra_env: dict[str, str]) -> tuple[list[tuple[bytes, bytes]], list[Received], int]:
    """Run bench/faust_passthrough.py over 400 records: (sent, received, offsets committed)."""
    tag = uuid.uuid4().hex[:8]
    src, dst, group = f"floor{tag}.in", f"floor{tag}.out", f"floor{tag}"
    run(create_topics(broker.bootstrap, [src, dst]))
    sent = [(f"k{i}".encode(), orjson.dumps({"i": i})) for i in range(400)]
    run(produce(broker.bootstrap, src, sent))
    env = {"BENCH_BOOTSTRAP": broker.bootstrap, "BENCH_SOURCE": src, "BENCH_DEST": dst, "BENCH_GROUP": group,
           "BENCH_DATADIR": str(workdir / f"faust-{tag}"), **extra_env}
    proc = ChildProcess("faust floor", [sys.executable, str(REPO / "bench" / "faust_passthrough.py"), "worker",
                                        "--without-web", "-l", "warn"], workdir / f"faust-floor-{tag}.log",
                        env=os.environ | env)
    with proc:
        got = run(collect(broker.bootstrap, [dst], lambda g: len(g) >= len(sent), timeout_s=90))
        wait_committed(broker.bootstrap, group, src, len(sent), timeout_s=30, alive=proc.alive)
        done = run(committed(broker.bootstrap, group, src))
    return sent, got, done


def test_the_faust_floor_forwards_every_record_and_commits_behind_it(broker: EmbeddedBroker, workdir: Path) -> None:
    sent, got, done = _faust_floor(broker, workdir, {})
    assert sorted((r.key, r.value) for r in got) == sorted(sent), "every record copied once, key and value intact"
    assert done == len(sent), f"the group committed {done} of {len(sent)} offsets"


def test_the_faust_floor_with_the_model_call_makes_one_call_per_record(broker: EmbeddedBroker, workdir: Path) -> None:
    with SyntheticModel(workdir, "--latency-ms", "20") as model:
        tasks = write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic")
        sent, got, done = _faust_floor(broker, workdir, {"BENCH_TASKS": str(tasks), "BENCH_MAX_IN_FLIGHT": "16"})
        stats = model.stats()
    assert sorted((r.key, r.value) for r in got) == sorted(sent)
    assert done == len(sent), f"the group committed {done} of {len(sent)} offsets"
    assert stats["requests"] == len(sent), "one model call per record, before it is forwarded"
    assert 8 <= stats["max_in_flight_seen"] <= 16, stats


def test_the_client_floor_makes_the_calls_it_counts_at_the_concurrency_it_names(workdir: Path) -> None:
    with SyntheticModel(workdir, "--latency-ms", "20") as model:  # a delay, so overlapping calls show
        tasks = write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic")
        for via in ("openai", "model_client"):
            before = model.stats()["requests"]
            out = subprocess.run([sys.executable, str(REPO / "bench" / "client_floor.py"), "--tasks", str(tasks),
                                  "--n", "300", "--concurrency", "16", "--via", via],
                                 capture_output=True, text=True, timeout=120, check=True).stdout
            doc = orjson.loads(out.strip().splitlines()[-1])
            stats = model.stats()
            assert doc["via"] == via and doc["n"] == 300 and doc["concurrency"] == 16
            assert doc["rate"] > 0 and doc["cpu_us_per_call"] > 0
            assert stats["requests"] - before == 500 + 300, "500 warm-up calls, then the 300 it reports on"
            assert 8 <= stats["max_in_flight_seen"] <= 16, stats
