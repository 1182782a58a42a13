"""The answer cache: LRU and TTL bounds, keys, single flight, the per-task default, and hits through the Classifier
equal to fresh calls (streams/classify/answer_cache.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
from typing import Any

import numpy as np
import orjson
import pytest

from streams import schemas
from streams.calibration.calibrators import TemperatureScaling
from streams.calibration.store import calibrator_record
from streams.classify.answer_cache import (
    NOT_IN_ANSWER,
    AnswerCache,
    answer_fingerprint,
    entry_bytes,
    normalise_text,
    result_doc,
    result_from_doc,
)
from streams.classify.model_client import ModelReply
from streams.classify.records import Source
from streams.classify.service import Classifier
from streams.confidence.methods.base import MethodResult
from streams.confidence.names import ENSEMBLE, FIRST_TOKEN
from streams.errors import ConfigError, ModelError
from streams.ops.metrics import ServiceMetrics
from streams.settings import ENV_DEFAULTS, Settings
from streams.tasks import Task, TaskRegistry, parse_tasks
from streams.topics import topic_configs
from streams.worker import answer_cache

MODEL = '[task.model]\nbase_url = "http://127.0.0.1:1/v1"\nname = "m"\n'


def _task(extra: str = "", model_extra: str = "", name: str = "t", head: str = "") -> Task:
    text = f'[[task]]\nname = "{name}"\nlabels = ["yes", "no", "maybe"]\n{head}{MODEL}{model_extra}{extra}'
    return parse_tasks(text, "test", env={}).tasks[name]


def _result(p: float = 0.9, **kw: Any) -> MethodResult:
    return MethodResult(FIRST_TOKEN, np.array([p, 1 - p]), 1.0, requests=1, prompt_tokens=12, completion_tokens=1,
                        latency_ms=5.0, **kw)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- bounds


def test_least_recently_used_entries_go_first() -> None:
    cache = AnswerCache(max_entries=3, ttl_s=60)
    for k in "abc":
        cache.put(k, "t", _result())
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", "t", _result())
    assert len(cache) == 3
    assert cache.get("b") is None, "b was the least recently used"
    assert all(cache.get(k) is not None for k in "acd")


def test_an_entry_expires_after_the_ttl_from_the_call_that_made_it() -> None:
    clock = Clock()
    cache = AnswerCache(max_entries=10, ttl_s=100, clock=clock)
    cache.put("k", "t", _result(), stored_at=clock.now - 40)
    clock.now += 59
    assert cache.get("k") is not None
    clock.now += 1
    assert cache.get("k") is None and len(cache) == 0
    cache.put("old", "t", _result(), stored_at=clock.now - 100)
    assert len(cache) == 0, "an answer already expired is not stored"


def test_a_restart_reading_the_topic_serves_no_expired_entry() -> None:
    """A new worker reads entries from the cache topic: those past the TTL are skipped, the others served
    until their own expiry (counted from the original call, not from the reading)."""
    clock = Clock()
    shared: list[tuple[bytes, bytes]] = []
    first = AnswerCache(10, ttl_s=100, clock=clock, on_store=lambda *a: shared.append(entry_bytes(*a)))
    first.put("t/old", "t", _result(0.8))
    clock.now += 50
    first.put("t/new", "t", _result(0.7))
    clock.now += 60  # "t/old" is 110 s old, "t/new" 60 s
    restarted = AnswerCache(10, ttl_s=100, clock=clock)
    applied = [restarted.apply(orjson.loads(value)) for _, value in shared]
    assert applied == [False, True]
    assert restarted.get("t/old") is None and restarted.get("t/new") is not None
    clock.now += 40
    assert restarted.get("t/new") is None, "expires 100 s after its call, whoever read it when"


def test_entries_shared_from_another_worker_are_not_shared_again() -> None:
    told: list[str] = []
    cache = AnswerCache(10, 60, on_store=lambda key, *_: told.append(key))
    cache.put("mine", "t", _result())
    _, value = entry_bytes("theirs", "t", cache.clock(), _result())
    assert cache.apply(orjson.loads(value))
    assert told == ["mine"] and cache.get("theirs") is not None


def test_an_unreadable_record_is_refused() -> None:
    cache = AnswerCache(10, 60)
    assert not cache.apply({"key": "k", "task": "t", "result": {}})  # no stored_at
    assert not cache.apply({"key": 3, "task": "t", "stored_at": "2026-01-01T00:00:00Z", "result": {}})


def test_results_round_trip_exactly_and_the_entry_matches_its_schema() -> None:
    result = _result(1 / 3, interval=(0.1, 0.2), members={"a@m": [0.25, 0.75]}, chosen_logprob=-0.1)
    back = result_from_doc(orjson.loads(orjson.dumps(result_doc(result))))
    assert back.raw is not None and result.raw is not None
    assert back.raw.tobytes() == result.raw.tobytes(), "raw probabilities come back bit for bit"
    assert dataclasses.replace(back, raw=None) == dataclasses.replace(result, raw=None)
    key = "t/0123456789abcdef/" + "0" * 32
    _, value = entry_bytes(key, "t", 1_700_000_000.0, result)
    schemas.validate("answer_cache_entry", orjson.loads(value))
    newer = result_from_doc({**result_doc(result), "a_field_from_a_newer_worker": 1})
    assert dataclasses.replace(newer, raw=None) == dataclasses.replace(back, raw=None)


def test_the_cache_topic_is_compacted_and_deleted_after_the_ttl() -> None:
    settings = Settings.from_env(ENV_DEFAULTS | {"STREAMS_ANSWER_CACHE_TTL_S": "3600"})
    assert topic_configs("answer_cache", settings) == {"cleanup.policy": "compact,delete", "retention.ms": "3600000"}
    assert topic_configs("calibrators", settings) == {"cleanup.policy": "compact"}
    assert topic_configs("requests", settings) == {}


# --------------------------------------------------------------------------- keys


def test_texts_equal_after_nfc_and_whitespace_collapsing_share_a_key_and_case_does_not() -> None:
    task, cache = _task(), AnswerCache(10, 60)
    key = cache.key(task, FIRST_TOKEN, "Café  au\tlait\n", "r1")
    assert key == cache.key(task, FIRST_TOKEN, " Cafe\u0301 au lait", "r2")
    assert key != cache.key(task, FIRST_TOKEN, "café au lait", "r3")
    assert normalise_text("a\u00a0\u2003b \r\n c") == "a b c"
    name, variant, text = key.split("/")
    assert name == "t" and len(variant) == 16 and text == hashlib.blake2b(b"Caf\xc3\xa9 au lait",
                                                                          digest_size=16).hexdigest()


def test_everything_that_decides_the_raw_answer_changes_the_key_and_routing_does_not() -> None:
    base = _task()
    key = AnswerCache(10, 60).key(base, FIRST_TOKEN, "x", "r")
    changed = [
        _task('[task.prompt]\nsystem = "Be brief."\n'),
        _task('[task.prompt]\ntemplate = "Text: {text}\\nLabel:"\n'),
        _task('[[task.prompt.examples]]\ntext = "sure"\nlabel = "yes"\n'),
        _task(model_extra="top_logprobs = 5\n"),
        _task(head='codes = "letters"\n'),
        _task('[task.confidence]\nmethods = ["sequence_scores"]\n'),
        _task(name="other"),
    ]
    for other in changed:
        assert AnswerCache(10, 60).key(other, FIRST_TOKEN, "x", "r") != key, other
    assert AnswerCache(10, 60).key(base, "verbalized", "x", "r") != key, "the method chosen"
    same = [
        _task("[task.routing]\nreview_threshold = 0.55\nmin_label_mass = 0.2\naudit_rate = 0.1\n"),
        _task("[task.calibration]\nrefit_every = 7\n"),
        _task("[task.drift]\nwindow_s = 60\n"),
        _task(head="answer_cache = true\n"),
    ]
    for other in same:
        assert AnswerCache(10, 60).key(other, FIRST_TOKEN, "x", "r") == key, other


def test_every_task_field_is_in_the_fingerprint_unless_it_acts_after_the_answer() -> None:
    """A new Task field lands in the fingerprint by default; this list makes its author decide."""
    names = {f.name for f in dataclasses.fields(Task)}
    assert names >= NOT_IN_ANSWER, f"NOT_IN_ANSWER names no field {sorted(NOT_IN_ANSWER - names)}"
    assert names - NOT_IN_ANSWER == {"labels", "prompt", "model", "descriptions", "codes", "positional_codes",
                                     "accept_first_token_collisions", "confidence"}
    task = _task()
    assert answer_fingerprint(task, FIRST_TOKEN) == answer_fingerprint(dataclasses.replace(task), FIRST_TOKEN)


def test_a_shuffled_task_hits_only_under_the_same_option_order() -> None:
    """The order changes the prompt (and the model's position bias), so it is part of the key."""
    task = _task('[task.prompt]\noption_order = "shuffled"\n', head='codes = "letters"\n')
    cache = AnswerCache(10, 60)
    by_order: dict[tuple[int, ...], set[str]] = {}
    for i in range(60):
        rid = f"r{i}"
        order = tuple(task.labels.index(label) for label in _listed_labels(task.for_request(rid)))
        by_order.setdefault(order, set()).add(cache.key(task, FIRST_TOKEN, "same text", rid))
    assert len(by_order) == math.factorial(3), "60 ids draw every order of 3 labels"
    assert all(len(keys) == 1 for keys in by_order.values()), "one key per order"
    assert len({k for keys in by_order.values() for k in keys}) == 6, "a key per order"


def _listed_labels(task: Task) -> list[str]:
    return [line.split(") ", 1)[1] for line in task.prompt.options.splitlines()[1:]]


def test_an_ensembles_key_names_its_member_calibrators() -> None:
    task = _task('[task.confidence]\nmethods = ["ensemble"]\n[task.confidence.ensemble]\n'
                 'members = ["first_token_logprobs", "verbalized"]\n')
    cache = AnswerCache(10, 60)
    a = cache.key(task, ENSEMBLE, "x", "r", ("identity-0", "identity-0"))
    assert a == cache.key(task, ENSEMBLE, "x", "r", ("identity-0", "identity-0"))
    assert a != cache.key(task, ENSEMBLE, "x", "r", ("t.temperature.2026", "identity-0"))


# --------------------------------------------------------------------------- the per-task default


@pytest.mark.parametrize(("head", "model_extra", "confidence", "on"), [
    ("", "", "", True),
    ("", "temperature = 0.7\n", "", False),
    ("answer_cache = true\n", "temperature = 0.7\n", "", True),
    ("answer_cache = false\n", "", "", False),
    ("", "", '[task.confidence]\nmethods = ["self_consistency"]\n', False),
    ("", "", ('[task.confidence]\nmethods = ["ensemble"]\n[task.confidence.ensemble]\n'
              'members = ["first_token_logprobs", {method = "verbalized", name = "big", temperature = 0.3}]\n'), False),
])
def test_the_cache_is_on_unless_the_task_samples_and_an_explicit_setting_wins(
        head: str, model_extra: str, confidence: str, on: bool) -> None:
    assert _task(confidence, model_extra, head=head).caches_answers is on


def test_a_setting_that_is_not_a_boolean_is_refused_with_the_field_named() -> None:
    with pytest.raises(ConfigError) as info:
        _task(head='answer_cache = "yes"\n')
    assert any(p.startswith("task[0] (t).answer_cache: expected a boolean") for p in info.value.problems), \
        info.value.problems


def test_the_worker_builds_a_cache_only_when_some_task_uses_one() -> None:
    sampled = parse_tasks(f'[[task]]\nname = "s"\nlabels = ["a", "b"]\n{MODEL}temperature = 1.0\n', "t", env={})
    plain = parse_tasks(f'[[task]]\nname = "p"\nlabels = ["a", "b"]\n{MODEL}', "t", env={})
    settings = Settings.from_env(ENV_DEFAULTS)
    assert answer_cache(settings, sampled, ServiceMetrics()) is None
    cache = answer_cache(settings, plain, ServiceMetrics())
    assert cache is not None and (cache.max_entries, cache.ttl_s) == (50_000, 86_400.0)
    off = Settings.from_env(ENV_DEFAULTS | {"STREAMS_ANSWER_CACHE_ENTRIES": "0"})
    assert answer_cache(off, plain, ServiceMetrics()) is None


# --------------------------------------------------------------------------- single flight


def test_identical_texts_in_flight_share_one_call() -> None:
    calls, outcomes = 0, []
    cache = AnswerCache(10, 60, observe=lambda task, outcome: outcomes.append(outcome))

    async def call() -> MethodResult:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return _result()

    async def main() -> list[tuple[MethodResult, str]]:
        return await asyncio.gather(*(cache.answer("k", "t", call) for _ in range(10)))

    got = asyncio.run(main())
    assert calls == 1
    assert sorted(o for _, o in got) == ["coalesced"] * 9 + ["miss"]
    assert all(r is got[0][0] for r, _ in got)
    assert asyncio.run(cache.answer("k", "t", call))[1] == "hit" and calls == 1
    assert sorted(outcomes) == ["coalesced"] * 9 + ["hit", "miss"]


def test_a_model_error_reaches_every_waiter_and_is_not_cached() -> None:
    calls = 0

    async def failing() -> MethodResult:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise ModelError("timeout", "no answer")

    cache = AnswerCache(10, 60)

    async def main() -> list[Any]:
        return await asyncio.gather(*(cache.answer("k", "t", failing) for _ in range(3)), return_exceptions=True)

    assert all(isinstance(e, ModelError) for e in asyncio.run(main())) and calls == 1
    assert cache.get("k") is None and not cache._in_flight


def test_when_the_caller_is_cancelled_a_waiter_calls_itself() -> None:
    calls = 0

    async def call() -> MethodResult:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return _result()

    cache = AnswerCache(10, 60)

    async def main() -> tuple[MethodResult, str]:
        leader = asyncio.create_task(cache.answer("k", "t", call))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(cache.answer("k", "t", call))
        await asyncio.sleep(0.01)
        leader.cancel()
        return await waiter

    result, outcome = asyncio.run(main())
    assert outcome == "miss" and calls == 2 and cache.get("k") is result


def test_a_cancelled_waiter_does_not_cancel_the_shared_call() -> None:
    async def call() -> MethodResult:
        await asyncio.sleep(0.05)
        return _result()

    cache = AnswerCache(10, 60)

    async def main() -> tuple[MethodResult, str]:
        leader = asyncio.create_task(cache.answer("k", "t", call))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(cache.answer("k", "t", call))
        await asyncio.sleep(0.01)
        waiter.cancel()
        return await leader

    assert asyncio.run(main())[1] == "miss"


def test_answers_without_label_scores_are_not_kept() -> None:
    async def no_scores() -> MethodResult:
        return MethodResult(FIRST_TOKEN, None, 0.0, "no_logprobs", requests=1)

    cache = AnswerCache(10, 60)
    assert asyncio.run(cache.answer("k", "t", no_scores))[1] == "miss"
    assert cache.get("k") is None


# --------------------------------------------------------------------------- through the classifier

TASKS = f"""
[[task]]
name = "cached"
labels = ["yes", "no"]
{MODEL}
[task.routing]
review_threshold = 0.7

[[task]]
name = "sampled"
labels = ["yes", "no"]
{MODEL}temperature = 0.8
"""


class CountingModel:
    """p(yes) depends on the text (its hash), so different texts get different answers; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def first_token(self, task: Any, text: str) -> ModelReply:
        self.calls += 1
        await asyncio.sleep(0.01)
        p = 0.5 + (hashlib.sha256(text.encode()).digest()[0] / 255) * 0.49
        return ModelReply([("yes", math.log(p)), ("no", math.log(1 - p))], "yes", math.log(p), 10, 1, 3.0, "m")


def _classify(c: Classifier, task: str, rid: str, text: str) -> dict[str, Any]:
    raw = orjson.dumps({"id": rid, "task": task, "text": text, "metadata": {"k": 1}})
    outs = asyncio.run(c.process(raw, rid.encode(), Source("classify.requests", 0, 1)))
    return orjson.loads(outs[0].value)


def _without(record: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in names}


@pytest.fixture
def tasks() -> TaskRegistry:
    return parse_tasks(TASKS, "test", env={})


def test_a_hit_makes_no_call_and_equals_a_fresh_answer_apart_from_cached_and_timing(tasks: TaskRegistry) -> None:
    model, fresh_model = CountingModel(), CountingModel()
    metrics = ServiceMetrics()
    c = Classifier(tasks, model, 1000, 64, answers=AnswerCache(100, 60, observe=metrics.answer_cache_lookup))  # type: ignore[arg-type]
    fresh = Classifier(tasks, fresh_model, 1000, 64)  # type: ignore[arg-type]
    texts = [f"text {i}" for i in range(5)]
    first = [_classify(c, "cached", f"a{i}", t) for i, t in enumerate(texts)]
    again = [_classify(c, "cached", f"b{i}", "  " + t.replace(" ", "\n")) for i, t in enumerate(texts)]
    assert model.calls == 5 and [r["cached"] for r in first + again] == [False] * 5 + [True] * 5
    for i, (a, b) in enumerate(zip(first, again, strict=True)):
        control = _classify(fresh, "cached", f"b{i}", texts[i])
        timing = ("id", "cached", "latency_ms", "processed_at", "text")  # review items carry their own text
        assert _without(b, *timing) == _without(a, *timing) == _without(control, *timing)
        schemas.validate("classification_result" if b["decision"] == "auto" else "review_item", b)
    assert metrics.answer_cache.labels("cached", "hit")._value.get() == 5
    assert metrics.answer_cache.labels("cached", "miss")._value.get() == 5


def test_a_refitted_calibrator_applies_to_cached_answers(tasks: TaskRegistry) -> None:
    model = CountingModel()
    c = Classifier(tasks, model, 1000, 64, answers=AnswerCache(100, 60))  # type: ignore[arg-type]
    before = _classify(c, "cached", "a", "some text")
    cal = TemperatureScaling().fit(np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]] * 10),
                                   np.array([0, 1, 0, 1] * 10))
    m = {"ece": 0.0, "brier": 0.0, "nll": 0.0}
    record = calibrator_record("cached", FIRST_TOKEN, "m", ("yes", "no"), cal, 40, 10, m, m, "calibrate")
    assert c.calibrators.apply(record)
    after = _classify(c, "cached", "b", "some text")
    assert model.calls == 1 and after["cached"] is True
    assert after["raw_probabilities"] == before["raw_probabilities"]
    assert after["calibrator_version"] == record["version"] != before["calibrator_version"]
    raw = np.array([before["raw_probabilities"]["yes"], before["raw_probabilities"]["no"]])
    assert after["probabilities"]["yes"] == pytest.approx(cal.transform(raw)[0], abs=1e-6)


def test_a_task_that_samples_calls_every_time(tasks: TaskRegistry) -> None:
    model = CountingModel()
    c = Classifier(tasks, model, 1000, 64, answers=AnswerCache(100, 60))  # type: ignore[arg-type]
    records = [_classify(c, "sampled", f"s{i}", "same") for i in range(3)]
    assert model.calls == 3 and not any(r["cached"] for r in records)


def test_concurrent_repeats_through_the_classifier_make_one_call(tasks: TaskRegistry) -> None:
    model = CountingModel()
    c = Classifier(tasks, model, 1000, 64, answers=AnswerCache(100, 60))  # type: ignore[arg-type]

    async def main() -> list[Any]:
        return await asyncio.gather(*(c.process(orjson.dumps({"id": f"c{i}", "task": "cached", "text": "same"}),
                                                None, Source("classify.requests", 0, i)) for i in range(8)))

    records = [orjson.loads(outs[0].value) for outs in asyncio.run(main())]
    assert model.calls == 1 and sum(r["cached"] for r in records) == 7
