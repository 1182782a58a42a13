"""What an endpoint + model was measured to support (`streams/confidence/probe.py` measures it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Capabilities:
    base_url: str
    model: str
    logprobs: bool
    top_logprobs: int
    continuation: bool
    echo: bool
    temperature: bool
    seed: bool
    n: bool
    max_n: int
    probed_at: str = ""
    notes: tuple[str, ...] = ()
    calls: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Capabilities:
        return cls(**{**d, "notes": tuple(d.get("notes", ()))})
