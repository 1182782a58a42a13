"""Prompt tokens a server reuses (issue 15, item 5): a prefix-stable prompt, the cached-token count read from each
server's report, carried into the record's usage, the metrics and the cost estimate with its own price."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams import schemas
from streams.classify.model_client import ModelClient, _reply_doc, _sample, cached_prompt_tokens
from streams.classify.records import Source
from streams.classify.service import Classifier
from streams.errors import ConfigError
from streams.localdev.synthetic_model import PrefixCache, SyntheticConfig, SyntheticModelServer
from streams.ops.cost import TokenPrice
from streams.ops.metrics import ServiceMetrics
from streams.settings import Settings
from streams.tasks import load_tasks, parse_tasks

ROOT = Path(__file__).resolve().parents[2]

#: What the local llama.cpp server (xllamacpp, Gemma 3 270M) answered to the second movie_sentiment request
#: of a run, logprobs left out: it reports the cache twice, in the usage and in its timings.
LLAMA_CPP = {
    "created": 1796220965, "model": "-", "system_fingerprint": "b0-unknown", "object": "chat.completion",
    "id": "chatcmpl-h0SNszcCKVorC01qacJWUORv9lABlALm",
    "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "fresh"},
                 "logprobs": {"content": [{"token": "fresh", "logprob": -0.3, "bytes": [102],
                                           "top_logprobs": [{"token": "fresh", "logprob": -0.3, "bytes": [102]}]}]}}],
    "usage": {"completion_tokens": 1, "prompt_tokens": 350, "total_tokens": 351,
              "prompt_tokens_details": {"cached_tokens": 294}},
    "timings": {"cache_n": 294, "prompt_n": 56, "prompt_ms": 2414.697, "predicted_n": 1},
}


def _doc(**changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(LLAMA_CPP))
    doc.update(changes)
    return doc


# --- reading each server's report -----------------------------------------------------------------------

def test_openai_and_vllm_usage_details_are_read() -> None:
    usage = {"prompt_tokens": 2006, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 1920}}
    assert cached_prompt_tokens(usage, None, 2006) == 1920
    reply = _reply_doc(_doc(usage=usage, timings=None), 5.0, "gpt-4o-mini")
    assert (reply.prompt_tokens, reply.cached_tokens) == (2006, 1920)


def test_llama_cpp_answers_are_read_from_usage_or_from_timings_alone() -> None:
    assert _reply_doc(_doc(), 5.0, "gemma3-270m").cached_tokens == 294
    # An older llama.cpp server reports the cache only in its timings (cache_n reused, prompt_n evaluated).
    older = _doc(usage={"completion_tokens": 1, "prompt_tokens": 350, "total_tokens": 351})
    assert _reply_doc(older, 5.0, "gemma3-270m").cached_tokens == 294


def test_deepseek_cache_hits_are_read() -> None:
    usage = {"prompt_tokens": 900, "completion_tokens": 1, "prompt_cache_hit_tokens": 640,
             "prompt_cache_miss_tokens": 260}
    assert cached_prompt_tokens(usage, None, 900) == 640


def test_a_server_reporting_no_cache_gives_zero() -> None:
    plain = _doc(usage={"completion_tokens": 1, "prompt_tokens": 350, "total_tokens": 351}, timings=None)
    assert _reply_doc(plain, 5.0, "m").cached_tokens == 0
    no_usage = _doc(timings=None)
    del no_usage["usage"]
    assert _reply_doc(no_usage, 5.0, "m").cached_tokens == 0
    assert cached_prompt_tokens({"prompt_tokens_details": None}, {}, 10) == 0


@pytest.mark.parametrize("reported", [-3, "12", None, True, float("nan"), [1]])
def test_a_malformed_count_is_zero_not_a_bad_response(reported: Any) -> None:
    assert cached_prompt_tokens({"prompt_tokens_details": {"cached_tokens": reported}}, None, 10) == 0


def test_a_count_above_the_prompt_is_clamped_to_it() -> None:
    assert cached_prompt_tokens({"prompt_tokens_details": {"cached_tokens": 400}}, None, 350) == 350


def test_typed_chat_completions_carry_the_count_too() -> None:
    """`ModelClient.chat` (sampling, continuations, verbalised) parses the openai client's typed answer."""
    doc = _doc()
    doc["choices"][0]["logprobs"] = None
    typed = openai.types.chat.ChatCompletion.model_validate(doc | {"model": "gemma3-270m"})
    assert _sample(typed, 5.0, "gemma3-270m").cached_tokens == 294
    older = _doc(usage={"completion_tokens": 1, "prompt_tokens": 350, "total_tokens": 351})
    older["choices"][0]["logprobs"] = None
    assert _sample(openai.types.chat.ChatCompletion.model_validate(older), 5.0, "m").cached_tokens == 294
    deepseek = _doc(usage={"completion_tokens": 1, "prompt_tokens": 350, "total_tokens": 351,
                           "prompt_cache_hit_tokens": 128}, timings=None)
    deepseek["choices"][0]["logprobs"] = None
    assert _sample(openai.types.chat.ChatCompletion.model_validate(deepseek), 5.0, "m").cached_tokens == 128
    none = _doc(usage={"completion_tokens": 1, "prompt_tokens": 350, "total_tokens": 351}, timings=None)
    none["choices"][0]["logprobs"] = None
    assert _sample(openai.types.chat.ChatCompletion.model_validate(none), 5.0, "m").cached_tokens == 0


