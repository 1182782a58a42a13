"""A fault-injecting reverse proxy for an OpenAI-compatible endpoint, for reliability tests only.

It forwards `/v1/...` to the upstream and, per request, with probability `fault_rate`, injects one fault
drawn among the enabled kinds by weight:

| kind | what the client sees |
|---|---|
| `rate_limit_retry_after` | HTTP 429 with `Retry-After` (integer seconds, as HTTP defines it) and `retry-after-ms` |
| `rate_limit` | HTTP 429 without any Retry-After header |
| `server_error` | HTTP 500 |
| `unavailable` | HTTP 503 |
| `reset` | the TCP connection is reset (SO_LINGER 0 + abort) before any response byte |
| `timeout` | no answer for `timeout_s` (longer than the client's timeout), then the connection closes |
| `truncated` | HTTP 200, `application/json`, the upstream's body cut in half (valid framing, invalid JSON) |
| `not_json` | HTTP 200 with a `text/html` error page |
| `no_logprobs` | the upstream's answer with `logprobs` set to null |
| `off_label` | the upstream's answer with the first position's tokens replaced by words outside any label set |

The RNG is seeded, so a run is reproducible for a given request order. `GET /faults` returns the
counters (`stats()`); `POST /faults` with a JSON object changes `fault_rate`/`kinds`/`timeout_s`/
`retry_after_s` of the running proxy (to stage an outage and a recovery by hand).

Run it with
`python -m streams.localdev.fault_proxy --upstream http://127.0.0.1:8090/v1 --fault-rate 0.3 --seed 1`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field, fields, replace
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from aiohttp import web

FAULT_KINDS: tuple[str, ...] = (
    "rate_limit_retry_after",
    "rate_limit",
    "server_error",
    "unavailable",
    "reset",
    "timeout",
    "truncated",
    "not_json",
    "no_logprobs",
    "off_label",
)
#: Tokens no label set of ours contains; `off_label` puts them where the label tokens were.
OFF_LABEL_TOKENS: tuple[str, ...] = ("banana", "zeppelin", "quartz", "walrus", "umbrella", "kumquat", "xylophone")
# Request headers passed on to the upstream; hop-by-hop ones (connection, host, ...) are not.
FORWARDED_HEADERS = ("content-type", "authorization", "accept", "openai-organization", "openai-project",
                     "idempotency-key")
HTML_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"


def _default_kinds() -> dict[str, float]:
    return dict.fromkeys(FAULT_KINDS, 1.0)


@dataclass
class FaultConfig:
    """What to inject and how often; validated up front so a typo fails at start."""

    fault_rate: float = 0.3
    kinds: dict[str, float] = field(default_factory=_default_kinds)  # kind -> weight among faults
    timeout_s: float = 30.0  # how long a `timeout` fault holds the request; make it exceed the client's timeout
    seed: int | None = None
    retry_after_s: float = 0.1  # the wait a `rate_limit_retry_after` fault asks for
    retry_after_ms_header: bool = True  # also send `retry-after-ms` (the openai client prefers it)

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.fault_rate <= 1:
            problems.append("fault_rate must be in [0, 1]")
        unknown = sorted(set(self.kinds) - set(FAULT_KINDS))
        if unknown:
            problems.append(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
        if any(w < 0 or not math.isfinite(w) for w in self.kinds.values()):
            problems.append("kind weights must be finite and >= 0")
        if self.fault_rate > 0 and not any(w > 0 for w in self.kinds.values()):
            problems.append("fault_rate > 0 needs at least one kind with a positive weight")
        if self.timeout_s < 0 or self.retry_after_s < 0:
            problems.append("timeout_s and retry_after_s must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json")


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": {"message": message, "type": kind, "param": None, "code": kind}}, status, headers)


class FaultProxy:
    """`async with FaultProxy(upstream, FaultConfig(...)) as p:` then point a client at `p.base_url`."""

    def __init__(self, upstream_base_url: str, config: FaultConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.upstream = upstream_base_url.rstrip("/")
        self.config = config or FaultConfig()
        self.host = host
        self.port = port
        self._rng = random.Random(self.config.seed)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = asyncio.Event()
        self._counts: Counter[str] = Counter()
        #: (time.monotonic() of arrival, fault kind or "passed") per proxied request, the latest 100k.
        self.arrivals: deque[tuple[float, str]] = deque(maxlen=100_000)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        """`requests` (all proxied), `passed` (forwarded untouched), `upstream_error`, and one count per fault kind."""
        out = {"requests": self._counts["requests"], "passed": self._counts["passed"],
               "upstream_error": self._counts["upstream_error"]}
        out.update({kind: self._counts[kind] for kind in FAULT_KINDS})
        return out

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/faults", self._get_faults)
        app.router.add_post("/faults", self._set_faults)
        app.router.add_route("*", "/v1/{tail:.*}", self._proxy)
        self._closing = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._closing.set()  # wakes requests held by `timeout` faults
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- control -----------------------------------------------------------------------------------

    async def _get_faults(self, _: web.Request) -> web.Response:
        return _json(self.stats() | {"config": {"fault_rate": self.config.fault_rate, "kinds": self.config.kinds}})

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            allowed = {f.name for f in fields(FaultConfig)} - {"seed"}
            if not isinstance(body, dict) or set(body) - allowed:
                raise ValueError(f"expected a JSON object with keys among {sorted(allowed)}")
            self.config = replace(self.config, **body)
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            return _error(400, "invalid_request_error", str(exc))
        return await self._get_faults(request)

    def choose(self) -> str | None:
        """The fault for the next request, or None to pass it through."""
        cfg = self.config
        if cfg.fault_rate <= 0 or self._rng.random() >= cfg.fault_rate:
            return None
        kinds = [k for k, w in cfg.kinds.items() if w > 0]
        return self._rng.choices(kinds, weights=[cfg.kinds[k] for k in kinds])[0]

    # -- the proxy ---------------------------------------------------------------------------------

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        kind = self.choose()
        self._counts["requests"] += 1
        self._counts[kind or "passed"] += 1
        self.arrivals.append((time.monotonic(), kind or "passed"))
        cfg = self.config
        if kind == "rate_limit_retry_after":
            headers = {"Retry-After": str(max(1, math.ceil(cfg.retry_after_s)))}
            if cfg.retry_after_ms_header:
                headers["retry-after-ms"] = str(round(cfg.retry_after_s * 1000))
            return _error(429, "rate_limit_exceeded", "injected rate limit", headers)
        if kind == "rate_limit":
            return _error(429, "rate_limit_exceeded", "injected rate limit (no Retry-After)")
        if kind == "server_error":
            return _error(500, "server_error", "injected internal error")
        if kind == "unavailable":
            return _error(503, "service_unavailable", "injected unavailability")
        if kind == "reset":
            self._reset(request)
            raise asyncio.CancelledError  # nothing to answer on a dead connection; aiohttp drops the handler
        if kind == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), cfg.timeout_s)
            self._reset(request)
            raise asyncio.CancelledError
        if kind == "not_json":
            return web.Response(body=HTML_PAGE, status=200, content_type="text/html")

        upstream = await self._forward(request)
        if upstream is None:
            self._counts["upstream_error"] += 1
            return _error(502, "bad_gateway", "upstream unreachable")
        status, content_type, body = upstream
        if kind == "truncated":
            return web.Response(body=body[: len(body) // 2], status=200, content_type="application/json")
        if kind in ("no_logprobs", "off_label") and status == 200:
            try:
                data = orjson.loads(body)
                for choice in data.get("choices") or []:
                    if kind == "no_logprobs":
                        choice["logprobs"] = None
                    else:
                        self._off_label(choice)
                body = orjson.dumps(data)
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                pass  # not a completion: pass it on unchanged
        return web.Response(body=body, status=status, headers={"Content-Type": content_type})

    @staticmethod
    def _off_label(choice: dict[str, Any]) -> None:
        content = (choice.get("logprobs") or {}).get("content") or []
        if not content:
            return
        first = content[0]
        first["token"] = OFF_LABEL_TOKENS[0]
        first["bytes"] = list(OFF_LABEL_TOKENS[0].encode())
        tops = first.get("top_logprobs") or []
        for i, top in enumerate(tops):
            token = OFF_LABEL_TOKENS[i % len(OFF_LABEL_TOKENS)] + ("" if i < len(OFF_LABEL_TOKENS) else str(i))
            top["token"] = token
            top["bytes"] = list(token.encode())
        if isinstance(choice.get("message"), dict):
            choice["message"]["content"] = OFF_LABEL_TOKENS[0]

    @staticmethod
    def _reset(request: web.Request) -> None:
        """Close the client's connection with a TCP RST (SO_LINGER 0), not a clean FIN."""
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def _forward(self, request: web.Request) -> tuple[int, str, bytes] | None:
        assert self._session is not None
        url = self.upstream + "/" + request.match_info["tail"]
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        try:
            async with self._session.request(request.method, url, params=request.query, headers=headers,
                                             data=await request.read()) as resp:
                return resp.status, resp.headers.get("Content-Type", "application/json"), await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None


