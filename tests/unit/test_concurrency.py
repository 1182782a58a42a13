"""The adaptive in-flight limit: found from latency, kept near a server's capacity, cut by overload answers.

`simulate` is a discrete-event model of a server with N decoding slots and a FIFO queue behind them (as
the synthetic model's `--slots` mode and vLLM behave), driven by a client that keeps `limit.allowed` calls
in flight: no clocks, so the figures are exact and the test is not timed.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from dataclasses import dataclass

import numpy as np
import pytest

from streams.classify.concurrency import OVERLOAD, AdaptiveLimit, ConcurrencyGate
from streams.classify.model_client import ModelClient
from streams.localdev.synthetic_model import SyntheticConfig, SyntheticModelServer
from streams.ops.metrics import ServiceMetrics
from streams.settings import ENV_DEFAULTS, ConfigError, Settings
from tests.unit.test_model_faults import task_for


@dataclass
class Done:
    at: float
    latency: float
    allowed: int


def simulate(limit: AdaptiveLimit, slots: int, service_s: float, until: float,
             slots_after: tuple[float, int] | None = None, seed: int = 1) -> list[Done]:
    """Calls through a server with `slots` (changed to `slots_after[1]` at time `slots_after[0]`)."""
    rng = random.Random(seed)
    events: list[tuple[float, int, tuple[int, int, float]]] = []
    queue: list[tuple[int, int, float]] = []
    busy = in_flight = seq = 0
    capacity = slots
    done: list[Done] = []

    def serve(now: float, call: tuple[int, int, float]) -> None:
        nonlocal busy, seq
        busy += 1
        seq += 1
        heapq.heappush(events, (now + service_s * rng.uniform(0.9, 1.1), seq, call))

    def fill(now: float) -> None:
        nonlocal in_flight
        while in_flight < limit.allowed:
            in_flight += 1
            call = (in_flight, limit.epoch, now)
            if busy < capacity:
                serve(now, call)
            else:
                queue.append(call)

    fill(0.0)
    while events:
        now, _, (started_with, epoch, started) = heapq.heappop(events)
        if now > until:
            break
        if slots_after is not None and now >= slots_after[0]:
            capacity = slots_after[1]
        busy -= 1
        in_flight -= 1
        done.append(Done(now, now - started, limit.allowed))
        limit.observe(now - started, started_with, None, epoch)
        while queue and busy < capacity:
            serve(now, queue.pop(0))
        fill(now)
    return done


def between(done: list[Done], start: float, end: float) -> tuple[float, float]:
    """Throughput (calls/s) and p95 latency of the calls that finished in [start, end)."""
    part = [d for d in done if start <= d.at < end]
    return len(part) / (end - start), float(np.percentile([d.latency for d in part], 95))


def test_the_limit_finds_32_slots_then_follows_a_drop_to_8() -> None:
    """32 slots x 200 ms (160 calls/s at best, p95 220 ms unloaded), then 8 slots (40/s) from second 60."""
    done = simulate(AdaptiveLimit(1, 64, initial=8), 32, 0.2, until=120.0, slots_after=(60.0, 8))
    unloaded_p95 = 0.2 * 1.1
    rate, p95 = between(done, 10, 60)
    assert rate >= 0.95 * 160 and p95 <= 1.25 * unloaded_p95
    rate, p95 = between(done, 70, 120)  # within 10 s of the drop
    assert rate >= 0.95 * 40 and p95 <= 1.25 * unloaded_p95


def test_a_fixed_limit_above_capacity_queues_inside_the_server() -> None:
    """The contrast: 64 in flight against 8 slots makes every call wait 8 services."""
    done = simulate(AdaptiveLimit(64, 64, initial=64), 8, 0.2, until=60.0)
    rate, p95 = between(done, 10, 60)
    assert rate >= 0.95 * 40 and p95 > 6 * 0.2


def test_an_unused_limit_does_not_grow() -> None:
    limit = AdaptiveLimit(1, 64, initial=8)
    for _ in range(500):
        limit.observe(0.1, in_flight=2)  # a quiet worker: never more than 2 calls at once
    assert limit.limit == 8


def test_overload_answers_cut_the_limit_once_per_window() -> None:
    limit = AdaptiveLimit(1, 64, initial=40, backoff=0.5)
    for _ in range(limit.allowed):  # one window's worth of 429s
        limit.observe(0.0, in_flight=40, outcome=OVERLOAD)
    assert limit.limit == 20
    assert limit.epoch == 1


def test_calls_started_before_a_cut_are_not_counted_against_the_new_limit() -> None:
    limit = AdaptiveLimit(1, 64, initial=40, backoff=0.5)
    for _ in range(40):  # one window: the cut
        limit.observe(0.0, in_flight=40, outcome=OVERLOAD, epoch=0)
    for _ in range(100):  # the rest of the old epoch's overloaded calls come back: no further cut
        limit.observe(0.0, in_flight=40, outcome=OVERLOAD, epoch=0)
    assert limit.limit == 20


def test_a_fixed_limit_stays_fixed_and_never_probes() -> None:
    limit = AdaptiveLimit(16, 16, initial=3)
    for i in range(1000):
        limit.observe(0.1 * (1 + i % 7), in_flight=16, outcome=OVERLOAD if i % 50 == 0 else None)
        assert limit.allowed == 16


@pytest.mark.parametrize("floor, ceiling", [(0, 4), (5, 4)])
def test_bounds_are_validated(floor: int, ceiling: int) -> None:
    with pytest.raises(ValueError, match="floor"):
        AdaptiveLimit(floor, ceiling)


def test_the_gate_admits_up_to_the_limit_in_arrival_order_and_survives_cancellation() -> None:
    async def run() -> tuple[list[int], int]:
        gate = ConcurrencyGate(AdaptiveLimit(2, 2, initial=2))
        order: list[int] = []
        held = [await gate.acquire(), await gate.acquire()]

        async def call(i: int) -> None:
            admitted = await gate.acquire()
            order.append(i)
            gate.release(admitted, 0.1)

        waiters = [asyncio.ensure_future(call(i)) for i in range(4)]
        await asyncio.sleep(0)
        waiters[1].cancel()  # a request dropped while waiting (a partition revoked)
        await asyncio.sleep(0)
        for admitted in held:
            gate.release(admitted, 0.1)
        await asyncio.gather(*waiters, return_exceptions=True)
        return order, gate.in_flight

    order, in_flight = asyncio.run(run())
    assert order == [0, 2, 3] and in_flight == 0


def test_the_model_client_keeps_a_4_slot_server_from_queueing_64_calls() -> None:
    """64 calls at once, the default ceiling, against 4 slots of 50 ms: the server's own queue stays short."""
    async def run() -> tuple[dict[str, int], float]:
        async with SyntheticModelServer(SyntheticConfig(latency_ms=50.0, slots=4)) as server:
            client = ModelClient(10.0, 0, max_in_flight=64)
            task = task_for(server.base_url)
            for _ in range(6):  # 6 waves of 64: the limit learns from the first ones
                await asyncio.gather(*(client.first_token(task, "a fine film") for _ in range(64)))
            limit = client.gates[server.base_url].limit.limit
            await client.close()
            return server.stats(), limit

    stats, limit = asyncio.run(run())
    assert stats["requests"] == 6 * 64
    assert 2 <= limit <= 12  # near the 4 slots; latency noise of an in-process server on a loaded machine
    assert stats["max_in_flight_seen"] < 32  # a fixed limit of 64 puts all 64 in the server at once


