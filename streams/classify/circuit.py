"""A circuit breaker per model endpoint: stop hammering an endpoint that keeps failing, probe it, recover.

Pure state machine, no I/O and no sleeping; time comes from an injected `clock` (seconds, monotonic), so
tests drive it by hand. The caller (`ModelClient`) asks `allow()` before each call and reports the
outcome with `record_success()` / `record_failure()` (or `release()` when a call ends with no verdict,
e.g. it was cancelled).

States:

- **closed**: every call is allowed. The breaker remembers the outcomes of the last `window` calls and
  opens when `failure_threshold` of them are failures (a count-based sliding window; with
  `window == failure_threshold` this is exactly "N consecutive failures").
- **open**: `allow()` is False, callers fail fast (or wait) without touching the endpoint, until the
  open period has passed. Outcomes of calls admitted before it opened are ignored.
- **half_open**: the open period has passed; up to `half_open_max_calls` probes are let through at once,
  everything else is still refused. A success closes the breaker (window cleared, open period back to
  `open_for_s`); a failure re-opens it for twice the previous period, capped at `max_open_for_s`
  (`open_for_s * 2**k` after k failed probes in a row).

What counts as a failure is the caller's decision: `ModelClient` counts only signs of endpoint trouble
(5xx, 408, 429, timeouts, connection errors, unparseable bodies), never a 4xx caused by the request.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        window: int = 10,
        open_for_s: float = 2.0,
        half_open_max_calls: int = 1,
        max_open_for_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problems = []
        if failure_threshold < 1:
            problems.append("failure_threshold must be >= 1")
        if window < failure_threshold:
            problems.append("window must be >= failure_threshold")
        if open_for_s <= 0 or max_open_for_s < open_for_s:
            problems.append("open_for_s must be > 0 and max_open_for_s >= open_for_s")
        if half_open_max_calls < 1:
            problems.append("half_open_max_calls must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))
        self.failure_threshold = failure_threshold
        self.window = window
        self.open_for_s = open_for_s
        self.half_open_max_calls = half_open_max_calls
        self.max_open_for_s = max_open_for_s
        self._clock = clock
        self._state = CLOSED
        self._outcomes: deque[bool] = deque(maxlen=window)  # True = failure
        self._failures_in_window = 0
        self._current_open_for = open_for_s
        self._open_until = 0.0
        self._probes_in_flight = 0
        # counters for metrics
        self._opened = 0
        self._rejected = 0
        self._successes = 0
        self._failures = 0
        self._probes = 0

    # -- state -------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        if self._state == OPEN and self._clock() >= self._open_until:
            self._state = HALF_OPEN
            self._probes_in_flight = 0

    @property
    def state(self) -> str:
        """`closed`, `open` or `half_open` (an open breaker whose period has passed reads half_open)."""
        self._refresh()
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker turns half-open; 0 when it is not open."""
        self._refresh()
        return max(0.0, self._open_until - self._clock()) if self._state == OPEN else 0.0

    def allow(self) -> bool:
        """May a call go to the endpoint now? In half-open, True takes one of the probe slots."""
        self._refresh()
        if self._state == CLOSED:
            return True
        if self._state == HALF_OPEN and self._probes_in_flight < self.half_open_max_calls:
            self._probes_in_flight += 1
            self._probes += 1
            return True
        self._rejected += 1
        return False

    # -- outcomes ----------------------------------------------------------------------------------

    def record_success(self) -> None:
        self._refresh()
        self._successes += 1
        if self._state == HALF_OPEN:
            self._close()
        elif self._state == CLOSED:
            self._push(False)

    def record_failure(self) -> None:
        self._refresh()
        self._failures += 1
        if self._state == HALF_OPEN:
            self._trip(self._current_open_for * 2)
        elif self._state == CLOSED:
            self._push(True)
            if self._failures_in_window >= self.failure_threshold:
                self._trip(self.open_for_s)

    def release(self) -> None:
        """A call admitted by `allow()` ended without a verdict (cancelled): free its probe slot."""
        self._refresh()
        if self._state == HALF_OPEN and self._probes_in_flight > 0:
            self._probes_in_flight -= 1

    def _push(self, failed: bool) -> None:
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self._failures_in_window -= 1
        self._outcomes.append(failed)
        self._failures_in_window += failed

    def _trip(self, open_for: float) -> None:
        self._state = OPEN
        self._current_open_for = min(open_for, self.max_open_for_s)
        self._open_until = self._clock() + self._current_open_for
        self._probes_in_flight = 0
        self._opened += 1

    def _close(self) -> None:
        self._state = CLOSED
        self._outcomes.clear()
        self._failures_in_window = 0
        self._current_open_for = self.open_for_s
        self._probes_in_flight = 0

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state and counters, for metrics."""
        state = self.state
        return {
            "state": state,
            "failures_in_window": self._failures_in_window,
            "window": self.window,
            "failure_threshold": self.failure_threshold,
            "open_for_s": self._current_open_for,
            "retry_in_s": round(self.retry_in(), 3),
            "probes_in_flight": self._probes_in_flight,
            "times_opened": self._opened,
            "rejected": self._rejected,
            "probes": self._probes,
            "successes": self._successes,
            "failures": self._failures,
        }
