"""The task file: which classifications the service runs, and how. Validated at start.

A task file is TOML with one `[[task]]` table per task. String values may reference environment
variables as `${NAME}` or `${NAME:-default}` so one file serves a laptop and a cluster. Every
problem is reported with the path of the field to fix, all at once.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
TEXT_PLACEHOLDER = "{text}"
CALIBRATION_METHODS = ("identity", "temperature", "vector", "isotonic", "histogram", "label_bias")
DEFAULT_TEMPLATE = (
    "Classify the text between the markers. Answer with one label only.\n"
    "<<<TEXT\n{text}\nTEXT>>>\nLabel:"
)


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Prompt:
    system: str
    template: str
    examples: tuple[Example, ...]

    def render(self, text: str) -> str:
        # str.replace, not str.format: braces in user text must stay literal.
        return self.template.replace(TEXT_PLACEHOLDER, text)

    def messages(self, text: str) -> list[dict[str, str]]:
        """Chat messages: system, few-shot turns, then the item; the user text stays inside the template."""
        msgs: list[dict[str, str]] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        for ex in self.examples:
            msgs.append({"role": "user", "content": self.render(ex.text)})
            msgs.append({"role": "assistant", "content": ex.label})
        msgs.append({"role": "user", "content": self.render(text)})
        return msgs


@dataclass(frozen=True)
class ModelEndpoint:
    base_url: str
    name: str
    api_key_env: str | None
    top_logprobs: int
    temperature: float

    def api_key(self, env: Mapping[str, str] | None = None) -> str:
        """The key, read from the environment at call time; never stored in config objects or logs."""
        env = os.environ if env is None else env
        if self.api_key_env is None:
            return "not-needed"  # local servers ignore it, but the openai client insists on one
        return env[self.api_key_env]


@dataclass(frozen=True)
class CalibrationPolicy:
    """When and how the feedback loop refits this task's calibrator."""

    refit_every: int  # new reviewer labels between refits
    min_examples: int  # no refit below this many labelled examples in total
    holdout_fraction: float  # share of labels kept out of the fit to decide whether to publish
    methods: tuple[str, ...]  # candidates for cross-validated selection


@dataclass(frozen=True)
class DriftPolicy:
    """Windows, tests and canaries for this task's drift alerts."""

    window_s: float  # tumbling window length (the unit of verdicts)
    hop_s: float  # step of the hopping windows kept alongside (smoother view for operators)
    alpha: float  # family-wise false-alarm level per window (G-tests, Holm over families)
    min_effect: float  # smallest JS divergence (bits) worth an alert, whatever the p-value
    confirm_windows: int  # consecutive drifted windows before an episode opens
    clear_windows: int  # consecutive clean windows before it recovers
    canaries: tuple[str, ...]  # fixed prompts re-run to tell model drift from data drift
    canary_repeats: int
    canary_interval_s: float
    canary_min_effect: float  # nats of token-wise KL
    webhook_url: str | None


CONFIDENCE_METHODS = ("first_token_logprobs", "sequence_scores", "self_consistency", "verbalized", "ensemble")
STOPPING_RULES = ("posterior", "confidence_sequence")
POOLINGS = ("mean", "loglinear")
LENGTH_NORMALIZATIONS = ("sum", "mean")


@dataclass(frozen=True)
class SelfConsistencyPolicy:
    """Adaptive self-consistency: sample until the majority label is settled (streams/confidence/self_consistency.py)."""

    rule: str = "posterior"  # or "confidence_sequence" (frequentist, anytime-valid, more samples)
    error_rate: float = 0.05  # allowed rate of stopping on the wrong majority
    prior: float = 0.5  # Dirichlet concentration per category (Jeffreys)
    min_samples: int = 2
    budget: int = 20  # most samples per item
    temperature: float = 0.7
    batch: int = 4  # samples per request when the endpoint honours n
    max_tokens: int = 4


@dataclass(frozen=True)
class EnsembleMember:
    method: str
    model: ModelEndpoint | None  # None: the task's own model
    weight: float


