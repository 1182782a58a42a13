"""Many model calls in flight at once, and offsets committed only behind finished outputs."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import orjson

from streams.localdev.broker import EmbeddedBroker
from tests.integration.harness import (
    Received,
    SyntheticModel,
    Worker,
    collect,
    kill_with_calls_in_flight,
    produce,
    run,
    write_tasks,
)


def _requests(n: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = rng.choice(["fresh", "rotten"])
        out.append((f"c{i}".encode(), orjson.dumps({"id": f"c{i}", "task": "sentiment",
                                                     "text": f"item {i} [[label={label}]]"})))
    return out


def test_model_calls_overlap_against_a_slow_endpoint(broker: EmbeddedBroker, workdir: Path) -> None:
    """With 500 ms per call, one-at-a-time would take 32 s for 64 items; the endpoint must see overlap."""
    with SyntheticModel(workdir, "--latency-ms", "500") as model:
        # A fixed window of 32 (STREAMS_MIN_IN_FLIGHT): what is checked is that the worker overlaps its calls up to
        # its window, not how fast the adaptive limit grows from one call (tests/unit/test_concurrency.py).
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic"),
                        workdir, max_in_flight=32, extra_env={"STREAMS_MIN_IN_FLIGHT": "32"})
        with worker.process():
            run(produce(broker.bootstrap, worker.topic("requests"), _requests(64)))
            got = run(collect(broker.bootstrap, [worker.topic("results"), worker.topic("review")],
                              lambda g: len(g) >= 64, timeout_s=120))
        stats = model.stats()
    print(f"synthetic endpoint stats: {stats}")
    assert Counter(r.json()["id"] for r in got) == Counter(f"c{i}" for i in range(64))
    assert stats["max_in_flight_seen"] >= 16, "the worker must keep many calls in flight, not await one at a time"
    assert stats["max_in_flight_seen"] <= 32, "and never more than STREAMS_MAX_IN_FLIGHT"


#: What docs/RELIABILITY.md claims for the kill below: at least this many model calls in flight at the kill.
CLAIMED_IN_FLIGHT_AT_KILL = 60


def test_nothing_is_lost_when_the_worker_is_killed_mid_stream(broker: EmbeddedBroker, workdir: Path) -> None:
    """Calls finish out of order (random latency); kill -9 mid-stream with 60+ calls in flight, restart: every
    id still arrives, and the calls the kill cut off were made again.

    Offsets are committed only behind the contiguous prefix of published outputs, so whatever was in
    flight at the kill is replayed (duplicates allowed, identical classification).
    """
    n = 300
    # Latencies well past the 1 s commit interval, so an early ack would be committed before its output exists.
    with SyntheticModel(workdir, "--latency-ms", "2000", "--latency-jitter-ms", "1800", "--seed", "3") as model:
        # A fixed window of 64 (STREAMS_MIN_IN_FLIGHT): the adaptive limit starts at one call and doubles only after
        # a window of at least 10 answers (~2 s each here), so it would reach 60 calls in flight late in the stream.
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic"),
                        workdir, max_in_flight=64, partitions=4, extra_env={"STREAMS_MIN_IN_FLIGHT": "64"})
        out_topics = [worker.topic("results"), worker.topic("review")]
        run(produce(broker.bootstrap, worker.topic("requests"), _requests(n, seed=2)))
        first = worker.process().start()
        first_port = worker.web_port
        # Wait until part of the stream is out, then crash the worker with calls in flight.
        seen = run(collect(broker.bootstrap, out_topics, lambda g: len(g) >= n // 3, timeout_s=120, settle_s=0))
        # Kill once the endpoint has the claimed number of calls open (it normally already has).
        in_flight_at_kill, worker_in_flight = kill_with_calls_in_flight(
            first, model, first_port, lambda endpoint, _: endpoint, CLAIMED_IN_FLIGHT_AT_KILL)
        killed_after = len(seen)
        print(f"model calls in flight at kill: {in_flight_at_kill} at the endpoint, {worker_in_flight:.0f} in the "
              f"worker's gauge; outputs seen before kill {killed_after}")
        assert in_flight_at_kill >= CLAIMED_IN_FLIGHT_AT_KILL, (
            f"only {in_flight_at_kill} model calls in flight at the kill; the claim is "
            f"{CLAIMED_IN_FLIGHT_AT_KILL}+ (was the worker idle?)")
        time.sleep(1)
        with worker.process():
            got: list[Received] = run(collect(broker.bootstrap, out_topics,
                                              lambda g: {r.json()["id"] for r in g} >= {f"c{i}" for i in range(n)},
                                              timeout_s=180, settle_s=2))
        served = model.stats()["requests"]
    ids = Counter(r.json()["id"] for r in got)
    missing = {f"c{i}" for i in range(n)} - ids.keys()
    duplicates = sum(c - 1 for c in ids.values())
    print(f"sent {n}, outputs before kill {killed_after}, model calls in flight at kill {in_flight_at_kill}, "
          f"outputs total {len(got)}, duplicates {duplicates}, lost {len(missing)}, model calls served {served}")
    assert not missing, f"lost after kill -9: {sorted(missing)[:10]}"
    # Replay: the restarted worker classified again what the first had read but not committed. Each output
    # follows one model call, so a replay shows as ids with two outputs and as more calls than requests.
    assert duplicates > 0, "no id was output twice: nothing was replayed after the restart"
    assert served > n, f"the model answered {served} calls for {n} requests: nothing was called again"
    by_id: dict[str, set[tuple]] = {}
    for r in got:
        p = r.json()
        by_id.setdefault(p["id"], set()).add((p["label"], p["decision"], p["confidence"]))
    assert all(len(v) == 1 for v in by_id.values()), "a replayed request gets the same classification"
