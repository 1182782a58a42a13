"""In-order release of out-of-order completions, per partition. Pure.

Many model calls run at once and finish in any order, but a Kafka offset may only be committed when
the message and every earlier one on its partition are fully handled. Items are registered in
consumption order and released, in that order, as soon as the whole prefix before them is done.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class InOrderRelease(Generic[T]):
    def __init__(self) -> None:
        self._pending: dict[Hashable, OrderedDict[int, list]] = {}

    def add(self, partition: Hashable, offset: int, item: T) -> None:
        """Register a consumed item; offsets must arrive in increasing order per partition."""
        queue = self._pending.setdefault(partition, OrderedDict())
        if queue and offset <= next(reversed(queue)):
            raise ValueError(f"offset {offset} on {partition} is not after {next(reversed(queue))}")
        queue[offset] = [item, False]

    def done(self, partition: Hashable, offset: int) -> list[T]:
        """Mark one item done; return the items now releasable, oldest first."""
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

    def pending(self, partition: Hashable | None = None) -> int:
        if partition is not None:
            return len(self._pending.get(partition, ()))
        return sum(len(q) for q in self._pending.values())
