"""Sequential detection in the worker's drift path (`TaskDrift`) and the `drift backtest` command, without a broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streams import schemas
from streams.drift.commands import backtest, result_messages, window_summaries
from streams.drift.monitor import BINS, Baseline
from streams.drift.summary import WindowSummary
from streams.drift.windows import TaskDrift
from streams.stamps import iso
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
"""
TASK = parse_tasks(TASKS, "test", env={}).tasks["s"]
ROOT = Path(__file__).resolve().parents[2]


def _window(rng: np.random.Generator, share: float, n: int = 500) -> WindowSummary:
    s = WindowSummary.empty(2, BINS)
    labels = (rng.random(n) >= share).astype(int)
    s.add_many(labels, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.8, n), np.ones(n), np.zeros(n))
    return s


def _ramp(seed: int, windows: int = 60) -> tuple[Baseline, list[WindowSummary]]:
    """A baseline of 100 windows at 55% positive, then 20 stationary windows, then 55% -> 30% over 40 windows."""
    rng = np.random.default_rng(seed)
    base = _window(rng, 0.55, 50_000)
    shares = [0.55] * 20 + [0.55 - 0.25 * min(i + 1, 40) / 40 for i in range(windows - 20)]
    return (Baseline("s", "m", "b1", base, None, "2026-01-01T00:00:00.000Z", "2026-01-01T01:00:00.000Z"),
            [_window(rng, p) for p in shares])


def _alerts(drift: TaskDrift, t: int, window: WindowSummary | None) -> list[dict[str, Any]]:
    summary = (window or WindowSummary.empty(2, BINS)).to_dict()
    return [orjson.loads(o.value) for o in drift.on_traffic(summary, 60.0 * t) if o.topic == "alerts"]


def test_a_slow_label_ramp_opens_one_cusum_episode_with_its_change_point() -> None:
    """The window test alone would wait for a single window to differ; the CUSUMs add up the ramp's evidence."""
    baseline, windows = _ramp(1)
    drift = TaskDrift(TASK, {}, {"s": baseline})
    alerts = [(t, a) for t, w in enumerate(windows) for a in _alerts(drift, t, w)]
    assert len(alerts) == 1, [a for _, a in alerts]
    t, alert = alerts[0]
    schemas.validate("drift_alert", alert)
    assert alert["state"] == "open" and alert["kind"] == "data" and alert["detector"] == "cusum"
    assert alert["signal"] == "label_share[pos] down" and alert["statistic"] == "cusum_llr"
    assert alert["value"] >= alert["threshold"] and alert["effect"] < 0
    assert 20 < t <= 33, f"opened in window {t - 1}, the ramp began in window 20"
    assert iso(60.0 * 15) <= alert["change_point"] <= iso(60.0 * 30)


def test_a_restart_mid_ramp_neither_loses_nor_double_counts_evidence() -> None:
    """The CUSUM state is in the changelogged table: a worker restarted from it alerts in the same window."""
    baseline, windows = _ramp(2)
    straight = TaskDrift(TASK, {}, {"s": baseline})
    expected = [(t, a["signal"]) for t, w in enumerate(windows) for a in _alerts(straight, t, w)]
    state: dict[str, Any] = {}
    drift = TaskDrift(TASK, state, {"s": baseline})
    seen = []
    for t, w in enumerate(windows):
        if t == 26:  # mid-ramp: a new worker reads the table back from its changelog
            state = orjson.loads(orjson.dumps(state))
            drift = TaskDrift(TASK, state, {"s": baseline})
        seen += [(t, a["signal"]) for a in _alerts(drift, t, w)]
    assert seen == expected and len(expected) == 1


def test_stationary_traffic_opens_no_episode() -> None:
    rng = np.random.default_rng(7)
    baseline = Baseline("s", "m", "b1", _window(rng, 0.55, 50_000), None, "2026-01-01T00:00:00.000Z",
                        "2026-01-01T01:00:00.000Z")
    drift = TaskDrift(TASK, {}, {"s": baseline})
    assert [a for t in range(200) for a in _alerts(drift, t, _window(rng, 0.55))] == []


