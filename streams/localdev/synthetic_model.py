"""A synthetic OpenAI-compatible chat model, a stand-in for a remote model in load and fault tests only.

It answers `POST /v1/chat/completions` instantly (or after a configured latency) with one token and a
fixed, known logprob distribution, so benchmarks measure the worker rather than a model, and tests can
provoke latency, rate limiting (HTTP 429), missing logprobs and chosen labels (`[[label=NAME]]` in the last
user message). A call whose text holds `[[hang]]` is never answered: a server stuck on one request.
When the prompt lists options with codes (the "Options" block `streams.tasks.option_list` renders), it answers
with the codes: a label's mass, and a `[[label=NAME]]` marker, go to that label's code tokens instead.
The demo uses the real local model (`serve-model`), never this.

Run it with `python -m streams synthetic-model --latency-ms 50 --max-concurrency 64`; latency is fixed plus
uniform jitter by default, or `--latency-dist lognormal|exponential` (mean `--latency-ms`). Two modes stand
in for what bounds a real deployment (`streams.localdev.serving_limits`): `--slots N`, a self-hosted server
decoding N requests at once with the rest queued (`POST /control {"slots": M}` changes N mid-run), and
`--rpm R --tpm T`, a hosted API's per-minute budgets, answered with 429 + Retry-After when exceeded and
OpenAI's `x-ratelimit-*` headers on every answer (`--burst-s S`: each budget holds S seconds of refill, 60 by
default; `/stats` counts the 429s, `rate_limited`, and the tokens metered for the calls let through).

Like a real server it keeps a prefix cache, reduced to what its usage reports: a prompt's tokens (here the
whitespace-separated words of the last user message, which is also what `prompt_tokens` counts) that some
earlier prompt to the same model began with are reported as `usage.prompt_tokens_details.cached_tokens`, as
OpenAI and vLLM report them (`PrefixCache`; `prefix_cache=False` reports none, like a server without one).

`GET /stats` also counts the bearer tokens the completions calls carried, by SHA-256 only (`bearer_sha256`;
"none" for a call without one), so a test can prove a key reached the endpoint without the key being stored.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import random
import re
import signal
import sys
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from streams.localdev.serving_limits import Budget, Slots, duration

MARKER = re.compile(r"\[\[label=([^\]]+)\]\]")
#: The option list a task with codes puts in its prompt ("Options (...):" then "CODE) name[: description]").
OPTIONS_HEADER = re.compile(r"^Options\b.*:$", re.MULTILINE)
OPTION_LINE = re.compile(r"^([A-Za-z0-9]{1,4})\) (.+?)(?:: .*)?$")
HANG = "[[hang]]"
# Where the mass not given to labels goes: tokens a real model emits when it drifts off the label set.
FILLERS: tuple[tuple[str, float], ...] = (("the", 0.5), ("<", 0.3), ("\n", 0.2))
BARE_SHARE = 0.8  # share of a label's mass on "label"; the rest goes to " label", as real tokenisers split it
MAX_TOP_LOGPROBS = 20
LATENCY_DISTS = ("uniform", "lognormal", "exponential")


@dataclass
class SyntheticConfig:
    """What the fake model answers and how slowly; validated up front so a typo fails at start, not mid-test."""

    labels: list[str] = field(default_factory=lambda: ["fresh", "rotten"])
    label_probs: list[float] = field(default_factory=lambda: [0.7, 0.3])
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    #: "uniform": latency_ms +/- latency_jitter_ms; "lognormal": mean latency_ms, standard deviation
    #: latency_jitter_ms (a long right tail, like a real serving stack); "exponential": mean latency_ms.
    latency_dist: str = "uniform"
    max_concurrency: int = 0  # 0 = unlimited; beyond it requests get HTTP 429
    #: Capacity mode: decoding slots (0 = unlimited). Requests beyond them queue, as on vLLM or llama.cpp.
    slots: int = 0
    #: Rate-limited mode: requests and tokens per minute (0 = no limit), as a hosted API meters them.
    rpm: float = 0.0
    tpm: float = 0.0
    #: Seconds of refill each budget holds: 60, a minute's budget at once; 1, the limit enforced per second.
    burst_s: float = 60.0
    logprobs: bool = True  # False mimics providers that drop logprobs: the response has `logprobs: null`
    seed: int | None = None
    force_prob: float = 0.95  # probability of the label named by a `[[label=NAME]]` marker
    model: str = "synthetic"
    #: Report the prompt's leading tokens an earlier prompt shared as cached (`PrefixCache`); False: no cache report.
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not self.labels:
            problems.append("labels must not be empty")
        if len(self.label_probs) != len(self.labels):
            problems.append(f"label_probs has {len(self.label_probs)} values for {len(self.labels)} labels")
        if any(p < 0 for p in self.label_probs) or sum(self.label_probs) > 1 + 1e-9:
            problems.append("label_probs must be non-negative and sum to at most 1")
        if not 0 < self.force_prob <= 1:
            problems.append("force_prob must be in (0, 1]")
        if min(self.latency_ms, self.latency_jitter_ms, self.max_concurrency, self.slots, self.rpm, self.tpm) < 0:
            problems.append("latency_ms, latency_jitter_ms, max_concurrency, slots, rpm and tpm must be >= 0")
        if not self.burst_s > 0:
            problems.append("burst_s must be > 0")
        if self.latency_dist not in LATENCY_DISTS:
            problems.append(f"latency_dist must be one of {', '.join(LATENCY_DISTS)}")
        if problems:
            raise ValueError("; ".join(problems))

    def latency_s(self, rng: random.Random) -> float:
        """One call's delay, drawn from the configured distribution."""
        mean, spread = self.latency_ms, self.latency_jitter_ms
        if self.latency_dist == "lognormal" and mean > 0 and spread > 0:
            sigma2 = math.log1p((spread / mean) ** 2)
            return rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2)) / 1000
        if self.latency_dist == "exponential" and mean > 0:
            return rng.expovariate(1 / mean) / 1000
        return max(0.0, mean + rng.uniform(-spread, spread)) / 1000

    def distribution(self, forced: str | None = None, codes: dict[str, str] | None = None) -> list[tuple[str, float]]:
        """Token probabilities, most likely first; a forced label (even one outside `labels`) gets `force_prob`.
        With `codes` (label -> code, from the prompt's option list) each listed label is answered by its code."""
        if codes:
            labels = [codes.get(label, label) for label in self.labels]
            remapped = SyntheticConfig(labels, list(self.label_probs), force_prob=self.force_prob)
            return remapped.distribution(codes.get(forced, forced) if forced is not None else None)
        if forced is None:
            weights = dict(zip(self.labels, self.label_probs, strict=True))
        else:
            others = [label for label in self.labels if label != forced]
            weights = {label: (1 - self.force_prob) / 2 / len(others) for label in others} if others else {}
            weights[forced] = self.force_prob
        tokens: dict[str, float] = {}
        for label, p in weights.items():
            tokens[label] = tokens.get(label, 0.0) + p * BARE_SHARE
            tokens[" " + label] = tokens.get(" " + label, 0.0) + p * (1 - BARE_SHARE)
        rest = 1 - sum(weights.values())
        for token, share in FILLERS:
            tokens[token] = tokens.get(token, 0.0) + rest * share
        ranked = [(token, p) for token, p in tokens.items() if p > 1e-12]
        return sorted(ranked, key=lambda item: -item[1])


