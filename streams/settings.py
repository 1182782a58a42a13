"""Service settings from environment variables, validated once at start.

Every variable is read here and nowhere else, so `docs/ARCHITECTURE.md`, the compose file and the
tests can check one list. Errors name the variable and say what a valid value looks like.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.errors import ConfigError

_BROKER_URL = re.compile(r"^kafka://[^:/;\s]+:\d{1,5}$")

#: Every environment variable the service reads, with its default (None = required elsewhere).
ENV_DEFAULTS: dict[str, str] = {
    "STREAMS_BROKER": "kafka://127.0.0.1:9092",
    "STREAMS_APP_ID": "llm-classify",
    "STREAMS_TOPIC_PREFIX": "",
    "STREAMS_PARTITIONS": "8",
    "STREAMS_REPLICATION": "1",
    "STREAMS_TASKS_FILE": "config/tasks.toml",
    "STREAMS_MAX_IN_FLIGHT": "64",
    "STREAMS_MAX_TEXT_CHARS": "20000",
    "STREAMS_DEADLETTER_EXCERPT_BYTES": "4096",
    "STREAMS_MODEL_TIMEOUT_S": "30",
    "STREAMS_MODEL_MAX_RETRIES": "4",
    "STREAMS_SESSION_TIMEOUT_S": "30",
    "STREAMS_WEB_HOST": "127.0.0.1",
    "STREAMS_WEB_PORT": "6066",
    "STREAMS_DATA_DIR": "",
    "STREAMS_SECURITY_PROTOCOL": "PLAINTEXT",
    "STREAMS_SASL_MECHANISM": "",
    "STREAMS_SASL_USERNAME": "",
    "STREAMS_SASL_PASSWORD_FILE": "",
    "STREAMS_SASL_PASSWORD": "",
    "STREAMS_SSL_CAFILE": "",
    "STREAMS_SSL_CERTFILE": "",
    "STREAMS_SSL_KEYFILE": "",
    # Operations (streams/ops): review queue bound, review-queue alerts, token prices for cost.
    "STREAMS_REVIEW_QUEUE_MAX": "100000",
    "STREAMS_REVIEW_ALERT_DEPTH": "0",
    "STREAMS_REVIEW_ALERT_AGE_S": "0",
    "STREAMS_ALERT_WEBHOOK_URL": "",
    "STREAMS_TOKEN_PRICES": "",
}

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
}


@dataclass(frozen=True)
class Settings:
    broker: str
    app_id: str
    topic_prefix: str
    partitions: int
    replication: int
    tasks_file: Path
    max_in_flight: int
    max_text_chars: int
    deadletter_excerpt_bytes: int
    model_timeout_s: float
    model_max_retries: int
    session_timeout_s: float
    web_host: str
    web_port: int
    data_dir: Path
    topics: dict[str, str] = field(default_factory=dict)
    # Kafka security (streams/kafka_security.py turns these into client options).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    #: Read from STREAMS_SASL_PASSWORD_FILE (or STREAMS_SASL_PASSWORD) at start; never in repr or errors.
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Operations (streams/ops): pending review items held in memory, review-queue alert thresholds
    # (0 = off), the webhook for review-queue alerts, and USD per million prompt/completion tokens by model.
    review_queue_max: int = 100_000
    review_alert_depth: int = 0
    review_alert_age_s: float = 0.0
    alert_webhook_url: str | None = None
    token_prices: dict[str, tuple[float, float]] = field(default_factory=dict)

    def topic(self, logical: str) -> str:
        return self.topics[logical]

    @property
    def bootstrap_servers(self) -> str:
        """The broker URL as aiokafka wants it (host:port[,host:port])."""
        return ",".join(u.split("://", 1)[-1] for u in self.broker.split(";"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        problems: list[str] = []

        def get(name: str) -> str:
            return env.get(name, ENV_DEFAULTS[name]).strip()

        def bounded(name: str, cast: type, low: float, high: float) -> Any:
            raw = get(name)
            want = f"a whole number in [{low}, {high}]" if cast is int else f"a value in [{low}, {high}]"
            try:
                value = cast(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not {'an integer' if cast is int else 'a number'}; set {want}")
                return cast(low)
            if not low <= value <= high:
                problems.append(f"{name}={value} is out of range; set {want}")
            return value

        def integer(name: str, low: int, high: int) -> int:
            return bounded(name, int, low, high)

        def number(name: str, low: float, high: float) -> float:
            return bounded(name, float, low, high)

        broker = get("STREAMS_BROKER")
        if not all(_BROKER_URL.match(u) for u in broker.split(";")):
            problems.append(
                f"STREAMS_BROKER={broker!r} must look like kafka://host:port (several separated by ';')"
            )
        app_id = get("STREAMS_APP_ID")
        if not app_id:
            problems.append("STREAMS_APP_ID is empty; set a consumer-group/app name such as llm-classify")
        prefix = get("STREAMS_TOPIC_PREFIX")
        if prefix and not all(c.isalnum() or c in "._-" for c in prefix):
            problems.append(f"STREAMS_TOPIC_PREFIX={prefix!r} may contain only letters, digits, '.', '_' and '-'")
        data_dir_raw = get("STREAMS_DATA_DIR")
        settings = cls(
            broker=broker,
            app_id=app_id,
            topic_prefix=prefix,
            partitions=integer("STREAMS_PARTITIONS", 1, 1024),
            replication=integer("STREAMS_REPLICATION", 1, 16),
            tasks_file=Path(get("STREAMS_TASKS_FILE")),
            max_in_flight=integer("STREAMS_MAX_IN_FLIGHT", 1, 100_000),
            max_text_chars=integer("STREAMS_MAX_TEXT_CHARS", 1, 10_000_000),
            deadletter_excerpt_bytes=integer("STREAMS_DEADLETTER_EXCERPT_BYTES", 0, 1_000_000),
            model_timeout_s=number("STREAMS_MODEL_TIMEOUT_S", 0.1, 3600),
            model_max_retries=integer("STREAMS_MODEL_MAX_RETRIES", 0, 20),
            session_timeout_s=number("STREAMS_SESSION_TIMEOUT_S", 1, 600),
            web_host=get("STREAMS_WEB_HOST"),
            web_port=integer("STREAMS_WEB_PORT", 0, 65535),
            data_dir=Path(data_dir_raw) if data_dir_raw else Path(f".{app_id}-data"),
            topics={k: f"{prefix}{v}" for k, v in TOPIC_NAMES.items()},
            **_security(env, get, problems),
            **_operations(get, integer, number, problems),
        )
        if problems:
            raise ConfigError("environment", problems)
        return settings


def _operations(get: Callable[[str], str], integer: Callable[[str, int, int], int],
                number: Callable[[str, float, float], float], problems: list[str]) -> dict[str, Any]:
    """Review-queue bound and alerts, alert webhook, token prices (streams/ops)."""
    webhook = get("STREAMS_ALERT_WEBHOOK_URL") or None
    if webhook and not webhook.startswith(("http://", "https://")):
        problems.append(f"STREAMS_ALERT_WEBHOOK_URL={webhook!r} must start with http:// or https://")
    prices: dict[str, tuple[float, float]] = {}
    raw = get("STREAMS_TOKEN_PRICES")
    for part in filter(None, (p.strip() for p in raw.split(","))):
        model, _, pair = part.rpartition("=")
        prompt, _, completion = pair.partition(":")
        try:
            price = (float(prompt), float(completion))
        except ValueError:
            price = (-1.0, -1.0)
        if not model or not 0 <= price[0] < 1e6 or not 0 <= price[1] < 1e6:
            problems.append(f"STREAMS_TOKEN_PRICES entry {part!r} must look like MODEL=PROMPT:COMPLETION "
                            "(USD per million tokens, e.g. gpt-4o-mini=0.15:0.6)")
            continue
        prices[model] = price
    return {
        "review_queue_max": integer("STREAMS_REVIEW_QUEUE_MAX", 1, 10_000_000),
        "review_alert_depth": integer("STREAMS_REVIEW_ALERT_DEPTH", 0, 100_000_000),
        "review_alert_age_s": number("STREAMS_REVIEW_ALERT_AGE_S", 0, 365 * 86400.0),
        "alert_webhook_url": webhook,
        "token_prices": prices,
    }


def _security(env: Mapping[str, str], get: Callable[[str], str], problems: list[str]) -> dict[str, Any]:
    """The Kafka security settings. The password's value never enters a message: only "set"/"not set"."""
    protocol = get("STREAMS_SECURITY_PROTOCOL").upper() or "PLAINTEXT"
    if protocol not in SECURITY_PROTOCOLS:
        problems.append(f"STREAMS_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}")
    sasl, tls = protocol.startswith("SASL_"), protocol in ("SSL", "SASL_SSL")

    mechanism = get("STREAMS_SASL_MECHANISM").upper() or None
    username = get("STREAMS_SASL_USERNAME") or None
    password_file = get("STREAMS_SASL_PASSWORD_FILE") or None
    password_env = env.get("STREAMS_SASL_PASSWORD", "")  # not stripped: spaces may be part of it
    password: str | None = None
    if sasl:
        if mechanism is None:
            problems.append(f"STREAMS_SASL_MECHANISM is not set; {protocol} needs one of {', '.join(SASL_MECHANISMS)}")
        elif mechanism not in SASL_MECHANISMS:
            problems.append(f"STREAMS_SASL_MECHANISM={mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}")
        if username is None:
            problems.append(f"STREAMS_SASL_USERNAME is not set; {protocol} needs a user name")
        if password_file and password_env:
            problems.append("STREAMS_SASL_PASSWORD_FILE and STREAMS_SASL_PASSWORD are both set; "
                            "keep only STREAMS_SASL_PASSWORD_FILE")
        elif password_file:
            try:
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n") or None
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                problems.append(f"STREAMS_SASL_PASSWORD_FILE={password_file!r} cannot be read ({reason}); "
                                "point it at a readable UTF-8 file holding the password")
            else:
                if password is None:
                    problems.append(f"STREAMS_SASL_PASSWORD_FILE={password_file!r} is empty; "
                                    "write the password into it")
        elif password_env:
            password = password_env
        else:
            problems.append("STREAMS_SASL_PASSWORD_FILE is not set (STREAMS_SASL_PASSWORD is not set either); "
                            f"{protocol} needs the password in a secrets file")
    elif protocol in SECURITY_PROTOCOLS:
        unused = [n for n in ("STREAMS_SASL_MECHANISM", "STREAMS_SASL_USERNAME", "STREAMS_SASL_PASSWORD_FILE",
                              "STREAMS_SASL_PASSWORD") if env.get(n, "").strip()]
        for name in unused:
            problems.append(f"{name} is set but STREAMS_SECURITY_PROTOCOL={protocol} does not use SASL; "
                            "set SASL_PLAINTEXT or SASL_SSL, or unset it")

    files: dict[str, Path | None] = {}
    for name in ("STREAMS_SSL_CAFILE", "STREAMS_SSL_CERTFILE", "STREAMS_SSL_KEYFILE"):
        raw = get(name)
        files[name] = Path(raw) if raw else None
        if raw and not tls and protocol in SECURITY_PROTOCOLS:
            problems.append(f"{name} is set but STREAMS_SECURITY_PROTOCOL={protocol} does not use TLS; "
                            "set SSL or SASL_SSL, or unset it")
        elif raw and not Path(raw).is_file():
            problems.append(f"{name}={raw!r} is not a readable file; give the path of a PEM file")
    if files["STREAMS_SSL_KEYFILE"] and not files["STREAMS_SSL_CERTFILE"]:
        problems.append("STREAMS_SSL_KEYFILE is set without STREAMS_SSL_CERTFILE; a client key needs its certificate")
    return {
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_username": username,
        "sasl_password": password,
        "ssl_cafile": files["STREAMS_SSL_CAFILE"],
        "ssl_certfile": files["STREAMS_SSL_CERTFILE"],
        "ssl_keyfile": files["STREAMS_SSL_KEYFILE"],
    }
