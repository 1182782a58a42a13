"""Throughput and scale of the classify worker on the embedded broker. Prints figures; asserts nothing.

    python bench/throughput.py                      # every figure (about 10-15 minutes on 2 cores)
    python bench/throughput.py --only ceiling,pipeline --repeat 3
    make bench-throughput ARGS="--only latency"

Each part starts what it needs on one Tansu broker (`streams/localdev/broker.py`), with the synthetic
OpenAI-compatible model (`python -m streams synthetic-model`) and real `python -m streams worker`
processes, as the integration tests do (`tests/integration/harness.py`):

- `ceiling`: raw aiokafka consume -> produce (`bench/passthrough.py`) over the same requests;
- `pipeline`: the full worker (parse, model call at zero latency, probabilities, calibration, routing,
  drift accumulation and windowed drift tables, produce) over `--n` requests (100k), as msg/s and as a
  ratio to the ceiling measured just before it in the same run (`--repeat` pairs);
- floors, printed with the pair (`--no-floors` skips them): what bounds the pipeline from above. The
  *Faust floor* is the worker's Kafka path through Faust with no model call (`bench/faust_passthrough.py`);
  the *openai floor* is the worker's model call alone, no Kafka, as many at once as the in-flight limit
  (`bench/client_floor.py`), and *ModelClient* the same call through our wrapper; *Faust + call* is the
  Faust floor making that call before it forwards, and nothing else. A worker makes one model call per
  request, so it cannot beat any of them;
- `latency`: the synthetic model answers after 200 ms; throughput at in-flight limits 32, 128, 512
  against the ideal limit / latency, each after the openai client's own rate alone at that limit;
- `stats`: CPU time per message of the pure statistics path (`bench/stats_path.py`);
- `rss`: the worker's RSS sampled every second over `--rss-n` messages (1M), peak and after warm-up;
- `scale`: one worker, then two, on 8 partitions with a latency-bound model.

Throughput is measured from the producer timestamps of the outputs (first to last), so start-up,
group joins and the reading of the outputs are not counted, for the ceiling and the worker alike.
Requests are spread round-robin over the partitions. The machine is shared: the load average and
the busiest other processes are printed with each figure, and every ratio compares two runs made
back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streams.localdev.broker import EmbeddedBroker  # noqa: E402
from streams.localdev.processes import ChildProcess  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402
from tests.integration.harness import SyntheticModel, Worker, wait_ready, write_tasks  # noqa: E402

PARTITIONS = 8
OUTPUTS = ("results", "review", "deadletter")
TEXTS = (
    "A warm, funny and moving film with a superb cast; the second act drags a little but the ending lands.",
    "Dull, clumsy and far too long. The jokes fall flat and the plot goes nowhere [[label=rotten]].",
    "Smart, thrilling and beautifully shot, with a lead performance that carries every scene [[label=fresh]].",
    "It has its moments, but the script never decides what kind of film it wants to be.",
)


# ------------------------------------------------------------------------------------------ plumbing


def load() -> str:
    """Load average and the busiest processes that are not this benchmark's, for the record."""
    one, five, _ = os.getloadavg()
    ours = {os.getpid(), *_children}
    try:
        ps = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True,
                            text=True, timeout=5).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        ps = []
    busy = []
    for line in ps:
        pid, cpu, comm = line.split(None, 2)
        if int(pid) not in ours and float(cpu) >= 5.0:
            busy.append(f"{comm}({cpu}%)")
    return f"load {one:.2f}/{five:.2f}" + (f"; others: {', '.join(busy[:4])}" if busy else "")


_children: set[int] = set()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def requests(n: int, prefix: str) -> Iterator[tuple[bytes, bytes]]:
    for i in range(n):
        rid = f"{prefix}{i}"
        yield rid.encode(), orjson.dumps({"id": rid, "task": "sentiment", "text": TEXTS[i % len(TEXTS)],
                                          "metadata": {"n": i}})


