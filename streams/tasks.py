"""The task file: which classifications the service runs, and how. Validated at start.

A task file is TOML with one `[[task]]` table per task. String values may reference environment
variables as `${NAME}` or `${NAME:-default}` so one file serves a laptop and a cluster. Every
problem is reported with the path of the field to fix, all at once.

Each default is declared once, on the dataclasses below (`Task`, `ModelEndpoint`, the policies);
the parser reads it from there (`_default`, or a default-constructed policy). The allowed ranges
live with the parsing, one function per section of `[[task]]`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypedDict

from streams.calibration.calibrators import DEFAULT_METHODS
from streams.confidence.ensemble import POOLINGS
from streams.confidence.names import (
    ENSEMBLE,
    FIRST_TOKEN,
    MEMBER_METHODS,
    METHOD_NAMES,
    SELF_CONSISTENCY,
    SEQUENCE_SCORES,
    VERBALIZED,
)
from streams.confidence.self_consistency import RULES
from streams.confidence.sequence_scoring import NORMALIZATIONS
from streams.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_HTTP = ("http://", "https://")
TEXT_PLACEHOLDER = "{text}"
#: Where a template wants the option list; without it the list goes into the system message, once per call.
OPTIONS_PLACEHOLDER = "{options}"
_PLACEHOLDERS = re.compile(re.escape(TEXT_PLACEHOLDER) + "|" + re.escape(OPTIONS_PLACEHOLDER))
#: Option codes: each one token for common tokenizers (single letters and digits are in every vocabulary).
CODE_SETS: dict[str, str] = {"letters": "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "digits": "1234567890"}
CODE_MODES = ("off", *CODE_SETS, "named")
_CODE = re.compile(r"^[A-Za-z0-9]{1,4}$")
MAX_DESCRIPTION_CHARS = 200
#: "shuffled": each request lists the options in an order drawn from its id (`Task.for_request`), so the bias a
#: small model has for the first (or last) listed option spreads over the labels instead of favouring one.
OPTION_ORDERS = ("fixed", "shuffled")
DEFAULT_TEMPLATE = (
    "Classify the text between the markers. Answer with one label only.\n"
    "<<<TEXT\n{text}\nTEXT>>>\nLabel:"
)
#: Re-exported for callers that list the methods (the names live in streams.confidence.names).
CONFIDENCE_METHODS = METHOD_NAMES
STOPPING_RULES = RULES
LENGTH_NORMALIZATIONS = NORMALIZATIONS


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    answer: str = ""  # what the assistant turn says: the label's code when the task uses codes, else the label


@dataclass(frozen=True)
class Prompt:
    system: str = ""
    template: str = DEFAULT_TEMPLATE
    examples: tuple[Example, ...] = ()
    options: str = ""  # the option list (codes and/or descriptions), rendered once by `option_list`
    option_order: str = "fixed"  # or "shuffled": per request, by `Task.for_request`

    def render(self, text: str) -> str:
        # One pass, not str.format: braces in user text and descriptions must stay literal.
        values = {TEXT_PLACEHOLDER: text, OPTIONS_PLACEHOLDER: self.options}
        return _PLACEHOLDERS.sub(lambda m: values[m.group(0)], self.template)

    def messages(self, text: str) -> list[dict[str, str]]:
        """Chat messages: system, few-shot turns, then the item; the user text stays inside the template."""
        msgs: list[dict[str, str]] = []
        system = self.system
        if self.options and OPTIONS_PLACEHOLDER not in self.template:
            system = f"{system}\n\n{self.options}" if system else self.options
        if system:
            msgs.append({"role": "system", "content": system})
        for ex in self.examples:
            msgs.append({"role": "user", "content": self.render(ex.text)})
            msgs.append({"role": "assistant", "content": ex.answer or ex.label})
        msgs.append({"role": "user", "content": self.render(text)})
        return msgs


@dataclass(frozen=True)
class ModelEndpoint:
    base_url: str
    name: str
    api_key_env: str | None = None
    top_logprobs: int = 20
    temperature: float = 0.0
    #: The endpoint's per-minute budgets, all workers together (None: none declared). A budget belongs to the
    #: endpoint (base URL and model), so tasks and ensemble members naming the same one share it
    #: (`_shared_budgets`). Workers pace their calls under it (streams.classify.pacing).
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    def api_key(self, env: Mapping[str, str] | None = None) -> str:
        """The key, read from the environment when the endpoint's client is created (its first call), so a rotated
        key takes a restart; never stored in config objects or logs."""
        env = os.environ if env is None else env
        if self.api_key_env is None:
            return "not-needed"  # local servers ignore it, but the openai client insists on one
        return env[self.api_key_env]


@dataclass(frozen=True)
class CalibrationPolicy:
    """When and how the feedback loop refits this task's calibrator."""

    refit_every: int = 200  # new reviewer labels between refits
    min_examples: int = 100  # no refit below this many labelled examples in total
    holdout_fraction: float = 0.3  # share of labels kept out of the fit to decide whether to publish
    methods: tuple[str, ...] = DEFAULT_METHODS  # candidates for cross-validated selection