class PrefixCache:
    """The longest prefix of a prompt's tokens that an earlier prompt began with, as a prefix-caching server
    (llama.cpp's slots, vLLM's automatic prefix cache, OpenAI's prompt cache) reuses it.

    Every prefix of every prompt seen is kept as a chained hash of its tokens, so a lookup costs one hash per
    token. At least the last token is always evaluated (a server needs its logits), so a prompt seen before
    reports all but one of its tokens. Bounded: past `max_prefixes` the cache is emptied, as a server's fills
    and evicts; exact hit rates are not the point, a field that moves with the prompt's layout is.
    """

    def __init__(self, max_prefixes: int = 1_000_000) -> None:
        self.max_prefixes = max_prefixes
        self._seen: set[int] = set()

    def cached(self, model: str, tokens: list[str]) -> int:
        """How many leading tokens of this prompt were cached; then remember all its prefixes."""
        if len(self._seen) + len(tokens) > self.max_prefixes:
            self._seen.clear()
        h = hash(model)
        hit = 0
        for i, token in enumerate(tokens):
            h = hash((h, token))
            if hit == i and h in self._seen:
                hit = i + 1
            self._seen.add(h)
        return min(hit, max(len(tokens) - 1, 0))


def budget_cost(prompt_words: list[str], body: dict[str, Any]) -> int:
    """Tokens a request costs a token budget, as OpenAI meters a rate limit: the prompt (the whitespace-separated
    words of the last user message, `prompt_tokens`) plus the completion tokens asked for (`max_tokens`, 16 when
    unset). A client pacing itself exactly (bench/common.py's `ExactPacer`) counts the same way."""
    return len(prompt_words) + int(body.get("max_tokens") or 16)


