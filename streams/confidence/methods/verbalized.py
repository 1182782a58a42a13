"""Verbalised confidence: the model states a label and a probability (`streams/confidence/verbalized.py`
holds the prompt and the parser). Needs nothing beyond a chat endpoint."""

from __future__ import annotations

from streams.confidence import verbalized as verb
from streams.confidence.methods.base import Call, CapsOf, MethodResult
from streams.confidence.names import VERBALIZED
from streams.tasks import Task


class Verbalized:
    name = VERBALIZED

    def supported(self, task: Task, caps_of: CapsOf) -> bool:
        return caps_of(task.model) is not None

    async def run(self, call: Call, task: Task, text: str, request_id: str) -> MethodResult:
        pol = task.confidence
        msgs = verb.messages(task.prompt.messages(text), task.answers,
                             pol.verbalized_instruction or verb.DEFAULT_INSTRUCTION)
        s = await call.client.chat(task.model, msgs, max_tokens=pol.verbalized_max_tokens, temperature=0.0,
                                   task=task.name)
        res = MethodResult(self.name, None, 0.0, "ambiguous")
        res.add_cost(s)
        v = verb.parse(s.texts[0], task.answers)
        if v.probabilities is not None:
            res.raw, res.label_mass, res.reason = v.probabilities, 1.0, None
        return res
