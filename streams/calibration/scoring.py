"""Raw label probabilities for labelled texts, computed exactly as the worker computes them."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from streams.classify.model_client import ModelClient
from streams.confidence.capabilities import Capabilities
from streams.confidence.methods import MethodResult, MethodRunner
from streams.confidence.names import FIRST_TOKEN
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


async def score(task: Task, rows: list[tuple[str, str, str]], concurrency: int, client: ModelClient,
                method: str = FIRST_TOKEN, caps: Capabilities | None = None) -> list[dict[str, Any]]:
    """Raw label probabilities of labelled rows (id, text, label) by one confidence method, exactly as the
    worker computes them (`MethodRunner`); ensemble members are pooled uncalibrated here."""
    runner = MethodRunner(client)
    slots = asyncio.Semaphore(concurrency)
    progress = Progress(len(rows), f"scoring with {task.model.name} ({method})")

    async def one(rid: str, text: str, label: str) -> dict[str, Any]:
        async with slots:
            result: MethodResult | None = None
            try:
                result = await runner.run(task, method, text, rid, lambda _: caps)
                error = None
            except ModelError as exc:
                error = f"{exc.kind}: {exc.message}"
        progress.step()
        if result is None or result.raw is None:
            return {"id": rid, "label": label, "method": method,
                    "error": error or (result.reason if result is not None else None) or "no scores"}
        out: dict[str, Any] = {"id": rid, "label": label, "method": method, "label_mass": result.label_mass,
                               "raw_probabilities": dict(zip(task.labels, result.raw.tolist(), strict=True)),
                               "requests": result.requests}
        if result.samples is not None:
            out["samples"] = result.samples
        return out

    return list(await asyncio.gather(*(one(*row) for row in rows)))
