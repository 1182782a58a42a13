"""A worker whose task declares the endpoint's budget, against the synthetic model in rate-limited mode.

The server enforces 600 requests and 6000 tokens a minute per second (`--burst-s 1`: 10 requests and 100
tokens a second), as OpenAI says its limits may be; each call is metered at about 15 tokens, so the token
budget binds (about 6.7 calls a second). An unpaced worker's first burst alone would be refused
(`tests/unit/test_pacing_client.py` shows it). The worker must lose nothing, have (almost) nothing refused,
and stay within the budget.
"""

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
    total,
    wait_ready,
    write_tasks,
)

N = 100
RPM, TPM = 600, 6000


def test_a_paced_worker_keeps_under_the_budget_loses_nothing_and_is_not_refused(
        broker: EmbeddedBroker, workdir: Path) -> None:
    flags = ("--rpm", str(RPM), "--tpm", str(TPM), "--burst-s", "1", "--latency-ms", "20")
    with SyntheticModel(workdir, *flags) as model:
        tasks = write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic",
                            model_extra=f"requests_per_minute = {RPM}\ntokens_per_minute = {TPM}")
        worker = Worker(broker.bootstrap, tasks, workdir)
        with worker.process() as proc:
            wait_ready(proc)
            before = model.stats()
            started = time.monotonic()
            run(produce(broker.bootstrap, worker.topic("requests"),
                        [(f"r{i}".encode(), orjson.dumps({"id": f"r{i}", "task": "sentiment",
                                                           "text": f"Item {i}: a decent film with a good cast."}))
                         for i in range(N)]))
            outputs = run(collect(broker.bootstrap, [worker.topic(t) for t in ("results", "review", "deadletter")],
                                  lambda got: len({r.key for r in got}) >= N, timeout_s=60, settle_s=0.5))
            took = time.monotonic() - started
            metrics = scrape(worker.web_port)
        after = model.stats()

    ids = {r.key for r in outputs}
    assert ids == {f"r{i}".encode() for i in range(N)}  # nothing lost
    assert not [r for r in outputs if r.json().get("review_reason") == "model_error"]
    calls = after["requests"] - before["requests"]
    refused = after["rate_limited"] - before["rate_limited"]
    tokens = after["metered_tokens"] - before["metered_tokens"]
    assert calls == N
    assert refused <= 0.01 * N, f"{refused} of {calls} calls answered 429"
    # Within the budget: the tokens metered over the run, less the server's one-second bucket it may use at once.
    assert tokens - TPM / 60 <= TPM / 60 * took, (tokens, took)
    assert total(metrics["llm_classify_model_budget_share"]) == 1.0  # one worker: all partitions
    assert total(metrics["llm_classify_model_rate_limited_total"]) == refused
