"""docker-compose.yml and deploy/Dockerfile agree with what the service actually reads.

Nothing is built or started: the compose file is parsed, the worker's environment is pushed through
the real settings parser and task loader, and the wiring (service names, ports) is cross-checked.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streams.settings import ENV_DEFAULTS, Settings
from streams.tasks import parse_tasks

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
TASKS = ROOT / "config" / "tasks.toml"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}; `$$` is a literal `$`.
_COMPOSE_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
# What streams.tasks expands: ${NAME} or ${NAME:-default}.
_TASK_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


# --------------------------------------------------------------------------- helpers


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "compose file has no services mapping"
    return doc


def _service(name: str) -> dict[str, Any]:
    services = _compose()["services"]
    assert name in services, f"service {name!r} missing from docker-compose.yml"
    return services[name]


def _resolve(value: str) -> str:
    """Compose interpolation as on a host where none of the referenced variables is set."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        op, arg = m.group(2), m.group(3)
        if op in ("-", ":-"):
            return arg
        if op in ("?", ":?"):
            raise AssertionError(f"{m.group(0)} requires a host variable; give the stack a default instead")
        return ""

    return _COMPOSE_VAR.sub(sub, value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment` (list of K=V or mapping), interpolated with defaults."""
    raw = service.get("environment") or {}
    pairs: dict[str, Any] = {}
    if isinstance(raw, list):
        for item in raw:
            key, sep, value = str(item).partition("=")
            # A bare `KEY` passes the host's value through; on a clean host that is unset.
            if sep:
                pairs[key] = value
    else:
        pairs = dict(raw)
    env: dict[str, str] = {}
    for key, value in pairs.items():
        assert not isinstance(value, bool), f"{key}: compose rejects booleans; quote the value"
        if value is None:
            continue
        env[str(key)] = _resolve(str(value))
    return env


def _worker_env() -> dict[str, str]:
    return _environment(_service("worker"))


def _dockerfile_env() -> dict[str, str]:
    """ENV instructions of deploy/Dockerfile (KEY=VALUE form, continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].upper() == "ENV":
            for token in shlex.split(parts[1]):
                key, sep, value = token.partition("=")
                if sep:
                    env[key] = value
    return env


def _container_env() -> dict[str, str]:
    """What the worker process sees: image ENV overridden by compose `environment`."""
    return {**_dockerfile_env(), **_worker_env()}


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _advertised(kafka_env: dict[str, str]) -> list[tuple[str, str, int]]:
    listeners = []
    for entry in kafka_env.get("KAFKA_ADVERTISED_LISTENERS", "").split(","):
        name, _, hostport = entry.strip().partition("://")
        host, _, port = hostport.rpartition(":")
        listeners.append((name, host, int(port)))
    return listeners


def _port_bindings(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) for each `ports` entry, short or long syntax."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("host_ip", "")), _resolve(str(entry.get("published", ""))),
                        str(entry.get("target", ""))))
            continue
        spec = _resolve(str(entry)).split("/", 1)[0]
        parts = spec.rsplit(":", 2) if spec.count(":") >= 2 else ["", *spec.split(":")]
        if len(parts) == 2:  # container port only
            parts = ["", "", parts[1]]
        out.append((parts[0].strip("[]"), parts[1], parts[2]))
    return out


def _task_refs(doc: Any) -> list[tuple[str, str | None]]:
    """(name, default) for each ${...} in the task file's string values (comments are not values)."""
    if isinstance(doc, str):
        return [(m.group(1), m.group(2)) for m in _TASK_REF.finditer(doc)]
    if isinstance(doc, list):
        return [ref for item in doc for ref in _task_refs(item)]
    if isinstance(doc, dict):
        return [ref for value in doc.values() for ref in _task_refs(value)]
    return []


# --------------------------------------------------------------------------- services


def test_three_services_and_no_zookeeper() -> None:
    services = _compose()["services"]
    for name in ("kafka", "model", "worker"):
        assert name in services, f"service {name!r} missing"
    assert not [n for n in services if "zookeeper" in n.lower()]
    for name, svc in services.items():
        assert "zookeeper" not in str(svc.get("image", "")).lower(), f"{name} uses a ZooKeeper image"


def test_kafka_is_apache_image_in_kraft_mode() -> None:
    kafka = _service("kafka")
    assert str(kafka.get("image", "")).startswith("apache/kafka:"), kafka.get("image")
    env = _environment(kafka)
    roles = {r.strip() for r in env.get("KAFKA_PROCESS_ROLES", "").split(",")}
    assert {"broker", "controller"} <= roles, f"KAFKA_PROCESS_ROLES={env.get('KAFKA_PROCESS_ROLES')!r}"
    assert not any(k.startswith("KAFKA_ZOOKEEPER") for k in env), "KRaft mode takes no ZooKeeper settings"
    # The controller listener named in KAFKA_CONTROLLER_LISTENER_NAMES must be a listener, and the
    # quorum voter must be this node on that listener's port.
    controller = env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "")
    listeners = {
        name: int(hostport.rpartition(":")[2])
        for name, _, hostport in (e.strip().partition("://") for e in env.get("KAFKA_LISTENERS", "").split(","))
    }
    assert controller in listeners, f"{controller!r} not in KAFKA_LISTENERS"
    voter = env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "")
    assert voter.startswith(f"{env.get('KAFKA_NODE_ID')}@"), voter
    assert voter.endswith(f":{listeners[controller]}"), voter
    # The app creates its topics with its own partition count; auto-creation would race it.
    assert env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false"
    assert env.get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR") == "1"
    assert "kafka-broker-api-versions.sh" in json.dumps(kafka.get("healthcheck", {}))


def test_worker_waits_for_healthy_kafka_and_model() -> None:
    worker = _service("worker")
    depends = worker.get("depends_on")
    assert isinstance(depends, dict), "depends_on must use the long form with conditions"
    for name in ("kafka", "model"):
        assert depends.get(name, {}).get("condition") == "service_healthy", name
        assert _service(name).get("healthcheck", {}).get("test"), f"{name} has no healthcheck to wait on"
    assert "replicas" not in (worker.get("deploy") or {}), "scale with --scale worker=N instead"
    build = worker.get("build") or {}
    assert build.get("dockerfile") == "deploy/Dockerfile" and build.get("context") == "."


# --------------------------------------------------------------------------- worker environment


def test_worker_streams_variables_are_known_settings() -> None:
    env = _worker_env()
    streams_vars = [k for k in env if k.startswith("STREAMS_")]
    assert streams_vars, "worker sets no STREAMS_* variables"
    unknown = [k for k in streams_vars if k not in ENV_DEFAULTS]
    assert not unknown, f"not read by streams.settings (typo?): {unknown}"
    dockerfile_unknown = [k for k in _dockerfile_env() if k.startswith("STREAMS_") and k not in ENV_DEFAULTS]
    assert not dockerfile_unknown, f"deploy/Dockerfile sets unknown variables: {dockerfile_unknown}"


def test_worker_environment_passes_settings_parser() -> None:
    settings = Settings.from_env(_container_env())
    assert settings.broker == "kafka://kafka:9092"
    assert settings.partitions == 8
    assert settings.max_in_flight == 64
    assert settings.topic_prefix == ""
    assert str(settings.tasks_file) == "/app/config/tasks.toml"
    # Published ports only reach a server that listens on all interfaces inside the container.
    assert settings.web_host == "0.0.0.0"


def test_broker_url_names_kafka_service_and_advertised_port() -> None:
    settings = Settings.from_env(_worker_env())
    advertised = _advertised(_environment(_service("kafka")))
    for url in settings.broker.split(";"):
        hostport = url.split("://", 1)[1]
        host, _, port = hostport.rpartition(":")
        assert host == "kafka", f"STREAMS_BROKER host {host!r} is not the kafka service"
        assert any(h == host and p == int(port) for _, h, p in advertised), (
            f"{hostport} is not an advertised listener: {advertised}"
        )


def test_model_base_url_points_at_model_service_port() -> None:
    base = urlsplit(_worker_env()["MODEL_BASE_URL"])
    cmd = _command(_service("model"))
    assert "--port" in cmd, f"model command sets no --port: {cmd}"
    port = int(cmd[cmd.index("--port") + 1])
    assert base.scheme == "http" and base.hostname == "model", base.geturl()
    assert base.port == port, f"MODEL_BASE_URL port {base.port} != model server port {port}"
    assert base.path.rstrip("/") == "/v1", "the OpenAI-compatible API lives under /v1"
    host = cmd[cmd.index("--host") + 1] if "--host" in cmd else "127.0.0.1"
    assert host == "0.0.0.0", "the model server must listen on all interfaces to be reachable from the worker"
    model_path = cmd[cmd.index("-m") + 1]
    mounts = [str(v).split(":")[1] for v in _service("model").get("volumes", [])]
    assert any(model_path.startswith(m.rstrip("/") + "/") for m in mounts), f"{model_path} is not on a mounted volume"


# --------------------------------------------------------------------------- task file


# The documented example: model endpoint from the environment with local defaults.
_SAMPLE_TASKS = """
[[task]]
name = "movie_sentiment"
labels = ["fresh", "rotten"]
[task.model]
base_url = "${MODEL_BASE_URL:-http://127.0.0.1:8080/v1}"
name = "${MODEL_NAME:-gemma3-270m}"
"""


def _tasks_sources() -> list[tuple[str, str]]:
    sources = [("sample", _SAMPLE_TASKS)]
    if TASKS.exists():
        sources.append((str(TASKS.relative_to(ROOT)), TASKS.read_text(encoding="utf-8")))
    return sources


def test_tasks_file_is_shipped_where_worker_looks() -> None:
    assert TASKS.exists(), "config/tasks.toml is missing; the image copies config/ and STREAMS_TASKS_FILE points there"
    assert _worker_env()["STREAMS_TASKS_FILE"] == "/app/" + TASKS.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("source,text", _tasks_sources(), ids=[name for name, _ in _tasks_sources()])
def test_task_env_refs_without_default_are_set_on_worker(source: str, text: str) -> None:
    env = _worker_env()
    doc = tomllib.loads(text)
    refs = _task_refs(doc)
    assert refs, f"{source} references no environment variables; the model endpoint should come from them"
    missing = sorted({name for name, default in refs if default is None and name not in env})
    assert not missing, f"{source} needs {missing} but the worker does not set them"
    key_envs = [t.get("model", {}).get("api_key_env") for t in doc.get("task", [])]
    missing_keys = sorted({k for k in key_envs if k and k not in env})
    assert not missing_keys, f"{source} names api_key_env {missing_keys}; pass it to the worker"


@pytest.mark.parametrize("source,text", _tasks_sources(), ids=[name for name, _ in _tasks_sources()])
def test_tasks_resolve_to_model_service_in_compose(source: str, text: str) -> None:
    env = _worker_env()
    registry = parse_tasks(text, source, env)
    assert len(registry) >= 1
    # Overridden by the worker's MODEL_* variables, not left at the 127.0.0.1 laptop default.
    for task in registry.tasks.values():
        assert task.model.base_url == env["MODEL_BASE_URL"], (task.name, task.model.base_url)
        assert urlsplit(task.model.base_url).hostname == "model"
        assert task.model.name == env["MODEL_NAME"]


# --------------------------------------------------------------------------- image and ports


def test_dockerfile_runs_streams_package() -> None:
    assert DOCKERFILE.exists(), "deploy/Dockerfile missing"
    text = DOCKERFILE.read_text(encoding="utf-8")
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert entry, "no exec-form ENTRYPOINT"
    assert json.loads(entry.group(1))[:3] == ["python", "-m", "streams"]
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    assert any(src.rstrip("/") == "streams" for srcs in copies for src in srcs), f"streams/ not copied: {copies}"
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    install = re.search(r"pip install --no-cache-dir (\S+)", text)
    assert install and install.group(1) == ".", "install the runtime package, without the local extra"


def test_worker_port_published_on_loopback_only() -> None:
    bindings = _port_bindings(_service("worker"))
    assert bindings, "worker publishes no port"
    web_port = Settings.from_env(_container_env()).web_port
    for host_ip, published, target in bindings:
        assert host_ip == "127.0.0.1", f"{host_ip or '0.0.0.0'}:{published}:{target} is reachable off-host"
    assert any(target == str(web_port) for _, _, target in bindings), f"no binding targets web port {web_port}"
    # The default (no host variables set) is the documented 127.0.0.1:6066.
    assert ("127.0.0.1", "6066", "6066") in bindings


def test_only_worker_publishes_ports() -> None:
    services = _compose()["services"]
    for name in ("kafka", "model"):
        assert not services[name].get("ports"), f"{name} should be reachable only inside the compose network"
