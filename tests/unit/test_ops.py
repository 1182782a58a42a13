"""Operations without Kafka: review queue, traffic/drift history, metrics exposition, plots, pages, alarms."""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from collections import namedtuple
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from streams import schemas
from streams.alerting import QueueAlarm, WebhookForwarder
from streams.classify.model_client import ModelClient
from streams.classify.records import Source
from streams.classify.service import Classifier
from streams.errors import ConfigError
from streams.localdev.synthetic_model import SyntheticConfig, SyntheticModelServer
from streams.ops import pages, plots
from streams.ops.cost import TokenPrice
from streams.ops.metrics import ServiceMetrics, count_retries
from streams.ops.review_cli import choose
from streams.ops.review_queue import ReviewQueue, answer_record
from streams.ops.stats import DriftHistory, History, TrafficStats, audited_accuracy, reliability
from streams.settings import Settings
from streams.tasks import parse_tasks

LABELS = {"sentiment": ("fresh", "rotten")}
TASKS = parse_tasks('[[task]]\nname = "sentiment"\nlabels = ["fresh", "rotten"]\n[task.model]\n'
                    'base_url = "http://127.0.0.1:1/v1"\nname = "m"\n[task.routing]\nreview_threshold = 0.8\n', "t")


def item(rid: str, confidence: float | None = 0.6, at: str = "2026-01-01T00:00:00.000Z", audit: bool = False,
         label: str | None = "fresh", text: str = "some text") -> dict[str, Any]:
    return {"id": rid, "task": "sentiment", "text": text, "label": label, "confidence": confidence,
            "probabilities": {"fresh": confidence or 0.5, "rotten": 1 - (confidence or 0.5)},
            "review_reason": "audit" if audit else "low_confidence", "audit": audit, "processed_at": at}


def answer(rid: str, label: str = "fresh", task: str = "sentiment") -> dict[str, Any]:
    return {"id": rid, "task": task, "label": label}


# --- review queue ---------------------------------------------------------------------------------

def test_an_answer_removes_the_item_and_it_is_not_offered_again() -> None:
    q = ReviewQueue(LABELS)
    assert q.add_item(item("a"), 0) and q.add_item(item("b"), 0)
    outcome = q.add_answer(answer("a", "rotten"), 0)
    assert outcome is not None and outcome.human_label == "rotten" and not outcome.correct
    assert [i.id for i in q.items()] == ["b"]
    assert not q.add_item(item("a"), 0), "a replayed review item for an answered id stays answered"
    assert q.add_answer(answer("a"), 0) is None, "a second answer changes nothing"
    assert len(q.outcomes["sentiment"]) == 1


def test_an_answer_read_before_its_item_still_counts() -> None:
    q = ReviewQueue(LABELS)
    assert q.add_answer(answer("x"), 0) is None
    assert not q.add_item(item("x"), 0)
    assert q.depth("sentiment") == 0


def test_answers_the_feedback_agent_would_refuse_leave_the_item_pending() -> None:
    q = ReviewQueue(LABELS)
    q.add_item(item("a"), 0)
    assert q.add_answer(answer("a", "meh"), 0) is None  # label outside the set
    assert q.add_answer(answer("a", task="other"), 0) is None  # unknown task
    assert q.is_pending("a")
    assert not q.add_item({"id": "z", "task": "other", "text": "t"}, 0), "items of unknown tasks are ignored"


def test_order_oldest_first_and_lowest_confidence_first() -> None:
    q = ReviewQueue(LABELS)
    q.add_item(item("new-low", 0.51, "2026-01-01T00:00:03Z"), 0)
    q.add_item(item("old-high", 0.79, "2026-01-01T00:00:01Z"), 0)
    q.add_item(item("mid-none", None, "2026-01-01T00:00:02Z", label=None), 0)
    assert [i.id for i in q.items(order="oldest")] == ["old-high", "mid-none", "new-low"]
    assert [i.id for i in q.items(order="confidence")] == ["mid-none", "new-low", "old-high"]
    assert [i.id for i in q.items(limit=1)] == ["old-high"]


