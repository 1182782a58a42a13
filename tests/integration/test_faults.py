"""Model faults and slow models on the real broker: nothing dropped, nothing unbounded."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson

from streams.localdev.broker import EmbeddedBroker
from tests.integration.harness import (
    FaultProxyProcess,
    SyntheticModel,
    Worker,
    collect,
    produce,
    run,
    wait_ready,
    write_tasks,
)


def _requests(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    return [(f"{prefix}{i}".encode(), orjson.dumps({"id": f"{prefix}{i}", "task": "sentiment",
                                                    "text": f"item {i} [[label={'fresh' if i % 3 else 'rotten'}]]"}))
            for i in range(n)]


def test_thirty_percent_model_faults_lose_nothing(broker: EmbeddedBroker, workdir: Path) -> None:
    """4,000 requests behind the fault proxy at 30% faults of every kind, 256 calls in flight: every request ends
    in a result or a review item (none lost, none dead-lettered), and the proxy really injected faults."""
    n = 4_000
    with SyntheticModel(workdir) as model, \
            FaultProxyProcess(workdir, model.base_url, "--fault-rate", "0.3", "--timeout-s", "3",
                              "--seed", "7") as proxy:
        # A fixed window of 256 (STREAMS_MIN_IN_FLIGHT): the adaptive limit would cut itself to one call at this
        # fault rate, and the test is about what faults do to requests, not about the limit.
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", proxy.base_url, model="synthetic"),
                        workdir, max_in_flight=256,
                        extra_env={"STREAMS_MODEL_TIMEOUT_S": "1.5", "STREAMS_MODEL_MAX_RETRIES": "4",
                                   "STREAMS_MIN_IN_FLIGHT": "256"})
        with worker.process():
            run(produce(broker.bootstrap, worker.topic("requests"), _requests(n, "x")))
            got = run(collect(broker.bootstrap, [worker.topic("results"), worker.topic("review"),
                                                 worker.topic("deadletter")],
                              lambda g: len({r.json().get("id") for r in g}) >= n, timeout_s=900, settle_s=2))
        faults = proxy.stats()
    ids = Counter(r.json()["id"] for r in got)
    outcome = Counter((r.json().get("decision") or "deadletter") + ":" + str(r.json().get("review_reason"))
                      for r in got)
    lost = {f"x{i}" for i in range(n)} - ids.keys()
    print(f"injected: {faults}")
    topics = Counter(r.topic.rsplit(".", 1)[-1] for r in got)
    print(f"sent {n}, results {topics['results']}, review {topics['review']}, dead letters {topics['deadletter']}, "
          f"by outcome {dict(outcome)}, duplicates {sum(c - 1 for c in ids.values())}, lost {len(lost)}")
    assert not lost, sorted(lost)[:10]
    injected = sum(v for k, v in faults.items() if k not in ("passed", "requests", "total") and isinstance(v, int))
    assert injected >= 0.2 * n, "the proxy really injected faults"
    assert all(r.json().get("decision") in ("auto", "review") for r in got), "model faults never dead-letter a request"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_slow_model_keeps_work_bounded_and_the_worker_in_its_group(broker: EmbeddedBroker, workdir: Path) -> None:
    """2 s per call, 16 in flight, 4000 queued: in flight never exceeds 16, memory stays flat, no rebalance."""
    limit, n = 16, 4000
    with SyntheticModel(workdir, "--latency-ms", "2000") as model:
        # A fixed window (STREAMS_MIN_IN_FLIGHT): from one call, the adaptive limit would need 10 answers of 2 s
        # before its first step, and the window would not be full within the 20 s.
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic"),
                        workdir, max_in_flight=limit, extra_env={"STREAMS_MIN_IN_FLIGHT": str(limit)})
        with worker.process() as proc:
            wait_ready(proc)
            assert proc.proc is not None
            run(produce(broker.bootstrap, worker.topic("requests"), _requests(n, "b")))
            peak_in_flight, rss = 0, []
            for _ in range(20):  # 20 s: five times the 4 s session timeout (harness.Worker)
                time.sleep(1)
                peak_in_flight = max(peak_in_flight, model.stats()["in_flight"])
                rss.append(_rss_mb(proc.proc.pid))
            done = model.stats()["requests"]
            log = proc.log_path.read_text(errors="replace")
    rebalances = log.count("Elected group leader") + log.count("Revoking previously assigned partitions") - 2
    print(f"injected: 2000 ms model latency, {n} requests queued, limit {limit}; counted: peak in flight "
          f"{peak_in_flight}, calls served {done} in 20 s, RSS {min(rss):.0f}..{max(rss):.0f} MB, "
          f"rebalances after the first {rebalances}")
    assert peak_in_flight <= limit, "in-flight work is bounded by STREAMS_MAX_IN_FLIGHT"
    assert done >= 0.8 * limit * 20 / 2.0 * 0.8, "and the window stays full (the model is the bottleneck)"
    assert max(rss[5:]) - min(rss[5:]) < 60, f"memory flat after warm-up: {rss}"
    assert rebalances == 0, "long model calls must not push the worker out of its group"
