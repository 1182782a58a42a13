"""Raw label probabilities of the local model on Rotten Tomatoes snippets, cached for the evaluations.

Scoring thousands of items with Gemma 3 270M on 2 cores takes about 25 minutes, so it is done
once per (task file, model, count, seed) and kept in the cache directory; every evaluation then
reads the same scores. The scoring is the worker's own path (`streams.calibration.scoring.score`).
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

if __package__ in (None, ""):  # run as `python bench/rt_scores.py`: import bench from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RT_N, RT_SEED
from streams.calibration.scoring import score
from streams.classify.model_client import ModelClient
from streams.localdev.model_server import LocalModelServer, cache_dir
from streams.localdev.sample_data import load_reviews
from streams.tasks import load_tasks

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "config" / "tasks.toml"


def cache_path(n: int, seed: int) -> Path:
    """Keyed on what decides the scores (model, labels, prompt, examples), not on the rest of the task file."""
    task = load_tasks(TASKS, {}).get("movie_sentiment")
    assert task is not None
    what = repr((task.model.name, task.model.top_logprobs, task.model.temperature, task.labels, task.prompt, n, seed))
    key = hashlib.sha256(what.encode()).hexdigest()[:12]
    return cache_dir() / f"rt-scores-{n}-{seed}-{key}.jsonl"


def rt_scores(n: int = RT_N, seed: int = RT_SEED, concurrency: int = 8) -> list[dict[str, Any]]:
    """Scores for the first n shuffled snippets (offset past the demo's traffic), cached."""
    path = cache_path(n, seed)
    if path.exists():
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    reviews = load_reviews(seed=seed)[:n]
    rows = [(f"rt-eval-{i:05d}", ex.text, ex.label) for i, ex in enumerate(reviews)]
    print(f"scoring {n} snippets with the local model (cached afterwards in {path}) ...", file=sys.stderr)
    with LocalModelServer(parallel=4) as server:
        env = os.environ | {"MODEL_BASE_URL": server.base_url}
        task = load_tasks(TASKS, env).get("movie_sentiment")
        assert task is not None
        scored = asyncio.run(score(task, rows, concurrency, ModelClient(60, 2)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"\n".join(orjson.dumps(s) for s in scored) + b"\n")
    tmp.rename(path)
    return scored


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=RT_N)
    parser.add_argument("--seed", type=int, default=RT_SEED)
    args = parser.parse_args()
    out = rt_scores(args.n, args.seed)
    print(f"{len(out)} scored; cache: {cache_path(args.n, args.seed)}")
