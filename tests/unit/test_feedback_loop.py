"""The feedback loop without Faust: `FeedbackHandler` over a plain dict as the review-item table,
`Refitter` with an in-memory example set and a list as the publisher, `CalibratorRegistry` keys."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest

from streams import schemas
from streams.calibration.calibrators import TemperatureScaling
from streams.calibration.loop import FeedbackHandler, Refitter
from streams.calibration.registry import CalibratorKey, CalibratorRegistry
from streams.calibration.store import calibrator_record
from streams.classify.records import Source
from streams.confidence.names import FIRST_TOKEN, VERBALIZED
from streams.publishing import Output
from streams.tasks import TaskRegistry, parse_tasks

SOURCE = Source("classify.feedback", 1, 5)
TASKS = """
[[task]]
name = "s"
labels = ["pos", "neg"]
[task.model]
base_url = "http://x/v1"
name = "m"
[task.calibration]
refit_every = 3
min_examples = 40
"""


@pytest.fixture
def tasks() -> TaskRegistry:
    return parse_tasks(TASKS, "test", env={})


def _item(rid: str, method: str = FIRST_TOKEN) -> dict[str, Any]:
    return {"id": rid, "task": "s", "label": "pos", "confidence": 0.6, "probabilities": {"pos": 0.6, "neg": 0.4},
            "raw_probabilities": {"pos": 0.55, "neg": 0.45}, "entropy": 0.97, "label_mass": 0.9,
            "decision": "review", "method": method, "model": "m", "calibrator_version": "identity-0",
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}, "latency_ms": 3.0, "metadata": None,
            "processed_at": "2026-01-01T00:00:00.000Z", "schema_version": 1, "review_reason": "low_confidence",
            "text": "t"}


def test_an_answer_becomes_a_human_result_and_an_example_and_closes_the_item(tasks: TaskRegistry) -> None:
    table = {"r1": _item("r1")}
    handle = FeedbackHandler(tasks, table, 64)
    outs = handle(orjson.dumps({"id": "r1", "task": "s", "label": "neg", "reviewer": "ann"}), b"r1", SOURCE)
    assert [o.topic for o in outs] == ["results", "examples"]
    assert outs[0].key == b"r1" and outs[1].key == b"s", "results by id; examples by task, for the refit agent"
    result, example = orjson.loads(outs[0].value), orjson.loads(outs[1].value)
    schemas.validate("classification_result", result)
    schemas.validate("labelled_example", example)
    assert result["decision"] == "human" and result["label"] == "neg" and example["method"] == FIRST_TOKEN
    assert "r1" not in table, "answered once"
    (again,) = handle(orjson.dumps({"id": "r1", "task": "s", "label": "pos"}), b"r1", SOURCE)
    dead = orjson.loads(again.value)
    assert again.topic == "deadletter" and dead["error_type"] == "unknown_id" and dead["stage"] == "feedback"
    assert dead["source"] == {"topic": "classify.feedback", "partition": 1, "offset": 5}


def test_an_answer_for_another_task_or_bad_json_is_dead_lettered(tasks: TaskRegistry) -> None:
    table = {"r1": {**_item("r1"), "task": "other"}}
    handle = FeedbackHandler(tasks, table, 64)
    (out,) = handle(orjson.dumps({"id": "r1", "task": "s", "label": "neg"}), b"r1", SOURCE)
    assert orjson.loads(out.value)["error_type"] == "unknown_id" and "r1" in table, "the item stays pending"
    (out,) = handle(b"{nope", b"k", SOURCE)
    assert out.topic == "deadletter" and out.key == b"k" and orjson.loads(out.value)["error_type"] == "invalid_json"


def _examples(n: int, method: str = FIRST_TOKEN, seed: int = 0) -> list[dict[str, Any]]:
    """Overconfident raw scores: the true label has probability 0.7 when the model says 0.95."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        says_pos = rng.random() < 0.5
        right = rng.random() < 0.7
        label = ("pos" if says_pos else "neg") if right else ("neg" if says_pos else "pos")
        p = 0.95 if says_pos else 0.05
        out.append({"id": f"e{i}", "task": "s", "model": "m", "label": label, "method": method,
                    "raw_probabilities": {"pos": p, "neg": 1 - p}, "source": "feedback"})
    return out


