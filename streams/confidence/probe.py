"""Capability probe: what an endpoint + model really does, measured with a few calls, not assumed.

Many endpoints accept `logprobs=true` and silently return none, or return constant values; some
ignore `temperature`, `seed` or `n`. The probe asks, through the same `ModelClient` as the worker:

- `logprobs`, `top_logprobs`: two different prompts, `max_tokens=1`, `top_logprobs=20`: both must return
  top-k lists of finite logprobs <= 0 that are not all equal and differ between the prompts;
  `top_logprobs` is the longest list returned
- `continuation`: a prefilled assistant turn "A B C ... W X": the top next token must be "Y" (the endpoint
  continued the given text, so it can score a given continuation token by token)
- `echo`: legacy completions with `echo=true, logprobs=1`: prompt tokens must come back with logprobs
- `temperature`: 4 samples at temperature 1.5 of "Write one random word:" must not all be equal
- `seed`: the same seed twice at temperature 1.5 must give the same text (only meaningful when `temperature`
  holds)
- `n`, `max_n`: `n` = 8, 4, 2 in turn: the first that returns that many choices is `max_n` (1 when none does)

It also reports, per task, the labels whose answers share a first token
(`streams/confidence/collisions.py`) and exits 2 for a task the worker would refuse at start.

About ten calls per endpoint. Results are cached per (base URL, model): in the worker's memory for
`ttl_s` (re-probed after that, and a failed probe is retried after `retry_s`), and on disk for the
`python -m streams probe` command, which prints them (`--refresh` probes again).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from streams.classify.model_client import ChatSample, ModelClient
from streams.confidence.capabilities import Capabilities
from streams.confidence.collisions import collision_problems, collisions
from streams.confidence.methods import choose_method, task_endpoints
from streams.errors import ConfigError, ModelError
from streams.settings import Settings
from streams.tasks import ModelEndpoint, TaskRegistry, load_tasks

PROBE_PROMPTS = ("Is the sky blue on a clear day? Answer yes or no.", "Name a colour:")
ALPHABET = "A B C D E F G H I J K L M N O P Q R S T U V W X"
RANDOM_PROMPT = "Write one random word:"


def logprobs_usable(tops: Sequence[Sequence[tuple[str, float]] | None]) -> tuple[bool, str]:
    """Do these top-k lists (one per probe prompt) look like real logprobs? (verdict, why not)."""
    if any(not t for t in tops):
        return False, "no logprobs returned"
    for t in tops:
        values = [lp for _, lp in t]  # type: ignore[union-attr]
        if not all(math.isfinite(v) and v <= 1e-3 for v in values):
            return False, "logprobs not finite or above 0"
        if len(values) > 1 and max(values) - min(values) < 1e-9:
            return False, "constant logprobs within a top-k list"
    if len(tops) > 1 and all(list(t) == list(tops[0]) for t in tops[1:]):  # type: ignore[arg-type]
        return False, "identical top-k for different prompts (constant logprobs)"
    return True, ""


async def probe_endpoint(client: ModelClient, endpoint: ModelEndpoint) -> Capabilities:
    """Measure one endpoint. Model errors of single checks count as 'not supported' and are noted."""
    notes: list[str] = []
    calls = 0

    async def ask(messages: list[dict[str, str]], what: str = "call", **kw: Any) -> ChatSample | None:
        nonlocal calls
        calls += 1
        try:
            return await client.chat(endpoint, messages, **kw)
        except ModelError as exc:
            notes.append(f"{what}: {exc.kind}: {exc.message}"[:200])
            return None

    replies = [await ask([{"role": "user", "content": p}], max_tokens=1, temperature=0.0, top_logprobs=20)
               for p in PROBE_PROMPTS]
    if all(r is None for r in replies):
        raise ModelError("probe_failed", "the endpoint answered none of the probe calls; " + "; ".join(notes[-2:]))
    tops = [r.top_logprobs if r is not None else None for r in replies]
    logprobs, why = logprobs_usable(tops)
    if not logprobs:
        notes.append(f"logprobs: {why}")
    top_k = max((len(t) for t in tops if t), default=0) if logprobs else 0

    continuation = False
    if logprobs:
        r = await ask([{"role": "user", "content": "Recite the alphabet."},
                       {"role": "assistant", "content": ALPHABET}], max_tokens=1, temperature=0.0, top_logprobs=5)
        if r is not None and r.top_logprobs:
            best = max(r.top_logprobs, key=lambda t: t[1])[0]
            continuation = best.replace("\u2581", " ").replace("\u0120", " ").strip().casefold() == "y"
        if not continuation:
            notes.append("continuation: a prefilled assistant turn is not continued")

    echo = await _probe_echo(client, endpoint, notes)
    calls += 1

    max_n = 1
    for n in (8, 4, 2):
        r = await ask([{"role": "user", "content": RANDOM_PROMPT}], f"n={n}", max_tokens=2, temperature=1.0, n=n)
        if r is not None and len(r.texts) == n:
            max_n = n
            break
    samples: list[str] = []
    if max_n >= 4:
        r = await ask([{"role": "user", "content": RANDOM_PROMPT}], max_tokens=4, temperature=1.5, n=4, seed=11)
        samples = list(r.texts) if r is not None else []
    else:
        for s in range(4):
            r = await ask([{"role": "user", "content": RANDOM_PROMPT}], max_tokens=4, temperature=1.5, seed=100 + s)
            if r is not None:
                samples.append(r.texts[0])
    temperature = len(set(samples)) > 1
    seed = False
    if temperature:
        twice = [await ask([{"role": "user", "content": RANDOM_PROMPT}], max_tokens=4, temperature=1.5, seed=7)
                 for _ in range(2)]
        seed = all(r is not None for r in twice) and twice[0].texts[0] == twice[1].texts[0]  # type: ignore[union-attr]
    else:
        notes.append("temperature: samples at 1.5 were all identical")
    return Capabilities(endpoint.base_url, endpoint.name, logprobs, top_k, continuation, echo, temperature, seed,
                        max_n > 1, max_n, datetime.now(UTC).isoformat(timespec="seconds"), tuple(notes), calls)


async def _probe_echo(client: ModelClient, endpoint: ModelEndpoint, notes: list[str]) -> bool:
    """Legacy completions with echo: do prompt tokens come back with logprobs? One call, no retries."""
    import openai

    try:
        resp = await client._client(endpoint, probe=True).completions.create(
            model=endpoint.name, prompt="The cat sat on the mat", max_tokens=1, echo=True, logprobs=1, temperature=0)
        lp = resp.choices[0].logprobs if resp.choices else None
        tokens = getattr(lp, "tokens", None) or []
        values = getattr(lp, "token_logprobs", None) or []
        ok = len(tokens) >= 3 and len(values) == len(tokens) and "cat" in "".join(tokens)
    except (openai.OpenAIError, ValueError, TypeError, AttributeError, IndexError) as exc:
        notes.append(f"echo: {type(exc).__name__}")
        return False
    if not ok:
        notes.append("echo: prompt logprobs not returned")
    return ok


class ProbeCache:
    """Probe results per (base URL, model): measured once, reused, re-measured after `ttl_s`."""

    def __init__(self, client: ModelClient, ttl_s: float = 3600.0, retry_s: float = 30.0,
                 prober: Callable[[ModelClient, ModelEndpoint], Awaitable[Capabilities]] = probe_endpoint,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.ttl_s, self.retry_s, self.prober, self.clock = client, ttl_s, retry_s, prober, clock
        self.results: dict[tuple[str, str], tuple[float, Capabilities]] = {}
        self._failed: dict[tuple[str, str], float] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def get(self, endpoint: ModelEndpoint, refresh: bool = False) -> Capabilities | None:
        """The endpoint's capabilities, probing when absent or stale; None while the endpoint cannot be probed."""
        key = (endpoint.base_url, endpoint.name)
        hit = self.results.get(key)
        now = self.clock()
        if hit is not None and not refresh and now - hit[0] < self.ttl_s:
            return hit[1]
        if not refresh and now < self._failed.get(key, -math.inf):
            return hit[1] if hit else None
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self.results.get(key)
            if hit is not None and not refresh and self.clock() - hit[0] < self.ttl_s:
                return hit[1]
            try:
                caps = await self.prober(self.client, endpoint)
            except ModelError:
                self._failed[key] = self.clock() + self.retry_s
                return hit[1] if hit else None
            self.results[key] = (self.clock(), caps)
            return caps


