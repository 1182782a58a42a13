"""Window closing without Faust: `TaskDrift` over a plain dict as the changelogged state table."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from streams import schemas
from streams.drift.monitor import BINS, Baseline
from streams.drift.summary import WindowSummary
from streams.drift.windows import TaskDrift
from streams.tasks import parse_tasks

TASKS = """
[[task]]
name = "s"
labels = ["pos", "neg"]
[task.model]
base_url = "http://x/v1"
name = "m"
[task.drift]
window_s = 60
clear_windows = 1
"""
TASK = parse_tasks(TASKS, "test", env={}).tasks["s"]


def _summary(n: int, p_pos: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    s = WindowSummary.empty(2, BINS)
    for _ in range(n):
        label = 0 if rng.random() < p_pos else 1
        s.add(label, float(rng.uniform(0.6, 0.99)), float(rng.uniform(0.1, 0.9)), 1.0, -0.1)
    return s.to_dict()


BASELINE = Baseline("s", "m", "b1", WindowSummary.from_dict(_summary(4000, 0.5, 0)), None,
                    "2026-01-01T00:00:00.000Z", "2026-01-01T01:00:00.000Z")


def test_a_window_is_judged_when_the_first_summary_of_the_next_one_arrives() -> None:
    state: dict[str, Any] = {}
    drift = TaskDrift(TASK, state, {"s": BASELINE})
    assert drift.on_traffic(_summary(300, 0.5, 1), 60.5) == []
    assert drift.on_traffic(_summary(300, 0.5, 2), 119.0) == [], "same window: merged, not judged"
    assert state["s"]["window_start"] == 60 and WindowSummary.from_dict(state["s"]["window"]).n == 600
    (status,) = drift.on_traffic(_summary(300, 0.9, 3), 121.0)
    record = orjson.loads(status.value)
    schemas.validate("drift_status", record)
    assert status.topic == "drift_status" and status.key == b"s"
    assert record["last"]["traffic"]["n"] == 600 and not record["data_drift_open"]
    assert record["last"]["traffic"]["window_start"].endswith("00:01:00.000Z")


def test_a_shifted_window_opens_one_episode_which_survives_a_restart_and_recovers() -> None:
    state: dict[str, Any] = {}
    drift = TaskDrift(TASK, state, {"s": BASELINE})
    drift.on_traffic(_summary(600, 0.9, 1), 0.0)  # the label mix moved: 90% pos against 50%
    outs = drift.on_traffic(_summary(600, 0.9, 2), 60.0)
    assert [o.topic for o in outs] == ["drift_status", "alerts"]
    alert = orjson.loads(outs[1].value)
    schemas.validate("drift_alert", alert)
    assert alert["state"] == "open" and alert["kind"] == "data" and alert["statistic"].startswith("labels")
    restarted = TaskDrift(TASK, state, {"s": BASELINE})  # a new worker reading the changelogged table
    outs = restarted.on_traffic(_summary(600, 0.5, 3), 120.0)
    assert [o.topic for o in outs] == ["drift_status"], "still the same episode: no second alert"
    alerts = []  # back to the baseline's mix: recovered once the window test and the CUSUMs are quiet
    for t in range(4, 20):
        alerts += [orjson.loads(o.value) for o in restarted.on_traffic(_summary(600, 0.5, t), 60.0 * t)
                   if o.topic == "alerts"]
    assert [a["state"] for a in alerts] == ["recovered"]
    assert alert["detector"] == "window_test" and alert["signal"] == "labels" and alert["change_point"]


def test_late_summaries_merge_into_the_open_window_and_no_baseline_means_no_verdict() -> None:
    state: dict[str, Any] = {}
    drift = TaskDrift(TASK, state, {})
    drift.on_traffic(_summary(100, 0.5, 1), 125.0)
    assert drift.on_traffic(_summary(50, 0.5, 2), 119.9) == [], "another worker's flush from just before"
    assert state["s"]["window_start"] == 120 and WindowSummary.from_dict(state["s"]["window"]).n == 150
    assert drift.on_traffic(_summary(100, 0.5, 3), 185.0) == [], "no baseline yet: nothing to compare with"
    assert state["s"]["window_start"] == 180
