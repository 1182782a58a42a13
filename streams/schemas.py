"""The JSON Schemas of the topic payloads (schemas/*.schema.json), loaded by short name.

`jsonschema` is a test dependency only, so it is imported inside the functions that need it:
importing this module costs nothing in the worker. Validators assert `format` (date-time included,
checked here without the optional rfc3339 package), so a malformed timestamp fails validation.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, FormatChecker

#: The repository's schemas/ directory, next to the streams/ package.
SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"

SCHEMA_NAMES = (
    "classification_request",
    "classification_result",
    "review_item",
    "feedback",
    "dead_letter",
    "calibrator",
    "labelled_example",
    "drift_alert",
    "drift_summary",
    "drift_baseline",
    "drift_status",
    "review_queue_alert",
    "answer_cache_entry",
)

#: Schemas of payloads that go elsewhere than a topic (the review-queue alert goes to a webhook).
NON_TOPIC_SCHEMAS = ("review_queue_alert",)

#: Logical topic name (as in streams.settings.TOPIC_NAMES) -> schema of its values.
SCHEMA_FOR_TOPIC = {
    "requests": "classification_request",
    "results": "classification_result",
    "review": "review_item",
    "feedback": "feedback",
    "deadletter": "dead_letter",
    "calibrators": "calibrator",
    "examples": "labelled_example",
    "alerts": "drift_alert",
    "drift_summaries": "drift_summary",
    "baselines": "drift_baseline",
    "drift_status": "drift_status",
    "answer_cache": "answer_cache_entry",
}

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def schema_path(name: str) -> Path:
    """Path of the schema file for a short name; KeyError names the known ones."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no schema named {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    return SCHEMAS_DIR / f"{name}.schema.json"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema document (cached; do not mutate it)."""
    schema: dict[str, Any] = json.loads(schema_path(name).read_text(encoding="utf-8"))
    return schema


def _is_datetime(value: object) -> bool:
    """RFC 3339 date-time: the shape by regex, the field ranges by datetime.fromisoformat."""
    if not isinstance(value, str):
        return True  # format applies to strings only
    if not _RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


@cache
def _format_checker() -> FormatChecker:
    from jsonschema import Draft202012Validator, FormatChecker

    checker = FormatChecker()
    checker.checkers.update(Draft202012Validator.FORMAT_CHECKER.checkers)
    if "date-time" not in checker.checkers:
        checker.checks("date-time")(_is_datetime)
    return checker


@cache
def validator(name: str) -> Draft202012Validator:
    """A Draft 2020-12 validator for the named schema, asserting formats (cached per name)."""
    from jsonschema import Draft202012Validator

    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=_format_checker())


def validate(name: str, record: Any) -> None:
    """Raise jsonschema.ValidationError (the most relevant error) if record does not match the schema."""
    from jsonschema.exceptions import best_match

    error = best_match(validator(name).iter_errors(record))
    if error is not None:
        raise error
