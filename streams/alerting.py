"""Forwarding alerts to a webhook (JSON body), with retries, never blocking the stream."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import aiohttp
import orjson

log = logging.getLogger(__name__)


async def post_webhook(url: str, payload: dict[str, Any], retries: int = 4, timeout_s: float = 10.0) -> bool:
    """POST the payload; retry 5xx, 429 and connection errors with exponential backoff and jitter."""
    delay = 0.5
    for attempt in range(retries + 1):
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
                session.post(url, data=orjson.dumps(payload), headers={"content-type": "application/json"}) as resp,
            ):
                if resp.status < 300:
                    return True
                if resp.status < 500 and resp.status != 429:
                    log.warning("webhook %s refused the alert: HTTP %s", url, resp.status)
                    return False
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.info("webhook %s: %r (attempt %d)", url, exc, attempt + 1)
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay *= 2
    log.warning("webhook %s: gave up after %d attempts", url, retries + 1)
    return False


class QueueAlarm:
    """Review-queue alerts, one per episode: `open` when a task's queue is deeper than `max_depth` or
    its oldest item older than `max_age_s` (0 turns a limit off), `recovered` when both are back under.
    Pure, so the thresholds are unit-tested; the worker's leader feeds it and posts what it returns."""

    def __init__(self, max_depth: int, max_age_s: float) -> None:
        self.max_depth = max_depth
        self.max_age_s = max_age_s
        self.open: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.max_depth > 0 or self.max_age_s > 0

    def update(self, task: str, depth: int, oldest_age_s: float, now_iso: str) -> dict[str, Any] | None:
        """The alert to send for this observation, or None (no change of state)."""
        reasons = []
        if self.max_depth > 0 and depth > self.max_depth:
            reasons.append(f"{depth} items pending (limit {self.max_depth})")
        if self.max_age_s > 0 and oldest_age_s > self.max_age_s:
            reasons.append(f"oldest item waiting {oldest_age_s:.0f} s (limit {self.max_age_s:g} s)")
        if reasons and task not in self.open:
            self.open.add(task)
            state = "open"
        elif not reasons and task in self.open:
            self.open.discard(task)
            state = "recovered"
        else:
            return None
        return {"kind": "review_queue", "task": task, "state": state, "depth": depth,
                "oldest_age_s": round(oldest_age_s, 3), "max_depth": self.max_depth, "max_age_s": self.max_age_s,
                "reason": "; ".join(reasons) if reasons else "back under the limits",
                "raised_at": now_iso, "schema_version": 1}


class WebhookForwarder:
    """Posts alerts off the caller's path; keeps a reference to each delivery (asyncio holds weak ones)."""

    def __init__(self, url: str | None, retries: int = 4) -> None:
        self.url = url
        self.retries = retries
        self.deliveries: set[asyncio.Task[bool]] = set()

    def forward(self, payload: dict[str, Any]) -> asyncio.Task[bool] | None:
        if not self.url:
            return None
        delivery = asyncio.create_task(post_webhook(self.url, payload, self.retries))
        self.deliveries.add(delivery)
        delivery.add_done_callback(self.deliveries.discard)
        return delivery