def test_a_new_baseline_restarts_the_sequential_evidence() -> None:
    baseline, windows = _ramp(3)
    state: dict[str, Any] = {}
    baselines = {"s": baseline}
    drift = TaskDrift(TASK, state, baselines)
    for t, w in enumerate(windows[:26]):
        _alerts(drift, t, w)
    assert state["s"]["sequential"]["baseline"] == "b1"
    baselines["s"] = Baseline("s", "m", "b2", baseline.traffic, None, baseline.start, baseline.end)
    _alerts(drift, 26, windows[26])
    stats = state["s"]["sequential"]["detectors"]
    assert state["s"]["sequential"]["baseline"] == "b2" and stats["label_share[pos] down"]["stat"] < 8


def _results(path: Path, seed: int) -> Path:
    """Result records as the results topic carries them: 20 stationary windows of 60 s, then a ramp."""
    rng = np.random.default_rng(seed)
    lines = []
    t0 = 1_790_000_000.0 - 1_790_000_000.0 % 60
    shares = [0.55] * 40 + [0.55 - 0.25 * min(i + 1, 40) / 40 for i in range(40)]
    for w, share in enumerate(shares):
        for i in range(500):
            label = "pos" if rng.random() < share else "neg"
            c = float(rng.uniform(0.6, 1.0))
            lines.append(orjson.dumps({"id": f"{w}-{i}", "task": "s", "label": label, "confidence": c,
                                       "entropy": float(rng.uniform(0, 0.8)), "label_mass": 0.99,
                                       "processed_at": iso(t0 + 60 * w + 60 * i / 500)}))
    lines.append(orjson.dumps({"id": "x", "task": "s", "label": None, "confidence": None, "entropy": None,
                               "processed_at": iso(t0 + 60 * 80)}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_backtest_replays_results_through_the_workers_detectors(tmp_path: Path) -> None:
    path = _results(tmp_path / "results.jsonl", 4)
    records = [(0.0, orjson.loads(line)) for line in path.read_bytes().splitlines()]
    windows = window_summaries(TASK, result_messages(TASK, records))
    assert len(windows) == 80 and sum(s.n for _, s in windows) == 40_000, "the unlabelled record is not counted"
    baseline, episodes = backtest(TASK, windows, 20, None)
    assert baseline.traffic is not None and baseline.traffic.n == 10_000
    assert len(episodes) == 1 and episodes[0].detector == "cusum" and episodes[0].recovered is None
    assert 40 < episodes[0].opened <= 55, episodes[0]


def test_the_backtest_command_prints_one_line_per_episode(tmp_path: Path) -> None:
    path = _results(tmp_path / "results.jsonl", 5)
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(TASKS)
    env = {**os.environ, "STREAMS_TASKS_FILE": str(tasks)}
    proc = subprocess.run([sys.executable, "-m", "streams", "drift", "backtest", "--task", "s", "--input", str(path),
                           "--baseline-windows", "20"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "leading-20-windows" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("episode 1: opened window ")
    assert "cusum on label_share[pos] down" in lines[1] and "still open" in lines[1]


def test_constant_confidence_and_entropy_raise_nothing() -> None:
    """A model whose answers all carry one confidence and one entropy (the synthetic model's forced label):
    the baseline's spread is float rounding error, which must not turn equal windows into alarms."""
    import numpy as np

    from streams.drift.sequential import SequentialDrift
    from streams.drift.summary import WindowSummary

    def window(n: int, seed: int) -> WindowSummary:
        rng = np.random.default_rng(seed)
        s = WindowSummary.empty(2)
        s.add_many((rng.random(n) >= 0.8).astype(int), np.full(n, 0.974), np.full(n, 0.172), np.ones(n),
                   np.zeros(n))
        return s

    # A large baseline, as the CUSUMs' false-alarm bound assumes (its mean's error within `margin` errors).
    seq = SequentialDrift(["fresh", "rotten"], window(50_000, 0), "b", arl0=1000.0, shift=0.05)
    fired = [f.signal for t in range(200) for f in seq.update(window(300, t + 1), start=2.0 * t)]
    assert fired == []
