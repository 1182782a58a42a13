"""The model call: one chat completion with first-token logprobs through `openai.AsyncOpenAI`.

Works against any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama). What comes back
is reduced to plain data so the statistics never see an SDK object. Three layers of protection, from
the inside out:

1. **The openai client's own retries** (`max_retries`) for 408/409/429/5xx answers, timeouts and
   connection errors: exponential backoff 0.5 s * 2^n capped at 8 s, minus up to 25 % jitter; a server
   delay is honoured instead when the answer carries `retry-after-ms` (milliseconds, preferred) or
   `Retry-After` (seconds, fractions accepted, or an HTTP date), if it is in (0, 120] s; above 120 s
   the client does not retry (`openai/_base_client.py`: `_parse_retry_after_header`,
   `_calculate_retry_timeout`, `_should_retry`).
2. **A retry loop here for unusable 200 answers** (truncated or non-JSON bodies, missing fields), which
   the openai client returns or raises without retrying: up to `max_retries` more calls with
   exponential backoff and full jitter (`uniform(0, min(8, 0.5 * 2^n))` s).
3. **A circuit breaker per endpoint** (`streams.classify.circuit`). Each call's outcome, after the
   openai client's retries, is recorded: 5xx, 408, 429, timeouts, connection errors and unusable
   bodies count as failures; other 4xx answers (bad request, auth) do not, since the endpoint is up.
   Default breaker (`breaker_factory` overrides it): opens at 10 failures among the last 20 outcomes,
   stays open 2 s, doubling after each failed probe up to 60 s, one probe at a time. While it is
   open, calls *wait* (jittered polling) instead of reaching the endpoint; that is back-pressure,
   since an item must never be dropped. In half-open, the admitted probe runs with no openai-level
   retries, so a still-broken endpoint costs one request; when it fails, its item goes back to
   waiting like the others. A call that cannot be admitted before its deadline
   (`timeout_s * (max_retries + 1)` from its start) raises `ModelError("circuit_open")`, which the
   service sends to review (`review_reason: model_error`) like any other model error.

`ModelClient.breakers` maps each endpoint's base URL to its breaker, for metrics (`snapshot()`).

**How many calls each endpoint gets at once is adapted** (`streams.classify.concurrency`): a gate per
endpoint admits at most its `AdaptiveLimit`, between `min_in_flight` and `max_in_flight`, learnt from each
call's latency and overload answers; calls beyond it wait in the worker, where waiting costs no call timeout
and no server queue. `ModelClient.gates` maps base URLs to gates. Overload is a 429, 503, 504 or 408 answer
to any of the call's HTTP requests (the openai client's retries included, seen by the response hook) or a
timeout at the end; other failures (500, 502, other 4xx and 5xx, connection errors, cancellation) are faults
that say nothing of capacity and are not observed. The latency observed is the last request's, from when it
was sent: the openai client's backoff before a retry and the failed requests before it are not the server's
queue.

**Calls are paced under the endpoint's budgets** (`streams.classify.pacing`): a `Pacer` per endpoint and
model (`ModelClient.pacers`) admits each HTTP attempt when this worker's share of the task file's
`requests_per_minute` / `tokens_per_minute` allows it and the server's last `x-ratelimit-*` headers say that
much remains; it waits before the concurrency gate, so waiting for budget holds no room there. The openai
client's own retries are paced too, and every answer's headers read, through the HTTP client's event hooks
(`_on_request`, `_on_response`), which find the attempt they belong to in a context variable. After a
usable answer the token estimate is corrected by the usage it reports. `set_share` sets the worker's part
of every budget (streams.classify.agents, on each rebalance). `pacing=False` only counts 429 answers.

**Every call is observed here** (`CallObserver`: the worker's Prometheus metrics): calls in flight,
time per call (retries and circuit waits included), errors by kind, tokens. Measured where calls are
made, so every confidence method's calls count, samples and continuations included, and canary and
probe calls too.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx2
import openai
import orjson
from opentelemetry.trace import SpanKind

from streams.classify.circuit import HALF_OPEN, CircuitBreaker
from streams.classify.concurrency import (
    FAULT,
    OVERLOAD,
    OVERLOAD_STATUSES,
    AdaptiveLimit,
    ConcurrencyGate,
    status_outcome,
)
from streams.classify.pacing import Pacer
from streams.errors import ModelError
from streams.ops.tracing import Tracing
from streams.settings import ENV_DEFAULTS
from streams.tasks import ModelEndpoint, Task

BAD_RESPONSE_BACKOFF_S = 0.5  # first backoff before re-asking after an unusable 200 answer (as openai's)
BAD_RESPONSE_MAX_BACKOFF_S = 8.0
CIRCUIT_POLL_S = 0.05  # how often a caller waiting on a half-open breaker looks again (plus jitter)


@dataclass(frozen=True, slots=True)
class ModelReply:
    top_logprobs: list[tuple[str, float]] | None  # None when the endpoint returned no logprobs
    chosen_token: str | None
    chosen_logprob: float | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model: str
    #: Prompt tokens the server reused from its prefix cache (part of prompt_tokens); 0 when it reports none.
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ChatSample:
    """A general chat completion reduced to plain data (`ModelClient.chat`)."""

    texts: tuple[str, ...]  # one per choice
    top_logprobs: list[tuple[str, float]] | None  # first generated position of the first choice, if asked
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model: str
    cached_tokens: int = 0  # prompt tokens served from the server's prefix cache (as ModelReply)


@dataclass(frozen=True, slots=True)
class Demand:
    """What a call asks of the endpoint's token budget: its prompt's characters (all messages) and the completion
    tokens it may use (`max_tokens` times `n`), which a hosted API meters when the request arrives."""

    prompt_chars: int
    max_tokens: int

    @classmethod
    def of(cls, messages: list[dict[str, str]], max_tokens: int, n: int = 1) -> Demand:
        return cls(sum(len(m.get("content") or "") for m in messages), max_tokens * max(1, n))


@dataclass(slots=True)
class _Attempt:
    """One `_call` under way, for the HTTP hooks: its pacer, the tokens each request is charged, how many requests
    were sent (more than one: the openai client retried) and how many were admitted and not yet answered."""

    pacer: Pacer
    tokens: int
    paced: bool
    sends: int = 0
    open: int = 0
    sent_at: float = 0.0  # when the last request was sent (perf_counter)
    overloaded: bool = False  # an answer said the server is full (429, 503) or did not answer in time (504, 408)


#: The attempt the current asyncio task is making; set by `ModelClient._paced` around `_call`.
_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("model_call_attempt", default=None)


async def _on_request(request: httpx2.Request) -> None:
    """httpx request hook: every request after an attempt's first is the openai client retrying; pace it too."""
    attempt = _ATTEMPT.get()
    if attempt is None:
        return
    attempt.sends += 1
    if attempt.sends > 1 and attempt.paced:
        await attempt.pacer.admit(attempt.tokens)
        attempt.open += 1
    attempt.sent_at = time.perf_counter()


