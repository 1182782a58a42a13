"""Service settings from environment variables, validated once at start.

Every variable is declared once, in `VARIABLES`: its name, the `Settings` field it fills, its
default, what a valid value looks like (the parser, which holds the range or the choices) and one
line of description. That table drives `Settings.from_env` and renders the README's table of
variables (`markdown_table()`, or `python -m streams.settings`; a unit test keeps the README in step).
Errors name the variable and say what a valid value looks like; all of them are reported at once.
The SASL password never appears in a message or in `repr`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from streams.errors import ConfigError
from streams.ops.auth import ReviewersError, is_loopback_host, parse_networks, read_reviewers
from streams.ops.cost import TokenPrice

_BROKER_URL = re.compile(r"^kafka://[^:/;\s]+:\d{1,5}$")
_REFERENCE = re.compile(r"\{([A-Z0-9_]+)\}")

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: Logical topic names; the configured prefix is prepended to each.
TOPIC_NAMES: dict[str, str] = {
    "requests": "classify.requests",
    "results": "classify.results",
    "review": "classify.review",
    "feedback": "classify.feedback",
    "deadletter": "classify.deadletter",
    "calibrators": "classify.calibrators",
    "examples": "classify.examples",
    "alerts": "drift.alerts",
    "drift_summaries": "drift.summaries",
    "baselines": "drift.baselines",
    "drift_status": "drift.status",
    "answer_cache": "classify.answer-cache",
}


# --------------------------------------------------------------------------- parsers


class Invalid(ValueError):
    """A value that does not parse; each message names the variable and says what to set."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class Parser(Protocol):
    """Turns the (stripped) text of one variable into its value, or raises `Invalid`."""

    def __call__(self, name: str, text: str) -> Any: ...

    @property
    def valid(self) -> str:
        """What a valid value looks like, for the README table."""
        ...