# ---- the `probe` command ------------------------------------------------------------------------


def cache_file() -> Path:
    from streams.localdev.model_server import cache_dir

    return cache_dir() / "probe.json"


def _load_file(path: Path) -> dict[str, Any]:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}


def render(caps: Capabilities) -> str:
    yn = {True: "yes", False: "no"}
    return "\n".join([
        f"endpoint {caps.base_url}  model {caps.model}  (probed {caps.probed_at}, {caps.calls} calls)",
        (f"  logprobs {yn[caps.logprobs]} (top_logprobs {caps.top_logprobs})   continuation {yn[caps.continuation]}"
         f"   echo {yn[caps.echo]}"),
        f"  temperature {yn[caps.temperature]}   seed {yn[caps.seed]}   n {yn[caps.n]} (max {caps.max_n})",
        *(f"  note: {n}" for n in caps.notes),
    ])


def main(argv: list[str]) -> int:

    parser = argparse.ArgumentParser(prog="python -m streams probe", description=__doc__.splitlines()[0])
    parser.add_argument("--task", help="only this task's endpoints (default: every task)")
    parser.add_argument("--refresh", action="store_true", help="probe again even when a cached result exists")
    parser.add_argument("--max-age-s", type=float, default=3600.0, help="cached results older than this are re-probed")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--cache", type=Path, default=None, help="cache file (default: the cache directory)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        registry = load_tasks(settings.tasks_file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen_tasks = [t for t in registry.tasks.values() if args.task in (None, t.name)]
    if not chosen_tasks:
        print(f"error: task {args.task!r} is not in the task file", file=sys.stderr)
        return 2
    path = args.cache or cache_file()
    stored = _load_file(path)
    client = ModelClient(settings.model_timeout_s, settings.model_max_retries)

    async def run() -> dict[str, Capabilities]:
        out: dict[str, Capabilities] = {}
        try:
            for task in chosen_tasks:
                for ep in task_endpoints(task):
                    key = f"{ep.base_url} {ep.name}"
                    if key in out:
                        continue
                    old = stored.get(key)
                    if old and time.time() - float(old.get("_stored", 0)) < args.max_age_s and not args.refresh:
                        out[key] = Capabilities.from_json({k: v for k, v in old.items() if k != "_stored"})
                        continue
                    out[key] = await probe_endpoint(client, ep)
                    stored[key] = out[key].to_json() | {"_stored": time.time()}
        finally:
            await client.close()
        return out

    try:
        found = asyncio.run(run())
    except ModelError as exc:
        print(f"error: {exc.kind}: {exc.message}", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(stored, option=orjson.OPT_INDENT_2))
    choices = {}
    for task in chosen_tasks:
        method, why = choose_method(task, lambda ep: found.get(f"{ep.base_url} {ep.name}"))
        groups, how = collisions(task)
        choices[task.name] = {"methods": list(task.confidence.methods), "chosen": method, "why": why,
                              "first_token_collisions": [list(g) for g in groups], "collisions_by": how}
    refused = collision_problems(TaskRegistry({t.name: t for t in chosen_tasks}, registry.source))
    if args.json:
        print(orjson.dumps({"endpoints": {k: v.to_json() for k, v in found.items()}, "tasks": choices},
                           option=orjson.OPT_INDENT_2).decode())
    else:
        for caps in found.values():
            print(render(caps))
        for name, c in choices.items():
            print(f"task {name}: methods {c['methods']} -> {c['chosen']} ({c['why']})")
            for group in c["first_token_collisions"]:
                print(f"  answers sharing a first token ({c['collisions_by']}): {', '.join(group)}")
        print(f"(cached in {path})")
    for problem in refused:  # the worker would refuse these tasks at start (streams/confidence/collisions.py)
        print(f"error: {problem}", file=sys.stderr)
    return 2 if refused else 0
