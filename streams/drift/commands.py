"""`python -m streams drift baseline|status`: capture the baseline a task is compared with; show drift state.

`baseline` merges the task's traffic summaries from a declared period (read from `drift.summaries`
to the exact high watermark) and, for tasks with canary prompts, runs each canary
`drift.canary_repeats` times to record the model's own repeat-to-repeat spread. The record goes to
the compacted `drift.baselines` topic; workers switch to it without restart. `status` prints the
newest state of every task from `drift.status`: the last value of every statistic, open episodes,
and the baseline in use.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.classify.model_client import ModelClient
from streams.drift.canaries import canary_samples
from streams.drift.canary_stats import canary_baseline
from streams.drift.monitor import BINS, Baseline, iso
from streams.drift.summary import WindowSummary
from streams.errors import ConfigError
from streams.kafka_io import read_topic
from streams.kafka_security import kafka_client_options
from streams.settings import Settings
from streams.tasks import Task, load_tasks


async def read_logical(settings: Settings, logical: str) -> list[tuple[float, bytes | None, dict[str, Any]]]:
    return await read_topic(settings.bootstrap_servers, settings.topic(logical), kafka_client_options(settings))


def _parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def build_baseline(settings: Settings, task: Task, since: float, until: float) -> Baseline:
    traffic = WindowSummary.empty(len(task.labels), BINS)
    first = last = None
    for _, _, rec in await read_logical(settings, "drift_summaries"):
        if rec.get("task") != task.name or rec.get("kind") != "traffic":
            continue
        start, end = _parse_ts(rec["start"]), _parse_ts(rec["end"])
        if since <= end <= until:  # by flush time: a summary holds what was classified just before it
            traffic = traffic.merge(WindowSummary.from_dict(rec["summary"]))
            first = start if first is None else min(first, start)
            last = end if last is None else max(last, end)
    canaries = None
    if task.drift.canaries:
        client = ModelClient(settings.model_timeout_s, settings.model_max_retries)
        repeats = await canary_samples(client, task)
        await client.close()
        canaries = canary_baseline(repeats)
    version = f"{task.name}.baseline.{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.{secrets.token_hex(2)}"
    return Baseline(task.name, task.model.name, version, traffic if traffic.n else None, canaries,
                    iso(first if first is not None else since), iso(last if last is not None else until))


async def publish(settings: Settings, record: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **kafka_client_options(settings))
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic("baselines"), orjson.dumps(record), key=record["task"].encode())
    finally:
        await producer.stop()


def show_status(statuses: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, st in sorted(statuses.items()):
        lines.append(f"task {name} (model {st['model']})")
        baseline = st["baseline"] or "none: capture one with python -m streams drift baseline"
        lines.append(f"  baseline           {baseline}")
        lines.append(f"  data drift         {'OPEN' if st['data_drift_open'] else 'no'}")
        lines.append(f"  model drift        {'OPEN' if st['model_drift_open'] else 'no'}")
        traffic = st["last"].get("traffic")
        if traffic:
            lines.append(f"  last window        {traffic['window_start']} .. {traffic['window_end']}, "
                         f"{traffic['n']} messages")
            for fam, v in traffic["families"].items():
                p = f"{v['p_value']:.3g}" if v["p_value"] is not None else "-"
                lines.append(f"    {fam:<12} {v['statistic']} {v['value']:.4f} (min effect {v['threshold']:.4f}), "
                             f"p {p}{'  DRIFTED' if v['drifted'] else ''}")
            lines.append(f"    mean entropy {traffic['entropy_mean']:.4f}, "
                         f"label mass {traffic['label_mass_mean']:.4f}, "
                         f"chosen-token logprob {traffic['chosen_logprob_mean']:.4f}")
        canary = st["last"].get("canary")
        if canary:
            lines.append(f"  last canary run    {canary['at']}: KL {canary['value']:.4f} "
                         f"(threshold {canary['threshold']:.4f}){'  DRIFTED' if canary['drifted'] else ''}")
    return "\n".join(lines) if lines else "no drift status yet (no window has closed against a baseline)"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams drift", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("baseline", help="capture a task's baseline from a period of traffic (and its canaries)")
    b.add_argument("--task", required=True)
    b.add_argument("--last-seconds", type=float, default=3600.0, help="the period: this many seconds up to now")
    s = sub.add_parser("status", help="current drift state of every task")
    s.add_argument("--task")
    s.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        registry = load_tasks(settings.tasks_file)
        if args.task and args.task not in registry:
            raise ConfigError(str(settings.tasks_file), [f"--task {args.task!r} is not in the task file"])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "baseline":
        task = registry.tasks[args.task]
        now = time.time()
        baseline = asyncio.run(build_baseline(settings, task, now - args.last_seconds, now))
        if baseline.traffic is None and baseline.canaries is None:
            print(f"error: no traffic summaries for {task.name} in the last {args.last_seconds:g}s and no canaries",
                  file=sys.stderr)
            return 1
        asyncio.run(publish(settings, baseline.to_record()))
        print(f"published baseline {baseline.ref()} to {settings.topic('baselines')}"
              + (f" with {len(task.drift.canaries)} canary prompt(s)" if baseline.canaries else ""))
        return 0
    statuses: dict[str, dict[str, Any]] = {}
    for _, _, rec in asyncio.run(read_logical(settings, "drift_status")):
        if not args.task or rec.get("task") == args.task:
            statuses[rec["task"]] = rec
    print(orjson.dumps(statuses, option=orjson.OPT_INDENT_2).decode() if args.json else show_status(statuses))
    return 0
