"""streams.settings.Settings.from_env: defaults, topic prefixes, broker parsing, collected errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.settings import ENV_DEFAULTS, TOPIC_NAMES, Settings


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.source == "environment"
    return info.value.problems


def test_defaults_from_empty_env() -> None:
    s = Settings.from_env({})
    assert s.broker == "kafka://127.0.0.1:9092"
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.app_id == "llm-classify"
    assert s.topic_prefix == ""
    assert s.partitions == 8
    assert s.replication == 1
    assert s.tasks_file == Path("config/tasks.toml")
    assert s.max_in_flight == 64
    assert s.max_text_chars == 20000
    assert s.deadletter_excerpt_bytes == 4096
    assert s.model_timeout_s == 30.0
    assert s.model_max_retries == 4
    assert s.session_timeout_s == 30.0
    assert s.web_host == "127.0.0.1"
    assert s.web_port == 6066
    assert s.data_dir == Path(".llm-classify-data")
    assert s.topics == TOPIC_NAMES
    assert s.topic("requests") == "classify.requests"
    assert s.topic("alerts") == "drift.alerts"


def test_from_env_reads_only_the_given_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMS_PARTITIONS", "3")
    assert Settings.from_env({}).partitions == 8
    assert Settings.from_env().partitions == 3


def test_topic_prefix_is_prepended_to_every_topic() -> None:
    s = Settings.from_env({"STREAMS_TOPIC_PREFIX": "prod."})
    assert s.topic_prefix == "prod."
    assert s.topic("requests") == "prod.classify.requests"
    assert s.topic("deadletter") == "prod.classify.deadletter"
    assert s.topics == {k: "prod." + v for k, v in TOPIC_NAMES.items()}
    with pytest.raises(KeyError):
        s.topic("nope")


def test_overrides_are_parsed_and_stripped() -> None:
    s = Settings.from_env({
        "STREAMS_PARTITIONS": " 12 ",
        "STREAMS_MODEL_TIMEOUT_S": "2.5",
        "STREAMS_APP_ID": "svc",
        "STREAMS_DATA_DIR": "/var/lib/svc",
        "STREAMS_WEB_PORT": "0",
        "STREAMS_DEADLETTER_EXCERPT_BYTES": "0",
    })
    assert s.partitions == 12
    assert s.model_timeout_s == 2.5
    assert s.app_id == "svc"
    assert s.data_dir == Path("/var/lib/svc")
    assert s.web_port == 0
    assert s.deadletter_excerpt_bytes == 0


def test_data_dir_defaults_from_app_id() -> None:
    assert Settings.from_env({"STREAMS_APP_ID": "abc"}).data_dir == Path(".abc-data")


def test_bootstrap_servers_from_several_brokers() -> None:
    s = Settings.from_env({"STREAMS_BROKER": "kafka://a:1;kafka://b:2"})
    assert s.bootstrap_servers == "a:1,b:2"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAMS_PARTITIONS", "eight"),
        ("STREAMS_PARTITIONS", "0"),
        ("STREAMS_PARTITIONS", "1025"),
        ("STREAMS_PARTITIONS", "2.5"),
        ("STREAMS_REPLICATION", "0"),
        ("STREAMS_MAX_IN_FLIGHT", ""),
        ("STREAMS_MAX_TEXT_CHARS", "-1"),
        ("STREAMS_MODEL_TIMEOUT_S", "-1"),
        ("STREAMS_MODEL_TIMEOUT_S", "soon"),
        ("STREAMS_MODEL_TIMEOUT_S", "nan"),
        ("STREAMS_SESSION_TIMEOUT_S", "0.5"),
        ("STREAMS_WEB_PORT", "65536"),
        ("STREAMS_BROKER", "127.0.0.1:9092"),
        ("STREAMS_BROKER", "kafka://a:1;b:2"),
        ("STREAMS_BROKER", "kafka://nohostport"),
        ("STREAMS_TOPIC_PREFIX", "my prefix"),
        ("STREAMS_TOPIC_PREFIX", "prod/"),
        ("STREAMS_APP_ID", "   "),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    assert name in ENV_DEFAULTS
    problems = problems_of({name: value})
    assert len(problems) == 1
    assert problems[0].startswith(name)


def test_several_problems_reported_together() -> None:
    problems = problems_of({
        "STREAMS_PARTITIONS": "x",
        "STREAMS_BROKER": "localhost:9092",
        "STREAMS_TOPIC_PREFIX": "a b",
        "STREAMS_MODEL_TIMEOUT_S": "-5",
        "STREAMS_WEB_PORT": "99999",
    })
    assert len(problems) == 5
    for name in ("STREAMS_PARTITIONS", "STREAMS_BROKER", "STREAMS_TOPIC_PREFIX", "STREAMS_MODEL_TIMEOUT_S",
                 "STREAMS_WEB_PORT"):
        assert sum(p.startswith(name + "=") for p in problems) == 1, (name, problems)


def test_config_error_message_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"STREAMS_PARTITIONS": "0", "STREAMS_REPLICATION": "99"})
    text = str(info.value)
    assert "STREAMS_PARTITIONS=0" in text
    assert "STREAMS_REPLICATION=99" in text


@pytest.mark.parametrize("broker", ["kafka://:9092", "kafka://host:", "kafka://host:abc"])
def test_broker_without_host_or_numeric_port_is_rejected(broker: str) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"STREAMS_BROKER": broker})
