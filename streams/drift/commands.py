"""`python -m streams drift baseline|status|backtest`: capture a baseline; show drift state; replay results.

`baseline` merges the task's traffic summaries from a declared period (read from `drift.summaries`
to the exact high watermark) and, for tasks with canary prompts, runs each canary
`drift.canary_repeats` times to record the model's own repeat-to-repeat spread. The record goes to
the compacted `drift.baselines` topic; workers switch to it without restart. `status` prints the
newest state of every task from `drift.status`: the last value of every statistic, open episodes,
and the baseline in use. `backtest` replays classification results (a JSON-lines file of result records
in time order, or the results and review topics) through the worker's own `TaskDrift` (window test,
CUSUMs, one episode tracker, the task's drift settings) and prints one line per episode.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.classify.model_client import ModelClient
from streams.drift.canaries import canary_samples
from streams.drift.canary_stats import canary_baseline
from streams.drift.monitor import BINS, Baseline, iso
from streams.drift.sequential import min_baseline_messages
from streams.drift.summary import WindowSummary
from streams.drift.windows import TaskDrift
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


@dataclass
class Episode:
    """One drift episode found by `backtest`: window indices count from the input's first window."""

    opened: int
    opened_at: str
    detector: str
    signal: str
    effect: float
    change_point: str | None
    recovered: int | None = None
    recovered_at: str | None = None

    def line(self, number: int) -> str:
        end = (f"recovered window {self.recovered} ({self.recovered_at})" if self.recovered is not None
               else "still open at the end")
        return (f"episode {number}: opened window {self.opened} ({self.opened_at}), {self.detector} on "
                f"{self.signal}, effect {self.effect:+.4g}, change point {self.change_point}; {end}")


def result_messages(task: Task, records: Iterable[tuple[float, dict[str, Any]]]
                    ) -> Iterable[tuple[float, int, float, float, float]]:
    """(time s, label index, confidence, entropy, label mass) of each record the worker's accumulator adds:
    this task's, with a label and an entropy, not an audit copy. Time: `processed_at`, else the given one."""
    for ts, rec in records:
        if rec.get("task") != task.name or rec.get("label") not in task.labels or rec.get("entropy") is None:
            continue
        if rec.get("audit") or rec.get("confidence") is None:
            continue
        at = _parse_ts(rec["processed_at"]) if rec.get("processed_at") else ts
        yield at, task.labels.index(rec["label"]), float(rec["confidence"]), float(rec["entropy"]), \
            float(rec.get("label_mass") or 1.0)


def window_summaries(task: Task, messages: Iterable[tuple[float, int, float, float, float]]
                     ) -> list[tuple[int, WindowSummary]]:
    """Messages grouped into the task's tumbling windows: (window number since the epoch, summary)."""
    out: list[tuple[int, WindowSummary]] = []
    for at, label, confidence, entropy, mass in messages:
        w = math.floor(at / task.drift.window_s)
        if not out or out[-1][0] != w:
            if out and w < out[-1][0]:
                raise ValueError(f"records are not in time order at {iso(at)}")
            out.append((w, WindowSummary.empty(len(task.labels), BINS)))
        out[-1][1].add(label, confidence, entropy, mass, 0.0)
    return out


def backtest(task: Task, windows: list[tuple[int, WindowSummary]], baseline_windows: int | None,
             published: Baseline | None) -> tuple[Baseline, list[Episode]]:
    """Replay windows through the worker's `TaskDrift`; the baseline is the leading `baseline_windows`
    windows (by time, from the first) or, when None, the published one."""
    if not windows:
        raise ValueError("no results of this task with a label and an entropy")
    first = windows[0][0]
    size = task.drift.window_s
    if baseline_windows is not None:
        lead = [s for w, s in windows if w - first < baseline_windows]
        traffic = lead[0]
        for s in lead[1:]:
            traffic = traffic.merge(s)
        baseline = Baseline(task.name, task.model.name, f"backtest.leading-{baseline_windows}-windows", traffic, None,
                            iso(first * size), iso((first + baseline_windows) * size))
        windows = [(w, s) for w, s in windows if w - first >= baseline_windows]
    elif published is not None and published.traffic is not None:
        baseline = published
    else:
        raise ValueError("no baseline: pass --baseline-windows N or publish one (python -m streams drift baseline)")
    drift = TaskDrift(task, {}, {task.name: baseline})
    episodes: list[Episode] = []
    closing = [*windows, (windows[-1][0] + 1 if windows else first, WindowSummary.empty(len(task.labels), BINS))]
    for w, summary in closing:
        for output in drift.on_traffic(summary.to_dict(), w * size):
            if output.topic != "alerts":
                continue
            alert = orjson.loads(output.value)
            judged = round(_parse_ts(alert["window_start"]) / size) - first
            if alert["state"] == "open":
                episodes.append(Episode(judged, alert["window_start"], alert["detector"], alert["signal"],
                                        alert["effect"], alert["change_point"]))
            elif episodes:
                episodes[-1].recovered, episodes[-1].recovered_at = judged, alert["window_start"]
    return baseline, episodes


