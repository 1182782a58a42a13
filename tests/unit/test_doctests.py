"""The Examples sections of the estimators' docstrings run, and stay there.

Every module below must run at least one example without a failure, so a module whose examples
vanish fails too. `test_every_module_with_examples_is_listed` finds modules under streams/ that have
examples but are missing here (by reading their source: importing every module would start the
Faust app).
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

MODULES = [
    "streams.calibration.calibrators.core",
    "streams.calibration.calibrators.constant",
    "streams.calibration.calibrators.platt",
    "streams.calibration.calibrators.beta",
    "streams.calibration.calibrators.dirichlet",
    "streams.calibration.calibrators.selection",
    "streams.calibration.signal",
    "streams.drift.summary",
    "streams.drift.divergence",
    "streams.drift.homogeneity",
    "streams.drift.cusum",
    "streams.drift.sequential",
    "streams.drift.episodes",
    "streams.drift.canary_stats",
    "streams.classify.stall",
    "streams.classify.answer_cache",
    "streams.classify.concurrency",
    "streams.classify.pacing",
    "streams.localdev.serving_limits",
]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = re.compile(r"^\s*>>> ", re.MULTILINE)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} failed (see captured stdout)"
    assert result.attempted > 0, f"{name} has no examples left"


def test_every_module_with_examples_is_listed() -> None:
    found = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / "streams").rglob("*.py")
        if EXAMPLE.search(path.read_text(encoding="utf-8"))
    }
    assert found <= set(MODULES), f"add to MODULES: {sorted(found - set(MODULES))}"
