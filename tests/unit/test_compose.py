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


# --------------------------------------------------------------------------- monitoring: prometheus, grafana

# Official images pinned to a release (never `latest` or a floating major): vX.Y.Z / X.Y.Z.
_PINNED = {"prometheus": r"prom/prometheus:v\d+\.\d+\.\d+", "grafana": r"grafana/grafana:\d+\.\d+\.\d+"}


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each `volumes` entry, short or long syntax."""
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("source", "")), str(entry.get("target", "")), bool(entry.get("read_only"))))
            continue
        parts = _resolve(str(entry)).split(":")
        mode = parts[2] if len(parts) > 2 else "rw"
        out.append((parts[0], parts[1], "ro" in mode.split(",")))
    return out


def _host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file or folder a bind mount puts at `container_path` (the deepest mount wins)."""
    best: tuple[int, Path] | None = None
    for source, target, _ in _mounts(service):
        if not source.startswith((".", "/")):
            continue  # a named volume
        target = target.rstrip("/")
        if container_path == target or container_path.startswith(target + "/"):
            path = (ROOT / source / container_path[len(target):].lstrip("/")).resolve()
            if best is None or len(target) > best[0]:
                best = (len(target), path)
    return best[1] if best else None


def _flag(cmd: list[str], name: str, default: str) -> str:
    for i, arg in enumerate(cmd):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(cmd):
            return cmd[i + 1]
    return default


def _prometheus_config() -> tuple[str, Path, dict[str, Any]]:
    """Where the prometheus service reads its config (container path), that file in the repo, and its content."""
    prometheus = _service("prometheus")
    config_path = _flag(_command(prometheus), "--config.file", "/etc/prometheus/prometheus.yml")
    host = _host_path(prometheus, config_path)
    assert host is not None and host.is_file(), f"{config_path} is not mounted from a file in the repository"
    return config_path, host, yaml.safe_load(host.read_text(encoding="utf-8"))


def test_monitoring_services_use_pinned_official_images() -> None:
    for name, pattern in _PINNED.items():
        image = str(_service(name).get("image", ""))
        assert re.fullmatch(pattern, image), f"{name}: {image!r} is not an official image pinned to a release"


def test_monitoring_mounts_exist_in_the_repo_and_are_read_only() -> None:
    declared = set((_compose().get("volumes") or {}).keys())
    for name in _PINNED:
        mounts = _mounts(_service(name))
        assert mounts, f"{name} mounts nothing"
        for source, target, read_only in mounts:
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source} (mounted at {target}) is not in the repository"
                assert read_only, f"{name}: mount {source} read-only (:ro); the container must not edit the repo"
            else:
                assert source in declared, f"{name}: named volume {source!r} is not declared under `volumes`"


def test_prometheus_scrapes_the_worker_metrics_port_and_loads_the_alert_rules() -> None:
    config_path, host, config = _prometheus_config()
    assert host == (ROOT / "deploy" / "prometheus.yml").resolve()
    web_port = Settings.from_env(_container_env()).web_port
    jobs = config.get("scrape_configs") or []
    targets: list[tuple[str, int]] = []
    for job in jobs:
        if job.get("metrics_path", "/metrics") != "/metrics":
            continue
        for sd in job.get("dns_sd_configs") or []:
            targets += [(str(n), int(sd["port"])) for n in sd.get("names") or []]
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                h, _, p = str(target).rpartition(":")
                targets.append((h, int(p)))
    assert ("worker", web_port) in targets, f"no scrape job reaches worker:{web_port}/metrics: {targets}"
    # rule_files are relative to the config file, inside the container: each must be a mounted repo file.
    rules = config.get("rule_files") or []
    assert rules, "prometheus.yml loads no alert rules"
    base = config_path.rsplit("/", 1)[0]
    for rule in rules:
        container = rule if rule.startswith("/") else f"{base}/{rule}"
        rule_host = _host_path(_service("prometheus"), container)
        assert rule_host is not None and rule_host.is_file(), f"{container} is not mounted into prometheus"
        assert rule_host == (ROOT / "deploy" / "alert-rules.yml").resolve(), rule_host


def _grafana_files(kind: str) -> list[dict[str, Any]]:
    """The provisioning YAML documents of one kind (datasources, dashboards) the grafana service reads."""
    grafana = _service("grafana")
    root = _environment(grafana).get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning")
    host = _host_path(grafana, f"{root}/{kind}")
    assert host is not None and host.is_dir(), f"grafana's {root}/{kind} is not mounted from the repository"
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(host.glob("*.y*ml"))]
    assert docs, f"no {kind} provisioning file under {host}"
    return docs