async def _on_response(response: httpx2.Response) -> None:
    """httpx response hook: every answer, 429s the openai client retries included; its headers go to the pacer,
    and an overload status to the concurrency limit (at the end of the call)."""
    attempt = _ATTEMPT.get()
    if attempt is None:
        return
    if response.status_code in OVERLOAD_STATUSES:
        attempt.overloaded = True
    pacer = attempt.pacer
    if not attempt.paced:
        if response.status_code == 429:
            pacer.rate_limited += 1
        return
    if attempt.open:
        attempt.open -= 1
        pacer.done(attempt.tokens)  # before the headers: what the server says remains counts this request
    pacer.observe_headers(response.headers, response.status_code)


class CallObserver(Protocol):
    """Told about every model call; `task` is the task the call serves ("" for probes). `cached_tokens` is the
    part of `prompt_tokens` the server reused from its prefix cache, priced apart in the cost estimate."""

    def call_started(self, task: str) -> None: ...

    def call_finished(self, task: str, model: str, seconds: float, error: str | None,
                      prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> None: ...


class _Trouble(Exception):
    """An attempt failed; `error` is what to raise if no retry follows, `endpoint_fault` feeds the breaker."""

    def __init__(self, error: ModelError, endpoint_fault: bool, retry_here: bool = False) -> None:
        self.error = error
        self.endpoint_fault = endpoint_fault
        self.retry_here = retry_here  # retried by this class (bad bodies), not by the openai client


def _default_breaker() -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=10, window=20, open_for_s=2.0, half_open_max_calls=1, max_open_for_s=60.0)