@dataclass(frozen=True)
class DriftPolicy:
    """Windows, tests and canaries for this task's drift alerts."""

    window_s: float = 300.0  # tumbling window length (the unit of verdicts)
    alpha: float = 1e-4  # family-wise false-alarm level per window (G-tests, Holm over families)
    min_effect: float = 0.005  # smallest JS divergence (bits) worth an alert, whatever the p-value
    confirm_windows: int = 1  # consecutive drifted windows before an episode opens
    clear_windows: int = 3  # consecutive clean windows before it recovers
    sequential_arl0: float = 1000.0  # windows between false alarms of the CUSUMs, all signals together (bound)
    sequential_shift: float = 0.05  # CUSUM design shift, baseline standard deviations per message
    sequential_margin: float = 1.0  # CUSUM reference moved by this many standard errors of the baseline mean
    canaries: tuple[str, ...] = ()  # fixed prompts re-run to tell model drift from data drift
    canary_repeats: int = 3
    canary_interval_s: float = 300.0
    canary_min_effect: float = 0.02  # nats of token-wise KL
    webhook_url: str | None = None


@dataclass(frozen=True)
class SelfConsistencyPolicy:
    """Adaptive self-consistency: sample until the majority label is settled.

    See streams/confidence/self_consistency.py.
    """

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
    weight: float = 1.0


@dataclass(frozen=True)
class ConfidencePolicy:
    """How the raw confidence is obtained: the first method in `methods` the endpoint supports."""

    methods: tuple[str, ...] = (FIRST_TOKEN,)
    length_normalization: str = "sum"  # sequence_scores: "sum" (a probability) or "mean" (per token)
    self_consistency: SelfConsistencyPolicy = field(default_factory=SelfConsistencyPolicy)
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
    #: One per label ("" for none) when any label has a description; shown in the prompt's option list.
    descriptions: tuple[str, ...] = ()
    #: One per label when the model answers with option codes; () when it answers with the label names.
    codes: tuple[str, ...] = ()
    #: Letter and digit codes name list positions, so a shuffled list re-assigns them (the first listed option is
    #: always "A"); named codes belong to their labels and move with them.
    positional_codes: bool = False
    #: Run first-token scoring even though some answers share a first token (their mass is dropped).
    accept_first_token_collisions: bool = False
    review_threshold: float = 0.8
    min_label_mass: float = 0.5
    #: Risk-controlled routing: target error rate on auto-accepted items, and the probability that
    #: the chosen threshold misses it. When set, the threshold comes from labelled data, not the file.
    target_error: float | None = None
    failure_probability: float = 0.1
    audit_rate: float = 0.0
    calibration: CalibrationPolicy = field(default_factory=CalibrationPolicy)
    drift: DriftPolicy = field(default_factory=DriftPolicy)
    confidence: ConfidencePolicy = field(default_factory=ConfidencePolicy)
    #: Serve a text already answered from the answer cache (streams/classify/answer_cache.py). None: on unless
    #: the task samples (`samples`), since a sampled answer is one draw and a fresh call could differ.
    answer_cache: bool | None = None

    @property
    def samples(self) -> bool:
        """Whether the same prompt can get another answer: a model at temperature > 0 (the task's, or an ensemble
        member's), or self-consistency, which samples by design with seeds drawn from the request id."""
        members = self.confidence.ensemble_members if ENSEMBLE in self.confidence.methods else ()
        methods = {*self.confidence.methods, *(m.method for m in members)}
        models = [self.model, *(m.model for m in members if m.model is not None)]
        return SELF_CONSISTENCY in methods or any(m.temperature > 0 for m in models)

    @property
    def caches_answers(self) -> bool:
        """The task file's `answer_cache` when set, else on for tasks that do not sample."""
        return self.answer_cache if self.answer_cache is not None else not self.samples

    @property
    def answers(self) -> tuple[str, ...]:
        """What the model answers for each label (same order): its code, or the label itself. Every
        confidence method maps answers (tokens or text) to labels through these, so results name labels."""
        return self.codes or self.labels

    def for_request(self, request_id: str) -> Task:
        """The task as the request `request_id` sees it: itself, or with `option_order = "shuffled"` its options
        listed in an order drawn from the id, positional codes re-assigned in that order and the few-shot answers
        with them. Labels keep their order, so probabilities and records index labels as always, and every method
        maps answers to labels through the returned task's `answers`. A function of the id alone: a replayed
        request gets the same prompt, hence the same result. The returned task's order is already drawn (fixed),
        so applying this twice (an ensemble's members) changes nothing."""
        if self.prompt.option_order != "shuffled":
            return self
        order = shuffled_order(request_id, len(self.labels))
        codes = self.codes
        if self.positional_codes:
            by_label = [""] * len(order)
            for position, label in enumerate(order):
                by_label[label] = self.codes[position]
            codes = tuple(by_label)
        options = option_list(tuple(self.labels[i] for i in order), tuple(codes[i] for i in order) if codes else (),
                              tuple(self.descriptions[i] for i in order) if self.descriptions else ())
        prompt = replace(self.prompt, options=options, option_order="fixed",
                         examples=answered(self.prompt.examples, self.labels, codes))
        return replace(self, codes=codes, prompt=prompt)


