"""The project's calibration against netcal's and the base rate, on every benchmark data set and 20 splits.

For each labelled text data set of `bench/datasets.py` (scores of the local model, `bench/scores/`) and a
pure-noise control, over 20 seeded random fit 50% / test 50% splits, every contender is fitted on the
fit half and scored on the test half with the same metrics (`streams.calibration.metrics`):

- raw: the model's probabilities;
- project: the calibrate command's choice (`calibrators.select`: 5-fold CV NLL, one-standard-error rule,
  never worse than the base rate, the task's default candidates), refitted on the fit half;
- netcal temperature (`TemperatureScaling`), Platt (`LogisticCalibration`), isotonic (`IsotonicRegression`);
- constant: the fit half's label frequencies for every item.

The splits are random, not stratified: a stratified split would hand the constant predictor the test
half's exact base rate (top-label ECE 0 by construction), which no deployed calibrator knows.

Metrics: top-label ECE with 15 equal-width bins, NLL, multi-class Brier; means over the splits and the ECE
range, and the ECE floor: the mean ECE a perfectly calibrated model with the same confidences would show
on the same test half (`metrics.ece_floor`). The constant fills one bin, so its floor is only the
sampling noise of one rate, about sqrt(p (1 - p) / n); a predictor whose confidences spread over many
bins has a higher floor on the same items, so ECE favours the constant; both floors shrink as 1 / sqrt(n).
Inputs are clipped to [EPS, 1 - EPS] and renormalised once, for everyone, so all fit the same data.
Then the signal verdict (`streams.calibration.signal`) on all the items, and the issue 19 acceptance
checks: project ECE <= best netcal + 0.002 and <= constant + 0.005, project NLL <= best netcal NLL; and, as a
diagnostic only, each one's ECE minus its floor (the part of the ECE that binning noise does not explain)
and whether a perfectly calibrated model with the project's confidences would pass the constant check.

    .venv-bench/bin/python bench/calibration_datasets.py            # netcal needs torch: make bench-calibration
    .venv/bin/python bench/calibration_datasets.py --no-netcal      # project, raw and constant only
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python bench/calibration_datasets.py`: import bench from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import describe, usable
from bench.dataset_scores import DEFAULT_N, dataset_scores, dataset_task, scores_path
from bench.datasets import DATASETS
from streams.calibration.calibrators import select
from streams.calibration.metrics import EPS, brier, confidence_and_correct, ece, ece_floor, nll
from streams.calibration.signal import signal_report

N_SPLITS = 20
N_BINS = 15
NOISE_N = 800
Fit = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (p_fit, y_fit, p_test) -> test rows


def _rows(q: np.ndarray, k: int) -> np.ndarray:
    """netcal's output as (n, K) rows: for two labels it returns P(label 1) as a 1-D array."""
    q = np.asarray(q, dtype=np.float64)
    if k == 2 and q.ndim == 1:
        q = np.column_stack([1.0 - q, q])
    q = np.clip(q, 0.0, 1.0)
    return q / q.sum(axis=1, keepdims=True)


def netcal_fits() -> dict[str, Fit]:
    from netcal.binning import IsotonicRegression
    from netcal.scaling import LogisticCalibration, TemperatureScaling

    def fit_with(make: Callable[[], object]) -> Fit:
        def run(p_fit: np.ndarray, y_fit: np.ndarray, p_test: np.ndarray) -> np.ndarray:
            k = p_fit.shape[1]
            cal = make()
            x_fit, x_test = (p_fit[:, 1], p_test[:, 1]) if k == 2 else (p_fit, p_test)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cal.fit(x_fit, y_fit)  # type: ignore[attr-defined]
                return _rows(cal.transform(x_test), k)  # type: ignore[attr-defined]
        return run

    return {"netcal temperature": fit_with(TemperatureScaling), "netcal Platt": fit_with(LogisticCalibration),
            "netcal isotonic": fit_with(IsotonicRegression)}


