"""streams.client without a broker: request validation and ids, typed records, the dedup window, group
commits and reply routing (with stand-ins for the aiokafka consumer), and the README's example."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord

from streams import schemas
from streams.classify.requests import parse_request
from streams.client import (
    DeadLetter,
    DeadLettered,
    DedupWindow,
    InvalidRequest,
    OutcomeFilter,
    OutcomeStream,
    Result,
    ReviewItem,
    StreamsClient,
    _Waiter,
    new_request,
    parse_outcome,
    prepare_request,
    validate_request,
)
from streams.errors import BadRequest
from streams.settings import Settings
from streams.tasks import TaskRegistry, parse_tasks

REPO = Path(__file__).resolve().parents[2]

TASKS_TOML = """
[[task]]
name = "sentiment"
labels = ["fresh", "rotten"]
[task.model]
base_url = "http://127.0.0.1:8080/v1"
name = "m"
"""


@pytest.fixture(scope="module")
def tasks() -> TaskRegistry:
    return parse_tasks(TASKS_TOML, "test", env={})


# --------------------------------------------------------------------------- records for the tests


def result(rid: str, decision: str = "auto", label: str = "fresh", p: float = 0.91, **extra: Any) -> dict[str, Any]:
    probabilities = {label: p, "other": round(1 - p, 6)}
    record: dict[str, Any] = {
        "id": rid, "task": "sentiment", "label": label, "confidence": p,
        "probabilities": probabilities, "raw_probabilities": dict(probabilities),
        "entropy": 0.44, "label_mass": 0.98, "decision": decision,
        "method": "human" if decision == "human" else "first_token_logprobs", "model": "m",
        "calibrator_version": "identity-0", "usage": {"prompt_tokens": 10, "completion_tokens": 1},
        "latency_ms": 12.5, "metadata": {"ticket": 7}, "processed_at": "2026-11-23T16:10:00.000Z",
        "schema_version": 1, **extra}
    schemas.validate("classification_result", record)  # the stand-ins are what the worker really writes
    return record


def review(rid: str, reason: str = "low_confidence", **extra: Any) -> dict[str, Any]:
    record = result(rid, p=0.7) | {"decision": "review", "review_reason": reason, "text": f"text of {rid}", **extra}
    schemas.validate("review_item", record)
    return record


def dead(rid: str | None, offset: int, error_type: str = "unknown_task", stage: str = "validate") -> dict[str, Any]:
    record = {"id": rid, "error_type": error_type, "message": "task 'x' is not in the task file", "stage": stage,
              "source": {"topic": "classify.requests", "partition": 0, "offset": offset},
              "original_b64": "", "original_excerpt": "", "original_size": 0, "original_truncated": False,
              "failed_at": "2026-11-23T16:10:00.000Z", "schema_version": 1}
    schemas.validate("dead_letter", record)
    return record


# --------------------------------------------------------------------------- validation and ids


#: Requests the worker refuses, each with the error type it dead-letters them with.
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"id": "r", "task": "sentiment"}, "missing_field"),
    ({"id": "r", "text": "fine"}, "missing_field"),
    ({"id": "r", "task": "sentiment", "text": 3}, "invalid_field"),
    ({"id": "r", "task": "sentiment", "text": "   \n\t"}, "invalid_field"),
    ({"id": "r", "task": "sentiment", "text": ""}, "invalid_field"),
    ({"id": "", "task": "sentiment", "text": "fine"}, "invalid_field"),
    ({"id": "x" * 257, "task": "sentiment", "text": "fine"}, "invalid_field"),
    ({"id": 7, "task": "sentiment", "text": "fine"}, "invalid_field"),
    ({"id": "r", "task": True, "text": "fine"}, "invalid_field"),
    ({"id": "r", "task": "sentiment", "text": "fine", "metadata": [1]}, "invalid_field"),
    ({"id": "r", "task": "sentiment", "text": "fine", "created_at": 5}, "invalid_field"),
    ({"id": "r", "task": "nope", "text": "fine"}, "unknown_task"),
    ({"id": "r", "task": "sentiment", "text": "x" * 101}, "text_too_long"),
]


@pytest.mark.parametrize(("request_", "error_type"), REFUSED, ids=[e for _, e in REFUSED])
def test_the_client_refuses_what_the_worker_dead_letters_with_the_same_error(
        tasks: TaskRegistry, request_: dict[str, Any], error_type: str) -> None:
    with pytest.raises(BadRequest) as worker:
        parse_request(orjson.dumps(request_), tasks, 100)
    with pytest.raises(InvalidRequest) as client:
        validate_request(request_, tasks=tasks, max_text_chars=100)
    assert client.value.error_type == worker.value.error_type == error_type
    assert client.value.message == worker.value.message
    assert isinstance(client.value, ValueError)  # callers may catch ValueError or BadRequest


def test_what_the_client_accepts_the_worker_and_the_schema_accept(tasks: TaskRegistry) -> None:
    request = new_request("A lovely film.", "sentiment", metadata={"ticket": 1, "nested": {"a": [1, 2]}},
                          created_at="2026-01-01T00:00:00Z", source="web")
    raw = validate_request(request, tasks=tasks, max_text_chars=100)
    assert orjson.loads(raw) == request
    parsed = parse_request(raw, tasks, 100)
    assert (parsed.id, parsed.task, parsed.text, parsed.metadata) == (request["id"], "sentiment", "A lovely film.",
                                                                      {"ticket": 1, "nested": {"a": [1, 2]}})
    schemas.validate("classification_request", orjson.loads(raw))


def test_without_a_task_list_any_task_passes_but_every_other_rule_holds() -> None:
    validate_request({"id": "r", "task": "whatever", "text": "fine"})
    with pytest.raises(InvalidRequest, match="text_too_long"):
        validate_request({"id": "r", "task": "whatever", "text": "x" * 11}, max_text_chars=10)
    with pytest.raises(InvalidRequest) as info:
        validate_request({"id": "r", "task": "whatever", "text": "fine"}, tasks=["a", "b"])
    assert info.value.error_type == "unknown_task" and "known: a, b" in info.value.message
    validate_request({"id": "r", "task": "solo", "text": "fine"}, tasks="solo")  # one name, not its letters


def test_a_request_that_is_not_json_is_refused_before_it_leaves() -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_request({"id": "r", "task": "t", "text": "fine", "metadata": {"when": object()}})
    assert info.value.error_type == "invalid_field" and info.value.request_id == "r"
    with pytest.raises(InvalidRequest):
        validate_request({"id": "r", "task": "t", "text": "fine", "metadata": {1: "non-string key"}})


def test_an_id_is_generated_when_absent_and_kept_when_given() -> None:
    rid, raw = prepare_request({"task": "t", "text": "fine"})
    assert uuid.UUID(rid).version == 4 and orjson.loads(raw)["id"] == rid
    assert prepare_request({"id": None, "task": "t", "text": "fine"})[0] != rid  # None means "make one"
    assert prepare_request({"id": "mine", "task": "t", "text": "fine"})[0] == "mine"
    assert len({new_request("x", "t")["id"] for _ in range(1000)}) == 1000
    with pytest.raises(InvalidRequest):  # an empty id is a mistake to report, not one to paper over
        prepare_request({"id": "", "task": "t", "text": "fine"})


def test_a_bad_request_in_a_batch_stops_the_batch_before_anything_is_sent() -> None:
    client = StreamsClient("127.0.0.1:1")  # nothing listens there: any send would fail differently

    async def go() -> None:
        async with client:
            await client.publish_many([{"task": "t", "text": "good"}, {"task": "t", "text": " "}])

    with pytest.raises(InvalidRequest, match="empty or only whitespace"):
        asyncio.run(go())
    assert client._producer is None


def test_from_settings_takes_brokers_prefix_security_and_text_limit(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    settings = Settings.from_env({"STREAMS_BROKER": "kafka://k1:9092;kafka://k2:9093", "STREAMS_TOPIC_PREFIX": "dev.",
                                  "STREAMS_MAX_TEXT_CHARS": "50", "STREAMS_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                  "STREAMS_SASL_MECHANISM": "SCRAM-SHA-512", "STREAMS_SASL_USERNAME": "svc",
                                  "STREAMS_SASL_PASSWORD_FILE": str(secret)})
    client = StreamsClient.from_settings(settings, tasks=["sentiment"])
    assert client.bootstrap_servers == "k1:9092,k2:9093"
    assert client.topic("requests") == "dev.classify.requests" == settings.topic("requests")
    assert {client.topic(k) for k in ("results", "review", "deadletter")} == {
        settings.topic(k) for k in ("results", "review", "deadletter")}
    assert client.client_options == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                     "sasl_plain_username": "svc", "sasl_plain_password": "s3cret"}
    assert client.max_text_chars == 50
    with pytest.raises(InvalidRequest, match="text_too_long"):
        client.prepare({"task": "sentiment", "text": "x" * 51})
    assert StreamsClient("kafka://a:1").bootstrap_servers == "a:1"


# --------------------------------------------------------------------------- typed records


def test_records_become_typed_outcomes() -> None:
    r = parse_outcome("results", orjson.dumps(result("a")))
    assert isinstance(r, Result) and r.final
    assert (r.id, r.task, r.label, r.confidence, r.decision, r.review_reason, r.method, r.model) == (
        "a", "sentiment", "fresh", 0.91, "auto", None, "first_token_logprobs", "m")
    assert r.probabilities == {"fresh": 0.91, "other": 0.09} and r.metadata == {"ticket": 7}
    assert r.raw["calibrator_version"] == "identity-0"
    hash(r)  # frozen and hashable despite its dict fields

    item = parse_outcome("review", review("b", "model_error", model_error="timeout: no answer",
                                          label=None, confidence=None, probabilities={}))
    assert isinstance(item, ReviewItem) and not item.final
    assert (item.label, item.confidence, item.review_reason, item.text, item.audit) == (
        None, None, "model_error", "text of b", False)

    human = parse_outcome("results", result("b", "human", "rotten", reviewer="ann", review_reason="low_confidence"))
    assert isinstance(human, Result) and human.decision == "human" and human.review_reason == "low_confidence"

    d = parse_outcome("deadletter", dead("c", 42))
    assert isinstance(d, DeadLetter)
    assert (d.id, d.error_type, d.stage, d.source) == ("c", "unknown_task", "validate", ("classify.requests", 0, 42))


@pytest.mark.parametrize(("topic", "value"), [
    ("results", b"{not json"), ("results", b"[1]"), ("results", orjson.dumps(result("a") | {"decision": "review"})),
    ("review", orjson.dumps(result("a"))), ("results", orjson.dumps({"id": 5})), ("nope", b"{}"),
])
def test_what_is_not_an_outcome_raises_value_error(topic: str, value: bytes) -> None:
    with pytest.raises(ValueError):
        parse_outcome(topic, value)


# --------------------------------------------------------------------------- the dedup window


def test_duplicates_are_dropped() -> None:
    window = DedupWindow(10)
    assert window.admit("a") and window.admit("b")
    assert not window.admit("a") and not window.admit("b") and not window.admit("a")


def test_a_human_decision_supersedes_the_model_and_a_later_model_decision_is_dropped() -> None:
    window = DedupWindow(10)
    assert window.admit("a")  # the model's result or review item
    assert window.admit("a", human=True)  # the reviewer's final word, yielded again
    assert not window.admit("a", human=True)  # the human result replayed
    assert not window.admit("a")  # the model's decision replayed after the human one
    assert window.admit("b", human=True)  # a human decision for an id not seen (yet)
    assert not window.admit("b")  # the model's record arriving afterwards


def test_the_window_is_bounded_least_recently_seen_first() -> None:
    window = DedupWindow(3)
    for key in "abc":
        assert window.admit(key)
    assert not window.admit("a")  # seen again: now the most recent
    assert window.admit("d")  # evicts b, the least recently seen
    assert len(window) == 3 and "b" not in window and "a" in window
    assert window.admit("b")  # forgotten, so admitted again
    assert not window.admit("a") and not window.admit("d")
    big = DedupWindow(1000)
    for i in range(10_000):
        big.admit(i)
    assert len(big) == 1000
    with pytest.raises(ValueError):
        DedupWindow(0)


def test_the_filter_leaves_out_audit_copies_and_dead_letters_unless_asked() -> None:
    audit = parse_outcome("review", review("a", "audit", audit=True))
    auto = parse_outcome("results", result("a"))
    letter = parse_outcome("deadletter", dead("z", 1))
    plain = OutcomeFilter(10)
    assert not plain.admit(audit) and plain.admit(auto) and not plain.admit(letter)
    both = OutcomeFilter(10, include_audit=True, dead_letters=True)
    assert both.admit(audit) and both.admit(auto), "an audit copy is not the duplicate of its result"
    assert not both.admit(audit) and not both.admit(auto)
    assert both.admit(letter) and not both.admit(letter)
    assert both.admit(parse_outcome("deadletter", dead("z", 2))), "another refused message: news"
    # A reviewer's refused answer shares the id of the request's result; it is not its duplicate.
    assert both.admit(parse_outcome("deadletter", dead("a", 9, "unknown_label", "feedback")))
    off = OutcomeFilter(0, dead_letters=True)
    assert all(off.admit(o) for o in (auto, auto, letter, letter))


# --------------------------------------------------------------------------- the stream, with a stand-in consumer


class FakeConsumer:
    """What OutcomeStream uses of AIOKafkaConsumer: batches to hand out, commits recorded."""

    def __init__(self, batches: list[list[ConsumerRecord]]) -> None:
        self.batches = batches
        self.commits: list[dict[TopicPartition, int]] = []
        self.owned: set[TopicPartition] = set()
        self.stopped = False

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumerRecord]]:
        if not self.batches:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        for rec in self.batches.pop(0):
            out.setdefault(TopicPartition(rec.topic, rec.partition), []).append(rec)
        return out

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def stop(self) -> None:
        self.stopped = True


def rec(topic: str, partition: int, offset: int, value: dict[str, Any] | bytes) -> ConsumerRecord:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return ConsumerRecord(topic, partition, offset, 0, 0, None, raw, None, 0, len(raw), [])


def test_the_stream_yields_each_id_once_and_a_group_commits_only_what_was_handled() -> None:
    client = StreamsClient("127.0.0.1:1", topic_prefix="p.")
    res, rev = client.topic("results"), client.topic("review")
    consumer = FakeConsumer([
        [rec(res, 0, 0, result("a")), rec(res, 0, 1, b"{broken"), rec(rev, 1, 0, review("b"))],
        [rec(res, 0, 2, result("a")), rec(rev, 1, 1, review("b")), rec(res, 1, 0, result("b", "human", "rotten")),
         rec(rev, 0, 0, review("a", "audit", audit=True)), rec("other", 0, 0, result("x"))],
    ])
    consumer.owned = {TopicPartition(res, 0), TopicPartition(res, 1), TopicPartition(rev, 1)}

    async def go() -> list[tuple[str, str]]:
        stream = OutcomeStream(client, group_id="g", idle_timeout=0.05, commit_interval_s=0)
        stream.consumer = cast(Any, consumer)
        seen = []
        async for outcome in stream:
            assert not isinstance(outcome, DeadLetter)
            seen.append((outcome.id, outcome.decision))
            if outcome.decision == "review":
                # While b's review item is being handled, nothing at or after it may be committed.
                assert all(c.get(TopicPartition(rev, 1), 0) <= 0 for c in consumer.commits)
        assert stream.skipped == 1 and stream.filter.dropped == 2
        await stream.close()
        return seen

    assert asyncio.run(go()) == [("a", "auto"), ("b", "review"), ("b", "human")]
    committed: dict[TopicPartition, int] = {}
    for c in consumer.commits:
        committed |= c
    # Every record handled or dropped is committed, and only on partitions the member owns.
    assert committed == {TopicPartition(res, 0): 3, TopicPartition(rev, 1): 2, TopicPartition(res, 1): 1}
    assert consumer.stopped


def test_a_stream_closed_by_an_error_does_not_commit_the_record_being_handled() -> None:
    client = StreamsClient("127.0.0.1:1")
    res = client.topic("results")
    consumer = FakeConsumer([[rec(res, 0, 0, result("a")), rec(res, 0, 1, result("b"))]])
    consumer.owned = {TopicPartition(res, 0)}

    async def go() -> None:
        stream = OutcomeStream(client, group_id="g", commit_interval_s=3600)
        stream.consumer = cast(Any, consumer)
        async with stream:
            async for outcome in stream:
                if outcome.id == "b":
                    raise RuntimeError("the handler failed")

    with pytest.raises(RuntimeError):
        asyncio.run(go())
    assert consumer.commits == [{TopicPartition(res, 0): 1}]  # a was handled; b comes again


# --------------------------------------------------------------------------- request/reply routing


def test_replies_reach_the_call_waiting_for_their_id() -> None:
    client = StreamsClient("127.0.0.1:1")
    outcomes = [parse_outcome("results", result("other")), parse_outcome("review", review("r")),
                parse_outcome("review", review("h")), parse_outcome("results", result("a")),
                parse_outcome("deadletter", dead("d", 3, "unknown_label", "feedback")),  # not about the request
                parse_outcome("deadletter", dead("d", 4)), parse_outcome("results", result("a", p=0.5)),
                parse_outcome("results", result("h", "human", "rotten"))]

    async def feed() -> AsyncIterator[Any]:
        for outcome in outcomes:
            yield outcome

    async def go() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        waiters = {rid: _Waiter(loop.create_future(), wait_for_human=rid == "h") for rid in ("a", "r", "h", "d")}
        client._waiters.update(waiters)
        await client._route(cast(OutcomeStream, feed()))
        out: dict[str, Any] = {}
        for rid, waiter in waiters.items():
            try:
                out[rid] = waiter.future.result()
            except DeadLettered as exc:
                out[rid] = exc
        return out

    got = asyncio.run(go())
    assert isinstance(got["a"], Result) and got["a"].confidence == 0.91, "the first answer wins"
    assert isinstance(got["r"], ReviewItem) and got["r"].review_reason == "low_confidence"
    assert isinstance(got["h"], Result) and got["h"].decision == "human", "wait_for_human skips the review item"
    assert isinstance(got["d"], DeadLettered) and got["d"].dead_letter.error_type == "unknown_task"


def test_classify_refuses_bad_input_before_connecting_and_reports_an_unreachable_broker() -> None:
    client = StreamsClient("127.0.0.1:1")

    async def go() -> None:
        async with client:
            with pytest.raises(InvalidRequest):
                await client.classify("  ", "t", timeout=5)
            assert client._follower is None and client._producer is None
            with pytest.raises(KafkaConnectionError):
                await client.classify("fine", "t", timeout=5)
            assert not client._waiters

    asyncio.run(go())


# --------------------------------------------------------------------------- the README


def test_the_readme_shows_the_runnable_example() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = (REPO / "examples" / "client_example.py").read_text(encoding="utf-8")
    section = readme.split("### Python client", 1)[1].split("\n## ", 1)[0]
    body = example.split('"""', 2)[2].strip()  # the file less its docstring
    assert body in section, "README.md's Python client example differs from examples/client_example.py"
