"""StallWatch: a partition with requests waiting that stops moving while the worker could take more work."""

from __future__ import annotations

import pytest

from streams.classify.stall import AgentProgress, Stall, StallWatch

P, Q = ("reqs", 0), ("reqs", 1)


def test_a_still_partition_of_an_idle_worker_is_reported_once_then_every_period() -> None:
    w: StallWatch[tuple[str, int]] = StallWatch(after_s=30)
    assert w.observe(0, {P: 10}, {P: 5}, idle_s=0) == []
    assert w.observe(29, {P: 10}, {P: 5}, idle_s=29) == []
    assert w.observe(30, {P: 10}, {P: 5}, idle_s=30) == [Stall(P, 10, 30)]
    assert w.stalled() == [P]
    assert w.observe(45, {P: 10}, {P: 5}, idle_s=45) == [], "not again before another period"
    assert w.stalled() == [P], "still stalled in between"
    assert w.observe(60, {P: 10}, {P: 5}, idle_s=60) == [Stall(P, 10, 60)]


def test_a_busy_worker_working_through_a_backlog_reports_no_stall() -> None:
    """Partitions waiting their turn for minutes while the window is full: never a stall."""
    w: StallWatch[tuple[str, int]] = StallWatch(after_s=30)
    for t in range(0, 600, 5):  # Q moves, P waits; the agent idles 1 s in each 5 s
        assert w.observe(t, {P: 1000, Q: 1000}, {P: 0, Q: t * 10}, idle_s=t / 5) == []
    assert w.stalled() == []
    # The backlog on Q drains; P is still not read and the agent now sits idle: a stall within after_s.
    idle = 600 / 5
    first = None
    for t in range(600, 700, 5):
        idle += 5
        stalls = w.observe(t, {P: 1000}, {P: 0}, idle_s=idle)
        assert all(s.partition == P for s in stalls)
        first = t if first is None and stalls else first
    assert first is not None and first - 600 <= 30, f"reported {first}: more than after_s after the drain"


def test_progress_or_an_empty_partition_ends_the_stall() -> None:
    w: StallWatch[tuple[str, int]] = StallWatch(after_s=30)
    w.observe(0, {P: 10, Q: 3}, {P: 5, Q: 1}, idle_s=0)
    assert {s.partition for s in w.observe(30, {P: 10, Q: 3}, {P: 5, Q: 1}, idle_s=30)} == {P, Q}
    assert w.observe(31, {P: 9, Q: 0}, {P: 6, Q: 1}, idle_s=31) == []
    assert w.stalled() == []
    assert w.observe(60, {P: 9}, {P: 6}, idle_s=60) == [], "still-time counts from the last progress"
    assert w.observe(61, {P: 9}, {P: 6}, idle_s=61) == [Stall(P, 9, 30)]


def test_revoked_partitions_are_forgotten() -> None:
    w: StallWatch[tuple[str, int]] = StallWatch(after_s=30)
    w.observe(300, {Q: 4}, {}, idle_s=0)
    assert w.observe(400, {}, {}, idle_s=100) == [] and w.stalled() == []
    assert w.observe(401, {Q: 4}, {}, idle_s=101) == [], "and starts afresh if it comes back"


def test_agent_progress_counts_only_time_spent_waiting_for_input() -> None:
    p = AgentProgress()
    p.waiting(now=0)
    p.got_event(now=2)  # waited 2 s
    assert p.idle_s(now=10) == 2, "busy between events: no idle time"
    p.waiting(now=10)
    assert p.idle_s(now=13) == 5, "the wait under way counts"
    p.got_event(now=14)
    p.got_event(now=20)  # an event with no wait before it
    assert p.idle_s(now=30) == 6


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        StallWatch(after_s=0)
    with pytest.raises(ValueError):
        StallWatch(after_s=1, idle_share=2)