def _parse_kinds(spec: str | None) -> dict[str, float]:
    """`rate_limit,server_error:2,timeout:0.5` -> weights; None/empty -> every kind, weight 1."""
    if not spec:
        return _default_kinds()
    kinds: dict[str, float] = {}
    for part in spec.split(","):
        name, _, weight = part.strip().partition(":")
        if name:
            kinds[name] = float(weight) if weight else 1.0
    return kinds


def _parse_args(argv: list[str]) -> tuple[str, FaultConfig, str, int]:
    parser = argparse.ArgumentParser(prog="python -m streams.localdev.fault_proxy",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True,
                        help="base URL of the real endpoint, e.g. http://127.0.0.1:8090/v1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--kinds", help=f"comma-separated KIND[:WEIGHT]; default all of {','.join(FAULT_KINDS)}")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="how long a `timeout` fault holds a request")
    parser.add_argument("--retry-after-s", type=float, default=0.1)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    config = FaultConfig(fault_rate=args.fault_rate, kinds=_parse_kinds(args.kinds), timeout_s=args.timeout_s,
                         seed=args.seed, retry_after_s=args.retry_after_s)
    return args.upstream, config, args.host, args.port


async def _serve(upstream: str, config: FaultConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FaultProxy(upstream, config, host, port) as proxy:
        print(f"fault proxy listening on {proxy.base_url} -> {proxy.upstream}", flush=True)
        await stop.wait()


def main(argv: list[str]) -> int:
    """Serve until SIGINT/SIGTERM; exit 2 on a bad flag value."""
    try:
        upstream, config, host, port = _parse_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(upstream, config, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
