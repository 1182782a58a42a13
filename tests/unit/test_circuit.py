"""The circuit breaker's state machine, driven by a hand-moved clock."""

from __future__ import annotations

import json

import pytest

from streams.classify.circuit import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def breaker(clock: Clock, **kw: float) -> CircuitBreaker:
    args: dict = {"failure_threshold": 3, "window": 3, "open_for_s": 10.0, "half_open_max_calls": 1,
                  "max_open_for_s": 35.0}
    args.update(kw)
    return CircuitBreaker(**args, clock=clock)


def trip(b: CircuitBreaker) -> None:
    for _ in range(b.failure_threshold):
        b.record_failure()


def test_closed_to_open_to_half_open_to_closed() -> None:
    clock = Clock()
    b = breaker(clock)
    assert b.state == "closed" and b.allow()
    b.record_failure()
    b.record_failure()
    assert b.state == "closed" and b.allow()  # two of three: still closed
    b.record_failure()
    assert b.state == "open"
    assert not b.allow() and not b.allow()  # fails fast, no call reaches the endpoint
    assert b.retry_in() == pytest.approx(10.0)
    clock.advance(9.9)
    assert b.state == "open" and not b.allow()
    clock.advance(0.1)
    assert b.state == "half_open" and b.retry_in() == 0.0
    assert b.allow()  # the probe
    b.record_success()
    assert b.state == "closed"
    assert all(b.allow() for _ in range(10))
    snap = b.snapshot()
    assert snap["times_opened"] == 1 and snap["rejected"] == 3 and snap["probes"] == 1


def test_a_success_breaks_a_run_of_consecutive_failures() -> None:
    b = breaker(Clock())  # window == threshold: N consecutive failures
    for _ in range(10):
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.state == "closed"
    b.record_failure()
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open"  # three failures in a row at last


def test_rate_in_window_opens_on_interleaved_failures() -> None:
    b = breaker(Clock(), failure_threshold=3, window=5)
    for outcome in (True, False, True, False):
        b.record_failure() if outcome else b.record_success()
    assert b.state == "closed"  # 2 failures in the last 4
    b.record_failure()
    assert b.state == "open"  # 3 failures in the last 5, never two in a row


def test_old_failures_slide_out_of_the_window() -> None:
    b = breaker(Clock(), failure_threshold=3, window=5)
    b.record_failure()
    b.record_failure()
    for _ in range(5):
        b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state == "closed"  # only 2 failures left in the last 5
    assert b.snapshot()["failures_in_window"] == 2


def test_half_open_failure_reopens_for_longer_up_to_the_cap() -> None:
    clock = Clock()
    b = breaker(clock)
    trip(b)
    periods = []
    for _ in range(4):
        clock.advance(b.retry_in())
        assert b.state == "half_open" and b.allow()
        b.record_failure()
        assert b.state == "open"
        periods.append(b.retry_in())
    assert periods == [20.0, 35.0, 35.0, 35.0]  # doubled, then capped at max_open_for_s
    clock.advance(35.0)
    assert b.allow()
    b.record_success()
    assert b.state == "closed"
    trip(b)
    assert b.retry_in() == 10.0  # back to the base period once it has closed


def test_half_open_lets_only_the_allowed_number_of_probes_through() -> None:
    clock = Clock()
    b = breaker(clock, half_open_max_calls=2)
    trip(b)
    clock.advance(10.0)
    assert [b.allow() for _ in range(4)] == [True, True, False, False]
    assert b.state == "half_open" and b.snapshot()["probes_in_flight"] == 2
    b.release()  # one probe was cancelled: its slot is free again
    assert b.allow() and not b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow()


def test_outcomes_of_calls_admitted_before_it_opened_are_ignored_while_open() -> None:
    clock = Clock()
    b = breaker(clock)
    trip(b)
    b.record_success()
    b.record_failure()
    assert b.state == "open" and b.retry_in() == 10.0  # neither closed it nor extended it
    clock.advance(10.0)
    assert b.state == "half_open"


def test_snapshot_is_json() -> None:
    clock = Clock()
    b = breaker(clock)
    trip(b)
    snap = json.loads(json.dumps(b.snapshot()))
    assert snap["state"] == "open" and snap["retry_in_s"] == 10.0 and snap["failures"] == 3


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="window"):
        CircuitBreaker(failure_threshold=5, window=3)
    with pytest.raises(ValueError, match="half_open_max_calls"):
        CircuitBreaker(half_open_max_calls=0)
    with pytest.raises(ValueError, match="open_for_s"):
        CircuitBreaker(open_for_s=10, max_open_for_s=5)
