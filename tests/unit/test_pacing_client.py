"""The model client paces its calls against the synthetic model in rate-limited mode (in process, real HTTP through
the openai client): a declared budget, the server's headers alone, and no pacing for contrast."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from streams.classify.model_client import ModelClient
from streams.classify.pacing import Pacer
from streams.localdev.synthetic_model import SyntheticConfig, SyntheticModelServer
from tests.unit.test_model_faults import task_for

#: 600 a minute enforced per second (10 a second, a burst of 10): an unpaced burst is refused at once.
SERVER = SyntheticConfig(rpm=600, tpm=60_000, burst_s=1.0)


def run_calls(n: int, *, rpm: float | None, pacing: bool = True, chat: bool = False,
              max_retries: int = 0) -> tuple[dict[str, Any], ModelClient, float]:
    async def run() -> tuple[dict[str, Any], ModelClient, float]:
        async with SyntheticModelServer(SERVER) as server:
            task = task_for(server.base_url)
            task = replace(task, model=replace(task.model, requests_per_minute=rpm))
            client = ModelClient(10.0, max_retries, pacing=pacing)
            loop = asyncio.get_running_loop()
            started = loop.time()

            async def one(i: int) -> Any:
                if chat:
                    return await client.chat(task.model, [{"role": "user", "content": f"Review {i}: fine."}],
                                             max_tokens=2, temperature=0.0)
                return await client.first_token(task, f"review {i}: a fine film")

            results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
            took = loop.time() - started
            await client.close()
            stats = server.stats()
            stats["errors"] = sum(isinstance(r, BaseException) for r in results)
            return stats, client, took

    return asyncio.run(run())


def test_a_declared_budget_keeps_a_burst_of_calls_from_being_refused() -> None:
    stats, client, took = run_calls(30, rpm=600)
    assert stats["rate_limited"] == 0 and stats["errors"] == 0 and stats["requests"] == 30
    assert took >= 2.4  # 5 at once, then 25 at 10 a second
    pacer = next(iter(client.pacers.values()))
    assert pacer.rate_limited == 0
    assert pacer.tokens_per_char < 0.25  # learnt from usage: the server counts words, fewer than chars / 4


def test_the_servers_headers_alone_pace_an_endpoint_without_a_declared_budget() -> None:
    """The first burst meets a full server budget (10), the rest follow what the headers say remains."""
    stats, client, _ = run_calls(40, rpm=None, max_retries=3)
    assert stats["errors"] == 0 and stats["requests"] == 40
    pacer = next(iter(client.pacers.values()))
    assert pacer.active
    assert pacer.snapshot()["available"]["requests"] is not None
    # The first wave is sent before any header has come back; after it, the server's word paces the rest.
    assert stats["rate_limited"] <= 32


def test_without_pacing_the_same_burst_is_refused_and_the_429s_are_counted() -> None:
    stats, client, _ = run_calls(30, rpm=600, pacing=False)
    assert stats["rate_limited"] >= 15  # 10 fit the server's burst
    assert stats["errors"] == stats["rate_limited"]  # no retries here: each refusal is a failed call
    assert next(iter(client.pacers.values())).rate_limited == stats["rate_limited"]


def test_chat_calls_are_paced_and_their_headers_read(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []
    observe = Pacer.observe_headers

    def spy(self: Pacer, headers: Mapping[str, str], status: int = 200) -> None:
        seen.append(headers.get("x-ratelimit-remaining-tokens"))
        observe(self, headers, status)

    monkeypatch.setattr(Pacer, "observe_headers", spy)
    stats, client, took = run_calls(20, rpm=600, chat=True)
    assert stats["rate_limited"] == 0 and stats["errors"] == 0
    assert took >= 1.4  # 5 at once, then 15 at 10 a second
    assert len(seen) == 20 and all(v is not None for v in seen)  # every answer's headers, through the typed API
    assert next(iter(client.pacers.values())).tokens_per_char < 0.25  # and its usage
