"""The main job on embedded defaults: broker + local model + calibration + worker + sample traffic.

`python -m streams demo` starts Tansu and the Gemma model server, fits a calibrator on labelled
snippets with `python -m streams calibrate` (disjoint from the traffic), starts a real worker
(`python -m streams worker`), publishes Rotten Tomatoes snippets (true label in `metadata`) plus a
few malformed requests, prints every output as it arrives, and ends with a summary: throughput,
accuracy against the known labels, review rate, dead letters.

The worker's web pages need a login, as in production: the demo writes a reviewers file in its temp
directory with one reviewer, `demo`, and prints that reviewer's token and how to use it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.kafka_security import kafka_client_options
from streams.localdev.broker import EmbeddedBroker
from streams.localdev.model_server import LocalModelServer
from streams.localdev.processes import ChildProcess, free_port
from streams.localdev.sample_data import load_reviews
from streams.ops.auth import add_reviewer
from streams.ops.screenshot import screenshot
from streams.settings import Settings
from streams.tasks import load_tasks
from streams.topics import ensure_topics

TASK = "movie_sentiment"

#: Requests a careless producer might send; each must come back as a dead letter with this type.
MALFORMED: list[tuple[str, bytes]] = [
    ("invalid_json", b'{"id": "bad-json", "task": "movie_sentiment", "text": "unterminated'),
    ("invalid_utf8", b'{"id": "bad-utf8", "task": "movie_sentiment", "text": "\xff\xfe"}'),
    ("unknown_task", orjson.dumps({"id": "bad-task", "task": "no_such_task", "text": "hello"})),
    ("missing_field", orjson.dumps({"id": "bad-missing", "task": TASK})),
    ("text_too_long", orjson.dumps({"id": "bad-long", "task": TASK, "text": "x" * 30_000})),
]


def _short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class Tally:
    """What arrived, for the live lines and the summary."""

    def __init__(self, expected_ids: set[str], expected_dead: int, truth: dict[str, str]) -> None:
        self.expected = expected_ids
        self.expected_dead = expected_dead
        self.truth = truth
        self.seen: dict[str, str] = {}
        self.received = 0
        self.audited = 0
        self.calibrators = Counter[str]()
        self.correct = Counter[str]()
        self.labelled = Counter[str]()
        self.dead = Counter[str]()
        self.latencies: list[float] = []
        self.first_at = self.last_at = 0.0

    def add(self, topic: str, record: dict[str, Any], texts: dict[str, str]) -> str:
        now = time.monotonic()
        self.first_at = self.first_at or now
        self.last_at = now
        if record.get("audit"):
            self.audited += 1
            return f"  audit  {record.get('label')!s:<7} (copy of an auto-accepted item, for a reviewer to check)"
        self.received += 1
        if topic == "deadletter":
            self.dead[record["error_type"]] += 1
            return f"  dead letter  {record['error_type']:<14} {_short(record['message'], 80)}"
        rid: str = record["id"]  # every result and review record has one (schemas/classification_result)
        decision = record["decision"]
        self.seen.setdefault(rid, decision)
        self.calibrators[record.get("calibrator_version") or "?"] += 1
        if record.get("latency_ms") is not None:
            self.latencies.append(record["latency_ms"])
        label, conf = record.get("label"), record.get("confidence")
        truth = self.truth.get(rid)
        mark = " "
        if label is not None and truth is not None:
            self.labelled[decision] += 1
            ok = label == truth
            self.correct[decision] += ok
            mark = "✓" if ok else "✗"
        conf_s = f"{conf:.2f}" if conf is not None else " -- "
        why = f" ({record['review_reason']})" if decision == "review" else ""
        return f"  {decision:<6} {label!s:<7} {conf_s} {mark}  {_short(texts.get(rid, ''))}{why}"

    @property
    def total(self) -> int:
        return len(self.expected) + self.expected_dead

    def done(self) -> bool:
        return self.expected <= self.seen.keys() and sum(self.dead.values()) >= self.expected_dead


def summary(t: Tally, sent: int, elapsed: float) -> str:
    outcomes = Counter(t.seen.values())
    valid = len(t.seen)
    lines = ["", "summary", "-------"]
    lines.append(f"requests sent        {sent} ({len(MALFORMED)} malformed)")
    missing = len(t.expected - t.seen.keys()) + max(t.expected_dead - sum(t.dead.values()), 0)
    lines.append(f"outputs received     {t.received} for {t.total} requests"
                 + (f"  (MISSING {missing})" if missing else ", none missing"))
    lines.append(f"throughput           {valid / elapsed:.2f} classified/s over {elapsed:.1f}s")
    auto, review = outcomes.get("auto", 0), outcomes.get("review", 0)
    lines.append(f"auto-accepted        {auto}")
    lines.append(f"sent to review       {review}  (review rate {review / max(valid, 1):.1%})")
    lines.append(f"audit copies         {t.audited} auto-accepted items also sent to review for checking")
    if t.labelled["auto"]:
        lines.append(f"accuracy, auto       {t.correct['auto'] / t.labelled['auto']:.3f} on {t.labelled['auto']} items")
    n_all = t.labelled["auto"] + t.labelled["review"]
    if n_all:
        lines.append(f"accuracy, all        {(t.correct['auto'] + t.correct['review']) / n_all:.3f} "
                     f"(model's top label on every item with a label)")
    if t.latencies:
        lat = np.asarray(t.latencies)
        lines.append(f"model latency        p50 {np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms")
    lines.append(f"dead letters         {sum(t.dead.values())}: {dict(t.dead)}")
    lines.append(f"calibrator           {', '.join(f'{v} ({n})' for v, n in t.calibrators.most_common())}")
    return "\n".join(lines)


def calibrate(count: int, workdir: Path) -> None:
    """Fit and publish a calibrator on labelled snippets from the end of the shuffled corpus."""
    from streams.calibration import commands

    labelled = workdir / "labelled.jsonl"
    labelled.write_bytes(b"\n".join(orjson.dumps({"id": f"cal-{i}", "text": ex.text, "label": ex.label})
                                    for i, ex in enumerate(load_reviews()[-count:])))
    print(f"\ncalibrating on {count} labelled snippets (not part of the traffic): "
          f"python -m streams calibrate --task {TASK} --data {labelled}", flush=True)
    rc = commands.main(["--task", TASK, "--data", str(labelled), "--out", str(workdir / "calibration")])
    if rc != 0:
        raise SystemExit(f"calibration failed with exit code {rc}")
    print(flush=True)


async def traffic(settings: Settings, count: int, quiet_s: float) -> bool:
    """Publish the sample traffic and print outputs until all arrived, or none arrived for `quiet_s` seconds:
    a slow machine makes a slow demo, not a failed one, while a stuck worker still ends it."""
    reviews = load_reviews(count)
    texts = {f"rt-{i:05d}": ex.text for i, ex in enumerate(reviews)}
    truth = {f"rt-{i:05d}": ex.label for i, ex in enumerate(reviews)}
    tally = Tally(set(texts), len(MALFORMED), truth)
    topics = {settings.topic(k): k for k in ("results", "review", "deadletter")}
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, **kafka_client_options(settings))
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5,
                                **kafka_client_options(settings))
    await consumer.start()
    await producer.start()
    try:
        started = time.monotonic()
        for rid, text in texts.items():
            req = {"id": rid, "task": TASK, "text": text,
                   "metadata": {"true_label": truth[rid], "source": "rotten_tomatoes"}}
            await producer.send(settings.topic("requests"), orjson.dumps(req), key=rid.encode())
        for _, raw in MALFORMED:
            await producer.send(settings.topic("requests"), raw, key=b"malformed")
        await producer.flush()
        print(f"published {len(texts)} reviews and {len(MALFORMED)} malformed requests to "
              f"{settings.topic('requests')}; outputs as they arrive:\n", flush=True)
        deadline = time.monotonic() + quiet_s
        while time.monotonic() < deadline and not tally.done():
            batch = await consumer.getmany(timeout_ms=500)
            if batch:
                deadline = time.monotonic() + quiet_s
            for tp, messages in batch.items():
                for msg in messages:
                    record = orjson.loads(msg.value)
                    line = tally.add(topics[tp.topic], record, texts)
                    print(f"[{tally.received:>4}/{tally.total}] {line}", flush=True)
        print(summary(tally, len(texts) + len(MALFORMED), max(tally.last_at - started, 1e-9)), flush=True)
        return tally.done()
    finally:
        await producer.stop()
        await consumer.stop()


def drift_baseline(env: dict[str, str]) -> None:
    """Capture a drift baseline before any traffic: canaries only (the demo's traffic is too short for
    its 300 s windows), so the worker's canary runs have something to compare with."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "streams", "drift", "baseline", "--task", TASK, "--last-seconds", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    print(proc.stdout.strip() or proc.stderr.strip(), flush=True)


