"""Stalled partitions: requests waiting on a partition this worker owns, and none delivered for a while. Pure.

A consumer can own a partition and never read it. Faust has had rebalance races that leave a partition
unfetched, or a rebalance waiting forever for an event nobody will ack; the work is not lost (its offsets
are not committed), but it waits until someone restarts the worker. Lag alone does not show this (a
busy partition has lag too); lag that does not move *and* no delivery for longer than any rebalance takes
does. The worker says so in its log and on /metrics (`llm_classify_partition_stalled`), naming the
partition and what the consumer thinks of it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)  # how the caller names a partition: Faust's TP, a (topic, partition) tuple...


@dataclass(frozen=True, slots=True)
class Stall(Generic[P]):
    partition: P
    lag: int
    idle_s: float  # seconds since the last delivery on the partition (or since it was first seen waiting)


class StallWatch(Generic[P]):
    """Which partitions have had requests waiting, and none delivered, for at least `after_s` seconds."""

    def __init__(self, after_s: float) -> None:
        if after_s <= 0:
            raise ValueError("after_s must be positive")
        self.after_s = after_s
        self._since: dict[P, tuple[int, float]] = {}  # partition -> (delivered count, idle since)
        self._reported: dict[P, float] = {}

    def observe(self, now: float, lag: Mapping[P, int], delivered: Mapping[P, int]) -> list[Stall[P]]:
        """One sample. Returns the stalls to report now: each stall once, then again every `after_s`.

        `lag`: requests waiting per owned partition; `delivered`: a count per partition that only grows.
        A partition no longer in `lag` (revoked) or with nothing waiting is forgotten.
        """
        stalls: list[Stall[P]] = []
        for partition in list(self._since):
            if lag.get(partition, 0) <= 0:
                del self._since[partition]
                self._reported.pop(partition, None)
        for partition, waiting in lag.items():
            if waiting <= 0:
                continue
            count = delivered.get(partition, 0)
            seen = self._since.get(partition)
            if seen is None or seen[0] != count:  # first seen waiting, or delivered since: not idle
                self._since[partition] = (count, now)
                self._reported.pop(partition, None)
                continue
            idle = now - seen[1]
            last = self._reported.get(partition)
            if idle >= self.after_s and (last is None or now - last >= self.after_s):
                self._reported[partition] = now
                stalls.append(Stall(partition, int(waiting), idle))
        return stalls

    def stalled(self, now: float) -> list[P]:
        """Partitions idle with work waiting for at least `after_s`, as of the last `observe`."""
        return [p for p, (_, since) in self._since.items() if now - since >= self.after_s]