class ModelClient:
    """One `AsyncOpenAI` per endpoint, shared by every in-flight call (its pool allows 1000 connections)."""

    def __init__(
        self,
        timeout_s: float,
        max_retries: int,
        *,
        breaker_factory: Callable[[], CircuitBreaker] | None = None,
        bad_response_backoff_s: float = BAD_RESPONSE_BACKOFF_S,
        circuit_poll_s: float = CIRCUIT_POLL_S,
        observer: CallObserver | None = None,
        tracing: Tracing | None = None,
        max_in_flight: int = int(ENV_DEFAULTS["STREAMS_MAX_IN_FLIGHT"]),
        min_in_flight: int = int(ENV_DEFAULTS["STREAMS_MIN_IN_FLIGHT"]),
        pacing: bool = True,
    ) -> None:
        self._timeout_s = timeout_s
        self._pacing = pacing
        self._share = 1.0  # this process's part of every endpoint's budget (`set_share`)
        self._in_flight_bounds = (min_in_flight, max_in_flight)
        self._max_retries = max_retries
        self._breaker_factory = breaker_factory or _default_breaker
        self._bad_response_backoff_s = bad_response_backoff_s
        self._circuit_poll_s = circuit_poll_s
        self.observer = observer
        self.tracing = tracing if tracing is not None else Tracing()
        self._clients: dict[tuple[str, str | None], openai.AsyncOpenAI] = {}
        self._probe_clients: dict[tuple[str, str | None], openai.AsyncOpenAI] = {}
        #: One breaker per endpoint base URL; `snapshot()` of each is JSON-able, for metrics.
        self.breakers: dict[str, CircuitBreaker] = {}
        #: One concurrency gate per endpoint base URL (its `limit.limit` is exported as a gauge).
        self.gates: dict[str, ConcurrencyGate] = {}
        #: One pacer per (base URL, model name): a hosted API meters each model apart. `snapshot()`, for metrics.
        self.pacers: dict[tuple[str, str], Pacer] = {}

    def _client(self, endpoint: ModelEndpoint, probe: bool = False) -> openai.AsyncOpenAI:
        key = (endpoint.base_url, endpoint.api_key_env)
        client = self._clients.get(key)
        if client is None:
            client = openai.AsyncOpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.api_key(),
                timeout=self._timeout_s,
                max_retries=self._max_retries,
                # openai's own aiohttp transport: about half the CPU per call of its default httpx2 one.
                http_client=openai.DefaultAioHttpClient(
                    timeout=self._timeout_s, event_hooks={"request": [_on_request], "response": [_on_response]}),
            )
            self._clients[key] = client
        if not probe:
            return client
        prober = self._probe_clients.get(key)
        if prober is None:  # same connection pool, no retries: a probe answers "is it back?" with one request
            prober = self._probe_clients[key] = client.with_options(max_retries=0)
        return prober

    def breaker(self, endpoint: ModelEndpoint) -> CircuitBreaker:
        breaker = self.breakers.get(endpoint.base_url)
        if breaker is None:
            breaker = self.breakers[endpoint.base_url] = self._breaker_factory()
        return breaker

    def gate(self, endpoint: ModelEndpoint) -> ConcurrencyGate:
        gate = self.gates.get(endpoint.base_url)
        if gate is None:
            low, high = self._in_flight_bounds
            gate = self.gates[endpoint.base_url] = ConcurrencyGate(AdaptiveLimit(low, high, initial=low))
        return gate

    def pacer(self, endpoint: ModelEndpoint) -> Pacer:
        key = (endpoint.base_url, endpoint.name)
        pacer = self.pacers.get(key)
        if pacer is None:
            pacer = self.pacers[key] = Pacer(endpoint.requests_per_minute, endpoint.tokens_per_minute,
                                             share=self._share)
        return pacer

    def set_share(self, share: float) -> None:
        """This process's part of every endpoint's budget, from now on (its share of the requests partitions)."""
        self._share = share
        for pacer in self.pacers.values():
            pacer.set_share(share)

    async def _admit(self, breaker: CircuitBreaker, deadline: float, last: ModelError | None) -> bool:
        """Wait until the breaker lets a call through; True when it is a half-open probe."""
        while not breaker.allow():
            now = time.monotonic()
            if now >= deadline:
                after = f"; last error {last.kind}: {last.message}" if last else ""
                raise ModelError("circuit_open", f"endpoint circuit still open after waiting {self.deadline_s:g}s"
                                 f"{after}")
            wait = breaker.retry_in() or self._circuit_poll_s
            wait *= 1 + 0.2 * random.random()  # callers do not all come back at the same instant
            await asyncio.sleep(min(wait, deadline - now))
        return breaker.state == HALF_OPEN

    @property
    def deadline_s(self) -> float:
        """How long one call may wait on an open circuit, counted from its start."""
        return self._timeout_s * (self._max_retries + 1)

    async def first_token(self, task: Task, text: str) -> ModelReply:
        """Ask for one token with its top logprobs; raise ModelError once retries are spent."""
        endpoint = task.model

        messages = task.prompt.messages(text)
        body = {"model": endpoint.name, "messages": messages, "max_tokens": 1,
                "temperature": endpoint.temperature, "logprobs": True, "top_logprobs": endpoint.top_logprobs}

        def create(client: openai.AsyncOpenAI) -> Any:
            # The per-request hot call: the client's generic POST (its retries, Retry-After, timeouts and
            # error types) without the typed-parameter transform and pydantic response models, which cost
            # more CPU than everything else a request does; the answer is read with orjson.
            return client.post("/chat/completions", body=body, cast_to=httpx2.Response)

        return await self._observed(task.name, endpoint, create,
                                    lambda resp, ms: _reply_doc(_json_body(resp), ms, endpoint.name),
                                    Demand.of(messages, 1))

    async def chat(self, endpoint: ModelEndpoint, messages: list[dict[str, str]], *, max_tokens: int,
                   temperature: float, n: int = 1, seed: int | None = None,
                   top_logprobs: int | None = None, task: str = "") -> ChatSample:
        """A general chat completion (sampling, prefilled continuation, verbalised answers), same protection
        as `first_token`: the openai client's retries, bad-body retries and the endpoint's breaker."""
        params: dict[str, Any] = {"model": endpoint.name, "messages": messages, "max_tokens": max_tokens,
                                  "temperature": temperature}
        if n > 1:
            params["n"] = n
        if seed is not None:
            params["seed"] = seed
        if top_logprobs is not None:
            params["logprobs"] = True
            params["top_logprobs"] = top_logprobs
        return await self._observed(task, endpoint, lambda client: client.chat.completions.create(**params),
                                    lambda resp, ms: _sample(resp, ms, endpoint.name),
                                    Demand.of(messages, max_tokens, n))

    async def _observed(self, task: str, endpoint: ModelEndpoint, create: Callable[[openai.AsyncOpenAI], Any],
                        parse: Callable[[Any, float], Any], demand: Demand) -> Any:
        if self.tracing.enabled:  # a span per call (each sample of self-consistency), under the request's span
            with self.tracing.span("model call", kind=SpanKind.CLIENT, task=task, model=endpoint.name):
                return await self._measured(task, endpoint, create, parse, demand)
        return await self._measured(task, endpoint, create, parse, demand)

    async def _measured(self, task: str, endpoint: ModelEndpoint, create: Callable[[openai.AsyncOpenAI], Any],
                        parse: Callable[[Any, float], Any], demand: Demand) -> Any:
        observer = self.observer
        if observer is None:
            return await self._with_retries(endpoint, create, parse, demand)
        observer.call_started(task)
        started = time.perf_counter()
        error: str | None = "internal"  # neither an answer nor a ModelError: a bug, reported as such
        reply: Any = None
        try:
            reply = await self._with_retries(endpoint, create, parse, demand)
            error = None
            return reply
        except ModelError as exc:
            error = exc.kind
            raise
        except asyncio.CancelledError:
            error = "cancelled"  # the worker stopped or lost the partition: not the endpoint's fault
            raise
        finally:
            observer.call_finished(task, endpoint.name, time.perf_counter() - started, error,
                                   reply.prompt_tokens if reply is not None else 0,
                                   reply.completion_tokens if reply is not None else 0,
                                   cached_tokens=reply.cached_tokens if reply is not None else 0)

    async def _with_retries(self, endpoint: ModelEndpoint, create: Callable[[openai.AsyncOpenAI], Any],
                            parse: Callable[[Any, float], Any], demand: Demand) -> Any:
        breaker = self.breaker(endpoint)
        deadline = time.monotonic() + self.deadline_s
        last: ModelError | None = None
        bad_tries = 0
        while True:
            probe = await self._admit(breaker, deadline, last)
            verdict = False
            failed: _Trouble
            try:
                reply = await self._paced(endpoint, demand, probe, create, parse)
                breaker.record_success()
                verdict = True
                return reply
            except _Trouble as trouble:
                if trouble.endpoint_fault:
                    breaker.record_failure()
                else:
                    breaker.record_success()  # the endpoint answered; the request was at fault
                verdict = True
                failed, last = trouble, trouble.error
            finally:
                if not verdict and probe:  # cancelled (or a bug): free the probe slot rather than wedge half-open
                    breaker.release()
            if failed.retry_here:
                bad_tries += 1
                cap = min(BAD_RESPONSE_MAX_BACKOFF_S, self._bad_response_backoff_s * 2 ** (bad_tries - 1))
                pause = random.uniform(0, cap)  # full jitter
                if bad_tries > self._max_retries or time.monotonic() + pause >= deadline:
                    raise ModelError(last.kind, f"{last.message} ({bad_tries} tries)")
                await asyncio.sleep(pause)
            elif not (probe and failed.endpoint_fault):
                raise last
            # A failed probe (sent without retries) re-opened the breaker: its item waits for the next
            # probe like every other caller, until the deadline, rather than going to review early.

    async def _paced(self, endpoint: ModelEndpoint, demand: Demand, probe: bool,
                     create: Callable[[openai.AsyncOpenAI], Any], parse: Callable[[Any, float], Any]) -> Any:
        """`_call` once the endpoint's budget allows it; then the token estimate corrected by the reported usage."""
        pacer = self.pacer(endpoint)
        attempt = _Attempt(pacer, pacer.estimate(demand.prompt_chars, demand.max_tokens), self._pacing)
        if attempt.paced:
            await pacer.admit(attempt.tokens)
            attempt.open = 1
        context = _ATTEMPT.set(attempt)
        try:
            reply = await self._call(endpoint, probe, create, parse)
        finally:
            _ATTEMPT.reset(context)
            for _ in range(attempt.open):  # not answered (a timeout, a refused connection, cancelled)
                pacer.done(attempt.tokens)
        if attempt.paced and reply.prompt_tokens > 0:  # servers that report no usage leave the estimate standing
            pacer.learn(demand.prompt_chars, reply.prompt_tokens)
            pacer.settle(attempt.tokens, reply.prompt_tokens + max(demand.max_tokens, reply.completion_tokens))
        return reply

    async def _call(self, endpoint: ModelEndpoint, probe: bool, create: Callable[[openai.AsyncOpenAI], Any],
                    parse: Callable[[Any, float], Any]) -> Any:
        gate = self.gate(endpoint)
        admitted = await gate.acquire()
        started = time.perf_counter()
        attempt = _ATTEMPT.get()
        outcome: str | None = FAULT  # until the exchange ends one way or another (cancelled: nothing learnt)
        try:
            resp: Any = await create(self._client(endpoint, probe))
            outcome = None
        except openai.APIStatusError as exc:
            status = exc.status_code
            trouble = status >= 500 or status in (408, 409, 429)
            outcome = status_outcome(status)  # 429, 503, 504, 408: overload; 500, 502, a 400: a fault
            raise _Trouble(ModelError("http_status", f"endpoint answered HTTP {status} after retries"),
                           trouble) from None
        except openai.APITimeoutError as exc:
            if _dropped_connection(exc):
                outcome = FAULT
                raise _Trouble(ModelError("connection", "the model endpoint dropped the connection after retries"),
                               True) from None
            outcome = OVERLOAD  # no answer in time
            raise _Trouble(ModelError("timeout", f"no answer within {self._timeout_s:g}s after retries"),
                           True) from None
        except openai.APIConnectionError:
            outcome = FAULT  # says nothing of the server's capacity
            raise _Trouble(ModelError("connection", "could not connect to the model endpoint after retries"),
                           True) from None
        except (openai.OpenAIError, ValueError) as exc:  # e.g. a truncated JSON body (JSONDecodeError)
            outcome = None  # answered in time: its latency counts
            raise _Trouble(ModelError("bad_response", f"unusable response: {type(exc).__name__}"),
                           True, retry_here=True) from None
        finally:
            if attempt is not None and attempt.overloaded:
                outcome = OVERLOAD  # a 429 or 503 the openai client retried, whatever came after
            # The last request's round trip: the openai client's backoff and failed requests before it are not
            # the server's queue (with 30% 500s and retries, a third of the answers would count a backoff).
            since = attempt.sent_at if attempt is not None and attempt.sends > 1 else started
            gate.release(admitted, time.perf_counter() - since, outcome)
        latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            return parse(resp, latency_ms)
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            raise _Trouble(ModelError("bad_response", f"unusable response: {exc}"[:300]),
                           True, retry_here=True) from None

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every endpoint's connection pool (left open, aiohttp warns of unclosed sessions at exit)."""
        for client in self._clients.values():
            await client.close()  # the probe clients share these connection pools
        self._clients.clear()
        self._probe_clients.clear()


