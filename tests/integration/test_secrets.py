"""Secrets never leave the process: model API keys and the Kafka password are not logged, published or
echoed, and the web server listens on loopback unless told otherwise.

A real worker runs with a model key in TEST_MODEL_KEY against the embedded broker and the synthetic
model; it gets valid requests, malformed ones (dead letters) and, after the model is stopped, requests
whose model calls fail. The synthetic model records a hash of each bearer token it received, so the test
first proves the key was really sent (a positive control). Then its log (stdout and stderr), its data
directory and every record on the results, review and dead-letter topics are searched for the key. Only the
web-bind check needs the listening sockets listed; where they cannot be, that check alone is skipped, after
every key check has run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streams.localdev.broker import EmbeddedBroker
from streams.localdev.processes import ChildProcess, free_port, port_open
from streams.schemas import SCHEMA_FOR_TOPIC, validate
from tests.integration.harness import REPO, Received, SyntheticModel, Worker, collect, produce, run, wait_ready

API_KEY = "sk-THIS-MUST-NOT-LEAK-123"
KAFKA_PASSWORD = "pw-MUST-NOT-LEAK"
# Distinctive cores too, so a truncated or partly masked echo is caught as well.
NEEDLES = (API_KEY, "THIS-MUST-NOT-LEAK", KAFKA_PASSWORD)
# What the synthetic model records for a bearer token (streams.localdev.synthetic_model.bearer_sha256).
KEY_SHA256 = hashlib.sha256(API_KEY.encode()).hexdigest()


def tasks_toml(path: Path, base_url: str, model_lines: str = 'api_key_env = "TEST_MODEL_KEY"') -> Path:
    path.write_text(
        '[[task]]\nname = "sentiment"\nlabels = ["fresh", "rotten"]\n'
        f'[task.model]\nbase_url = "{base_url}"\nname = "synthetic"\n{model_lines}\n'
        '[task.routing]\nreview_threshold = 0.6\nmin_label_mass = 0.5\n'
        '[task.prompt]\ntemplate = "Review:\\n<<<REVIEW\\n{text}\\nREVIEW>>>\\nAnswer fresh or rotten:"\n',
        encoding="utf-8",
    )
    return path


def leaks(data: bytes | str | None) -> list[str]:
    if data is None:
        return []
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return [n for n in NEEDLES if n in text]


# --------------------------------------------------------------------------- where does a port listen?


def _proc_net_listeners(port: int) -> list[str] | None:
    """Local addresses in LISTEN state on `port`, from /proc/net/tcp{,6}; None when unreadable."""
    found: list[str] = []
    read_any = False
    for name, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        read_any = True
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            host_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A = TCP_LISTEN
                continue
            raw = bytes.fromhex(host_hex)
            # /proc prints the address as host-order 32-bit words.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(socket.inet_ntop(family, raw))
    return found if read_any else None


def _ss_listeners(port: int) -> list[str] | None:
    ss = shutil.which("ss")
    if ss is None:
        return None
    out = subprocess.run([ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        return None
    hosts = []
    for line in out.stdout.splitlines():
        local = line.split()[3]
        hosts.append(local.rsplit(":", 1)[0].strip("[]"))
    return hosts


def _psutil_listeners(port: int) -> list[str] | None:
    try:
        import psutil
    except ImportError:
        return None
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    # laddr is () for a socket with no local address yet, never for a listening one
    return [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]


def listen_addresses(port: int) -> tuple[str, list[str]] | None:
    for method, probe in (("psutil", _psutil_listeners), ("/proc/net/tcp", _proc_net_listeners),
                          ("ss", _ss_listeners)):
        hosts = probe(port)
        if hosts:  # an empty answer may just mean the method cannot see it; try the next
            return method, hosts
    return None


# --------------------------------------------------------------------------- the worker


def test_api_key_never_reaches_logs_or_topics_and_web_binds_loopback(broker: EmbeddedBroker, workdir: Path) -> None:
    model = SyntheticModel(workdir).start()
    try:
        tasks = tasks_toml(workdir / "tasks.toml", model.base_url)
        worker = Worker(broker.bootstrap, tasks, workdir, extra_env={
            "TEST_MODEL_KEY": API_KEY,
            "STREAMS_MODEL_TIMEOUT_S": "2",
            "STREAMS_MODEL_MAX_RETRIES": "1",
            "STREAMS_MAX_TEXT_CHARS": "500",
        })
        worker.web_port = free_port()
        # The default web host: STREAMS_WEB_HOST not set at all.
        env = {k: v for k, v in worker.env.items() if k != "STREAMS_WEB_HOST"}
        assert "STREAMS_WEB_HOST" not in env and env["TEST_MODEL_KEY"] == API_KEY
        log_path = workdir / "worker-secrets.log"
        proc = ChildProcess("worker", [sys.executable, "-m", "streams", "worker", "-l", "info"], log_path, env)
        topics = {worker.topic(t): t for t in ("results", "review", "deadletter")}
        with proc:
            wait_ready(proc, timeout_s=90)

            # Web server: loopback only by default.
            proc.wait_until(lambda: port_open("127.0.0.1", worker.web_port), timeout_s=30)
            where = listen_addresses(worker.web_port)
            # Without a way to list sockets only this check is skipped, at the end, once the key checks ran.
            bind_unchecked = where is None
            if where is not None:
                method, hosts = where
                assert hosts and set(hosts) == {"127.0.0.1"}, (
                    f"web port {worker.web_port} listens on {hosts} ({method})")

            # Phase 1: valid requests and malformed ones.
            valid = {f"ok-{i}": f"A fine film, number {i}." for i in range(12)}
            malformed = [
                (b"bad-json", b'{"id": "bad-json", "task": '),
                (b"bad-utf8", b'{"id": "bad-utf8", "task": "sentiment", "text": "\xc3\x28"}'),
                (b"bad-type", orjson.dumps({"id": "bad-type", "task": "sentiment", "text": 7})),
                (b"bad-task", orjson.dumps({"id": "bad-task", "task": "nope", "text": "x"})),
                (b"too-long", orjson.dumps({"id": "too-long", "task": "sentiment", "text": "y" * 600})),
                (b"empty", None),
            ]
            messages: list[tuple[bytes, bytes | None]] = [
                (rid.encode(), orjson.dumps({"id": rid, "task": "sentiment", "text": t})) for rid, t in valid.items()]
            run(produce(broker.bootstrap, worker.topic("requests"), messages + malformed))
            got = run(collect(broker.bootstrap, list(topics), lambda g: len(g) >= len(valid) + len(malformed),
                              timeout_s=90, settle_s=1))
            assert len(got) >= len(valid) + len(malformed), f"only {len(got)} outputs in phase 1"
            bearers = model.stats()["bearer_sha256"]  # before the model goes away in phase 2

            # Phase 2: the model endpoint goes away; calls fail and items go to review as model errors.
            model.stop()
            failing = {f"down-{i}": f"Another film, number {i}." for i in range(6)}
            run(produce(broker.bootstrap, worker.topic("requests"),
                        [(rid.encode(), orjson.dumps({"id": rid, "task": "sentiment", "text": t}))
                         for rid, t in failing.items()]))

            def phase2_done(g: list[Received]) -> bool:
                ids = {orjson.loads(r.value).get("id") for r in g}
                return set(failing) <= ids

            got = run(collect(broker.bootstrap, list(topics), phase2_done, timeout_s=120, settle_s=2))
        # The worker has stopped (SIGTERM): its whole log is written.
    finally:
        model.stop()

    # Positive control: the key was really used. Every completions call carried it as its bearer token, so a
    # clean grep below means the key was handled and still not leaked, not that it was never there.
    assert bearers.get(KEY_SHA256, 0) >= len(valid), (
        f"the model did not receive the key from TEST_MODEL_KEY on each of the {len(valid)} calls: "
        f"bearer hashes seen {bearers}")
    assert set(bearers) == {KEY_SHA256}, f"a call without the key reached the model: {bearers}"

    by_topic: dict[str, list[dict]] = {"results": [], "review": [], "deadletter": []}
    for rec in got:
        logical = topics[rec.topic]
        payload = rec.json()
        validate(SCHEMA_FOR_TOPIC[logical], payload)
        by_topic[logical].append(payload)
        assert not leaks(rec.value) and not leaks(rec.key), f"key on {logical}: {payload}"

    # The paths that could echo a key were really taken.
    assert {p["id"] for p in by_topic["results"] + by_topic["review"]} >= set(valid) | set(failing)
    assert Counter(p["error_type"] for p in by_topic["deadletter"]) == Counter(
        ["invalid_json", "invalid_utf8", "invalid_field", "unknown_task", "text_too_long", "empty_message"])
    errors = [p for p in by_topic["review"] if p["id"] in failing]
    assert errors and all(p["review_reason"] == "model_error" and p["model_error"] for p in errors), errors

    log_text = log_path.read_text(errors="replace")
    assert "Worker]: Ready" in log_text, "the log is the worker's (stdout and stderr together)"
    assert not leaks(log_text), f"key in the worker log {log_path}"
    data_dir = Path(worker.env["STREAMS_DATA_DIR"])
    for path in (p for p in data_dir.rglob("*") if p.is_file()) if data_dir.exists() else ():
        assert not leaks(path.read_bytes()), f"key in the worker's data file {path}"
    assert not leaks(model.log_path.read_text(errors="replace")), "the synthetic model's own log"
    if bind_unchecked:
        pytest.skip("key checks passed; web bind NOT checked: cannot list listening sockets "
                    "(no psutil, /proc/net/tcp or ss)")


# --------------------------------------------------------------------------- configuration errors


def _worker_cli(env_extra: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")} | env_extra
    return subprocess.run([sys.executable, "-m", "streams", "worker", "-l", "info"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def test_a_key_written_in_the_task_file_is_rejected_without_echoing_it(workdir: Path) -> None:
    tasks = tasks_toml(workdir / "tasks.toml", "http://127.0.0.1:1/v1", f'api_key = "{API_KEY}"')
    out = _worker_cli({"STREAMS_TASKS_FILE": str(tasks), "STREAMS_BROKER": "kafka://127.0.0.1:1"})
    assert out.returncode == 2, out
    assert "model.api_key" in out.stderr and "api_key_env" in out.stderr, out.stderr
    assert not leaks(out.stdout) and not leaks(out.stderr), out.stderr


def test_kafka_password_is_not_echoed_by_a_config_error(workdir: Path) -> None:
    tasks = tasks_toml(workdir / "tasks.toml", "http://127.0.0.1:1/v1", "")
    (workdir / "pw").write_text(KAFKA_PASSWORD)
    for extra in ({"STREAMS_SASL_PASSWORD": KAFKA_PASSWORD},  # no username, no mechanism
                  {"STREAMS_SASL_PASSWORD": KAFKA_PASSWORD, "STREAMS_SASL_PASSWORD_FILE": str(workdir / "pw")}):
        out = _worker_cli({"STREAMS_TASKS_FILE": str(tasks), "STREAMS_BROKER": "kafka://127.0.0.1:1",
                           "STREAMS_SECURITY_PROTOCOL": "SASL_SSL", **extra})
        assert out.returncode == 2, out
        assert "STREAMS_SASL_" in out.stderr, out.stderr
        assert not leaks(out.stdout) and not leaks(out.stderr), out.stderr


def test_a_key_pasted_into_api_key_env_is_not_echoed(workdir: Path) -> None:
    tasks = tasks_toml(workdir / "tasks.toml", "http://127.0.0.1:1/v1", f'api_key_env = "{API_KEY}"')
    out = _worker_cli({"STREAMS_TASKS_FILE": str(tasks), "STREAMS_BROKER": "kafka://127.0.0.1:1"})
    assert out.returncode == 2, out
    assert not leaks(out.stderr), out.stderr
