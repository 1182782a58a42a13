"""In-order release of out-of-order completions, per partition. Pure.

Many model calls run at once and finish in any order, but a Kafka offset may only be committed when
the message and every earlier one on its partition are fully handled. Items are registered in
consumption order and released, in that order, as soon as the whole prefix before them is done.

A rebalance can take a partition away while its items are still pending. `discard` forgets them and
starts a new generation for the partition: a completion that arrives later for the old generation
releases nothing, so it can never ack (and so commit) past work that the partition's next owner, or
this worker after the partition comes back, has not done yet. The dropped messages are replayed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class InOrderRelease(Generic[T]):
    def __init__(self) -> None:
        self._pending: dict[Hashable, OrderedDict[int, list]] = {}
        self._generation: dict[Hashable, int] = {}

    def add(self, partition: Hashable, offset: int, item: T) -> int:
        """Register a consumed item; offsets must increase per partition. Returns its generation."""
        queue = self._pending.setdefault(partition, OrderedDict())
        if queue and offset <= next(reversed(queue)):
            raise ValueError(f"offset {offset} on {partition} is not after {next(reversed(queue))}")
        queue[offset] = [item, False]
        return self._generation.get(partition, 0)

    def done(self, partition: Hashable, offset: int, generation: int) -> list[T]:
        """Mark one item done; return the items now releasable, oldest first.

        An item of a discarded generation releases nothing: its partition was taken away meanwhile.
        """
        if generation != self._generation.get(partition, 0):
            return []
        queue = self._pending[partition]
        queue[offset][1] = True
        released: list[T] = []
        while queue:
            first = next(iter(queue.values()))
            if not first[1]:
                break
            released.append(first[0])
            queue.popitem(last=False)
        return released

    def discard(self, partitions: Iterable[Hashable]) -> list[T]:
        """Forget the pending items of these partitions (revoked); returns them, oldest first."""
        dropped: list[T] = []
        for partition in partitions:
            self._generation[partition] = self._generation.get(partition, 0) + 1
            queue = self._pending.pop(partition, None)
            if queue:
                dropped.extend(entry[0] for entry in queue.values())
        return dropped

    def pending(self, partition: Hashable | None = None) -> int:
        if partition is not None:
            return len(self._pending.get(partition, ()))
        return sum(len(q) for q in self._pending.values())
