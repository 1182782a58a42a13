"""The classifier's method path against the project's synthetic OpenAI-compatible server (in process,
real HTTP, real openai client): probe, method choice, per-method calibrators, schema-valid records."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson

from streams import schemas
from streams.calibration.calibrators import TemperatureScaling
from streams.calibration.store import calibrator_record
from streams.classify.model_client import ModelClient
from streams.classify.records import Source
from streams.classify.service import Classifier
from streams.localdev.synthetic_model import SyntheticConfig, SyntheticModelServer
from streams.tasks import parse_tasks

SOURCE = Source("classify.requests", 0, 1)


def _tasks(base_url: str, methods: str = '["first_token_logprobs", "self_consistency", "verbalized"]') -> str:
    return f"""
[[task]]
name = "t"
labels = ["fresh", "rotten"]
[task.model]
base_url = "{base_url}"
name = "synthetic"
[task.routing]
review_threshold = 0.6
[task.confidence]
methods = {methods}
"""


async def _run(logprobs: bool, texts: list[str], calibrator: dict[str, Any] | None = None,
               methods: str | None = None) -> tuple[list[dict], Classifier]:
    async with SyntheticModelServer(SyntheticConfig(logprobs=logprobs, label_probs=[0.8, 0.2], seed=1)) as server:
        tasks = parse_tasks(_tasks(server.base_url, *([methods] if methods else [])), "test", {})
        c = Classifier(tasks, ModelClient(5, 1), 1000, 256)
        if calibrator is not None:
            assert c.calibrators.apply(calibrator)
        out = []
        for i, text in enumerate(texts):
            outputs = await c.process(orjson.dumps({"id": f"r{i}", "task": "t", "text": text}), b"k", SOURCE)
            out += [orjson.loads(o.value) for o in outputs]
        await c.model.close()
        return out, c


def _check(records: list[dict]) -> None:
    for rec in records:
        schemas.validate("classification_result" if rec["decision"] == "auto" else "review_item", rec)


def test_constant_logprobs_are_not_trusted() -> None:
    """The synthetic server returns the same top-k for every prompt: the probe calls that constant and
    does not choose first-token scores; it cannot sample either (it always answers its argmax)."""
    records, c = asyncio.run(_run(True, ["a fine film"]))
    _check(records)
    caps = next(iter(c.probes.results.values()))[1]
    assert not caps.logprobs and any("constant" in n for n in caps.notes) and not caps.temperature
    assert [r["method"] for r in records] == ["verbalized"] and records[0]["requests"] == 1


def test_without_logprobs_the_probe_falls_back_and_the_record_says_so() -> None:
    """No logprobs, no sampling (the synthetic server answers its argmax): verbalised confidence is left.
    The synthetic model answers a bare label, with no probability: low confidence, so review."""
    records, _ = asyncio.run(_run(False, ["a fine film", "[[label=rotten]] awful"]))
    _check(records)
    assert [r["method"] for r in records] == ["verbalized", "verbalized"]
    assert records[0]["label"] == "fresh" and records[1]["label"] == "rotten"
    assert all(r["decision"] == "review" and r["review_reason"] == "low_confidence" for r in records)
    assert records[0]["raw_probabilities"]["fresh"] == 0.51


def test_each_method_has_its_own_calibrator() -> None:
    cal = TemperatureScaling().fit(np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]] * 10),
                                   np.array([0, 1, 1, 0] * 10))
    metrics = {"ece": 0.1, "brier": 0.2, "nll": 0.5}
    rec = calibrator_record("t", "verbalized", "synthetic", ("fresh", "rotten"), cal, 40, 0, metrics, metrics,
                            "calibrate")
    schemas.validate("calibrator", rec)
    records, c = asyncio.run(_run(False, ["a fine film"], rec))
    assert records[0]["calibrator_version"] == rec["version"], "the verbalised method uses its own calibrator"
    assert c.calibrators.calibrator("t", "first_token_logprobs", "synthetic").version != rec["version"], \
        "the first-token calibrator is untouched"
    single, c1 = asyncio.run(_run(False, ["a fine film"], rec, methods='["first_token_logprobs"]'))
    assert single[0]["method"] == "first_token_logprobs" and single[0]["review_reason"] == "no_logprobs"
    assert single[0]["calibrator_version"] != rec["version"] and not c1.probes.results, "one method: no probe"


def test_probe_command_prints_and_caches_capabilities(tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    import threading

    from streams.confidence import probe

    loop = asyncio.new_event_loop()
    server = SyntheticModelServer(SyntheticConfig(logprobs=False))
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        tasks_file = tmp_path / "tasks.toml"
        tasks_file.write_text(_tasks(server.base_url))
        monkeypatch.setenv("STREAMS_TASKS_FILE", str(tasks_file))
        cache = tmp_path / "probe.json"
        assert probe.main(["--cache", str(cache)]) == 0
        out = capsys.readouterr().out
        assert "logprobs no" in out and "temperature no" in out
        assert "task t: methods ['first_token_logprobs', 'self_consistency', 'verbalized'] -> verbalized" in out
        stored = orjson.loads(cache.read_bytes())
        assert list(stored) == [f"{server.base_url} synthetic"] and stored[f"{server.base_url} synthetic"]["calls"] > 0
        requests_before = server.stats()["requests"]
        assert probe.main(["--cache", str(cache), "--json"]) == 0  # answered from the cache: no calls
        assert server.stats()["requests"] == requests_before
        assert orjson.loads(capsys.readouterr().out)["tasks"]["t"]["chosen"] == "verbalized"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