def shuffled_order(request_id: str, k: int) -> tuple[int, ...]:
    """A permutation of range(k) drawn from the request id: positions sorted by a keyed hash (BLAKE2b), so it is
    the same on every worker, Python version and replay, and uniform over permutations."""
    return tuple(sorted(range(k), key=lambda i: hashlib.blake2b(f"{request_id}/{i}".encode(),
                                                                   digest_size=8).digest()))


def answered(examples: tuple[Example, ...], labels: tuple[str, ...], codes: tuple[str, ...]) -> tuple[Example, ...]:
    """Few-shot examples whose assistant turns answer with their label's code (with the label when no codes)."""
    answer_of = dict(zip(labels, codes, strict=True)) if codes else {}
    return tuple(replace(ex, answer=answer_of.get(ex.label, "")) for ex in examples)


def option_list(labels: tuple[str, ...], codes: tuple[str, ...], descriptions: tuple[str, ...]) -> str:
    """The options as the prompt shows them: "A) name: description" per label with codes, "- name: description"
    with descriptions only, nothing otherwise (the template names the labels itself).

    With codes the header names every valid code: told only "answer with the code", Gemma 3 270M put 8% of its
    first-token mass on letters that code no option (L, Q, S, M, W...) with 10 letter codes; naming the codes
    cut that to 5.5% and raised the label mass from 0.87 to 0.92 (bench/README.md, *Many labels*)."""
    if not codes and not any(descriptions):
        return ""
    lines = [code_header(codes) if codes else "Labels:"]
    for i, label in enumerate(labels):
        head = f"{codes[i]}) {label}" if codes else f"- {label}"
        desc = descriptions[i] if descriptions else ""
        lines.append(f"{head}: {desc}" if desc else head)
    return "\n".join(lines)


def code_header(codes: tuple[str, ...]) -> str:
    """The option list's first line with codes: the instruction, naming the valid codes in listed order."""
    valid = f"{', '.join(codes[:-1])} or {codes[-1]}" if len(codes) > 1 else codes[0]
    return f"Options (answer with one of the codes {valid}, nothing else):"


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