def test_grafana_provisions_prometheus_and_the_dashboard_file() -> None:
    grafana = _service("grafana")
    prometheus_port = int(_flag(_command(_service("prometheus")), "--web.listen-address", ":9090").rpartition(":")[2])
    sources = [ds for doc in _grafana_files("datasources") for ds in doc.get("datasources") or []]
    proms = [ds for ds in sources if ds.get("type") == "prometheus"]
    assert proms, "no prometheus datasource provisioned"
    url = urlsplit(proms[0]["url"])
    assert (url.hostname, url.port) == ("prometheus", prometheus_port), f"datasource url {proms[0]['url']}"
    providers = [p for doc in _grafana_files("dashboards") for p in doc.get("providers") or []]
    assert providers, "no dashboard provider"
    dashboards: list[Path] = []
    for provider in providers:
        assert provider.get("type", "file") == "file"
        folder = _host_path(grafana, str(provider["options"]["path"]).rstrip("/"))
        assert folder is not None and folder.is_dir(), f"provider path {provider['options']['path']} is not mounted"
        dashboards += sorted(folder.glob("*.json"))
    expected = (ROOT / "deploy" / "grafana" / "dashboards" / "llm-classify.json").resolve()
    assert expected in dashboards, f"the provider does not load {expected.relative_to(ROOT)}: {dashboards}"
    home = _environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert _host_path(grafana, home) == expected, f"home dashboard {home} is not the provisioned file"
    # The dashboard's datasource variable defaults to the provisioned datasource's uid.
    doc = json.loads(expected.read_text(encoding="utf-8"))
    variable = next(v for v in doc["templating"]["list"] if v.get("type") == "datasource")
    assert variable["current"]["value"] == proms[0]["uid"], (variable["current"], proms[0]["uid"])


def test_grafana_has_no_anonymous_access_and_no_password_in_the_file() -> None:
    grafana = _service("grafana")
    env = _environment(grafana)
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED") == "false", "turn anonymous access off explicitly"
    assert env.get("GF_USERS_ALLOW_SIGN_UP", "false") == "false"
    raw = grafana.get("environment") or {}
    raw_password = str(raw.get("GF_SECURITY_ADMIN_PASSWORD", "")) if isinstance(raw, dict) else ""
    if raw_password:
        assert re.fullmatch(r"\$\{[A-Za-z_]\w*\}", raw_password), "the admin password must come from the host"
        return
    secret_file = env.get("GF_SECURITY_ADMIN_PASSWORD__FILE", "")
    assert secret_file.startswith("/run/secrets/"), "set the admin password from a secret (..._PASSWORD__FILE)"
    name = secret_file.rsplit("/", 1)[1]
    granted = {(s if isinstance(s, str) else s.get("target") or s["source"]): (s if isinstance(s, str) else s["source"])
               for s in grafana.get("secrets") or []}
    assert name in granted, f"grafana is not given the secret {name!r}"
    secret = (_compose().get("secrets") or {}).get(granted[name]) or {}
    assert secret.get("environment") or secret.get("file"), f"secret {granted[name]!r} has no source"
    if secret.get("file"):
        assert not (ROOT / _resolve(str(secret["file"]))).is_file(), "a password file must not be in the repository"
    # No default value hides a password in the compose file either.
    assert not re.search(r"PASSWORD[A-Z_]*:?-[^}]", COMPOSE.read_text(encoding="utf-8")), "no default passwords"


def test_monitoring_is_wired_together_and_published_on_loopback_only() -> None:
    grafana, prometheus = _service("grafana"), _service("prometheus")
    assert (grafana.get("depends_on") or {}).get("prometheus", {}).get("condition") == "service_healthy"
    assert prometheus.get("healthcheck", {}).get("test"), "prometheus has no healthcheck for grafana to wait on"
    assert "worker" in (prometheus.get("depends_on") or {}), "prometheus scrapes the worker: start it first"
    assert set(grafana.get("profiles") or []) == set(prometheus.get("profiles") or []), "one profile for both"
    for name, port in (("prometheus", "9090"), ("grafana", "3000")):
        bindings = _port_bindings(_service(name))
        assert bindings and all(h == "127.0.0.1" for h, _, _ in bindings), f"{name}: publish on 127.0.0.1 only"
        assert any(target == port for _, _, target in bindings), f"{name}: no binding targets {port}"
    # The default stack stays the three services it was: monitoring is opt-in (its secret must be set).
    default = [n for n, s in _compose()["services"].items() if not s.get("profiles")]
    assert sorted(default) == ["kafka", "model", "worker"], default
