"""Whole-label sequence scoring: each label followed token by token with a prefilled assistant turn
(`streams/confidence/sequence_scoring.py` holds the arithmetic)."""

from __future__ import annotations

import asyncio

import numpy as np

from streams.confidence import sequence_scoring as seq
from streams.confidence.methods.base import Call, CapsOf, MethodResult
from streams.confidence.names import SEQUENCE_SCORES
from streams.tasks import Task

MAX_LABEL_TOKENS = 64  # a label longer than this is not a label


class SequenceScores:
    name = SEQUENCE_SCORES

    def supported(self, task: Task, caps_of: CapsOf) -> bool:
        caps = caps_of(task.model)
        return caps is not None and caps.logprobs and (caps.continuation or caps.echo)

    async def run(self, call: Call, task: Task, text: str, request_id: str) -> MethodResult:
        ep = task.model
        base = task.prompt.messages(text)
        res = MethodResult(self.name, None, 0.0, "no_logprobs")
        tops: dict[str, list[tuple[str, float]] | None] = {}

        async def top_at(prefix: str) -> list[tuple[str, float]] | None:
            if prefix not in tops:
                msgs = base + ([{"role": "assistant", "content": prefix}] if prefix else [])
                s = await call.client.chat(ep, msgs, max_tokens=1, temperature=0.0, top_logprobs=ep.top_logprobs,
                                           task=task.name)
                res.add_cost(s)
                tops[prefix] = s.top_logprobs
            return tops[prefix]

        paths = seq.start_paths(task.answers)
        first = await top_at("")
        if not first:
            return res
        topk_mass = float(np.exp(np.minimum([lp for _, lp in first], 0.0)).sum())
        for _ in range(MAX_LABEL_TOKENS):
            live = [p for p in paths if not p.done]
            if not live:
                break
            prefixes = sorted({p.prefix for p in live})
            fetched = await asyncio.gather(*(top_at(pre) for pre in prefixes))
            by_prefix = dict(zip(prefixes, fetched, strict=True))
            for p in live:
                top = by_prefix[p.prefix]
                if not top:
                    return res  # logprobs vanished mid-way: no scores rather than half of them
                seq.advance(p, top)
        scores = seq.combine(paths, topk_mass, task.confidence.length_normalization)
        res.raw, res.label_mass, res.reason = scores.probabilities, scores.label_mass, None
        res.chosen_logprob = float(scores.logprobs.max())
        return res
