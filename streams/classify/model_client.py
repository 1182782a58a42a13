"""The model call: one chat completion with first-token logprobs through `openai.AsyncOpenAI`.

Works against any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama). Retries with
exponential backoff and jitter, honouring Retry-After, are the openai client's own (`max_retries`).
What comes back is reduced to plain data so the statistics never see an SDK object.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import openai

from streams.errors import ModelError
from streams.tasks import ModelEndpoint, Task


@dataclass(frozen=True, slots=True)
class ModelReply:
    top_logprobs: list[tuple[str, float]] | None  # None when the endpoint returned no logprobs
    chosen_token: str | None
    chosen_logprob: float | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model: str


class ModelClient:
    """One `AsyncOpenAI` per endpoint, shared by every in-flight call (its pool allows 1000 connections)."""

    def __init__(self, timeout_s: float, max_retries: int) -> None:
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._clients: dict[tuple[str, str | None], openai.AsyncOpenAI] = {}

    def _client(self, endpoint: ModelEndpoint) -> openai.AsyncOpenAI:
        key = (endpoint.base_url, endpoint.api_key_env)
        client = self._clients.get(key)
        if client is None:
            client = openai.AsyncOpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.api_key(),
                timeout=self._timeout_s,
                max_retries=self._max_retries,
            )
            self._clients[key] = client
        return client

    async def first_token(self, task: Task, text: str) -> ModelReply:
        """Ask for one token with its top logprobs; raise ModelError once retries are spent."""
        endpoint = task.model
        started = time.perf_counter()
        try:
            resp = await self._client(endpoint).chat.completions.create(
                model=endpoint.name,
                messages=task.prompt.messages(text),  # type: ignore[arg-type]
                max_tokens=1,
                temperature=endpoint.temperature,
                logprobs=True,
                top_logprobs=endpoint.top_logprobs,
            )
        except openai.APIStatusError as exc:
            raise ModelError("http_status", f"endpoint answered HTTP {exc.status_code} after retries") from None
        except openai.APITimeoutError:
            raise ModelError("timeout", f"no answer within {self._timeout_s:g}s after retries") from None
        except openai.APIConnectionError:
            raise ModelError("connection", "could not connect to the model endpoint after retries") from None
        except (openai.OpenAIError, ValueError) as exc:
            raise ModelError("bad_response", f"unusable response: {type(exc).__name__}") from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        if not resp.choices:
            raise ModelError("bad_response", "response has no choices")
        choice = resp.choices[0]
        content = choice.logprobs.content if choice.logprobs is not None else None
        top: list[tuple[str, float]] | None = None
        chosen_token = chosen_lp = None
        if content:
            first = content[0]
            chosen_token, chosen_lp = first.token, float(first.logprob)
            top = [(t.token, float(t.logprob)) for t in (first.top_logprobs or [])] or None
        usage = resp.usage
        return ModelReply(
            top_logprobs=top,
            chosen_token=chosen_token,
            chosen_logprob=chosen_lp,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_ms=latency_ms,
            model=endpoint.name,
        )

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
