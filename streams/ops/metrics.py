"""Prometheus metrics for the worker's `/metrics`. No Kafka or Faust here, so it is unit-tested alone.

Counters are fed by the classify path (`observe_outputs`: one call per request) and by the model
client itself (`ServiceMetrics` is its `CallObserver`: every call of every confidence method, canary
and probe: in flight, latency, errors, tokens, prompt tokens served from the server's prefix cache, cost
with cached tokens at their own price, `streams.ops.cost`). Gauges whose
truth lives elsewhere (review queue, drift status, consumer lag, each endpoint's adaptive concurrency
limit) are read at scrape time by a
collector, so they are never stale. Series are per worker; sum or max them across workers in
Prometheus (deploy/alert-rules.yml does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.classify.concurrency import ConcurrencyGate
from streams.classify.pacing import Pacer
from streams.ops.cost import TokenPrice
from streams.ops.review_queue import ReviewQueue
from streams.ops.stats import DriftHistory, TrafficStats, outcome_of

NS = "llm_classify"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
CONFIDENCE_BUCKETS = tuple(round(i / 20, 2) for i in range(1, 21))
RETRY_LOGGER = "openai._base_client"  # logs "Retrying request in ... (retry n of m)" before each retry


class ServiceMetrics:
    """Every series the worker exports, in a registry of its own."""

    def __init__(self, token_prices: Mapping[str, tuple[float, float] | tuple[float, float, float]] | None = None,
                 ) -> None:
        self.registry = CollectorRegistry()
        #: model -> price; a (prompt, completion) pair prices cached prompt tokens as uncached (`TokenPrice.of`).
        self.token_prices = {model: TokenPrice.of(*price) for model, price in (token_prices or {}).items()}
        self.traffic = TrafficStats()
        r = self.registry
        self.requests = Counter(f"{NS}_requests", "Requests by outcome: auto, review, audit (copy of an auto "
                                "item sent for checking), dead_letter", ["task", "outcome"], registry=r)
        self.review_reasons = Counter(f"{NS}_review_reasons", "Items sent to review, by reason",
                                      ["task", "reason"], registry=r)
        self.latency = Histogram(f"{NS}_model_latency_seconds", "Model call time (retries and circuit waits "
                                 "included)", ["task"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_errors = Counter(f"{NS}_model_errors", "Model calls that failed after retries, by kind",
                                    ["task", "kind"], registry=r)
        self.model_calls = Counter(f"{NS}_model_calls", "Model calls (every method's, samples and continuations "
                                   "included; task is empty for capability probes)", ["task"], registry=r)
        self.retries = Counter(f"{NS}_model_retries", "HTTP retries of model calls by the openai client",
                               registry=r)
        self.in_flight = Gauge(f"{NS}_model_calls_in_flight", "Model calls in flight in this worker", registry=r)
        self.confidence = Histogram(f"{NS}_confidence", "Calibrated confidence of classified items",
                                    ["task", "decision"], buckets=CONFIDENCE_BUCKETS, registry=r)
        self.tokens = Counter(f"{NS}_tokens", "Tokens used by model calls", ["task", "kind"], registry=r)
        # Its own family rather than a third `kind` of the one above: cached tokens are a part of the prompt
        # tokens, and summing the kinds must keep giving the tokens used.
        self.cached_tokens = Counter(f"{NS}_model_cached_prompt_tokens", "Prompt tokens the model server reused "
                                     "from its prefix cache (a part of the prompt tokens; 0 where the server "
                                     "reports none)", ["task", "model"], registry=r)
        self.cost = Counter(f"{NS}_estimated_cost_usd", "Estimated model cost from STREAMS_TOKEN_PRICES, cached "
                            "prompt tokens at their own price (only tasks whose model has a price)", ["task"],
                            registry=r)
        self.answer_cache = Counter(f"{NS}_answer_cache", "Answer cache lookups by outcome: hit (answered from the "
                                    "cache), coalesced (waited for an identical call in flight), miss (called the "
                                    "model); tasks with the cache on only", ["task", "outcome"], registry=r)
        self.answer_cache_entries = Gauge(f"{NS}_answer_cache_entries", "Answers this worker holds in its answer "
                                          "cache (STREAMS_ANSWER_CACHE_ENTRIES at most)", registry=r)
        self.state = StateCollector()
        r.register(self.state)

    def observe_record(self, topic: str, record: Mapping[str, Any]) -> None:
        """One emitted record (logical topic name and its payload)."""
        outcome = outcome_of(topic, record)
        if outcome is None:
            return
        # Dead letters carry no task (the request may not have had a valid one).
        task = str(record.get("task") or "") if outcome != "dead_letter" else "unknown"
        self.requests.labels(task, outcome).inc()
        confidence = record.get("confidence")
        confidence = float(confidence) if isinstance(confidence, (int, float)) else None
        self.traffic.observe(task, outcome, confidence)
        if outcome == "dead_letter":
            return
        if outcome == "review":
            self.review_reasons.labels(task, str(record.get("review_reason") or "unknown")).inc()
        if outcome == "audit":
            return  # the same request was counted as auto: its confidence too
        if confidence is not None:
            self.confidence.labels(task, outcome).observe(confidence)

    def answer_cache_lookup(self, task: str, outcome: str) -> None:
        """The answer cache's observer: one lookup of a request of `task` (hit, coalesced or miss)."""
        self.answer_cache.labels(task, outcome).inc()

    # The model client's CallObserver: every call, whichever method, canary or probe made it.
    def call_started(self, task: str) -> None:
        self.in_flight.inc()
        self.model_calls.labels(task).inc()

    def call_finished(self, task: str, model: str, seconds: float, error: str | None, prompt_tokens: int,
                      completion_tokens: int, cached_tokens: int = 0) -> None:
        self.in_flight.dec()
        self.latency.labels(task).observe(seconds)
        if error is not None and error != "cancelled":  # a cancelled call is the worker's doing, not the model's
            self.model_errors.labels(task, error).inc()
        if prompt_tokens or completion_tokens:
            self.tokens.labels(task, "prompt").inc(prompt_tokens)
            self.tokens.labels(task, "completion").inc(completion_tokens)
            cached = min(max(cached_tokens, 0), prompt_tokens)
            # Incremented by 0 too, so a server that reports no cache shows 0 rather than no data.
            self.cached_tokens.labels(task, model).inc(cached)
            price = self.token_prices.get(model)
            if price is not None:
                self.cost.labels(task).inc(price.cost_usd(prompt_tokens, completion_tokens, cached))

    def observe_outputs(self, outputs: Iterable[Any]) -> None:
        """Hook for the classify agent: its `Output`s (topic, key, value bytes) after publishing."""
        for output in outputs:
            try:
                self.observe_record(output.topic, orjson.loads(output.value))
            except Exception:  # metrics must never break the classify path
                logging.getLogger(__name__).debug("metrics: unreadable output", exc_info=True)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Gauges read at scrape time from the worker's state: review queue, drift status, consumer lag."""

    def __init__(self) -> None:
        self.queue: ReviewQueue | None = None
        self.drift: DriftHistory | None = None
        self.lag: dict[tuple[str, int], int] = {}
        self.stalled: list[tuple[str, int]] = []  # from streams.classify.stall, set by the ops sampler
        self.gates: Mapping[str, ConcurrencyGate] = {}  # the model client's, by endpoint base URL
        self.pacers: Mapping[tuple[str, str], Pacer] = {}  # the model client's, by (base URL, model)
        self.clock: Callable[[], float] = time.time

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        if self.queue is not None:
            depth = GaugeMetricFamily(f"{NS}_review_queue_depth", "Review items waiting for an answer", labels=["task"])
            age = GaugeMetricFamily(f"{NS}_review_queue_oldest_age_seconds",
                                    "How long the oldest pending review item has waited", labels=["task"])
            for task, s in self.queue.stats(self.clock()).items():
                depth.add_metric([task], s["depth"])
                age.add_metric([task], s["oldest_age_s"])
            overflow = GaugeMetricFamily(f"{NS}_review_queue_overflow",
                                         "Review items not held because STREAMS_REVIEW_QUEUE_MAX was reached")
            overflow.add_metric([], self.queue.overflow)
            yield from (depth, age, overflow)
        if self.drift is not None:
            value = GaugeMetricFamily(f"{NS}_drift_statistic", "Last drift effect size per family "
                                      "(traffic: label, confidence, entropy; canary)",
                                      labels=["task", "family", "statistic"])
            threshold = GaugeMetricFamily(f"{NS}_drift_threshold", "Effect size above which a window drifts",
                                          labels=["task", "family", "statistic"])
            p_value = GaugeMetricFamily(f"{NS}_drift_p_value", "Last drift test p-value", labels=["task", "family"])
            open_ = GaugeMetricFamily(f"{NS}_drift_alert_open", "1 while a drift episode is open",
                                      labels=["task", "kind"])
            for task, status in self.drift.latest.items():
                last = status.get("last") or {}
                families = dict((last.get("traffic") or {}).get("families") or {})
                if isinstance(last.get("canary"), Mapping):
                    families["canary"] = last["canary"]
                for family, v in families.items():
                    if not isinstance(v, Mapping) or not isinstance(v.get("value"), (int, float)):
                        continue
                    stat = str(v.get("statistic", ""))
                    value.add_metric([task, family, stat], float(v["value"]))
                    threshold.add_metric([task, family, stat], float(v.get("threshold") or 0.0))
                    if isinstance(v.get("p_value"), (int, float)):
                        p_value.add_metric([task, family], float(v["p_value"]))
                open_.add_metric([task, "data"], float(bool(status.get("data_drift_open"))))
                open_.add_metric([task, "model"], float(bool(status.get("model_drift_open"))))
            yield from (value, threshold, p_value, open_)
        lag = GaugeMetricFamily(f"{NS}_consumer_lag", "Messages between the committed offset and the high "
                                "watermark, per assigned partition of this worker", labels=["topic", "partition"])
        for (topic, partition), n in sorted(self.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        stalled = GaugeMetricFamily(f"{NS}_partition_stalled", "1 while an owned requests partition has requests "
                                    "waiting and none done for STREAMS_STALL_AFTER_S while the worker sat idle",
                                    labels=["topic", "partition"])
        for topic, partition in sorted(self.stalled):
            stalled.add_metric([topic, str(partition)], 1)
        yield stalled
        limit = GaugeMetricFamily(f"{NS}_model_concurrency_limit", "Model calls this worker lets be in flight at "
                                  "once to the endpoint, adapted to its latency and 429s", labels=["endpoint"])
        waiting = GaugeMetricFamily(f"{NS}_model_calls_waiting", "Model calls waiting in this worker for room "
                                    "under the endpoint's concurrency limit", labels=["endpoint"])
        for url, gate in sorted(self.gates.items()):
            endpoint = _without_credentials(url)
            limit.add_metric([endpoint], gate.limit.limit)
            waiting.add_metric([endpoint], gate.waiting)
        yield from (limit, waiting)
        yield from self._pacing()

    def _pacing(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Each endpoint's budget as this worker sees it (streams.classify.pacing), and the 429s it got."""
        labels = ["endpoint", "model"]
        share = GaugeMetricFamily(f"{NS}_model_budget_share", "Part of the endpoint's requests/tokens per minute "
                                  "this worker may use (its share of the requests partitions)", labels=labels)
        available = GaugeMetricFamily(f"{NS}_model_budget_available", "Requests or tokens this worker may send to "
                                      "the endpoint now: its own bucket, bounded by the server's x-ratelimit "
                                      "headers (no series while unbounded)", labels=[*labels, "kind"])
        pacing = GaugeMetricFamily(f"{NS}_model_calls_pacing", "Model calls waiting in this worker for the "
                                   "endpoint's budget", labels=labels)
        waited = CounterMetricFamily(f"{NS}_model_pacing_wait_seconds", "Seconds model calls waited for the "
                                     "endpoint's budget, all calls together", labels=labels)
        refused = CounterMetricFamily(f"{NS}_model_rate_limited", "HTTP 429 answers from the endpoint, the openai "
                                      "client's retried ones included", labels=labels)
        for (url, model), pacer in sorted(self.pacers.items()):
            snap = pacer.snapshot()
            key = [_without_credentials(url), model]
            share.add_metric(key, snap["share"])
            for kind, value in snap["available"].items():
                if value is not None:
                    available.add_metric([*key, kind], value)
            pacing.add_metric(key, snap["waiting"])
            waited.add_metric(key, snap["waited_s"])
            refused.add_metric(key, snap["rate_limited"])
        yield from (share, available, pacing, waited, refused)


def _without_credentials(url: str) -> str:
    """A base URL fit for a label: any user:password@ part dropped."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")
                                     if parts.hostname else parts.netloc))


class RetryLogCounter(logging.Filter):
    """Counts the openai client's retries from its own log line, the only place it reports them.

    The logger is lowered to INFO so the line is always produced; the filter then drops what the
    `openai` logger's level would have hidden, so the worker's log looks as before. One filter per
    logger feeds every registered counter: a second filter would never see the lines the first drops.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counters: list[Counter] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Retrying request"):
            for counter in self.counters:
                counter.inc()
        return record.levelno >= logging.getLogger("openai").getEffectiveLevel()


def count_retries(metrics: ServiceMetrics) -> RetryLogCounter:
    """Count the openai client's retries into `metrics.retries` (idempotent per metrics object)."""
    logger = logging.getLogger(RETRY_LOGGER)
    counter = next((f for f in logger.filters if isinstance(f, RetryLogCounter)), None)
    if counter is None:
        counter = RetryLogCounter()
        logger.addFilter(counter)
    if metrics.retries not in counter.counters:
        counter.counters.append(metrics.retries)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)  # explicit, so a later root level (worker -l warning) cannot hide it
    return counter
