"""Our temperature scaling and isotonic calibrator against netcal's, on the same data and the same metric.

netcal (Küppers et al.) is the reference implementation many papers use; if ours disagreed with it
on test ECE, one of the two would be wrong. For a binary task netcal takes the positive class's
probability as a 1-D array with labels in {0, 1} (1 = positive) and returns the calibrated positive
probability; here the positive class is label index 1, so its output is turned back into rows
[1 - q, q] and BOTH are scored with our `metrics.ece` (15 equal-width bins on the top-label
confidence), so the metric is identical.

Inputs are clipped to [EPS, 1 - EPS] once, for both: our calibrators floor at EPS before taking logs,
netcal at float64 machine epsilon, so an exact 0 or 1 would otherwise become log-odds of ±13.8 for
us and ±36 for netcal, and the two would not be fitting the same data.

Fit times are medians over repeated fits after one warm-up fit each; netcal is imported (and torch
with it) before any clock starts. netcal is a benchmark-only dependency: run this in .venv-bench
(`make bench-calibration`).

    python bench/netcal_compare.py              # cached RT scores + a 20000-item synthetic set
    python bench/netcal_compare.py --synthetic  # synthetic stand-in for the RT scores too
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python bench/netcal_compare.py`: import bench and streams from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import HEADLINE_SEED, describe, heldout_split, load_scores, synthetic_probs
from streams.calibration.calibrators import IsotonicCalibrator, TemperatureScaling
from streams.calibration.metrics import EPS, confidence_and_correct, ece, nll

try:
    from netcal.binning import IsotonicRegression as NetcalIsotonic
    from netcal.scaling import TemperatureScaling as NetcalTemperature
except ImportError:
    raise SystemExit("netcal is not installed here: run `make bench-calibration` (it builds .venv-bench), "
                     "or .venv-bench/bin/python bench/netcal_compare.py") from None

N_BINS = 15
REPEATS = 20
SYNTHETIC_N = 20_000
SYNTHETIC_T = 2.0


def median_seconds(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median wall time of fn() over `repeats` calls, after one untimed warm-up call (lazy setup)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def as_rows(q: np.ndarray) -> np.ndarray:
    """netcal's 1-D positive-class probabilities as (n, 2) rows [1 - q, q]."""
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    return np.column_stack([1.0 - q, q])


def compare(name: str, probs: np.ndarray, y: np.ndarray, fit: np.ndarray, test: np.ndarray) -> None:
    """Fit each calibrator on `fit`, score on `test` with our metrics, time the fits."""
    p = as_rows(np.clip(probs[:, 1], EPS, 1.0 - EPS))
    p_fit, y_fit, p_test, y_test = p[fit], y[fit], p[test], y[test]
    x_fit, x_test = p_fit[:, 1], p_test[:, 1]  # netcal's binary input: P(label index 1)

    ours_t = lambda: TemperatureScaling().fit(p_fit, y_fit)  # noqa: E731
    theirs_t = lambda: NetcalTemperature().fit(x_fit, y_fit)  # noqa: E731
    ours_i = lambda: IsotonicCalibrator().fit(p_fit, y_fit)  # noqa: E731
    theirs_i = lambda: NetcalIsotonic().fit(x_fit, y_fit)  # noqa: E731

    t_ours, t_theirs = ours_t(), theirs_t()
    outputs = {
        "raw": p_test,
        "temperature (ours)": t_ours.transform(p_test),
        "temperature (netcal)": as_rows(t_theirs.transform(x_test)),
        "isotonic (ours)": ours_i().transform(p_test),
        "isotonic (netcal)": as_rows(theirs_i().transform(x_test)),
    }
    print(f"\n== {name}: fit {len(fit)}, test {len(test)} ==")
    netcal_t = 1.0 / float(np.ravel(t_theirs.temperature)[0])  # netcal multiplies the log-odds by a weight 1/T
    print(f"fitted temperature: ours {t_ours.temperature_:.4f}, netcal {netcal_t:.4f}")
    print(f"{'':24}{'test ECE':>10}{'test NLL':>10}")
    for label, out in outputs.items():
        conf, correct = confidence_and_correct(out, y_test)
        print(f"{label:24}{ece(conf, correct, N_BINS):>10.4f}{nll(out, y_test):>10.4f}")

    print(f"fit time, median of {REPEATS} after a warm-up:")
    for label, ours, theirs in (("temperature", ours_t, theirs_t), ("isotonic", ours_i, theirs_i)):
        s_ours, s_theirs = median_seconds(ours), median_seconds(theirs)
        print(f"  {label:12} ours {s_ours * 1e3:8.2f} ms   netcal {s_theirs * 1e3:8.2f} ms   "
              f"netcal / ours = {s_theirs / s_ours:.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true", help="synthetic stand-in for the RT scores")
    args = parser.parse_args(argv)

    scores = load_scores(args.synthetic)
    print(describe(scores))
    fit, test = heldout_split(scores.y, HEADLINE_SEED)
    compare(f"{scores.source} (split seed {HEADLINE_SEED}, as in calibration_eval.py)", scores.probs, scores.y,
            fit, test)

    probs, y = synthetic_probs(SYNTHETIC_N, SYNTHETIC_T, seed=11)
    fit, test = heldout_split(y, HEADLINE_SEED)
    compare(f"synthetic, {SYNTHETIC_N} items, true temperature {SYNTHETIC_T}", probs, y, fit, test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
