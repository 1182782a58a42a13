"""One composition root: importing the package has no side effects, and `build_worker` wires every agent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.worker import build_worker

REPO = Path(__file__).resolve().parents[2]

IMPORT_ALL = """
import importlib, pkgutil, sys
import streams
before = set(sys.modules)
import streams.app
agents = [m for m in set(sys.modules) - before if m.startswith("streams.") and m.endswith(".agents")]
assert not agents, f"streams.app imports {agents}"
for info in pkgutil.walk_packages(streams.__path__, "streams."):
    importlib.import_module(info.name)
print("imported", len([m for m in sys.modules if m.startswith("streams.")]))
"""


def test_every_module_imports_without_reading_the_environment() -> None:
    """A broken environment and a missing task file: importing anything still works (nothing is read at
    import), and `streams.app` pulls in no agents module."""
    env = {"PATH": "/usr/bin:/bin", "STREAMS_BROKER": "not a broker", "STREAMS_TASKS_FILE": "/nonexistent.toml",
           "STREAMS_PARTITIONS": "-3"}
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 50


def test_build_worker_registers_every_agent_and_preloads_state(tmp_path: Path) -> None:
    env = {"STREAMS_TASKS_FILE": str(REPO / "config" / "tasks.toml"), "STREAMS_DATA_DIR": str(tmp_path)}
    app = build_worker(env)
    assert sorted(app.agents) == ["classify", "drift", "feedback", "forward-alerts", "index-review", "refit"]
    assert [what for what, _ in app.preload] == ["calibrator", "drift baseline"]
    assert {"review-items", "drift-state"} <= set(app.tables)


def test_build_worker_names_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STREAMS_PARTITIONS"):
        build_worker({"STREAMS_PARTITIONS": "0", "STREAMS_DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="task file not found"):
        build_worker({"STREAMS_TASKS_FILE": str(tmp_path / "none.toml"), "STREAMS_DATA_DIR": str(tmp_path)})
