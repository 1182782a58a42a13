"""The Grafana dashboard and the Prometheus alert rules query only what the worker exports.

Nothing here is a hand list of series: a `ServiceMetrics` is filled with a small fake state (review
queue, drift history, lag, a stalled partition, one model call, one output record) so that every
family it can export appears, and its `/metrics` text is parsed. Every PromQL expression of
deploy/grafana/dashboards/*.json (panels and template variables) and deploy/alert-rules.yml is then
read by a small PromQL parser that knows which labels each sub-expression carries, so a query is
refused when it names a series the worker does not export, filters or aggregates by a label those
series do not have, puts two vectors with different label sets side by side (they would match
nothing), uses `rate` on a gauge, or a legend/annotation names a label the result does not carry.
The last tests feed broken queries through the same checks, so each check is seen to fail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.classify.concurrency import AdaptiveLimit, ConcurrencyGate
from streams.classify.pacing import Pacer
from streams.ops.metrics import ServiceMetrics
from streams.ops.review_queue import ReviewQueue
from streams.ops.stats import DriftHistory

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
ALERT_RULES = DEPLOY / "alert-rules.yml"
# Prometheus attaches these to every scraped series (target labels); they are not in the exposition.
SCRAPE_LABELS = frozenset({"instance", "job"})
# What a Grafana range macro stands for in a query; the value only has to parse as a duration.
GRAFANA_RANGES = ("__rate_interval", "__interval", "__range", "__auto")
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                              "__range_ms", "__auto", "__from", "__to", "__dashboard", "__user", "__org",
                              "__name", "__all", "__timeFilter"})
# Panel topics the dashboard must cover (the series behind them are checked against the code below).
REQUIRED_FAMILIES = (
    "llm_classify_requests", "llm_classify_model_latency_seconds", "llm_classify_model_errors",
    "llm_classify_model_retries", "llm_classify_model_calls_in_flight", "llm_classify_consumer_lag",
    "llm_classify_partition_stalled", "llm_classify_review_queue_depth",
    "llm_classify_review_queue_oldest_age_seconds", "llm_classify_drift_statistic", "llm_classify_drift_threshold",
    "llm_classify_drift_alert_open", "llm_classify_tokens", "llm_classify_estimated_cost_usd",
)


# --------------------------------------------------------------------------- what the worker exports


@dataclass(frozen=True)
class Series:
    family: str
    kind: str  # the family's type: counter, gauge, histogram, ...
    labels: frozenset[str]

    @property
    def counter_like(self) -> bool:
        """A series `rate`/`increase` make sense on: counters and histogram buckets, counts and sums."""
        return self.kind in ("counter", "histogram", "summary")


def _filled_metrics() -> ServiceMetrics:
    """A ServiceMetrics in which every family has at least one sample."""
    m = ServiceMetrics({"m": (1.0, 4.0)})
    queue = ReviewQueue({"sentiment": ("fresh", "rotten")})
    queue.add_item({"id": "a", "task": "sentiment", "text": "some text", "label": "fresh", "confidence": 0.6,
                    "probabilities": {"fresh": 0.6, "rotten": 0.4}, "review_reason": "low_confidence",
                    "processed_at": "2026-01-01T00:00:00.000Z"}, 0)
    drift = DriftHistory()
    family = {"statistic": "js", "value": 0.02, "threshold": 0.005, "p_value": 0.01, "drifted": True}
    drift.add({"task": "sentiment", "model": "m", "baseline": "b1", "data_drift_open": True, "model_drift_open": False,
               "last": {"traffic": {"families": {"label": family}},
                        "canary": {"statistic": "kl", "value": 0.001, "threshold": 0.02, "p_value": None}},
               "updated_at": "2026-01-01T00:00:10.000Z", "schema_version": 1}, 0)
    m.state.queue, m.state.drift, m.state.clock = queue, drift, lambda: 1_767_225_660.0
    m.state.lag = {("classify.requests", 0): 5}
    m.state.stalled = [("classify.requests", 0)]
    m.state.gates = {"http://model:8000/v1": ConcurrencyGate(AdaptiveLimit(1, 64, initial=12))}
    pacer = Pacer(600, 60_000, share=0.5)  # an endpoint with a declared budget, after one 429
    pacer.observe_headers({"retry-after-ms": "100"}, status=429)
    m.state.pacers = {("http://model:8000/v1", "m"): pacer}
    m.call_started("sentiment")
    m.call_finished("sentiment", "m", 0.3, "http_status", 100, 2)  # a failed call that still used tokens
    m.observe_record("review", {"task": "sentiment", "decision": "review", "confidence": 0.6,
                                "review_reason": "low_confidence"})
    m.retries.inc()  # what count_retries does on the openai client's "Retrying request" log line
    m.answer_cache_lookup("sentiment", "hit")  # what the answer cache tells it on each lookup
    return m


def _parse_exposition(text: str) -> dict[str, Series]:
    out: dict[str, Series] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            prev = out.get(sample.name)
            labels = frozenset(sample.labels) | (prev.labels if prev else frozenset())
            out[sample.name] = Series(fam.name, fam.type, labels)
    return out


@pytest.fixture(scope="module")
def exported() -> dict[str, Series]:
    """Sample name (what PromQL selects) -> its family, type and label names."""
    return _parse_exposition(_filled_metrics().exposition().decode())


def test_the_fake_state_fills_every_family_the_worker_can_export(exported: dict[str, Series]) -> None:
    """Otherwise a family missing from the exposition would make its queries look wrong (or labels unknown)."""
    families = list(text_string_to_metric_families(_filled_metrics().exposition().decode()))
    empty = [f.name for f in families if not f.samples]
    assert not empty, f"no samples for {empty}: extend _filled_metrics"
    state = {f.name for f in families if f.type == "gauge" and not f.name.endswith("_created")}
    assert {"llm_classify_review_queue_depth", "llm_classify_drift_p_value", "llm_classify_consumer_lag",
            "llm_classify_partition_stalled", "llm_classify_model_calls_in_flight"} <= state
    assert "llm_classify_model_retries_total" in exported
    assert exported["llm_classify_model_latency_seconds_bucket"].labels == {"task", "le"}


# --------------------------------------------------------------------------- a small PromQL reader

_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<dur>(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_]))
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>=])
  | (?P<punct>[(){}\[\],:@])
""", re.VERBOSE)

