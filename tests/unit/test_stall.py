"""StallWatch: requests waiting on an owned partition and none delivered for longer than a rebalance takes."""

from __future__ import annotations

import pytest

from streams.classify.stall import Stall, StallWatch

P, Q = ("reqs", 0), ("reqs", 1)


def test_a_partition_with_work_waiting_and_no_delivery_is_reported_once_then_every_period() -> None:
    w: StallWatch[tuple[str, int]] = StallWatch(after_s=30)
    assert w.observe(0, {P: 10}, {P: 5}) == []
    assert w.observe(29, {P: 10}, {P: 5}) == []
    assert w.observe(30, {P: 10}, {P: 5}) == [Stall(P, 10, 30)]
    assert w.stalled(30) == [P]
    assert w.observe(45, {P: 10}, {P: 5}) == [], "not again before another period"
    assert w.observe(60, {P: 10}, {P: 5}) == [Stall(P, 10, 60)]


def test_a_delivery_or_an_empty_partition_ends_the_stall() -> None:
    w: StallWatch[tuple[str, int]] = StallWatch(after_s=30)
    w.observe(0, {P: 10, Q: 3}, {P: 5, Q: 1})
    assert {s.partition for s in w.observe(30, {P: 10, Q: 3}, {P: 5, Q: 1})} == {P, Q}
    assert w.observe(31, {P: 9, Q: 0}, {P: 6, Q: 1}) == []
    assert w.stalled(31) == []
    assert w.observe(60, {P: 9}, {P: 6}) == [], "idle counts from the last delivery, not the first sample"
    assert w.observe(61, {P: 9}, {P: 6}) == [Stall(P, 9, 30)]


def test_busy_partitions_and_revoked_ones_are_never_stalled() -> None:
    w: StallWatch[tuple[str, int]] = StallWatch(after_s=30)
    for t in range(0, 300, 5):  # lag never drains, but deliveries keep coming: busy, not stalled
        assert w.observe(t, {P: 100}, {P: t}) == []
    w.observe(300, {Q: 4}, {})
    assert w.observe(400, {}, {}) == [] and w.stalled(400) == [], "a revoked partition is forgotten"
    assert w.observe(401, {Q: 4}, {}) == [], "and starts afresh if it comes back"


def test_after_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StallWatch(after_s=0)