def _default(cls: type, name: str) -> Any:
    """The default the dataclass `cls` declares for its field `name`: the one place it is written."""
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise TypeError(f"{cls.__name__}.{name} has no default")
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


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

    def problem(self, key: str, message: str) -> None:
        """Record `message` against the field `key` of this table ("" for the table itself)."""
        self.problems.append(f"{self.path}.{key}: {message}" if key else f"{self.path}: {message}")

    def _get(self, key: str, kind: type | tuple[type, ...], kind_name: str, default: Any, required: bool) -> Any:
        if key not in self.table:
            if required:
                self.problem(key, f"missing; add a {kind_name}")
            return default
        value = self.table[key]
        if isinstance(value, bool) and kind is not bool:
            value = None  # TOML booleans are not numbers here
        if not isinstance(value, kind):
            self.problem(key, f"expected a {kind_name}, got {type(self.table[key]).__name__}")
            return default
        return value

    def string(self, key: str, default: str = "", required: bool = False) -> str:
        value: str = self._get(key, str, "string", default, required)
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = float(self._get(key, (int, float), "number", default, False))
        if not low <= value <= high:
            self.problem(key, f"{value} is out of range; use a number in [{low}, {high}]")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value: int = self._get(key, int, "integer", default, False)
        if not low <= value <= high:
            self.problem(key, f"{value} is out of range; use an integer in [{low}, {high}]")
        return value

    def url(self, key: str, default: str = "", required: bool = False) -> str:
        """An http(s) URL; "" when absent and not required."""
        value = self.string(key, default, required)
        if value and not value.startswith(_HTTP):
            self.problem(key, f"{value!r} must start with http:// or https://")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            self.problem(key, f"{value!r}; use one of {list(choices)}")
        return value

    def table_at(self, key: str, required: bool = False) -> _Reader:
        return _Reader(self._get(key, dict, "table", {}, required), f"{self.path}.{key}", self.problems)

    def list_at(self, key: str, required: bool = False, kind_name: str = "list") -> list[Any]:
        value: list[Any] = self._get(key, list, kind_name, [], required)
        return value


# --------------------------------------------------------------------------- one function per section


def _parse_task(raw: Mapping[str, Any], path: str, problems: list[str], env: Mapping[str, str]) -> Task | None:
    r = _Reader(raw, path, problems)
    name = r.string("name", required=True)
    if name and not _NAME.match(name):
        r.problem("name", f"{name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    labels, descriptions, codes, positional = _parse_labels(r)
    prompt = _parse_prompt(r.table_at("prompt"), labels, codes, descriptions)
    model = _parse_model(r.table_at("model", required=True), env)
    routing = _parse_routing(r.table_at("routing"))
    calibration = _parse_calibration(r.table_at("calibration"))
    drift = _parse_drift(r.table_at("drift"))
    confidence = _parse_confidence(r.table_at("confidence"), model, env)
    if not name or not labels:
        return None
    accept = r._get("accept_first_token_collisions", bool, "boolean",
                    _default(Task, "accept_first_token_collisions"), False)
    answer_cache = r._get("answer_cache", bool, "boolean (true or false; leave it out for the default: on unless "
                          "the model samples)", _default(Task, "answer_cache"), False)
    return Task(name=name, labels=labels, prompt=prompt, model=model, descriptions=descriptions, codes=codes,
                positional_codes=positional, accept_first_token_collisions=accept, calibration=calibration, drift=drift,
                confidence=confidence, answer_cache=answer_cache, **routing)


def _parse_labels(r: _Reader) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], bool]:
    """`labels` (names, or tables with name, description, code) and `codes`: (labels, descriptions, codes,
    whether the codes are positional, i.e. letters or digits).

    Labels differ ignoring case. Without codes they must not prefix one another (no first token, and no
    whole-label score, could tell them apart); with codes only the codes are answered, so only codes must
    be prefix-free.
    """
    raw = r.list_at("labels", required=True, kind_name="list of strings or tables")
    labels: list[str] = []
    descriptions: list[str] = []
    named: list[str] = []
    for i, item in enumerate(raw):
        if isinstance(item, dict):
            lr = _Reader(item, f"{r.path}.labels[{i}]", r.problems)
            label, desc, code = lr.string("name", required=True), lr.string("description"), lr.string("code")
            if "\n" in desc or len(desc) > MAX_DESCRIPTION_CHARS:
                lr.problem("description", f"one line of at most {MAX_DESCRIPTION_CHARS} characters")
            if code and not _CODE.match(code):
                lr.problem("code", f"{code!r}: use 1-4 letters or digits, so it stays one or two tokens")
            if not label.strip():
                continue
            labels.append(label)
            descriptions.append(desc)
            named.append(code)
        elif isinstance(item, str) and item.strip():
            labels.append(item)
            descriptions.append("")
            named.append("")
        else:
            r.problem(f"labels[{i}]", "must be a non-empty string or a table with name (and description, code)")
    if raw and len(labels) < 2:
        r.problem("labels", "a task needs at least two labels")
    folded = [lbl.strip().casefold() for lbl in labels]
    if len(set(folded)) != len(folded):
        r.problem("labels", "labels must differ ignoring case and surrounding spaces")
    mode = r.choice("codes", "named" if any(named) else "off", CODE_MODES)
    codes: tuple[str, ...] = ()
    if mode in CODE_SETS:
        if any(named):
            r.problem("codes", f"{mode!r} assigns the codes; remove the labels' own `code` or use codes = \"named\"")
        elif len(labels) > len(CODE_SETS[mode]):
            r.problem("codes", f"{mode!r} gives at most {len(CODE_SETS[mode])} codes for {len(labels)} labels; "
                               "name the codes (a `code` per label)")
        else:
            codes = tuple(CODE_SETS[mode][: len(labels)])
    elif mode == "named":
        if not all(named):
            r.problem("codes", "codes = \"named\" needs a `code` on every label")
        else:
            codes = tuple(named)
            _prefix_free(r, "codes", codes, "codes")
    elif any(named):
        r.problem("codes", "labels name codes but codes = \"off\"; remove them or set codes = \"named\"")
    if not codes:
        _prefix_free(r, "labels", tuple(labels), "rename one, or answer with option codes (codes = \"letters\")")
    return tuple(labels), tuple(descriptions) if any(descriptions) else (), codes, bool(codes) and mode in CODE_SETS


