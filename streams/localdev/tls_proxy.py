"""A TLS-terminating TCP proxy for local runs and tests, and a throwaway CA to sign its certificate.

The embedded broker (Tansu, memory storage) speaks plaintext. Put this proxy in front of it and have the
broker advertise the proxy's address (`EmbeddedBroker(advertised_port=...)`): every connection a Kafka
client opens, the bootstrap one and those it opens after reading metadata, then goes over TLS, so the
worker's TLS settings (`STREAMS_SECURITY_PROTOCOL=SSL`, `STREAMS_SSL_CAFILE`) are tested end to end.

    python -m streams.localdev.tls_proxy --listen 127.0.0.1:9093 --upstream 127.0.0.1:9092 \\
        --cert server.pem --key server.key

It logs one line per connection (accepted, handshake ok or failed with the reason, closed with the bytes
carried each way), so a test can count what went through it and see why a handshake failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import ssl
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from streams.localdev.processes import ChildProcess, free_port

#: The proxy's log line once it accepts connections (TlsProxy.start waits for it).
LISTENING = "tls proxy listening on"


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _say(line: str) -> None:
    print(line, flush=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, carried: list[int], i: int) -> None:
    """Copy until EOF or error; `carried[i]` counts the bytes."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            carried[i] += len(data)
    except OSError:  # a reset, or a TLS error after the handshake: the connection is over either way
        pass
    finally:
        writer.close()


async def _handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                  context: ssl.SSLContext, upstream: tuple[str, int], number: int) -> None:
    peer = client_writer.get_extra_info("peername")
    _say(f"#{number} accepted from {peer[0]}:{peer[1]}")
    try:
        # The handshake is done here rather than by start_server(ssl=...), which drops its failures silently.
        await client_writer.start_tls(context, ssl_handshake_timeout=10)
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        _say(f"#{number} handshake failed: {exc!r}")
        client_writer.close()
        return
    _say(f"#{number} handshake ok: {client_writer.get_extra_info('ssl_object').version()}")
    try:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
    except OSError as exc:
        _say(f"#{number} upstream {upstream[0]}:{upstream[1]} unreachable: {exc!r}")
        client_writer.close()
        return
    carried = [0, 0]  # client -> upstream, upstream -> client
    await asyncio.gather(_pipe(client_reader, up_writer, carried, 0), _pipe(up_reader, client_writer, carried, 1))
    _say(f"#{number} closed: {carried[0]} bytes to upstream, {carried[1]} bytes to client")


async def serve(listen: tuple[str, int], upstream: tuple[str, int], cert: Path, key: Path) -> None:
    """Accept TLS on `listen`, forward the plaintext to `upstream`, until cancelled."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    numbers = itertools.count(1)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(reader, writer, context, upstream, next(numbers))

    server = await asyncio.start_server(on_connect, *listen)
    _say(f"{LISTENING} {listen[0]}:{listen[1]}, forwarding to {upstream[0]}:{upstream[1]}")
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- certificates for tests


@dataclass(frozen=True)
class ThrowawayCertificates:
    """A CA and a server certificate it signed (valid for `hosts`), as PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_throwaway_certificates(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                           name: str = "streams test") -> ThrowawayCertificates:
    """A throwaway CA and a server certificate for `hosts`, made with the openssl CLI (valid for 2 days).

    Each call makes a new CA, so a second call gives a CA that did not sign the first call's certificate.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / f for f in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                          "server.pem"))
    ext = directory / "server.ext"
    sans = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    ext.write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for argv in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", f"/CN={name} CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={hosts[0]}"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
         "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True, timeout=30)
    return ThrowawayCertificates(ca, cert, key)


class TlsProxy(ChildProcess):
    """`python -m streams.localdev.tls_proxy` as a child process on a loopback port of its own."""

    def __init__(self, upstream: str, cert: Path, key: Path, port: int | None = None,
                 log_path: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        log_path = log_path or Path(tempfile.mkdtemp(prefix="tls-proxy-")) / "tls-proxy.log"
        super().__init__("tls proxy", [sys.executable, "-m", "streams.localdev.tls_proxy",
                                       "--listen", self.bootstrap, "--upstream", upstream,
                                       "--cert", str(cert), "--key", str(key)], log_path)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TlsProxy:
        super().start()
        # Not by connecting: a probe would show up in the log as a failed handshake.
        self.wait_until(lambda: LISTENING in self.log_path.read_text(errors="replace"), timeout_s=30)
        return self

    def lines(self, what: str) -> list[str]:
        """Log lines containing `what` ("handshake ok", "handshake failed", "closed")."""
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if what in line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.localdev.tls_proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=_hostport, required=True, help="HOST:PORT to accept TLS on")
    parser.add_argument("--upstream", type=_hostport, required=True, help="HOST:PORT of the plaintext server")
    parser.add_argument("--cert", type=Path, required=True, help="server certificate (PEM, chain first)")
    parser.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.upstream, args.cert, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
