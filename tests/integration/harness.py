"""Real processes and real Kafka I/O for integration tests: no mocks between the test and the broker."""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.localdev.processes import ChildProcess, free_port, port_open
from streams.ops.auth import add_reviewer
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def write_tasks(path: Path, base_url: str, name: str = "sentiment", labels: tuple[str, ...] = ("fresh", "rotten"),
                threshold: float = 0.6, examples: bool = True, model: str = "gemma3-270m",
                model_extra: str = "") -> Path:
    """A one-task file; `model_extra` adds lines to its [task.model] table (e.g. `requests_per_minute = 600`)."""
    shots = "".join(
        f'\n[[task.prompt.examples]]\ntext = "{t}"\nlabel = "{lbl}"\n'
        for t, lbl in [("A triumph: funny, moving and beautifully acted.", labels[0]),
                       ("A tedious, clumsy mess with bored actors.", labels[1])]
    ) if examples else ""
    extra = f"{model_extra}\n" if model_extra else ""
    path.write_text(
        f'[[task]]\nname = "{name}"\nlabels = {orjson.dumps(list(labels)).decode()}\n'
        f'[task.model]\nbase_url = "{base_url}"\nname = "{model}"\n{extra}'
        f'[task.routing]\nreview_threshold = {threshold}\nmin_label_mass = 0.5\n'
        f'[task.prompt]\ntemplate = "Review: {{text}}\\nAnswer {labels[0]} or {labels[1]}:"\n{shots}'
    )
    return path


