"""Drift on the real broker: a label-mix shift, abrupt or slow, opens one data-drift episode; a changed model trips
the canaries."""

from __future__ import annotations

import random
import time
from pathlib import Path

from streams import schemas
from streams.localdev.broker import EmbeddedBroker
from tests.integration.harness import (
    SyntheticModel,
    Worker,
    collect,
    drift_cli,
    labelled_traffic,
    run,
    wait_ready,
    write_tasks,
)


def _tasks(workdir: Path, base_url: str, drift: str) -> Path:
    path = write_tasks(workdir / "tasks.toml", base_url, model="synthetic", threshold=0.5)
    path.write_text(path.read_text() + "\n[task.drift]\n" + drift)
    return path


def test_a_label_mix_shift_opens_exactly_one_data_drift_episode(broker: EmbeddedBroker, workdir: Path) -> None:
    rng = random.Random(5)
    with SyntheticModel(workdir) as model:
        worker = Worker(broker.bootstrap, _tasks(workdir, model.base_url, "window_s = 2\n"), workdir)
        with worker.process() as proc:
            wait_ready(proc)
            labelled_traffic(worker, 7, 0.8, rng)  # mix A: 80% fresh
            time.sleep(1.5)  # the last partial summaries are flushed every second
            baseline = drift_cli(worker, "baseline", "--task", "sentiment", "--last-seconds", "6")
            assert baseline.returncode == 0, baseline.stdout + baseline.stderr
            assert "published baseline" in baseline.stdout
            # About 1,000 messages: far below what the CUSUMs' bound needs, and the command says so.
            assert "warning: the baseline holds" in baseline.stderr, baseline.stderr
            labelled_traffic(worker, 6, 0.8, rng)  # still mix A: no alert
            quiet = run(collect(broker.bootstrap, [worker.topic("alerts")], lambda g: False, timeout_s=2))
            labelled_traffic(worker, 9, 0.5, rng)  # mix B: 50% fresh, a 30-point shift
            alerts = run(collect(broker.bootstrap, [worker.topic("alerts")], lambda g: len(g) >= 1,
                                 timeout_s=30, settle_s=4))
            status = drift_cli(worker, "status", "--task", "sentiment")
    assert quiet == [], f"no alert while traffic matches the baseline: {[a.json() for a in quiet]}"
    assert len(alerts) == 1, f"exactly one episode, not one alert per window: {[a.json() for a in alerts]}"
    alert = alerts[0].json()
    schemas.validate("drift_alert", alert)
    assert alert["kind"] == "data" and alert["state"] == "open" and alert["task"] == "sentiment"
    assert alert["value"] > alert["threshold"] and alert["p_value"] < 5e-4
    assert "baseline" in alert["baseline_ref"]
    print(status.stdout)
    assert status.returncode == 0 and "data drift         OPEN" in status.stdout
    assert "labels" in status.stdout and "DRIFTED" in status.stdout


def test_a_changed_model_trips_the_canaries_as_model_drift(broker: EmbeddedBroker, workdir: Path) -> None:
    drift = ('window_s = 2\ncanaries = ["A fine, warm film.", "A dull, clumsy film."]\n'
             "canary_repeats = 2\ncanary_interval_s = 2\n")
    first = SyntheticModel(workdir, "--label-probs", "0.7,0.3").start()
    port = first.port
    try:
        worker = Worker(broker.bootstrap, _tasks(workdir, first.base_url, drift), workdir)
        with worker.process() as w:
            wait_ready(w)
            proc = drift_cli(worker, "baseline", "--task", "sentiment", "--last-seconds", "5")
            assert proc.returncode == 0 and "2 canary prompt(s)" in proc.stdout, proc.stdout + proc.stderr
            time.sleep(7)  # a few canary runs against the unchanged model
            quiet = run(collect(broker.bootstrap, [worker.topic("alerts")], lambda g: False, timeout_s=2))
            first.stop()  # the provider silently swaps the model behind the same endpoint
            with SyntheticModel(workdir, "--label-probs", "0.3,0.7", port=port):
                alerts = run(collect(broker.bootstrap, [worker.topic("alerts")], lambda g: len(g) >= 1,
                                     timeout_s=40, settle_s=3))
    finally:
        first.stop()
    assert quiet == [], f"stable canaries raise nothing: {[a.json() for a in quiet]}"
    assert len(alerts) == 1, [a.json() for a in alerts]
    alert = alerts[0].json()
    schemas.validate("drift_alert", alert)
    assert alert["kind"] == "model" and alert["statistic"] == "canary_kl" and alert["state"] == "open"
    assert alert["value"] > alert["threshold"]


def test_a_slow_label_ramp_opens_exactly_one_data_drift_episode(broker: EmbeddedBroker, workdir: Path) -> None:
    """The sequential CUSUMs run in the worker: a slow ramp of the label mix is one episode, the prefix none."""
    rng = random.Random(11)
    with SyntheticModel(workdir) as model:
        worker = Worker(broker.bootstrap, _tasks(workdir, model.base_url, "window_s = 2\n"), workdir)
        with worker.process() as proc:
            wait_ready(proc)
            labelled_traffic(worker, 10, 0.8, rng)  # baseline: 80% fresh
            time.sleep(1.5)
            baseline = drift_cli(worker, "baseline", "--task", "sentiment", "--last-seconds", "9")
            assert baseline.returncode == 0, baseline.stdout + baseline.stderr
            labelled_traffic(worker, 8, 0.8, rng)  # the stationary prefix: four windows, no episode
            quiet = run(collect(broker.bootstrap, [worker.topic("alerts")], lambda g: False, timeout_s=2))
            for second in range(24):  # 80% -> 56% fresh, one point a second (two a 2 s window)
                labelled_traffic(worker, 1, 0.8 - 0.01 * (second + 1), rng)
            labelled_traffic(worker, 4, 0.56, rng)  # and it stays there: still the same episode
            alerts = run(collect(broker.bootstrap, [worker.topic("alerts")], lambda g: False, timeout_s=5))
    assert quiet == [], f"no alert on the stationary prefix: {[a.json() for a in quiet]}"
    opened = [a.json() for a in alerts]
    assert len(opened) == 1, f"exactly one episode for one drift: {opened}"
    alert = opened[0]
    print(alert)
    schemas.validate("drift_alert", alert)
    assert alert["kind"] == "data" and alert["state"] == "open"
    assert alert["detector"] in ("cusum", "window_test") and "label" in alert["signal"]
    assert alert["change_point"] <= alert["window_start"]