async def _published_baseline(settings: Settings, task: Task) -> Baseline | None:
    found = None
    for _, _, rec in await read_logical(settings, "baselines"):
        if rec.get("task") == task.name:
            found = Baseline.from_record(rec)
    return found


async def _topic_results(settings: Settings) -> list[tuple[float, dict[str, Any]]]:
    records = [(ts, rec) for logical in ("results", "review") for ts, _, rec in await read_logical(settings, logical)]
    return sorted(records, key=lambda r: r[0])


def _run_backtest(settings: Settings, task: Task, args: argparse.Namespace) -> int:
    if args.input is not None:
        with Path(args.input).open("rb") as f:
            records = [(0.0, orjson.loads(line)) for line in f if line.strip()]
    else:
        records = asyncio.run(_topic_results(settings))
    published = asyncio.run(_published_baseline(settings, task)) if args.baseline_windows is None else None
    try:
        baseline, episodes = backtest(task, window_summaries(task, result_messages(task, records)),
                                      args.baseline_windows, published)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    d = task.drift
    print(f"task {task.name}: baseline {baseline.ref()}; windows of {d.window_s:g} s; window test alpha {d.alpha:g}, "
          f"CUSUMs arl0 {d.sequential_arl0:g} windows, shift {d.sequential_shift:g} sd")
    for i, episode in enumerate(episodes, 1):
        print(episode.line(i))
    if not episodes:
        print("no drift episode")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams drift", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("baseline", help="capture a task's baseline from a period of traffic (and its canaries)")
    b.add_argument("--task", required=True)
    b.add_argument("--last-seconds", type=float, default=3600.0, help="the period: this many seconds up to now")
    s = sub.add_parser("status", help="current drift state of every task")
    s.add_argument("--task")
    s.add_argument("--json", action="store_true")
    bt = sub.add_parser("backtest", help="replay results through the worker's drift detectors; one line per episode")
    bt.add_argument("--task", required=True)
    source = bt.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSON lines of result records, in time order")
    source.add_argument("--topic", action="store_true", help="read the results and review topics instead")
    bt.add_argument("--baseline-windows", type=int, help="the baseline: this many leading windows "
                    "(default: the task's published baseline on drift.baselines)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        registry = load_tasks(settings.tasks_file)
        if args.task and args.task not in registry:
            raise ConfigError(str(settings.tasks_file), [f"--task {args.task!r} is not in the task file"])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "backtest":
        return _run_backtest(settings, registry.tasks[args.task], args)
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
        needed = min_baseline_messages(task.drift.sequential_shift)
        if baseline.traffic is not None and baseline.traffic.n < needed:
            print(f"warning: the baseline holds {baseline.traffic.n} messages; the sequential detectors' "
                  f"false-alarm bound needs about {needed} (drift.sequential_shift = "
                  f"{task.drift.sequential_shift:g}). With fewer, the baseline's own error can read as a slow "
                  "drift after long enough: take a longer period (--last-seconds) or raise "
                  "drift.sequential_shift.", file=sys.stderr)
        return 0
    statuses: dict[str, dict[str, Any]] = {}
    for _, _, rec in asyncio.run(read_logical(settings, "drift_status")):
        if not args.task or rec.get("task") == args.task:
            statuses[rec["task"]] = rec
    print(orjson.dumps(statuses, option=orjson.OPT_INDENT_2).decode() if args.json else show_status(statuses))
    return 0