@dataclass(frozen=True)
class Integer:
    low: int
    high: int

    @property
    def valid(self) -> str:
        return f"a whole number in [{self.low}, {self.high}]"

    def __call__(self, name: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise Invalid(f"{name}={text!r} is not an integer; set {self.valid}") from None
        if not self.low <= value <= self.high:
            raise Invalid(f"{name}={value} is out of range; set {self.valid}")
        return value


@dataclass(frozen=True)
class Number:
    low: float
    high: float

    @property
    def valid(self) -> str:
        return f"a value in [{self.low}, {self.high}]"

    def __call__(self, name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise Invalid(f"{name}={text!r} is not a number; set {self.valid}") from None
        if not self.low <= value <= self.high:  # also rejects nan
            raise Invalid(f"{name}={value} is out of range; set {self.valid}")
        return value


@dataclass(frozen=True)
class Text:
    """A string. `check` tests it and `want` says what a valid one looks like; `optional`: empty means None;
    `nonempty`: empty is an error, and this is what to set instead."""

    want: str = ""
    check: Callable[[str], bool] | None = None
    optional: bool = False
    nonempty: str | None = None

    @property
    def valid(self) -> str:
        return self.want or (f"not empty: {self.nonempty}" if self.nonempty else "any text")

    def __call__(self, name: str, text: str) -> str | None:
        if not text and self.nonempty:
            raise Invalid(f"{name} is empty; set {self.nonempty}")
        if not text and self.optional:
            return None
        if self.check is not None and not self.check(text):
            raise Invalid(f"{name}={text!r} {self.want}")
        return text


@dataclass(frozen=True)
class Choice:
    """One of a few names, case-insensitive (stored upper-case); empty means None."""

    choices: tuple[str, ...]

    @property
    def valid(self) -> str:
        return f"one of {', '.join(self.choices)}"

    def __call__(self, name: str, text: str) -> str | None:
        value = text.upper()
        if value and value not in self.choices:
            raise Invalid(f"{name}={value!r} is not {self.valid}")
        return value or None


@dataclass(frozen=True)
class PathValue:
    @property
    def valid(self) -> str:
        return "a path"

    def __call__(self, name: str, text: str) -> Path:
        return Path(text)


@dataclass(frozen=True)
class PemFile:
    """The path of an existing PEM file; empty means None."""

    @property
    def valid(self) -> str:
        return "the path of a PEM file"

    def __call__(self, name: str, text: str) -> Path | None:
        if not text:
            return None
        if not Path(text).is_file():
            raise Invalid(f"{name}={text!r} is not a readable file; give {self.valid}")
        return Path(text)


@dataclass(frozen=True)
class Secret:
    """A secret given directly (not stripped: spaces may be part of it). Never echoed."""

    @property
    def valid(self) -> str:
        return "the secret itself (prefer a file)"

    def __call__(self, name: str, text: str) -> str | None:
        return text or None


@dataclass(frozen=True)
class SecretFile:
    """The path of a UTF-8 file holding a secret; the value is the file's content less its final newline.
    Only the path and "cannot be read"/"is empty" ever enter a message, never the content."""

    @property
    def valid(self) -> str:
        return "the path of a readable UTF-8 file"

    def __call__(self, name: str, text: str) -> str | None:
        if not text:
            return None
        try:
            secret = Path(text).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise Invalid(f"{name}={text!r} cannot be read ({reason}); "
                          "point it at a readable UTF-8 file holding the password") from None
        if not secret:
            raise Invalid(f"{name}={text!r} is empty; write the password into it")
        return secret


@dataclass(frozen=True)
class TokenPrices:
    """`MODEL=PROMPT:COMPLETION[:CACHED],...` in USD per million tokens -> {model: TokenPrice}.

    CACHED prices the prompt tokens the server reused from its prompt cache; without it they cost the
    uncached prompt price (`TokenPrice.of` says why). A cached price above the prompt price is refused:
    no provider bills a cache read above its input price, so it is a typo (the two swapped)."""

    @property
    def valid(self) -> str:
        return "`MODEL=PROMPT:COMPLETION[:CACHED]`, comma-separated (USD per million tokens)"

    def __call__(self, name: str, text: str) -> dict[str, TokenPrice]:
        prices: dict[str, TokenPrice] = {}
        problems: list[str] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            model, _, spec = part.rpartition("=")
            fields = spec.split(":")
            try:
                numbers = [float(f) for f in fields] if len(fields) in (2, 3) else []
            except ValueError:
                numbers = []
            if not model or not numbers or not all(0 <= v < 1e6 for v in numbers):
                problems.append(f"{name} entry {part!r} must look like MODEL=PROMPT:COMPLETION[:CACHED] "
                                "(USD per million tokens, e.g. gpt-4o-mini=0.15:0.6:0.075)")
                continue
            price = TokenPrice.of(*numbers)
            if price.cached > price.prompt:
                problems.append(f"{name} entry {part!r}: the cached prompt price {price.cached:g} is above the "
                                f"prompt price {price.prompt:g}; give MODEL=PROMPT:COMPLETION:CACHED")
                continue
            prices[model] = price
        if problems:
            raise Invalid(*problems)
        return prices


@dataclass(frozen=True)
class ReviewersPath:
    """The path of a reviewers file (streams/ops/auth.py) that reads and parses; empty means None.
    Problems name lines, never a hash."""

    @property
    def valid(self) -> str:
        return "the path of a reviewers file (`name:hash[:tasks]` lines)"

    def __call__(self, name: str, text: str) -> Path | None:
        if not text:
            return None
        try:
            read_reviewers(Path(text))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise Invalid(f"{name}={text!r} cannot be read ({reason}); create it with "
                          "`python -m streams review reviewers add NAME`") from None
        except ReviewersError as bad:
            raise Invalid(*(f"{name}={text!r}: {p}" for p in bad.problems)) from None
        return Path(text)


@dataclass(frozen=True)
class Networks:
    """IP addresses or CIDRs, comma-separated; empty means none."""

    @property
    def valid(self) -> str:
        return "IP addresses or CIDRs, comma-separated"

    def __call__(self, name: str, text: str) -> tuple[Any, ...]:
        try:
            return parse_networks(text)
        except ValueError as exc:
            raise Invalid(f"{name}: {exc}; set {self.valid}, e.g. 10.0.0.5/32,fd00::/8") from None


@dataclass(frozen=True)
class KeyFile:
    """The path of a file holding a random key (at least `min_chars` characters); empty means None.
    Never echoed."""

    min_chars: int = 32

    @property
    def valid(self) -> str:
        return f"the path of a readable file holding at least {self.min_chars} random characters"

    def __call__(self, name: str, text: str) -> str | None:
        if not text:
            return None
        try:
            key = Path(text).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise Invalid(f"{name}={text!r} cannot be read ({reason}); give {self.valid}") from None
        if len(key) < self.min_chars:
            raise Invalid(f"{name}={text!r} holds fewer than {self.min_chars} characters; write a random key into "
                          "it, e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'")
        return key


_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,100}$")


def _is_http_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Needs:
    """A variable read only when another one (`on`) has one of `values`; setting it otherwise is an error."""

    on: str
    values: tuple[str, ...]
    what: str  # what those values use, for messages: "SASL", "TLS"


SASL = Needs("STREAMS_SECURITY_PROTOCOL", ("SASL_PLAINTEXT", "SASL_SSL"), "SASL")
AUTH = Needs("STREAMS_WEB_AUTH", ("ON",), "authentication")
TLS = Needs("STREAMS_SECURITY_PROTOCOL", ("SSL", "SASL_SSL"), "TLS")


@dataclass(frozen=True)
class Var:
    """One environment variable: declared once, here."""

    name: str  # the environment variable
    field: str  # the Settings attribute it fills (two variables may fill one, as alternatives: set one of them)
    default: str  # as written in the environment; `{OTHER_VARIABLE}` stands for that variable's value
    parse: Parser  # type, range or choices, and what a valid value looks like
    doc: str  # one line for the README
    needs: Needs | None = None  # read only under this condition
    required: str | None = None  # must be set (with `needs`: when read), and this is what is needed
    blank_is_default: bool = False  # an empty value means the default (else it is parsed, and may be an error)
    secret: bool = False  # not stripped and never echoed

    def text(self, env: Mapping[str, str], earlier: Mapping[str, str]) -> str:
        """The text to parse: the variable as set (stripped unless secret), else the default."""
        raw = env.get(self.name)
        if raw is not None and not self.secret:
            raw = raw.strip()
        if raw is None or (self.blank_is_default and not raw.strip()):
            return _REFERENCE.sub(lambda m: earlier[m.group(1)], self.default)
        return raw


_SASL_MECHANISMS = ", ".join(SASL_MECHANISMS)

#: Every environment variable the service reads, in the order the README lists them.
VARIABLES: tuple[Var, ...] = (
    Var("STREAMS_BROKER", "broker", "kafka://127.0.0.1:9092",
        Text("must look like kafka://host:port (several separated by ';')",
             lambda s: all(_BROKER_URL.match(u) for u in s.split(";"))),
        "the Kafka brokers"),
    Var("STREAMS_APP_ID", "app_id", "llm-classify",
        Text(nonempty="a consumer-group/app name such as llm-classify"),
        "Faust app id / consumer group"),
    Var("STREAMS_TOPIC_PREFIX", "topic_prefix", "",
        Text("may contain only letters, digits, '.', '_' and '-'",
             lambda s: all(c.isalnum() or c in "._-" for c in s)),
        "prefix for every topic name"),
    Var("STREAMS_PARTITIONS", "partitions", "8", Integer(1, 1024),
        "partitions of the topics the worker creates at start"),
    Var("STREAMS_REPLICATION", "replication", "1", Integer(1, 16), "replication factor of the topics it creates"),
    Var("STREAMS_TASKS_FILE", "tasks_file", "config/tasks.toml", PathValue(), "the task file"),
    Var("STREAMS_MAX_IN_FLIGHT", "max_in_flight", "64", Integer(1, 100_000),
        "requests a worker handles at once, and the most model calls it keeps in flight per endpoint; within "
        "that, the endpoint's limit adapts to its latency and its 429/503 answers "
        "(`llm_classify_model_concurrency_limit`)"),
    Var("STREAMS_MIN_IN_FLIGHT", "min_in_flight", "4", Integer(1, 100_000),
        "the floor of each endpoint's adaptive in-flight limit (at most STREAMS_MAX_IN_FLIGHT): one call that "
        "never answers cannot hold every other; equal to STREAMS_MAX_IN_FLIGHT, a fixed limit"),
    Var("STREAMS_MAX_TEXT_CHARS", "max_text_chars", "20000", Integer(1, 10_000_000),
        "longer texts are dead-lettered (`text_too_long`)"),
    Var("STREAMS_DEADLETTER_EXCERPT_BYTES", "deadletter_excerpt_bytes", "4096", Integer(0, 1_000_000),
        "original bytes kept in a dead letter"),
    Var("STREAMS_MODEL_TIMEOUT_S", "model_timeout_s", "30", Number(0.1, 3600), "seconds per model call"),
    Var("STREAMS_MODEL_MAX_RETRIES", "model_max_retries", "4", Integer(0, 20),
        "retries per model call; they back off exponentially and honour Retry-After"),
    Var("STREAMS_MODEL_PACING", "model_pacing", "on", Choice(("ON", "OFF")),
        "OFF sends model calls unpaced: the task file's `requests_per_minute` / `tokens_per_minute` and the "
        "servers' `x-ratelimit-*` headers are ignored (429s are still counted); for comparisons",
        blank_is_default=True),
    Var("STREAMS_SESSION_TIMEOUT_S", "session_timeout_s", "30", Number(1, 600), "consumer session timeout (seconds)"),
    Var("STREAMS_STALL_AFTER_S", "stall_after_s", "90", Number(1, 86400),
        "a requests partition with requests waiting and none done for this long, while the worker sat idle, "
        "is reported stalled (`llm_classify_partition_stalled`); longer than a rebalance takes"),
    Var("STREAMS_STOP_GRACE_S", "stop_grace_s", "25", Number(0, 3600),
        "on SIGTERM, seconds to finish the model calls in flight; the rest are handed back (replayed by the "
        "partition's next owner). Keep it under the orchestrator's kill deadline (Kubernetes "
        "`terminationGracePeriodSeconds`)"),
    # The answer cache (streams/classify/answer_cache.py): no model call for a text already answered.
    Var("STREAMS_ANSWER_CACHE_ENTRIES", "answer_cache_entries", "50000", Integer(0, 10_000_000),
        "answers each worker keeps in memory for texts already answered (least recently used dropped first); "
        "0 turns the answer cache off for every task. Per task: `answer_cache` in the task file"),
    Var("STREAMS_ANSWER_CACHE_TTL_S", "answer_cache_ttl_s", "86400", Number(1, 365 * 86400.0),
        "seconds a cached answer is served after the call that made it; also the retention of the "
        "`classify.answer-cache` topic when the worker creates it on Kafka"),
    Var("STREAMS_WEB_HOST", "web_host", "127.0.0.1", Text(), "Faust web server address (loopback by default)"),
    Var("STREAMS_WEB_PORT", "web_port", "6066", Integer(0, 65535), "Faust web server port"),
    # Who may read review texts and answer them on the web pages (streams/ops/auth.py).
    Var("STREAMS_WEB_AUTH", "web_auth", "on", Choice(("ON", "OFF")),
        "OFF opens `/review/`, `/dashboard/` and the answer API to anyone who reaches the port: local "
        "development only, and refused unless `STREAMS_WEB_HOST` is loopback", blank_is_default=True),
    Var("STREAMS_REVIEWERS_FILE", "reviewers_file", "", ReviewersPath(),
        "reviewer tokens, hashed (`python -m streams review reviewers add NAME`); re-read when it changes",
        needs=AUTH),
    Var("STREAMS_TRUSTED_PROXIES", "trusted_proxies", "", Networks(),
        "authenticating proxies (oauth2-proxy...) whose user header is believed; from other addresses it is ignored",
        needs=AUTH),
    Var("STREAMS_PROXY_USER_HEADER", "proxy_user_header", "X-Forwarded-User",
        Text("must be an HTTP header name (letters, digits, '-')", lambda s: bool(_HEADER_NAME.match(s))),
        "the header a trusted proxy names the user in", needs=AUTH),
    Var("STREAMS_WEB_SECRET_FILE", "web_secret", "", KeyFile(),
        "key that signs browser sessions and CSRF tokens; give every worker the same one (unset: a random key "
        "per worker process)", needs=AUTH),
    Var("STREAMS_REVIEW_ANSWER_RATE", "review_answer_rate", "60", Integer(1, 100_000),
        "answers per minute each reviewer may send to one worker (token bucket; 429 beyond)"),
    Var("STREAMS_REVIEW_ANSWER_BURST", "review_answer_burst", "30", Integer(1, 100_000),
        "answers a reviewer may send at once before `STREAMS_REVIEW_ANSWER_RATE` applies"),
    Var("STREAMS_DATA_DIR", "data_dir", ".{STREAMS_APP_ID}-data", PathValue(), "Faust's local state",
        blank_is_default=True),
    # Kafka security (streams/kafka_security.py turns these into client options).
    Var("STREAMS_SECURITY_PROTOCOL", "security_protocol", "PLAINTEXT", Choice(SECURITY_PROTOCOLS),
        "how clients talk to the brokers", blank_is_default=True),
    Var("STREAMS_SASL_MECHANISM", "sasl_mechanism", "", Choice(SASL_MECHANISMS), "SASL mechanism",
        needs=SASL, required=f"one of {_SASL_MECHANISMS}"),
    Var("STREAMS_SASL_USERNAME", "sasl_username", "", Text(optional=True), "SASL user name",
        needs=SASL, required="a user name"),
    Var("STREAMS_SASL_PASSWORD_FILE", "sasl_password", "", SecretFile(), "secrets file holding the SASL password",
        needs=SASL, required="the password in a secrets file"),
    Var("STREAMS_SASL_PASSWORD", "sasl_password", "", Secret(),
        "the SASL password itself, if there is no secrets file", needs=SASL, secret=True),
    Var("STREAMS_SSL_CAFILE", "ssl_cafile", "", PemFile(), "CA certificates to trust (default: the system's)",
        needs=TLS),
    Var("STREAMS_SSL_CERTFILE", "ssl_certfile", "", PemFile(), "client certificate", needs=TLS),
    Var("STREAMS_SSL_KEYFILE", "ssl_keyfile", "", PemFile(), "client key (needs `STREAMS_SSL_CERTFILE`)", needs=TLS),
    # Operations (streams/ops).
    Var("STREAMS_REVIEW_QUEUE_MAX", "review_queue_max", "100000", Integer(1, 10_000_000),
        "pending review items each worker holds for `/review/` and the queue gauges"),
    Var("STREAMS_REVIEW_ALERT_DEPTH", "review_alert_depth", "0", Integer(0, 100_000_000),
        "alert when a task's review queue holds more items (0 = off)"),
    Var("STREAMS_REVIEW_ALERT_AGE_S", "review_alert_age_s", "0", Number(0, 365 * 86400.0),
        "alert when a task's oldest review item is older, in seconds (0 = off)"),
    Var("STREAMS_ALERT_WEBHOOK_URL", "alert_webhook_url", "",
        Text("must start with http:// or https://", _is_http_url, optional=True),
        "receives review-queue and drift alerts (JSON POST, retried)"),
    Var("STREAMS_TOKEN_PRICES", "token_prices", "", TokenPrices(),
        "token prices by model, for the cost metric; CACHED prices prompt tokens served from the server's prompt "
        "cache (default: the prompt price)"),
    Var("STREAMS_OTLP_ENDPOINT", "otlp_endpoint", "",
        Text("must start with http:// or https://", _is_http_url, optional=True),
        "OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces (empty = no spans recorded)"),
)


def _resolved_defaults() -> dict[str, str]:
    defaults: dict[str, str] = {}
    for var in VARIABLES:
        defaults[var.name] = var.text({}, defaults)
    return defaults


#: The environment that gives every default (`{OTHER}` references resolved), by variable name.
ENV_DEFAULTS: dict[str, str] = _resolved_defaults()


def _by_field() -> dict[str, list[Var]]:
    groups: dict[str, list[Var]] = {}
    for var in VARIABLES:
        groups.setdefault(var.field, []).append(var)
    return groups


#: The variables that fill each Settings field (most fields: one).
_FIELDS: dict[str, list[Var]] = _by_field()


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """The parsed environment. Build it with `Settings.from_env(...)` (a mapping in tests)."""

    broker: str
    app_id: str
    topic_prefix: str
    partitions: int
    replication: int
    tasks_file: Path
    max_in_flight: int
    min_in_flight: int
    max_text_chars: int
    deadletter_excerpt_bytes: int
    model_timeout_s: float
    model_max_retries: int
    model_pacing: str | None  # "ON" or "OFF"
    session_timeout_s: float
    stop_grace_s: float
    stall_after_s: float
    answer_cache_entries: int
    answer_cache_ttl_s: float
    web_host: str
    web_port: int
    web_auth: str | None  # "ON" or "OFF"
    reviewers_file: Path | None
    trusted_proxies: tuple[Any, ...] | None  # ipaddress networks; None when authentication is off
    proxy_user_header: str | None
    #: Read from STREAMS_WEB_SECRET_FILE at start; never in repr or errors.
    web_secret: str | None = field(repr=False)
    review_answer_rate: int
    review_answer_burst: int
    data_dir: Path
    topics: dict[str, str]  # logical name -> topic name with the prefix
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    #: Read from STREAMS_SASL_PASSWORD_FILE (or STREAMS_SASL_PASSWORD) at start; never in repr or errors.
    sasl_password: str | None = field(repr=False)
    ssl_cafile: Path | None
    ssl_certfile: Path | None
    ssl_keyfile: Path | None
    review_queue_max: int
    review_alert_depth: int
    review_alert_age_s: float
    alert_webhook_url: str | None
    token_prices: dict[str, TokenPrice]  # model -> USD per million prompt, completion, cached prompt tokens
    otlp_endpoint: str | None

    def topic(self, logical: str) -> str:
        return self.topics[logical]

    @property
    def web_auth_enabled(self) -> bool:
        return self.web_auth != "OFF"

    @property
    def model_pacing_enabled(self) -> bool:
        return self.model_pacing != "OFF"

    @property
    def bootstrap_servers(self) -> str:
        """The broker URL as aiokafka wants it (host:port[,host:port])."""
        return ",".join(u.split("://", 1)[-1] for u in self.broker.split(";"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse `env` (default: os.environ) by `VARIABLES`; raise ConfigError listing every problem."""
        env = os.environ if env is None else env
        fields, problems = _parse(env)
        if problems:
            raise ConfigError("environment", problems)
        topics = {k: f"{fields['topic_prefix']}{v}" for k, v in TOPIC_NAMES.items()}
        return cls(**fields, topics=topics)


def _is_set(env: Mapping[str, str], name: str) -> bool:
    return bool(env.get(name, "").strip())


def _parse(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Field values by Settings field, and the problems (empty when all is well)."""
    problems: list[str] = []
    texts: dict[str, str] = {}
    values: dict[str, Any] = {}
    given: set[str] = set()  # set in env to something not blank, and read
    for var in VARIABLES:
        text = texts[var.name] = var.text(env, texts)
        values[var.name] = None
        on = values[var.needs.on] if var.needs is not None else None
        if var.needs is not None and on is not None and on not in var.needs.values:
            if _is_set(env, var.name):
                problems.append(f"{var.name} is set but {var.needs.on}={on} does not use {var.needs.what}; "
                                f"set {' or '.join(var.needs.values)}, or unset it")
            continue  # (when `on` itself is wrong, it is reported, and this value is still checked)
        if _is_set(env, var.name):
            given.add(var.name)
            if any(_is_set(env, v.name) for v in _FIELDS[var.field] if v is not var):
                continue  # two ways to give one value: reported below, neither is read
        try:
            values[var.name] = var.parse(var.name, text)
        except Invalid as bad:
            problems.extend(bad.problems)

    fields: dict[str, Any] = {}
    for name, group in _FIELDS.items():
        chosen = [v for v in group if v.name in given]
        if len(chosen) > 1:
            problems.append(f"{' and '.join(v.name for v in chosen)} are both set; keep only {chosen[0].name}")
        first = chosen[0] if chosen else group[0]
        fields[name] = values[first.name]
        needs = first.needs
        if not chosen and first.required and (needs is None or values[needs.on] in needs.values):
            others = "".join(f" ({v.name} is not set either)" for v in group[1:])
            who = values[needs.on] if needs else "the service"
            problems.append(f"{first.name} is not set{others}; {who} needs {first.required}")
    low, high = values["STREAMS_MIN_IN_FLIGHT"], values["STREAMS_MAX_IN_FLIGHT"]
    if isinstance(low, int) and isinstance(high, int) and low > high and _is_set(env, "STREAMS_MIN_IN_FLIGHT"):
        problems.append(f"STREAMS_MIN_IN_FLIGHT={low} is above STREAMS_MAX_IN_FLIGHT={high}; the adaptive limit "
                        "lives between them (set them equal for a fixed limit)")
    if _is_set(env, "STREAMS_SSL_KEYFILE") and not _is_set(env, "STREAMS_SSL_CERTFILE"):
        problems.append("STREAMS_SSL_KEYFILE is set without STREAMS_SSL_CERTFILE; a client key needs its certificate")
    host = values["STREAMS_WEB_HOST"]
    if values["STREAMS_WEB_AUTH"] == "OFF" and isinstance(host, str) and not is_loopback_host(host):
        problems.append(
            f"STREAMS_WEB_AUTH=off with STREAMS_WEB_HOST={host!r} would let anyone who reaches the web port read "
            "every review text and answer review items; for local development set STREAMS_WEB_HOST=127.0.0.1, "
            "else unset STREAMS_WEB_AUTH and set STREAMS_REVIEWERS_FILE (reviewer tokens) and/or "
            "STREAMS_TRUSTED_PROXIES (an authenticating proxy)")
    return fields, problems


# --------------------------------------------------------------------------- README table


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default_cell(var: Var) -> str:
    if not var.default:
        return "(not set)"
    return "`" + _REFERENCE.sub(r"<\1>", var.default) + "`"


def _meaning_cell(var: Var) -> str:
    if var.needs is None:
        return var.doc
    when = f"read only when `{var.needs.on}` is {' or '.join(var.needs.values)}"
    return f"{var.doc}; {when}" + (", and then required" if var.required else "")


def markdown_table() -> str:
    """The README's table of environment variables, rendered from `VARIABLES`."""
    rows = ["| variable | default | valid values | meaning |", "|---|---|---|---|"]
    rows += [f"| `{v.name}` | {_cell(_default_cell(v))} | {_cell(v.parse.valid)} | {_cell(_meaning_cell(v))} |"
             for v in VARIABLES]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
