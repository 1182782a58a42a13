"""`python -m streams ...` (console script `llm-classify`).

Local commands (`demo`, `calibrate`, `drift`, `probe`, `broker`, `serve-model`, `synthetic-model`) run without the
Faust app; everything else (`worker`, ...) is Faust's own command line on the configured app.
"""

from __future__ import annotations

import importlib
import sys

from streams.errors import ConfigError

LOCAL_COMMANDS = {
    "demo": "streams.localdev.demo",
    "calibrate": "streams.calibration.commands",
    "drift": "streams.drift.commands",
    "broker": "streams.localdev.broker",
    "serve-model": "streams.localdev.model_server",
    "synthetic-model": "streams.localdev.synthetic_model",
    "fault-proxy": "streams.localdev.fault_proxy",
    "review": "streams.ops.review_cli",
    "screenshot": "streams.ops.screenshot",
    "probe": "streams.confidence.probe",
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in LOCAL_COMMANDS:
        module = importlib.import_module(LOCAL_COMMANDS[sys.argv[1]])
        sys.exit(module.main(sys.argv[2:]))
    from streams.worker import build_worker

    try:
        app = build_worker()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    app.main()


if __name__ == "__main__":
    main()
