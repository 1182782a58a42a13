"""streams.classify.requests.parse_request: raw bytes -> ClassificationRequest or a typed BadRequest."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.classify.requests import ERROR_TYPES, MAX_ID_CHARS, ClassificationRequest, parse_request
from streams.errors import BadRequest
from streams.tasks import TaskRegistry, parse_tasks

TASKS_TOML = """
[[task]]
name = "sentiment"
labels = ["fresh", "rotten"]
[task.model]
base_url = "http://127.0.0.1:8080/v1"
name = "m"

[[task]]
name = "spam"
labels = ["ham", "junk"]
[task.model]
base_url = "http://127.0.0.1:8080/v1"
name = "m"
"""

MAX_TEXT = 100


@pytest.fixture(scope="module")
def tasks() -> TaskRegistry:
    return parse_tasks(TASKS_TOML, "test", env={})


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def valid(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": "req-1", "task": "sentiment", "text": "A lovely film."}
    doc.update(overrides)
    return doc


def bad(raw: bytes | None, tasks: TaskRegistry, max_text: int = MAX_TEXT) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_request(raw, tasks, max_text)
    assert info.value.error_type in ERROR_TYPES
    return info.value


# --- valid requests -------------------------------------------------------------------------------


def test_valid_request_round_trips(tasks: TaskRegistry) -> None:
    doc = valid(metadata={"source": "web", "n": 3, "nested": {"a": [1, 2]}}, created_at="2024-05-01T12:00:00Z")
    req = parse_request(dumps(doc), tasks, MAX_TEXT)
    assert req == ClassificationRequest(
        id="req-1",
        task="sentiment",
        text="A lovely film.",
        metadata={"source": "web", "n": 3, "nested": {"a": [1, 2]}},
        created_at="2024-05-01T12:00:00Z",
    )


def test_valid_request_optional_fields_default_to_none(tasks: TaskRegistry) -> None:
    req = parse_request(dumps(valid(task="spam")), tasks, MAX_TEXT)
    assert (req.id, req.task, req.text, req.metadata, req.created_at) == (
        "req-1", "spam", "A lovely film.", None, None,
    )


def test_explicit_null_metadata_is_accepted(tasks: TaskRegistry) -> None:
    req = parse_request(dumps(valid(metadata=None, created_at=None)), tasks, MAX_TEXT)
    assert req.metadata is None and req.created_at is None


def test_text_exactly_at_limit_is_accepted(tasks: TaskRegistry) -> None:
    req = parse_request(dumps(valid(text="x" * MAX_TEXT)), tasks, MAX_TEXT)
    assert len(req.text) == MAX_TEXT


def test_id_exactly_max_chars_is_accepted(tasks: TaskRegistry) -> None:
    rid = "i" * MAX_ID_CHARS
    assert MAX_ID_CHARS == 256
    assert parse_request(dumps(valid(id=rid)), tasks, MAX_TEXT).id == rid


def test_unicode_text_is_accepted_unchanged(tasks: TaskRegistry) -> None:
    text = (
        "Loved it \U0001F600\U0001F3AC\U0001F44D\U0001F3FD "  # emoji incl. skin-tone modifier
        "e\u0301 n\u0303 a\u0308\u0301 "  # combining marks
        "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \u202eRTL\u202c "  # Hebrew, Arabic, RTL override
        "\u4e2d\u6587 \U0001F468\u200d\U0001F469\u200d\U0001F467"  # CJK, ZWJ family
    )
    req = parse_request(dumps(valid(text=text)), tasks, 1000)
    assert req.text == text
    assert req.text.encode("utf-8") == text.encode("utf-8")


# --- error types ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, b""])
def test_empty_message(tasks: TaskRegistry, raw: bytes | None) -> None:
    err = bad(raw, tasks)
    assert err.error_type == "empty_message"
    assert err.request_id is None


@pytest.mark.parametrize("raw", [b"\xff", b'{"id": "a\xff"}', b"\xc3\x28",
                                 b'{"id":"x","task":"sentiment","text":"\xed\xa0\x80"}'])
def test_invalid_utf8(tasks: TaskRegistry, raw: bytes) -> None:
    err = bad(raw, tasks)
    assert err.error_type == "invalid_utf8"
    assert err.request_id is None


def test_invalid_utf8_message_names_byte_position(tasks: TaskRegistry) -> None:
    err = bad(b"ab\xff", tasks)
    assert "byte 2" in err.message


@pytest.mark.parametrize("raw", [b"{bad", b"{", b"not json", b'{"id": "a",}', b"NaN", b'{"id": 1e999999}'])
def test_invalid_json(tasks: TaskRegistry, raw: bytes) -> None:
    err = bad(raw, tasks)
    assert err.error_type == "invalid_json"
    assert err.request_id is None


@pytest.mark.parametrize("raw", [b"[" * 5000, b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000])
def test_deeply_nested_json_is_invalid_json(tasks: TaskRegistry, raw: bytes) -> None:
    # Must be a BadRequest (no RecursionError or anything else escaping).
    err = bad(raw, tasks)
    assert err.error_type == "invalid_json"


@pytest.mark.parametrize("doc", [[1, 2], "a string", 42, None, True])
def test_non_object_json_is_invalid_field(tasks: TaskRegistry, doc: Any) -> None:
    err = bad(dumps(doc), tasks)
    assert err.error_type == "invalid_field"
    assert err.request_id is None


@pytest.mark.parametrize("missing", ["id", "task", "text"])
def test_missing_field(tasks: TaskRegistry, missing: str) -> None:
    doc = valid()
    del doc[missing]
    err = bad(dumps(doc), tasks)
    assert err.error_type == "missing_field"
    assert f"'{missing}'" in err.message
    assert err.request_id == (None if missing == "id" else "req-1")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"id": 7}, "id"),
        ({"id": True}, "id"),
        ({"id": None}, "id"),
        ({"task": 3}, "task"),
        ({"task": False}, "task"),
        ({"text": ["a", "b"]}, "text"),
        ({"text": {"t": 1}}, "text"),
        ({"metadata": "a string"}, "metadata"),
        ({"metadata": [1]}, "metadata"),
        ({"created_at": 1714560000}, "created_at"),
    ],
)
def test_wrongly_typed_field_is_invalid_field(tasks: TaskRegistry, override: dict[str, Any], field: str) -> None:
    err = bad(dumps(valid(**override)), tasks)
    assert err.error_type == "invalid_field"
    assert f"'{field}'" in err.message


@pytest.mark.parametrize("rid", ["", "x" * (MAX_ID_CHARS + 1)])
def test_id_length_out_of_range_is_invalid_field(tasks: TaskRegistry, rid: str) -> None:
    assert len(rid) in (0, 257)
    err = bad(dumps(valid(id=rid)), tasks)
    assert err.error_type == "invalid_field"
    assert "'id'" in err.message
    assert err.request_id is None


def test_unknown_task_names_known_tasks(tasks: TaskRegistry) -> None:
    err = bad(dumps(valid(id="r-9", task="nope")), tasks)
    assert err.error_type == "unknown_task"
    assert "'nope'" in err.message
    assert "known: sentiment, spam" in err.message
    assert err.request_id == "r-9"


def test_unknown_task_name_is_truncated_in_message(tasks: TaskRegistry) -> None:
    err = bad(dumps(valid(task="t" * 5000)), tasks)
    assert err.error_type == "unknown_task"
    assert "t" * 100 in err.message
    assert "t" * 101 not in err.message


def test_text_too_long_names_the_setting(tasks: TaskRegistry) -> None:
    err = bad(dumps(valid(id="long", text="x" * (MAX_TEXT + 1))), tasks)
    assert err.error_type == "text_too_long"
    assert "STREAMS_MAX_TEXT_CHARS" in err.message
    assert f"{MAX_TEXT + 1} characters" in err.message
    assert f"limit is {MAX_TEXT}" in err.message
    assert err.request_id == "long"


def test_text_length_counts_characters_not_bytes(tasks: TaskRegistry) -> None:
    text = "\U0001F600" * MAX_TEXT  # 100 characters, 400 UTF-8 bytes
    assert parse_request(dumps(valid(text=text)), tasks, MAX_TEXT).text == text


@pytest.mark.parametrize("text", ["", " ", "   \n\t ", "\u3000"])
def test_blank_text_is_invalid_field(tasks: TaskRegistry, text: str) -> None:
    err = bad(dumps(valid(text=text)), tasks)
    assert err.error_type == "invalid_field"
    assert "'text'" in err.message
    assert err.request_id == "req-1"


def test_request_id_set_when_readable_none_otherwise(tasks: TaskRegistry) -> None:
    assert bad(dumps(valid(id="abc", metadata="x")), tasks).request_id == "abc"
    assert bad(dumps(valid(id="abc", text=5)), tasks).request_id == "abc"
    assert bad(dumps(valid(id=5)), tasks).request_id is None
    assert bad(b"{bad", tasks).request_id is None


def test_every_error_type_is_reachable(tasks: TaskRegistry) -> None:
    inputs: list[bytes | None] = [
        None,
        b"\xff",
        b"{bad",
        dumps({"task": "sentiment", "text": "t"}),
        dumps([1]),
        dumps(valid(task="nope")),
        dumps(valid(text="x" * (MAX_TEXT + 1))),
    ]
    seen = {bad(raw, tasks).error_type for raw in inputs}
    assert seen == set(ERROR_TYPES)
