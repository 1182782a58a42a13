"""TLS end to end: a real worker talks to the broker only over TLS, and refuses a certificate it does not trust.

A TLS-terminating proxy (streams/localdev/tls_proxy.py, a real process) sits in front of a Tansu broker of
this module's own, which advertises the proxy's address in its metadata: every connection a client opens,
bootstrap or not, goes through the proxy. The worker gets STREAMS_SECURITY_PROTOCOL=SSL and a CA file, as in
production; the test's own clients use the same settings through streams.kafka_security.kafka_client_options.

- With the CA that signed the proxy's certificate, requests produced over TLS come back classified on the
  results topic (read over TLS). The worker's own TCP connections, read from /proc, all go to the proxy,
  each one a completed TLS handshake in the proxy's log, and none to the broker's plaintext port.
- With a CA that did not sign it, the worker logs a certificate verification failure, never becomes
  ready, and publishes nothing for requests that are waiting for it.
- With the right CA but a host name the certificate was not issued for, the connection is refused too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from streams.kafka_security import kafka_client_options
from streams.localdev.broker import EmbeddedBroker
from streams.localdev.processes import free_port
from streams.localdev.tls_proxy import ThrowawayCertificates, TlsProxy, make_throwaway_certificates
from streams.settings import Settings
from tests.integration.harness import SyntheticModel, Worker, wait_ready, write_tasks
from tests.integration.harness import run as run_async

VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"


@dataclass
class TlsSetup:
    broker: EmbeddedBroker  # plaintext, advertising the proxy
    proxy: TlsProxy
    certs: ThrowawayCertificates  # the proxy's certificate (for 127.0.0.1 only) and the CA that signed it
    stranger: ThrowawayCertificates  # another CA, which signed nothing the proxy shows
    tasks: Path
    workdir: Path

    def worker(self, ca: Path) -> Worker:
        return Worker(self.proxy.bootstrap, self.tasks, self.workdir, extra_env={
            "STREAMS_SECURITY_PROTOCOL": "SSL", "STREAMS_SSL_CAFILE": str(ca)})


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSetup]:
    workdir = tmp_path_factory.mktemp("tls")
    certs = make_throwaway_certificates(workdir / "pki", hosts=("127.0.0.1",))
    stranger = make_throwaway_certificates(workdir / "stranger-pki", hosts=("127.0.0.1",))
    proxy_port = free_port()
    with (EmbeddedBroker(advertised_port=proxy_port, log_path=workdir / "broker.log") as broker,
          TlsProxy(broker.bootstrap, certs.cert, certs.key, port=proxy_port,
                   log_path=workdir / "tls-proxy.log") as proxy,
          SyntheticModel(workdir, "--label-probs", "0.9,0.1") as model):
        tasks = write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic")
        yield TlsSetup(broker, proxy, certs, stranger, tasks, workdir)


# --------------------------------------------------------------------------- Kafka I/O over TLS


async def produce_tls(settings: Settings, ids: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **kafka_client_options(settings))
    await producer.start()
    try:
        for rid in ids:
            await producer.send(settings.topic("requests"), orjson.dumps(
                {"id": rid, "task": "sentiment", "text": f"A fine, warm film, number {rid}."}), key=rid.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def read_tls(settings: Settings, logical: str, want: int | None, timeout_s: float) -> list[dict[str, Any]]:
    """Records of one topic from the start, until `want` arrived or `timeout_s` passed. `want=None`: all the topic
    holds, read until every partition's position reaches its fetch high watermark (or `timeout_s` passed)."""
    consumer = AIOKafkaConsumer(settings.topic(logical), bootstrap_servers=settings.bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                                **kafka_client_options(settings))
    await consumer.start()
    got: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=300)).values():
                got.extend(orjson.loads(m.value) for m in msgs)
            if want is not None and len(got) >= want:
                break
            if want is None and await _read_to_end(consumer):
                break
    finally:
        await consumer.stop()
    return got


async def _read_to_end(consumer: AIOKafkaConsumer) -> bool:
    """Whether the consumer holds partitions and has read each to its fetch high watermark."""
    parts = consumer.assignment()
    for tp in parts:
        end = consumer.highwater(tp)
        if end is None or await consumer.position(tp) < end:
            return False
    return bool(parts)


async def advertised_ports(bootstrap: str) -> set[int]:
    """The broker ports a plaintext client is told about in metadata, asked at the plaintext port."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        return {b.port for b in client.cluster.brokers()}
    finally:
        await client.close()


def tcp_connections(pid: int) -> list[tuple[int, int]] | None:
    """(local port, remote port) of each established TCP socket the process holds, from /proc; None without."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            if (link := os.readlink(fd)).startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    found = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and fields[3] == "01":  # 01 = TCP_ESTABLISHED
                    found.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)))
    return found


# --------------------------------------------------------------------------- the tests


