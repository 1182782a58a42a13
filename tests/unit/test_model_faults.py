"""ModelClient against injected faults, over real HTTP: synthetic model <- FaultProxy <- openai client.

Everything runs in-process (asyncio.run); the proxy's counters show how many attempts reached the
endpoint, so retries (and their absence while the circuit is open) are proven by counts, not timings.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streams.classify.circuit import CircuitBreaker
from streams.classify.model_client import ModelClient, ModelReply
from streams.classify.probabilities import LabelMatcher
from streams.errors import ModelError
from streams.localdev.fault_proxy import FAULT_KINDS, FaultConfig, FaultProxy, main
from streams.localdev.synthetic_model import SyntheticModelServer
from streams.tasks import Task, parse_tasks

LABELS = ("fresh", "rotten")
TIMEOUT_S = 1.0


def task_for(base_url: str) -> Task:
    text = f"""
[[task]]
name = "t"
labels = ["fresh", "rotten"]
[task.model]
base_url = "{base_url}"
name = "synthetic"
"""
    return parse_tasks(text, "test", env={}).tasks["t"]


def lenient_breaker() -> CircuitBreaker:
    """A breaker that never opens, for tests about retries alone."""
    return CircuitBreaker(failure_threshold=1000, window=1000)


async def ask(client: ModelClient, task: Task, text: str = "Review: a fine film.") -> ModelReply | ModelError:
    try:
        return await client.first_token(task, text)
    except ModelError as exc:
        return exc


async def single_fault(kind: str, max_retries: int) -> tuple[ModelReply | ModelError, dict[str, int], float]:
    config = FaultConfig(fault_rate=1.0, kinds={kind: 1.0}, timeout_s=5 * TIMEOUT_S, seed=7)
    async with SyntheticModelServer() as upstream, FaultProxy(upstream.base_url, config) as proxy:
        client = ModelClient(TIMEOUT_S, max_retries, breaker_factory=lenient_breaker, bad_response_backoff_s=0.05)
        started = time.monotonic()
        try:
            outcome = await ask(client, task_for(proxy.base_url))
        finally:
            await client.close()
        return outcome, proxy.stats(), time.monotonic() - started


ERROR_KINDS = {
    "rate_limit_retry_after": ("http_status", "HTTP 429"),
    "rate_limit": ("http_status", "HTTP 429"),
    "server_error": ("http_status", "HTTP 500"),
    "unavailable": ("http_status", "HTTP 503"),
    "reset": ("connection", ""),
    "timeout": ("timeout", ""),
    "truncated": ("bad_response", "JSONDecodeError"),
    "not_json": ("bad_response", "got str"),
}


def test_every_failing_fault_kind_ends_in_the_right_model_error_after_retries() -> None:
    max_retries = 2

    async def run() -> dict[str, Any]:
        results = await asyncio.gather(*(single_fault(kind, max_retries) for kind in ERROR_KINDS))
        return dict(zip(ERROR_KINDS, results, strict=True))

    results = asyncio.run(run())
    for kind, (error_kind, text) in ERROR_KINDS.items():
        outcome, stats, _ = results[kind]
        assert isinstance(outcome, ModelError), (kind, outcome)
        assert outcome.kind == error_kind, (kind, outcome)
        assert text in outcome.message, (kind, outcome)
        # every attempt reached the proxy and met the fault: 1 try + max_retries retries
        assert stats[kind] == stats["requests"] == max_retries + 1, (kind, stats)
        assert stats["passed"] == 0
    # a timed-out attempt costs the client's whole timeout each time
    assert results["timeout"][2] >= (max_retries + 1) * TIMEOUT_S


def test_answers_without_logprobs_or_off_the_label_set_come_back_as_replies() -> None:
    async def run() -> dict[str, Any]:
        kinds = ("no_logprobs", "off_label")
        return dict(zip(kinds, await asyncio.gather(*(single_fault(kind, 2) for kind in kinds)), strict=True))

    results = asyncio.run(run())
    reply, stats, _ = results["no_logprobs"]
    assert isinstance(reply, ModelReply) and reply.top_logprobs is None and reply.chosen_token is None
    assert stats["no_logprobs"] == stats["requests"] == 1  # not an error: no retry
    reply, stats, _ = results["off_label"]
    assert isinstance(reply, ModelReply) and reply.top_logprobs
    matcher = LabelMatcher(LABELS)
    assert len(reply.top_logprobs) == 4  # the four label tokens the synthetic model sent, all replaced
    assert all(matcher.index(token) == -1 for token, _ in reply.top_logprobs)
    assert reply.chosen_token is not None and matcher.index(reply.chosen_token) == -1
    assert stats["off_label"] == stats["requests"] == 1


def test_a_request_error_is_not_retried_and_does_not_trip_the_breaker() -> None:
    async def bad_request(_: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "prompt too long", "type": "invalid_request_error"}},
                                 status=400)

    async def run() -> tuple[list[ModelReply | ModelError], int, str]:
        hits = 0

        async def handler(request: web.Request) -> web.Response:
            nonlocal hits
            hits += 1
            return await bad_request(request)

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        client = ModelClient(TIMEOUT_S, 3, breaker_factory=lambda: CircuitBreaker(failure_threshold=2, window=2))
        task = task_for(f"http://127.0.0.1:{port}/v1")
        try:
            outcomes = [await ask(client, task) for _ in range(5)]
            return outcomes, hits, client.breakers[task.model.base_url].state
        finally:
            await client.close()
            await runner.cleanup()

    outcomes, hits, state = asyncio.run(run())
    assert all(isinstance(o, ModelError) and o.kind == "http_status" and "HTTP 400" in o.message for o in outcomes)
    assert hits == 5  # one request per call: a 400 is not retried
    assert state == "closed"


def test_retry_after_is_honoured() -> None:
    async def gaps(config: FaultConfig) -> list[float]:
        async with SyntheticModelServer() as upstream, FaultProxy(upstream.base_url, config) as proxy:
            client = ModelClient(TIMEOUT_S, 1, breaker_factory=lenient_breaker)
            try:
                outcome = await ask(client, task_for(proxy.base_url))
            finally:
                await client.close()
            assert isinstance(outcome, ModelError) and "HTTP 429" in outcome.message
            times = [t for t, _ in proxy.arrivals]
            return [b - a for a, b in itertools.pairwise(times)]

    async def run() -> tuple[list[float], list[float]]:
        kinds = {"rate_limit_retry_after": 1.0}
        with_ms = FaultConfig(fault_rate=1.0, kinds=kinds, retry_after_s=0.6)  # retry-after-ms: 600, Retry-After: 1
        seconds_only = FaultConfig(fault_rate=1.0, kinds=kinds, retry_after_s=0.3, retry_after_ms_header=False)
        return await asyncio.gather(gaps(with_ms), gaps(seconds_only))

    with_ms, seconds_only = asyncio.run(run())
    assert len(with_ms) == len(seconds_only) == 1
    # The client's own first backoff is at most 0.5 s, so waiting >= 0.55 s can only be the header's 600 ms,
    # and waiting well under 1 s shows retry-after-ms won over the integer Retry-After.
    assert 0.55 <= with_ms[0] < 0.95, with_ms
    assert seconds_only[0] >= 0.95, seconds_only  # `Retry-After: 1` alone: a whole second


def test_mixed_faults_at_30_percent_every_call_returns_and_most_succeed() -> None:
    calls = 300
    # 300 connections opened at once in one event loop (client, proxy and model together) are CPU-bound
    # for seconds on a small machine; a 1 s timeout would then fire on requests no fault touched.
    timeout_s = 2.0

    async def run() -> tuple[list[Any], dict[str, int]]:
        config = FaultConfig(fault_rate=0.3, timeout_s=timeout_s + 1, seed=11, retry_after_s=0.1)
        async with SyntheticModelServer() as upstream, FaultProxy(upstream.base_url, config) as proxy:
            client = ModelClient(timeout_s, 3, bad_response_backoff_s=0.1)  # the default breaker
            task = task_for(proxy.base_url)
            try:
                outcomes = await asyncio.wait_for(
                    asyncio.gather(*(client.first_token(task, f"item {i}") for i in range(calls)),
                                   return_exceptions=True),
                    timeout=60,  # a hang guard, far above the ~10 s this takes
                )
            finally:
                await client.close()
            return outcomes, proxy.stats()

    outcomes, stats = asyncio.run(run())
    assert len(outcomes) == calls
    unexpected = [o for o in outcomes if not isinstance(o, ModelReply | ModelError)]
    assert not unexpected, unexpected[:3]
    replies = [o for o in outcomes if isinstance(o, ModelReply)]
    assert len(replies) >= 0.9 * calls, Counter(o.kind for o in outcomes if isinstance(o, ModelError))
    assert stats["requests"] > calls  # retries happened
    injected = sum(stats[k] for k in FAULT_KINDS)
    assert 0.2 < injected / stats["requests"] < 0.4, stats
    assert all(stats[k] > 0 for k in FAULT_KINDS), stats


def test_circuit_breaker_stops_hammering_and_recovers_through_half_open_probes() -> None:
    def factory() -> CircuitBreaker:
        return CircuitBreaker(failure_threshold=3, window=3, open_for_s=0.2, half_open_max_calls=1,
                              max_open_for_s=0.8)

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        down = FaultConfig(fault_rate=1.0, kinds={"unavailable": 1.0}, seed=3)
        async with SyntheticModelServer() as upstream, FaultProxy(upstream.base_url, down) as proxy:
            client = ModelClient(TIMEOUT_S, 1, breaker_factory=factory)  # deadline 2 s per call
            task = task_for(proxy.base_url)
            breaker = client.breaker(task.model)
            try:
                # 1. The endpoint is down: failures trip the breaker.
                tripping: list[ModelReply | ModelError] = []
                while breaker.state == "closed" and len(tripping) < 10:
                    tripping.append(await ask(client, task))
                out["tripping"], out["state_after_trip"] = tripping, breaker.state
                # 2. Still down: 100 callers wait on the open circuit; only probes reach the endpoint.
                before = proxy.stats()["requests"]
                t0 = time.monotonic()
                out["waiting"] = await asyncio.gather(*(ask(client, task) for _ in range(100)))
                out["waited_s"] = time.monotonic() - t0
                out["requests_while_open"] = proxy.stats()["requests"] - before
                out["snapshot_down"] = breaker.snapshot()
                # 3. The endpoint recovers: a probe closes the breaker and every call succeeds.
                proxy.config = FaultConfig(fault_rate=0.0)
                before = proxy.stats()["requests"]
                out["recovered"] = await asyncio.gather(*(ask(client, task) for _ in range(50)))
                out["requests_after_recovery"] = proxy.stats()["requests"] - before
                out["state_end"] = breaker.state
            finally:
                await client.close()
        return out

    out = asyncio.run(run())
    assert len(out["tripping"]) == 3 and out["state_after_trip"] == "open"
    assert all(isinstance(o, ModelError) and "HTTP 503" in o.message for o in out["tripping"])
    waiting = out["waiting"]
    assert all(isinstance(o, ModelError) for o in waiting)
    assert Counter(o.kind for o in waiting) == {"circuit_open": 100}
    # no hammering: 100 callers, a handful of half-open probes (one per open period within the 2 s deadline)
    assert 1 <= out["requests_while_open"] <= 8, out["requests_while_open"]
    assert out["waited_s"] >= 1.9  # they waited (back-pressure) until their deadline rather than fail fast
    snap = out["snapshot_down"]
    assert snap["times_opened"] >= 2 and snap["rejected"] > 100 and snap["open_for_s"] > 0.2
    assert all(isinstance(o, ModelReply) for o in out["recovered"])
    assert out["requests_after_recovery"] == 50  # one request per call once closed
    assert out["state_end"] == "closed"


def test_proxy_reports_its_counters_and_takes_new_settings_over_http() -> None:
    async def run() -> tuple[dict[str, Any], dict[str, Any], int]:
        async with SyntheticModelServer() as upstream, FaultProxy(upstream.base_url, FaultConfig(0.0)) as proxy:
            client = ModelClient(TIMEOUT_S, 0)
            try:
                await ask(client, task_for(proxy.base_url))
            finally:
                await client.close()
            root = proxy.base_url.removesuffix("/v1")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{root}/faults") as resp:
                    before = await resp.json()
                async with http.post(f"{root}/faults", json={"fault_rate": 1.0, "kinds": {"server_error": 1}}) as r:
                    after = await r.json()
                async with http.post(f"{root}/faults", json={"kinds": {"nonsense": 1}}) as r:
                    bad_status = r.status
            return before, after, bad_status

    before, after, bad_status = asyncio.run(run())
    assert before["requests"] == before["passed"] == 1 and before["server_error"] == 0
    assert after["config"] == {"fault_rate": 1.0, "kinds": {"server_error": 1}}
    assert bad_status == 400


def test_cli_announces_itself_and_rejects_bad_kinds() -> None:
    assert main(["--upstream", "http://127.0.0.1:1/v1", "--kinds", "nonsense"]) == 2
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.localdev.fault_proxy", "--upstream", "http://127.0.0.1:1/v1",
         "--port", "0", "--fault-rate", "0.5", "--kinds", "server_error:2,timeout", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fault proxy listening on http://127.0.0.1:")
        assert line.rstrip().endswith("/v1 -> http://127.0.0.1:1/v1")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("bad", [{"fault_rate": 1.5}, {"kinds": {"gremlins": 1.0}}, {"kinds": {"reset": 0.0}}])
def test_bad_fault_config_is_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultConfig(**bad)
