"""What the benchmarks share, so that two scripts comparing the same things do it with the same code.

Model-server benchmarks (`capacity.py`, `rate_limits.py`): the direct generator (the worker's first-token
call through the same openai client, with no Kafka: the ceiling a server allows), optionally paced exactly at a
rate-limited server's budgets, and the hand-written aiokafka + openai consumer as a process.

Calibration benchmarks: the scored items as arrays, the service's filter, seeded splits.

`calibration_eval.py` and `netcal_compare.py` must judge calibrators on exactly the same items and
splits, so loading, filtering and splitting live here once. Items the service would never calibrate
(failed model calls, and answers whose label mass is below the task's `min_label_mass`, which are
routed to review before any calibrator sees them) are counted and left out.

`synthetic_records` produces records in the cache file's format from a known temperature, so both
scripts can be run (`--synthetic`) without the 25 minutes of model scoring.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai

from bench.dataset_scores import DEFAULT_N, SEED
from streams.calibration.fitting import stratified_split
from streams.localdev.processes import ChildProcess
from streams.localdev.serving_limits import Budget
from streams.localdev.synthetic_model import budget_cost, prompt_words
from streams.tasks import Task, load_tasks

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "config" / "tasks.toml"
TASK_NAME = "movie_sentiment"
OUT = REPO / "bench" / "out"
RT_N, RT_SEED = DEFAULT_N["rotten_tomatoes"], SEED
"""Which scores: the first RT_N snippets of the seed-101 shuffle (bench/dataset_scores.py, committed), half
held out: the binned ECE's noise floor falls with the test half's size (bench/README.md)."""

HEADLINE_SEED = 0
"""Seed of the one split whose full table is printed; the stability runs use other seeds."""
FIT_SHARE = 0.5
"""Held-out evaluation: fit 50% / test 50%."""


@dataclass(frozen=True)
class Scores:
    """Usable items as arrays, plus how many were dropped and why (reported, never hidden)."""

    labels: tuple[str, ...]
    probs: np.ndarray  # (n_usable, K) raw label probabilities, columns in `labels` order
    y: np.ndarray  # (n_usable,) true label index
    n_scored: int
    n_errors: int
    n_low_mass: int
    min_label_mass: float
    source: str


def movie_task() -> Task:
    """The task as the service loads it, so labels, min_label_mass and methods are the deployed ones."""
    task = load_tasks(TASKS, os.environ).get(TASK_NAME)
    if task is None:
        raise SystemExit(f"task {TASK_NAME!r} not found in {TASKS}")
    return task


def usable(records: Iterable[dict[str, Any]], labels: tuple[str, ...], min_label_mass: float,
           source: str) -> Scores:
    """Keep items the service would calibrate: no error and label_mass >= min_label_mass."""
    index = {label: i for i, label in enumerate(labels)}
    rows: list[list[float]] = []
    ys: list[int] = []
    n_scored = n_errors = n_low_mass = 0
    for rec in records:
        n_scored += 1
        if "error" in rec or rec.get("raw_probabilities") is None:
            n_errors += 1
        elif float(rec["label_mass"]) < min_label_mass:
            n_low_mass += 1
        else:
            rows.append([float(rec["raw_probabilities"][label]) for label in labels])
            ys.append(index[rec["label"]])
    probs = np.asarray(rows, dtype=np.float64).reshape(-1, len(labels))
    return Scores(labels, probs, np.asarray(ys, dtype=np.intp), n_scored, n_errors, n_low_mass,
                  min_label_mass, source)


def load_scores(synthetic: bool = False) -> Scores:
    """The cached Rotten Tomatoes scores of the local model (scored on first use), or synthetic ones."""
    task = movie_task()
    if synthetic:
        return usable(synthetic_records(RT_N, seed=7, labels=task.labels), task.labels, task.min_label_mass,
                      "synthetic (temperature 2.0)")
    from bench.dataset_scores import dataset_scores, scores_path  # the model client: not for --synthetic
    from bench.datasets import DATASETS

    source = f"Gemma 3 270M on Rotten Tomatoes ({scores_path(DATASETS['rotten_tomatoes'], RT_N, RT_SEED).name})"
    return usable(dataset_scores("rotten_tomatoes", RT_N, RT_SEED), task.labels, task.min_label_mass, source)


def split(y: np.ndarray, shares: tuple[float, ...], seed: int) -> tuple[np.ndarray, ...]:
    """Indices of len(shares) disjoint parts, each stratified by label, shares summing to 1.

    Chains `stratified_split` (the service's own split): peel off the first share, split the rest.
    """
    if not np.isclose(sum(shares), 1.0) or min(shares) <= 0:
        raise ValueError(f"shares must be positive and sum to 1, got {shares}")
    parts: list[np.ndarray] = []
    rest = np.arange(len(y))
    remaining = 1.0
    for i, share in enumerate(shares[:-1]):
        first, other = stratified_split(y[rest], 1.0 - share / remaining, seed + 7919 * i)
        parts.append(rest[first])
        rest = rest[other]
        remaining -= share
    parts.append(rest)
    return tuple(parts)


def heldout_split(y: np.ndarray, seed: int = HEADLINE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The fit 50% / test 50% split both scripts report on."""
    fit, test = split(y, (FIT_SHARE, 1.0 - FIT_SHARE), seed)
    return fit, test


def synthetic_probs(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(probs (n, 2), y) from a model whose log-odds are the true ones times `temperature`.

    True log-odds z ~ N(0.3, 1.5^2), y ~ Bernoulli(sigmoid(z)); the reported probability is
    sigmoid(temperature * z), so temperature scaling should recover T = `temperature`.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(0.3, 1.5, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.intp)
    p1 = 1.0 / (1.0 + np.exp(-temperature * z))
    return np.column_stack([1.0 - p1, p1]), y


def synthetic_records(n: int, seed: int, labels: tuple[str, ...], temperature: float = 2.0) -> list[dict[str, Any]]:
    """Records in the cache file's format, with some failed calls and low label mass mixed in."""
    probs, y = synthetic_probs(n, temperature, seed)
    rng = np.random.default_rng(seed + 1)
    mass = rng.beta(8.0, 1.0, n)  # mostly near 1, a tail below 0.5 like a small model's
    failed = rng.random(n) < 0.005
    records: list[dict[str, Any]] = []
    for i in range(n):
        rec: dict[str, Any] = {"id": f"synthetic-{i:05d}", "label": labels[y[i]]}
        if failed[i]:
            rec["error"] = "timeout: synthetic"
        else:
            rec["label_mass"] = float(mass[i])
            rec["raw_probabilities"] = dict(zip(labels, probs[i].tolist(), strict=True))
        records.append(rec)
    return records


def describe(scores: Scores) -> str:
    """One block: how many items, how many dropped and why, class balance, raw accuracy."""
    counts = np.bincount(scores.y, minlength=len(scores.labels))
    n = len(scores.y)
    balance = ", ".join(f"{label} {c} ({c / n:.1%})" for label, c in zip(scores.labels, counts, strict=True))
    raw_acc = float(np.mean(scores.probs.argmax(axis=1) == scores.y)) if n else float("nan")
    return "\n".join([
        f"source:     {scores.source}",
        f"scored:     {scores.n_scored}",
        (f"dropped:    {scores.n_errors} failed calls, {scores.n_low_mass} with label_mass < "
         f"{scores.min_label_mass} (routed to review by the service, not calibration data)"),
        f"usable:     {n}",
        f"balance:    {balance}",
        f"raw accuracy (usable items, top label): {raw_acc:.4f}",
    ])


# ------------------------------------------------------------------------------------------ model servers


def first_token_body(text: str, model: str = "synthetic") -> dict[str, Any]:
    """The worker's first-token call for the benchmarks' sentiment task (`tests.integration.harness.write_tasks`'
    template as the last user message: what the synthetic model meters), as the direct generator and the
    hand-written consumer send it."""
    return {"model": model, "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 20,
            "messages": [{"role": "user", "content": f"Review: {text}\nAnswer fresh or rotten:"}]}


def openai_client(base_url: str) -> openai.AsyncOpenAI:
    """The openai client as the direct generator and the hand-written consumer use it: its default retries (2,
    honouring `Retry-After`), a 30 s timeout, openai's own aiohttp transport (as the worker's)."""
    return openai.AsyncOpenAI(base_url=base_url, api_key="not-needed", timeout=30.0, max_retries=2,
                              http_client=openai.DefaultAioHttpClient(timeout=30.0))


class ExactPacer:
    """Calls released at exactly a rate-limited server's budgets: the server's own token buckets
    (`streams.localdev.serving_limits.Budget`, same rates, same burst), fed each call's cost as the synthetic
    model meters it (the words of the last user message plus `max_tokens`). A client knows neither in general:
    this is the ceiling, not something the worker could copy. The pacer's buckets start empty where the server's
    are full: a full bucket loses the refill it cannot hold, so a server that takes each call's cost when it
    arrives, a little after the pacer took it, falls behind a pacer that started full and refuses its calls
    (seen: one call in two). Started empty, the pacer stays a bucket behind the server and no paced call is
    refused; it gives up the server's initial burst (one second of budget, in a run of minutes)."""

    def __init__(self, rpm: float, tpm: float, burst_s: float) -> None:
        self._budgets = [(Budget(limit, burst_s=burst_s), kind)
                         for limit, kind in ((rpm, "requests"), (tpm, "tokens")) if limit]
        for budget, _ in self._budgets:
            budget.take(budget.capacity)
        self._lock: asyncio.Lock | None = None

    async def __call__(self, body: dict[str, Any]) -> None:
        """Until the call fits every budget (callers in arrival order), then take its cost."""
        self._lock = self._lock or asyncio.Lock()
        need = {"requests": 1, "tokens": budget_cost(prompt_words(body["messages"]), body)}
        async with self._lock:
            while True:
                wait = max(b.wait_s(need[kind]) for b, kind in self._budgets)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            for b, kind in self._budgets:
                b.take(need[kind])


async def direct(base_url: str, callers: int, seconds: float, text: Callable[[int], str],
                 pace: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> tuple[int, int]:
    """The direct generator: `callers` callers making the worker's first-token call (for the i-th call, the
    text `text(i)`) in a loop for `seconds`, each call first waiting for `pace` when given. No Kafka. Returns
    (calls answered, calls that failed after the client's retries)."""
    client = openai_client(base_url)
    deadline = time.monotonic() + seconds
    numbers = itertools.count()
    answered = failed = 0

    async def caller() -> None:
        nonlocal answered, failed
        while time.monotonic() < deadline:
            body = first_token_body(text(next(numbers)))
            if pace is not None:
                await pace(body)
                if time.monotonic() >= deadline:
                    return
            try:
                await client.post("/chat/completions", body=body, cast_to=httpx2.Response)
                answered += 1
            except openai.APIError:
                failed += 1

    try:
        await asyncio.gather(*(caller() for _ in range(callers)))
    finally:
        await client.close()
    return answered, failed


HANDWRITTEN_CONCURRENCY = 64
"""The hand-written consumer's calls in flight: a number guessed once, as users do (the worker's maximum)."""


def handwritten(bootstrap: str, source: str, dest: str, group: str, base_url: str, log_path: Path,
                concurrency: int = HANDWRITTEN_CONCURRENCY) -> ChildProcess:
    """`bench/handwritten_consumer.py` as a process (not started): what a user would write instead of the worker."""
    return ChildProcess("handwritten", [
        sys.executable, str(REPO / "bench" / "handwritten_consumer.py"), "--bootstrap", bootstrap, "--source", source,
        "--dest", dest, "--group", group, "--base-url", base_url, "--concurrency", str(concurrency)], log_path)