AGGREGATIONS = frozenset({"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "quantile",
                          "topk", "bottomk", "count_values", "limitk", "limit_ratio"})
_PARAM_AGGREGATIONS = frozenset({"quantile", "topk", "bottomk", "count_values", "limitk", "limit_ratio"})
# Functions: argument types ('s' scalar, 'v' instant vector, 'm' range vector, 'str' string, '*' any number
# more of the last) and what the result carries. Kinds: keep (labels of the vector argument), none (scalar
# or label-less vector), hq (histogram_quantile), lr/lj (label_replace/label_join).
FUNCTIONS: dict[str, tuple[tuple[str, ...], str, str]] = {
    # name: (argument types, result type, label rule)
    **dict.fromkeys((
        "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "avg_over_time",
        "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
        "stddev_over_time", "stdvar_over_time", "present_over_time", "absent_over_time", "mad_over_time",
        "first_over_time", "ts_of_max_over_time", "ts_of_min_over_time", "ts_of_last_over_time",
    ), (("m",), "vector", "keep")),
    **dict.fromkeys((
        "abs", "ceil", "floor", "exp", "ln", "log2", "log10", "sqrt", "sgn", "sort", "sort_desc", "timestamp",
        "absent", "acos", "asin", "atan", "cos", "sin", "tan", "deg", "rad", "day_of_month", "day_of_week",
        "day_of_year", "days_in_month", "hour", "minute", "month", "year",
    ), (("v",), "vector", "keep")),
    "round": (("v", "s*"), "vector", "keep"),
    "clamp": (("v", "s", "s"), "vector", "keep"),
    "clamp_min": (("v", "s"), "vector", "keep"),
    "clamp_max": (("v", "s"), "vector", "keep"),
    "predict_linear": (("m", "s"), "vector", "keep"),
    "quantile_over_time": (("s", "m"), "vector", "keep"),
    "holt_winters": (("m", "s", "s"), "vector", "keep"),
    "double_exponential_smoothing": (("m", "s", "s"), "vector", "keep"),
    "histogram_quantile": (("s", "v"), "vector", "hq"),
    "histogram_fraction": (("s", "s", "v"), "vector", "hq"),
    "label_replace": (("v", "str", "str", "str", "str"), "vector", "lr"),
    "label_join": (("v", "str", "str", "str*"), "vector", "lj"),
    "vector": (("s",), "vector", "none"),
    "scalar": (("v",), "scalar", "none"),
    "time": ((), "scalar", "none"),
    "pi": ((), "scalar", "none"),
}
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})
GAUGE_FUNCTIONS = frozenset({"deriv", "delta", "idelta", "predict_linear", "holt_winters",
                             "double_exponential_smoothing"})
