"""Pacing model calls under an endpoint's per-minute budgets, so that a hosted API has no call to refuse.

A hosted API meters each model's requests and tokens per minute and answers 429 past either budget. The
openai client retries a 429 after its `Retry-After`, but a refused call still costs a round trip and a
retry, and a worker that learns its budget only from refusals sends bursts that are refused again. A
`Pacer` (one per endpoint and model in the model client) holds calls back *before* they are sent:

- **Two token buckets**, one for requests and one for tokens, refilled continuously at this process's
  share of the per-minute budget (`share * per_minute / 60` a second). They hold at most `burst_s`
  seconds of refill (half a second by default) and start full: a hosted API may enforce a minute's budget
  over shorter periods (OpenAI says so of its limits: 600 a minute as 10 a second), and several workers
  starting together must not spend a minute's budget in their first second. Half a second rather than one:
  against a server that enforces per second, a worker sending at the full rate then leaves the server's
  bucket half full, room for calls that reach it closer together than they were sent (connection set-up,
  scheduling); with a one-second bucket the same test saw a 429 in 30 calls. A call that costs more than a
  bucket holds waits for a full bucket and leaves a debt, so no call size is ever refused here.
- **Tokens are estimated before the call** (`estimate`): the prompt's characters times a tokens-per-character
  ratio learnt per endpoint from the usage the server reports (`learn`: prompt tokens over prompt
  characters, an average in which each answer weighs 2%, starting from English's usual 4 characters a
  token), plus the completion tokens asked for (`max_tokens` times `n`), since OpenAI meters `max_tokens`
  when a request arrives, not what was generated. A learnt ratio rather than a fixed chars/4: the ratio
  differs by tokenizer and language (and a local server may count words), and estimation errors only delay
  the calls in flight, never the long-run rate, because `settle` gives the token bucket back the
  difference between the estimate and the usage reported when the answer arrives.
- **The server's word wins** (`observe_headers`). OpenAI-style answers carry `x-ratelimit-remaining-*`,
  `x-ratelimit-reset-*` ("1s", "6m0s", "20ms") and `x-ratelimit-limit-*` for requests and tokens. The last
  ones seen bound what this process may send: what remained then, times its share, plus the server's refill
  since (`(limit - remaining) / reset` a second, at most `limit / 60`; with no limit header, the declared
  budget's rate, else nothing until the reset), minus what this process admitted since and what it had
  admitted and not yet seen answered then (those may not have been counted yet: conservative by the calls
  in flight). A budget
  declared above the server's, another client spending the same key, or a restart that finds the budget
  spent therefore do not turn into refused calls. Headers are followed without a declared budget too. A
  429's `retry-after-ms` (or `Retry-After` in seconds) holds every caller, not only the refused one: all
  would be refused until then.
- **Callers wait in arrival order**: an `asyncio.Lock` is first-in first-out, and its holder sleeps until
  the budget fits its call, woken early when budget comes back (a usage below the estimate, new headers, a
  new share), and at least every `recheck_s`. The
  model client waits here before it takes room under the endpoint's concurrency limit, so waiting for
  budget holds no room and counts against no call timeout.

`share` is the part of the budget this process may use. The worker sets it to its share of the requests
topic's partitions (`budget_share`, on every rebalance), so workers sharing a budget need no coordination
traffic; see docs/ARCHITECTURE.md, *Rate-limit budgets*, for why and what it costs.

Examples
--------
A budget of 600 requests and 60,000 tokens a minute (10 and 1,000 a second); a fake clock stands in for
time, so the example runs at once:

>>> import asyncio
>>> now = [0.0]
>>> async def sleep(s):
...     now[0] += s
>>> pacer = Pacer(600, 60_000, clock=lambda: now[0], sleep=sleep)
>>> cost = pacer.estimate(prompt_chars=396, max_tokens=1)  # 396 / 4 + 1
>>> cost
100
>>> async def calls(n):
...     for _ in range(n):
...         await pacer.admit(cost)
...         pacer.done(cost)  # answered
...     return now[0]

Thirty calls: the first five fit the half-second burst, the other 25 come every 0.1 s.

>>> round(asyncio.run(calls(30)), 3)
2.5

The server reports 50 prompt tokens for each: `settle` returns the unused estimate to the token bucket,
and `learn` moves the ratio towards 50 / 396.

>>> pacer.settle(cost, 50 + 1)
>>> for _ in range(200):
...     pacer.learn(396, 50)
>>> pacer.estimate(396, 1)
52

A second later this worker's own buckets are full again (5 requests), but the server says only 2 requests
remain, filling up again in 59.8 s (10 a second): two calls go at once, the third waits 0.1 s for the
server's refill.

>>> now[0] += 1.0
>>> pacer.observe_headers({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "2",
...                        "x-ratelimit-reset-requests": "59.8s"})
>>> start = now[0]
>>> round(asyncio.run(calls(3)) - start, 3)
0.1
>>> pacer.snapshot()["rate_limited"]
0
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

BURST_S = 0.5  # seconds of refill a bucket holds (see the module docstring)
CHARS_PER_TOKEN = 4.0  # the prior: English text with the common tokenizers
RATIO_PRIOR_CHARS = 1000.0  # the prior weighs as much as this many characters of reported usage (a few calls)
RATIO_MEMORY = 0.98  # each reported usage keeps 98% of the weight of what came before
RECHECK_S = 0.5  # a waiting caller looks again this often (a new share or new headers may let it go)
DEFAULT_WINDOW_S = 60.0  # how long a server's word holds when it names no reset time
KINDS = ("requests", "tokens")
EPSILON = 1e-9  # a shortfall this small is rounding, not a wait (a float clock could not even advance by it)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")


def parse_reset(text: str) -> float | None:
    """Seconds in an `x-ratelimit-reset-*` value: OpenAI's "1s", "6m0s", "20ms", "1h2m3.5s", or a bare number
    of seconds; None when it is none of these.

    >>> parse_reset("6m0s"), parse_reset("20ms"), parse_reset("1m30.5s"), parse_reset("2"), parse_reset("soon")
    (360.0, 0.02, 90.5, 2.0, None)
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if value >= 0 and math.isfinite(value) else None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def budget_share(assigned: int, total: int) -> float:
    """The share of an endpoint's budget a worker takes: its share of the requests topic's partitions.

    >>> budget_share(3, 8), budget_share(0, 8), budget_share(5, 0)
    (0.375, 0.0, 1.0)
    """
    if total <= 0:
        return 1.0  # the partition count is unknown: the whole budget, as a lone process
    return min(1.0, max(0.0, assigned / total))


