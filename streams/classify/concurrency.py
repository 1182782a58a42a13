"""How many calls an endpoint should have in flight, found from what it answers. No Kafka, no HTTP.

A fixed in-flight number is a guess: too low wastes a fast server, too high queues inside the server, so
every item waits and calls time out, and against a hosted API it turns into a storm of 429s. A model
server has a capacity (decoding slots, a provider's concurrency cap); past it, latency grows with the
queue while throughput stays flat. A batching server (vLLM, llama.cpp) also answers each call more slowly
as its batch grows, yet more calls per second in total, up to its capacity. So `AdaptiveLimit` judges a
limit by what it buys: with `n` calls in flight and a median round trip `rtt`, the server answers
`n / rtt` calls per second (Little's law), measured per window of answers.

- The limit starts at the floor and doubles per window (slow start) while the extra calls keep paying.
- More calls must buy at least `gain` of their proportional share of answers per second over the best
  level measured below; if they do not (twice in a row: one window slowed by the worker itself, an
  event-loop pause or a busy core, is not the server's doing), the limit goes back to that level. It grows
  one step when two windows in a row paid, and past the limit it was last cut from only every
  `probe_up_every` windows (as CUBIC slows near its last loss): each step past the capacity queues calls.
- Far fewer answers than a lower level gave (under 80%): the server lost capacity; the limit goes straight
  to what it now serves without a queue, `n * rtt0 / rtt` by the unloaded latency `rtt0`, at most halving.
- With no lower level measured yet, the queue estimate of TCP Vegas decides: `n * (1 - rtt0 / rtt)` calls
  are waiting rather than being served; under `alpha` of the limit it grows, over `beta` it falls.
- An overload answer cuts the limit by `backoff`, at most once per window: 429 (too many requests), 503
  (unavailable: the server sheds load), 504 and 408 (no answer in time) and a client-side timeout. Every
  other failure is a fault: 500, 502 and other 5xx, other 4xx, a refused or reset connection, a cancelled
  call. A fault says nothing of capacity (a bug, a bad gateway or a crashing replica answers it at any load),
  so it is not observed at all: it neither cuts the limit nor feeds the latency and rate samples (a 500
  answered at once would pull the median round trip down). Counted as overload, 30% random 500s held the
  limit at its floor against 32 free slots (`tests/unit/test_concurrency.py`).
- `rtt` is the median of a window of answers (at least 10, or the limit), and `rtt0` the lowest window
  median remembered; every `probe_every` windows one window runs at half the limit, which re-measures both.

The limit stays within [`floor`, `ceiling`]; `floor == ceiling` is a fixed limit.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import deque

OVERLOAD = "overload"  # a call the server refused or could not serve in time: back off
FAULT = "fault"  # a call that failed for a reason that says nothing of capacity: not observed

#: HTTP statuses by which a server says it is full (429, 503) or could not answer in time (504, 408).
OVERLOAD_STATUSES = frozenset({408, 429, 503, 504})


def status_outcome(status: int) -> str | None:
    """What an HTTP answer tells the limit: None for a success (its latency counts), `OVERLOAD` for a status in
    `OVERLOAD_STATUSES`, `FAULT` for any other error (500, 502, other 5xx and 4xx).

    >>> [status_outcome(s) for s in (200, 429, 503, 500, 502, 400)]
    [None, 'overload', 'overload', 'fault', 'fault', 'fault']
    """
    if status < 400:
        return None
    return OVERLOAD if status in OVERLOAD_STATUSES else FAULT


class AdaptiveLimit:
    """An in-flight limit for one endpoint, adapted from latency and overload answers.

    Parameters
    ----------
    floor, ceiling
        Bounds of the limit; the ceiling is the worker's configured maximum (`STREAMS_MAX_IN_FLIGHT`).
    initial
        Where the limit starts, clipped to the bounds. It doubles every window until latency first shows a
        queue (TCP's slow start), so starting low costs a few windows; starting high against a slow server
        queues the first calls past their timeout before the first window closes.
    alpha, beta
        Shares of the limit: while fewer than `alpha * limit` calls (at least half a call) are estimated
        to be queued at the server the limit grows; past `beta * limit` (at least one call) it falls to
        the estimated capacity. With 0.05 and 0.15, latency at equilibrium is 5-18% above the server's
        unloaded latency.
    backoff
        The factor applied to the limit on an overload answer (429, 503, 504, 408, a timeout).
    probe_every
        Every that many windows, one window runs at half the limit to re-measure the unloaded latency and
        the rate at a lower level (as BBR's ProbeRTT does).
    gain
        The share of their proportional gain in answers per second that extra calls must buy to be kept.

    Examples
    --------
    A server with 8 slots and 100 ms service time: latency grows with the queue beyond 8 calls.

    >>> limit = AdaptiveLimit(floor=1, ceiling=64, initial=4)
    >>> for _ in range(300):
    ...     n, epoch = limit.allowed, limit.epoch
    ...     for _ in range(n):
    ...         limit.observe(0.1 * max(1.0, n / 8), in_flight=n, epoch=epoch)
    >>> 8 <= limit.limit <= 10
    True
    """

    def __init__(self, floor: int = 1, ceiling: int = 64, initial: int = 1, *, alpha: float = 0.05,
                 beta: float = 0.15, backoff: float = 0.7, probe_every: int = 100, gain: float = 0.3) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError(f"need 1 <= floor <= ceiling, got floor={floor}, ceiling={ceiling}")
        if not 0 < alpha < beta:
            raise ValueError(f"need 0 < alpha < beta, got alpha={alpha}, beta={beta}")
        if not 0 < backoff < 1:
            raise ValueError(f"backoff must be in (0, 1), got {backoff}")
        self.floor, self.ceiling = floor, ceiling
        self.alpha, self.beta, self.backoff = alpha, beta, backoff
        self.probe_every = probe_every
        self.limit = float(min(max(initial, floor), ceiling))
        self.rtt0: float | None = None  # the unloaded round trip: lowest window median remembered
        self._medians: deque[float] = deque(maxlen=2 * probe_every + 1)  # always holds the last probe
        self._windows = 0
        self._window: list[float] = []
        self._seen = 0  # calls observed in this window, overloaded ones included
        self._window_peak = 0  # most calls in flight seen during the window
        self._overloaded = False
        self._was_over_before = False  # the last window's queue estimate was above `beta`
        self._streak = 0  # windows in a row whose extra calls bought their share (> 0) or did not (< 0)
        #: answers per second (Little's law) at each number of calls in flight, and the window it was measured
        self._rates: dict[int, tuple[float, int]] = {}
        self.gain = gain
        self.memory = 2 * probe_every + 1
        self._cut_from = math.inf  # the limit the last cut came from
        self._since_cut = 0  # windows since the last cut or step past `_cut_from`
        self.probe_up_every = 10
        self._slow_start = True  # double per window until the first sign of a queue, as TCP's slow start
        self.epoch = 0  # bumped when the limit falls: calls started before then say nothing of the new limit

    @property
    def probing(self) -> bool:
        """True during the window that re-measures unloaded latency at half the limit."""
        return not self.fixed and self._windows % self.probe_every == self.probe_every - 1

    @property
    def allowed(self) -> int:
        """How many calls may be in flight now."""
        if self.probing:
            return max(self.floor, int(self.limit) // 2)
        return int(self.limit)

    @property
    def fixed(self) -> bool:
        return self.floor == self.ceiling

    def observe(self, rtt_s: float, in_flight: int, outcome: str | None = None, epoch: int | None = None) -> None:
        """One finished call: its round trip, how many calls were in flight when it started, `OVERLOAD`
        when the server refused it or could not serve it in time, `FAULT` when it failed otherwise (None for
        an answer), and the `epoch` when it started. A call started before the limit last fell is ignored: it
        queued behind the old limit. So is a fault: it tells nothing of the server's capacity."""
        if outcome == FAULT or (epoch is not None and epoch < self.epoch):
            return
        self._window_peak = max(self._window_peak, in_flight)
        self._seen += 1
        if outcome == OVERLOAD:
            self._overloaded = True
        elif rtt_s > 0:
            self._window.append(rtt_s)
        if self._seen >= max(10, self.allowed):
            self._close_window()

    def _close_window(self) -> None:
        limit, probing = self.limit, self.probing
        self._windows += 1
        if self._overloaded:
            limit *= self.backoff
            self._slow_start = False
        elif self._window:
            rtt = statistics.median(self._window)
            self._medians.append(rtt)
            self.rtt0 = min(self._medians)
            used = max(1, min(self._window_peak, int(limit)))  # calls in flight through this window
            rate = used / rtt  # Little's law: answers per second at this many calls in flight
            self._rates[used] = (rate, self._windows)
            lower = {n: r for n, (r, w) in self._rates.items() if n < used and self._windows - w <= self.memory}
            if probing:
                pass  # the probe measured a lower level; it decides nothing
            elif lower:
                limit = self._by_rate(limit, used, rate, rtt, lower)
            else:
                limit = self._by_latency(limit, rtt)
        limit = min(max(limit, float(self.floor)), float(self.ceiling))
        self._since_cut += 1
        if limit < self.limit:
            self.epoch += 1
            self._cut_from, self._since_cut = self.limit, 0
        self.limit = limit
        self._window.clear()
        self._seen = 0
        self._window_peak = 0
        self._overloaded = False

    def _by_rate(self, limit: float, used: int, rate: float, rtt: float, lower: dict[int, float]) -> float:
        """More calls in flight must buy more answers per second: at least `gain` of their proportional share
        over the best lower level. A batching server (vLLM, llama.cpp) answers more slowly per call and still
        faster in total as the batch grows; past its capacity only latency grows."""
        best = max(lower, key=lower.__getitem__)
        if rate < 0.8 * lower[best]:
            # Far fewer answers than before at fewer calls: the server lost capacity (or got slower for good).
            # Straight to what it serves now without a queue, by its unloaded latency, at most halving.
            self._slow_start = False
            return max(limit / 2, used * (self.rtt0 or rtt) / rtt * (1.0 + self.alpha))
        paid = rate >= lower[best] * (1.0 + self.gain * (used - best) / best)
        self._streak = max(self._streak, 0) + 1 if paid else min(self._streak, 0) - 1
        if not paid and (self._streak <= -2 or self._slow_start):
            # Back to the level that gave the most; one slow window of the worker's own (an event-loop pause,
            # a busy core) is not taken for the server's.
            self._slow_start = False
            return float(best)
        if paid and (self._slow_start or self._streak >= 2):  # growing adds latency: it takes two windows
            return self._grow(limit)
        return limit

    def _by_latency(self, limit: float, rtt: float) -> float:
        """Nothing measured at a lower level yet: the estimated queue at the server decides, as TCP Vegas."""
        rtt0 = self.rtt0 or rtt
        queued = limit * (1.0 - rtt0 / rtt)
        low, high = max(0.3, self.alpha * limit), max(0.75, self.beta * limit)
        over = queued > high
        if over and (self._slow_start or self._was_over_before):
            self._slow_start = False
            self._was_over_before = over
            return max(limit / 2, limit * rtt0 / rtt * (1.0 + self.alpha))
        self._was_over_before = over
        return self._grow(limit) if queued < low else limit

    def _grow(self, limit: float) -> float:
        if self._window_peak < limit / 2:  # only a used limit may grow
            return limit
        step = limit if self._slow_start else max(1.0, self.alpha * limit)
        # Up to just under where the limit was last cut from; past it only now and then (as CUBIC slows near
        # its last loss): each step past the capacity queues calls at the server.
        if limit + step < self._cut_from * (1.0 - self.alpha) or self._since_cut >= self.probe_up_every:
            self._since_cut = 0
            return limit + step
        return limit


class Slots:
    """At most `capacity` holders at once; the others wait in arrival order. `capacity` may change any time.

    Examples
    --------
    >>> async def demo():
    ...     slots = Slots(1)
    ...     await slots.acquire()
    ...     waiter = asyncio.ensure_future(slots.acquire())
    ...     await asyncio.sleep(0)
    ...     queued = slots.queued
    ...     slots.resize(2)  # room for the waiter now
    ...     await waiter
    ...     return queued, slots.busy
    >>> asyncio.run(demo())
    (1, 2)
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.busy = 0
        self.max_queued = 0  # the longest queue seen
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(not w.done() for w in self._waiters)

    async def acquire(self) -> None:
        if self.busy < self.capacity and not self._waiters:
            self.busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.max_queued = max(self.max_queued, self.queued)
        try:
            await waiter  # `_wake` counted us in `busy` before waking us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # woken and cancelled at once: hand the slot on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        self.busy -= 1
        self._wake()

    def resize(self, capacity: int) -> None:
        """New capacity; holders beyond it finish their work, and no one new starts until busy < capacity."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.busy < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.busy += 1
                waiter.set_result(None)



class ConcurrencyGate:
    """Admits at most `limit.allowed` calls at once, in arrival order; the rest wait here, not in the server.

    Waiting here costs nothing at the server and counts against no call timeout, so a backlog never turns
    into timeouts and retries; Kafka's in-flight window upstream bounds how many can wait. The queue is the
    same `Slots` the synthetic model serves with, resized to the limit after every answer.
    """

    def __init__(self, limit: AdaptiveLimit) -> None:
        self.limit = limit
        self.slots = Slots(limit.allowed)

    @property
    def in_flight(self) -> int:
        return self.slots.busy

    @property
    def waiting(self) -> int:
        return self.slots.queued

    async def acquire(self) -> tuple[int, int]:
        """Wait for room; return how many calls are in flight with this one, and the limit's epoch."""
        await self.slots.acquire()
        return self.slots.busy, self.limit.epoch

    def release(self, admitted: tuple[int, int], rtt_s: float, outcome: str | None = None) -> None:
        """The call `acquire` admitted is over: feed the limit, then admit whoever the (possibly new) limit
        lets in."""
        self.limit.observe(rtt_s, admitted[0], outcome, admitted[1])
        self.slots.resize(self.limit.allowed)
        self.slots.release()
