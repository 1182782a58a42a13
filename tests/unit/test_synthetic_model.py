"""The synthetic model through the real `openai` client: the shapes it returns must parse, and its knobs must work."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
import openai
import pytest

from streams.localdev.serving_limits import Slots
from streams.localdev.synthetic_model import SyntheticConfig, SyntheticModelServer, main


def _client(server: SyntheticModelServer, max_retries: int = 2) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=max_retries)


async def _ask(client: openai.AsyncOpenAI, text: str = "Review: great film.") -> Any:
    return await client.chat.completions.create(
        model="synthetic",
        messages=[{"role": "system", "content": "Answer fresh or rotten."}, {"role": "user", "content": text}],
        max_tokens=1,
        logprobs=True,
        top_logprobs=20,
        temperature=0,
    )


def test_top_logprobs_carry_the_configured_label_probabilities() -> None:
    async def run() -> Any:
        async with SyntheticModelServer(SyntheticConfig(label_probs=[0.6, 0.3])) as server, _client(server) as client:
            return await _ask(client)

    response = asyncio.run(run())
    choice = response.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == "fresh"
    entry = choice.logprobs.content[0]
    assert entry.token == "fresh"
    top = entry.top_logprobs
    logprobs = [t.logprob for t in top]
    assert logprobs == sorted(logprobs, reverse=True)
    probs = {t.token: math.exp(t.logprob) for t in top}
    assert probs["fresh"] + probs[" fresh"] == pytest.approx(0.6, abs=1e-6)
    assert probs["rotten"] + probs[" rotten"] == pytest.approx(0.3, abs=1e-6)
    assert probs["fresh"] == pytest.approx(0.6 * 0.8, abs=1e-6)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)  # the missing 0.1 went to filler tokens
    assert {"the", "<", "\n"} <= probs.keys()
    assert response.usage is not None and response.usage.completion_tokens == 1


def test_marker_forces_the_chosen_label() -> None:
    async def run() -> Any:
        async with SyntheticModelServer(SyntheticConfig(label_probs=[0.9, 0.1])) as server, _client(server) as client:
            return await _ask(client, "Review: dull. [[label=rotten]]")

    entry = asyncio.run(run()).choices[0].logprobs.content[0]
    assert entry.token == "rotten"
    probs = {t.token: math.exp(t.logprob) for t in entry.top_logprobs}
    assert probs["rotten"] + probs[" rotten"] == pytest.approx(0.95, abs=1e-6)


def test_logprobs_can_be_dropped_like_some_providers_do() -> None:
    async def run() -> Any:
        async with SyntheticModelServer(SyntheticConfig(logprobs=False)) as server, _client(server) as client:
            return await _ask(client)

    choice = asyncio.run(run()).choices[0]
    assert choice.logprobs is None
    assert choice.message.content == "fresh"


def test_concurrent_requests_overlap() -> None:
    async def run() -> tuple[float, dict[str, int]]:
        async with SyntheticModelServer(SyntheticConfig(latency_ms=200)) as server, _client(server) as client:
            start = time.perf_counter()
            await asyncio.gather(*(_ask(client) for _ in range(20)))
            return time.perf_counter() - start, server.stats()

    elapsed, stats = asyncio.run(run())
    assert elapsed < 20 * 0.2 / 4
    assert stats["requests"] == 20
    assert stats["in_flight"] == 0
    assert stats["max_in_flight_seen"] >= 10


def test_stats_and_models_endpoints() -> None:
    async def run() -> tuple[list[str], dict[str, int]]:
        async with SyntheticModelServer(SyntheticConfig(model="synth-1")) as server:
            async with _client(server) as client:
                await _ask(client)
                models = [m.id async for m in client.models.list()]
            async with aiohttp.ClientSession() as http:
                root = server.base_url.removesuffix("/v1")
                async with http.get(f"{root}/health") as health:
                    assert health.status == 200
                async with http.get(f"{root}/stats") as resp:
                    return models, await resp.json()

    models, stats = asyncio.run(run())
    assert models == ["synth-1"]
    assert stats["requests"] == 1 and stats["max_in_flight_seen"] == 1


def test_over_concurrency_limit_answers_429() -> None:
    async def run() -> tuple[int, int, dict[str, int]]:
        config = SyntheticConfig(latency_ms=200, max_concurrency=2)
        async with SyntheticModelServer(config) as server, _client(server, max_retries=0) as client:
            results = await asyncio.gather(*(_ask(client) for _ in range(10)), return_exceptions=True)
            limited = sum(isinstance(r, openai.RateLimitError) for r in results)
            ok = sum(not isinstance(r, BaseException) for r in results)
            return limited, ok, server.stats()

    limited, ok, stats = asyncio.run(run())
    assert limited >= 1 and ok >= 1 and limited + ok == 10
    assert stats["max_in_flight_seen"] <= 2
    assert stats["rejected"] == limited


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="label_probs"):
        SyntheticConfig(label_probs=[0.8, 0.8])
    assert main(["--labels", "a,b", "--label-probs", "0.5"]) == 2


def test_latency_distributions_have_the_configured_mean_and_spread() -> None:
    import random
    import statistics

    rng = random.Random(1)
    for dist, sd in (("uniform", 100 / 3 ** 0.5), ("lognormal", 80.0), ("exponential", 200.0)):
        config = SyntheticConfig(latency_ms=200, latency_jitter_ms=100 if dist == "uniform" else 80, latency_dist=dist)
        draws = [config.latency_s(rng) * 1000 for _ in range(20000)]
        assert statistics.fmean(draws) == pytest.approx(200, rel=0.03), dist
        assert statistics.pstdev(draws) == pytest.approx(sd, rel=0.05), dist
        assert min(draws) >= 0
    with pytest.raises(ValueError, match="latency_dist"):
        SyntheticConfig(latency_dist="normal")


def test_capacity_mode_queues_beyond_its_slots_and_can_shrink_mid_run() -> None:
    """--slots: never more than N calls in service, the rest wait (no error), and /control resizes N."""
    async def run() -> tuple[list[Any], dict[str, Any], list[Any], dict[str, Any]]:
        cfg = SyntheticConfig(latency_ms=50, slots=3)
        async with SyntheticModelServer(cfg) as server, _client(server, max_retries=0) as client:
            first = await asyncio.gather(*(_ask(client) for _ in range(12)))
            stats = server.stats()
            async with aiohttp.ClientSession() as http, http.post(
                    f"http://{server.host}:{server.port}/control", json={"slots": 1}) as resp:
                assert resp.status == 200
            second = await asyncio.gather(*(_ask(client) for _ in range(4)))
            return first, stats, second, server.stats()

    first, stats, second, after = asyncio.run(run())
    assert all(r.choices[0].message.content == "fresh" for r in first + second)
    assert stats["max_queued_seen"] >= 8, stats  # 12 at once with 3 slots: 9 waited
    assert stats["rejected"] == 0 and after["slots"] == 1 and after["queued"] == 0


def test_slots_never_hold_more_than_their_capacity() -> None:
    async def run() -> int:
        slots, peak = Slots(2), 0

        async def hold() -> None:
            nonlocal peak
            await slots.acquire()
            peak = max(peak, slots.busy)
            await asyncio.sleep(0.01)
            slots.release()

        await asyncio.gather(*(hold() for _ in range(10)))
        return peak

    assert asyncio.run(run()) == 2


def test_rate_limited_mode_answers_429_with_retry_after_and_openai_headers() -> None:
    """--rpm/--tpm: a burst up to the budget passes, the next call gets 429 + Retry-After, every answer carries
    x-ratelimit-* headers with the remaining budget."""
    async def run() -> list[tuple[int, dict[str, str]]]:
        async with SyntheticModelServer(SyntheticConfig(rpm=5, tpm=10_000)) as server:
            out = []
            async with aiohttp.ClientSession() as http:
                for _ in range(6):
                    async with http.post(f"{server.base_url}/chat/completions",
                                         json={"model": "synthetic", "max_tokens": 1,
                                               "messages": [{"role": "user", "content": "one two three"}]}) as resp:
                        out.append((resp.status, dict(resp.headers)))
            assert server.stats()["rate_limited"] == 1
            return out

    answers = asyncio.run(run())
    assert [status for status, _ in answers] == [200] * 5 + [429]
    assert [h["x-ratelimit-remaining-requests"] for _, h in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert answers[0][1]["x-ratelimit-limit-tokens"] == "10000"
    assert answers[0][1]["x-ratelimit-remaining-tokens"] == str(10_000 - 4)  # 3 prompt words + 1 token asked
    refused = answers[5][1]
    assert int(refused["Retry-After"]) >= 1 and 0 < int(refused["retry-after-ms"]) <= 12_000  # 5/min: 12 s each


def test_a_token_budget_refuses_what_it_cannot_hold() -> None:
    async def run() -> list[int]:
        async with SyntheticModelServer(SyntheticConfig(tpm=20)) as server, aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(3):  # 9 words + 1 token = 10 tokens a call: two fit, the third waits for the bucket
                async with http.post(f"{server.base_url}/chat/completions",
                                     json={"model": "synthetic", "max_tokens": 1, "messages": [
                                         {"role": "user", "content": "a b c d e f g h i"}]}) as resp:
                    statuses.append(resp.status)
            return statuses

    assert asyncio.run(run()) == [200, 200, 429]


def test_stats_report_latency_from_arrival_to_answer_over_a_recent_window() -> None:
    """With 2 slots of 50 ms, 6 calls at once answer after about 50, 100 and 150 ms: queueing is counted."""
    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with SyntheticModelServer(SyntheticConfig(latency_ms=50, slots=2)) as server, \
                _client(server, max_retries=0) as client:
            await asyncio.gather(*(_ask(client) for _ in range(6)))
            everything = server.stats()
            await asyncio.sleep(0.3)
            return everything, server.stats(window_s=0.2)

    everything, recent = asyncio.run(run())
    latency = everything["latency"]
    assert latency["answers"] == 6
    assert 40 <= latency["p50_ms"] <= 140 and 140 <= latency["p95_ms"] <= 400
    assert recent["latency"] == {"answers": 0, "p50_ms": None, "p95_ms": None}