def test_depth_and_oldest_age() -> None:
    q = ReviewQueue(LABELS)
    t0 = 1_700_000_000.0
    q.add_item(item("a", at="2023-11-14T22:13:20Z"), t0)  # == t0
    q.add_item(item("b", at="2023-11-14T22:13:30Z"), t0)
    assert q.stats(t0 + 100) == {"sentiment": {"depth": 2, "oldest_age_s": 100.0}}
    assert q.oldest_age_s("sentiment", t0 + 100) == 100.0
    q.add_answer(answer("a"), t0)
    assert q.stats(t0 + 100)["sentiment"] == {"depth": 1, "oldest_age_s": 90.0}


def test_the_queue_is_bounded() -> None:
    q = ReviewQueue(LABELS, max_items=2, max_answered=3, max_outcomes=2)
    for i in range(4):
        q.add_item(item(f"i{i}"), 0)
    assert len(q.pending) == 2 and q.overflow == 2
    for i in range(10):
        q.add_answer(answer(f"x{i}"), 0)
    assert len(q.answered) == 3 and list(q.answered) == ["x7", "x8", "x9"]
    q.add_answer(answer("i0"), 0)
    q.add_answer(answer("i1"), 0)
    q.add_item(item("i9"), 0)
    q.add_answer(answer("i9"), 0)
    assert len(q.outcomes["sentiment"]) == 2


def test_answer_record_matches_the_feedback_schema() -> None:
    q = ReviewQueue(LABELS)
    q.add_item(item("a"), 0)
    record = answer_record(q.pending["a"], "rotten", "ann", "looked sarcastic")
    schemas.validate("feedback", record)
    assert record["id"] == "a" and record["label"] == "rotten" and record["reviewer"] == "ann"
    assert q.add_answer(record, 0) is not None


def test_cli_accepts_a_label_by_number_or_name() -> None:
    labels = ("fresh", "rotten")
    assert choose("1", labels) == "fresh" and choose(" rotten\n", labels) == "rotten"
    assert choose("3", labels) is None and choose("0", labels) is None and choose("meh", labels) is None


# --- statistics for the dashboard -----------------------------------------------------------------

def test_history_gives_throughput_and_review_rate_from_consecutive_samples() -> None:
    stats, history = TrafficStats(), History()
    history.sample(100.0, stats, {}, ["sentiment"])
    for _ in range(30):
        stats.observe("sentiment", "auto", 0.9)
    for _ in range(10):
        stats.observe("sentiment", "review", 0.6)
    stats.observe("sentiment", "audit", 0.9)
    history.sample(110.0, stats, {"sentiment": {"depth": 10, "oldest_age_s": 7.0}}, ["sentiment"])
    rates = history.rates("sentiment")
    assert rates["throughput"] == [(110.0, 4.0)]
    assert rates["review_rate"] == [(110.0, 0.25)]
    assert rates["depth"][-1] == (110.0, 10.0) and rates["oldest_age_s"][-1] == (110.0, 7.0)
    assert sum(stats.confidence["sentiment"]) == 40, "audit copies are not counted twice"
    assert stats.confidence["sentiment"][18] == 30 and stats.confidence["sentiment"][12] == 10


def test_reliability_bins_and_audited_accuracy() -> None:
    q = ReviewQueue(LABELS)
    for i, (conf, audit, human) in enumerate([(0.95, True, "fresh"), (0.92, True, "rotten"), (0.55, False, "fresh"),
                                              (0.58, False, "rotten"), (0.52, False, "rotten")]):
        q.add_item(item(f"r{i}", conf, audit=audit), 0)
        q.add_answer(answer(f"r{i}", human), 0)
    outcomes = q.outcomes["sentiment"]
    bins = reliability(outcomes)
    assert [(b["lo"], b["n"]) for b in bins] == [(0.5, 3), (0.9, 2)]
    assert bins[0]["accuracy"] == pytest.approx(1 / 3) and bins[1]["accuracy"] == 0.5
    assert bins[1]["confidence"] == pytest.approx(0.935)
    assert audited_accuracy(outcomes) == (0.5, 2)
    assert audited_accuracy([]) == (None, 0)


