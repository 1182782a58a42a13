"""Adaptive self-consistency: sample answers until the stopping rule settles the majority label
(`streams/confidence/self_consistency.py` holds the rules and the vote summary)."""

from __future__ import annotations

import asyncio
import hashlib

from streams.confidence import self_consistency as sc
from streams.confidence.answers import answer_label
from streams.confidence.methods.base import Call, CapsOf, MethodResult
from streams.confidence.names import SELF_CONSISTENCY
from streams.tasks import Task


def sample_seed(request_id: str, k: int) -> int:
    """A seed fixed by the request id, so a replayed request draws the same samples where seeds hold."""
    return int.from_bytes(hashlib.blake2b(f"{request_id}/{k}".encode(), digest_size=4).digest(), "big") & 0x7FFFFFFF


class SelfConsistency:
    name = SELF_CONSISTENCY

    def supported(self, task: Task, caps_of: CapsOf) -> bool:
        caps = caps_of(task.model)
        return caps is not None and caps.temperature

    async def run(self, call: Call, task: Task, text: str, request_id: str) -> MethodResult:
        caps = call.caps_of(task.model)
        max_n, seeds = (caps.max_n, caps.seed) if caps is not None else (1, True)
        pol = task.confidence.self_consistency
        rule = sc.StoppingRule(pol.rule, pol.error_rate, pol.prior, pol.min_samples, pol.budget)
        res = MethodResult(self.name, None, 0.0, "ambiguous")
        tally = sc.VoteTally(len(task.labels))
        msgs = task.prompt.messages(text)
        per_call = max(1, min(pol.batch, max_n))
        want = max(rule.min_samples, per_call)
        k = 0
        while True:
            # one request per `per_call` samples; several requests in parallel when n is not honoured
            sizes = [min(per_call, want - i) for i in range(0, want, per_call)]
            replies = await asyncio.gather(*(
                call.client.chat(task.model, msgs, max_tokens=pol.max_tokens, temperature=pol.temperature,
                                 n=size, seed=sample_seed(request_id, k + j) if seeds else None, task=task.name)
                for j, size in enumerate(sizes)))
            k += len(sizes)
            for r, size in zip(replies, sizes, strict=True):
                res.add_cost(r)
                for answer in r.texts[:size]:
                    tally.add(answer_label(answer, task.answers))
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
