"""In-order release of out-of-order completions, per partition. Pure.

Many model calls run at once and finish in any order, but a Kafka offset may only be committed when
the message and every earlier one on its partition are fully handled. Items are registered in the order
the consumer delivers them and released, in that order, as soon as every item delivered before them on
their partition is done.

Delivery order, not offset order: after a rebalance Faust can deliver an offset of a partition again,
or an offset below one already delivered (it seeks the partition back to its committed offset while
records fetched from another position are still on their way). Such a record is handled again (outputs
are idempotent by request id) and released after everything delivered before it. Acks therefore still
reach Faust in delivery order, and when any record is acked, every record delivered before it on its
partition is done: no committed offset can pass a message without output.

A rebalance can take a partition away while its items are still pending. `discard` forgets them and
starts a new generation for the partition: a completion that arrives later for the old generation
releases nothing, so it can never ack (and so commit) past work that the partition's next owner, or
this worker after the partition comes back, has not done yet. The dropped messages are replayed.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ticket:
    """What `add` hands back for one registered item; `done` takes it."""

    partition: Hashable
    generation: int
    seq: int  # delivery order, unique within one InOrderRelease


class InOrderRelease(Generic[T]):
    def __init__(self) -> None:
        self._pending: dict[Hashable, OrderedDict[int, list]] = {}  # per partition: seq -> [item, done]
        self._generation: dict[Hashable, int] = {}
        self._seq = itertools.count()

    def add(self, partition: Hashable, item: T) -> Ticket:
        """Register an item as the consumer delivered it (after every item added before it)."""
        seq = next(self._seq)
        self._pending.setdefault(partition, OrderedDict())[seq] = [item, False]
        return Ticket(partition, self._generation.get(partition, 0), seq)

    def done(self, ticket: Ticket) -> list[T]:
        """Mark one item done; return the items now releasable, in delivery order.

        An item of a discarded generation releases nothing: its partition was taken away meanwhile.
        """
        if ticket.generation != self._generation.get(ticket.partition, 0):
            return []
        queue = self._pending[ticket.partition]
        queue[ticket.seq][1] = True
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

    def partitions(self) -> list[Hashable]:
        """The partitions with pending items."""
        return [p for p, queue in self._pending.items() if queue]

    def pending(self, partition: Hashable | None = None) -> int:
        if partition is not None:
            return len(self._pending.get(partition, ()))
        return sum(len(q) for q in self._pending.values())
