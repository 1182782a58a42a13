"""`python -m streams calibrate`: fit a task's calibrator on a labelled file and publish it.

Runs the task's model over every labelled text through the worker's own path (`MethodRunner` with
the chosen confidence method, bounded concurrency, a progress line), splits fit / held-out, chooses the method by
cross-validated NLL on the fit set (one-standard-error rule, never worse than the base rate), says
whether the model has any signal for the task (AUROC, accuracy against the majority label, with a
plain warning when it has none), prints held-out metrics before and after with bootstrap
intervals, writes reliability diagrams, and publishes the calibrator (and the labelled examples, so
later refits build on them). Workers pick the new version up without restart.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from streams.calibration.fitting import FitOutcome, fit_and_evaluate
from streams.calibration.metrics import confidence_and_correct, reliability_data
from streams.calibration.plots import reliability_diagram
from streams.calibration.registry import CalibratorKey
from streams.calibration.scoring import score
from streams.calibration.store import calibrator_record
from streams.classify.model_client import ModelClient
from streams.confidence.names import FIRST_TOKEN, METHOD_NAMES, SELF_CONSISTENCY
from streams.confidence.probe import probe_endpoint
from streams.errors import ConfigError
from streams.kafka_security import kafka_client_options
from streams.settings import Settings
from streams.stamps import SCHEMA_VERSION, now_iso
from streams.tasks import Task, load_tasks


def read_labelled(path: Path, labels: tuple[str, ...]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(id, text, label) rows from JSONL or CSV with `text` and `label`; plus a note per skipped row."""
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    rows.append({"_error": f"line {n}: not JSON ({exc})"})
    good, skipped = [], []
    for n, row in enumerate(rows, 1):
        text, label = row.get("text"), row.get("label")
        if "_error" in row:
            skipped.append(row["_error"])
        elif not isinstance(text, str) or not text.strip():
            skipped.append(f"row {n}: no text")
        elif label not in labels:
            skipped.append(f"row {n}: label {label!r} is not one of {list(labels)}")
        else:
            good.append((str(row.get("id") or f"cal-{n}"), text, label))
    return good, skipped