async def answer_reviews(settings: Settings, limit: int) -> int:
    """Answer up to `limit` pending review items (audit samples first) with the critic's label from
    `metadata`: what a reviewer would do, so the dashboard's reliability and audited accuracy fill in."""
    from streams.kafka_io import read_topic
    from streams.ops.review_cli import load_queue
    from streams.ops.review_queue import answer_record

    tasks = load_tasks(settings.tasks_file)
    queue = await load_queue(settings, tasks)
    truth = {rec["id"]: (rec.get("metadata") or {}).get("true_label")
             for _, _, rec in await read_topic(settings.bootstrap_servers, settings.topic("review"),
                                               kafka_client_options(settings))}
    items = sorted(queue.items(TASK, "oldest", 100_000), key=lambda i: not i.audit)[:limit]
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **kafka_client_options(settings))
    await producer.start()
    n = 0
    try:
        for item in items:
            label = truth.get(item.id)
            if isinstance(label, str) and label in tasks.tasks[TASK].labels:
                record = answer_record(item, label, "demo")
                await producer.send_and_wait(settings.topic("feedback"), orjson.dumps(record), key=item.id.encode())
                n += 1
    finally:
        await producer.stop()
    return n


def how_to_log_in(port: str, token: str) -> str:
    base = f"http://127.0.0.1:{port}"
    return (f"\nthe worker's pages need a login; reviewer `demo`'s token (shown once, only its hash is kept):\n"
            f"  {token}\n"
            f"  scripts: curl -H \"Authorization: Bearer {token}\" {base}/review/items.json\n"
            f"  browser: {base}/login (paste the token), then {base}/review/ and {base}/dashboard/\n"
            f"  (open while the demo runs; /metrics, /healthz and /readyz need no login)\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams demo", description=__doc__)
    parser.add_argument("--count", type=int, default=150, help="sample reviews to classify")
    parser.add_argument("--calibrate", type=int, default=200,
                        help="labelled snippets to fit a calibrator on first (0: raw probabilities)")
    parser.add_argument("--tasks", default="config/tasks.toml", help="task file (needs the movie_sentiment task)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=180,
                        help="give up when no output arrived for this many seconds")
    parser.add_argument("--answer", type=int, default=None,
                        help="answer this many review items as a reviewer would, with the known labels "
                             "(default 0; 40 with --screenshot)")
    parser.add_argument("--screenshot", metavar="PNG",
                        help="at the end, write a PNG of the worker's dashboard (needs chromium)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="llm-classify-demo-"))
    print(f"logs and state in {workdir}", flush=True)
    print("starting the embedded broker (Tansu) ...", flush=True)
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        print(f"  broker at {broker.url}", flush=True)
        print("starting the local model server (llama.cpp, Gemma 3 270M) ...", flush=True)
        with LocalModelServer(log_path=workdir / "model.log") as model:
            print(f"  model at {model.base_url}", flush=True)
            reviewers = workdir / "reviewers"
            token = add_reviewer(reviewers, "demo")
            env = os.environ | {
                "STREAMS_BROKER": broker.url,
                "STREAMS_TASKS_FILE": str(Path(args.tasks).resolve()),
                "STREAMS_PARTITIONS": str(args.partitions),
                "STREAMS_SESSION_TIMEOUT_S": "6",
                "STREAMS_DATA_DIR": str(workdir / "worker-data"),
                "STREAMS_WEB_HOST": "127.0.0.1",
                "STREAMS_WEB_PORT": str(free_port()),
                "STREAMS_WEB_AUTH": "on",
                "STREAMS_REVIEWERS_FILE": str(reviewers),
                "MODEL_BASE_URL": model.base_url,
            }
            settings = Settings.from_env(env)
            load_tasks(settings.tasks_file, env)  # fail here, readably, rather than in the worker's log
            asyncio.run(ensure_topics(settings))
            if args.calibrate > 0:
                os.environ.update(env)  # the calibrate command reads the same settings as the worker
                calibrate(args.calibrate, workdir)
            if args.screenshot:  # canary-only drift baseline, so the dashboard's canary plot has data
                drift_baseline(env)
            print("starting a worker: python -m streams worker ...", flush=True)
            worker = ChildProcess("worker", [sys.executable, "-m", "streams", "worker", "-l", "info"],
                                  workdir / "worker.log", env)
            with worker:
                print(how_to_log_in(env["STREAMS_WEB_PORT"], token), flush=True)
                ok = asyncio.run(traffic(settings, args.count, args.timeout))
                if not worker.alive():
                    print(f"the worker died; its log:\n{worker.tail(40)}", file=sys.stderr)
                    return 1
                answers = args.answer if args.answer is not None else (40 if args.screenshot else 0)
                if answers:
                    answered = asyncio.run(answer_reviews(settings, answers))
                    print(f"\nanswered {answered} review items with their known labels (as reviewers would)")
                if args.screenshot:
                    time.sleep(12)  # the dashboard samples every 5 s; let the answers reach it
                    url = f"http://127.0.0.1:{env['STREAMS_WEB_PORT']}/dashboard/"
                    print(f"dashboard screenshot: {screenshot(url, Path(args.screenshot), token=token)}")
    print(f"\nall outputs accounted for: {'yes' if ok else 'NO'}; logs in {workdir}")
    return 0 if ok else 1