def evaluate(name: str, probs: np.ndarray, y: np.ndarray, fits: dict[str, Fit]) -> dict[str, dict[str, float]]:
    """Print and return the mean test metrics per contender over N_SPLITS splits."""
    k = probs.shape[1]
    p = np.clip(probs, EPS, 1.0 - EPS)
    p = p / p.sum(axis=1, keepdims=True)
    chosen: Counter[str] = Counter()
    results: dict[str, dict[str, list[float]]] = {}

    def project(p_fit: np.ndarray, y_fit: np.ndarray, p_test: np.ndarray, seed: int) -> np.ndarray:
        sel = select(p_fit, y_fit, seed=seed)
        chosen[sel.calibrator.method] += 1
        return sel.calibrator.transform(p_test)

    for seed in range(N_SPLITS):
        order = np.random.default_rng(seed).permutation(len(y))
        fit, test = np.sort(order[: len(y) // 2]), np.sort(order[len(y) // 2:])
        p_fit, y_fit, p_test, y_test = p[fit], y[fit], p[test], y[test]
        base = np.bincount(y_fit, minlength=k) / len(y_fit)
        outputs = {"raw": p_test, "project (calibrate)": project(p_fit, y_fit, p_test, seed)}
        outputs |= {label: f(p_fit, y_fit, p_test) for label, f in fits.items()}
        outputs["constant (base rate)"] = np.tile(base, (len(test), 1))
        for label, out in outputs.items():
            conf, correct = confidence_and_correct(out, y_test)
            m = results.setdefault(label, {"ece": [], "floor": [], "nll": [], "brier": []})
            m["ece"].append(ece(conf, correct, N_BINS))
            m["floor"].append(ece_floor(conf, N_BINS, n_sim=100, seed=seed)[0])
            m["nll"].append(nll(out, y_test))
            m["brier"].append(brier(out, y_test))
    print(f"\n{N_SPLITS} splits, fit {len(fit)} / test {len(test)}; project chose: "
          + ", ".join(f"{m} {c}x" for m, c in chosen.most_common()))
    print(f"{'':24}{'ECE mean':>10}{'ECE range':>18}{'floor':>8}{'NLL':>9}{'Brier':>9}")
    means = {}
    for label, m in results.items():
        means[label] = {key: float(np.mean(v)) for key, v in m.items()}
        print(f"{label:24}{means[label]['ece']:>10.4f}    [{min(m['ece']):.4f}, {max(m['ece']):.4f}]"
              f"{means[label]['floor']:>8.4f}{means[label]['nll']:>9.4f}{means[label]['brier']:>9.4f}")
    return means


def verdicts(name: str, means: dict[str, dict[str, float]]) -> list[str]:
    """The issue's acceptance checks for one data set, one line each."""
    ours = means["project (calibrate)"]
    netcal = {k: v for k, v in means.items() if k.startswith("netcal")}
    const = means["constant (base rate)"]
    lines = []
    if netcal:
        best_ece = min(v["ece"] for v in netcal.values())
        best_nll = min(v["nll"] for v in netcal.values())
        lines.append(f"{name}: ECE {ours['ece']:.4f} <= best netcal {best_ece:.4f} + 0.002: "
                     f"{'PASS' if ours['ece'] <= best_ece + 0.002 else 'FAIL'}")
        lines.append(f"{name}: NLL {ours['nll']:.5f} <= best netcal {best_nll:.5f}: "
                     f"{'PASS' if ours['nll'] <= best_nll + 1e-12 else 'FAIL'}")
    lines.append(f"{name}: ECE {ours['ece']:.4f} <= constant {const['ece']:.4f} + 0.005: "
                 f"{'PASS' if ours['ece'] <= const['ece'] + 0.005 else 'FAIL'}")
    lines.append(f"{name}: (diagnostic, not a criterion) ECE above its floor: project "
                 f"{ours['ece'] - ours['floor']:+.4f}, constant {const['ece'] - const['floor']:+.4f}; a perfectly "
                 f"calibrated model with the project's confidences (its floor {ours['floor']:.4f}) would "
                 f"{'pass' if ours['floor'] <= const['ece'] + 0.005 else 'fail'} the constant check")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-netcal", action="store_true", help="leave netcal out (no torch needed)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), action="append", help="default: all")
    args = parser.parse_args(argv)
    fits = {} if args.no_netcal else netcal_fits()
    checks: list[str] = []
    for name in args.dataset or list(DATASETS):
        dataset = DATASETS[name]
        task = dataset_task(dataset)
        source = f"Gemma 3 270M on {name}: {dataset.source} ({scores_path(dataset, DEFAULT_N[name]).name})"
        scores = usable(dataset_scores(name), task.labels, task.min_label_mass, source)
        print(f"\n== {name} (task {task.name}) ==")
        print(describe(scores))
        print(signal_report(scores.probs, scores.y).summary(task.labels))
        checks += verdicts(name, evaluate(name, scores.probs, scores.y, fits))
    rng = np.random.default_rng(19)
    noise_p = rng.dirichlet(np.ones(2), NOISE_N)
    noise_y = rng.choice(2, NOISE_N, p=(0.7, 0.3))
    print(f"\n== pure noise (control): {NOISE_N} items, scores independent of labels, base rate 0.7 / 0.3 ==")
    print(signal_report(noise_p, noise_y).summary(("a", "b")))
    checks += verdicts("pure noise", evaluate("pure noise", noise_p, noise_y, fits))
    print("\n== acceptance (issue 19) ==")
    print("\n".join(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