# --- prices and cost ---------------------------------------------------------------------------------------

def test_cached_prompt_tokens_are_priced_apart() -> None:
    price = TokenPrice.of(2.0, 8.0, 0.5)
    assert price.cost_usd(1000, 10, 800) == pytest.approx((200 * 2.0 + 800 * 0.5 + 10 * 8.0) / 1e6)
    assert price.cost_usd(1000, 10, 5000) == pytest.approx((1000 * 0.5 + 10 * 8.0) / 1e6)  # clamped


def test_without_a_cached_price_cached_tokens_cost_the_prompt_price() -> None:
    price = TokenPrice.of(2.0, 8.0)
    assert price.cached == 2.0
    assert price.cost_usd(1000, 10, 800) == price.cost_usd(1000, 10, 0) == pytest.approx((2000 + 80) / 1e6)


def test_token_prices_take_an_optional_cached_price_and_refuse_one_above_the_prompt_price() -> None:
    s = Settings.from_env({"STREAMS_TOKEN_PRICES": "gpt-4o-mini=0.15:0.6:0.075,local=0:0"})
    assert s.token_prices == {"gpt-4o-mini": TokenPrice(0.15, 0.6, 0.075), "local": TokenPrice(0.0, 0.0, 0.0)}
    for bad, says in (("m=1:2:3", "cached prompt price 3 is above the prompt price 1"),
                      ("m=1:2:0.5:9", "MODEL=PROMPT:COMPLETION[:CACHED]"),
                      ("m=1:2:-1", "MODEL=PROMPT:COMPLETION[:CACHED]")):
        with pytest.raises(ConfigError) as err:
            Settings.from_env({"STREAMS_TOKEN_PRICES": bad})
        assert says in str(err.value)


def _samples(m: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.exposition().decode()) for s in f.samples}


def test_metrics_count_cached_tokens_by_task_and_model_and_price_them() -> None:
    m = ServiceMetrics({"m": (1.0, 4.0, 0.25), "plain": (1.0, 4.0)})
    m.call_finished("t", "m", 0.1, None, 1000, 2, 900)
    m.call_finished("t", "plain", 0.1, None, 1000, 2, 900)
    m.call_finished("u", "m", 0.1, None, 50, 1)  # a server that reports no cache: a series at 0
    s = _samples(m)
    cached = "llm_classify_model_cached_prompt_tokens_total"
    assert s[(cached, (("model", "m"), ("task", "t")))] == 900
    assert s[(cached, (("model", "plain"), ("task", "t")))] == 900
    assert s[(cached, (("model", "m"), ("task", "u")))] == 0
    assert s[("llm_classify_tokens_total", (("kind", "prompt"), ("task", "t")))] == 2000, "cached are prompt tokens"
    assert s[("llm_classify_estimated_cost_usd_total", (("task", "t"),))] == pytest.approx(
        (100 * 1.0 + 900 * 0.25 + 2 * 4.0) / 1e6 + (1000 * 1.0 + 2 * 4.0) / 1e6)


# --- the prompt is prefix-stable ------------------------------------------------------------------------------

def test_the_project_prompt_differs_between_requests_only_in_its_last_message() -> None:
    """System, options and examples first, byte-identical across requests; the item's text only in the last
    user turn, after the template's fixed lead. So a server's prefix cache covers everything before the text."""
    for path in (ROOT / "config" / "tasks.toml", ROOT / "bench" / "tasks.toml"):
        for task in load_tasks(path, {}).tasks.values():
            one, two = task.prompt.messages("first text"), task.prompt.messages("a second, longer text")
            assert orjson.dumps(one[:-1]) == orjson.dumps(two[:-1]), task.name
            lead = task.prompt.template.split("{text}")[0]
            assert one[-1]["content"].startswith(lead) and two[-1]["content"].startswith(lead), task.name