def _dropped_connection(exc: BaseException) -> bool:
    """True when a 'timeout' is really a reset or disconnect.

    openai's aiohttp transport maps every aiohttp connection error, a reset included, to a connect
    timeout; the cause chain still holds what happened, and operators should read the right reason.
    """
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, (TimeoutError, asyncio.TimeoutError)):
            return False
        if isinstance(cause, aiohttp.ClientConnectionError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _json_body(resp: httpx2.Response) -> Any:
    """The JSON answer; a body that is not JSON is a bad response, named as such."""
    if resp.headers.get("content-type", "").split(";", 1)[0].strip().endswith("json"):
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"JSONDecodeError: {exc}") from None
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        raise TypeError("expected a chat completion, got str (a body that is not JSON)") from None


def _reply_doc(doc: Any, latency_ms: float, model: str) -> ModelReply:
    """Plain data out of a chat completion's JSON; raises on anything else."""
    if not isinstance(doc, dict):
        raise TypeError(f"expected a chat completion, got {type(doc).__name__}")
    choices = doc.get("choices")
    if not choices:
        raise ValueError("response has no choices")
    try:
        logprobs = choices[0].get("logprobs")
        content = logprobs.get("content") if logprobs is not None else None
        top: list[tuple[str, float]] | None = None
        chosen_token = chosen_lp = None
        if content:
            first = content[0]
            chosen_token, chosen_lp = str(first["token"]), float(first["logprob"])
            top = [(str(t["token"]), float(t["logprob"])) for t in (first.get("top_logprobs") or ())] or None
        usage = doc.get("usage")
        prompt_tokens = int(usage["prompt_tokens"]) if usage else 0
        completion_tokens = int(usage["completion_tokens"]) if usage else 0
    except KeyError as exc:
        raise ValueError(f"response lacks {exc}") from None
    cached = cached_prompt_tokens(usage, doc.get("timings"), prompt_tokens)
    return ModelReply(top, chosen_token, chosen_lp, prompt_tokens, completion_tokens, latency_ms, model, cached)