def status(value: float, drifted: bool = False, at: str = "2026-01-01T00:00:10.000Z") -> dict[str, Any]:
    fam = {"statistic": "js", "value": value, "threshold": 0.005, "p_value": 0.01, "drifted": drifted}
    return {"task": "sentiment", "model": "m", "baseline": "b1", "data_drift_open": drifted, "model_drift_open": False,
            "last": {"traffic": {"families": {"label": fam, "confidence": fam | {"value": value / 2}}},
                     "canary": {"statistic": "kl", "value": 0.001, "threshold": 0.02, "p_value": None,
                                "drifted": False}},
            "updated_at": at, "schema_version": 1}


def test_drift_history_keeps_values_against_thresholds_over_time() -> None:
    h = DriftHistory()
    for i, s in enumerate([status(0.001), status(0.002), status(0.02, True)]):
        schemas.validate("drift_status", s)
        assert h.add(s | {"updated_at": f"2026-01-01T00:00:1{i}.000Z"}, 0)
    series = h.series("sentiment")
    assert [v for _, v, _, _ in series["label"]] == [0.001, 0.002, 0.02]
    assert all(th == 0.005 for _, _, th, _ in series["label"]) and series["label"][-1][3] is True
    assert set(series) == {"label", "confidence", "canary"}
    assert not h.add({"task": "sentiment"}, 0)


# --- metrics --------------------------------------------------------------------------------------