@dataclass(frozen=True)
class ConfidencePolicy:
    """How the raw confidence is obtained: the first method in `methods` the endpoint supports."""

    methods: tuple[str, ...] = ("first_token_logprobs",)
    length_normalization: str = "sum"  # sequence_scores: "sum" (a probability) or "mean" (per token)
    self_consistency: SelfConsistencyPolicy = SelfConsistencyPolicy()
    verbalized_instruction: str | None = None  # None: streams.confidence.verbalized.DEFAULT_INSTRUCTION
    verbalized_max_tokens: int = 16
    ensemble_members: tuple[EnsembleMember, ...] = ()
    ensemble_pooling: str = "mean"


@dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...]
    prompt: Prompt
    model: ModelEndpoint
    review_threshold: float
    min_label_mass: float
    #: Risk-controlled routing: target error rate on auto-accepted items, and the probability that
    #: the chosen threshold misses it. When set, the threshold comes from labelled data, not the file.
    target_error: float | None = None
    failure_probability: float = 0.1
    audit_rate: float = 0.0
    calibration: CalibrationPolicy = CalibrationPolicy(200, 100, 0.3, CALIBRATION_METHODS)
    drift: DriftPolicy = DriftPolicy(300.0, 150.0, 5e-4, 0.005, 1, 3, (), 3, 300.0, 0.02, None)
    confidence: ConfidencePolicy = ConfidencePolicy()


@dataclass(frozen=True)
class TaskRegistry:
    tasks: dict[str, Task]
    source: str

    def get(self, name: str) -> Task | None:
        return self.tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.tasks

    def __len__(self) -> int:
        return len(self.tasks)


def _expand(value: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable {name} is not set (or give a default: ${{{name}:-...}})")
            return ""
        return _ENV_REF.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}", env, problems) for k, v in value.items()}
    return value


class _Reader:
    """Typed field access that records a problem (with the field path) instead of raising."""

    def __init__(self, table: Mapping[str, Any], path: str, problems: list[str]) -> None:
        self.table, self.path, self.problems = table, path, problems

    def _get(self, key: str, kind: type | tuple[type, ...], kind_name: str, default: Any, required: bool) -> Any:
        if key not in self.table:
            if required:
                self.problems.append(f"{self.path}.{key}: missing; add a {kind_name}")
            return default
        value = self.table[key]
        if isinstance(value, bool) and kind is not bool:
            value = None  # TOML booleans are not numbers here
        if not isinstance(value, kind):
            self.problems.append(f"{self.path}.{key}: expected a {kind_name}, got {type(self.table[key]).__name__}")
            return default
        return value

    def string(self, key: str, default: str = "", required: bool = False) -> str:
        return self._get(key, str, "string", default, required)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = float(self._get(key, (int, float), "number", default, False))
        if not low <= value <= high:
            self.problems.append(f"{self.path}.{key}: {value} is out of range; use a number in [{low}, {high}]")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._get(key, int, "integer", default, False)
        if not low <= value <= high:
            self.problems.append(f"{self.path}.{key}: {value} is out of range; use an integer in [{low}, {high}]")
        return value

    def table_at(self, key: str, required: bool = False) -> _Reader:
        return _Reader(self._get(key, dict, "table", {}, required), f"{self.path}.{key}", self.problems)

    def list_at(self, key: str) -> list[Any]:
        return self._get(key, list, "list", [], False)


