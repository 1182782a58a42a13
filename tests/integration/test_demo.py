"""The README's run command, small: everything starts, every output is accounted for, a summary prints."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.integration.harness import REPO


def test_demo_runs_end_to_end_and_prints_a_summary() -> None:
    proc = subprocess.run([sys.executable, "-m", "streams", "demo", "--count", "8",
                           "--calibrate", "40"], cwd=REPO,
                          capture_output=True, text=True, timeout=400, env=os.environ.copy())
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "outputs received     13 for 13 requests, none missing" in out
    assert "all outputs accounted for: yes" in out
    assert "(model_error)" not in out, "items went to review because the model calls failed:\n" + out[-3000:]
    assert "published calibrator movie_sentiment." in out and "ECE (15 equal bins)" in out
    for line in ("throughput", "review rate", "accuracy, all", "dead letters         5"):
        assert line in out, f"{line!r} missing from summary:\n{out[-2000:]}"
