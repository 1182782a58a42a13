"""Running a confidence method for one text against its endpoint, and choosing the method per task.

Every method returns a `MethodResult`: raw probabilities over the task's labels (before the method's
own calibrator), a label mass, and what it cost (requests, samples, tokens, time). The first-token
method is the classic path (`ModelClient.first_token` + `label_scores`); the others are here:

| method | calls per item | needs (probe) |
|---|---|---|
| `first_token_logprobs` | 1 | logprobs |
| `sequence_scores` | 1 + one per further token of each label (shared prefixes once) | logprobs + continuation |
| `self_consistency` | ceil(samples / n) requests, samples <= budget, adaptive | temperature |
| `verbalized` | 1 | nothing (any chat endpoint) |
| `ensemble` | the members' | every member's needs |
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from streams.classify.model_client import ChatSample, ModelClient
from streams.classify.probabilities import LabelMatcher, label_scores
from streams.confidence import ensemble as pooling
from streams.confidence import self_consistency as sc
from streams.confidence import sequence_scoring as seq
from streams.confidence import verbalized as verb
from streams.confidence.answers import answer_label
from streams.confidence.probe import Capabilities
from streams.tasks import ModelEndpoint, Task

FIRST_TOKEN = "first_token_logprobs"


@dataclass
class MethodResult:
    method: str
    raw: np.ndarray | None  # raw probabilities over the labels; None when the method could name none
    label_mass: float
    reason: str | None = None  # why raw is None: "no_logprobs" or "ambiguous"
    requests: int = 0
    samples: int | None = None  # model samples drawn (self-consistency)
    interval: tuple[float, float] | None = None  # 95% interval of the leading label's vote share
    ambiguous: bool = False
    settled: bool | None = None  # self-consistency: the stopping rule was met before the budget
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    chosen_logprob: float | None = None
    members: dict[str, list[float]] = field(default_factory=dict)  # ensemble: each member's calibrated p

    def add_cost(self, s: ChatSample) -> None:
        self.requests += 1
        self.prompt_tokens += s.prompt_tokens
        self.completion_tokens += s.completion_tokens
        self.latency_ms += s.latency_ms


def task_endpoints(task: Task) -> list[ModelEndpoint]:
    """The task's model and any other model its ensemble members name."""
    eps = [task.model]
    for m in task.confidence.ensemble_members:
        if m.model is not None and (m.model.base_url, m.model.name) not in {(e.base_url, e.name) for e in eps}:
            eps.append(m.model)
    return eps


def supports(method: str, caps: Capabilities | None) -> bool:
    """Whether a (non-ensemble) method can run on an endpoint with these capabilities."""
    if caps is None:
        return False
    if method == FIRST_TOKEN:
        return caps.logprobs
    if method == "sequence_scores":
        return caps.logprobs and (caps.continuation or caps.echo)
    if method == "self_consistency":
        return caps.temperature
    return method == "verbalized"


def choose_method(task: Task, caps_of: Callable[[ModelEndpoint], Capabilities | None]) -> tuple[str, str]:
    """(method, why): the first of the task's methods that its endpoint(s) support.

    A task with one method uses it without probing (the default keeps the first-token behaviour).
    When nothing is supported or the endpoint could not be probed, the first method is used, so its
    failure is visible on each item (e.g. review with `no_logprobs`) rather than hidden.
    """
    methods = task.confidence.methods
    if len(methods) == 1:
        return methods[0], "only method"
    if caps_of(task.model) is None:
        return methods[0], "endpoint not probed (unreachable); first method"
    for m in methods:
        if m == "ensemble":
            ok = all(supports(mb.method, caps_of(mb.model or task.model)) for mb in task.confidence.ensemble_members)
        else:
            ok = supports(m, caps_of(task.model))
        if ok:
            return m, "first supported"
    return methods[0], "none supported; first method"


def _seed(request_id: str, k: int) -> int:
    """A seed fixed by the request id, so a replayed request draws the same samples where seeds hold."""
    return int.from_bytes(hashlib.blake2b(f"{request_id}/{k}".encode(), digest_size=4).digest(), "big") & 0x7FFFFFFF


