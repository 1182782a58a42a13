"""Classifier behaviour beyond one request in, one record out: audit, risk thresholds, calibrators."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest

from streams import schemas
from streams.calibration.calibrators import TemperatureScaling
from streams.calibration.store import calibrator_record
from streams.classify.model_client import ModelReply
from streams.classify.records import Source
from streams.classify.service import Classifier, audit_draw
from streams.confidence.names import FIRST_TOKEN
from streams.publishing import Output
from streams.tasks import TaskRegistry, parse_tasks

SOURCE = Source("classify.requests", 0, 7)
TASKS = """
[[task]]
name = "fixed"
labels = ["yes", "no"]
[task.model]
base_url = "http://127.0.0.1:1/v1"
name = "m"
[task.routing]
review_threshold = 0.8
audit_rate = 0.25

[[task]]
name = "risky"
labels = ["yes", "no"]
[task.model]
base_url = "http://127.0.0.1:1/v1"
name = "m"
[task.routing]
target_error = 0.02
failure_probability = 0.1
"""


class ConfidentModel:
    """p(yes) = 0.95 for every text."""

    async def first_token(self, task: Any, text: str) -> ModelReply:
        return ModelReply([("yes", float(np.log(0.95))), ("no", float(np.log(0.05)))], "yes", -0.05, 10, 1, 1.0, "m")


@pytest.fixture
def tasks() -> TaskRegistry:
    return parse_tasks(TASKS, "test", env={})


def classify(c: Classifier, task: str, rid: str) -> list[Output]:
    return asyncio.run(c.process(orjson.dumps({"id": rid, "task": task, "text": "t"}), rid.encode(), SOURCE))


def test_audit_sends_a_marked_copy_of_confident_items_to_review(tasks: TaskRegistry) -> None:
    c = Classifier(tasks, ConfidentModel(), 1000, 64)  # type: ignore[arg-type]
    audited = 0
    for i in range(400):
        outs = classify(c, "fixed", f"id-{i}")
        assert outs[0].topic == "results", "the auto result always goes out"
        if len(outs) == 2:
            audited += 1
            copy = orjson.loads(outs[1].value)
            assert outs[1].topic == "review" and copy["audit"] is True and copy["review_reason"] == "audit"
            assert copy["label"] == "yes" and copy["text"] == "t"
            schemas.validate("review_item", copy)
        assert (len(outs) == 2) == (audit_draw(f"id-{i}") < 0.25), "the draw is fixed by the id"
    assert 60 <= audited <= 140, f"audit rate 0.25 of 400 gave {audited}"


def test_replayed_request_gets_the_same_audit_decision(tasks: TaskRegistry) -> None:
    c = Classifier(tasks, ConfidentModel(), 1000, 64)  # type: ignore[arg-type]
    first = [len(classify(c, "fixed", f"r-{i}")) for i in range(50)]
    again = [len(classify(c, "fixed", f"r-{i}")) for i in range(50)]
    assert first == again


def _record(task: str, risk: dict[str, Any] | None, labels: tuple[str, ...] = ("yes", "no")) -> dict[str, Any]:
    cal = TemperatureScaling().fit(np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]] * 10),
                                   np.array([0, 1, 0, 1] * 10))
    m = {"ece": 0.0, "brier": 0.0, "nll": 0.0}
    return calibrator_record(task, FIRST_TOKEN, "m", labels, cal, 40, 10, m, m, "calibrate", None, risk)


def test_risk_controlled_task_reviews_everything_until_a_feasible_threshold_arrives(tasks: TaskRegistry) -> None:
    c = Classifier(tasks, ConfidentModel(), 1000, 64)  # type: ignore[arg-type]
    (out,) = classify(c, "risky", "a")
    assert out.topic == "review" and orjson.loads(out.value)["review_reason"] == "not_calibrated"

    feasible = {"threshold": 0.6, "target_error": 0.02, "delta": 0.1, "feasible": True, "coverage": 0.5}
    record = _record("risky", feasible)
    schemas.validate("calibrator", orjson.loads(orjson.dumps(record)))
    assert c.calibrators.apply(record)
    (out,) = classify(c, "risky", "b")
    result = orjson.loads(out.value)
    assert out.topic == "results" and result["calibrator_version"] == record["version"]

    infeasible = {**feasible, "threshold": None, "feasible": False}
    assert c.calibrators.apply(_record("risky", infeasible))
    (out,) = classify(c, "risky", "c")
    assert orjson.loads(out.value)["review_reason"] == "not_calibrated"


def test_threshold_for_another_target_is_not_used(tasks: TaskRegistry) -> None:
    c = Classifier(tasks, ConfidentModel(), 1000, 64)  # type: ignore[arg-type]
    other = {"threshold": 0.6, "target_error": 0.05, "delta": 0.1, "feasible": True, "coverage": 0.5}
    c.calibrators.apply(_record("risky", other))
    assert c.calibrators.threshold(tasks.tasks["risky"], FIRST_TOKEN) is None


def test_calibrator_for_unknown_task_or_other_labels_is_ignored(tasks: TaskRegistry) -> None:
    c = Classifier(tasks, ConfidentModel(), 1000, 64)  # type: ignore[arg-type]
    assert not c.calibrators.apply(_record("nope", None))
    assert not c.calibrators.apply(_record("fixed", None, labels=("no", "yes")))
    assert c.calibrators.calibrator("fixed", FIRST_TOKEN, "m").version == "identity-0"


def test_applied_calibrator_changes_probabilities_and_names_its_version(tasks: TaskRegistry) -> None:
    c = Classifier(tasks, ConfidentModel(), 1000, 64)  # type: ignore[arg-type]
    record = _record("fixed", None)
    c.calibrators.apply(record)
    result = orjson.loads(classify(c, "fixed", "x")[0].value)
    assert result["calibrator_version"] == record["version"]
    assert result["raw_probabilities"]["yes"] == pytest.approx(0.95, abs=1e-6)
    expected = c.calibrators.calibrator("fixed", FIRST_TOKEN, "m").transform(np.array([0.95, 0.05]))[0]
    assert result["probabilities"]["yes"] == pytest.approx(expected, abs=1e-6)
