"""streams.classify.inflight.InOrderRelease: out-of-order completions, in-order release per partition."""

from __future__ import annotations

import random

import pytest

from streams.classify.inflight import InOrderRelease


def test_contiguous_prefix_released_in_order() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    for off in range(5):
        r.add("A", off, f"item{off}")
    assert r.pending("A") == 5
    assert r.done("A", 2, 0) == []
    assert r.pending("A") == 5
    assert r.done("A", 0, 0) == ["item0"]
    assert r.pending("A") == 4
    assert r.done("A", 1, 0) == ["item1", "item2"]
    assert r.pending("A") == 2
    assert r.done("A", 4, 0) == []
    assert r.done("A", 3, 0) == ["item3", "item4"]
    assert r.pending("A") == 0
    assert r.pending() == 0


def test_gapped_offsets() -> None:
    r: InOrderRelease[int] = InOrderRelease()
    for off in (10, 15, 100):
        r.add(0, off, off)
    assert r.done(0, 100, 0) == []
    assert r.done(0, 15, 0) == []
    assert r.done(0, 10, 0) == [10, 15, 100]


def test_partitions_are_independent() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    r.add("A", 0, "a0")
    r.add("A", 1, "a1")
    r.add("B", 0, "b0")
    r.add("B", 1, "b1")
    assert r.pending() == 4
    assert r.done("B", 1, 0) == []
    assert r.done("A", 0, 0) == ["a0"]
    assert r.pending("A") == 1 and r.pending("B") == 2
    assert r.done("B", 0, 0) == ["b0", "b1"]
    assert r.pending("B") == 0
    assert r.done("A", 1, 0) == ["a1"]
    assert r.pending() == 0


def test_pending_for_unknown_partition_is_zero() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    assert r.pending("nope") == 0
    assert r.pending() == 0
    r.add(("topic", 3), 7, "x")
    assert r.pending(("topic", 3)) == 1
    assert r.pending() == 1


@pytest.mark.parametrize("bad_offset", [4, 3, 0, -1])
def test_non_increasing_offset_raises(bad_offset: int) -> None:
    r: InOrderRelease[str] = InOrderRelease()
    r.add("A", 2, "x")
    r.add("A", 4, "y")
    with pytest.raises(ValueError, match=f"offset {bad_offset}"):
        r.add("A", bad_offset, "z")
    assert r.pending("A") == 2
    # Another partition is unaffected.
    r.add("B", 0, "b")
    assert r.pending("B") == 1


def test_done_twice_before_release_is_harmless() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    r.add("A", 0, "a0")
    r.add("A", 1, "a1")
    assert r.done("A", 1, 0) == []
    assert r.done("A", 1, 0) == []
    assert r.done("A", 0, 0) == ["a0", "a1"]


def test_done_for_unknown_offset_raises_keyerror() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    r.add("A", 0, "a0")
    with pytest.raises(KeyError):
        r.done("A", 1, 0)
    with pytest.raises(KeyError):
        r.done("B", 0, 0)
    assert r.pending("A") == 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_randomized_release_order(seed: int) -> None:
    rng = random.Random(seed)
    partitions = ["p0", "p1", "p2"]
    r: InOrderRelease[tuple[str, int]] = InOrderRelease()
    next_offset = {p: rng.randrange(0, 1000) for p in partitions}
    registered: dict[str, list[int]] = {p: [] for p in partitions}
    for _ in range(1000):
        p = rng.choice(partitions)
        off = next_offset[p]
        next_offset[p] += rng.randint(1, 3)  # offsets increase, sometimes with gaps
        r.add(p, off, (p, off))
        registered[p].append(off)
    assert r.pending() == 1000

    order = [(p, off) for p in partitions for off in registered[p]]
    rng.shuffle(order)
    done: set[tuple[str, int]] = set()
    released: dict[str, list[int]] = {p: [] for p in partitions}
    released_total = 0
    for p, off in order:
        done.add((p, off))
        out = r.done(p, off, 0)
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
    gen = {off: r.add("A", off, f"old{off}") for off in (10, 11, 12)}
    r.add("B", 0, "b0")
    assert r.done("A", 11, gen[11]) == []
    assert r.discard(["A"]) == ["old10", "old11", "old12"]
    assert r.pending("A") == 0 and r.pending("B") == 1
    # The partition comes back and its messages are re-delivered from the committed offset.
    new = {off: r.add("A", off, f"new{off}") for off in (10, 11, 12)}
    assert set(new.values()) == {gen[10] + 1}
    # A completion of the revoked generation must not release (ack) anything of the new one.
    assert r.done("A", 10, gen[10]) == []
    assert r.done("A", 12, gen[12]) == []
    assert r.pending("A") == 3
    assert r.done("A", 11, new[11]) == []
    assert r.done("A", 10, new[10]) == ["new10", "new11"]
    assert r.done("A", 12, new[12]) == ["new12"]
    # Other partitions keep their generation.
    assert r.done("B", 0, 0) == ["b0"]


def test_discard_of_an_unknown_partition_still_fences_it() -> None:
    r: InOrderRelease[str] = InOrderRelease()
    assert r.discard(["never-seen"]) == []
    assert r.add("never-seen", 5, "x") == 1
    assert r.done("never-seen", 5, 0) == []
    assert r.done("never-seen", 5, 1) == ["x"]
