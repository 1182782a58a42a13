"""Confidence methods against the real local model (llama.cpp + Gemma 3 270M) through the real openai
client, and the capability probe choosing the fallback when logprobs are switched off (the fault proxy
strips them from every answer), down to the records a real worker publishes."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import numpy as np
import orjson

from streams import schemas
from streams.classify.model_client import ModelClient
from streams.confidence.methods import MethodRunner, choose_method
from streams.confidence.probe import probe_endpoint
from streams.localdev.broker import EmbeddedBroker
from streams.localdev.model_server import LocalModelServer
from streams.tasks import Task, parse_tasks
from tests.integration.harness import FaultProxyProcess, Worker, collect, produce, run, wait_ready

METHODS = '["first_token_logprobs", "sequence_scores", "self_consistency", "verbalized"]'


def task_toml(name: str, base_url: str, methods: str = METHODS) -> str:
    return f"""
[[task]]
name = "{name}"
labels = ["fresh", "rotten"]
[task.model]
base_url = "{base_url}"
name = "gemma3-270m"
[task.routing]
review_threshold = 0.6
min_label_mass = 0.3
[task.confidence]
methods = {methods}
[task.confidence.self_consistency]
budget = 6
batch = 2
max_tokens = 2
[task.confidence.ensemble]
members = ["first_token_logprobs", "verbalized"]
[task.prompt]
template = \"\"\"Is this movie review fresh (positive) or rotten (negative)?
<<<REVIEW
{{text}}
REVIEW>>>
Answer fresh or rotten:\"\"\"
[[task.prompt.examples]]
text = "A triumph: funny, moving and beautifully acted."
label = "fresh"
[[task.prompt.examples]]
text = "A tedious, clumsy mess with bored actors."
label = "rotten"
"""


def _task(base_url: str) -> Task:
    return parse_tasks(task_toml("movies", base_url), "test", {}).tasks["movies"]


def test_every_method_runs_on_the_local_model_and_the_probe_falls_back_without_logprobs(
        local_model: LocalModelServer, workdir: Path) -> None:
    task = _task(local_model.base_url)
    client = ModelClient(60, 1)
    proxy = FaultProxyProcess(workdir, local_model.base_url, "--fault-rate", "1.0", "--kinds", "no_logprobs",
                              "--seed", "3").start()

    async def scenario() -> tuple:
        caps = await probe_endpoint(client, task.model)
        runner = MethodRunner(client)
        results = {}
        for method in ("first_token_logprobs", "sequence_scores", "self_consistency", "verbalized", "ensemble"):
            results[method] = await runner.run(task, method, "Dull, clumsy and far too long; I nearly walked out.",
                                               "it-1", lambda ep: caps)
        off = dataclasses.replace(task, model=dataclasses.replace(task.model, base_url=proxy.base_url))
        caps_off = await probe_endpoint(client, off.model)
        sc_off = await runner.run(off, "self_consistency", "A warm, funny and moving film.", "it-2",
                                  lambda ep: caps_off)
        await client.close()
        return caps, results, off, caps_off, sc_off

    try:
        caps, results, off, caps_off, sc_off = run(scenario())
    finally:
        proxy.stop()
    print(f"\nprobe: {caps}\nprobe without logprobs: {caps_off}")
    assert caps.logprobs and caps.top_logprobs == 20 and caps.continuation and caps.temperature and caps.seed
    assert caps.n and caps.max_n == 2, "llama.cpp honours n up to its parallel slots (2 in the test server)"
    for method, r in results.items():
        print(f"{method:>22}: raw {None if r.raw is None else np.round(r.raw, 3)} mass {r.label_mass:.3f} "
              f"requests {r.requests} samples {r.samples}")
        assert r.method == method and r.raw is not None, f"{method} gave no scores ({r.reason})"
        assert r.raw.shape == (2,) and abs(r.raw.sum() - 1) < 1e-9 and (r.raw >= 0).all()
    assert results["first_token_logprobs"].requests == 1 and results["verbalized"].requests == 1
    # Gemma tokenises "rotten" as "ro" + "tten": one call for the first position, one for "tten"
    assert results["sequence_scores"].requests == 2
    sc_run = results["self_consistency"]
    assert sc_run.samples is not None and 2 <= sc_run.samples <= 6 and sc_run.requests == -(-sc_run.samples // 2)
    assert sc_run.interval is not None and 0 <= sc_run.interval[0] < sc_run.interval[1] <= 1
    assert set(results["ensemble"].members) == {"first_token_logprobs@gemma3-270m", "verbalized@gemma3-270m"}
    assert results["ensemble"].requests == 2

    assert not caps_off.logprobs and not caps_off.continuation and caps_off.temperature
    assert choose_method(off, lambda ep: caps_off) == ("self_consistency", "first supported")
    assert choose_method(task, lambda ep: caps) == ("first_token_logprobs", "first supported")
    assert sc_off.raw is not None and sc_off.samples is not None, "sampling needs no logprobs"


def test_worker_names_the_method_it_used_per_endpoint(broker: EmbeddedBroker, local_model: LocalModelServer,
                                                      workdir: Path) -> None:
    """One worker, two tasks with the same method list: the one behind a logprob-stripping proxy falls
    back to self-consistency, the other keeps first-token logprobs; every record says which."""
    proxy = FaultProxyProcess(workdir, local_model.base_url, "--fault-rate", "1.0", "--kinds", "no_logprobs",
                              "--seed", "5").start()
    tasks_file = workdir / "tasks.toml"
    tasks_file.write_text(task_toml("direct", local_model.base_url) + task_toml("nolp", proxy.base_url))
    worker = Worker(broker.bootstrap, tasks_file, workdir, partitions=2, max_in_flight=4,
                    extra_env={"STREAMS_MODEL_TIMEOUT_S": "120"})  # a loaded 2-core machine: no timeout retries
    proc = worker.process().start()
    try:
        wait_ready(proc, 90)
        texts = ["Dull, clumsy and far too long."]
        msgs = [(f"{t}-{i}-{uuid.uuid4().hex[:6]}", t, text)
                for t in ("direct", "nolp") for i, text in enumerate(texts)]
        run(produce(broker.bootstrap, worker.topic("requests"),
                    [(rid.encode(), orjson.dumps({"id": rid, "task": t, "text": x})) for rid, t, x in msgs]))
        got = run(collect(broker.bootstrap, [worker.topic("results"), worker.topic("review")],
                          lambda r: len({m.key for m in r}) >= len(msgs), timeout_s=300))
    finally:
        proc.stop()
        proxy.stop()
    records = {m.key.decode(): m.json() for m in got if not m.json().get("audit")}
    assert set(records) == {rid for rid, _, _ in msgs}, f"missing outputs; worker log: {proc.log_path}"
    for rid, t, _ in msgs:
        rec = records[rid]
        schemas.validate("classification_result" if rec["decision"] == "auto" else "review_item", rec)
        print(f"{rid}: {rec['method']} {rec['decision']} {rec.get('review_reason')} {rec['raw_probabilities']} "
              f"samples {rec.get('samples')} requests {rec.get('requests')}")
        if t == "direct":
            assert rec["method"] == "first_token_logprobs" and rec["raw_probabilities"]
        else:
            assert rec["method"] == "self_consistency" and 2 <= rec["samples"] <= 6
            assert rec.get("review_reason") != "no_logprobs", "the fallback needs no logprobs"