def usable(scored: list[dict[str, Any]], task: Task) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Items the worker would route on confidence; the rest go to review anyway and are left out."""
    kept, dropped = [], {"model error or no logprobs": 0, "label mass below min_label_mass": 0}
    for item in scored:
        if "raw_probabilities" not in item:
            dropped["model error or no logprobs"] += 1
        elif item["label_mass"] < task.min_label_mass:
            dropped["label mass below min_label_mass"] += 1
        else:
            kept.append(item)
    return kept, dropped


def report(outcome: FitOutcome, task: Task) -> str:
    b, a = outcome.metrics_before, outcome.metrics_after
    lines = [(f"calibrator for {task.name}: {outcome.calibrator.method} "
              f"(fit on {outcome.fit_size}, judged on {outcome.heldout_size} held out)"),
             ("5-fold cross-validated NLL on the fit set, with standard errors (one-standard-error rule; never "
              "worse than the constant base rate):"), outcome.selection,
             "", f"{'held-out metric':<22}{'raw':>24}{'calibrated':>24}"]

    def cell(m: dict[str, Any], key: str) -> str:
        interval = m.get(f"{key}_interval")
        return f"{m[key]:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")

    for key, name in (("ece", "ECE (15 equal bins)"), ("ece_mass", "ECE (equal mass)"), ("mce", "MCE"),
                      ("brier", "Brier"), ("nll", "NLL"), ("accuracy", "accuracy")):
        lines.append(f"{name:<22}{cell(b, key):>24}{cell(a, key):>24}")
    if a.get("ece_floor"):
        mean, q95 = a["ece_floor"]
        lines.append(f"(a perfectly calibrated model with the calibrated confidences would score ECE {mean:.4f} "
                     f"on these {a['n']} items, under {q95:.4f} 95% of the time: binning noise, not miscalibration)")
    lines += ["", outcome.signal.summary(task.labels)]
    warning = outcome.signal.warning()
    if warning:
        lines.append(warning)
    if outcome.risk_control is not None:
        rc = outcome.risk_control
        if rc["feasible"]:
            lines.append(f"\nrisk control: auto-accept at confidence >= {rc['threshold']:.4f} keeps the error on "
                         f"auto-accepted items <= {rc['target_error']:.1%} with probability >= {1 - rc['delta']:.0%}; "
                         f"coverage on held-out {rc['coverage']:.1%} (error there {rc['empirical_error']:.2%})")
        else:
            lines.append(f"\nrisk control: no threshold meets {rc['target_error']:.1%} at {1 - rc['delta']:.0%} "
                         "confidence on these labels: every item goes to review")
    return "\n".join(lines)


async def publish(settings: Settings, record: dict[str, Any], examples: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=20,
                                **kafka_client_options(settings))
    await producer.start()
    try:
        for ex in examples:
            await producer.send(settings.topic("examples"), orjson.dumps(ex), key=ex["task"].encode())
        await producer.send_and_wait(settings.topic("calibrators"), orjson.dumps(record),
                                     key=CalibratorKey.of_record(record).topic_key())
    finally:
        await producer.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams calibrate", description=__doc__)
    parser.add_argument("--task", required=True, help="task name in the task file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="labelled JSONL or CSV with text and label (optional id)")
    source.add_argument("--scores", type=Path, help="reuse a scores.jsonl written by an earlier run (no model calls)")
    parser.add_argument("--holdout", type=float, default=0.3, help="share held out of the fit for the verdict")
    parser.add_argument("--concurrency", type=int, default=16, help="model calls in flight")
    parser.add_argument("--out", type=Path, default=Path("calibration-out"), help="diagrams, scores, calibrator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-publish", action="store_true", help="fit and report only")
    parser.add_argument("--method", default=FIRST_TOKEN, choices=METHOD_NAMES,
                        help="confidence method to calibrate (each method has its own calibrator)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        task = load_tasks(settings.tasks_file).get(args.task)
        if task is None:
            raise ConfigError(str(settings.tasks_file), [f"--task {args.task!r} is not in the task file"])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.scores:
        scored = [orjson.loads(line) for line in args.scores.read_text().splitlines() if line.strip()]
    else:
        rows, skipped = read_labelled(args.data, task.labels)
        for note in skipped[:10]:
            print(f"skipped {note}", file=sys.stderr)
        if len(skipped) > 10:
            print(f"... and {len(skipped) - 10} more skipped rows", file=sys.stderr)

        async def score_rows() -> list[dict[str, Any]]:
            async with ModelClient(settings.model_timeout_s, settings.model_max_retries) as client:
                # Self-consistency batches samples with n where the endpoint honours it: ask the endpoint first.
                caps = await probe_endpoint(client, task.model) if args.method == SELF_CONSISTENCY else None
                return await score(task, rows, args.concurrency, client, args.method, caps)

        scored = asyncio.run(score_rows())
        (args.out / "scores.jsonl").write_bytes(b"\n".join(orjson.dumps(s) for s in scored) + b"\n")
    kept, dropped = usable(scored, task)
    print(f"{len(kept)} of {len(scored)} labelled items usable; left out: {dropped}")
    index = {label: i for i, label in enumerate(task.labels)}
    probs = np.array([[s["raw_probabilities"][lbl] for lbl in task.labels] for s in kept]).reshape(-1, len(task.labels))
    y = np.array([index[s["label"]] for s in kept], dtype=np.intp)
    if len(y) < 20 or len(np.unique(y)) < 2:
        print("error: need at least 20 usable items covering two labels to calibrate", file=sys.stderr)
        return 1
    outcome = fit_and_evaluate(probs, y, task.calibration.methods, args.holdout, None,
                               task.target_error, task.failure_probability, seed=args.seed)
    print(report(outcome, task))
    record = calibrator_record(task.name, args.method, task.model.name, task.labels, outcome.calibrator,
                               outcome.fit_size, outcome.heldout_size, outcome.metrics_before, outcome.metrics_after,
                               "calibrate", outcome.cv_nll, outcome.risk_control, outcome.cv_se,
                               outcome.signal.to_dict(task.labels))
    (args.out / "calibrator.json").write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    hold = outcome.heldout_index
    curves = {name: reliability_data(*confidence_and_correct(p, y[hold]))
              for name, p in (("raw", probs[hold]), ("calibrated", outcome.calibrator.transform(probs[hold])))}
    png = reliability_diagram(curves, args.out / "reliability.png",
                              f"{task.name}: held-out reliability ({outcome.calibrator.method})")
    print(f"\nwrote {png} (and its data as JSON), {args.out / 'calibrator.json'}, {args.out / 'scores.jsonl'}")
    if args.no_publish:
        print("not published (--no-publish)")
        return 0
    examples = [{"id": s["id"], "task": task.name, "model": task.model.name, "label": s["label"],
                 "raw_probabilities": s["raw_probabilities"], "calibrator_version": None, "review_reason": None,
                 "reviewer": None, "source": "calibration", "labelled_at": now_iso(), "method": args.method,
                 "schema_version": SCHEMA_VERSION} for s in kept]
    asyncio.run(publish(settings, record, examples))
    print(f"published calibrator {record['version']} to {settings.topic('calibrators')} "
          f"and {len(examples)} labelled examples to {settings.topic('examples')}")
    return 0