class ConfidenceRunner:
    def __init__(self, client: ModelClient) -> None:
        self.client = client
        self._matchers: dict[tuple[str, ...], LabelMatcher] = {}

    def matcher(self, labels: tuple[str, ...]) -> LabelMatcher:
        m = self._matchers.get(labels)
        if m is None:
            m = self._matchers[labels] = LabelMatcher(labels)
        return m

    async def run(self, task: Task, method: str, text: str, request_id: str,
                  caps_of: Callable[[ModelEndpoint], Capabilities | None] = lambda _: None,
                  calibrate: Callable[[str, np.ndarray], np.ndarray] | None = None) -> MethodResult:
        """Raises ModelError (from the client) when the endpoint fails after retries."""
        if method == FIRST_TOKEN:
            return await self.first_token(task, text)
        if method == "sequence_scores":
            return await self.sequence_scores(task, text)
        if method == "self_consistency":
            caps = caps_of(task.model)
            return await self.self_consistency(task, text, request_id, caps.max_n if caps else 1,
                                               caps.seed if caps else True)
        if method == "verbalized":
            return await self.verbalized(task, text)
        if method == "ensemble":
            return await self.ensemble(task, text, request_id, caps_of, calibrate)
        raise ValueError(f"unknown method {method!r}")

    async def first_token(self, task: Task, text: str) -> MethodResult:
        reply = await self.client.first_token(task, text)
        res = MethodResult(FIRST_TOKEN, None, 0.0, "no_logprobs", requests=1, prompt_tokens=reply.prompt_tokens,
                           completion_tokens=reply.completion_tokens, latency_ms=reply.latency_ms,
                           chosen_logprob=reply.chosen_logprob)
        if reply.top_logprobs is not None:
            s = label_scores(reply.top_logprobs, self.matcher(task.labels))
            res.raw, res.label_mass, res.reason = s.probabilities, s.label_mass, None
        return res

    async def sequence_scores(self, task: Task, text: str) -> MethodResult:
        ep = task.model
        base = task.prompt.messages(text)
        res = MethodResult("sequence_scores", None, 0.0, "no_logprobs")
        tops: dict[str, list[tuple[str, float]] | None] = {}

        async def top_at(prefix: str) -> list[tuple[str, float]] | None:
            if prefix not in tops:
                msgs = base + ([{"role": "assistant", "content": prefix}] if prefix else [])
                s = await self.client.chat(ep, msgs, max_tokens=1, temperature=0.0, top_logprobs=ep.top_logprobs)
                res.add_cost(s)
                tops[prefix] = s.top_logprobs
            return tops[prefix]

        paths = seq.start_paths(task.labels)
        first = await top_at("")
        if not first:
            return res
        topk_mass = float(np.exp(np.minimum([lp for _, lp in first], 0.0)).sum())
        for _ in range(64):  # a label longer than 64 tokens is not a label
            live = [p for p in paths if not p.done]
            if not live:
                break
            prefixes = sorted({p.prefix for p in live})
            fetched = await asyncio.gather(*(top_at(pre) for pre in prefixes))
            by_prefix = dict(zip(prefixes, fetched))
            for p in live:
                top = by_prefix[p.prefix]
                if not top:
                    return res  # logprobs vanished mid-way: no scores rather than half of them
                seq.advance(p, top)
        scores = seq.combine(paths, topk_mass, task.confidence.length_normalization)
        res.raw, res.label_mass, res.reason = scores.probabilities, scores.label_mass, None
        res.chosen_logprob = float(scores.logprobs.max())
        return res

    async def self_consistency(self, task: Task, text: str, request_id: str, max_n: int = 1,
                               seeds: bool = True) -> MethodResult:
        pol = task.confidence.self_consistency
        rule = sc.StoppingRule(pol.rule, pol.error_rate, pol.prior, pol.min_samples, pol.budget)
        res = MethodResult("self_consistency", None, 0.0, "ambiguous")
        tally = sc.VoteTally(len(task.labels))
        msgs = task.prompt.messages(text)
        per_call = max(1, min(pol.batch, max_n))
        want = max(rule.min_samples, per_call)
        k = 0
        while True:
            # one request per `per_call` samples; several requests in parallel when n is not honoured
            sizes = [min(per_call, want - i) for i in range(0, want, per_call)]
            replies = await asyncio.gather(*(
                self.client.chat(task.model, msgs, max_tokens=pol.max_tokens, temperature=pol.temperature,
                                 n=size, seed=_seed(request_id, k + j) if seeds else None)
                for j, size in enumerate(sizes)))
            k += len(sizes)
            for r, size in zip(replies, sizes):
                res.add_cost(r)
                for answer in r.texts[:size]:
                    tally.add(answer_label(answer, task.labels))
            d = sc.decide(tally.counts, rule)
            if d.stop:
                break
            want = min(per_call, rule.budget - tally.n)
        s = sc.summary(tally.counts, pol.prior)
        res.samples = tally.n
        res.settled = tally.n < rule.budget or d.error_bound <= rule.error_rate
        res.ambiguous = s.ambiguous
        res.interval = s.interval
        res.label_mass = s.label_mass
        if s.probabilities is not None and not s.ambiguous:
            res.raw, res.reason = s.probabilities, None
        return res

    async def verbalized(self, task: Task, text: str) -> MethodResult:
        pol = task.confidence
        msgs = verb.messages(task.prompt.messages(text), task.labels,
                             pol.verbalized_instruction or verb.DEFAULT_INSTRUCTION)
        s = await self.client.chat(task.model, msgs, max_tokens=pol.verbalized_max_tokens, temperature=0.0)
        res = MethodResult("verbalized", None, 0.0, "ambiguous")
        res.add_cost(s)
        v = verb.parse(s.texts[0], task.labels)
        if v.probabilities is not None:
            res.raw, res.label_mass, res.reason = v.probabilities, 1.0, None
        return res

    async def ensemble(self, task: Task, text: str, request_id: str,
                       caps_of: Callable[[ModelEndpoint], Capabilities | None],
                       calibrate: Callable[[str, np.ndarray], np.ndarray] | None) -> MethodResult:
        """Members run concurrently; each member's probabilities go through its own calibrator first."""
        members = task.confidence.ensemble_members
        runs = []
        for mb in members:
            sub = task if mb.model is None else replace(task, model=mb.model)
            runs.append(self.run(sub, mb.method, text, request_id, caps_of))
        results = await asyncio.gather(*runs)
        res = MethodResult("ensemble", None, 0.0, "no_logprobs")
        probs, weights, masses = [], [], []
        for mb, r in zip(members, results):
            res.requests += r.requests
            res.prompt_tokens += r.prompt_tokens
            res.completion_tokens += r.completion_tokens
            res.latency_ms = max(res.latency_ms, r.latency_ms)  # concurrent: the slowest member's time
            if r.raw is None:
                continue
            key = mb.method if mb.model is None else f"{mb.method}@{mb.model.name}"
            p = calibrate(key, r.raw) if calibrate is not None else r.raw
            res.members[key] = [round(float(v), 6) for v in p]
            probs.append(p)
            weights.append(mb.weight)
            masses.append(r.label_mass)
        if len(probs) < len(members):  # a member gave no scores: pool nothing rather than a biased subset
            res.reason = next(r.reason for r in results if r.raw is None)
            return res
        res.raw = pooling.pool(probs, weights, task.confidence.ensemble_pooling)
        res.label_mass = float(np.average(masses, weights=weights)) if sum(weights) > 0 else float(np.mean(masses))
        res.reason = None
        return res


