"""`python -m streams review`: answer pending review items from a terminal.

Reads the review and feedback topics to their exact high watermark (the same derivation as the
worker's review page, so it needs no running worker), shows pending items oldest first or lowest
confidence first, and publishes each answer to the feedback topic keyed by id; the feedback agent
turns it into the final `human` result. Type a label's number or name, `s` to skip, `q` to quit.
This writes to Kafka directly, not over HTTP: whoever may write the feedback topic may answer, under
the name given with --reviewer (Kafka's ACLs are the boundary here, not the web pages' logins).

`python -m streams review reviewers add NAME` manages who may log in to the web pages: it prints a
new token once and keeps only its salted scrypt hash in STREAMS_REVIEWERS_FILE (streams/ops/auth.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import orjson
from aiokafka import AIOKafkaProducer

from streams.errors import ConfigError
from streams.kafka_io import read_topic
from streams.kafka_security import kafka_client_options
from streams.ops.auth import Reviewer, add_reviewer, read_reviewers, write_reviewers
from streams.ops.review_queue import PendingItem, ReviewQueue, answer_record
from streams.settings import Settings
from streams.tasks import TaskRegistry, load_tasks


async def load_queue(settings: Settings, tasks: TaskRegistry) -> ReviewQueue:
    """Pending items now: every review item without an accepted answer."""
    queue = ReviewQueue({name: t.labels for name, t in tasks.tasks.items()}, max_items=settings.review_queue_max)
    opts = kafka_client_options(settings)
    now = time.time()
    for _, _, record in await read_topic(settings.bootstrap_servers, settings.topic("review"), opts):
        queue.add_item(record, now)
    for _, _, record in await read_topic(settings.bootstrap_servers, settings.topic("feedback"), opts):
        queue.add_answer(record, now)
    return queue


def describe(item: PendingItem, labels: tuple[str, ...], now: float, out: TextIO) -> None:
    conf = f"{item.confidence:.2f}" if item.confidence is not None else "-"
    probs = "  ".join(f"{k} {v:.2f}" for k, v in sorted(item.probabilities.items(), key=lambda kv: -kv[1])) or "none"
    why = (item.reason + (f" ({item.model_error})" if item.model_error else "")
           + (" · audit sample" if item.audit else ""))
    print(f"\n[{item.task}] {item.id}  waiting {max(now - item.queued_at, 0):.0f} s  routed: {why}", file=out)
    print(f"model: {item.label} at {conf}   probabilities: {probs}", file=out)
    print("-" * 72, file=out)
    print(item.text, file=out)
    print("-" * 72, file=out)
    print("label: " + "  ".join(f"{i}={lbl}" for i, lbl in enumerate(labels, 1)) + "  s=skip  q=quit", file=out)


def choose(answer: str, labels: tuple[str, ...]) -> str | None:
    """A typed answer to a label: its number (1-based) or its name; None when it is neither."""
    answer = answer.strip()
    if answer.isdigit() and 1 <= int(answer) <= len(labels):
        return labels[int(answer) - 1]
    return answer if answer in labels else None


async def session(settings: Settings, tasks: TaskRegistry, items: list[PendingItem], reviewer: str | None,
                  inp: TextIO, out: TextIO) -> int:
    """Ask for each item in turn; returns how many were answered."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **kafka_client_options(settings))
    await producer.start()
    answered = 0
    try:
        for item in items:
            labels = tasks.tasks[item.task].labels
            describe(item, labels, time.time(), out)
            while True:
                print("> ", end="", file=out, flush=True)
                line = inp.readline()
                if not line or line.strip().lower() == "q":
                    return answered
                if line.strip().lower() == "s":
                    break
                label = choose(line, labels)
                if label is None:
                    print(f"'{line.strip()}' is not a label; type 1-{len(labels)}, a label, s or q", file=out)
                    continue
                record = answer_record(item, label, reviewer)
                await producer.send_and_wait(settings.topic("feedback"), orjson.dumps(record), key=item.id.encode())
                answered += 1
                print(f"answered {item.id}: {label}", file=out)
                break
        return answered
    finally:
        await producer.stop()