# Binary operators by precedence, lowest first; `^` is right-associative.
PRECEDENCE = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
              "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "atan2": 5, "^": 6}
SET_OPS = frozenset({"and", "or", "unless"})
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                      "and", "or", "unless", "atan2"})


@dataclass(frozen=True)
class Value:
    type: str  # scalar, string, vector, matrix
    labels: frozenset[str] = frozenset()
    series: tuple[Series, ...] = ()  # the raw series a range/instant selector picked (for rate-on-gauge)
    literal: str = ""  # a string literal's text
    selector: bool = False  # a bare series selector, which a range [5m] may follow


@dataclass
class Query:
    """One expression read against what the worker exports: its result and every problem found."""

    source: str
    exported: dict[str, Series]
    problems: list[str] = field(default_factory=list)
    metrics: set[str] = field(default_factory=set)  # families used
    result: Value | None = None

    def problem(self, text: str) -> None:
        self.problems.append(text)


class PromQLError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise PromQLError(f"cannot read {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group()))
    return out


def _substitute_grafana(expr: str) -> tuple[str, set[str]]:
    """Grafana's range macros become a duration; other variables may only appear inside strings."""
    used = set(re.findall(r"\$\{?(\w+)", expr))
    for name in GRAFANA_RANGES:
        expr = re.sub(r"\$\{" + name + r"\}|\$" + name + r"\b", "5m", expr)
    outside = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    if "$" in outside:
        raise PromQLError(f"a Grafana variable outside a string: {outside!r}")
    return expr, used


class _Parser:
    def __init__(self, query: Query, text: str) -> None:
        self.q = query
        self.toks = _tokens(text)
        self.i = 0

    # token helpers
    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else ("eof", "")

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.next()
        if tok[1] != value:
            raise PromQLError(f"expected {value!r}, found {tok[1] or 'the end'!r}")

    def label_list(self) -> list[str]:
        self.expect("(")
        labels: list[str] = []
        while self.peek()[1] != ")":
            kind, name = self.next()
            if kind != "ident":
                raise PromQLError(f"expected a label name, found {name!r}")
            labels.append(name)
            if self.peek()[1] == ",":
                self.next()
        self.expect(")")
        return labels

    # grammar
    def parse(self) -> Value:
        value = self.binary(0)
        if self.peek()[0] != "eof":
            raise PromQLError(f"unexpected {self.peek()[1]!r}")
        return value

    def binary(self, min_prec: int) -> Value:
        lhs = self.unary()
        while True:
            kind, op = self.peek()
            prec = PRECEDENCE.get(op) if kind in ("op", "ident") else None
            if prec is None or prec < min_prec:
                return lhs
            self.next()
            returns_bool = False
            if self.peek()[1] == "bool":
                self.next()
                returns_bool = True
            matching: tuple[str, list[str]] | None = None
            group: tuple[str, list[str]] | None = None
            if self.peek()[1] in ("on", "ignoring"):
                matching = (self.next()[1], self.label_list())
                if self.peek()[1] in ("group_left", "group_right"):
                    side = self.next()[1]
                    group = (side, self.label_list() if self.peek()[1] == "(" else [])
            rhs = self.binary(prec if op == "^" else prec + 1)
            lhs = self.combine(lhs, op, rhs, matching, group, returns_bool)

    def combine(self, lhs: Value, op: str, rhs: Value, matching: tuple[str, list[str]] | None,
                group: tuple[str, list[str]] | None, returns_bool: bool) -> Value:
        if lhs.type not in ("scalar", "vector") or rhs.type not in ("scalar", "vector"):
            raise PromQLError(f"{op} between {lhs.type} and {rhs.type}")
        if lhs.type == "scalar" and rhs.type == "scalar":
            if op in SET_OPS:
                raise PromQLError(f"{op} between two scalars")
            return Value("scalar")
        if lhs.type == "scalar" or rhs.type == "scalar":
            if op in SET_OPS:
                raise PromQLError(f"{op} needs two vectors")
            return lhs if lhs.type == "vector" else rhs
        left, right = lhs.labels, rhs.labels
        if matching is not None:
            how, names = matching
            for name in names:
                if how == "on" and not (name in left and name in right):
                    self.q.problem(f"on({name}) but {name!r} is not on both sides of {op} "
                                   f"({sorted(left)} vs {sorted(right)})")
                if how == "ignoring" and name not in left | right:
                    self.q.problem(f"ignoring({name}) but neither side of {op} has {name!r}")
        if op in SET_OPS:
            return Value("vector", left | right if op == "or" else left)
        if matching is None:
            if left != right:
                self.q.problem(f"{op} between vectors with different labels {sorted(left)} and {sorted(right)}: "
                               "they match nothing; aggregate both sides by the same labels or use on()/ignoring()")
            return Value("vector", left)
        how, names = matching
        if group is None:  # one-to-one: the result keeps the on() labels, or drops the ignoring() ones
            if how == "ignoring" and left - set(names) != right - set(names):
                self.q.problem(f"{op} ignoring({', '.join(names)}) still leaves different labels "
                               f"{sorted(left - set(names))} and {sorted(right - set(names))}")
            return Value("vector", frozenset(names) if how == "on" else left - set(names))
        side, extra = group
        one = right if side == "group_left" else left
        for name in extra:
            if name not in one:
                self.q.problem(f"{side}({name}) but the other side of {op} has no {name!r}")
        return Value("vector", (left if side == "group_left" else right) | set(extra))

    def unary(self) -> Value:
        if self.peek()[1] in ("-", "+"):
            self.next()
            value = self.unary()
            if value.type not in ("scalar", "vector"):
                raise PromQLError("unary minus on a range vector")
            return value
        return self.postfix(self.primary())

    def postfix(self, value: Value) -> Value:
        while True:
            tok = self.peek()
            if tok[1] == "[":
                self.next()
                self.duration()
                if self.peek()[1] == ":":  # subquery
                    self.next()
                    if self.peek()[1] != "]":
                        self.duration()
                    self.expect("]")
                    if value.type != "vector":
                        raise PromQLError("a subquery needs an instant vector")
                    value = Value("matrix", value.labels, value.series)
                else:
                    self.expect("]")
                    if not value.selector:
                        raise PromQLError("a range needs a series selector")
                    value = Value("matrix", value.labels, value.series)
            elif tok[1] == "offset":
                self.next()
                if self.peek()[1] == "-":
                    self.next()
                self.duration()
            elif tok[1] == "@":
                self.next()
                kind, at = self.next()
                if at in ("start", "end"):
                    self.expect("(")
                    self.expect(")")
                elif kind != "num":
                    raise PromQLError(f"@ needs a timestamp, found {at!r}")
            else:
                return value

    def duration(self) -> None:
        kind, text = self.next()
        if kind != "dur":
            raise PromQLError(f"expected a duration, found {text!r}")

    def primary(self) -> Value:
        kind, text = self.peek()
        if kind in ("num", "dur"):
            self.next()
            return Value("scalar")
        if kind == "str":
            self.next()
            return Value("string", literal=text[1:-1])
        if text == "(":
            self.next()
            value = self.binary(0)
            self.expect(")")
            return value
        if text == "{":
            return self.selector(None)
        if kind != "ident":
            raise PromQLError(f"unexpected {text or 'end'!r}")
        if text in ("Inf", "NaN", "inf", "nan"):
            self.next()
            return Value("scalar")
        if text in AGGREGATIONS and (self.peek(1)[1] == "(" or self.peek(1)[1] in ("by", "without")):
            return self.aggregation()
        if self.peek(1)[1] == "(":
            return self.call()
        if text in KEYWORDS:
            raise PromQLError(f"unexpected keyword {text!r}")
        self.next()
        return self.selector(text)

    def selector(self, name: str | None) -> Value:
        matchers: list[tuple[str, str, str]] = []
        if self.peek()[1] == "{":
            self.next()
            while self.peek()[1] != "}":
                kind, label = self.next()
                if kind != "ident" and kind != "str":
                    raise PromQLError(f"expected a label name in a matcher, found {label!r}")
                _, op = self.next()
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"expected a matcher operator after {label!r}, found {op!r}")
                value_kind, value = self.next()
                if value_kind != "str":
                    raise PromQLError(f"a matcher value must be a string, found {value!r}")
                matchers.append((label.strip("\"'`"), op, value[1:-1]))
                if self.peek()[1] == ",":
                    self.next()
            self.expect("}")
        if name is None:
            names = [v for label, op, v in matchers if label == "__name__" and op == "="]
            if not names:
                raise PromQLError("a selector without a metric name")
            name = names[0]
        series = self.q.exported.get(name)
        if series is None:
            family = _family(name)
            known = sorted(n for n, s in self.q.exported.items() if s.family == family)
            self.q.problem(f"{name} is not exported by the worker"
                           + (f" (family {family} exports {known})" if known else ""))
            return Value("vector", frozenset(label for label, _, _ in matchers) | SCRAPE_LABELS, selector=True)
        self.q.metrics.add(series.family)
        labels = series.labels | SCRAPE_LABELS
        for label, _, _ in matchers:
            if label != "__name__" and label not in labels:
                self.q.problem(f"{name}{{{label}=...}}: {name} has no label {label!r} (it has {sorted(series.labels)})")
        return Value("vector", labels, (series,), selector=True)

    def aggregation(self) -> Value:
        op = self.next()[1]
        clause: tuple[str, list[str]] | None = None
        if self.peek()[1] in ("by", "without"):
            clause = (self.next()[1], self.label_list())
        self.expect("(")
        param: Value | None = None
        if op in _PARAM_AGGREGATIONS:
            param = self.binary(0)
            self.expect(",")
        arg = self.binary(0)
        self.expect(")")
        if self.peek()[1] in ("by", "without"):
            if clause is not None:
                raise PromQLError(f"{op} has two grouping clauses")
            clause = (self.next()[1], self.label_list())
        if arg.type != "vector":
            raise PromQLError(f"{op}() needs an instant vector, got a {arg.type}")
        if param is not None and param.type != ("string" if op == "count_values" else "scalar"):
            raise PromQLError(f"{op}() parameter has the wrong type: {param.type}")
        if clause is None:
            labels: frozenset[str] = frozenset()
        else:
            how, names = clause
            for name in names:
                if name not in arg.labels:
                    self.q.problem(f"{op} {how} ({name}): the aggregated series have no label {name!r} "
                                   f"(they have {sorted(arg.labels - SCRAPE_LABELS)})")
            labels = frozenset(names) if how == "by" else arg.labels - set(names)
        if op in ("topk", "bottomk", "limitk", "limit_ratio"):
            labels = arg.labels
        return Value("vector", labels)

    def call(self) -> Value:
        name = self.next()[1]
        if name not in FUNCTIONS:
            raise PromQLError(f"unknown function {name}()")
        self.expect("(")
        args: list[Value] = []
        while self.peek()[1] != ")":
            args.append(self.binary(0))
            if self.peek()[1] == ",":
                self.next()
        self.expect(")")
        types, result, rule = FUNCTIONS[name]
        expanded = list(types)
        if types and types[-1].endswith("*"):
            expanded = list(types[:-1]) + [types[-1][:-1]] * max(len(args) - len(types) + 1, 0)
        if len(args) != len(expanded):
            raise PromQLError(f"{name}() takes {len(types)} arguments, got {len(args)}")
        wanted = {"s": "scalar", "v": "vector", "m": "matrix", "str": "string"}
        for arg, t in zip(args, expanded, strict=True):
            if arg.type != wanted[t]:
                raise PromQLError(f"{name}() wants a {wanted[t]} argument, got a {arg.type}")
        vector = next((a for a in args if a.type in ("vector", "matrix")), None)
        if vector is not None:
            for series in vector.series:
                if name in COUNTER_FUNCTIONS and not series.counter_like:
                    self.q.problem(f"{name}() over {series.family}, a {series.kind}: use deriv/delta or the value")
                if name in GAUGE_FUNCTIONS and series.counter_like:
                    self.q.problem(f"{name}() over {series.family}, a {series.kind}: use rate/increase")
        if result == "scalar" or rule == "none":
            return Value(result)
        assert vector is not None
        labels = vector.labels
        if rule == "hq":
            if "le" not in labels:
                self.q.problem(f"{name}() over series without 'le' (keep le when aggregating _bucket series)")
            labels = labels - {"le"}
        elif rule in ("lr", "lj"):
            labels = labels | {args[1].literal}  # the destination label
            for source in args[3:] if rule == "lj" else args[3:4]:
                if source.literal and source.literal not in labels:
                    self.q.problem(f"{name}() reads label {source.literal!r}, which the series do not have")
        return Value("vector", labels)