def cached_prompt_tokens(usage: Any, timings: Any, prompt_tokens: int) -> int:
    """How many of the prompt's tokens the server reused from its prefix cache, in whichever way it says so.

    - OpenAI, vLLM (with `--enable-prompt-tokens-details`) and current llama.cpp servers:
      `usage.prompt_tokens_details.cached_tokens`;
    - DeepSeek: `usage.prompt_cache_hit_tokens`;
    - older llama.cpp servers: only `timings.cache_n` (tokens of the slot's cache reused; `timings.prompt_n`
      are the ones evaluated, and the two add up to `usage.prompt_tokens`).

    0 when none of these is there. Clamped to [0, prompt_tokens]: the count only prices and reports the
    call, so a malformed or inconsistent one must not fail a classification (it is not a bad response) nor
    make the uncached remainder negative.
    """
    n: Any = None
    if isinstance(usage, dict):
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            n = details.get("cached_tokens")
        if n is None:
            n = usage.get("prompt_cache_hit_tokens")
    if n is None and isinstance(timings, dict):
        n = timings.get("cache_n")
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n != n:  # n != n: NaN
        return 0
    return max(0, min(int(n), prompt_tokens))


def _sample(resp: Any, latency_ms: float, model: str) -> ChatSample:
    if not isinstance(resp, openai.types.chat.ChatCompletion):
        raise TypeError(f"expected a chat completion, got {type(resp).__name__}")
    if not resp.choices:
        raise ValueError("response has no choices")
    first = resp.choices[0]
    content = first.logprobs.content if first.logprobs is not None else None
    top = None
    if content:
        top = [(str(t.token), float(t.logprob)) for t in (content[0].top_logprobs or [])] or None
    usage = resp.usage
    prompt_tokens = int(usage.prompt_tokens) if usage else 0
    cached = 0
    if usage is not None:  # the typed answer: details typed, DeepSeek's count and llama.cpp's timings as extras
        details = usage.prompt_tokens_details
        cached = cached_prompt_tokens(
            {"prompt_tokens_details": {"cached_tokens": details.cached_tokens} if details is not None else None,
             "prompt_cache_hit_tokens": (usage.model_extra or {}).get("prompt_cache_hit_tokens")},
            (resp.model_extra or {}).get("timings"), prompt_tokens)
    return ChatSample(
        texts=tuple(str(c.message.content or "") for c in resp.choices),
        top_logprobs=top,
        prompt_tokens=prompt_tokens,
        completion_tokens=int(usage.completion_tokens) if usage else 0,
        latency_ms=latency_ms,
        model=model,
        cached_tokens=cached,
    )
