"""Confidence methods: one registry, one runner, one choice rule.

| method | calls per item | needs (probe) |
|---|---|---|
| `first_token_logprobs` | 1 | logprobs |
| `sequence_scores` | 1 + one per further token of each label (shared prefixes once) | logprobs + continuation |
| `self_consistency` | ceil(samples / n) requests, samples <= budget, adaptive | temperature |
| `verbalized` | 1 | nothing (any chat endpoint) |
| `ensemble` | the members' | every member's needs |

Each method is a small object in its own module; `METHODS` maps names to them. The worker's classify
path, the calibrate command's scorer and the benchmarks all call `MethodRunner.run`.
"""

from __future__ import annotations

from streams.classify.model_client import ModelClient
from streams.confidence.methods.base import Calibrate, Call, CapsOf, Method, MethodResult
from streams.confidence.methods.ensemble import Ensemble
from streams.confidence.methods.first_token import FirstToken
from streams.confidence.methods.self_consistency import SelfConsistency, sample_seed
from streams.confidence.methods.sequence_scores import SequenceScores
from streams.confidence.methods.verbalized import Verbalized
from streams.confidence.names import ENSEMBLE, MEMBER_METHODS, METHOD_NAMES
from streams.tasks import ModelEndpoint, Task

__all__ = ["METHODS", "Calibrate", "CapsOf", "Method", "MethodResult", "MethodRunner", "choose_method",
           "no_caps", "sample_seed", "task_endpoints"]

_MEMBERS: dict[str, Method] = {m.name: m for m in (FirstToken(), SequenceScores(), SelfConsistency(), Verbalized())}
METHODS: dict[str, Method] = {**_MEMBERS, ENSEMBLE: Ensemble(_MEMBERS)}
if tuple(_MEMBERS) != MEMBER_METHODS or tuple(METHODS) != METHOD_NAMES:
    raise ImportError("every method named in streams.confidence.names needs exactly one implementation here")


def no_caps(endpoint: ModelEndpoint) -> None:
    """No probe results: methods run with conservative defaults (n = 1, seeds sent)."""
    return None


def task_endpoints(task: Task) -> list[ModelEndpoint]:
    """The task's model and any other model its ensemble members name."""
    eps = [task.model]
    for m in task.confidence.ensemble_members:
        if m.model is not None and (m.model.base_url, m.model.name) not in {(e.base_url, e.name) for e in eps}:
            eps.append(m.model)
    return eps


def choose_method(task: Task, caps_of: CapsOf) -> tuple[str, str]:
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
        if METHODS[m].supported(task, caps_of):
            return m, "first supported"
    return methods[0], "none supported; first method"


class MethodRunner:
    """Runs any method for one text through one `ModelClient` (whose observer counts every call)."""

    def __init__(self, client: ModelClient) -> None:
        self.client = client

    async def run(self, task: Task, method: str, text: str, request_id: str, caps_of: CapsOf = no_caps,
                  calibrate: Calibrate | None = None) -> MethodResult:
        """Raises ModelError (from the client) when the endpoint fails after retries. The method runs on the task as
        this request sees it (`Task.for_request`: its option order and codes), the one place that is decided."""
        impl = METHODS.get(method)
        if impl is None:
            raise ValueError(f"unknown confidence method {method!r}; one of {list(METHODS)}")
        return await impl.run(Call(self.client, self, caps_of, calibrate), task.for_request(request_id), text,
                              request_id)
