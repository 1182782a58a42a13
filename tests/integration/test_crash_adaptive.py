"""kill -9 at the adaptive limit: calls waiting at the worker's concurrency gate and calls at the model are lost
with the process, and the next worker of the group classifies every request anyway."""

from __future__ import annotations

import time
from pathlib import Path

from streams.localdev.broker import EmbeddedBroker
from streams.localdev.processes import ChildProcess
from streams.settings import ENV_DEFAULTS
from tests.integration.harness import (
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
from tests.integration.test_crash import _at_least, _check, _requests

N = 250
#: What the test claims at the kill: calls waiting at the gate (the worker's `llm_classify_model_calls_waiting`),
#: and calls open at the model (its own count, its queue included).
CLAIMED_WAITING = 20
CLAIMED_AT_MODEL = 3


def _gate(worker_port: int, model: SyntheticModel) -> tuple[float, float, int]:
    """(calls waiting at the gate, the adaptive limit, calls open at the model) as of now."""
    metrics = scrape(worker_port)
    return (total(metrics.get("llm_classify_model_calls_waiting", {})),
            total(metrics.get("llm_classify_model_concurrency_limit", {})), model.stats()["in_flight"])


def _kill_at_the_gate(proc: ChildProcess, worker_port: int, model: SyntheticModel,
                      wait_s: float = 15) -> tuple[float, float, int]:
    """kill -9 `proc` at the first reading with `CLAIMED_WAITING`+ calls waiting and `CLAIMED_AT_MODEL`+ at the
    model (else after `wait_s`); returns that last reading, for the test to assert on."""
    deadline = time.monotonic() + wait_s
    last = _gate(worker_port, model)
    while ((last[0] < CLAIMED_WAITING or last[2] < CLAIMED_AT_MODEL) and time.monotonic() < deadline
           and proc.alive()):
        time.sleep(0.02)
        last = _gate(worker_port, model)
    proc.kill()
    return last


def test_kill_9_with_calls_waiting_at_the_adaptive_limit_loses_nothing(broker: EmbeddedBroker, workdir: Path) -> None:
    """A worker at its default settings (adaptive limit from 4, at most 64 in flight) against a model of 4 slots of
    100 ms (40 calls/s at best): the backlog fills its 64-request window, the limit holds a few calls at the model
    and the rest wait at the gate. kill -9 then; a new worker of the same group gets every request classified,
    some twice (the calls the kill cut off are made again). With the limit fixed at 64 (STREAMS_MIN_IN_FLIGHT=64)
    no call waits at the gate and the test fails."""
    with SyntheticModel(workdir, "--slots", "4", "--latency-ms", "100", "--latency-jitter-ms", "10") as model:
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic"),
                        workdir, max_in_flight=int(ENV_DEFAULTS["STREAMS_MAX_IN_FLIGHT"]))
        outputs = [worker.topic("results"), worker.topic("review")]
        run(produce(broker.bootstrap, worker.topic("requests"), _requests(N, "g", seed=3)))
        proc = worker.process().start()
        try:
            wait_ready(proc)
            port = worker.web_port
            run(collect(broker.bootstrap, outputs, _at_least(50), timeout_s=60, settle_s=0))
            waiting, limit, at_model = _kill_at_the_gate(proc, port, model)
        finally:
            proc.kill()  # a failed wait must not leave the worker running
        served_at_kill = model.stats()["requests"]
        print(f"at the kill: {waiting:.0f} calls waiting at the gate, {at_model} open at the model, adaptive limit "
              f"{limit:.0f}; the model had served {served_at_kill} calls")
        assert waiting >= CLAIMED_WAITING, f"calls must wait at the gate when the worker dies: {waiting:.0f}"
        assert at_model >= CLAIMED_AT_MODEL, f"calls must be open at the model when the worker dies: {at_model}"
        assert served_at_kill < N, "the worker must die mid-stream, with requests left"
        with worker.process():  # same app id: the group's next member
            got = run(collect(broker.bootstrap, outputs, lambda g: len({r.json()["id"] for r in g}) >= N,
                              timeout_s=60, settle_s=1))
        served = model.stats()["requests"]
    _check(got, {f"g{i}" for i in range(N)},
           f"kill -9 with {waiting:.0f} calls waiting at the gate and {at_model} at the model", worker, served)