def _family(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check(expr: str, exported: dict[str, Series]) -> Query:
    """Read one PromQL expression (Grafana variables allowed) against the exported series."""
    query = Query(expr, exported)
    try:
        text, _ = _substitute_grafana(expr)
        query.result = _Parser(query, text).parse()
    except PromQLError as exc:
        query.problem(f"does not parse: {exc}")
    return query


# --------------------------------------------------------------------------- the dashboard


def _load(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    return str(query or "")


def _dashboard_exprs(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) for each panel target and each query variable (label_values/query_result)."""
    out: list[tuple[str, str, str]] = []
    for panel in _panels(doc.get("panels") or []):
        for target in panel.get("targets") or []:
            out.append((f"panel {panel.get('title')!r} {target.get('refId')}", str(target.get("expr") or ""),
                        str(target.get("legendFormat") or "")))
    for variable in (doc.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        query = _variable_query(variable)
        where = f"variable ${variable.get('name')}"
        m = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*", query)
        if m and m.group(1):
            # label_values(selector, label): the label has to be on the selected series.
            out.append((where, f"group by ({m.group(2)}) ({m.group(1)})", ""))
        elif m:
            raise AssertionError(f"{where}: label_values({m.group(2)}) scans every series; name one of ours")
        elif (q := re.fullmatch(r"\s*query_result\((.+)\)\s*", query, re.DOTALL)) is not None:
            out.append((where, q.group(1), ""))
        else:
            raise AssertionError(f"{where}: unsupported variable query {query!r}")
    return out


def _legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", legend))


def _dashboard_problems(doc: dict[str, Any], exported: dict[str, Series]) -> tuple[list[str], set[str]]:
    problems: list[str] = []
    families: set[str] = set()
    defined = {str(v.get("name")) for v in (doc.get("templating") or {}).get("list") or []}
    exprs = _dashboard_exprs(doc)
    for where, expr, legend in exprs:
        if not expr.strip():
            problems.append(f"{where}: empty expression")
            continue
        query = check(expr, exported)
        problems += [f"{where}: {p}\n    {expr}" for p in query.problems]
        families |= query.metrics
        undefined = set(re.findall(r"\$\{?(\w+)", expr)) - defined - GRAFANA_BUILTINS
        if undefined:
            problems.append(f"{where}: undefined variables {sorted(undefined)}")
        if query.result is not None and legend:
            missing = _legend_labels(legend) - query.result.labels
            if missing:
                problems.append(f"{where}: legend {legend!r} names {sorted(missing)}, which the result does not "
                                f"carry (it has {sorted(query.result.labels)})")
    return problems, families


@pytest.fixture(scope="module", params=DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    path = request.param
    assert isinstance(path, Path)
    return _load(path)


def test_a_dashboard_is_shipped() -> None:
    assert DASHBOARDS, "no dashboard JSON under deploy/grafana/dashboards/"


def test_dashboard_queries_use_only_exported_series_and_labels(dashboard: dict[str, Any],
                                                                exported: dict[str, Series]) -> None:
    problems, families = _dashboard_problems(dashboard, exported)
    assert not problems, "\n".join(problems)
    assert families, "the dashboard queries nothing"


def test_dashboard_covers_every_operating_topic(dashboard: dict[str, Any], exported: dict[str, Series]) -> None:
    _, families = _dashboard_problems(dashboard, exported)
    exported_families = {s.family for s in exported.values()}
    assert set(REQUIRED_FAMILIES) <= exported_families, set(REQUIRED_FAMILIES) - exported_families
    missing = sorted(set(REQUIRED_FAMILIES) - families)
    assert not missing, f"no panel shows {missing}"
    # The latency quantiles come from the histogram's buckets.
    exprs = [e for _, e, _ in _dashboard_exprs(dashboard)]
    assert any("histogram_quantile" in e and "llm_classify_model_latency_seconds_bucket" in e for e in exprs)


def test_dashboard_model_and_datasource_variable(dashboard: dict[str, Any]) -> None:
    assert isinstance(dashboard.get("schemaVersion"), int) and dashboard["schemaVersion"] >= 39, (
        "export from a current Grafana (schemaVersion 39+)")
    assert dashboard.get("uid") and dashboard.get("title")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", "a prometheus `datasource` variable"
    task = variables.get("task")
    assert task and task["type"] == "query" and task.get("multi") and task.get("includeAll"), (
        "a multi-value `task` variable with All")
    assert task["datasource"]["uid"] == "${datasource}"
    panels = [p for p in _panels(dashboard["panels"]) if p.get("type") != "row"]
    assert panels
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel.get("targets"), f"panel {panel.get('title')!r} has no query"
        for target in [panel, *panel["targets"]]:
            assert target.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, (
                f"panel {panel.get('title')!r}: pick the datasource through the variable, not a fixed uid")
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"panel {panel.get('title')!r} is off the grid"
    # Every panel filtered by task uses the variable as a regex (multi-value and All).
    for _, expr, _ in _dashboard_exprs(dashboard):
        assert 'task="$task"' not in expr.replace(" ", ""), f"use task=~\"$task\" with a multi-value variable: {expr}"


# --------------------------------------------------------------------------- the alert rules


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _rule_problems(rules: list[dict[str, Any]], exported: dict[str, Series]) -> list[str]:
    problems: list[str] = []
    for rule in rules:
        name = rule.get("alert") or rule.get("record")
        query = check(str(rule.get("expr") or ""), exported)
        problems += [f"rule {name}: {p}" for p in query.problems]
        if query.result is None:
            continue
        if query.result.type not in ("vector", "scalar"):
            problems.append(f"rule {name}: the expression is a {query.result.type}")
        # Annotations and labels can only template labels the alert's series carry.
        templated = " ".join(str(v) for part in ("annotations", "labels") for v in (rule.get(part) or {}).values())
        used = set(re.findall(r"\$labels\.(\w+)", templated))
        missing = used - query.result.labels
        if missing:
            problems.append(f"rule {name}: templates {sorted(missing)} but its series carry only "
                            f"{sorted(query.result.labels)}")
    return problems


def test_alert_rules_use_only_exported_series_and_labels(exported: dict[str, Series]) -> None:
    rules = _rules()
    assert rules
    problems = _rule_problems(rules, exported)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- each check can fail

GOOD = 'sum by (task) (rate(llm_classify_requests_total{task=~"$task", outcome="review"}[$__rate_interval]))'


@pytest.mark.parametrize("expr,expect", [
    ("sum(rate(llm_classify_request_total[5m]))", "not exported"),  # typo in the name
    ("sum(rate(llm_classify_requests[5m]))", "family llm_classify_requests exports"),  # counter without _total
    ("llm_classify_review_queue_depth_total", "not exported"),  # a gauge has no _total
    ("histogram_quantile(0.9, sum by (le) (rate(llm_classify_model_latency_seconds[5m])))", "not exported"),
    ('sum(rate(llm_classify_requests_total{decision="auto"}[5m]))', "no label 'decision'"),
    ("sum by (kind) (rate(llm_classify_requests_total[5m]))", "no label 'kind'"),
    ("sum by (task) (llm_classify_model_retries_total)", "no label 'task'"),  # the retry counter has no task
    ("histogram_quantile(0.9, sum by (task) (rate(llm_classify_model_latency_seconds_bucket[5m])))", "without 'le'"),
    ("rate(llm_classify_consumer_lag[5m])", "a gauge"),
    ("deriv(llm_classify_requests_total[5m])", "a counter"),
    ("sum by (task) (rate(llm_classify_model_errors_total[5m])) / sum(rate(llm_classify_model_calls_total[5m]))",
     "different labels"),
    (("sum by (task) (rate(llm_classify_requests_total[5m]))"
      " / on (kind) sum by (task) (rate(llm_classify_model_calls_total[5m]))"), "not on both sides"),
    ("sum by (task) (rate(llm_classify_requests_total[5m]))[10m]", "a range needs a series selector"),
    ("sum(rat(llm_classify_requests_total[5m]))", "unknown function"),
    ("sum(rate(llm_classify_requests_total))", "wants a matrix"),
    ("sum by (task) (rate(llm_classify_requests_total{task=~$task}[5m]))", "outside a string"),
    ("sum by (task (rate(llm_classify_requests_total[5m]))", "does not parse"),
])
def test_each_query_check_catches_its_mistake(expr: str, expect: str, exported: dict[str, Series]) -> None:
    assert not check(GOOD, exported).problems
    problems = check(expr, exported).problems
    assert any(expect in p for p in problems), problems


def _broken_dashboard(expr: str, legend: str = "{{task}}") -> dict[str, Any]:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    return {"templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus"},
        {"name": "task", "type": "query", "datasource": ds,
         "query": {"qryType": 1, "query": "label_values(llm_classify_requests_total,task)", "refId": "A"}}]},
        "panels": [{"type": "row", "id": 1, "panels": [
            {"type": "timeseries", "id": 2, "title": "broken", "datasource": ds,
             "targets": [{"refId": "A", "expr": expr, "legendFormat": legend, "datasource": ds}]}]}]}


def test_dashboard_checks_catch_broken_panels_variables_and_legends(exported: dict[str, Series]) -> None:
    assert not _dashboard_problems(_broken_dashboard(GOOD), exported)[0]
    # A broken query in a panel nested in a row.
    problems, _ = _dashboard_problems(_broken_dashboard(GOOD.replace("requests_total", "requests_totl")), exported)
    assert any("not exported" in p and "panel 'broken'" in p for p in problems), problems
    # A legend naming a label the aggregation dropped.
    problems, _ = _dashboard_problems(_broken_dashboard(GOOD, "{{task}} {{outcome}}"), exported)
    assert any("legend" in p and "outcome" in p for p in problems), problems
    # A variable that is not defined.
    problems, _ = _dashboard_problems(_broken_dashboard(GOOD.replace("$task", "$tsak")), exported)
    assert any("undefined variables ['tsak']" in p for p in problems), problems
    # A template variable over a label its series lack.
    doc = _broken_dashboard(GOOD)
    doc["templating"]["list"][1]["query"]["query"] = "label_values(llm_classify_model_retries_total,task)"
    problems, _ = _dashboard_problems(doc, exported)
    assert any("variable $task" in p and "no label 'task'" in p for p in problems), problems


def test_alert_rule_checks_catch_a_wrong_series_label_and_template(exported: dict[str, Series]) -> None:
    rule = {"alert": "X", "expr": "max by (task) (llm_classify_review_queue_depth) > 10",
            "annotations": {"summary": "{{ $labels.task }}"}}
    assert not _rule_problems([rule], exported)
    wrong_series = rule | {"expr": "max by (task) (llm_classify_review_queue_size) > 10"}
    assert any("not exported" in p for p in _rule_problems([wrong_series], exported))
    wrong_label = rule | {"expr": "max by (topic) (llm_classify_review_queue_depth) > 10"}
    assert any("no label 'topic'" in p for p in _rule_problems([wrong_label], exported))
    wrong_template = rule | {"annotations": {"summary": "{{ $labels.partition }}"}}
    assert any("templates ['partition']" in p for p in _rule_problems([wrong_template], exported))