@dataclass
class Worker:
    """A `python -m streams worker` process with its own app id and topic prefix.

    Its web pages need authentication, as in production: the worker gets a reviewers file of its own with
    one reviewer (`reviewer`), whose token is `token`; `auth_headers` carries it. `web_auth=False` sets
    STREAMS_WEB_AUTH=off instead: only for a test that is about something else and says so.
    """

    bootstrap: str
    tasks_file: Path
    workdir: Path
    partitions: int = 4
    max_in_flight: int = 32
    extra_env: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}.")
    app_id: str = field(default_factory=lambda: f"app-{uuid.uuid4().hex[:8]}")
    web_port: int = field(default_factory=free_port)
    runs: int = 0
    reviewer: str = "tester"
    web_auth: bool = True
    reviewers_file: Path = field(init=False)
    token: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.reviewers_file = self.workdir / f"reviewers-{uuid.uuid4().hex[:8]}"
        self.token = add_reviewer(self.reviewers_file, self.reviewer) if self.web_auth else ""

    @property
    def auth_headers(self) -> dict[str, str]:
        """What a script sends to the protected pages: the reviewer's token as a bearer token."""
        return {"Authorization": f"Bearer {self.token}"} if self.web_auth else {}

    def get_json(self, path: str) -> Any:
        """GET a page of this worker as its reviewer, parsed as JSON."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", headers=self.auth_headers)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return orjson.loads(resp.read())

    @property
    def env(self) -> dict[str, str]:
        auth = ({"STREAMS_REVIEWERS_FILE": str(self.reviewers_file)} if self.web_auth
                else {"STREAMS_WEB_AUTH": "off"})
        return os.environ | auth | {
            "STREAMS_BROKER": f"kafka://{self.bootstrap}",
            "STREAMS_APP_ID": self.app_id,
            "STREAMS_TOPIC_PREFIX": self.prefix,
            "STREAMS_PARTITIONS": str(self.partitions),
            "STREAMS_TASKS_FILE": str(self.tasks_file),
            "STREAMS_MAX_IN_FLIGHT": str(self.max_in_flight),
            # Tansu holds a JoinGroup for half the session timeout, so every worker start and rebalance waits 2 s;
            # heartbeats still go every 0.5 s, 8 to a session.
            "STREAMS_SESSION_TIMEOUT_S": "4",
            "STREAMS_MODEL_MAX_RETRIES": "2",
            "STREAMS_DATA_DIR": str(self.workdir / f"data-{self.app_id}"),
            "STREAMS_WEB_HOST": "127.0.0.1",
            "STREAMS_WEB_PORT": str(self.web_port),
        } | self.extra_env

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def process(self) -> ChildProcess:
        """A new worker process (call .start()); each run logs to its own file."""
        self.runs += 1
        self.web_port = free_port()
        return ChildProcess(
            f"worker-{self.runs}", [sys.executable, "-m", "streams", "worker", "-l", "info"],
            self.workdir / f"worker-{self.app_id}-{self.runs}.log", self.env,
        )

    def topic(self, logical: str) -> str:
        return self.settings.topic(logical)


def wait_ready(proc: ChildProcess, timeout_s: float = 60) -> ChildProcess:
    """Until the worker has joined its group and says so (Faust logs '[^Worker]: Ready')."""
    proc.wait_until(lambda: "Worker]: Ready" in proc.log_path.read_text(errors="replace"), timeout_s)
    return proc


async def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]],
                  headers: list[tuple[str, bytes]] | None = None) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    n = 0
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key, headers=headers)
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


@dataclass
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def json(self) -> dict[str, Any]:
        return orjson.loads(self.value)


async def collect(bootstrap: str, topics: list[str], done: Callable[[list[Received]], bool],
                  timeout_s: float, settle_s: float = 1.0) -> list[Received]:
    """Read topics from the start until `done(received)` holds (then `settle_s` more, to catch extras)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    got: list[Received] = []
    try:
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for tp, msgs in batch.items():
                got.extend(Received(tp.topic, tp.partition, m.offset, m.key, m.value, tuple(m.headers or ()))
                           for m in msgs)
            if settle_until is None and done(got):
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
    finally:
        await consumer.stop()
    return got


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return orjson.loads(resp.read())


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics parsed with Prometheus' own parser: sample name -> {sorted labels: value}; every declared
    family also appears under "family:NAME" (a labelled family may have no samples yet)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        out[f"family:{family.name}"] = {}
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(series: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    return sum(v for k, v in series.items() if all((n, val) in k for n, val in labels.items()))


class ModelEndpointProcess(ChildProcess):
    """A `python -m streams <command>` process serving the OpenAI API on a loopback port of its own."""

    stats_path = "/stats"

    def __init__(self, name: str, command: list[str], workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__(name, [sys.executable, "-m", "streams", *command, "--port", str(self.port)],
                         workdir / f"{command[0]}-{self.port}.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        return http_json(f"http://127.0.0.1:{self.port}{self.stats_path}")

    def start(self) -> ModelEndpointProcess:
        super().start()
        self.wait_until(lambda: port_open("127.0.0.1", self.port), timeout_s=30)
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`: a server stops gracefully only once every call it holds is
        answered, and a test that leaves a call stuck (a hang, a 120 s latency) would wait 15 s for nothing."""
        super().stop(timeout_s)


class SyntheticModel(ModelEndpointProcess):
    """The project's synthetic OpenAI-compatible server as a real process."""

    def __init__(self, workdir: Path, *flags: str, port: int | None = None) -> None:
        super().__init__("synthetic model", ["synthetic-model", *flags], workdir, port)


class FaultProxyProcess(ModelEndpointProcess):
    """The project's fault-injecting proxy in front of a model endpoint, as a real process."""

    stats_path = "/faults"

    def __init__(self, workdir: Path, upstream: str, *flags: str) -> None:
        super().__init__("fault proxy", ["fault-proxy", "--upstream", upstream, *flags], workdir)


def calls_in_flight(model: ModelEndpointProcess, worker_port: int | None = None) -> tuple[int, float]:
    """(model calls open at the endpoint, from every worker; the worker's own `llm_classify_model_calls_in_flight`
    gauge, or nan without `worker_port`)."""
    gauge = math.nan if worker_port is None else total(
        scrape(worker_port).get("llm_classify_model_calls_in_flight", {}))
    return model.stats()["in_flight"], gauge


def wait_for_calls_in_flight(model: ModelEndpointProcess, at_least: float, *, worker_port: int | None = None,
                             count: Callable[[int, float], float] = lambda endpoint, _: endpoint,
                             proc: ChildProcess | None = None, wait_s: float = 15) -> tuple[int, float]:
    """Until `count(endpoint, gauge)` (see `calls_in_flight`) reaches `at_least`, `wait_s` passes or `proc` dies.

    Returns the last reading, for the caller to act on at once (kill -9, SIGTERM) and then assert on: a test that
    claims N calls in flight at a kill asserts this reading, so a kill that came too early fails the test.
    """
    deadline = time.monotonic() + wait_s
    last = calls_in_flight(model, worker_port)
    while count(*last) < at_least and time.monotonic() < deadline and (proc is None or proc.alive()):
        time.sleep(0.02)
        last = calls_in_flight(model, worker_port)
    return last


def kill_with_calls_in_flight(proc: ChildProcess, model: ModelEndpointProcess, worker_port: int,
                              count: Callable[[int, float], float], at_least: float,
                              wait_s: float = 15) -> tuple[int, float]:
    """kill -9 `proc` at the first moment (within `wait_s`) that `count(endpoint, gauge)` reaches `at_least`
    model calls in flight, else after `wait_s`; returns the last reading before the kill, for the test to
    assert on: (calls open at the endpoint, from every worker; this worker's own gauge)."""
    last = wait_for_calls_in_flight(model, at_least, worker_port=worker_port, count=count, proc=proc, wait_s=wait_s)
    proc.kill()
    return last



async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The offsets `group` has committed on each partition of `topic` (0 where none), read without joining it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return [(await consumer.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)]
    finally:
        await consumer.stop()


async def drift_windows(bootstrap: str, topic: str) -> list[tuple[float, float]]:
    """(window end, time its status was published), both epoch seconds, of every traffic window judged on the
    drift status topic `topic`, read from the start."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out = []
    try:
        while batch := await consumer.getmany(timeout_ms=2000):
            for records in batch.values():
                for record in records:
                    traffic = (orjson.loads(record.value).get("last") or {}).get("traffic") or {}
                    if "window_end" in traffic:
                        out.append((datetime.fromisoformat(traffic["window_end"]).timestamp(),
                                    record.timestamp / 1000))
    finally:
        await consumer.stop()
    return out


def labelled_requests(n: int, rng: random.Random, fresh_share: float = 0.8) -> list[tuple[bytes, bytes]]:
    """n (key, value) requests for the one-task file with random ids, whose synthetic answer is fresh with
    probability `fresh_share`."""
    out = []
    for _ in range(n):
        rid = f"d{rng.getrandbits(48):x}"
        label = "fresh" if rng.random() < fresh_share else "rotten"
        out.append((rid.encode(), orjson.dumps({"id": rid, "task": "sentiment", "text": f"[[label={label}]]"})))
    return out


def labelled_traffic(worker: Worker, seconds: float, fresh_share: float, rng: random.Random,
                     per_second: int = 150) -> None:
    """`per_second` `labelled_requests` a second, on the second, for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run(produce(worker.bootstrap, worker.topic("requests"), labelled_requests(per_second, rng, fresh_share)))
        time.sleep(max(0.0, 1.0 - (time.monotonic() % 1.0)))


def drift_cli(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m streams drift ARGS` in the worker's environment, its output captured."""
    return subprocess.run([sys.executable, "-m", "streams", "drift", *args], env=worker.env,
                          capture_output=True, text=True, timeout=120)


def baseline_from_traffic(worker: Worker, seconds: int, rng: random.Random) -> None:
    """Run `worker` for `seconds` of ordinary traffic and publish its drift baseline from them (`drift baseline`),
    so that every later window of the task is judged."""
    with worker.process() as proc:
        wait_ready(proc)
        labelled_traffic(worker, seconds, 0.8, rng)
        time.sleep(1.5)  # the last partial summaries are flushed every second
        baseline = drift_cli(worker, "baseline", "--task", "sentiment", "--last-seconds", str(seconds))
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