def test_the_worker_classifies_over_tls_and_never_uses_the_plaintext_port(tls: TlsSetup) -> None:
    # The broker tells clients to come back through the proxy, and only through it.
    assert run_async(advertised_ports(tls.broker.bootstrap)) == {tls.proxy.port}

    worker = tls.worker(tls.certs.ca)
    settings = worker.settings
    assert settings.security_protocol == "SSL" and settings.bootstrap_servers == tls.proxy.bootstrap
    ids = [f"tls-{i}" for i in range(20)]
    proc = worker.process()
    with proc:
        wait_ready(proc, timeout_s=60)
        run_async(produce_tls(settings, ids))
        results = run_async(read_tls(settings, "results", len(ids), timeout_s=30))
        # While it runs: every Kafka connection the worker holds goes to the TLS port.
        assert proc.proc is not None
        conns = tcp_connections(proc.proc.pid)

    assert sorted(r["id"] for r in results) == sorted(ids), f"results over TLS: {[r['id'] for r in results]}"
    assert all(r["label"] == "fresh" for r in results), results

    log = proc.log_path.read_text(errors="replace")
    assert VERIFY_FAILED not in log, log[-3000:]
    handshakes = tls.proxy.lines("handshake ok")
    carried = sum(int(m.group(1)) + int(m.group(2)) for line in tls.proxy.lines("closed")
                  if (m := re.search(r"(\d+) bytes to upstream, (\d+) bytes to client", line)))
    print(f"proxy: {len(handshakes)} TLS handshakes, {carried} bytes carried on closed connections; "
          f"worker connections (local, remote port): {conns}")
    assert handshakes and carried > 0, tls.proxy.tail()

    if conns is None:
        pytest.skip("results over TLS checked; the worker's sockets NOT checked: /proc unreadable")
    to_broker = [c for c in conns if c[1] == tls.broker.port]
    to_proxy = [c for c in conns if c[1] == tls.proxy.port]
    assert not to_broker, f"the worker connected to the plaintext port {tls.broker.port}: {to_broker}"
    assert to_proxy, f"the worker holds no connection to the TLS port {tls.proxy.port}: {conns}"
    proxy_log = tls.proxy.log_path.read_text(errors="replace")
    for local, _ in to_proxy:  # the proxy accepted each of them, and each completed a TLS handshake
        m = re.search(rf"^#(\d+) accepted from 127\.0\.0\.1:{local}$", proxy_log, re.M)
        assert m and f"#{m.group(1)} handshake ok" in proxy_log, f"connection from port {local}: {proxy_log}"


def test_a_worker_that_does_not_trust_the_certificate_refuses_to_connect(tls: TlsSetup) -> None:
    worker = tls.worker(tls.stranger.ca)
    assert worker.settings.security_protocol == "SSL" and worker.settings.ssl_cafile == tls.stranger.ca
    # The test's own clients: the worker's settings, with the CA that did sign the proxy's certificate.
    trusting = Settings.from_env(worker.env | {"STREAMS_SSL_CAFILE": str(tls.certs.ca)})
    ids = [f"untrusted-{i}" for i in range(5)]
    # Requests wait for it, so a worker that connected would classify them.
    run_async(produce_tls(trusting, ids))
    failed_before = len(tls.proxy.lines("handshake failed"))
    proc = worker.process()
    with proc:
        proc.wait_until(lambda: VERIFY_FAILED in proc.log_path.read_text(errors="replace"), timeout_s=30)
        time.sleep(3)  # room for anything it might still do after its first failure
        log = proc.log_path.read_text(errors="replace")
    refusals = [line for line in log.splitlines() if VERIFY_FAILED in line]
    print(f"{len(refusals)} refusal(s) in the worker log, the first: {refusals[0][:300]}")

    assert "certificate verify failed" in refusals[0], refusals[0]
    assert "Worker]: Ready" not in log, "a worker that cannot verify the broker must not become ready"
    # The proxy saw those handshakes end unfinished: the worker aborted them.
    assert len(tls.proxy.lines("handshake failed")) > failed_before, tls.proxy.tail()
    # The requests were there (read over TLS with the trusted CA), and none was classified.
    # Both read to the fetch high watermark: the requests read is the positive control of that reading.
    requests = run_async(read_tls(trusting, "requests", None, timeout_s=10))
    assert sorted(r["id"] for r in requests) == sorted(ids)
    assert run_async(read_tls(trusting, "results", None, timeout_s=10)) == []


def test_a_certificate_for_another_host_name_is_refused(tls: TlsSetup, caplog: pytest.LogCaptureFixture) -> None:
    """The certificate names 127.0.0.1 only: reached as "localhost", the host name check refuses it."""

    async def connect(host: str) -> None:
        env = tls.worker(tls.certs.ca).env | {"STREAMS_BROKER": f"kafka://{host}:{tls.proxy.port}"}
        settings = Settings.from_env(env)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=5000,
                                    **kafka_client_options(settings))
        try:
            await asyncio.wait_for(admin.start(), 20)
        finally:
            await admin.close()

    run_async(connect("127.0.0.1"))  # positive control: the name it was issued for
    with pytest.raises(KafkaConnectionError):
        run_async(connect("localhost"))
    assert "mismatch" in caplog.text and VERIFY_FAILED in caplog.text, caplog.text
