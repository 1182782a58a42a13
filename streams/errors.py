"""Typed errors, one per layer, so callers can tell a bad config from a bad message from a model fault."""

from __future__ import annotations


class ConfigError(ValueError):
    """Configuration (environment or task file) is invalid; each problem names what to fix."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


class BadRequest(ValueError):
    """A request that can never be classified as sent; it goes to the dead-letter topic."""

    def __init__(self, error_type: str, message: str, request_id: str | None = None) -> None:
        self.error_type = error_type
        self.message = message
        self.request_id = request_id
        super().__init__(f"{error_type}: {message}")


class ModelError(RuntimeError):
    """The model endpoint could not give a usable answer after retries."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(f"{kind}: {message}")
