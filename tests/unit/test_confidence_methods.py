"""Pure parts of the confidence methods: answer mapping, verbalised parsing, pooling, sequence scoring,
the probe's verdicts, the method choice, and the task file's [task.confidence] table."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.confidence.answers import answer_label
from streams.confidence.capabilities import Capabilities
from streams.confidence.ensemble import pool
from streams.confidence.methods import METHODS, choose_method
from streams.confidence.probe import ProbeCache, logprobs_usable
from streams.confidence.sequence_scoring import advance, combine, start_paths
from streams.confidence.verbalized import UNPARSED_MARGIN, messages, parse, parse_confidence
from streams.errors import ConfigError, ModelError
from streams.tasks import parse_tasks

LABELS = ("fresh", "rotten")


@pytest.mark.parametrize("answer,expected", [
    ("fresh", 0), ("Rotten.", 1), ("  **ROTTEN**", 1), ("fresh<|im_end|>\n<|im_start|>user", 0),
    ("Answer: rotten", 1), ("The answer is fresh", 0), ("I think it is rotten", 1),
    ("rotten\nReview: fresh and fun", 1),  # only the first line is the answer
    ("fresh or rotten", -1), ("neither fresh nor rotten", -1), ("not fresh", -1), ("freshly made", -1),
    ("bad, bad", -1), ("", -1), ("ro", -1), ("fresh, not rotten", 0),
])
def test_answers_map_to_one_label_or_none(answer: str, expected: int) -> None:
    assert answer_label(answer, LABELS) == expected


@pytest.mark.parametrize("text,label,conf", [
    ("fresh 0.8", 0, 0.8), ("Rotten (85%)", 1, 0.85), ("label: rotten, confidence: 0.65", 1, 0.65),
    ("rotten - 9/10", 1, 0.9), ("Fresh. Confidence: 85", 0, 0.85), ("rotten .9", 1, 0.9),
    ("**fresh** very high", 0, 0.9), ("fresh 0.8 (80%)", 0, 0.8), ("rotten 70 percent", 1, 0.7),
    ("fresh 1", 0, 1.0), ("rotten 0", 1, 0.0),
])
def test_verbalised_answers_parse(text: str, label: int, conf: float) -> None:
    v = parse(text, LABELS)
    assert v.label == label and v.confidence == pytest.approx(conf)
    assert v.probabilities is not None and v.probabilities.sum() == pytest.approx(1.0)
    assert v.probabilities[label] == pytest.approx(conf)


@pytest.mark.parametrize("text", [
    "fresh, probability 1.2", "fresh nan", "fresh -0.2", "fresh 1e5", "rotten 120%", "rotten 3/2", "fresh 85",
    "fresh<|im_end|>", "fresh inf", "fresh 0/0", "fresh 0.8.1.2",
])
def test_unparseable_probabilities_count_as_low_confidence(text: str) -> None:
    v = parse(text, LABELS)
    assert v.label >= 0 and v.confidence is None
    assert v.probabilities is not None and v.probabilities[v.label] == pytest.approx(0.5 + UNPARSED_MARGIN)


@pytest.mark.parametrize("text", ["fresh or rotten? 0.5", "no idea 0.9", "", "freshly baked 0.9", "<|im_start|>"])
def test_answers_without_one_label_give_no_scores(text: str) -> None:
    assert parse(text, LABELS).probabilities is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_verbalised_parser_never_raises_and_stays_in_range(text: str) -> None:
    c = parse_confidence(text)
    assert c is None or 0.0 <= c <= 1.0
    v = parse(text, ("yes", "no", "maybe"))
    if v.probabilities is not None:
        assert np.isfinite(v.probabilities).all() and v.probabilities.sum() == pytest.approx(1.0)


def test_verbalised_prompt_shows_the_format_in_the_examples() -> None:
    chat = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "fresh"},
            {"role": "user", "content": "B"}]
    out = messages(chat, LABELS)
    assert out[1]["content"] == "fresh 0.9" and "probability" in out[2]["content"] and chat[1]["content"] == "fresh"


def test_pooling() -> None:
    a, b = np.array([0.9, 0.1]), np.array([0.6, 0.4])
    assert pool([a, b], how="mean") == pytest.approx([0.75, 0.25])
    geo = pool([a, b], how="loglinear")
    expected = np.sqrt(a * b) / np.sqrt(a * b).sum()
    assert geo == pytest.approx(expected)
    assert pool([a, b], [1.0, 0.0], "mean") == pytest.approx(a)
    zero = pool([np.array([1.0, 0.0]), np.array([0.5, 0.5])], how="loglinear")
    assert np.isfinite(zero).all() and 0 < zero[1] < 0.01, "a 0 from one member does not veto a label"
    batch = pool([np.tile(a, (3, 1)), np.tile(b, (3, 1))])
    assert batch.shape == (3, 2) and batch[0] == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError):
        pool([a, b], [1.0], "mean")
    with pytest.raises(ValueError):
        pool([a], how="median")


def test_sequence_scoring_follows_each_label_token_by_token() -> None:
    """Gemma splits 'rotten' into 'ro' + 'tten': its score is P('ro') * P('tten' | 'ro')."""
    paths = start_paths(LABELS)
    first = [("ro", math.log(0.4)), ("fresh", math.log(0.3)), ("Ro", math.log(0.05)), ("the", math.log(0.1))]
    for p in paths:
        advance(p, first)
    fresh, rotten = paths
    assert fresh.done and fresh.logprob == pytest.approx(math.log(0.3))
    assert not rotten.done and rotten.prefix == "ro" and rotten.logprob == pytest.approx(math.log(0.45))
    advance(rotten, [("tten", math.log(0.9)), ("ast", math.log(0.05))])
    assert rotten.done and rotten.tokens == 2
    scores = combine(paths, first_topk_mass=0.85)
    p_rotten = 0.45 * 0.9
    assert scores.probabilities == pytest.approx([0.3 / (0.3 + p_rotten), p_rotten / (0.3 + p_rotten)])
    assert scores.label_mass == pytest.approx((0.3 + p_rotten) / 0.85)
    mean = combine(paths, 0.85, "mean")
    assert mean.probabilities[1] > scores.probabilities[1], "per-token averaging lifts the two-token label"


def test_sequence_scoring_bounds_a_label_missing_from_the_top_k() -> None:
    paths = start_paths(("very good", "bad"))
    top = [("very", math.log(0.5)), ("bad", math.log(0.2)), ("ok", math.log(0.01))]
    for p in paths:
        advance(p, top)
    advance(paths[0], [(" nice", math.log(0.6)), (" fine", math.log(0.02))])  # " good" not shown
    assert paths[0].bounded and paths[0].logprob == pytest.approx(math.log(0.5) + math.log(0.02))
    assert combine(paths, 0.71).bounded.tolist() == [True, False]


def test_probe_verdict_on_logprobs() -> None:
    good = [[("yes", -0.1), ("no", -2.5)], [("red", -1.0), ("blue", -1.3)]]
    assert logprobs_usable(good) == (True, "")
    assert not logprobs_usable([None, good[1]])[0]
    assert not logprobs_usable([[("a", -1.0), ("b", -1.0)], [("c", -1.0), ("d", -1.0)]])[0]
    assert not logprobs_usable([good[0], good[0]])[0], "the same answer to different prompts is constant"
    assert not logprobs_usable([[("a", float("nan"))], good[1]])[0]
    assert not logprobs_usable([[("a", 3.0), ("b", -1.0)], good[1]])[0]


def _caps(**kw: object) -> Capabilities:
    base = {"base_url": "http://m/v1", "model": "m", "logprobs": True, "top_logprobs": 20, "continuation": True,
            "echo": False, "temperature": True, "seed": True, "n": True, "max_n": 4}
    return Capabilities(**(base | kw))  # type: ignore[arg-type]


TASKS = """
[[task]]
name = "t"
labels = ["fresh", "rotten"]
[task.model]
base_url = "http://m/v1"
name = "m"
[task.confidence]
methods = ["first_token_logprobs", "sequence_scores", "self_consistency", "verbalized"]
"""


def test_the_first_supported_method_is_chosen() -> None:
    task = parse_tasks(TASKS, "t", {}).tasks["t"]
    assert choose_method(task, lambda ep: _caps())[0] == "first_token_logprobs"
    assert choose_method(task, lambda ep: _caps(logprobs=False))[0] == "self_consistency"
    assert choose_method(task, lambda ep: _caps(logprobs=False, temperature=False))[0] == "verbalized"
    assert choose_method(task, lambda ep: None)[0] == "first_token_logprobs"  # not probed: the first one
    assert METHODS["sequence_scores"].supported(task, lambda ep: _caps(continuation=False, echo=True))
    assert not METHODS["sequence_scores"].supported(task, lambda ep: _caps(continuation=False))
    default = parse_tasks(TASKS.replace('methods = ["first_token_logprobs", "sequence_scores", '
                                        '"self_consistency", "verbalized"]', ""), "t", {}).tasks["t"]
    assert default.confidence.methods == ("first_token_logprobs",)
    assert choose_method(default, lambda ep: _caps(logprobs=False)) == ("first_token_logprobs", "only method")


def test_ensemble_needs_every_member_supported() -> None:
    toml = TASKS.replace('methods = ["first_token_logprobs", "sequence_scores", "self_consistency", "verbalized"]',
                         'methods = ["ensemble", "verbalized"]\n[task.confidence.ensemble]\n'
                         'members = ["first_token_logprobs", {method = "verbalized", base_url = "http://o/v1", '
                         'name = "other", weight = 2.0}]\npooling = "loglinear"')
    task = parse_tasks(toml, "t", {}).tasks["t"]
    members = task.confidence.ensemble_members
    assert [m.method for m in members] == ["first_token_logprobs", "verbalized"] and members[1].weight == 2.0
    assert members[1].model is not None and members[1].model.name == "other"
    assert choose_method(task, lambda ep: _caps())[0] == "ensemble"
    assert choose_method(task, lambda ep: _caps(logprobs=ep.name != "m"))[0] == "verbalized"


@pytest.mark.parametrize("table,problem", [
    ('methods = ["magic"]', "unknown method 'magic'"),
    ('methods = ["verbalized", "verbalized"]', "listed twice"),
    ('methods = ["ensemble"]', "needs at least two members"),
    ('[task.confidence.self_consistency]\nrule = "vibes"', "self_consistency.rule"),
    ('[task.confidence.self_consistency]\nbudget = 5\nmin_samples = 9', "above the budget"),
    ('[task.confidence.self_consistency]\nerror_rate = 0.9', "error_rate"),
    ('[task.confidence.ensemble]\npooling = "max"', "ensemble.pooling"),
    ('[task.confidence.ensemble]\nmembers = ["ensemble", "verbalized"]', "members[0].method"),
    ('[task.confidence.sequence_scores]\nlength_normalization = "max"', "length_normalization"),
])
def test_confidence_table_is_validated(table: str, problem: str) -> None:
    toml = TASKS.split("[task.confidence]")[0] + "[task.confidence]\n" + table + "\n"
    with pytest.raises(ConfigError) as err:
        parse_tasks(toml, "t", {})
    assert problem in str(err.value)


def test_probe_cache_reuses_results_and_retries_failures() -> None:
    asyncio.run(_probe_cache_scenario())


async def _probe_cache_scenario() -> None:
    calls = []
    now = [0.0]

    async def prober(client: object, ep: object) -> Capabilities:
        calls.append(now[0])
        if len(calls) == 1:
            raise ModelError("connection", "down")
        return _caps()

    task = parse_tasks(TASKS, "t", {}).tasks["t"]
    cache = ProbeCache(None, ttl_s=100.0, retry_s=10.0, prober=prober, clock=lambda: now[0])  # type: ignore[arg-type]
    assert await cache.get(task.model) is None and len(calls) == 1
    now[0] = 5.0
    assert await cache.get(task.model) is None and len(calls) == 1, "no re-probe before retry_s"
    now[0] = 11.0
    assert (await cache.get(task.model)) == _caps() and len(calls) == 2
    now[0] = 50.0
    await cache.get(task.model)
    assert len(calls) == 2, "cached within the ttl"
    now[0] = 120.0
    await cache.get(task.model)
    assert len(calls) == 3, "re-probed after the ttl"
    await cache.get(task.model, refresh=True)
    assert len(calls) == 4