def _parse_task(raw: Mapping[str, Any], path: str, problems: list[str], env: Mapping[str, str]) -> Task | None:
    r = _Reader(raw, path, problems)
    name = r.string("name", required=True)
    if name and not _NAME.match(name):
        problems.append(f"{path}.name: {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    labels_raw = r._get("labels", list, "list of strings", [], True)
    labels: list[str] = []
    for i, label in enumerate(labels_raw):
        if not isinstance(label, str) or not label.strip():
            problems.append(f"{path}.labels[{i}]: must be a non-empty string")
        else:
            labels.append(label)
    if labels_raw and len(labels) < 2:
        problems.append(f"{path}.labels: a task needs at least two labels")
    folded = [lbl.strip().casefold() for lbl in labels]
    if len(set(folded)) != len(folded):
        problems.append(f"{path}.labels: labels must differ ignoring case and surrounding spaces")
    for i, a in enumerate(folded):
        for b in folded[i + 1:]:
            if a != b and (a.startswith(b) or b.startswith(a)):
                problems.append(
                    f"{path}.labels: {a!r} and {b!r} share a prefix, so a first token cannot tell them apart; rename one"
                )

    pr = r.table_at("prompt")
    template = pr.string("template", DEFAULT_TEMPLATE)
    if template.count(TEXT_PLACEHOLDER) != 1:
        problems.append(f"{path}.prompt.template: must contain the placeholder {{text}} exactly once")
    examples: list[Example] = []
    for i, ex in enumerate(pr.list_at("examples")):
        ex_path = f"{path}.prompt.examples[{i}]"
        if not isinstance(ex, dict):
            problems.append(f"{ex_path}: expected a table with text and label")
            continue
        er = _Reader(ex, ex_path, problems)
        text, label = er.string("text", required=True), er.string("label", required=True)
        if label and labels and label not in labels:
            problems.append(f"{ex_path}.label: {label!r} is not one of the task's labels {labels}")
        examples.append(Example(text=text, label=label))

    mr = r.table_at("model", required=True)
    base_url = mr.string("base_url", required=True)
    if base_url and not base_url.startswith(("http://", "https://")):
        problems.append(f"{path}.model.base_url: {base_url!r} must start with http:// or https://")
    model_name = mr.string("name", required=True)
    api_key_env = mr.string("api_key_env") or None
    if api_key_env is not None and not _ENV_NAME.match(api_key_env):
        problems.append(f"{path}.model.api_key_env: must be the NAME of an environment variable (letters, digits, _), "
                        "not the key itself")  # the value is not echoed: it may be a pasted key
        api_key_env = None
    elif api_key_env is not None and api_key_env not in env:
        problems.append(
            f"{path}.model.api_key_env: environment variable {api_key_env} is not set; export it (the key is never read from the task file)"
        )
    if "api_key" in mr.table:
        problems.append(f"{path}.model.api_key: keys must not be written in the task file; use api_key_env")
    top_logprobs = mr.integer("top_logprobs", 20, 1, 20)
    temperature = mr.number("temperature", 0.0, 0.0, 2.0)

    rr = r.table_at("routing")
    review_threshold = rr.number("review_threshold", 0.8, 0.0, 1.0)
    min_label_mass = rr.number("min_label_mass", 0.5, 0.0, 1.0)
    target_error = rr.number("target_error", 0.0, 0.0, 0.5) if "target_error" in rr.table else None
    if target_error is not None and target_error <= 0:
        problems.append(f"{path}.routing.target_error: must be above 0 (e.g. 0.02 for 2%)")
    if target_error is not None and "review_threshold" in rr.table:
        problems.append(f"{path}.routing: set review_threshold or target_error, not both")
    failure_probability = rr.number("failure_probability", 0.1, 0.001, 0.5)
    audit_rate = rr.number("audit_rate", 0.0, 0.0, 1.0)

    cr = r.table_at("calibration")
    methods_raw = cr.list_at("methods") or list(CALIBRATION_METHODS)
    for m in methods_raw:
        if m not in CALIBRATION_METHODS:
            problems.append(f"{path}.calibration.methods: unknown method {m!r}; choose from {list(CALIBRATION_METHODS)}")
    policy = CalibrationPolicy(
        refit_every=cr.integer("refit_every", 200, 1, 10_000_000),
        min_examples=cr.integer("min_examples", 100, 10, 10_000_000),
        holdout_fraction=cr.number("holdout_fraction", 0.3, 0.05, 0.9),
        methods=tuple(m for m in methods_raw if m in CALIBRATION_METHODS),
    )

    dr = r.table_at("drift")
    window_s = dr.number("window_s", 300.0, 1.0, 7 * 86400.0)
    hop_s = dr.number("hop_s", window_s / 2, 0.5, 7 * 86400.0)
    if hop_s > window_s:
        problems.append(f"{path}.drift.hop_s: {hop_s} is longer than window_s {window_s}; use a step <= the window")
    canaries = dr.list_at("canaries")
    for i, c in enumerate(canaries):
        if not isinstance(c, str) or not c.strip():
            problems.append(f"{path}.drift.canaries[{i}]: must be a non-empty string")
    webhook = dr.string("webhook_url") or None
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        problems.append(f"{path}.drift.webhook_url: {webhook!r} must start with http:// or https://")
    drift = DriftPolicy(
        window_s=window_s,
        hop_s=hop_s,
        alpha=dr.number("alpha", 5e-4, 1e-9, 0.5),
        min_effect=dr.number("min_effect", 0.005, 0.0, 1.0),
        confirm_windows=dr.integer("confirm_windows", 1, 1, 1000),
        clear_windows=dr.integer("clear_windows", 3, 1, 1000),
        canaries=tuple(c for c in canaries if isinstance(c, str) and c.strip()),
        canary_repeats=dr.integer("canary_repeats", 3, 2, 100),
        canary_interval_s=dr.number("canary_interval_s", 300.0, 0.5, 7 * 86400.0),
        canary_min_effect=dr.number("canary_min_effect", 0.02, 0.0, 100.0),
        webhook_url=webhook,
    )

    confidence = _parse_confidence(r.table_at("confidence"), path, problems, env, base_url, api_key_env)

    if not name or not labels:
        return None
    return Task(
        name=name,
        labels=tuple(labels),
        prompt=Prompt(system=pr.string("system"), template=template, examples=tuple(examples)),
        model=ModelEndpoint(base_url=base_url, name=model_name, api_key_env=api_key_env,
                            top_logprobs=top_logprobs, temperature=temperature),
        review_threshold=review_threshold,
        min_label_mass=min_label_mass,
        target_error=target_error,
        failure_probability=failure_probability,
        audit_rate=audit_rate,
        calibration=policy,
        drift=drift,
        confidence=confidence,
    )


def _parse_confidence(cr: _Reader, path: str, problems: list[str], env: Mapping[str, str], base_url: str,
                      api_key_env: str | None) -> ConfidencePolicy:
    """[task.confidence]: the ordered method list and each method's settings."""
    p = f"{path}.confidence"
    methods_raw = cr.list_at("methods") or ["first_token_logprobs"]
    methods: list[str] = []
    for i, m in enumerate(methods_raw):
        if m not in CONFIDENCE_METHODS:
            problems.append(f"{p}.methods[{i}]: unknown method {m!r}; choose from {list(CONFIDENCE_METHODS)}")
        elif m in methods:
            problems.append(f"{p}.methods[{i}]: {m!r} is listed twice")
        else:
            methods.append(m)
    norm = cr.table_at("sequence_scores").string("length_normalization", "sum")
    if norm not in LENGTH_NORMALIZATIONS:
        problems.append(f"{p}.sequence_scores.length_normalization: {norm!r}; use one of {list(LENGTH_NORMALIZATIONS)}")
    sr = cr.table_at("self_consistency")
    budget = sr.integer("budget", 20, 1, 200)
    rule = sr.string("rule", "posterior")
    if rule not in STOPPING_RULES:
        problems.append(f"{p}.self_consistency.rule: {rule!r}; use one of {list(STOPPING_RULES)}")
    sc = SelfConsistencyPolicy(
        rule=rule,
        error_rate=sr.number("error_rate", 0.05, 1e-6, 0.5),
        prior=sr.number("prior", 0.5, 1e-3, 10.0),
        min_samples=sr.integer("min_samples", 2, 1, 200),
        budget=budget,
        temperature=sr.number("temperature", 0.7, 0.05, 2.0),
        batch=sr.integer("batch", 4, 1, 128),
        max_tokens=sr.integer("max_tokens", 4, 1, 64),
    )
    if sc.min_samples > budget:
        problems.append(f"{p}.self_consistency.min_samples: {sc.min_samples} is above the budget {budget}")
    vr = cr.table_at("verbalized")
    instruction = vr.string("instruction") or None
    verbalized_max_tokens = vr.integer("max_tokens", 16, 2, 256)
    er = cr.table_at("ensemble")
    pooling = er.string("pooling", "mean")
    if pooling not in POOLINGS:
        problems.append(f"{p}.ensemble.pooling: {pooling!r}; use one of {list(POOLINGS)}")
    members: list[EnsembleMember] = []
    for i, raw in enumerate(er.list_at("members")):
        mp = f"{p}.ensemble.members[{i}]"
        raw = {"method": raw} if isinstance(raw, str) else raw
        if not isinstance(raw, dict):
            problems.append(f"{mp}: a method name or a table with method (and optionally base_url, name, weight)")
            continue
        mr = _Reader(raw, mp, problems)
        method = mr.string("method", required=True)
        if method and method not in CONFIDENCE_METHODS[:-1]:
            problems.append(f"{mp}.method: {method!r}; choose from {list(CONFIDENCE_METHODS[:-1])}")
        weight = mr.number("weight", 1.0, 0.0, 1000.0)
        model = None
        if "base_url" in raw or "name" in raw:
            m_url = mr.string("base_url", base_url)
            if not m_url.startswith(("http://", "https://")):
                problems.append(f"{mp}.base_url: {m_url!r} must start with http:// or https://")
            m_key = mr.string("api_key_env") or (api_key_env if m_url == base_url else None)
            if m_key is not None and (not _ENV_NAME.match(m_key) or m_key not in env):
                problems.append(f"{mp}.api_key_env: must name a set environment variable")
                m_key = None
            model = ModelEndpoint(base_url=m_url, name=mr.string("name", required=True), api_key_env=m_key,
                                  top_logprobs=mr.integer("top_logprobs", 20, 1, 20),
                                  temperature=mr.number("temperature", 0.0, 0.0, 2.0))
        members.append(EnsembleMember(method, model, weight))
    if "ensemble" in methods and len(members) < 2:
        problems.append(f"{p}.ensemble.members: the ensemble method needs at least two members")
    if members and sum(m.weight for m in members) <= 0:
        problems.append(f"{p}.ensemble.members: weights must not all be 0")
    return ConfidencePolicy(methods=tuple(methods) or ("first_token_logprobs",), length_normalization=norm,
                            self_consistency=sc, verbalized_instruction=instruction,
                            verbalized_max_tokens=verbalized_max_tokens, ensemble_members=tuple(members),
                            ensemble_pooling=pooling)


def parse_tasks(text: str, source: str, env: Mapping[str, str] | None = None) -> TaskRegistry:
    env = os.environ if env is None else env
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from exc
    problems: list[str] = []
    raw_tasks = doc.get("task")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise ConfigError(source, ["no tasks: add at least one [[task]] table"])
    tasks: dict[str, Task] = {}
    for i, raw in enumerate(raw_tasks):
        if not isinstance(raw, dict):
            problems.append(f"task[{i}]: expected a [[task]] table, got {type(raw).__name__}")
            continue
        path = f"task[{i}]" + (f" ({raw['name']})" if isinstance(raw.get("name"), str) else "")
        expanded = _expand(raw, path, env, problems)
        task = _parse_task(expanded, path, problems, env)
        if task is None:
            continue
        if task.name in tasks:
            problems.append(f"{path}.name: duplicate task name {task.name!r}")
        tasks[task.name] = task
    if problems:
        raise ConfigError(source, problems)
    return TaskRegistry(tasks=tasks, source=source)


def load_tasks(path: Path, env: Mapping[str, str] | None = None) -> TaskRegistry:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [f"task file not found; set STREAMS_TASKS_FILE to an existing TOML file"]) from None
    return parse_tasks(text, str(path), env)