def reviewers_main(argv: list[str]) -> int:
    """`python -m streams review reviewers add|remove|list`: the web pages' reviewers file."""
    parser = argparse.ArgumentParser(prog="python -m streams review reviewers",
                                     description="Manage the reviewers file (STREAMS_REVIEWERS_FILE) of the web pages.")
    parser.add_argument("--file", default=os.environ.get("STREAMS_REVIEWERS_FILE") or None,
                        help="the reviewers file (default: $STREAMS_REVIEWERS_FILE)")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="a reviewer with a new token, printed once (only its hash is kept)")
    add.add_argument("name")
    add.add_argument("--tasks", help="comma-separated tasks this reviewer may review (default: every task)")
    add.add_argument("--rotate", action="store_true", help="a new token for a reviewer already in the file "
                                                           "(the old token and its sessions stop working)")
    add.add_argument("--proxy-only", action="store_true",
                     help="no token: only task permissions for a user a trusted proxy names")
    remove = sub.add_parser("remove", help="a reviewer (their token and sessions stop working)")
    remove.add_argument("name")
    sub.add_parser("list", help="names and tasks (never the hashes)")
    args = parser.parse_args(argv)
    if not args.file:
        print("error: give --file or set STREAMS_REVIEWERS_FILE", file=sys.stderr)
        return 2
    path = Path(args.file)
    try:
        reviewers = read_reviewers(path) if path.exists() else {}
        if args.command == "list":
            for r in reviewers.values():
                print(f"{r.name:<24} {'proxy only' if r.hash is None else 'token':<10} "
                      f"{', '.join(sorted(r.tasks)) if r.tasks is not None else 'every task'}")
            return 0
        if args.command == "remove":
            if reviewers.pop(args.name, None) is None:
                print(f"error: {args.name} is not in {path}", file=sys.stderr)
                return 1
            write_reviewers(path, reviewers)
            print(f"removed {args.name} from {path}", file=sys.stderr)
            return 0
        tasks = frozenset(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None
        if args.proxy_only:
            if args.name in reviewers and not args.rotate:
                print(f"error: {args.name} is already in {path}", file=sys.stderr)
                return 1
            reviewers[args.name] = Reviewer(args.name, None, tasks)
            write_reviewers(path, reviewers)
            read_reviewers(path)  # what the worker will read: a bad name or task fails here, not there
            print(f"{args.name} may review {args.tasks or 'every task'} when a trusted proxy names them",
                  file=sys.stderr)
            return 0
        token = add_reviewer(path, args.name, tasks, replace=args.rotate)
        read_reviewers(path)
    except (OSError, ValueError) as exc:  # ReviewersError is a ValueError; it names lines, never hashes
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 1
    print(f"token for {args.name} (shown once; {path} keeps only its hash). Scripts send it as "
          f"`Authorization: Bearer TOKEN`; in a browser, paste it into /login:", file=sys.stderr)
    print(token)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["reviewers"]:
        return reviewers_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m streams review", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", help="only this task's items")
    parser.add_argument("--order", choices=("oldest", "confidence"), default="oldest",
                        help="oldest first (default) or lowest confidence first")
    parser.add_argument("--limit", type=int, default=1000, help="at most this many items")
    parser.add_argument("--reviewer", help="your name, recorded with each answer")
    parser.add_argument("--list", action="store_true", help="print the pending items and exit")
    parser.add_argument("--json", action="store_true", help="with --list: JSON instead of text")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        tasks = load_tasks(settings.tasks_file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.task and args.task not in tasks:
        print(f"error: task {args.task!r} is not in {settings.tasks_file}; known: {', '.join(tasks.tasks)}",
              file=sys.stderr)
        return 2
    queue = asyncio.run(load_queue(settings, tasks))
    items = queue.items(args.task, args.order, args.limit)
    if args.list:
        if args.json:
            print(orjson.dumps({"items": [i.to_dict() for i in items]}).decode())
        else:
            now = time.time()
            for i in items:
                conf = f"{i.confidence:.2f}" if i.confidence is not None else "  - "
                print(f"{i.task:<16} {i.id:<24} {conf} {i.reason:<15} {max(now - i.queued_at, 0):6.0f}s  "
                      f"{i.text[:60]!r}")
            print(f"{len(items)} pending")
        return 0
    if not items:
        print("nothing waits for review")
        return 0
    print(f"{len(items)} pending item(s), {args.order} first")
    answered = asyncio.run(session(settings, tasks, items, args.reviewer, sys.stdin, sys.stdout))
    print(f"\n{answered} answered; the final results follow on {settings.topic('results')}")
    return 0
