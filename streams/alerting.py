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
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
                async with session.post(url, data=orjson.dumps(payload),
                                        headers={"content-type": "application/json"}) as resp:
                    if resp.status < 300:
                        return True
                    if resp.status < 500 and resp.status != 429:
                        log.warning("webhook %s refused the alert: HTTP %s", url, resp.status)
                        return False
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.info("webhook %s: %r (attempt %d)", url, exc, attempt + 1)
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay *= 2
    log.warning("webhook %s: gave up after %d attempts", url, retries + 1)
    return False
