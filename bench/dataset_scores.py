"""Raw label probabilities of the local model on the benchmark data sets, scored once and kept in bench/scores/.

The files are committed, so `make bench-calibration` reruns without the model. A
file's name carries a key that hashes what decides the scores (model, labels, prompt, examples, count,
seed): edit a prompt and the old file no longer matches, and the next run scores afresh (minutes per set;
bench/README.md has the rates seen). The scoring is the worker's own path (`streams.calibration.scoring.score`).

    python bench/dataset_scores.py --dataset fortunes            # DEFAULT_N items; --n for another count
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as `python bench/dataset_scores.py`: import bench from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.datasets import DATASETS, Dataset, Row
from streams.tasks import Task, load_tasks

REPO = Path(__file__).resolve().parents[1]
SCORES = REPO / "bench" / "scores"
DEFAULT_N = {"rotten_tomatoes": 6000, "first_names": 8003, "fortunes": 2577}
"""Rotten Tomatoes: 6000 of its 12,808 snippets (3000 held out); names and fortunes: every item the source holds.
Larger test halves shrink the binning noise of the 15-bin ECE (about 1/sqrt(n)), which decides close comparisons."""
SEED = 101
KEEP = ("id", "label", "label_mass", "raw_probabilities", "error")


def dataset_task(dataset: Dataset, env: dict[str, str] | None = None) -> Task:
    task = load_tasks(REPO / dataset.tasks_file, env if env is not None else dict(os.environ)).get(dataset.task)
    if task is None:
        raise SystemExit(f"task {dataset.task!r} not found in {dataset.tasks_file}")
    return task


def scores_path(dataset: Dataset, n: int, seed: int = SEED) -> Path:
    task = dataset_task(dataset, {})
    prompt = (task.prompt.system, task.prompt.template, [(e.text, e.label) for e in task.prompt.examples])
    what = repr((task.model.name, task.model.top_logprobs, task.model.temperature, task.labels, prompt, n, seed))
    key = hashlib.sha256(what.encode()).hexdigest()[:12]
    return SCORES / f"{dataset.name}-{n}-{seed}-{key}.jsonl"


def _cached_prefix(dataset: Dataset, rows: list[Row], seed: int) -> list[dict[str, Any]]:
    """The scores of the longest cached run of the same data set, prompt and seed with fewer items.

    Items are shuffled with the seed and then cut to n (`bench/datasets.py`), so the first n' of n rows
    are the n' rows of the smaller run: those need not be scored again. Used only when every id matches.
    """
    for path in sorted(SCORES.glob(f"{dataset.name}-*-{seed}-*.jsonl"), key=lambda p: -int(p.name.split("-")[-3])):
        n_small = int(path.name.split("-")[-3])
        if n_small >= len(rows) or path != scores_path(dataset, n_small, seed):
            continue
        cached = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        if [rec["id"] for rec in cached] == [row[0] for row in rows[: len(cached)]]:
            return cached
    return []


def dataset_scores(name: str, n: int | None = None, seed: int = SEED, concurrency: int = 8) -> list[dict[str, Any]]:
    """The cached scores of a data set's first n shuffled items, scored with the local model when missing."""
    dataset = DATASETS[name]
    n = n or DEFAULT_N[name]
    path = scores_path(dataset, n, seed)
    if path.exists():
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    from streams.calibration.scoring import score
    from streams.classify.model_client import ModelClient
    from streams.localdev.model_server import LocalModelServer

    rows = dataset.rows(n, seed)
    reused = _cached_prefix(dataset, rows, seed)
    todo = rows[len(reused):]
    print(f"scoring {len(todo)} items of {name} with the local model ({len(reused)} reused from a smaller "
          f"cached run; kept in {path}) ...", file=sys.stderr)
    with LocalModelServer(parallel=4) as server:
        task = dataset_task(dataset, dict(os.environ) | {"MODEL_BASE_URL": server.base_url})

        async def score_todo() -> list[dict[str, Any]]:
            async with ModelClient(60, 2) as client:
                return await score(task, todo, concurrency, client)

        scored = asyncio.run(score_todo())
    kept = reused + [{k: rec[k] for k in KEEP if k in rec} for rec in scored]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"\n".join(orjson.dumps(rec) for rec in kept) + b"\n")
    tmp.rename(path)
    return kept


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), action="append")
    parser.add_argument("--n", type=int)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    for name in args.dataset or list(DATASETS):
        out = dataset_scores(name, args.n, args.seed)
        print(f"{name}: {len(out)} scored; {scores_path(DATASETS[name], args.n or DEFAULT_N[name], args.seed)}")