SHUFFLED = """
[[task]]
name = "topics"
labels = ["computers", "politics", "science", "food"]
codes = "letters"
[task.model]
base_url = "http://127.0.0.1:9/v1"
name = "m"
[task.prompt]
option_order = "{order}"
[[task.prompt.examples]]
text = "The compiler crashed."
label = "computers"
"""


def test_shuffled_option_order_changes_the_prompt_from_its_first_message() -> None:
    """The documented trade-off: a shuffled option list sits in the system message (and re-assigns the
    examples' answer codes), so requests drawing different orders share no prefix past the chat template."""
    fixed = parse_tasks(SHUFFLED.format(order="fixed"), "t", {}).tasks["topics"]
    shuffled = parse_tasks(SHUFFLED.format(order="shuffled"), "t", {}).tasks["topics"]
    f1, f2 = (fixed.for_request(i).prompt.messages("x") for i in ("r1", "r2"))
    assert f1 == f2
    firsts = {shuffled.for_request(f"r{i}").prompt.messages("x")[0]["content"] for i in range(20)}
    assert len(firsts) > 1


# --- the synthetic model's prefix cache and the record's usage, end to end -----------------------------------

def test_the_synthetic_prefix_cache_reports_the_longest_prefix_seen_before() -> None:
    cache = PrefixCache()
    assert cache.cached("m", ["a", "b", "c", "d"]) == 0
    assert cache.cached("m", ["a", "b", "x", "y", "z"]) == 2
    assert cache.cached("m", ["a", "b", "c", "d"]) == 3, "the last token is always evaluated"
    assert cache.cached("other", ["a", "b", "c", "d"]) == 0, "a cache per model"
    small = PrefixCache(max_prefixes=5)
    small.cached("m", ["a", "b", "c"])
    assert small.cached("m", ["a", "b", "c", "d"]) == 0, "emptied when full"


TASKS = """
[[task]]
name = "sentiment"
labels = ["fresh", "rotten"]
[task.model]
base_url = "{url}"
name = "synthetic"
[task.prompt]
template = "Is this movie review fresh or rotten?\\n<<<REVIEW\\n{{text}}\\nREVIEW>>>\\nAnswer fresh or rotten:"
[[task.prompt.examples]]
text = "Great."
label = "fresh"
"""


def _classify(config: SyntheticConfig, metrics: ServiceMetrics) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with SyntheticModelServer(config) as server:
            tasks = parse_tasks(TASKS.format(url=server.base_url), "test", {})
            client = ModelClient(5, 0, observer=metrics)
            c = Classifier(tasks, client, 1000, 256)
            records = []
            for i, text in enumerate(("A fine film.", "A dull film.", "A fine film.")):
                out = await c.process(orjson.dumps({"id": f"r{i}", "task": "sentiment", "text": text}), None,
                                      Source("r", 0, i))
                records.append(orjson.loads(out[0].value))
            await client.close()
            return records

    return asyncio.run(go())


def test_the_records_usage_carries_cached_tokens_into_metrics_and_cost() -> None:
    m = ServiceMetrics({"synthetic": (1.0, 4.0, 0.1)})
    records = _classify(SyntheticConfig(seed=1), m)
    for r in records:
        schemas.validate("classification_result" if r["decision"] == "auto" else "review_item", r)
    usage = [r["usage"] for r in records]
    # The template's lead (8 words) and the texts' common first word are shared by the second request; a repeated
    # text shares all but its last word.
    assert [u["cached_tokens"] for u in usage] == [0, 9, usage[2]["prompt_tokens"] - 1]
    s = _samples(m)
    cached = sum(u["cached_tokens"] for u in usage)
    prompt = sum(u["prompt_tokens"] for u in usage)
    completion = sum(u["completion_tokens"] for u in usage)
    assert s[("llm_classify_model_cached_prompt_tokens_total", (("model", "synthetic"), ("task", "sentiment")))] \
        == cached
    assert s[("llm_classify_estimated_cost_usd_total", (("task", "sentiment"),))] == pytest.approx(
        ((prompt - cached) * 1.0 + cached * 0.1 + completion * 4.0) / 1e6)


def test_a_server_without_a_cache_report_gives_records_with_zero_cached_tokens() -> None:
    records = _classify(SyntheticConfig(seed=1, prefix_cache=False), ServiceMetrics())
    assert [r["usage"]["cached_tokens"] for r in records] == [0, 0, 0]
