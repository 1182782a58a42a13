"""Calibration on the real broker: the calibrate command, reviewer feedback, refits, hot reload."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson

from streams import schemas
from streams.localdev.broker import EmbeddedBroker
from tests.integration.harness import Received, SyntheticModel, Worker, collect, produce, run, write_tasks

CALIBRATION = """
[task.calibration]
refit_every = {refit_every}
min_examples = 20
holdout_fraction = 0.3
methods = ["identity", "temperature", "histogram"]
"""


def _tasks(workdir: Path, base_url: str, threshold: float, refit_every: int) -> Path:
    path = write_tasks(workdir / "tasks.toml", base_url, model="synthetic", threshold=threshold)
    path.write_text(path.read_text() + CALIBRATION.format(refit_every=refit_every))
    return path


def _request(rid: str, text: str) -> tuple[bytes, bytes]:
    return rid.encode(), orjson.dumps({"id": rid, "task": "sentiment", "text": text})


def test_feedback_gives_human_results_and_a_refit_that_running_workers_pick_up(
    broker: EmbeddedBroker, workdir: Path
) -> None:
    n = 40
    # Every item gets p(fresh) = 0.6 from the model, but reviewers say fresh 90% of the time:
    # the raw probabilities are under-confident, and a refit must learn that.
    with SyntheticModel(workdir, "--label-probs", "0.6,0.4") as model:
        worker = Worker(broker.bootstrap, _tasks(workdir, model.base_url, threshold=0.9, refit_every=n), workdir)
        with worker.process():
            t = {k: worker.topic(k) for k in ("requests", "results", "review", "feedback", "deadletter", "calibrators")}
            run(produce(broker.bootstrap, t["requests"], [_request(f"f{i}", f"text {i}") for i in range(n)]))
            reviews = run(collect(broker.bootstrap, [t["review"]], lambda g: len(g) >= n, timeout_s=90))
            assert {r.json()["id"] for r in reviews} == {f"f{i}" for i in range(n)}
            rng = random.Random(0)
            truth = {f"f{i}": ("fresh" if rng.random() < 0.9 else "rotten") for i in range(n)}
            answers = [(rid.encode(), orjson.dumps({"id": rid, "task": "sentiment", "label": lbl, "reviewer": "qa"}))
                       for rid, lbl in truth.items()]
            bad = [(b"nobody", orjson.dumps({"id": "nobody", "task": "sentiment", "label": "fresh"})),
                   (b"f0", orjson.dumps({"id": "f0", "task": "sentiment", "label": "meh"}))]
            run(produce(broker.bootstrap, t["feedback"], answers + bad))
            # A second answer to an already answered item is not accepted twice.
            run(collect(broker.bootstrap, [t["results"]], lambda g: len(g) >= n, timeout_s=60, settle_s=0))
            run(produce(broker.bootstrap, t["feedback"], [answers[1]]))

            calibrators = run(collect(broker.bootstrap, [t["calibrators"]], lambda g: len(g) >= 1, timeout_s=90))
            assert len(calibrators) == 1, "one refit after refit_every labels"
            cal = calibrators[0].json()
            schemas.validate("calibrator", cal)
            assert cal["source"] == "refit" and cal["fit_size"] + cal["heldout_size"] == n
            assert cal["method"] != "identity"

            # Hot reload: the same worker process classifies new requests with the new version.
            run(produce(broker.bootstrap, t["requests"], [_request(f"g{i}", f"later {i}") for i in range(5)]))

            def later_done(got: list[Received]) -> bool:
                return sum(r.json().get("id", "").startswith("g") for r in got) >= 5

            got = run(collect(broker.bootstrap, [t["results"], t["review"]], later_done, timeout_s=60))
            dead = run(collect(broker.bootstrap, [t["deadletter"]], lambda g: len(g) >= 3, timeout_s=30))

    human = [r.json() for r in got if r.json()["decision"] == "human"]
    assert Counter(h["id"] for h in human) == Counter(truth.keys()), "one final human result per answered item"
    assert all(h["label"] == truth[h["id"]] for h in human)
    for h in human:
        schemas.validate("classification_result", h)
    later = [r.json() for r in got if r.json()["id"].startswith("g")]
    assert len(later) == 5 and all(p["calibrator_version"] == cal["version"] for p in later)
    assert all(p["raw_probabilities"]["fresh"] < 0.61 < p["probabilities"]["fresh"] for p in later), \
        "the calibrator raised the under-confident 0.6"
    kinds = Counter(d.json()["error_type"] for d in dead)
    assert kinds == Counter({"unknown_id": 2, "unknown_label": 1}), kinds


def test_calibrate_command_publishes_a_calibrator_that_a_running_worker_hot_reloads(
    broker: EmbeddedBroker, workdir: Path
) -> None:
    rng = random.Random(1)
    rows = []
    for i in range(300):
        said = rng.choice(["fresh", "rotten"])
        # the model is 95% sure and 75% right
        truth = said if rng.random() < 0.75 else ("rotten" if said == "fresh" else "fresh")
        rows.append({"id": f"cal{i}", "text": f"labelled {i} [[label={said}]]", "label": truth})
    data = workdir / "labelled.jsonl"
    data.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    with SyntheticModel(workdir) as model:
        worker = Worker(broker.bootstrap, _tasks(workdir, model.base_url, threshold=0.9, refit_every=10_000), workdir)
        with worker.process():
            run(produce(broker.bootstrap, worker.topic("requests"), [_request("before", "x [[label=fresh]]")]))
            before = run(collect(broker.bootstrap, [worker.topic("results"), worker.topic("review")],
                                 lambda g: len(g) >= 1, timeout_s=60))
            assert before[0].json()["calibrator_version"] == "identity-0"
            assert before[0].json()["decision"] == "auto", "0.95 raw confidence passes 0.9 uncalibrated"
            out = workdir / "cal-out"
            proc = subprocess.run([sys.executable, "-m", "streams", "calibrate", "--task", "sentiment", "--data",
                                   str(data), "--out", str(out), "--concurrency", "8"],
                                  env=worker.env, capture_output=True, text=True, timeout=180)
            print(proc.stdout)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "published calibrator" in proc.stdout and "ECE" in proc.stdout
            assert "Unclosed" not in proc.stderr, "the model client's connection pools are closed"
            assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            record = orjson.loads((out / "calibrator.json").read_bytes())
            run(produce(broker.bootstrap, worker.topic("requests"), [_request("after", "y [[label=fresh]]")]))

            def after_seen(got: list[Received]) -> bool:
                return any(r.json()["id"] == "after" for r in got)

            got = run(collect(broker.bootstrap, [worker.topic("results"), worker.topic("review")], after_seen,
                              timeout_s=60))
    after = next(r.json() for r in got if r.json()["id"] == "after")
    assert after["calibrator_version"] == record["version"], "picked up without restart"
    assert after["confidence"] < 0.85 and after["decision"] == "review", \
        "calibrated to about 0.75, the overconfident 0.95 no longer passes the 0.9 threshold"