def test_a_floor_above_the_ceiling_is_refused_at_start() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"STREAMS_MIN_IN_FLIGHT": "16", "STREAMS_MAX_IN_FLIGHT": "8"})
    assert info.value.problems == [("STREAMS_MIN_IN_FLIGHT=16 is above STREAMS_MAX_IN_FLIGHT=8; the adaptive limit "
                                   "lives between them (set them equal for a fixed limit)")]


def test_each_endpoints_limit_and_waiting_calls_are_exported_without_credentials() -> None:
    metrics = ServiceMetrics()
    gate = ConcurrencyGate(AdaptiveLimit(1, 64, initial=12))
    metrics.state.gates = {"https://user:secret@models.example:8443/v1": gate}
    text = metrics.exposition().decode()
    assert 'llm_classify_model_concurrency_limit{endpoint="https://models.example:8443/v1"} 12.0' in text
    assert 'llm_classify_model_calls_waiting{endpoint="https://models.example:8443/v1"} 0.0' in text
    assert "secret" not in text


def test_one_call_that_never_answers_does_not_hold_the_others_at_the_default_floor() -> None:
    """The limit starts at its floor and grows only from answers: at a floor of 1, a first call that hangs would
    hold every other until its timeout. The default floor leaves room for the rest."""
    async def run() -> int:
        floor = int(ENV_DEFAULTS["STREAMS_MIN_IN_FLIGHT"])
        gate = ConcurrencyGate(AdaptiveLimit(floor, 64, initial=floor))
        await gate.acquire()  # admitted, and never released: a call the server never answers
        done = 0
        for _ in range(20):
            admitted = await asyncio.wait_for(gate.acquire(), timeout=1.0)
            gate.release(admitted, 0.05)
            done += 1
        return done

    assert int(ENV_DEFAULTS["STREAMS_MIN_IN_FLIGHT"]) >= 2
    assert asyncio.run(run()) == 20


def test_an_unset_floor_follows_a_smaller_maximum() -> None:
    """STREAMS_MAX_IN_FLIGHT=2 alone is a valid configuration: the default floor does not exceed it."""
    assert Settings.from_env({"STREAMS_MAX_IN_FLIGHT": "2"}).max_in_flight == 2
