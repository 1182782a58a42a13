"""`python -m streams worker` refuses a bad configuration before touching Kafka, and says what to fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _worker(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams", "worker"], env=os.environ | env,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_task_file_names_every_field_to_fix(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[[task]]\nname = "t"\nlabels = ["only_one"]\n[task.model]\nbase_url = "ftp://x"\n'
                     '[task.routing]\nreview_threshold = 2\n')
    proc = _worker({"STREAMS_TASKS_FILE": str(tasks), "STREAMS_BROKER": "kafka://127.0.0.1:1"})
    assert proc.returncode == 2, proc.stderr
    for field in ("task[0] (t).labels", "task[0] (t).model.base_url", "task[0] (t).model.name",
                  "task[0] (t).routing.review_threshold"):
        assert field in proc.stderr, f"{field} missing from:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr


def test_bad_environment_names_the_variable(tmp_path: Path) -> None:
    proc = _worker({"STREAMS_PARTITIONS": "many", "STREAMS_BROKER": "localhost:9092"})
    assert proc.returncode == 2
    assert "STREAMS_PARTITIONS='many'" in proc.stderr and "STREAMS_BROKER='localhost:9092'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_api_key_variable_is_reported_without_a_value(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[[task]]\nname = "t"\nlabels = ["a", "b"]\n[task.model]\nbase_url = "https://api.example"\n'
                     'name = "m"\napi_key_env = "MY_SECRET_KEY_FOR_TEST"\n')
    env = {"STREAMS_TASKS_FILE": str(tasks)}
    proc = _worker(env)
    assert proc.returncode == 2 and "MY_SECRET_KEY_FOR_TEST is not set" in proc.stderr
