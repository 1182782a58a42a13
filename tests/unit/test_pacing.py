"""The pacer (streams/classify/pacing.py): refill, usage correction, following the server's headers, shares.

A fake clock stands in for time, so every figure is exact and nothing waits: `Clock.run` drives a coroutine,
and whenever every task is asleep it moves time to the earliest wake-up (a discrete-event simulation, so
concurrent sleepers overlap as in real time).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from streams.classify.pacing import Bucket, Pacer, budget_share, parse_reset

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), wake))
        await wake

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        async def drive() -> T:
            task = asyncio.ensure_future(coro)
            while not task.done():
                for _ in range(20):  # let every runnable task reach its next sleep
                    await asyncio.sleep(0)
                while self._sleepers and self._sleepers[0][2].cancelled():
                    heapq.heappop(self._sleepers)
                if self._sleepers and not task.done():
                    at, _, wake = heapq.heappop(self._sleepers)
                    self.now = max(self.now, at)
                    wake.set_result(None)
            return task.result()

        return asyncio.run(drive())


def pacer(clock: Clock, rpm: float | None = None, tpm: float | None = None, **kw: float) -> Pacer:
    return Pacer(rpm, tpm, clock=clock, sleep=clock.sleep, **kw)


def admit_times(p: Pacer, clock: Clock, n: int, tokens: int = 1) -> list[float]:
    async def run() -> list[float]:
        times = []
        for _ in range(n):
            await p.admit(tokens)
            p.done(tokens)
            times.append(clock.now)
        return times

    return clock.run(run())


# --------------------------------------------------------------------------- buckets and refill


def test_requests_are_spread_at_the_per_minute_rate_after_a_half_second_burst() -> None:
    clock = Clock()
    times = admit_times(pacer(clock, rpm=600), clock, 40)
    assert times[:5] == [0.0] * 5  # half a second of budget at once
    gaps = [b - a for a, b in itertools.pairwise(times[4:])]
    assert all(g == pytest.approx(0.1) for g in gaps)
    assert times[-1] == pytest.approx(3.5)  # 40 calls = 5 + 35 at 10 a second


def test_the_token_budget_binds_when_calls_are_large() -> None:
    clock = Clock()
    p = pacer(clock, rpm=600, tpm=6000, burst_s=1.0)  # 100 tokens a second, a bucket of 100
    times = admit_times(p, clock, 11, tokens=50)
    assert times[1] == 0.0 and times[2] == pytest.approx(0.5)  # two fit the 100-token burst, then one per 0.5 s
    assert times[-1] == pytest.approx(4.5)


def test_a_call_larger_than_the_bucket_passes_from_a_full_bucket_and_leaves_a_debt() -> None:
    clock = Clock()
    p = pacer(clock, tpm=600)  # 10 tokens a second, a bucket of 10
    times = admit_times(p, clock, 3, tokens=25)
    assert times == pytest.approx([0.0, 2.5, 5.0])  # never refused, never faster than 10 tokens a second


def test_a_bucket_refills_continuously_up_to_its_capacity() -> None:
    b = Bucket(rate=10.0, capacity=10.0, now=0.0)
    b.take(10, 0.0)
    assert b.wait_s(5, 0.2) == pytest.approx(0.3)
    b.refill(100.0)
    assert b.level == 10.0  # idle time does not pile up a burst beyond the capacity


def test_waiting_callers_are_served_in_arrival_order() -> None:
    clock = Clock()
    p = pacer(clock, rpm=60, burst_s=1.0)  # one a second

    async def run() -> list[int]:
        order: list[int] = []

        async def call(i: int) -> None:
            await p.admit(1)
            order.append(i)

        await asyncio.gather(*(call(i) for i in range(6)))
        return order

    assert clock.run(run()) == list(range(6))
    assert clock.now == pytest.approx(5.0)


def test_a_cancelled_waiter_takes_nothing() -> None:
    clock = Clock()
    p = pacer(clock, rpm=60)

    async def run() -> dict[str, float | None]:
        await p.admit(1)
        waiter = asyncio.ensure_future(p.admit(1))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        return p.snapshot()["available"]

    available = clock.run(run())
    assert p.snapshot()["waiting"] == 0
    assert available["requests"] is not None and available["requests"] <= 1.0


def test_without_budget_or_headers_nothing_waits() -> None:
    clock = Clock()
    p = pacer(clock)
    assert not p.active
    assert admit_times(p, clock, 1000) == [0.0] * 1000


def test_budgets_are_validated() -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        Pacer(0)
    with pytest.raises(ValueError, match="share"):
        Pacer(60, share=1.5)


# --------------------------------------------------------------------------- token estimates and usage


def test_the_estimate_starts_at_four_characters_a_token_plus_the_completion_allowance() -> None:
    p = Pacer(tokens_per_minute=1000)
    assert p.estimate(400, 1) == 101
    assert p.estimate(0, 16) == 16


def test_the_ratio_is_learnt_from_reported_usage() -> None:
    p = Pacer(tokens_per_minute=1000)
    for _ in range(300):
        p.learn(400, 50)  # a tokenizer (or a word-counting server) that finds 8 characters a token
    assert p.tokens_per_char == pytest.approx(0.125, rel=0.01)
    assert p.estimate(400, 1) == math.ceil(400 * p.tokens_per_char) + 1 == 52  # 50.04 rounded up, plus 1
    p.learn(0, 10)  # nothing to learn from: no characters
    p.learn(100, 0)  # or no usage reported
    assert p.tokens_per_char == pytest.approx(0.125, rel=0.01)


def test_settle_gives_back_an_overestimate_and_takes_an_underestimate() -> None:
    clock = Clock()
    p = pacer(clock, tpm=6000, burst_s=1.0)  # 100 a second, bucket 100

    async def run() -> None:
        await p.admit(100)

    clock.run(run())
    assert p.wait_s(60) == pytest.approx(0.6)
    p.settle(100, 40)  # the server metered 40
    assert p.wait_s(60) == 0.0
    p.settle(40, 140)  # later usage says 100 more than thought: the level goes from 60 to -40
    assert p.wait_s(60) == pytest.approx(1.0)


def test_usage_correction_keeps_the_long_run_token_rate_at_the_budget() -> None:
    """Estimates twice too high: without correction the pacer would use half the budget."""
    clock = Clock()
    p = pacer(clock, tpm=60_000)  # 1000 a second

    async def run() -> int:
        metered = 0
        while clock.now < 60:
            await p.admit(200)
            p.done(200)
            p.settle(200, 100)
            metered += 100
        return metered

    metered = clock.run(run())
    assert metered / 60 == pytest.approx(1000, rel=0.03)


# --------------------------------------------------------------------------- the server's headers


def test_reset_durations_in_openais_formats() -> None:
    assert parse_reset("1s") == 1.0
    assert parse_reset("6m0s") == 360.0
    assert parse_reset("20ms") == pytest.approx(0.02)
    assert parse_reset("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_reset("0.5") == 0.5
    for bad in ("", "1x", "m", "-1", "1s2", "nan"):
        assert parse_reset(bad) is None


def test_what_the_server_says_remains_bounds_a_worker_with_room_of_its_own() -> None:
    clock = Clock()
    p = pacer(clock, rpm=1200)  # declared twice what the server allows
    clock.now = 10.0  # its own bucket is full
    p.observe_headers({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "3",
                       "x-ratelimit-reset-requests": "59.7s"})
    times = admit_times(p, clock, 13)
    assert times[:3] == [10.0] * 3  # what remains
    assert times[-1] == pytest.approx(11.0)  # then the server's refill, 10 a second, not the declared 20


def test_headers_alone_pace_an_endpoint_with_no_declared_budget() -> None:
    clock = Clock()
    p = pacer(clock)
    p.observe_headers({"x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "0",
                       "x-ratelimit-reset-tokens": "1m0s"})
    assert p.active
    assert p.wait_s(50) == pytest.approx(0.5)  # 6000 a minute: 100 a second


def test_calls_in_flight_when_the_server_spoke_count_against_what_remains() -> None:
    clock = Clock()
    p = pacer(clock, rpm=6000)

    async def run() -> None:
        for _ in range(4):
            await p.admit(1)  # admitted, not yet answered: the server may not have counted them

    clock.run(run())
    p.observe_headers({"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "5",
                       "x-ratelimit-reset-requests": "1m"})
    assert p.snapshot()["available"]["requests"] == pytest.approx(1.0)


def test_without_a_limit_header_nothing_refills_until_the_reset() -> None:
    clock = Clock()
    p = pacer(clock)
    p.observe_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    assert p.wait_s(1) == pytest.approx(2.0)
    clock.now = 2.0
    assert p.wait_s(1) == 0.0  # the server said it is full again by now


def test_a_429_holds_every_caller_for_its_retry_after() -> None:
    clock = Clock()
    p = pacer(clock, rpm=6000)
    p.observe_headers({"retry-after-ms": "1500", "Retry-After": "2"}, status=429)
    assert p.rate_limited == 1
    assert p.wait_s(1) == pytest.approx(1.5)  # milliseconds preferred, as the openai client does
    p.observe_headers({"Retry-After": "3"}, status=429)
    assert p.wait_s(1) == pytest.approx(3.0)
    p.observe_headers({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, status=429)  # a date: left to openai
    assert p.rate_limited == 3 and p.wait_s(1) == pytest.approx(3.0)


def test_unreadable_headers_are_ignored() -> None:
    clock = Clock()
    p = pacer(clock, rpm=600)
    p.observe_headers({"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "soon"})
    p.observe_headers({"x-ratelimit-remaining-tokens": "inf"})
    assert p.wait_s(1) == 0.0


# --------------------------------------------------------------------------- shares


def test_a_share_is_the_workers_part_of_the_requests_partitions() -> None:
    assert budget_share(4, 8) == 0.5
    assert budget_share(0, 8) == 0.0
    assert budget_share(9, 8) == 1.0
    assert budget_share(3, 0) == 1.0  # partition count unknown: a lone process


def test_workers_with_shares_summing_to_one_stay_under_the_budget_together() -> None:
    """Three workers holding 3, 3 and 2 of 8 partitions, all busy for a minute: together at most the budget
    (plus the buckets' one-second bursts), each in proportion to its partitions."""
    clock = Clock()
    pacers = [pacer(clock, rpm=600, tpm=30_000, share=budget_share(n, 8)) for n in (3, 3, 2)]

    async def run() -> list[int]:
        counts = [0, 0, 0]

        async def worker(i: int) -> None:
            while clock.now < 60:
                await pacers[i].admit(60)  # 500 tokens a second bind before 10 requests do
                pacers[i].done(60)
                counts[i] += 1

        await asyncio.gather(*(worker(i) for i in range(3)))
        return counts

    counts = clock.run(run())
    total_tokens = 60 * sum(counts)
    assert total_tokens <= 30_000 + 30_000 / 60 * 1.0 + 3 * 60  # the budget, one second's burst, a call each
    assert total_tokens >= 0.97 * 30_000
    assert counts[0] == pytest.approx(counts[2] * 1.5, rel=0.05)


def test_a_new_share_applies_to_the_next_calls_and_share_zero_waits_for_one() -> None:
    clock = Clock()
    p = pacer(clock, rpm=600, share=0.0)

    async def run() -> bool:
        waiter = asyncio.ensure_future(p.admit(1))
        for _ in range(10):
            await clock.sleep(1.0)
        waited = not waiter.done()  # no partitions, no budget
        p.set_share(0.5)
        started = clock.now
        await waiter
        assert clock.now - started <= p.recheck_s  # it looked again within `recheck_s`
        return waited

    assert clock.run(run())
    assert p.share == 0.5
    assert p.wait_s(1) == pytest.approx(0.2)  # 5 a second now
    with pytest.raises(ValueError):
        p.set_share(-0.1)


def test_headers_are_shared_out_too() -> None:
    """Two workers reading the same `remaining` take half of it each, not all of it each."""
    clock = Clock()
    p = pacer(clock, share=0.5)
    p.observe_headers({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "10",
                       "x-ratelimit-reset-requests": "59s"})
    times = admit_times(p, clock, 6)
    assert times[:5] == [0.0] * 5
    assert times[5] == pytest.approx(0.2)  # half the server's 10 a second
    assert math.isclose(p.snapshot()["share"], 0.5)
