"""A worker that comes back to a deep backlog serves every partition at once, and its drift windows close on time.

Without the fair poll (streams/faust_fetch.py) Faust takes everything aiokafka has fetched as one batch: the
partitions that answered the first fetch are worked through before the others start, and the drift summaries
wait behind them, so drift windows are judged tens of seconds late.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from streams.localdev.broker import EmbeddedBroker
from streams.topics import ensure_topics
from tests.integration.harness import (
    SyntheticModel,
    Worker,
    baseline_from_traffic,
    committed_offsets,
    drift_windows,
    labelled_requests,
    produce,
    run,
    write_tasks,
)

PARTITIONS = 8
BACKLOG = 120_000
WATCH_S = 24.0


def test_every_partition_starts_at_once_and_drift_windows_close_on_time(broker: EmbeddedBroker,
                                                                        workdir: Path) -> None:
    rng = random.Random(15)
    with SyntheticModel(workdir) as model:
        tasks = write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic", threshold=0.5)
        tasks.write_text(tasks.read_text() + "\n[task.drift]\nwindow_s = 2\n")
        worker = Worker(broker.bootstrap, tasks, workdir, partitions=PARTITIONS)
        run(ensure_topics(worker.settings))
        requests = worker.topic("requests")
        baseline_from_traffic(worker, seconds=6, rng=rng)  # so that every closed window is judged
        # The worker is down while a deep backlog builds up on every partition.
        before = run(committed_offsets(worker.bootstrap, worker.app_id, requests, PARTITIONS))
        assert run(produce(worker.bootstrap, requests, labelled_requests(BACKLOG, rng))) == BACKLOG
        with worker.process() as proc:
            started = time.time()
            first: dict[int, float] = {}
            while time.time() - started < WATCH_S:
                time.sleep(1.0)
                now = run(committed_offsets(worker.bootstrap, worker.app_id, requests, PARTITIONS))
                for p in range(PARTITIONS):
                    if now[p] > before[p] and p not in first:
                        first[p] = time.time() - started
            assert proc.alive()
        done = sum(now) - sum(before)
        windows = run(drift_windows(worker.bootstrap, worker.topic("drift_status")))
    print(f"first commit per partition after the start (s): {sorted((p, round(t, 1)) for p, t in first.items())}; "
          f"{done} of the {BACKLOG} backlog done in {WATCH_S:.0f} s")
    assert done < BACKLOG * 0.8, "the backlog must still be deep at the end of the watch"
    problems = []
    if len(first) < PARTITIONS:
        problems.append(f"partitions never served: {sorted(set(range(PARTITIONS)) - set(first))}")
    elif max(first.values()) - min(first.values()) > 3.0:
        problems.append(f"partitions started apart: {first}")
    # Each window of the backlog run is judged once the next window's first summary is read: about a second
    # after it ends, as summaries are flushed every second.
    judged = {round(end): published for end, published in windows if end > started}
    due = range(2 * int((started + min(first.values())) / 2) + 4, int(started + WATCH_S) - 4, 2)
    missing = [round(end - started) for end in due if end not in judged]
    late = [(round(end - started), round(published - end, 1)) for end, published in judged.items()
            if published - end > 4]
    print(f"{len(judged)} drift windows judged during the backlog; (end, delay) of those late by more than 4 s: {late}")
    assert len(due) >= 5
    if missing:
        problems.append(f"drift windows ending at these seconds after the start never judged: {missing}")
    if late:
        problems.append(f"drift windows judged late: {late}")
    assert problems == []
