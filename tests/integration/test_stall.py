"""The stalled-partition alarm, both sides on one worker: quiet while it works through a deep backlog (one
partition standing still behind a stuck call all along), then raised for that partition, and only that one,
within STREAMS_STALL_AFTER_S (plus a sampling period) of the backlog draining."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from streams.localdev.broker import EmbeddedBroker
from tests.integration.harness import (
    SyntheticModel,
    Worker,
    collect,
    produce,
    run,
    scrape,
    wait_ready,
    write_tasks,
)

AFTER_S = 10.0
SAMPLE_S = 5.0  # streams/ops/agents.py samples lag and stalls every 5 s


def _stalled(port: int) -> set[int]:
    series = scrape(port).get("llm_classify_partition_stalled", {})
    return {int(dict(labels)["partition"]) for labels, v in series.items() if v >= 1}


def test_stall_alarm_stays_quiet_through_a_backlog_and_fires_for_a_stuck_partition(broker: EmbeddedBroker,
                                                                                     workdir: Path) -> None:
    n = 200
    # 4 calls of 400 ms at once, one of them the stuck one: at most 7.5 requests/s, so the backlog lasts at least
    # 26 s, above the AFTER_S + 2 * SAMPLE_S (20 s) that side 1 asserts. The window is fixed at 4
    # (STREAMS_MIN_IN_FLIGHT): the adaptive limit starts at one call and grows only on answers, which the stuck
    # call, once it holds that one call, never gives.
    with SyntheticModel(workdir, "--latency-ms", "400") as model:
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic"),
                        workdir, partitions=4, max_in_flight=4,
                        extra_env={"STREAMS_STALL_AFTER_S": str(AFTER_S), "STREAMS_MODEL_TIMEOUT_S": "600",
                                   "STREAMS_STOP_GRACE_S": "0", "STREAMS_MIN_IN_FLIGHT": "4"})
        requests = worker.topic("requests")
        hang = [(b"stuck", orjson.dumps({"id": "stuck", "task": "sentiment", "text": "never answered [[hang]]"}))]
        rest = [(f"b{i}".encode(), orjson.dumps({"id": f"b{i}", "task": "sentiment", "text": f"item {i}"}))
                for i in range(n)]
        run(produce(broker.bootstrap, requests, hang + rest))
        where = run(collect(broker.bootstrap, [requests], lambda g: any(r.key == b"stuck" for r in g),
                            timeout_s=30, settle_s=0))
        stuck = next(r.partition for r in where if r.key == b"stuck")
        outputs = [worker.topic("results"), worker.topic("review")]
        with worker.process() as proc:
            wait_ready(proc)
            port = worker.web_port
            # Side 1: the backlog. The stuck partition stands still all along (its first request never
            # returns), yet the worker is busy: no alarm.
            started = time.monotonic()
            during: list[tuple[float, set[int]]] = []
            done_at = None
            while time.monotonic() - started < 120:
                during.append((time.monotonic() - started, _stalled(port)))
                if model.stats()["requests"] >= n:
                    done_at = time.monotonic() - started
                    break
                time.sleep(1)
            assert done_at is not None, "the backlog did not drain in 120 s"
            # Side 2: the backlog is done; the stuck partition still waits and the worker now sits idle.
            raised_after = None
            drained = time.monotonic()
            while time.monotonic() - drained < AFTER_S + 3 * SAMPLE_S:
                now_stalled = _stalled(port)
                if now_stalled:
                    raised_after = time.monotonic() - drained
                    break
                time.sleep(0.5)
            log = proc.log_path.read_text(errors="replace")
        got = run(collect(broker.bootstrap, outputs, lambda g: len(g) >= n, timeout_s=30, settle_s=0))
    alarms_during = [(round(t), s) for t, s in during if s]
    print(f"stuck request on partition {stuck}; backlog of {n} drained after {done_at:.0f} s, alarms during it: "
          f"{alarms_during}; alarm raised {raised_after} s after the drain, for {now_stalled}; outputs {len(got)}")
    assert done_at >= AFTER_S + 2 * SAMPLE_S, "the backlog must outlast the alarm's delay, or side 1 proves nothing"
    assert not alarms_during, f"a stall was reported while the worker worked through its backlog: {alarms_during}"
    assert raised_after is not None, f"no stall reported within {AFTER_S + 3 * SAMPLE_S} s of the drain"
    assert now_stalled == {stuck}, f"only the stuck partition {stuck} may be reported: {now_stalled}"
    assert f"{requests}[{stuck}] stalled" in log, "the worker log must name the stalled partition"
    assert len({r.json()["id"] for r in got}) == n, "every other request was classified"