async def create_topics(bootstrap: str, names: list[str], partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, partitions, 1) for t in names if t not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, messages: Iterator[tuple[bytes, bytes]],
                  partitions: int = PARTITIONS) -> int:
    """Round-robin over the partitions, so every partition (and every worker) gets an equal share."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    n = 0
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key, partition=n % partitions)
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


async def committed(bootstrap: str, group: str, topic: str, partitions: int = PARTITIONS) -> int:
    """Offsets the group has committed on the topic, summed (a consumer that never joins the group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            offset = await consumer.committed(TopicPartition(topic, p))
            total += offset or 0
        return total
    finally:
        await consumer.stop()


def wait_committed(bootstrap: str, group: str, topic: str, n: int, timeout_s: float,
                   every: Callable[[], None] | None = None, alive: Callable[[], bool] = lambda: True) -> None:
    """Until the group has committed all n requests (the worker commits only behind acknowledged outputs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if every is not None:
            every()
        if not alive():
            raise RuntimeError("the process under test died")
        if asyncio.run(committed(bootstrap, group, topic)) >= n:
            return
        time.sleep(1.0)
    raise TimeoutError(f"group {group} did not commit {n} offsets on {topic} within {timeout_s:.0f}s")


async def output_timestamps(bootstrap: str, topics: list[str], n: int, timeout_s: float = 120) -> list[int]:
    """Producer timestamps (ms) of the first n records on the topics, read from the start."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    stamps: list[int] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(stamps) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for records in batch.values():
                stamps.extend(r.timestamp for r in records)
    finally:
        await consumer.stop()
    if len(stamps) < n:
        raise RuntimeError(f"read {len(stamps)} of {n} outputs")
    return sorted(stamps)


def rate(stamps: list[int]) -> float:
    span = (stamps[-1] - stamps[0]) / 1000
    return (len(stamps) - 1) / span if span > 0 else float("inf")


@dataclass
class Run:
    rate: float  # msg/s, first to last output
    n: int
    cpu_s: float  # CPU seconds of the process under test
    model_cpu_s: float = 0.0
    note: str = ""

    @property
    def cpu_us_per_msg(self) -> float:
        return self.cpu_s / self.n * 1e6


# ------------------------------------------------------------------------------------------ the runs


class Bench:
    def __init__(self, workdir: Path, broker: EmbeddedBroker) -> None:
        self.workdir = workdir
        self.broker = broker
        self.bootstrap = broker.bootstrap

    @contextmanager
    def synthetic_model(self, latency_ms: float = 0.0) -> Iterator[SyntheticModel]:
        """The synthetic model as a process of ours (so `load()` does not count it as another's)."""
        flags = ["--latency-ms", str(latency_ms)] if latency_ms else []
        with SyntheticModel(self.workdir, *flags) as model:
            assert model.proc is not None
            _children.add(model.proc.pid)
            yield model

    def child(self, proc: ChildProcess) -> ChildProcess:
        proc.start()
        assert proc.proc is not None
        _children.add(proc.proc.pid)
        return proc

    def ceiling(self, n: int) -> Run:
        """`bench/passthrough.py`: raw aiokafka consume -> produce."""
        return self._copy(n, "passthrough", lambda src, dst, group, tag: (
            [sys.executable, str(REPO / "bench" / "passthrough.py"), "--bootstrap", self.bootstrap, "--source", src,
             "--dest", dst, "--group", group], None))

    def faust_floor(self, n: int, max_in_flight: int | None = None) -> Run:
        """`bench/faust_passthrough.py`: the worker's Kafka path through Faust, without a model call, or
        (with `max_in_flight`) with the worker's model call to the synthetic model and nothing else."""
        if max_in_flight is None:
            return self._copy(n, "faust-passthrough", self._faust_command({}))
        with self.synthetic_model() as model:
            tasks = write_tasks(self.workdir / f"tasks-{uuid.uuid4().hex[:6]}.toml", model.base_url, model="synthetic")
            return self._copy(n, "faust-call", self._faust_command(
                {"BENCH_TASKS": str(tasks), "BENCH_MAX_IN_FLIGHT": str(max_in_flight)}))

    def _faust_command(self,
                       extra_env: dict[str, str]) -> Callable[[str, str, str, str], tuple[list[str], dict[str, str]]]:
        def command(src: str, dst: str, group: str, tag: str) -> tuple[list[str], dict[str, str]]:
            env = os.environ | {"BENCH_BOOTSTRAP": self.bootstrap, "BENCH_SOURCE": src, "BENCH_DEST": dst,
                                "BENCH_GROUP": group, "BENCH_DATADIR": str(self.workdir / f"faust-{tag}")} | extra_env
            return [sys.executable, str(REPO / "bench" / "faust_passthrough.py"), "worker", "--without-web",
                    "-l", "warn"], env

        return command

    def _copy(self, n: int, name: str,
              command: Callable[[str, str, str, str], tuple[list[str], dict[str, str] | None]]) -> Run:
        """n requests copied from one topic to another by a process that commits as group `name-tag`."""
        tag = uuid.uuid4().hex[:8]
        src, dst, group = f"{name}-{tag}.in", f"{name}-{tag}.out", f"{name}-{tag}"
        asyncio.run(create_topics(self.bootstrap, [src, dst]))
        asyncio.run(produce(self.bootstrap, src, requests(n, "p")))
        argv, env = command(src, dst, group, tag)
        proc = self.child(ChildProcess(name, argv, self.workdir / f"{name}-{tag}.log", env=env))
        try:
            wait_committed(self.bootstrap, group, src, n, timeout_s=900, alive=proc.alive)
            assert proc.proc is not None
            cpu = cpu_seconds(proc.proc.pid)
        finally:
            proc.stop()
        stamps = asyncio.run(output_timestamps(self.bootstrap, [dst], n))
        return Run(rate(stamps), n, cpu)

    def client_floor(self, n: int, concurrency: int, latency_ms: float = 0.0, via: str = "openai") -> Run:
        """`bench/client_floor.py`: the worker's model call alone, against the same synthetic model."""
        with self.synthetic_model(latency_ms) as model:
            assert model.proc is not None
            tasks = write_tasks(self.workdir / f"tasks-{uuid.uuid4().hex[:6]}.toml", model.base_url, model="synthetic")
            model_cpu0 = cpu_seconds(model.proc.pid)
            out = subprocess.run([sys.executable, str(REPO / "bench" / "client_floor.py"), "--tasks", str(tasks),
                                  "--n", str(n), "--concurrency", str(concurrency), "--via", via],
                                 capture_output=True, text=True, timeout=1800, check=True).stdout
            model_cpu = cpu_seconds(model.proc.pid) - model_cpu0
        doc = orjson.loads(out.strip().splitlines()[-1])
        return Run(float(doc["rate"]), n, float(doc["cpu_us_per_call"]) * n / 1e6, model_cpu)

    def worker(self, model_url: str, max_in_flight: int, extra: dict[str, str] | None = None) -> Worker:
        tasks = write_tasks(self.workdir / f"tasks-{uuid.uuid4().hex[:6]}.toml", model_url, model="synthetic")
        w = Worker(self.bootstrap, tasks, self.workdir, partitions=PARTITIONS, max_in_flight=max_in_flight,
                   extra_env={"STREAMS_MODEL_TIMEOUT_S": "30", **(extra or {})})
        asyncio.run(ensure_topics(w.settings))
        return w

    def pipeline(self, n: int, max_in_flight: int, latency_ms: float = 0.0, workers: int = 1,
                 sample: Callable[[int], None] | None = None, timeout_s: float = 1800) -> Run:
        """n requests through `workers` worker processes; the requests are queued before they start."""
        with self.synthetic_model(latency_ms) as model:
            assert model.proc is not None
            w = self.worker(model.base_url, max_in_flight)
            procs = []
            try:
                if workers > 1:  # let the group settle first, so the figure is not a rebalance
                    for _ in range(workers):
                        procs.append(wait_ready(self.child(w.process()), timeout_s=120))
                    time.sleep(8)
                asyncio.run(produce(self.bootstrap, w.topic("requests"), requests(n, "r")))
                if workers == 1:
                    procs.append(self.child(w.process()))
                pids = [p.proc.pid for p in procs if p.proc is not None]
                model_cpu0 = cpu_seconds(model.proc.pid)
                wait_committed(self.bootstrap, w.app_id, w.topic("requests"), n, timeout_s,
                               every=(lambda: sample(pids[0])) if sample else None,
                               alive=lambda: all(p.alive() for p in procs))
                cpu = sum(cpu_seconds(pid) for pid in pids)
                model_cpu = cpu_seconds(model.proc.pid) - model_cpu0
            finally:
                for p in procs:
                    p.stop()
        stamps = asyncio.run(output_timestamps(self.bootstrap, [w.topic(t) for t in OUTPUTS], n))
        return Run(rate(stamps), n, cpu, model_cpu)


# ------------------------------------------------------------------------------------------ reports


def part_ceiling_pipeline(bench: Bench, n: int, repeat: int, max_in_flight: int, floors: bool) -> None:
    print(f"\n== full pipeline at zero model latency vs raw aiokafka pass-through: {n} requests, "
          f"{PARTITIONS} partitions, in-flight limit {max_in_flight} ==")
    ratios = []
    for i in range(repeat):
        before = load()
        c = bench.ceiling(n)
        print(f"  [{i + 1}] ceiling      {c.rate:8.0f} msg/s  "
              f"(pass-through CPU {c.cpu_us_per_msg:5.0f} us/msg; {before})")
        if floors:
            floor_lines(bench, c.rate, n, max_in_flight, i + 1)
        before = load()
        p = bench.pipeline(n, max_in_flight)
        ratios.append(p.rate / c.rate)
        print(f"  [{i + 1}] pipeline     {p.rate:8.0f} msg/s  = {p.rate / c.rate:.1%} of the ceiling  (worker CPU "
              f"{p.cpu_us_per_msg:5.0f} us/msg, synthetic model CPU {p.model_cpu_s / n * 1e6:4.0f} us/msg; {before})")
    if repeat > 1:
        print(f"  ratio pipeline / ceiling: median {statistics.median(ratios):.1%}, "
              f"range {min(ratios):.1%}..{max(ratios):.1%} over {repeat} pairs")


def floor_lines(bench: Bench, ceiling: float, n: int, max_in_flight: int, i: int) -> None:
    """What bounds the pipeline from above: the worker's Kafka path through Faust, and its model call."""
    before = load()
    f = bench.faust_floor(n)
    print(f"  [{i}] Faust floor  {f.rate:8.0f} msg/s  = {f.rate / ceiling:.1%} of the ceiling  (the worker's Kafka "
          f"path, no model call; CPU {f.cpu_us_per_msg:5.0f} us/msg; {before})")
    calls = min(n, 20_000)
    for via, name in (("openai", "openai floor"), ("model_client", "ModelClient ")):
        before = load()
        r = bench.client_floor(calls, max_in_flight, via=via)
        print(f"  [{i}] {name} {r.rate:8.0f} calls/s = {r.rate / ceiling:.1%} of the ceiling  ({calls} of the "
              f"worker's model calls alone, {max_in_flight} at once, no Kafka; CPU {r.cpu_us_per_msg:5.0f} us/call; "
              f"{before})")
    before = load()
    r = bench.faust_floor(calls, max_in_flight)
    print(f"  [{i}] Faust + call {r.rate:8.0f} msg/s  = {r.rate / ceiling:.1%} of the ceiling  ({calls} requests: the "
          f"Faust floor plus the ModelClient call, {max_in_flight} at once, nothing else; CPU "
          f"{r.cpu_us_per_msg:5.0f} us/msg; {before})")


def part_latency(bench: Bench, latency_ms: float, limits: list[int], seconds: float, floors: bool) -> None:
    print(f"\n== {latency_ms:.0f} ms model latency, one worker: throughput vs ideal limit / latency ==")
    for limit in limits:
        ideal = limit / (latency_ms / 1000)
        n = int(ideal * seconds)
        if floors:
            before = load()
            r = bench.client_floor(n, limit, latency_ms=latency_ms)
            print(f"  limit {limit:4d}, openai client alone: {r.rate:7.0f} calls/s, ideal {ideal:6.0f} -> "
                  f"{r.rate / ideal:.0%} (CPU {r.cpu_us_per_msg:.0f} us/call; {before})")
        before = load()
        r = bench.pipeline(n, limit, latency_ms=latency_ms)
        print(f"  limit {limit:4d}: {r.rate:7.0f} msg/s, ideal {ideal:6.0f} -> {r.rate / ideal:.0%} "
              f"({n} requests, worker CPU {r.cpu_us_per_msg:.0f} us/msg; {before})")


def part_scale(bench: Bench, latency_ms: float, limit: int, seconds: float) -> None:
    ideal1 = limit / (latency_ms / 1000)
    n = int(2 * ideal1 * seconds)
    print(f"\n== two workers vs one, {PARTITIONS} partitions, {latency_ms:.0f} ms model latency, "
          f"in-flight limit {limit} per worker, {n} requests ==")
    before = load()
    one = bench.pipeline(n, limit, latency_ms=latency_ms, workers=1)
    print(f"  one worker : {one.rate:7.0f} msg/s (ideal {ideal1:.0f}; {before})")
    before = load()
    two = bench.pipeline(n, limit, latency_ms=latency_ms, workers=2)
    print(f"  two workers: {two.rate:7.0f} msg/s (ideal {2 * ideal1:.0f}; {before})")
    print(f"  two / one  : {two.rate / one.rate:.2f}x")


def part_rss(bench: Bench, n: int, max_in_flight: int, timeout_s: float) -> None:
    print(f"\n== worker RSS over {n} messages, zero model latency, in-flight limit {max_in_flight} ==")
    samples: list[tuple[float, float]] = []
    hwm = [0.0]
    t0 = time.monotonic()

    def sample(pid: int) -> None:
        try:
            samples.append((time.monotonic() - t0, rss_mb(pid)))
            hwm[0] = rss_mb(pid, "VmHWM")  # the kernel's own peak, between samples too
        except OSError:
            pass

    before = load()
    started = time.monotonic()
    try:
        r = bench.pipeline(n, max_in_flight, sample=sample, timeout_s=timeout_s)
        done = f"{r.rate:.0f} msg/s"
    except TimeoutError as exc:  # still report what was seen: a slow machine must not lose the samples
        done = f"NOT FINISHED ({exc})"
    took = time.monotonic() - started
    if not samples:
        print(f"  no RSS samples; {done}")
        return
    rss = [s for _, s in samples]
    warm = rss[len(rss) // 10:] or rss
    print(f"  {done}, {took:.0f} s in all; RSS samples {len(rss)} (every ~1 s; {before})")
    print(f"  peak RSS {max(rss):.0f} MB sampled, {hwm[0]:.0f} MB by the kernel (VmHWM); after the first 10% of the "
          f"run: {min(warm):.0f}..{max(warm):.0f} MB")
    for share in (0.1, 0.25, 0.5, 0.75, 1.0):
        t, v = samples[min(len(samples) - 1, int(share * (len(samples) - 1)))]
        print(f"    at {share:4.0%} of the run ({t:5.0f} s): {v:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="stats,ceiling,latency,scale,rss",
                        help="comma-separated parts: stats, ceiling (with pipeline), latency, scale, rss")
    parser.add_argument("--n", type=int, default=100_000, help="requests for the ceiling / pipeline pair")
    parser.add_argument("--repeat", type=int, default=2, help="ceiling / pipeline pairs")
    parser.add_argument("--max-in-flight", type=int, default=512, help="for the zero-latency runs")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--limits", default="32,128,512")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of each latency-bound run at the ideal rate")
    parser.add_argument("--rss-n", type=int, default=1_000_000)
    parser.add_argument("--rss-timeout", type=float, default=3600, help="seconds; the samples are reported anyway")
    parser.add_argument("--scale-limit", type=int, default=64)
    parser.add_argument("--no-floors", action="store_true",
                        help="skip the floors (Faust path without a model call; the model call without Kafka)")
    parser.add_argument("--keep", type=Path, help="keep logs and data in this directory instead of a temporary one")
    args = parser.parse_args()
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    parts |= {"ceiling"} if "pipeline" in parts else set()
    if "pipeline-only" in parts:  # for profiling: no ceiling run
        parts.add("ceiling")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; {load()}")
    if "stats" in parts:
        subprocess.run([sys.executable, str(REPO / "bench" / "stats_path.py")], check=True)
    kafka_parts = parts & {"ceiling", "latency", "scale", "rss"}
    if not kafka_parts:
        return
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
            assert isinstance(broker, EmbeddedBroker) and broker.proc is not None
            _children.add(broker.proc.pid)
            bench = Bench(workdir, broker)
            if "ceiling" in parts:
                part_ceiling_pipeline(bench, args.n, args.repeat, args.max_in_flight, not args.no_floors)
            if "latency" in parts:
                part_latency(bench, args.latency_ms, [int(x) for x in args.limits.split(",")], args.seconds,
                             not args.no_floors)
            if "scale" in parts:
                part_scale(bench, args.latency_ms, args.scale_limit, args.seconds)
        if "rss" in parts:  # a fresh broker: 1M requests and their outputs fill its memory
            with EmbeddedBroker(log_path=workdir / "broker-rss.log") as broker:
                assert isinstance(broker, EmbeddedBroker) and broker.proc is not None
                _children.add(broker.proc.pid)
                part_rss(Bench(workdir, broker), args.rss_n, args.max_in_flight, args.rss_timeout)


if __name__ == "__main__":
    main()
