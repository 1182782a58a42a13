"""`POST /chat/completions` over aiohttp, with the openai client's retry policy: the per-request hot call.

The worker makes one model call per request. Through `openai.AsyncOpenAI` (httpx2 + httpcore2 + anyio,
pydantic response models, and a recursive transform of the typed `messages` parameter) one call cost
5.7-7.6 ms of CPU on the development machine, at any concurrency (`bench/README.md`), which capped a
worker near 150 calls/s however fast the model. The same call through one aiohttp session per endpoint
with orjson costs about 0.2-0.4 ms. `ModelClient.first_token` therefore sends its request here; the
other calls (`ModelClient.chat`, probes, canaries through `first_token` too) keep their own paths.

What this keeps from `openai-python` (`openai/_base_client.py`, 3.x), so the behaviour documented in
`model_client.py` and tested in `tests/unit/test_model_faults.py` is unchanged:

- the same retries: 408, 409, 429 and 5xx answers (an `x-should-retry: true|false` header decides
  first), timeouts and connection errors, up to `max_retries` more attempts;
- the same waits: `retry-after-ms` (preferred) or `Retry-After` (seconds, fractions accepted, or an
  HTTP date) when in (0, 120] s; above 120 s no retry; otherwise 0.5 s * 2^n capped at 8 s, minus up
  to 25 % jitter;
- the same log line on the same logger before each retry ("Retrying request in ..."), which
  `streams/ops/metrics.py` counts;
- the same errors out: `openai.APIStatusError` (with `status_code`), `openai.APITimeoutError`,
  `openai.APIConnectionError`; a 200 answer whose body is not JSON comes back as the text (str), and a
  JSON content type with an unparseable body raises `JSONDecodeError`, as the openai client does;
- a timeout per attempt for connecting and for each read (httpx's per-phase timeout), a pool of up to
  1000 connections, and the API key sent as a bearer token.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from typing import Any

import aiohttp
import httpx2
import openai
import orjson

INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 120.0
MAX_CONNECTIONS = 1000

#: The openai client's own logger, so log-based retry counters see these retries too.
retry_log = logging.getLogger("openai._base_client")


def retry_after_s(headers: Any) -> float | None:
    """Seconds the server asks to wait, from `retry-after-ms` or `Retry-After`; None if absent or unreadable."""
    for header, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        if delay == math.inf and value.strip().lower() not in ("inf", "+inf", "infinity", "+infinity"):
            return MAX_RETRY_AFTER_S + 1  # numeric overflow: an excessive delay, refused below
        return delay / divisor
    value = headers.get("retry-after")
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return float(email.utils.mktime_tz(parsed) - time.time())
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def should_retry(status: int, headers: Any) -> bool:
    after = retry_after_s(headers)
    if after is not None and math.isfinite(after) and after > MAX_RETRY_AFTER_S:
        return False
    explicit = headers.get("x-should-retry")
    if explicit == "true":
        return True
    if explicit == "false":
        return False
    return status in (408, 409, 429) or status >= 500


def retry_delay_s(retries_taken: int, headers: Any | None) -> float:
    after = retry_after_s(headers) if headers is not None else None
    if after is not None and math.isfinite(after) and 0 < after <= MAX_RETRY_AFTER_S:
        return after
    delay = min(INITIAL_RETRY_DELAY_S * 2.0 ** min(retries_taken, 1000), MAX_RETRY_DELAY_S)
    return max(delay * (1 - 0.25 * random.random()), 0.0)


class ChatHTTP:
    """One endpoint: a keep-alive aiohttp session, created on first use inside the running loop."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float, max_retries: int) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=30.0),
                timeout=self._timeout, headers=self._headers, skip_auto_headers=("User-Agent",),
                raise_for_status=False)
        return session

    def _request(self) -> httpx2.Request:
        """Only for the error types, which carry the request they failed on."""
        return httpx2.Request("POST", self.url)

    async def create(self, body: dict[str, Any], max_retries: int | None = None) -> Any:
        """The parsed JSON answer (or the text, when it is not JSON); raises openai's error types."""
        retries = self.max_retries if max_retries is None else max_retries
        data = orjson.dumps(body)
        session = self._open()
        retries_taken = 0
        while True:
            remaining = retries - retries_taken
            try:
                async with session.post(self.url, data=data) as resp:
                    raw = await resp.read()
                    status, headers = resp.status, resp.headers
            except asyncio.TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
                retry_log.debug("Encountered a timeout exception: %s", type(exc).__name__)
                if remaining > 0:
                    await self._sleep(retries_taken, retries, None)
                    retries_taken += 1
                    continue
                raise openai.APITimeoutError(request=self._request()) from exc
            except aiohttp.ClientError as exc:  # connection refused or reset, disconnects, bad framing
                retry_log.debug("Encountered exception: %r", exc)
                if remaining > 0:
                    await self._sleep(retries_taken, retries, None)
                    retries_taken += 1
                    continue
                raise openai.APIConnectionError(request=self._request()) from exc
            if status >= 400:
                if remaining > 0 and should_retry(status, headers):
                    await self._sleep(retries_taken, retries, headers)
                    retries_taken += 1
                    continue
                raise self._status_error(status, headers, raw)
            return _decode(raw, headers.get("content-type", "*"))

    async def _sleep(self, retries_taken: int, max_retries: int, headers: Any | None) -> None:
        delay = retry_delay_s(retries_taken, headers)
        retry_log.info("Retrying request in %f seconds (retry %i of %s)", delay, retries_taken + 1, max_retries)
        await asyncio.sleep(delay)

    def _status_error(self, status: int, headers: Any, raw: bytes) -> openai.APIStatusError:
        response = httpx2.Response(status, headers=list(headers.items()), content=raw, request=self._request())
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", errors="replace")
        err = body.get("error") if isinstance(body, dict) else None
        message = str(err.get("message")) if isinstance(err, dict) and err.get("message") else f"HTTP {status}"
        return openai.APIStatusError(f"Error code: {status} - {message}", response=response, body=body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _decode(raw: bytes, content_type: str) -> Any:
    """As the openai client: JSON when the content type says so (or when the body parses), else the text."""
    if content_type.split(";", 1)[0].strip().endswith("json"):
        return orjson.loads(raw)  # JSONDecodeError (a ValueError) on a truncated body
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace")
