"""Fair progress under a deep backlog: a worker that comes back to `--n` (1M) requests on 8 partitions.

    python bench/backlog.py                 # 1M requests, 90 s watched
    python bench/backlog.py --n 300000 --watch 60

A worker first runs a few seconds of ordinary traffic and publishes its drift baseline (so every later window is
judged), then stops; the backlog is produced round-robin over the 8 partitions; the worker starts again against
the synthetic model at zero latency (the worker is the bottleneck, as in the 1M RSS run of throughput.py).
Printed, with the time since the worker's start: when each partition's committed offset first advanced, how far
each had come at the end of the watch, and every drift window of the watch, with how long after its end its
verdict was published (a window is judged when the next window's first summary is read).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import PARTITIONS, Bench, load, produce, requests  # noqa: E402
from streams.localdev.broker import EmbeddedBroker  # noqa: E402
from tests.integration.harness import baseline_from_traffic, committed_offsets, drift_windows, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="requests in the backlog")
    parser.add_argument("--watch", type=float, default=90.0, help="seconds the restarted worker is watched")
    parser.add_argument("--window-s", type=float, default=5.0, help="the task's drift window")
    args = parser.parse_args()
    print(f"== a worker back to a backlog of {args.n} requests on {PARTITIONS} partitions; {load()}")
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        workdir = Path(tmp)
        with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
            bench = Bench(workdir, broker)
            with bench.synthetic_model() as model:
                worker = bench.worker(model.base_url, 64)
                tasks = worker.tasks_file
                tasks.write_text(tasks.read_text() + f"\n[task.drift]\nwindow_s = {args.window_s}\n")
                baseline_from_traffic(worker, seconds=6, rng=random.Random(15))
                topic = worker.topic("requests")
                before = run(committed_offsets(bench.bootstrap, worker.app_id, topic, PARTITIONS))
                t0 = time.monotonic()
                asyncio.run(produce(bench.bootstrap, topic, requests(args.n, "b")))
                print(f"  backlog produced in {time.monotonic() - t0:.0f} s")
                proc = bench.child(worker.process())
                started, first, now = time.time(), {}, before
                try:
                    while time.time() - started < args.watch:
                        time.sleep(1.0)
                        now = run(committed_offsets(bench.bootstrap, worker.app_id, topic, PARTITIONS))
                        for p in range(PARTITIONS):
                            if now[p] > before[p] and p not in first:
                                first[p] = time.time() - started
                        if not proc.alive():
                            raise RuntimeError(f"the worker died: see {proc.log_path}")
                finally:
                    proc.stop()
                ready = _ready_after(proc.log_path.read_text(errors="replace"), started)
                windows = run(drift_windows(bench.bootstrap, worker.topic("drift_status")))
    done = [n - b for n, b in zip(now, before, strict=True)]
    print(f"  worker ready (joined its group) {ready:.1f} s after its start; {load()}")
    print("  partition  first commit (s after start)  done in the watch")
    for p in range(PARTITIONS):
        at = f"{first[p]:.1f}" if p in first else "never"
        print(f"  {p:9d}  {at:>28}  {done[p]:>17}")
    served = [first[p] for p in first]
    print(f"  {len(first)} of {PARTITIONS} partitions advanced; first commits {min(served, default=0):.1f}.."
          f"{max(served, default=0):.1f} s after the start; {sum(done)} requests in {args.watch:.0f} s "
          f"({sum(done) / args.watch:.0f} msg/s), {min(done)}..{max(done)} per partition")
    judged = sorted((end - started, published - end) for end, published in windows if end > started)
    due = int((args.watch - max(served, default=args.watch)) // args.window_s) - 1
    delays = [d for _, d in judged]
    print(f"  drift windows ({args.window_s:.0f} s) that ended during the watch: {len(judged)} judged "
          f"(about {due} expected after the first commit); delay from window end to verdict: "
          + (f"median {statistics.median(delays):.1f} s, max {max(delays):.1f} s" if delays else "none judged"))
    for end, delay in judged:
        print(f"    window ending {end:5.1f} s after the start: verdict {delay:.1f} s later")


def _ready_after(log: str, started: float) -> float:
    """Seconds from `started` to the worker's '[^Worker]: Ready' line (its own timestamp), nan if absent."""
    for line in log.splitlines():
        if "Worker]: Ready" in line:
            stamp = line.split(" ", 2)[:2]
            try:
                t = time.mktime(time.strptime(" ".join(stamp)[1:20], "%Y-%m-%d %H:%M:%S"))
            except ValueError:
                return float("nan")
            return t - started
    return float("nan")


if __name__ == "__main__":
    main()