def _prefix_free(r: _Reader, key: str, answers: tuple[str, ...], fix: str) -> None:
    """What the model answers must differ and not prefix one another (ignoring case), or no score can tell
    two apart."""
    folded = [a.strip().casefold() for a in answers]
    for i, a in enumerate(folded):
        for b in folded[i + 1:]:
            if a == b and key == "codes":
                r.problem(key, f"{a!r} is used twice; codes must differ ignoring case")
            elif a != b and (a.startswith(b) or b.startswith(a)):
                r.problem(key, f"{a!r} and {b!r} share a prefix, so a first token cannot tell them apart; {fix}")


def _parse_prompt(pr: _Reader, labels: tuple[str, ...], codes: tuple[str, ...],
                  descriptions: tuple[str, ...]) -> Prompt:
    """[task.prompt]: template (with {text} once, {options} at most once), few-shot examples labelled with the
    task's labels (answered with their codes when the task uses codes), system, and the option order (shuffling
    needs an option list, i.e. codes or descriptions)."""
    template = pr.string("template", _default(Prompt, "template"))
    if template.count(TEXT_PLACEHOLDER) != 1:
        pr.problem("template", "must contain the placeholder {text} exactly once")
    if template.count(OPTIONS_PLACEHOLDER) > 1:
        pr.problem("template", "may contain the placeholder {options} at most once")
    option_order = pr.choice("option_order", _default(Prompt, "option_order"), OPTION_ORDERS)
    if option_order == "shuffled" and not codes and not any(descriptions):
        pr.problem("option_order", "\"shuffled\" reorders the option list, and this task shows none; "
                                   "give the labels codes or descriptions")
    examples: list[Example] = []
    for i, ex in enumerate(pr.list_at("examples")):
        if not isinstance(ex, dict):
            pr.problem(f"examples[{i}]", "expected a table with text and label")
            continue
        er = _Reader(ex, f"{pr.path}.examples[{i}]", pr.problems)
        text, label = er.string("text", required=True), er.string("label", required=True)
        if label and labels and label not in labels:
            er.problem("label", f"{label!r} is not one of the task's labels {list(labels)}")
        examples.append(Example(text=text, label=label))
    return Prompt(system=pr.string("system", _default(Prompt, "system")), template=template,
                  examples=answered(tuple(examples), labels, codes), options=option_list(labels, codes, descriptions),
                  option_order=option_order)