def test_refit_runs_every_refit_every_labels_per_calibrator_and_publishes_under_its_key(tasks: TaskRegistry) -> None:
    published: list[Output] = []
    examples = _examples(300) + _examples(300, VERBALIZED, seed=1)

    async def read(task: str) -> list[dict[str, Any]]:
        return examples

    async def publish(output: Output) -> None:
        published.append(output)

    registry = CalibratorRegistry(tasks)
    refitter = Refitter(tasks, registry, read, publish)

    async def feed(method: str, n: int) -> list[dict[str, Any] | None]:
        return [await refitter.on_example(orjson.dumps({**_examples(1, method)[0], "id": f"new{i}"}))
                for i in range(n)]

    first = asyncio.run(feed(FIRST_TOKEN, 3))
    assert first[:2] == [None, None] and first[2] is not None, "the third label of this calibrator refits"
    assert asyncio.run(feed(VERBALIZED, 2)) == [None, None], "labels of another method count separately"
    (out,) = published
    record = orjson.loads(out.value)
    schemas.validate("calibrator", record)
    assert out.topic == "calibrators" and out.key == b"s/first_token_logprobs@m"
    assert CalibratorKey.of_record(record).topic_key() == out.key
    assert record["source"] == "refit" and record["fit_size"] + record["heldout_size"] == 300
    assert registry.apply(record)
    calibrated = registry.calibrator("s", FIRST_TOKEN, "m").transform(np.array([0.95, 0.05]))
    assert 0.5 < calibrated[0] < 0.9, "the refit calibrator tempers the overconfident 0.95"
    assert registry.calibrator("s", VERBALIZED, "m").version == "identity-0"
    assert asyncio.run(refitter.on_example(orjson.dumps({**_examples(1)[0], "source": "calibration"}))) is None


def test_refit_below_min_examples_publishes_nothing(tasks: TaskRegistry) -> None:
    published: list[Output] = []

    async def read(task: str) -> list[dict[str, Any]]:
        return _examples(20)

    async def publish(output: Output) -> None:
        published.append(output)

    refitter = Refitter(tasks, CalibratorRegistry(tasks), read, publish)
    assert asyncio.run(refitter.refit(CalibratorKey("s", FIRST_TOKEN, "m"))) is None and not published


def _record(method: str, model: str, version_ts: str) -> dict[str, Any]:
    cal = TemperatureScaling().fit(np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]] * 10),
                                   np.array([0, 1, 0, 1] * 10))
    m = {"ece": 0.0, "brier": 0.0, "nll": 0.0}
    record = calibrator_record("s", method, model, ("pos", "neg"), cal, 40, 10, m, m, "calibrate")
    record["fitted_at"] = version_ts
    return record


def test_registry_keeps_one_calibrator_per_task_method_and_model_newest_wins(tasks: TaskRegistry) -> None:
    registry = CalibratorRegistry(tasks)
    new = _record(FIRST_TOKEN, "m", "2026-02-01T00:00:00.000Z")
    old = _record(FIRST_TOKEN, "m", "2026-01-01T00:00:00.000Z")
    assert registry.apply(new)
    assert not registry.apply(old), "read out of order (two partitions, a replay): the older one is ignored"
    assert registry.calibrator("s", FIRST_TOKEN, "m").version == new["version"]
    other_model = _record(FIRST_TOKEN, "other", "2026-03-01T00:00:00.000Z")
    assert registry.apply(other_model)
    assert registry.calibrator("s", FIRST_TOKEN, "m").version == new["version"], "a member on another model"
    legacy = {k: v for k, v in _record(FIRST_TOKEN, "m", "2026-04-01T00:00:00.000Z").items()
              if k != "confidence_method"}
    assert CalibratorKey.of_record(legacy) == CalibratorKey("s", FIRST_TOKEN, "m"), "absent means first-token"


def test_an_answer_waits_briefly_for_its_review_item_to_be_indexed(tasks: TaskRegistry) -> None:
    """The review item and its answer are read by two agents: an early answer waits for the index
    instead of becoming an `unknown_id` dead letter; a duplicate answer gives up after the grace."""
    table: dict[str, Any] = {}
    handle = FeedbackHandler(tasks, table, 64)
    answer = orjson.dumps({"id": "r9", "task": "s", "label": "neg"})

    async def go() -> tuple[bool, bool, bool]:
        async def index_later() -> None:
            await asyncio.sleep(0.2)
            table["r9"] = _item("r9")

        indexing = asyncio.create_task(index_later())
        found = await handle.item_indexed(answer, wait_s=5)
        await indexing
        handle(answer, b"r9", SOURCE)  # answered: the item leaves the table
        again = await handle.item_indexed(answer, wait_s=0.2)
        unreadable = await handle.item_indexed(b"{", wait_s=5)
        return found, again, unreadable

    assert asyncio.run(go()) == (True, False, False)
