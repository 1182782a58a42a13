"""CPU time per message of the pure statistics path. Prints figures; asserts nothing.

    python bench/stats_path.py [--n 100000] [--repeat 7]

The statistics path is what the worker does per message between the model's reply and the record:
`label_scores` (top-k logprobs -> label probabilities, label mass), the task's calibrator
`transform`, `normalised_entropy`, and the drift accumulator's `observe` (`DriftAccumulator`,
`WindowSummary.add`). `route` is timed alongside, since it runs on every message too.

CPU time (`time.process_time`) over `--n` messages, `--repeat` times; the minimum is the figure least
disturbed by other work on a shared machine, and the median is printed beside it. Two replies: the
synthetic model's (4 top-k tokens, as in the throughput benchmark) and a 20-token reply like a real
model's with `top_logprobs = 20` (labels, their space-marked variants and filler tokens). Calibrators
are fitted on 2000 synthetic rows, as a worker would receive them from the calibrators topic.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streams.calibration.calibrators import METHODS  # noqa: E402
from streams.classify.probabilities import LabelMatcher, label_scores, normalised_entropy  # noqa: E402
from streams.classify.routing import route  # noqa: E402
from streams.drift.monitor import DriftAccumulator  # noqa: E402
from streams.localdev.synthetic_model import SyntheticConfig  # noqa: E402
from streams.tasks import Task, parse_tasks  # noqa: E402

TASK = """
[[task]]
name = "t"
labels = ["fresh", "rotten"]
[task.model]
base_url = "http://127.0.0.1:1/v1"
name = "m"
"""


def replies() -> dict[str, list[tuple[str, float]]]:
    synthetic = [(t, math.log(p)) for t, p in SyntheticConfig().distribution()]
    tokens = ["fresh", "rotten", " fresh", " rotten", "▁fresh", "Fresh", "ro", "the", "<", "\n", "It",
              "A", "fre", " R", "This", "movie", "I", "**", "Answer", ":"]
    weights = np.array([0.45, 0.2, 0.08, 0.05, 0.04, 0.03, 0.02] + [0.13 / 13] * 13)
    real = [(t, float(math.log(w))) for t, w in zip(tokens, weights, strict=True)]
    return {"synthetic reply (4 tokens)": synthetic, "20-token reply": real}


def per_message_us(fn: Callable[[int], object], n: int, repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn(n)
        runs.append((time.process_time() - t0) / n * 1e6)
    return min(runs), statistics.median(runs)


def stage_parts(top: list[tuple[str, float]], matcher: LabelMatcher, cal: Any, task: Task,
                acc: DriftAccumulator) -> dict[str, Callable[[int], object]]:
    """Each stage of the path alone, on one reply, as a function of the number of messages."""
    s = label_scores(top, matcher)
    c = cal.transform(s.probabilities)

    def observe(n: int) -> None:
        for _ in range(n):
            acc.observe(task, 0, 0.7, 0.5, 0.9, -0.3)

    return {
        "label_scores": lambda n: [label_scores(top, matcher) for _ in range(n)],
        "transform (vector)": lambda n: [cal.transform(s.probabilities) for _ in range(n)],
        "normalised_entropy": lambda n: [normalised_entropy(c) for _ in range(n)],
        "route": lambda n: [route(c, s.label_mass, 0.8, 0.5) for _ in range(n)],
        "observe": observe,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    tasks = parse_tasks(TASK, "bench", env={})
    task = tasks.tasks["t"]
    matcher = LabelMatcher(task.labels)
    rng = np.random.default_rng(0)
    fit_p = rng.dirichlet([2.0, 2.0], 2000)
    fit_y = (rng.random(2000) < fit_p[:, 1]).astype(np.intp)
    calibrators = {name: cls().fit(fit_p, fit_y) for name, cls in METHODS.items()}

    print(f"== statistics path, CPU time per message (min / median of {args.repeat} runs of {args.n}) ==")
    for reply_name, top in replies().items():
        print(f"  {reply_name}:")
        for name, cal in calibrators.items():
            acc = DriftAccumulator(tasks)

            def stats(n: int, top: list[tuple[str, float]] = top, cal: Any = cal, acc: DriftAccumulator = acc) -> None:
                for _ in range(n):
                    s = label_scores(top, matcher)
                    c = cal.transform(s.probabilities)
                    e = normalised_entropy(c)
                    i = 0 if c[0] >= c[1] else 1
                    acc.observe(task, i, float(c[i]), e, s.label_mass, -0.3)

            def with_route(n: int, top: list[tuple[str, float]] = top, cal: Any = cal,
                           acc: DriftAccumulator = acc) -> None:
                for _ in range(n):
                    s = label_scores(top, matcher)
                    c = cal.transform(s.probabilities)
                    e = normalised_entropy(c)
                    r = route(c, s.label_mass, 0.8, 0.5)
                    acc.observe(task, r.label_index, float(c[r.label_index]), e, s.label_mass, -0.3)

            lo, med = per_message_us(stats, args.n, args.repeat)
            rlo, rmed = per_message_us(with_route, args.n, args.repeat)
            print(f"    calibrator {name:12s} probabilities + calibration + drift update {lo:5.1f} us "
                  f"(median {med:5.1f});  with routing {rlo:5.1f} us (median {rmed:5.1f})")
        parts = stage_parts(top, matcher, calibrators["vector"], task, DriftAccumulator(tasks))
        print("    parts: " + ", ".join(f"{k} {per_message_us(f, args.n, 3)[0]:.1f} us" for k, f in parts.items()))


if __name__ == "__main__":
    main()