def _parse_model(mr: _Reader, env: Mapping[str, str]) -> ModelEndpoint:
    """[task.model]: the endpoint. The API key is only ever named (api_key_env), never written."""
    base_url = mr.url("base_url", required=True)
    name = mr.string("name", required=True)
    api_key_env = mr.string("api_key_env") or _default(ModelEndpoint, "api_key_env")
    if api_key_env is not None and not _ENV_NAME.match(api_key_env):
        # The value is not echoed: it may be a pasted key.
        mr.problem("api_key_env", "must be the NAME of an environment variable (letters, digits, _), "
                                  "not the key itself")
        api_key_env = None
    elif api_key_env is not None and api_key_env not in env:
        mr.problem("api_key_env", f"environment variable {api_key_env} is not set; export it "
                                  "(the key is never read from the task file)")
    if "api_key" in mr.table:
        mr.problem("api_key", "keys must not be written in the task file; use api_key_env")
    return ModelEndpoint(base_url=base_url, name=name, api_key_env=api_key_env, **_sampling(mr), **_budgets(mr))


class _Sampling(TypedDict):
    top_logprobs: int
    temperature: float


def _sampling(mr: _Reader) -> _Sampling:
    """top_logprobs and temperature of a model table (the task's, or an ensemble member's)."""
    return {"top_logprobs": mr.integer("top_logprobs", _default(ModelEndpoint, "top_logprobs"), 1, 20),
            "temperature": mr.number("temperature", _default(ModelEndpoint, "temperature"), 0.0, 2.0)}


class _Budgets(TypedDict):
    requests_per_minute: float | None
    tokens_per_minute: float | None


#: Above any provider's published limit; a larger number is a typo, not a budget.
MAX_PER_MINUTE = 1e9


def _budgets(mr: _Reader) -> _Budgets:
    """requests_per_minute and tokens_per_minute of a model table: positive numbers, or absent for no budget."""
    budgets: _Budgets = {"requests_per_minute": _default(ModelEndpoint, "requests_per_minute"),
                         "tokens_per_minute": _default(ModelEndpoint, "tokens_per_minute")}
    for key in ("requests_per_minute", "tokens_per_minute"):
        if key not in mr.table:
            continue
        problems = len(mr.problems)
        value = mr.number(key, 0.0, 0.0, MAX_PER_MINUTE)
        if len(mr.problems) > problems:
            continue
        if value <= 0:
            mr.problem(key, "must be above 0, the endpoint's budget for all workers together "
                            "(leave it out for no budget)")
            continue
        budgets[key] = value
    return budgets


class _Routing(TypedDict):
    review_threshold: float
    min_label_mass: float
    target_error: float | None
    failure_probability: float
    audit_rate: float


def _parse_routing(rr: _Reader) -> _Routing:
    """[task.routing]: a fixed review threshold, or a target error rate that derives it from labelled data."""
    review_threshold = rr.number("review_threshold", _default(Task, "review_threshold"), 0.0, 1.0)
    min_label_mass = rr.number("min_label_mass", _default(Task, "min_label_mass"), 0.0, 1.0)
    target_error: float | None = _default(Task, "target_error")
    if "target_error" in rr.table:
        target_error = rr.number("target_error", 0.0, 0.0, 0.5)
        if target_error <= 0:
            rr.problem("target_error", "must be above 0 (e.g. 0.02 for 2%)")
        if "review_threshold" in rr.table:
            rr.problem("", "set review_threshold or target_error, not both")
    return {"review_threshold": review_threshold, "min_label_mass": min_label_mass, "target_error": target_error,
            "failure_probability": rr.number("failure_probability", _default(Task, "failure_probability"),
                                             0.001, 0.5),
            "audit_rate": rr.number("audit_rate", _default(Task, "audit_rate"), 0.0, 1.0)}


def _parse_calibration(cr: _Reader) -> CalibrationPolicy:
    """[task.calibration]: refit cadence and the candidate calibrators."""
    d = CalibrationPolicy()
    methods = cr.list_at("methods") or list(d.methods)
    for m in methods:
        if m not in DEFAULT_METHODS:
            cr.problem("methods", f"unknown method {m!r}; choose from {list(DEFAULT_METHODS)}")
    return CalibrationPolicy(
        refit_every=cr.integer("refit_every", d.refit_every, 1, 10_000_000),
        min_examples=cr.integer("min_examples", d.min_examples, 10, 10_000_000),
        holdout_fraction=cr.number("holdout_fraction", d.holdout_fraction, 0.05, 0.9),
        methods=tuple(m for m in methods if m in DEFAULT_METHODS),
    )


