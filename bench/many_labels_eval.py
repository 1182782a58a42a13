"""Many labels on real data: option codes vs label names, fixed vs shuffled option order (issue 18).

A small model favours some listed positions, so the order of the option list is a bias of its own. This
scores one 10-topic data set with the local model (Gemma 3 270M, llama.cpp) under four conditions, each a
variant of one task file differing only in `codes` and `[task.prompt] option_order`:

- codes (letters A-J) or label names (only where the names' first tokens do not collide on the server's
  tokenizer, `streams.confidence.collisions`: otherwise first-token scoring is refused);
- options listed in a fixed order, or shuffled per request (`Task.for_request`, drawn from the item id).

Data: Debian's `fortunes` package (fetched with `apt-get download`, never installed, by `bench.datasets`),
sayings labelled by the file they come from; `PER_LABEL` items of each of `TOPICS`, texts cut to 200
characters. Scoring is the worker's own path (`streams.calibration.scoring.score`, first-token logprobs).
Raw scores are cached per condition in `bench/scores/many_labels-*.json`, so a rerun only prints.

Printed per condition over all items: accuracy, mean label mass, the listed position the top answer most often
had and the label it most often named, with their shares (1/K each without a bias); held-out ECE (15 uniform bins, top
label) of the raw probabilities and after temperature scaling fitted on a stratified half and judged on the
other half (`streams.calibration`: `stratified_split`, `TemperatureScaling`, `metrics.summary`). Temperature
scaling (one parameter), not the refit's selection: 50 fit items are too few to choose among calibrators with
more parameters at 10 labels.

    nice -n 10 .venv/bin/python bench/many_labels_eval.py            # score what is missing, then print
    .venv/bin/python bench/many_labels_eval.py --cached-only         # print from bench/scores only
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

if __package__ in (None, ""):  # run as `python bench/many_labels_eval.py`: import bench from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.datasets import _clip, _deb_package
from streams.calibration.calibrators import TemperatureScaling
from streams.calibration.fitting import examples_to_arrays, stratified_split
from streams.calibration.metrics import summary
from streams.calibration.scoring import score
from streams.classify.model_client import ModelClient
from streams.confidence.collisions import collisions
from streams.localdev.model_server import MODEL_NAME, LocalModelServer
from streams.tasks import Task, parse_tasks, shuffled_order

REPO = Path(__file__).resolve().parents[1]
SCORES = REPO / "bench" / "scores"
#: Ten files of `fortunes` whose sayings are mostly about their topic, with the description the prompt shows.
TOPICS: dict[str, str] = {
    "computers": "programs, hackers, machines",
    "drugs": "alcohol, smoking, getting high",
    "education": "school, teachers, learning",
    "food": "eating, cooking, drinking",
    "law": "lawyers, courts, crime",
    "love": "romance, lovers, the heart",
    "medicine": "doctors, illness, health",
    "politics": "government, politicians, voting",
    "science": "physics, scientists, nature",
    "sports": "games, athletes, teams",
}
PER_LABEL = 10
SEED = 18
CONDITIONS = (("codes", "fixed"), ("codes", "shuffled"), ("names", "fixed"), ("names", "shuffled"))
EXAMPLES = (("My program compiled on the first try, so I know something is wrong.", "computers"),
            ("The court found the defendant guilty of being a lawyer.", "law"),
            ("Never eat anything bigger than your head.", "food"))

TASK_TOML = """
[[task]]
name = "fortune_topic_{codes}_{order}"
labels = [{labels}]
codes = "{code_mode}"

[task.model]
base_url = "{base_url}"
name = "{model}"
top_logprobs = 20
temperature = 0.0

[task.prompt]
option_order = "{order}"
system = "Say which topic the saying is about."
template = "<<<SAYING\\n{{text}}\\nSAYING>>>\\nTopic:"
{examples}
"""


def task(codes: str, order: str, base_url: str = "http://127.0.0.1:9/v1") -> Task:
    """One condition's task, through the task-file parser (so its checks and defaults apply)."""
    labels = ", ".join(f'{{name = "{name}", description = "{desc}"}}' for name, desc in TOPICS.items())
    examples = "\n".join(f'[[task.prompt.examples]]\ntext = "{t}"\nlabel = "{lbl}"\n' for t, lbl in EXAMPLES)
    text = TASK_TOML.format(codes=codes, order=order, labels=labels, code_mode="letters" if codes == "codes" else "off",
                            base_url=base_url, model=MODEL_NAME, examples=examples)
    return next(iter(parse_tasks(text, "bench/many_labels_eval.py", {}).tasks.values()))


