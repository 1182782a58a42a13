"""A worker with default settings against a server of 4 slots: it finds the capacity instead of queueing 64."""

from __future__ import annotations

from pathlib import Path

import orjson

from streams.localdev.broker import EmbeddedBroker
from streams.settings import ENV_DEFAULTS
from tests.integration.harness import (
    Received,
    SyntheticModel,
    Worker,
    collect,
    http_json,
    produce,
    run,
    scrape,
    wait_ready,
    write_tasks,
)

N = 300


def test_default_worker_keeps_a_4_slot_server_at_capacity_without_queueing_or_errors(
        broker: EmbeddedBroker, workdir: Path) -> None:
    """The worker's default in-flight maximum (64) against 4 slots of 100 ms (40 calls/s at best).

    A fixed 64 would put 60 calls in the server's queue (every call 1.6 s instead of 0.1 s, the situation
    that timed calls out against llama.cpp); the adaptive limit keeps the server's queue short, loses
    nothing, and sends nothing to review as a model error.
    """
    with SyntheticModel(workdir, "--slots", "4", "--latency-ms", "100", "--latency-jitter-ms", "10") as model:
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic"),
                        workdir, max_in_flight=int(ENV_DEFAULTS["STREAMS_MAX_IN_FLIGHT"]))
        with worker.process() as proc:
            wait_ready(proc)
            run(produce(broker.bootstrap, worker.topic("requests"),
                        [(f"a{i}".encode(), orjson.dumps({"id": f"a{i}", "task": "sentiment",
                                                           "text": f"review number {i}, distinct"}))
                         for i in range(N)]))
            outputs = run(collect(broker.bootstrap, [worker.topic("results"), worker.topic("review")],
                                  lambda got: len({r.json()["id"] for r in got}) >= N, timeout_s=120))
            metrics = scrape(worker.web_port)
        stats = http_json(model.base_url.removesuffix("/v1") + "/stats")

    ids = {r.json()["id"] for r in outputs}
    assert ids == {f"a{i}" for i in range(N)}
    assert not [r for r in outputs if _reason(r) == "model_error"]
    assert stats["requests"] == N  # one call each: no retries, no timeouts
    assert stats["max_queued_seen"] <= 12, stats  # 64 in flight against 4 slots would queue 60
    [limit] = metrics["llm_classify_model_concurrency_limit"].values()
    assert 4 <= limit <= 12


def _reason(record: Received) -> str | None:
    doc = record.json()
    return doc.get("review_reason") if isinstance(doc, dict) else None