def _parse_drift(dr: _Reader) -> DriftPolicy:
    """[task.drift]: windows, tests, canaries, alert webhook."""
    d, week = DriftPolicy(), 7 * 86400.0
    window_s = dr.number("window_s", d.window_s, 1.0, week)
    canaries = dr.list_at("canaries") or list(d.canaries)
    for i, c in enumerate(canaries):
        if not isinstance(c, str) or not c.strip():
            dr.problem(f"canaries[{i}]", "must be a non-empty string")
    return DriftPolicy(
        window_s=window_s,
        alpha=dr.number("alpha", d.alpha, 1e-9, 0.5),
        min_effect=dr.number("min_effect", d.min_effect, 0.0, 1.0),
        confirm_windows=dr.integer("confirm_windows", d.confirm_windows, 1, 1000),
        clear_windows=dr.integer("clear_windows", d.clear_windows, 1, 1000),
        sequential_arl0=dr.number("sequential_arl0", d.sequential_arl0, 10.0, 1e9),
        sequential_shift=dr.number("sequential_shift", d.sequential_shift, 1e-4, 10.0),
        sequential_margin=dr.number("sequential_margin", d.sequential_margin, 0.0, 10.0),
        canaries=tuple(c for c in canaries if isinstance(c, str) and c.strip()),
        canary_repeats=dr.integer("canary_repeats", d.canary_repeats, 2, 100),
        canary_interval_s=dr.number("canary_interval_s", d.canary_interval_s, 0.5, week),
        canary_min_effect=dr.number("canary_min_effect", d.canary_min_effect, 0.0, 100.0),
        webhook_url=dr.url("webhook_url") or d.webhook_url,
    )


def _parse_confidence(cr: _Reader, model: ModelEndpoint, env: Mapping[str, str]) -> ConfidencePolicy:
    """[task.confidence]: the ordered method list and each method's settings."""
    d = ConfidencePolicy()
    methods: list[str] = []
    for i, m in enumerate(cr.list_at("methods") or list(d.methods)):
        if m not in METHOD_NAMES:
            cr.problem(f"methods[{i}]", f"unknown method {m!r}; choose from {list(METHOD_NAMES)}")
        elif m in methods:
            cr.problem(f"methods[{i}]", f"{m!r} is listed twice")
        else:
            methods.append(m)
    norm = cr.table_at(SEQUENCE_SCORES).choice("length_normalization", d.length_normalization,
                                                 LENGTH_NORMALIZATIONS)
    sc = _parse_self_consistency(cr.table_at(SELF_CONSISTENCY))
    vr = cr.table_at(VERBALIZED)
    instruction = vr.string("instruction") or d.verbalized_instruction
    verbalized_max_tokens = vr.integer("max_tokens", d.verbalized_max_tokens, 2, 256)
    er = cr.table_at(ENSEMBLE)
    pooling = er.choice("pooling", d.ensemble_pooling, POOLINGS)
    members = [m for i, raw in enumerate(er.list_at("members"))
               if (m := _parse_ensemble_member(er, i, raw, model, env)) is not None]
    if ENSEMBLE in methods and len(members) < 2:
        er.problem("members", "the ensemble method needs at least two members")
    if members and sum(m.weight for m in members) <= 0:
        er.problem("members", "weights must not all be 0")
    return ConfidencePolicy(methods=tuple(methods) or d.methods, length_normalization=norm,
                            self_consistency=sc, verbalized_instruction=instruction,
                            verbalized_max_tokens=verbalized_max_tokens, ensemble_members=tuple(members),
                            ensemble_pooling=pooling)


def _parse_self_consistency(sr: _Reader) -> SelfConsistencyPolicy:
    """[task.confidence.self_consistency]: stopping rule, error rate, sampling budget."""
    d = SelfConsistencyPolicy()
    budget = sr.integer("budget", d.budget, 1, 200)
    sc = SelfConsistencyPolicy(
        rule=sr.choice("rule", d.rule, STOPPING_RULES),
        error_rate=sr.number("error_rate", d.error_rate, 1e-6, 0.5),
        prior=sr.number("prior", d.prior, 1e-3, 10.0),
        min_samples=sr.integer("min_samples", d.min_samples, 1, 200),
        budget=budget,
        temperature=sr.number("temperature", d.temperature, 0.05, 2.0),
        batch=sr.integer("batch", d.batch, 1, 128),
        max_tokens=sr.integer("max_tokens", d.max_tokens, 1, 64),
    )
    if sc.min_samples > budget:
        sr.problem("min_samples", f"{sc.min_samples} is above the budget {budget}")
    return sc