def prompt_words(messages: Any) -> list[str]:
    """The prompt as the synthetic model counts it: the whitespace-separated words of the last user message."""
    return _last_user_text(messages).split()


def _last_user_text(messages: Any) -> str:
    """Text of the last user message; content may be a string or a list of OpenAI content parts."""
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def option_codes(messages: Any) -> dict[str, str]:
    """label -> code from the option list in any message (system or user); empty when the prompt has none."""
    codes: dict[str, str] = {}
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        header = OPTIONS_HEADER.search(content) if isinstance(content, str) else None
        if header is None or not isinstance(content, str):
            continue
        for line in content[header.end():].splitlines()[1:]:
            m = OPTION_LINE.match(line.strip())
            if m is None:
                break
            codes[m.group(2)] = m.group(1)
    return codes


def bearer_sha256(authorization: str | None) -> str:
    """SHA-256 (hex) of the token in an `Authorization: Bearer TOKEN` header; "none" when there is no header."""
    if authorization is None:
        return "none"
    scheme, _, token = authorization.partition(" ")
    return hashlib.sha256((token if scheme.lower() == "bearer" else authorization).encode()).hexdigest()


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json")


def _quantile_ms(ordered: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of sorted seconds, in milliseconds; None when there are none."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000.0, 3)


def _entry(token: str, prob: float) -> dict[str, Any]:
    return {"token": token, "logprob": math.log(prob), "bytes": list(token.encode())}


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error in OpenAI's shape, so the client raises its typed exception (RateLimitError, BadRequestError)."""
    return _json({"error": {"message": message, "type": kind, "param": None, "code": kind}}, status, headers)


class SyntheticModelServer:
    """The HTTP server; `async with SyntheticModelServer(config, port=0) as s:` then point a client at `s.base_url`."""

    def __init__(self, config: SyntheticConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SyntheticConfig()
        self.host = host
        self.port = port
        self._rng = random.Random(self.config.seed)
        self._runner: web.AppRunner | None = None
        self._requests = self._rejected = self._in_flight = self._max_in_flight = 0
        self._bearers: Counter[str] = Counter()  # SHA-256 of each bearer token seen -> calls; never the token
        self._slots = Slots(self.config.slots) if self.config.slots else None
        self._budgets = {kind: Budget(limit, burst_s=self.config.burst_s)
                         for kind, limit in (("requests", self.config.rpm), ("tokens", self.config.tpm)) if limit}
        self._rate_limited = 0
        self._metered_tokens = 0  # tokens the budget charged for the calls it let through
        #: (answered at, seconds from arrival to answer: queueing + service) of recent answers, for `/stats`.
        self._answered: deque[tuple[float, float]] = deque(maxlen=500_000)
        self._cache = PrefixCache() if self.config.prefix_cache else None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def stats(self, window_s: float | None = None) -> dict[str, Any]:
        """Counters that let a test prove calls overlapped (`max_in_flight_seen`) rather than trust timings, and
        which keys reached the endpoint (`bearer_sha256`: hash of each bearer token -> completions calls).
        `latency` is measured here, arrival to answer, over the answers of the last `window_s` seconds (all
        when None): the same point of measure for a benchmark's direct load and for a worker."""
        since = time.monotonic() - window_s if window_s is not None else -math.inf
        recent = sorted(s for at, s in self._answered if at >= since)
        return {
            "requests": self._requests,
            "rejected": self._rejected,
            "in_flight": self._in_flight,
            "max_in_flight_seen": self._max_in_flight,
            "slots": self._slots.capacity if self._slots else 0,
            "queued": self._slots.queued if self._slots else 0,
            "max_queued_seen": self._slots.max_queued if self._slots else 0,
            "rate_limited": self._rate_limited,
            "metered_tokens": self._metered_tokens,
            "latency": {"answers": len(recent), "p50_ms": _quantile_ms(recent, 0.5),
                        "p95_ms": _quantile_ms(recent, 0.95)},
            "bearer_sha256": dict(self._bearers),
        }

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/control", self._control)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])  # the real port when 0 asked for a free one

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SyntheticModelServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _stats(self, request: web.Request) -> web.Response:
        window = request.query.get("window_s")
        return _json(self.stats(float(window) if window else None))

    async def _control(self, request: web.Request) -> web.Response:
        """`{"slots": N}`: change the decoding slots mid-run (capacity mode only), as a benchmark needs."""
        body = orjson.loads(await request.read() or b"{}")
        slots = body.get("slots") if isinstance(body, dict) else None
        if self._slots is None or not isinstance(slots, int) or slots < 1:
            return _error(400, "invalid_request_error", "send {\"slots\": N >= 1} to a server started with --slots")
        self._slots.resize(slots)
        return _json({"slots": slots})

    def _ratelimit_headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for each metered budget."""
        headers = {}
        for kind, budget in self._budgets.items():
            headers[f"x-ratelimit-limit-{kind}"] = str(int(budget.limit))
            headers[f"x-ratelimit-remaining-{kind}"] = str(budget.remaining())
            headers[f"x-ratelimit-reset-{kind}"] = duration(budget.reset_s())
        return headers

    def _over_budget(self, tokens: int) -> web.Response | None:
        """A 429 with Retry-After when a budget cannot take this call now; else take it and return None."""
        need = {"requests": 1, "tokens": tokens}
        wait = max((b.wait_s(need[kind]) for kind, b in self._budgets.items()), default=0.0)
        if wait > 0:
            self._rate_limited += 1
            headers = self._ratelimit_headers() | {"Retry-After": str(max(1, math.ceil(wait))),
                                                   "retry-after-ms": str(math.ceil(wait * 1000))}
            return _error(429, "rate_limit_exceeded", f"rate limit reached: retry in {wait:.2f} s", headers)
        for kind, budget in self._budgets.items():
            budget.take(need[kind])
        self._metered_tokens += tokens
        return None

    async def _health(self, _: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _models(self, _: web.Request) -> web.Response:
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "synthetic"}
        return _json({"object": "list", "data": [model]})

    async def _completions(self, request: web.Request) -> web.Response:
        cfg = self.config
        self._bearers[bearer_sha256(request.headers.get("Authorization"))] += 1
        if cfg.max_concurrency and self._in_flight >= cfg.max_concurrency:
            self._rejected += 1
            return _error(429, "rate_limit_exceeded", "too many concurrent requests", {"Retry-After": "1"})
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        arrived = time.monotonic()
        try:
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                body = None
            if not isinstance(body, dict):
                return _error(400, "invalid_request_error", "body must be a JSON object")
            if body.get("stream"):
                return _error(400, "invalid_request_error", "streaming is not supported")
            text = _last_user_text(body.get("messages"))
            words = text.split()  # `prompt_words`, from the text needed below anyway
            prompt_tokens = len(words)
            if self._budgets:
                refused = self._over_budget(budget_cost(words, body))
                if refused is not None:
                    return refused
            if self._slots is not None:
                await self._slots.acquire()
            try:
                delay = cfg.latency_s(self._rng)
                if delay > 0:
                    await asyncio.sleep(delay)
                if HANG in text:
                    await asyncio.Event().wait()  # until the server stops
            finally:
                if self._slots is not None:
                    self._slots.release()
            marker = MARKER.search(text)
            ranked = cfg.distribution(marker.group(1) if marker else None, option_codes(body.get("messages")))
            response = self._completion(body, ranked, prompt_tokens)
            if self._cache is not None:  # looked up when answered, as a server fills its cache while it evaluates
                cached = self._cache.cached(str(body.get("model") or cfg.model), words)
                response["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
            self._requests += 1
            now = time.monotonic()
            self._answered.append((now, now - arrived))
            return _json(response, headers=self._ratelimit_headers() or None)
        finally:
            self._in_flight -= 1

    def _completion(self, body: dict[str, Any], ranked: list[tuple[str, float]], prompt_tokens: int) -> dict[str, Any]:
        """One-token chat.completion; the chosen token is the argmax, as with temperature 0."""
        token = ranked[0][0]
        logprobs = None
        if self.config.logprobs and body.get("logprobs"):
            top_n = max(0, min(int(body.get("top_logprobs") or 0), MAX_TOP_LOGPROBS))
            chosen = _entry(*ranked[0]) | {"top_logprobs": [_entry(t, p) for t, p in ranked[:top_n]]}
            logprobs = {"content": [chosen], "refusal": None}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or self.config.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": token},
                    "finish_reason": "length",
                    "logprobs": logprobs,
                }
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
        }


def _parse_args(argv: list[str]) -> tuple[SyntheticConfig, str, int]:
    parser = argparse.ArgumentParser(prog="python -m streams synthetic-model", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--labels", help="comma-separated, default fresh,rotten")
    parser.add_argument("--label-probs", help="comma-separated, one per label; default 0.7,0.3 or uniform")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0,
                        help="uniform: +/- this; lognormal: the standard deviation")
    parser.add_argument("--latency-dist", choices=LATENCY_DISTS, default="uniform")
    parser.add_argument("--max-concurrency", type=int, default=0, help="0 = unlimited; beyond it answer 429")
    parser.add_argument("--slots", type=int, default=0,
                        help="capacity mode: decoding slots; requests beyond them queue (0 = unlimited)")
    parser.add_argument("--rpm", type=float, default=0.0, help="rate-limited mode: requests per minute (0 = none)")
    parser.add_argument("--tpm", type=float, default=0.0, help="rate-limited mode: tokens per minute (0 = none)")
    parser.add_argument("--burst-s", type=float, default=60.0,
                        help="rate-limited mode: seconds of refill a budget holds (60: a minute's budget at once)")
    parser.add_argument("--no-logprobs", action="store_true", help="answer `logprobs: null`")
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="report no cached prompt tokens (a server without a prefix cache)")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    config = SyntheticConfig(
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        latency_dist=args.latency_dist,
        max_concurrency=args.max_concurrency,
        slots=args.slots,
        rpm=args.rpm,
        tpm=args.tpm,
        burst_s=args.burst_s,
        logprobs=not args.no_logprobs,
        seed=args.seed,
        prefix_cache=not args.no_prefix_cache,
    )
    if args.labels:
        config.labels = [label.strip() for label in args.labels.split(",") if label.strip()]
        config.label_probs = [1 / len(config.labels)] * len(config.labels)
    if args.label_probs:
        config.label_probs = [float(p) for p in args.label_probs.split(",")]
    config.__post_init__()
    return config, args.host, args.port


async def _serve(config: SyntheticConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SyntheticModelServer(config, host, port) as server:
        print(f"synthetic model listening on {server.base_url}", flush=True)
        await stop.wait()


def main(argv: list[str]) -> int:
    """Serve until SIGINT/SIGTERM; exit 2 on a bad flag value."""
    try:
        config, host, port = _parse_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(config, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
