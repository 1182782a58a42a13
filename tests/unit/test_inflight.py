"""streams.classify.inflight.InOrderRelease: out-of-order completions, in-order release per partition."""

from __future__ import annotations

import random

import pytest

from streams.classify.inflight import InOrderRelease, Ticket


def test_contiguous_prefix_released_in_order() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    t = [r.add("A", f"item{off}") for off in range(5)]
    assert r.pending("A") == 5
    assert r.done(t[2]) == []
    assert r.pending("A") == 5
    assert r.done(t[0]) == ["item0"]
    assert r.pending("A") == 4
    assert r.done(t[1]) == ["item1", "item2"]
    assert r.pending("A") == 2
    assert r.done(t[4]) == []
    assert r.done(t[3]) == ["item3", "item4"]
    assert r.pending("A") == 0
    assert r.pending() == 0


def test_a_redelivered_offset_is_released_after_everything_delivered_before_it() -> None:
    """After a rebalance Faust can deliver an offset again, or a lower one (it seeks back while records
    from another position are in flight). This once crashed the agent (a non-increasing offset raised),
    and the crashed instance's events then stayed unacked and blocked the next rebalance for good."""
    r: InOrderRelease[str] = InOrderRelease()
    delivered = [381, 382, 405, 405, 383, 0]  # offsets as delivered: a duplicate, then a rewind
    t = [r.add("A", f"{off}#{i}") for i, off in enumerate(delivered)]
    assert r.pending("A") == 6
    assert r.done(t[3]) == []  # the second 405 finishes first: nothing delivered before it is done
    assert r.done(t[5]) == []
    assert r.done(t[0]) == ["381#0"]
    assert r.done(t[2]) == []
    assert r.done(t[1]) == ["382#1", "405#2", "405#3"]
    assert r.done(t[4]) == ["383#4", "0#5"]
    assert r.pending() == 0


def test_partitions_are_independent() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    a0, a1 = r.add("A", "a0"), r.add("A", "a1")
    b0, b1 = r.add("B", "b0"), r.add("B", "b1")
    assert r.pending() == 4
    assert r.done(b1) == []
    assert r.done(a0) == ["a0"]
    assert r.pending("A") == 1 and r.pending("B") == 2
    assert r.done(b0) == ["b0", "b1"]
    assert r.pending("B") == 0
    assert r.done(a1) == ["a1"]
    assert r.pending() == 0


def test_pending_for_unknown_partition_is_zero() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    assert r.pending("nope") == 0
    assert r.pending() == 0
    r.add(("topic", 3), "x")
    assert r.pending(("topic", 3)) == 1
    assert r.pending() == 1


def test_done_twice_before_release_is_harmless() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    a0, a1 = r.add("A", "a0"), r.add("A", "a1")
    assert r.done(a1) == []
    assert r.done(a1) == []
    assert r.done(a0) == ["a0", "a1"]


def test_done_for_an_unknown_ticket_raises_keyerror() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    a0 = r.add("A", "a0")
    with pytest.raises(KeyError):
        r.done(Ticket("A", 0, a0.seq + 1))
    with pytest.raises(KeyError):
        r.done(Ticket("B", 0, a0.seq))
    assert r.pending("A") == 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_randomized_release_order(seed: int) -> None:
    rng = random.Random(seed)
    partitions = ["p0", "p1", "p2"]
    r: InOrderRelease[tuple[str, int]] = InOrderRelease()
    next_offset = {p: rng.randrange(0, 1000) for p in partitions}
    registered: dict[str, list[int]] = {p: [] for p in partitions}
    tickets: dict[tuple[str, int], Ticket] = {}
    for _ in range(1000):
        p = rng.choice(partitions)
        off = next_offset[p]
        next_offset[p] += rng.randint(1, 3)  # offsets increase, sometimes with gaps
        tickets[(p, off)] = r.add(p, (p, off))
        registered[p].append(off)
    assert r.pending() == 1000

    order = [(p, off) for p in partitions for off in registered[p]]
    rng.shuffle(order)
    done: set[tuple[str, int]] = set()
    released: dict[str, list[int]] = {p: [] for p in partitions}
    released_total = 0
    for p, off in order:
        done.add((p, off))
        out = r.done(tickets[(p, off)])
        for item in out:
            ip, ioff = item
            assert ip == p  # only the completed partition can release
            # Nothing is released before every earlier item on its partition is done.
            idx = registered[p].index(ioff)
            assert all((p, earlier) in done for earlier in registered[p][: idx + 1])
            released[p].append(ioff)
        released_total += len(out)
        assert r.pending() == 1000 - released_total
        # Released items are exactly the longest done prefix of the partition.
        prefix = 0
        for o in registered[p]:
            if (p, o) not in done:
                break
            prefix += 1
        assert released[p] == registered[p][:prefix]

    for p in partitions:
        assert released[p] == registered[p]  # every item once, in offset order
    assert released_total == 1000
    assert r.pending() == 0


def test_discard_drops_pending_items_and_ignores_their_late_completions() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    old = {off: r.add("A", f"old{off}") for off in (10, 11, 12)}
    b0 = r.add("B", "b0")
    assert r.done(old[11]) == []
    assert r.discard(["A"]) == ["old10", "old11", "old12"]
    assert r.pending("A") == 0 and r.pending("B") == 1
    # The partition comes back and its messages are re-delivered from the committed offset.
    new = {off: r.add("A", f"new{off}") for off in (10, 11, 12)}
    assert {t.generation for t in new.values()} == {old[10].generation + 1}
    # A completion of the revoked generation must not release (ack) anything of the new one.
    assert r.done(old[10]) == []
    assert r.done(old[12]) == []
    assert r.pending("A") == 3
    assert r.done(new[11]) == []
    assert r.done(new[10]) == ["new10", "new11"]
    assert r.done(new[12]) == ["new12"]
    # Other partitions keep their generation.
    assert r.done(b0) == ["b0"]


def test_discard_of_an_unknown_partition_still_fences_it() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    assert r.discard(["never-seen"]) == []
    x = r.add("never-seen", "x")
    assert x.generation == 1
    assert r.done(Ticket("never-seen", 0, x.seq)) == []
    assert r.done(x) == ["x"]