async def score_rows(task: Task, rows: list[tuple[str, str, str]], concurrency: int, client: ModelClient,
                     method: str, caps: Capabilities | None = None) -> list[dict]:
    """Raw label probabilities of labelled rows (id, text, label) by one method, as the worker computes
    them (for `calibrate --method` and the benchmarks). Ensemble members are pooled uncalibrated here."""
    from streams.calibration.scoring import Progress
    from streams.errors import ModelError

    runner = ConfidenceRunner(client)
    slots = asyncio.Semaphore(concurrency)
    progress = Progress(len(rows), f"scoring with {task.model.name} ({method})")

    async def one(rid: str, text: str, label: str) -> dict:
        async with slots:
            try:
                r = await runner.run(task, method, text, rid, lambda _: caps)
                error = None
            except ModelError as exc:
                r, error = None, f"{exc.kind}: {exc.message}"
        progress.step()
        if r is None or r.raw is None:
            return {"id": rid, "label": label, "method": method,
                    "error": error or (r.reason if r is not None else "no scores")}
        out = {"id": rid, "label": label, "method": method, "label_mass": r.label_mass,
               "raw_probabilities": dict(zip(task.labels, r.raw.tolist())), "requests": r.requests}
        if r.samples is not None:
            out["samples"] = r.samples
        return out

    return list(await asyncio.gather(*(one(*row) for row in rows)))
