"""The adaptive in-flight limit: found from latency, kept near a server's capacity, cut by overload answers.

`simulate` is a discrete-event model of a server with N decoding slots and a FIFO queue behind them (as
the synthetic model's `--slots` mode and vLLM behave), driven by a client that keeps `limit.allowed` calls
in flight: no clocks, so the figures are exact and the test is not timed. It can answer a share of calls
with a random HTTP 500, as the fault proxy does.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from dataclasses import dataclass

import numpy as np
import pytest

from streams.classify.concurrency import FAULT, OVERLOAD, AdaptiveLimit, ConcurrencyGate, status_outcome
from streams.classify.model_client import ModelClient
from streams.errors import ModelError
from streams.localdev.fault_proxy import FaultConfig, FaultProxy
from streams.localdev.synthetic_model import SyntheticConfig, SyntheticModelServer
from streams.ops.metrics import ServiceMetrics
from streams.settings import ENV_DEFAULTS, ConfigError, Settings
from tests.unit.test_model_faults import TIMEOUT_S, ask, lenient_breaker, task_for

FLOOR = int(ENV_DEFAULTS["STREAMS_MIN_IN_FLIGHT"])


@dataclass
class Done:
    at: float
    latency: float
    allowed: int
    status: int = 200


#: A call: (calls in flight when it started, the limit's epoch then, when it started, HTTP status it will get).
Call = tuple[int, int, float, int]


def simulate(limit: AdaptiveLimit, slots: int, service_s: float, until: float,
             slots_after: tuple[float, int] | None = None, seed: int = 1, errors: float = 0.0,
             error_in_slot: bool = False) -> list[Done]:
    """Calls through a server with `slots` (changed to `slots_after[1]` at time `slots_after[0]`).

    A share `errors` of the calls, drawn at random, is answered HTTP 500, told to the limit as `status_outcome(500)`
    says. By default in 1 ms, without taking a slot, as the fault proxy (or a gateway) answers; with `error_in_slot`
    after a full service in a slot, as a replica that fails its generation.
    """
    rng = random.Random(seed)
    events: list[tuple[float, int, Call, bool]] = []  # (when, order, call, held a slot)
    queue: list[Call] = []
    busy = in_flight = seq = 0
    capacity = slots
    done: list[Done] = []

    def serve(now: float, call: Call) -> None:
        nonlocal busy, seq
        busy += 1
        seq += 1
        heapq.heappush(events, (now + service_s * rng.uniform(0.9, 1.1), seq, call, True))

    def fill(now: float) -> None:
        nonlocal in_flight, seq
        while in_flight < limit.allowed:
            in_flight += 1
            call = (in_flight, limit.epoch, now, 500 if errors and rng.random() < errors else 200)
            if call[3] == 500 and not error_in_slot:
                seq += 1
                heapq.heappush(events, (now + 0.001, seq, call, False))
            elif busy < capacity:
                serve(now, call)
            else:
                queue.append(call)

    fill(0.0)
    while events:
        now, _, (started_with, epoch, started, status), held = heapq.heappop(events)
        if now > until:
            break
        if slots_after is not None and now >= slots_after[0]:
            capacity = slots_after[1]
        busy -= held
        in_flight -= 1
        done.append(Done(now, now - started, limit.allowed, status))
        limit.observe(now - started, started_with, status_outcome(status), epoch)
        while queue and busy < capacity:
            serve(now, queue.pop(0))
        fill(now)
    return done


def between(done: list[Done], start: float, end: float) -> tuple[float, float]:
    """Throughput (calls/s) and p95 latency of the calls answered 200 that finished in [start, end)."""
    part = [d for d in done if start <= d.at < end and d.status == 200]
    return len(part) / (end - start), float(np.percentile([d.latency for d in part], 95))


def test_the_limit_finds_32_slots_then_follows_a_drop_to_8() -> None:
    """32 slots x 200 ms (160 calls/s at best, p95 220 ms unloaded), then 8 slots (40/s) from second 60."""
    done = simulate(AdaptiveLimit(1, 64, initial=8), 32, 0.2, until=120.0, slots_after=(60.0, 8))
    unloaded_p95 = 0.2 * 1.1
    rate, p95 = between(done, 10, 60)
    assert rate >= 0.95 * 160 and p95 <= 1.25 * unloaded_p95
    rate, p95 = between(done, 70, 120)  # within 10 s of the drop
    assert rate >= 0.95 * 40 and p95 <= 1.25 * unloaded_p95


@pytest.mark.parametrize("error_in_slot", [False, True], ids=["500s-answered-at-once", "500s-after-a-service"])
def test_random_500s_leave_the_limit_at_the_servers_capacity(error_in_slot: bool) -> None:
    """30% of calls answered HTTP 500 at random by a server of 32 slots x 200 ms: the limit, started at the
    default floor as ModelClient starts it, stays at the 32 slots, and the calls answered 200 come as fast as
    the slots the 500s leave allow: all of the fault-free run's (a 500 answered at once takes no slot) or 70%
    of it (a 500 after a full service takes a slot each). Took for overload, every window of calls holds a 500
    and the limit sits at its floor: 20 answers/s (4 of 32 slots), 14 with 500s in slots; fed as latency,
    500s answered in 1 ms pull the median round trip down and the limit sits at its floor too."""
    clean_rate, _ = between(simulate(AdaptiveLimit(FLOOR, 64, initial=FLOOR), 32, 0.2, until=60.0), 10, 60)
    done = simulate(AdaptiveLimit(FLOOR, 64, initial=FLOOR), 32, 0.2, until=60.0, errors=0.3,
                    error_in_slot=error_in_slot)
    share_500 = sum(d.status == 500 for d in done) / len(done)
    rate, p95 = between(done, 10, 60)
    limits = [d.allowed for d in done if 10 <= d.at < 60]
    room = 0.7 if error_in_slot else 1.0  # of the server's 160 answers/s, what the 500s leave to the others
    print(f"500s {share_500:.1%} of calls; answered 200: {rate:.1f}/s against {clean_rate:.1f}/s without 500s "
          f"({rate / clean_rate:.1%}), p95 {p95 * 1000:.0f} ms; limit median {np.median(limits):.0f}, "
          f"min {min(limits)}, max {max(limits)}")
    assert 0.27 <= share_500 <= 0.33
    assert rate >= 0.9 * room * clean_rate
    assert np.median(limits) >= 0.9 * 32  # near the 32 slots (the floor is 4)
    assert p95 <= 1.25 * 0.2 * 1.1  # and no queue at the server: within 1.25x the unloaded p95


@pytest.mark.parametrize("status, cut", [(429, True), (503, True), (504, True), (408, True),
                                         (500, False), (502, False), (400, False)])
def test_429_503_504_408_cut_the_limit_and_other_errors_are_not_observed(status: int, cut: bool) -> None:
    limit = AdaptiveLimit(1, 64, initial=40, backoff=0.5)
    for _ in range(3):  # three windows' worth of the same answer
        for _ in range(max(10, limit.allowed)):
            limit.observe(0.001, in_flight=limit.allowed, outcome=status_outcome(status), epoch=limit.epoch)
    if cut:
        assert status_outcome(status) == OVERLOAD and limit.limit == 5 and limit.epoch == 3  # 40 -> 20 -> 10 -> 5
    else:  # not observed at all: no cut, no window closed, no latency learnt
        assert status_outcome(status) == FAULT
        assert (limit.limit, limit.epoch, limit.rtt0, limit._seen) == (40, 0, None, 0)


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


class RecordingGate(ConcurrencyGate):
    """A gate that keeps what each call told it: (round trip, outcome)."""

    def __init__(self, limit: AdaptiveLimit) -> None:
        super().__init__(limit)
        self.told: list[tuple[float, str | None]] = []

    def release(self, admitted: tuple[int, int], rtt_s: float, outcome: str | None = None) -> None:
        self.told.append((rtt_s, outcome))
        super().release(admitted, rtt_s, outcome)


async def _through_faults(kind: str, rate: float, max_retries: int, calls: int = 20,
                          ) -> tuple[RecordingGate, list[object], list[float]]:
    """`calls` calls at once through the fault proxy injecting `kind` at `rate`, with a recording gate at 20."""
    config = FaultConfig(fault_rate=rate, kinds={kind: 1.0}, seed=5)
    async with SyntheticModelServer() as upstream, FaultProxy(upstream.base_url, config) as proxy:
        client = ModelClient(TIMEOUT_S, max_retries, breaker_factory=lenient_breaker, min_in_flight=1)
        task = task_for(proxy.base_url)
        gate = client.gates[task.model.base_url] = RecordingGate(AdaptiveLimit(1, 64, initial=20))

        async def timed() -> tuple[object, float]:
            started = time.perf_counter()
            return await ask(client, task), time.perf_counter() - started

        try:
            results = await asyncio.gather(*(timed() for _ in range(calls)))
        finally:
            await client.close()
    return gate, [r for r, _ in results], [t for _, t in results]


@pytest.mark.parametrize("kind, cut", [("server_error", False), ("rate_limit", True), ("unavailable", True)])
def test_the_model_client_cuts_the_limit_on_429_and_503_and_not_on_500(kind: str, cut: bool) -> None:
    gate, results, _ = asyncio.run(_through_faults(kind, 1.0, max_retries=0))
    assert all(isinstance(r, ModelError) for r in results)
    assert {o for _, o in gate.told} == {OVERLOAD if cut else FAULT}
    assert (gate.limit.limit, gate.limit.epoch) == ((14.0, 1) if cut else (20.0, 0))  # 20 x 0.7, once


def test_a_429_the_openai_client_retried_still_cuts_the_limit() -> None:
    """The openai client retries a 429 itself; the call may then succeed, and the 429 still says the server is
    full (the response hook sees every answer)."""
    gate, results, _ = asyncio.run(_through_faults("rate_limit_retry_after", 0.5, max_retries=1))
    overloads = sum(o == OVERLOAD for _, o in gate.told)
    failed = sum(isinstance(r, ModelError) for r in results)
    print(f"20 calls, half their requests answered 429: {20 - failed} succeeded, {overloads} told as overload")
    assert overloads > failed  # calls that succeeded after a 429 counted as overload too
    assert gate.limit.limit < 20 and gate.limit.epoch == 1


def test_a_500_the_openai_client_retried_is_no_overload_and_its_backoff_is_no_latency() -> None:
    """A call that succeeds after the openai client retried a 500 (backoff 0.375-0.5 s) teaches the limit the last
    request's round trip, not the backoff and the failed request: that wait was no queue at the server."""
    gate, results, took = asyncio.run(_through_faults("server_error", 0.5, max_retries=1))
    answered = [rtt for rtt, o in gate.told if o is None]
    retried = sum(t >= 0.375 and not isinstance(r, ModelError) for r, t in zip(results, took, strict=True))
    print(f"20 calls, half their requests answered 500: {retried} succeeded after a retry; round trips learnt: "
          f"max {max(answered) * 1000:.0f} ms of {len(answered)}; outcomes {sorted({str(o) for _, o in gate.told})}")
    assert retried >= 1
    assert OVERLOAD not in {o for _, o in gate.told} and gate.limit.epoch == 0
    assert len(answered) == sum(not isinstance(r, ModelError) for r in results)
    assert max(answered) < 0.375


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
