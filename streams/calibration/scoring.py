"""Raw label probabilities for labelled texts, computed exactly as the worker computes them."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from streams.classify.model_client import ModelClient
from streams.classify.probabilities import LabelMatcher, label_scores
from streams.errors import ModelError
from streams.tasks import Task


class Progress:
    """Progress on stderr: done/total, rate, time left; one self-overwriting line on a terminal."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done, self.started = total, what, 0, time.monotonic()

    def step(self) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = f"{self.what} {self.done}/{self.total}  {rate:.1f}/s  about {eta:.0f}s left"
        if sys.stderr.isatty():  # one self-overwriting line
            print(f"\r{line}   ", end="\n" if self.done == self.total else "", file=sys.stderr, flush=True)
        elif self.done == self.total or self.done % max(self.total // 10, 1) == 0:  # logs: every 10%
            print(line, file=sys.stderr, flush=True)


async def score(task: Task, rows: list[tuple[str, str, str]], concurrency: int,
                client: ModelClient) -> list[dict[str, Any]]:
    """Raw label probabilities for each row, exactly as the worker computes them."""
    matcher = LabelMatcher(task.labels)
    slots = asyncio.Semaphore(concurrency)
    progress = Progress(len(rows), f"scoring with {task.model.name}")

    async def one(rid: str, text: str, label: str) -> dict[str, Any]:
        async with slots:
            try:
                reply = await client.first_token(task, text)
                error = None
            except ModelError as exc:
                reply, error = None, f"{exc.kind}: {exc.message}"
        progress.step()
        if reply is None or reply.top_logprobs is None:
            return {"id": rid, "label": label, "error": error or "no logprobs"}
        s = label_scores(reply.top_logprobs, matcher)
        return {"id": rid, "label": label, "label_mass": s.label_mass,
                "raw_probabilities": dict(zip(task.labels, s.probabilities.tolist()))}

    return await asyncio.gather(*(one(*row) for row in rows))
