"""The payloads' schema version and timestamps. A leaf module (standard library only), so every
record builder can import it without pulling in the classify path."""

from __future__ import annotations

from datetime import UTC, datetime

#: `schema_version` of every record this service writes (schemas/*.schema.json).
SCHEMA_VERSION = 1


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a `Z`."""
    return iso(datetime.now(UTC).timestamp())


def iso(ts: float) -> str:
    """A POSIX timestamp as ISO 8601 UTC with milliseconds and a `Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