class Bucket:
    """A token bucket refilled continuously at `rate` a second up to `capacity`; its level may go below 0 (a
    debt), so that a call larger than the capacity still passes once the bucket is full.

    >>> b = Bucket(rate=10.0, capacity=10.0, now=0.0)
    >>> b.take(10, now=0.0); b.wait_s(1, now=0.0)
    0.1
    >>> b.take(25, now=1.0); b.wait_s(1, now=1.0)  # 25 > capacity: taken from a full bucket, a debt of 15
    1.6
    """

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.level = capacity
        self._t = now

    def refill(self, now: float) -> None:
        if now > self._t:
            self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = max(self._t, now)

    def resize(self, rate: float, capacity: float, now: float) -> None:
        """A new rate (a new share); the level is kept, within the new capacity."""
        self.refill(now)
        self.rate, self.capacity = rate, capacity
        self.level = min(self.level, capacity)

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` may be taken: until the level reaches it, or the capacity if it is larger."""
        self.refill(now)
        if self.rate <= 0:  # a share of 0: nothing comes, whatever the bucket holds
            return 0.0 if self.level >= amount > 0 else math.inf
        short = min(amount, self.capacity) - self.level
        if short <= EPSILON:
            return 0.0
        return short / self.rate

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount

    def give(self, amount: float, now: float) -> None:
        """Return `amount` (negative: take more), within the capacity."""
        self.refill(now)
        self.level = min(self.capacity, self.level + amount)


@dataclass
class _ServerView:
    """What the server last said of one budget, and what this process took of it since."""

    remaining: float
    at: float
    refill: float  # per second, the whole budget's (all processes)
    limit: float | None
    until: float  # when the server said the budget is full again: the view says nothing after
    taken: float  # admitted since, plus admitted and not yet answered when the server spoke

    def available(self, share: float, now: float) -> float:
        level = self.remaining + self.refill * max(0.0, now - self.at)
        if self.limit is not None:
            level = min(level, self.limit)
        return share * level - self.taken

    def wait_s(self, amount: float, share: float, now: float) -> float:
        if now >= self.until:
            return 0.0
        need = min(amount, share * self.limit) if self.limit else amount
        short = need - self.available(share, now)
        if short <= EPSILON:
            return 0.0
        if self.refill > 0 and share > 0:
            return min(short / (share * self.refill), self.until - now)
        return self.until - now


class Pacer:
    """Keeps one endpoint's calls under its requests and tokens per minute, and under what its server says.

    Parameters
    ----------
    requests_per_minute, tokens_per_minute
        The endpoint's whole budget (every worker's together); None for no such budget. With neither, the
        pacer only follows the server's rate-limit headers.
    share
        The part of the budget this process may use, in [0, 1]; `set_share` changes it.
    burst_s
        Seconds of refill each bucket holds.
    clock, sleep
        Time, replaceable in tests.
    """

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None, *,
                 share: float = 1.0, burst_s: float = BURST_S, recheck_s: float = RECHECK_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be above 0 (or None), got {value}")
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share}")
        if not burst_s > 0:
            raise ValueError(f"burst_s must be above 0, got {burst_s}")
        self.per_minute: dict[str, float | None] = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self.share = share
        self.burst_s = burst_s
        self.recheck_s = recheck_s
        self._clock, self._sleep = clock, sleep
        now = clock()
        self._buckets: dict[str, Bucket] = {}
        for kind, per_minute in self.per_minute.items():
            if per_minute is not None:
                rate = share * per_minute / 60.0
                self._buckets[kind] = Bucket(rate, rate * burst_s, now)
        self._views: dict[str, _ServerView] = {}
        self._open = {"requests": 0.0, "tokens": 0.0}  # admitted, not yet answered
        self._hold_until = 0.0  # a 429's Retry-After holds every caller
        self._ratio_chars, self._ratio_tokens = RATIO_PRIOR_CHARS, RATIO_PRIOR_CHARS / CHARS_PER_TOKEN
        self._lock = asyncio.Lock()
        self._waker: asyncio.Future[None] | None = None  # set while the head caller sleeps; `_poke` wakes it
        self._waiting = 0
        #: 429 answers seen (every HTTP answer, the openai client's retries included), and seconds callers
        #: spent waiting here: read by the metrics.
        self.rate_limited = 0
        self.waited_s = 0.0

    @property
    def active(self) -> bool:
        """False while there is nothing to pace by: no declared budget, and the server has said nothing."""
        return bool(self._buckets or self._views or self._hold_until)

    @property
    def tokens_per_char(self) -> float:
        return self._ratio_tokens / self._ratio_chars

    def set_share(self, share: float) -> None:
        """This process's part of the budget from now on (a rebalance changed its partitions)."""
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self.share = share
        now = self._clock()
        for kind, bucket in self._buckets.items():
            rate = share * (self.per_minute[kind] or 0.0) / 60.0
            bucket.resize(rate, rate * self.burst_s, now)
        self._poke()

    def estimate(self, prompt_chars: int, max_tokens: int) -> int:
        """Tokens a call will be metered: its prompt by the learnt ratio, plus the completion tokens it may use."""
        return math.ceil(prompt_chars * self.tokens_per_char) + max(0, max_tokens)

    def learn(self, prompt_chars: int, prompt_tokens: int) -> None:
        """A reported usage: `prompt_tokens` for a prompt of `prompt_chars` characters."""
        if prompt_chars > 0 and prompt_tokens > 0:
            self._ratio_chars = self._ratio_chars * RATIO_MEMORY + prompt_chars
            self._ratio_tokens = self._ratio_tokens * RATIO_MEMORY + prompt_tokens

    def wait_s(self, tokens: float) -> float:
        """How long a call of `tokens` would wait now, were no one ahead of it."""
        return self._wait_s(tokens, self._clock())

    def _wait_s(self, tokens: float, now: float) -> float:
        wait = max(0.0, self._hold_until - now)
        need = {"requests": 1.0, "tokens": float(tokens)}
        for kind, bucket in self._buckets.items():
            wait = max(wait, bucket.wait_s(need[kind], now))
        for kind, view in list(self._views.items()):
            if now >= view.until:
                del self._views[kind]  # the server said it is full again by now
                continue
            wait = max(wait, view.wait_s(need[kind], self.share, now))
        return wait

    async def admit(self, tokens: int) -> float:
        """Wait until a call of `tokens` estimated tokens fits the budget, and count it; the seconds waited.

        Every admitted call must be followed by `done` (answered, or given up)."""
        if not self.active:
            self._open["requests"] += 1
            self._open["tokens"] += tokens
            return 0.0
        started = self._clock()
        self._waiting += 1
        try:
            async with self._lock:
                while (wait := self._wait_s(tokens, self._clock())) > 0:
                    await self._pause(min(wait, self.recheck_s))
                now = self._clock()
                need = {"requests": 1.0, "tokens": float(tokens)}
                for kind, bucket in self._buckets.items():
                    bucket.take(need[kind], now)
                for kind, view in self._views.items():
                    view.taken += need[kind]
                self._open["requests"] += 1
                self._open["tokens"] += tokens
        finally:
            self._waiting -= 1
        waited = self._clock() - started
        self.waited_s += waited
        return waited

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake early when budget comes back (`settle`, new headers, a new share)."""
        waker = self._waker = asyncio.get_running_loop().create_future()
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            self._waker = None

    def _poke(self) -> None:
        if self._waker is not None and not self._waker.done():
            self._waker.set_result(None)

    def done(self, tokens: int) -> None:
        """An admitted call was answered (its answer's headers are observed after this), or given up."""
        self._open["requests"] = max(0.0, self._open["requests"] - 1)
        self._open["tokens"] = max(0.0, self._open["tokens"] - tokens)

    def settle(self, estimated: int, actual: int) -> None:
        """The server metered `actual` tokens for a call admitted at `estimated`: correct the token bucket."""
        bucket = self._buckets.get("tokens")
        if bucket is not None and actual >= 0:
            bucket.give(estimated - actual, self._clock())
            if estimated > actual:
                self._poke()

    def observe_headers(self, headers: Mapping[str, str], status: int = 200) -> None:
        """Follow an answer's rate-limit headers (any mapping; case as sent, or a case-insensitive one).

        Call it after `done` for the call this answer belongs to: what the server says remains already
        counts that call."""
        now = self._clock()
        if status == 429:
            self.rate_limited += 1
            retry = _retry_after_s(headers)
            if retry is not None:
                self._hold_until = max(self._hold_until, now + retry)
        for kind in KINDS:
            remaining = _number(_header(headers, f"x-ratelimit-remaining-{kind}"))
            if remaining is None:
                continue
            limit = _number(_header(headers, f"x-ratelimit-limit-{kind}"))
            reset_text = _header(headers, f"x-ratelimit-reset-{kind}")
            reset = parse_reset(reset_text) if reset_text is not None else None
            declared = self.per_minute[kind]
            if limit is not None and reset is not None and reset > 0:
                # Never above limit / 60: an API that enforces its minute over shorter periods resets sooner
                # than its per-minute limit refills.
                refill = min(max(0.0, limit - remaining) / reset, limit / DEFAULT_WINDOW_S)
            elif limit is not None:
                refill = limit / DEFAULT_WINDOW_S
            else:
                refill = declared / DEFAULT_WINDOW_S if declared else 0.0
            until = now + (reset if reset is not None else DEFAULT_WINDOW_S)
            self._views[kind] = _ServerView(max(0.0, remaining), now, refill, limit, until, self._open[kind])
            self._poke()

    def snapshot(self) -> dict[str, Any]:
        """For metrics: the share, what may be sent now of each budget (None: unbounded), calls waiting,
        429s seen, seconds waited."""
        now = self._clock()
        available: dict[str, float | None] = {}
        for kind in KINDS:
            bounds = []
            bucket = self._buckets.get(kind)
            if bucket is not None:
                bucket.refill(now)
                bounds.append(bucket.level)
            view = self._views.get(kind)
            if view is not None and now < view.until:
                bounds.append(view.available(self.share, now))
            available[kind] = max(0.0, min(bounds)) if bounds else None
        return {"share": self.share, "available": available, "waiting": self._waiting,
                "rate_limited": self.rate_limited, "waited_s": self.waited_s,
                "tokens_per_char": self.tokens_per_char}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not hasattr(headers, "raw"):  # a plain dict: try the usual capitalisations
        value = headers.get(name.title())
    return value


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """A 429's delay: `retry-after-ms` (milliseconds, as openai prefers it) or `Retry-After` in seconds; an HTTP
    date is left to the openai client, which waits it out for the refused call."""
    ms = _number(_header(headers, "retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    seconds = _number(_header(headers, "retry-after"))
    return seconds if seconds is not None and seconds <= 120 else None