def parse(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_outputs_become_outcome_confidence_and_review_series() -> None:
    m = ServiceMetrics({"m": (1.0, 4.0)})
    Out = namedtuple("Out", "topic key value")
    usage = {"prompt_tokens": 100, "completion_tokens": 1}
    auto = {"task": "sentiment", "decision": "auto", "confidence": 0.93, "usage": usage, "model": "m"}
    review = {"task": "sentiment", "decision": "review", "confidence": 0.61, "usage": usage, "model": "m",
              "review_reason": "low_confidence"}
    m.observe_outputs([Out("results", b"a", orjson.dumps(auto)),
                       Out("review", b"a", orjson.dumps(auto | {"audit": True}))])
    m.observe_outputs([Out("review", b"b", orjson.dumps(review))])
    m.observe_outputs([Out("deadletter", b"c", orjson.dumps({"error_type": "invalid_json"})),
                       Out("review", b"d", b"not json")])
    s = parse(m.exposition())
    req = "llm_classify_requests_total"
    assert s[(req, (("outcome", "auto"), ("task", "sentiment")))] == 1
    assert s[(req, (("outcome", "audit"), ("task", "sentiment")))] == 1
    assert s[(req, (("outcome", "review"), ("task", "sentiment")))] == 1
    assert s[(req, (("outcome", "dead_letter"), ("task", "unknown")))] == 1
    assert not any(name.startswith("llm_classify_tokens_total") for name, _ in s), "tokens come from the calls"
    assert s[("llm_classify_confidence_bucket", (("decision", "review"), ("le", "0.65"), ("task", "sentiment")))] == 1
    assert s[("llm_classify_confidence_bucket", (("decision", "review"), ("le", "0.6"), ("task", "sentiment")))] == 0
    assert s[("llm_classify_review_reasons_total", (("reason", "low_confidence"), ("task", "sentiment")))] == 1


SC_TASKS = """
[[task]]
name = "sc"
labels = ["fresh", "rotten"]
[task.model]
base_url = "{url}"
name = "synthetic"
[task.confidence]
methods = ["self_consistency"]
[task.confidence.self_consistency]
batch = 1
min_samples = 3

[[task]]
name = "ft"
labels = ["fresh", "rotten"]
[task.model]
base_url = "{url}"
name = "synthetic"
"""


def test_every_model_call_is_counted_in_the_client_whatever_the_method() -> None:
    """Calls, latency, in-flight, tokens and cost are measured inside ModelClient (its observer), so the
    samples of self-consistency count as calls, not just one call per request; errors by kind too."""
    m = ServiceMetrics({"synthetic": (1.0, 4.0)})
    seen_in_flight: list[float] = []
    original = m.call_started

    def started(task: str) -> None:
        original(task)
        seen_in_flight.append(m.in_flight._value.get())

    m.call_started = started  # type: ignore[method-assign]

    async def go() -> tuple[list[dict[str, Any]], dict[str, int]]:
        async with SyntheticModelServer(SyntheticConfig(latency_ms=20, seed=3)) as server:
            tasks = parse_tasks(SC_TASKS.format(url=server.base_url), "test", {})
            client = ModelClient(5, 0, observer=m)
            c = Classifier(tasks, client, 1000, 256)
            records = []
            for task, n in (("sc", 4), ("ft", 3)):
                outs = await asyncio.gather(*(c.process(orjson.dumps({"id": f"{task}{i}", "task": task, "text": "x"}),
                                                        None, Source("r", 0, i)) for i in range(n)))
                records += [orjson.loads(o[0].value) for o in outs]
            stats = server.stats()
            broken = parse_tasks(SC_TASKS.format(url="http://127.0.0.1:9/v1"), "test", {})
            failed = await Classifier(broken, client, 1000, 256).process(
                orjson.dumps({"id": "f", "task": "ft", "text": "x"}), None, Source("r", 0, 9))
            assert orjson.loads(failed[0].value)["review_reason"] == "model_error"
            await client.close()
            return records, stats

    records, stats = asyncio.run(go())
    s = parse(m.exposition())
    sc_requests = sum(r["requests"] for r in records if r["task"] == "sc")
    assert sc_requests >= 4 * 3, "min_samples 3, one sample per request"
    assert s[("llm_classify_model_calls_total", (("task", "sc"),))] == sc_requests
    assert s[("llm_classify_model_calls_total", (("task", "ft"),))] == 3 + 1
    assert stats["requests"] == sc_requests + 3, "every call the server saw was counted, no more"
    assert s[("llm_classify_model_latency_seconds_count", (("task", "sc"),))] == sc_requests
    assert s[("llm_classify_model_latency_seconds_bucket", (("le", "0.01"), ("task", "sc")))] == 0, "20 ms calls"
    assert s[("llm_classify_model_errors_total", (("kind", "connection"), ("task", "ft")))] == 1
    assert s[("llm_classify_model_calls_in_flight", ())] == 0 and max(seen_in_flight) >= 2
    prompt = sum(r["usage"]["prompt_tokens"] for r in records if r["task"] == "sc")
    completion = sum(r["usage"]["completion_tokens"] for r in records if r["task"] == "sc")
    assert prompt > 0 and s[("llm_classify_tokens_total", (("kind", "prompt"), ("task", "sc")))] == prompt
    assert s[("llm_classify_estimated_cost_usd_total", (("task", "sc"),))] == pytest.approx(
        (prompt * 1.0 + completion * 4.0) / 1e6)


def test_unpriced_models_have_no_cost_series() -> None:
    m = ServiceMetrics()
    m.call_finished("t", "x", 0.1, None, 5, 1)
    s = parse(m.exposition())
    assert s[("llm_classify_tokens_total", (("kind", "prompt"), ("task", "t")))] == 5
    assert not any(name.startswith("llm_classify_estimated_cost_usd_total") for name, _ in s)


def test_retries_of_the_openai_client_are_counted_without_changing_the_log(caplog: pytest.LogCaptureFixture) -> None:
    m = ServiceMetrics()
    counter = count_retries(m)
    answers = [503, 503, 200]

    async def handler(request: web.Request) -> web.Response:
        status = answers.pop(0)
        if status != 200:
            return web.Response(status=status)
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                  "choices": [{"index": 0, "finish_reason": "length",
                                               "message": {"role": "assistant", "content": "fresh"}}]})

    async def go() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=3)
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        finally:
            await runner.cleanup()

    logging.getLogger("openai").setLevel(logging.WARNING)
    try:
        with caplog.at_level(logging.WARNING):
            asyncio.run(go())
    finally:
        logging.getLogger("openai").setLevel(logging.NOTSET)
        logging.getLogger("openai._base_client").removeFilter(counter)
    assert parse(m.exposition())[("llm_classify_model_retries_total", ())] == 2
    assert not [r for r in caplog.records if r.getMessage().startswith("Retrying")], "INFO lines stay hidden"


