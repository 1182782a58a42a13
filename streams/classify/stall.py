"""Stalled partitions: requests waiting on a partition this worker owns that stops moving. Pure.

A consumer can own a partition and never read it (Faust has had rebalance races that leave a partition
unfetched), or one request can hold a partition's commits back forever (a call that never returns).
The work is not lost (its offsets are not committed), but it waits until someone acts.

Lag alone does not show this: a busy partition has lag too. Nor does a partition that moves no
offset for a while: under a deep backlog a healthy worker keeps its in-flight window full with some
partitions' requests while others wait their turn, for minutes (bench/README.md). What tells the two
apart is whether the worker could have taken more work. So a partition is *stalled* when requests wait
on it, its acknowledged count has not grown for `after_s`, and the classify agent sat idle (waiting for
input with nothing to read) for at least `idle_share` of the last `after_s`. A worker working through a backlog
is never idle, so it never reports a stall; once the backlog drains, a partition left behind is
reported within `after_s` of its last progress.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)  # how the caller names a partition: Faust's TP, a (topic, partition) tuple...


@dataclass
class AgentProgress:
    """What the classify agent tells the stall watch: acks per partition, and time spent waiting for input."""

    #: Requests acknowledged (done, in order) per (topic, partition); only grows.
    acked: Counter[tuple[str, int]] = field(default_factory=Counter)
    _idle_s: float = 0.0
    _waiting_since: float | None = None

    def waiting(self, now: float | None = None) -> None:
        """The agent asks its stream for the next event."""
        self._waiting_since = time.monotonic() if now is None else now

    def got_event(self, now: float | None = None) -> None:
        """The next event arrived."""
        if self._waiting_since is not None:
            self._idle_s += (time.monotonic() if now is None else now) - self._waiting_since
            self._waiting_since = None

    def idle_s(self, now: float | None = None) -> float:
        """Seconds spent waiting for input so far, the wait under way included."""
        if self._waiting_since is None:
            return self._idle_s
        return self._idle_s + max((time.monotonic() if now is None else now) - self._waiting_since, 0.0)


@dataclass(frozen=True, slots=True)
class Stall(Generic[P]):
    partition: P
    lag: int
    idle_s: float  # seconds since the partition last moved (or since it was first seen waiting)


class StallWatch(Generic[P]):
    """Which partitions have had requests waiting, no progress and an idle agent for at least `after_s`.

    Parameters
    ----------
    after_s : float
        How long a partition may stand still with requests waiting (longer than any healthy rebalance).
    idle_share : float, default=0.5
        The share of that time the agent must have sat waiting for input: below it, the worker is busy
        with other partitions (a backlog), which is not a stall.

    Examples
    --------
    >>> w = StallWatch(after_s=30)
    >>> w.observe(0, {"p": 5}, {"p": 1}, idle_s=0.0)
    []
    >>> w.observe(30, {"p": 5}, {"p": 1}, idle_s=2.0)  # busy the whole time: a backlog
    []
    >>> w.observe(60, {"p": 5}, {"p": 1}, idle_s=12.0)  # idle 10 of the last 30 s: still busy
    []
    >>> w.observe(65, {"p": 5}, {"p": 1}, idle_s=20.0)  # idle 18 of the last 35 s (samples at 30, 65)
    [Stall(partition='p', lag=5, idle_s=65)]
    """

    def __init__(self, after_s: float, idle_share: float = 0.5) -> None:
        if after_s <= 0:
            raise ValueError("after_s must be positive")
        if not 0 <= idle_share <= 1:
            raise ValueError("idle_share must be in [0, 1]")
        self.after_s, self.idle_share = after_s, idle_share
        self._since: dict[P, tuple[int, float]] = {}  # partition -> (acked count, still since)
        self._idle: deque[tuple[float, float]] = deque()  # (time, cumulative idle s) samples
        self._reported: dict[P, float] = {}
        self._stalled: list[P] = []

    def observe(self, now: float, lag: Mapping[P, int], acked: Mapping[P, int], idle_s: float) -> list[Stall[P]]:
        """One sample. Returns the stalls to report now: each stall once, then again every `after_s`.

        `lag`: requests waiting per owned partition; `acked`: a count per partition that only grows;
        `idle_s`: the agent's cumulative seconds waiting for input. A partition no longer in `lag`
        (revoked) or with nothing waiting is forgotten.
        """
        stalls: list[Stall[P]] = []
        self._stalled = []
        busy = not self._idle_enough(now, idle_s)
        for partition in list(self._since):
            if lag.get(partition, 0) <= 0:
                del self._since[partition]
                self._reported.pop(partition, None)
        for partition, waiting in lag.items():
            if waiting <= 0:
                continue
            count = acked.get(partition, 0)
            seen = self._since.get(partition)
            if seen is None or seen[0] != count:  # first seen waiting, or moved since: not still
                self._since[partition] = (count, now)
                self._reported.pop(partition, None)
                continue
            still = now - seen[1]
            if still < self.after_s or busy:
                continue
            self._stalled.append(partition)
            last = self._reported.get(partition)
            if last is None or now - last >= self.after_s:
                self._reported[partition] = now
                stalls.append(Stall(partition, int(waiting), still))
        return stalls

    def _idle_enough(self, now: float, idle_s: float) -> bool:
        """Whether the agent idled `idle_share` of the time since the last sample at least `after_s` old."""
        self._idle.append((now, idle_s))
        while len(self._idle) > 1 and now - self._idle[1][0] >= self.after_s:
            self._idle.popleft()  # keep one sample at least after_s old, as the window's start
        start, idle_then = self._idle[0]
        span = now - start
        return span >= self.after_s and idle_s - idle_then >= self.idle_share * span

    def stalled(self) -> list[P]:
        """The partitions stalled as of the last `observe`."""
        return list(self._stalled)
