"""How real model servers limit work, for the synthetic model: decoding slots and per-minute budgets.

- `Slots`: a self-hosted server (vLLM, llama.cpp) decodes a fixed number of sequences at once; requests
  beyond that wait in its queue, so latency is queueing plus service time, never an error. The number
  can change while it runs (a replica lost, a smaller batch size), as benchmarks need to show.
- `Budget`: a hosted API meters requests and tokens per minute; over budget it answers 429 with
  `Retry-After`, and every answer carries OpenAI's `x-ratelimit-*` headers. A token bucket that refills
  continuously at the per-minute rate, as OpenAI describes its limits.
"""

from __future__ import annotations

import math
import time

from streams.classify.concurrency import Slots

__all__ = ["Budget", "Slots", "duration"]


class Budget:
    """A per-minute budget as a token bucket: full at start, refilled at `per_minute / 60` a second. It holds
    `burst_s` seconds of refill: 60, a minute's budget at once; less stands for an API that enforces its
    per-minute limit over shorter periods (OpenAI says it may: 600 a minute as 10 a second).

    Examples
    --------
    >>> b = Budget(60, now=0.0)  # 60 a minute: one a second, a burst of 60
    >>> b.wait_s(60, now=0.0), b.take(60, now=0.0), b.wait_s(1, now=0.0)
    (0.0, None, 1.0)
    >>> b.remaining(now=0.5), b.reset_s(now=0.5)
    (0, 59.5)
    >>> q = Budget(600, now=0.0, burst_s=1.0)  # 600 a minute, enforced as 10 a second
    >>> q.remaining(now=0.0), q.wait_s(11, now=0.0)
    (10, inf)
    """

    def __init__(self, per_minute: float, now: float | None = None, burst_s: float = 60.0) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be > 0")
        if burst_s <= 0:
            raise ValueError("burst_s must be > 0")
        self.limit = per_minute
        self._rate = per_minute / 60.0
        self.capacity = self._rate * burst_s
        self._level = self.capacity
        self._t = time.monotonic() if now is None else now

    def _refill(self, now: float | None) -> float:
        now = time.monotonic() if now is None else now
        self._level = min(self.capacity, self._level + (now - self._t) * self._rate)
        self._t = now
        return now

    def wait_s(self, amount: float, now: float | None = None) -> float:
        """Seconds until `amount` fits (0 when it fits now; an amount over the capacity never fits: inf)."""
        self._refill(now)
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self._level) / self._rate)

    def take(self, amount: float, now: float | None = None) -> None:
        self._refill(now)
        self._level -= amount

    def remaining(self, now: float | None = None) -> int:
        self._refill(now)
        return max(0, math.floor(self._level))

    def reset_s(self, now: float | None = None) -> float:
        """Seconds until the bucket is full again (OpenAI's `x-ratelimit-reset-*`)."""
        self._refill(now)
        return (self.capacity - self._level) / self._rate


def duration(seconds: float) -> str:
    """OpenAI's reset format: "1m30s", "2.5s", "20ms".

    >>> duration(90.0), duration(2.5), duration(0.02)
    ('1m30s', '2.5s', '20ms')
    """
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60.0)
    tail = f"{rest:.3g}s" if rest else ""
    return f"{int(minutes)}m{tail}" if minutes else tail