def test_review_queue_drift_and_lag_gauges_are_read_at_scrape_time() -> None:
    m = ServiceMetrics()
    q = ReviewQueue(LABELS)
    h = DriftHistory()
    m.state.queue, m.state.drift, m.state.clock = q, h, lambda: 1_700_000_060.0
    q.add_item(item("a", at="2023-11-14T22:13:20Z"), 0)
    h.add(status(0.02, True), 0)
    m.state.lag = {("reqs", 0): 5, ("reqs", 1): 0}
    m.state.stalled = [("reqs", 0)]
    s = parse(m.exposition())
    assert s[("llm_classify_review_queue_depth", (("task", "sentiment"),))] == 1
    assert s[("llm_classify_review_queue_oldest_age_seconds", (("task", "sentiment"),))] == 60
    stat = (("family", "label"), ("statistic", "js"), ("task", "sentiment"))
    assert s[("llm_classify_drift_statistic", stat)] == 0.02 and s[("llm_classify_drift_threshold", stat)] == 0.005
    assert s[("llm_classify_drift_alert_open", (("kind", "data"), ("task", "sentiment")))] == 1
    assert s[("llm_classify_drift_alert_open", (("kind", "model"), ("task", "sentiment")))] == 0
    assert s[("llm_classify_consumer_lag", (("partition", "0"), ("topic", "reqs")))] == 5
    assert s[("llm_classify_partition_stalled", (("partition", "0"), ("topic", "reqs")))] == 1
    assert ("llm_classify_partition_stalled", (("partition", "1"), ("topic", "reqs"))) not in s
    q.add_answer(answer("a"), 0)
    assert parse(m.exposition())[("llm_classify_review_queue_depth", (("task", "sentiment"),))] == 0


# --- plots and pages ------------------------------------------------------------------------------

def test_plots_are_well_formed_svg_and_say_how_many_points_they_drew() -> None:
    charts = [plots.line_chart("t", {"a": [(1.0, 2.0), (2.0, 3.0)]}, "y", thresholds={"a": [(1.0, 2.5), (2.0, 2.5)]}),
              plots.histogram_chart("h", [0, 3, 1], threshold=0.8),
              plots.reliability_chart("r", [{"lo": 0.5, "hi": 0.6, "confidence": 0.55, "accuracy": 0.5, "n": 4}]),
              plots.line_chart("e", {"a": []}, "y")]
    points = []
    for svg in charts:
        root = ET.fromstring(svg)
        points.append(int(root.get("data-points", "")))
    assert points == [2, 4, 4, 0]
    assert 'class="threshold"' in charts[0] and charts[1].count('class="bar"') == 2
    assert "no data yet" in charts[3]


def test_x_tick_labels_stay_inside_the_plot() -> None:
    """A tick at the right edge is right-aligned (a centred label there was cut off on the dashboard)."""
    svg = plots.line_chart("t", {"a": [(0.0, 1.0), (10.0, 2.0)]}, "y")
    ticks = [t for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")
             if t.get("y") == str(plots.H - plots.B + 13)]
    assert ticks and ticks[-1].text == time.strftime("%H:%M:%S", time.localtime(10.0))
    assert float(ticks[-1].get("x", "nan")) == plots.W - plots.R
    assert ticks[-1].get("text-anchor") == "end" and ticks[0].get("text-anchor") == "middle"


def test_dashboard_shows_every_plot_per_task() -> None:
    q = ReviewQueue(LABELS)
    q.add_item(item("a"), 0)
    stats, history, drift = TrafficStats(), History(), DriftHistory()
    stats.observe("sentiment", "auto", 0.9)
    html = pages.dashboard(TASKS, stats, history, drift, q, loaded=True, now=time.time())
    for title in ("Throughput", "Review rate", "Confidence (calibrated)", "Reliability (answered items)",
                  "Drift: traffic vs baseline", "Drift: canaries vs baseline", "Review queue", "Oldest pending item"):
        assert f'aria-label="{title}"' in html
    assert 'data-task="sentiment"' in html
    assert "<script" not in html and "<link" not in html and "src=" not in html, "nothing fetched from elsewhere"


def test_review_page_escapes_the_text_and_offers_one_button_per_label() -> None:
    q = ReviewQueue(LABELS)
    q.add_item(item("x1", text="<script>alert(1)</script>"), 0)
    html = pages.review_page(TASKS, q, now=time.time())
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html
    assert html.count('name="label"') == 2 and 'value="x1"' in html
    assert "nothing waits for review" in pages.review_page(TASKS, ReviewQueue(LABELS))


