"""Ensembles: members (methods, optionally on other models) run concurrently through the same runner;
each member's probabilities pass through its own calibrator, then are pooled
(`streams/confidence/ensemble.py` holds the pooling)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from streams.confidence import ensemble as pooling
from streams.confidence.methods.base import Call, CapsOf, Method, MethodResult
from streams.confidence.names import ENSEMBLE
from streams.tasks import EnsembleMember, Task


def member_task(task: Task, member: EnsembleMember) -> Task:
    """The task as the member runs it: on the member's model when it names one."""
    return task if member.model is None else replace(task, model=member.model)


class Ensemble:
    """Pools the task's ensemble members; `members` maps each member method's name to its implementation."""

    name = ENSEMBLE

    def __init__(self, members: Mapping[str, Method]) -> None:
        self.members = members

    def supported(self, task: Task, caps_of: CapsOf) -> bool:
        return all(self.members[mb.method].supported(member_task(task, mb), caps_of)
                   for mb in task.confidence.ensemble_members)

    async def run(self, call: Call, task: Task, text: str, request_id: str) -> MethodResult:
        members = task.confidence.ensemble_members
        subs = [member_task(task, mb) for mb in members]
        results = await asyncio.gather(*(call.runner.run(sub, mb.method, text, request_id, call.caps_of)
                                         for sub, mb in zip(subs, members, strict=True)))
        res = MethodResult(self.name, None, 0.0, "no_logprobs")
        probs, weights, masses = [], [], []
        for sub, mb, r in zip(subs, members, results, strict=True):
            res.requests += r.requests
            res.prompt_tokens += r.prompt_tokens
            res.completion_tokens += r.completion_tokens
            res.cached_tokens += r.cached_tokens
            res.latency_ms = max(res.latency_ms, r.latency_ms)  # concurrent: the slowest member's time
            if r.raw is None:
                continue
            p = call.calibrate(mb.method, sub.model.name, r.raw) if call.calibrate is not None else r.raw
            res.members[f"{mb.method}@{sub.model.name}"] = [round(float(v), 6) for v in p]
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
