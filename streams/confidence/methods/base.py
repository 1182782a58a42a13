"""What every confidence method shares: its result, what it may call, and the interface it implements.

A method is a small object (one per file in this package, as lm-polygraph's estimators): its `name`,
what it needs from an endpoint (`supported`, read from the capability probe) and how it turns one
text into raw label probabilities (`run`). The classify path, the calibrate command, ensembles and
the benchmarks all run methods through `MethodRunner`, so there is one request path for every method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from streams.classify.model_client import ChatSample, ModelClient
from streams.confidence.capabilities import Capabilities
from streams.tasks import ModelEndpoint, Task

if TYPE_CHECKING:
    from streams.confidence.methods import MethodRunner


@dataclass
class MethodResult:
    """Raw probabilities over the task's labels (before the method's calibrator) and what they cost."""

    method: str
    raw: np.ndarray | None  # None when the method could name no label
    label_mass: float
    reason: str | None = None  # why raw is None: "no_logprobs" or "ambiguous"
    requests: int = 0
    samples: int | None = None  # model samples drawn (self-consistency)
    interval: tuple[float, float] | None = None  # 95% interval of the leading label's vote share
    ambiguous: bool = False
    settled: bool | None = None  # self-consistency: the stopping rule was met before the budget
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # part of prompt_tokens the server reused from its prefix cache (priced apart)
    latency_ms: float = 0.0
    chosen_logprob: float | None = None
    members: dict[str, list[float]] = field(default_factory=dict)  # ensemble: each member's calibrated p

    def add_cost(self, s: ChatSample) -> None:
        self.requests += 1
        self.prompt_tokens += s.prompt_tokens
        self.completion_tokens += s.completion_tokens
        self.cached_tokens += s.cached_tokens
        self.latency_ms += s.latency_ms


CapsOf = Callable[[ModelEndpoint], Capabilities | None]
#: (member's method, member's model, raw probabilities) -> the member's calibrated probabilities (ensembles).
Calibrate = Callable[[str, str, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Call:
    """What one run may use: the client, the probed capabilities, member calibrators, and the runner
    itself (an ensemble runs its members through it)."""

    client: ModelClient
    runner: MethodRunner
    caps_of: CapsOf
    calibrate: Calibrate | None = None


class Method(Protocol):
    name: str

    def supported(self, task: Task, caps_of: CapsOf) -> bool:
        """Whether the task's endpoint(s), as probed, can run this method."""
        ...

    async def run(self, call: Call, task: Task, text: str, request_id: str) -> MethodResult:
        """Raw probabilities for one text; raises ModelError when the endpoint fails after retries."""
        ...