# --- alerts and settings --------------------------------------------------------------------------

def test_queue_alarm_opens_once_per_episode_and_recovers() -> None:
    alarm = QueueAlarm(max_depth=10, max_age_s=60)
    now = "2026-01-01T00:00:00.000Z"
    assert alarm.update("t", 10, 59, now) is None
    opened = alarm.update("t", 11, 5, now)
    assert opened is not None and opened["state"] == "open" and "11 items" in opened["reason"]
    schemas.validate("review_queue_alert", opened)
    assert alarm.update("t", 50, 500, now) is None, "still open: no second alert"
    recovered = alarm.update("t", 0, 0, now)
    assert recovered is not None and recovered["state"] == "recovered"
    schemas.validate("review_queue_alert", recovered)
    aged = alarm.update("t", 1, 61, now)
    assert aged is not None and "oldest item waiting 61 s" in aged["reason"]
    assert not QueueAlarm(0, 0).enabled


def test_forwarder_posts_json_with_retries() -> None:
    received: list[dict[str, Any]] = []
    statuses = [500, 200]

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=statuses.pop(0))

    async def go() -> bool:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            forwarder = WebhookForwarder(f"http://127.0.0.1:{runner.addresses[0][1]}/hook")
            delivery = forwarder.forward({"kind": "review_queue", "state": "open"})
            assert delivery is not None and forwarder.deliveries
            return await delivery
        finally:
            await runner.cleanup()

    assert asyncio.run(go()) is True
    assert received == [{"kind": "review_queue", "state": "open"}] * 2
    assert WebhookForwarder(None).forward({"x": 1}) is None


def test_operations_settings_are_validated() -> None:
    s = Settings.from_env({"STREAMS_TOKEN_PRICES": "gpt-4o-mini=0.15:0.6:0.075, local=0:0",
                           "STREAMS_REVIEW_ALERT_DEPTH": "100", "STREAMS_ALERT_WEBHOOK_URL": "https://hooks.example/x"})
    assert s.token_prices == {"gpt-4o-mini": TokenPrice(0.15, 0.6, 0.075), "local": TokenPrice(0.0, 0.0, 0.0)}
    assert s.review_alert_depth == 100 and s.alert_webhook_url == "https://hooks.example/x"
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"STREAMS_TOKEN_PRICES": "oops", "STREAMS_REVIEW_QUEUE_MAX": "0",
                           "STREAMS_ALERT_WEBHOOK_URL": "hooks.example"})
    text = str(err.value)
    assert "STREAMS_TOKEN_PRICES entry 'oops'" in text and "STREAMS_REVIEW_QUEUE_MAX" in text
    assert "STREAMS_ALERT_WEBHOOK_URL" in text


# --- deploy/: Prometheus configuration --------------------------------------------------------------

def test_prometheus_config_and_alert_rules_use_series_the_worker_exports() -> None:
    import re
    from pathlib import Path

    import yaml

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    config = yaml.safe_load((deploy / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["dns_sd_configs"][0]["port"] == 6066
    rules_text = (deploy / config["rule_files"][0]).read_text()
    rules = yaml.safe_load(rules_text)["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"ReviewQueueGrowing", "DriftAlertOpen", "ModelErrorRateHigh"} <= names
    assert all(r["expr"] and r["annotations"]["summary"] for r in rules)
    m = ServiceMetrics({"m": (1, 1)})
    m.state.queue, m.state.drift = ReviewQueue(LABELS), DriftHistory()
    m.state.drift.add(status(0.01), 0)
    m.state.lag = {("classify.requests", 0): 1}
    m.state.stalled = [("classify.requests", 0)]
    m.observe_record("results", {"task": "sentiment", "decision": "auto", "confidence": 0.9})
    m.model_errors.labels("sentiment", "timeout").inc()
    m.model_calls.labels("sentiment").inc()
    exported = {name for name, _ in parse(m.exposition())}
    used = set(re.findall(r"llm_classify_[a-z_]+", rules_text))
    assert used and used <= exported, used - exported