def _parse_ensemble_member(er: _Reader, i: int, raw: Any, model: ModelEndpoint,
                           env: Mapping[str, str]) -> EnsembleMember | None:
    """One entry of [task.confidence.ensemble] members: a method name, or a table with its own model."""
    raw = {"method": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, dict):
        er.problem(f"members[{i}]", "a method name or a table with method (and optionally base_url, name, weight)")
        return None
    mr = _Reader(raw, f"{er.path}.members[{i}]", er.problems)
    method = mr.string("method", required=True)
    if method and method not in MEMBER_METHODS:
        mr.problem("method", f"{method!r}; choose from {list(MEMBER_METHODS)}")
    weight = mr.number("weight", _default(EnsembleMember, "weight"), 0.0, 1000.0)
    member_model = None
    if "base_url" in raw or "name" in raw:
        url = mr.url("base_url", model.base_url)
        key = mr.string("api_key_env") or (model.api_key_env if url == model.base_url else None)
        if key is not None and (not _ENV_NAME.match(key) or key not in env):
            mr.problem("api_key_env", "must name a set environment variable")
            key = None
        member_model = ModelEndpoint(base_url=url, name=mr.string("name", required=True), api_key_env=key,
                                     **_sampling(mr), **_budgets(mr))
    return EnsembleMember(method, member_model, weight)


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
    tasks = _shared_budgets(tasks, problems)
    if problems:
        raise ConfigError(source, problems)
    return TaskRegistry(tasks=tasks, source=source)


def _endpoints(task: Task) -> list[tuple[str, ModelEndpoint]]:
    """Every endpoint a task calls, with where it is written."""
    where = f"task {task.name!r}"
    found = [(f"{where} [model]", task.model)]
    found += [(f"{where} ensemble member {i} ({m.method})", m.model)
              for i, m in enumerate(task.confidence.ensemble_members) if m.model is not None]
    return found


def _shared_budgets(tasks: dict[str, Task], problems: list[str]) -> dict[str, Task]:
    """Give every mention of an endpoint (base URL and model name) the budget declared for it.

    A hosted API meters a model's calls whichever task makes them, so the budget is the endpoint's: it may be
    declared at any one mention, or at several with the same values; different values are a problem, named
    with both places. Mentions that declare nothing get the declared budget, so the worker paces every call
    to the endpoint the same way, whichever task comes first."""
    declared: dict[tuple[str, str], tuple[str, float | None, float | None]] = {}
    for task in tasks.values():
        for where, ep in _endpoints(task):
            if ep.requests_per_minute is None and ep.tokens_per_minute is None:
                continue
            key = (ep.base_url, ep.name)
            budget = (where, ep.requests_per_minute, ep.tokens_per_minute)
            first = declared.setdefault(key, budget)
            if first[1:] != budget[1:]:
                problems.append(
                    f"{where}: requests_per_minute = {budget[1]}, tokens_per_minute = {budget[2]} for model "
                    f"{ep.name!r} at {ep.base_url}, but {first[0]} says {first[1]} and {first[2]}; the budget "
                    "belongs to the endpoint and is shared by every task that calls it: give the same values, "
                    "or declare them once")
    if not declared:
        return tasks

    def budgeted(ep: ModelEndpoint) -> ModelEndpoint:
        found = declared.get((ep.base_url, ep.name))
        if found is None:
            return ep
        return replace(ep, requests_per_minute=found[1], tokens_per_minute=found[2])

    out: dict[str, Task] = {}
    for name, task in tasks.items():
        members = tuple(replace(m, model=budgeted(m.model)) if m.model is not None else m
                        for m in task.confidence.ensemble_members)
        out[name] = replace(task, model=budgeted(task.model),
                            confidence=replace(task.confidence, ensemble_members=members))
    return out


def load_tasks(path: Path, env: Mapping[str, str] | None = None) -> TaskRegistry:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["task file not found; set STREAMS_TASKS_FILE to an existing TOML file"]) from None
    return parse_tasks(text, str(path), env)
