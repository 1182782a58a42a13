"""First-token logprobs: one call with `max_tokens=1` and the top-k logprobs, renormalised over the
labels (`streams/classify/probabilities.py`). The default method."""

from __future__ import annotations

from streams.classify.probabilities import LabelMatcher, label_scores
from streams.confidence.methods.base import Call, CapsOf, MethodResult
from streams.confidence.names import FIRST_TOKEN
from streams.tasks import Task


class FirstToken:
    name = FIRST_TOKEN

    def __init__(self) -> None:
        self._matchers: dict[tuple[str, ...], LabelMatcher] = {}

    def supported(self, task: Task, caps_of: CapsOf) -> bool:
        caps = caps_of(task.model)
        return caps is not None and caps.logprobs

    def matcher(self, labels: tuple[str, ...]) -> LabelMatcher:
        m = self._matchers.get(labels)
        if m is None:
            m = self._matchers[labels] = LabelMatcher(labels)
        return m

    async def run(self, call: Call, task: Task, text: str, request_id: str) -> MethodResult:
        reply = await call.client.first_token(task, text)
        res = MethodResult(self.name, None, 0.0, "no_logprobs", requests=1, prompt_tokens=reply.prompt_tokens,
                           completion_tokens=reply.completion_tokens, cached_tokens=reply.cached_tokens,
                           latency_ms=reply.latency_ms, chosen_logprob=reply.chosen_logprob)
        if reply.top_logprobs is not None:
            s = label_scores(reply.top_logprobs, self.matcher(task.answers))
            res.raw, res.label_mass, res.reason = s.probabilities, s.label_mass, None
        return res