def rows() -> list[tuple[str, str, str]]:
    """`PER_LABEL` sayings of each topic (balanced, so accuracy is not one large file's), shuffled with `SEED`."""
    root = _deb_package("fortunes") / "usr" / "share" / "games" / "fortunes"
    rng = np.random.default_rng(SEED)
    out: list[tuple[str, str, str]] = []
    for topic in TOPICS:
        chunks = [c for c in (root / topic).read_text(encoding="utf-8", errors="replace").split("\n%\n") if c.strip()]
        for i in rng.choice(len(chunks), PER_LABEL, replace=False):
            out.append((f"fortune-{topic}-{int(i):04d}", _clip(chunks[int(i)]), topic))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def cache_path(codes: str, order: str) -> Path:
    """Keyed on what decides the scores: the task's labels, codes and prompt, and the items."""
    t = task(codes, order)
    what = repr((t.labels, t.codes, t.prompt, t.model.name, t.model.top_logprobs, PER_LABEL, SEED))
    return SCORES / f"many_labels-{codes}-{order}-{hashlib.sha256(what.encode()).hexdigest()[:10]}.json"


def score_missing(concurrency: int) -> None:
    """Scores every condition without a cache file, one condition at a time (each written when done)."""
    todo = [(c, o) for c, o in CONDITIONS if not cache_path(c, o).exists()]
    if not todo:
        return
    items = rows()
    with LocalModelServer(parallel=concurrency) as server:
        env_url = os.environ.get("MODEL_BASE_URL", server.base_url)
        for codes, order in todo:
            t = task(codes, order, env_url)
            groups, how = collisions(t)
            if groups:  # names that share a first token cannot be scored by first tokens: leave the condition out
                print(f"{codes}/{order}: skipped, answers share a first token ({how}): {groups}", file=sys.stderr)
                continue

            async def score_items(t: Task = t) -> list[dict[str, Any]]:
                async with ModelClient(120, 2) as client:
                    return await score(t, items, concurrency, client)

            scored = asyncio.run(score_items())
            path = cache_path(codes, order)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(orjson.dumps([_compact(s, t.labels) for s in scored]))


def _compact(record: dict[str, Any], labels: tuple[str, ...]) -> dict[str, Any]:
    """A cache row: rounded probabilities keep the file small (6 decimals are far below any metric's noise)."""
    raw = record.get("raw_probabilities")
    out = {"id": record["id"], "label": record["label"], "label_mass": round(record.get("label_mass", 0.0), 6)}
    if raw is not None:
        out["raw_probabilities"] = {lbl: round(raw[lbl], 6) for lbl in labels}
    else:
        out["error"] = record.get("error")
    return out


def _modal(values: list[int]) -> tuple[int, float]:
    """The most frequent value and its share."""
    counts = np.bincount(values)
    return int(counts.argmax()), float(counts.max() / len(values))


def evaluate(t: Task, records: list[dict[str, Any]]) -> dict[str, Any]:
    """On every scored item: accuracy, label mass, the listed position the top answer most often had and the
    label it most often named, with their shares (1/K each without a bias; with a fixed list the two are the
    same bias); held-out ECE raw and calibrated on a stratified half."""
    scored = [r for r in records if "raw_probabilities" in r]
    probs, y = examples_to_arrays(scored, t.labels)
    top = probs.argmax(axis=1)
    k = len(t.labels)
    shuffled = t.prompt.option_order == "shuffled"
    orders = [shuffled_order(r["id"], k) if shuffled else tuple(range(k)) for r in scored]
    position, position_share = _modal([order.index(int(label)) for order, label in zip(orders, top, strict=True)])
    label, label_share = _modal([int(label) for label in top])
    fit, held = stratified_split(y, 0.5, SEED)
    calibrated = TemperatureScaling().fit(probs[fit], y[fit]).transform(probs[held])
    before = summary(probs[held], y[held], n_boot=200, seed=SEED)
    after = summary(calibrated, y[held], n_boot=200, seed=SEED)
    low, high = after["ece_interval"]
    return {"n": len(y), "accuracy": float(np.mean(top == y)),
            "label_mass": float(np.mean([r["label_mass"] for r in scored])),
            "position": f"{position + 1}: {position_share:.2f}", "label": f"{t.labels[label]}: {label_share:.2f}",
            "ece_raw": before["ece"], "ece_calibrated": after["ece"],
            "ece_interval": f"{low:.2f}-{high:.2f}"}


def table() -> str:
    lines = [(f"{len(TOPICS)} topics x {PER_LABEL} sayings (Debian fortunes), Gemma 3 270M, first-token logprobs; "
              "ECE held out (half), 15 bins"),
             ("| answers | order | n | accuracy | label mass | top answer's modal position | modal label | ECE raw "
              "| ECE calibrated (95%) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for codes, order in CONDITIONS:
        path = cache_path(codes, order)
        if not path.exists():
            lines.append(f"| {codes} | {order} | not scored | | | | | | |")
            continue
        m = evaluate(task(codes, order), orjson.loads(path.read_bytes()))
        lines.append(f"| {codes} | {order} | {m['n']} | {m['accuracy']:.3f} | {m['label_mass']:.3f} | "
                     f"{m['position']} | {m['label']} | {m['ece_raw']:.3f} | "
                     f"{m['ece_calibrated']:.3f} ({m['ece_interval']}) |")
    lines.append(f"chance accuracy, and either modal share without a bias: {1 / len(TOPICS):.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cached-only", action="store_true", help="print from bench/scores without scoring")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    if not args.cached_only:
        score_missing(args.concurrency)
    print(table())
