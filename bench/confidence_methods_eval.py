"""Confidence methods on Rotten Tomatoes with the local model (Gemma 3 270M through llama.cpp).

For each method: accuracy, ECE before and after calibration (held-out half; the calibrator is chosen
by cross-validated NLL on the other half), AUROC of the confidence for right vs wrong answers, and
model requests (and samples) per item. For adaptive self-consistency: the samples saved against a
fixed 20-sample vote and the agreement with that vote's label.

Every item's 20 samples are drawn ONCE per temperature (5 requests with n=4, seeds fixed by the item)
and cached; the adaptive rule is run on prefixes of that same sequence, so its cost is its stopping
time and its agreement with the full 20-vote majority is measured exactly, not simulated. The
stopping rules' parameters are the defaults of `SelfConsistencyPolicy`, fixed before this script was
run; the one non-default, the low temperature, was picked on a separate split (`--design`, which
only replays first-token scores of other snippets, never these items).

    python bench/confidence_methods_eval.py                  # 200 snippets; model calls cached
    python bench/confidence_methods_eval.py --design         # the temperature choice, on snippets 2000-2599

Prints figures only; nothing here asserts. Results also go to bench/out/confidence_methods.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, RT_N, RT_SEED, movie_task, split
from streams.calibration.calibrators import select_calibrator
from streams.calibration.metrics import confidence_and_correct, ece
from streams.confidence import self_consistency as sc
from streams.confidence.answers import answer_label
from streams.confidence.ensemble import pool
from streams.tasks import Task

CACHE = OUT / "confidence_cache"
BUDGET = 20
PER_REQUEST = 4  # llama.cpp honours n up to its parallel slots (4 here)
LOW_T = 0.1
TEMPERATURES = (0.7, LOW_T)  # 0.7: the method's default, fixed a priori; 0.1: chosen by --design
SINGLE_METHODS = ("first_token_logprobs", "sequence_scores", "verbalized")
CAL_METHODS = ("identity", "temperature", "vector", "isotonic", "histogram", "label_bias")
RULES = ("posterior", "predictive", "confidence_sequence")


def _key(task: Task, extra: Any) -> str:
    return hashlib.sha256(repr((task.model.name, task.labels, task.prompt, extra)).encode()).hexdigest()[:10]


def _load(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            rec = orjson.loads(line)
            out[rec["id"]] = rec
    return out


async def _collect(task: Task, rows: list[tuple[str, str, str]], base_url: str, concurrency: int) -> None:
    """Fill the caches: single-call methods, and 20 samples per item per temperature."""
    from streams.calibration.scoring import Progress
    from streams.classify.model_client import ModelClient
    from streams.confidence.methods import MethodRunner, sample_seed
    from streams.errors import ModelError

    task = dataclasses.replace(task, model=dataclasses.replace(task.model, base_url=base_url))
    client = ModelClient(120, 2)
    runner = MethodRunner(client)
    slots = asyncio.Semaphore(concurrency)
    CACHE.mkdir(parents=True, exist_ok=True)
    jobs: list[Any] = []
    for method in SINGLE_METHODS:
        path = CACHE / f"{method}-{_key(task, method)}.jsonl"
        done = _load(path)
        jobs += [(method, None, path, r) for r in rows if r[0] not in done]
    pol = task.confidence.self_consistency
    paths = {t: CACHE / f"samples-T{t}-{_key(task, ('sc', t, pol.max_tokens, BUDGET))}.jsonl" for t in TEMPERATURES}
    done_t = {t: _load(path) for t, path in paths.items()}
    for r in rows:  # interleaved, so a run cut short still has both temperatures on the same items
        jobs += [("samples", t, paths[t], r) for t in TEMPERATURES if r[0] not in done_t[t]]
    if not jobs:
        return
    progress = Progress(len(jobs), "model calls for the evaluation (cached as they finish)")
    files: dict[Path, IO[bytes]] = {}

    async def one(method: str, temp: float | None, path: Path, row: tuple[str, str, str]) -> None:
        rid, text, label = row
        async with slots:
            rec: dict[str, Any] = {"id": rid, "label": label}
            started = time.perf_counter()
            try:
                if method == "samples":
                    msgs = task.prompt.messages(text)
                    answers: list[str] = []
                    reqs = 0
                    for k in range(BUDGET // PER_REQUEST):
                        s = await client.chat(task.model, msgs, max_tokens=pol.max_tokens, temperature=temp or 0.0,
                                              n=PER_REQUEST, seed=sample_seed(rid, k))
                        answers += list(s.texts[:PER_REQUEST])
                        reqs += 1
                    rec |= {"answers": answers, "votes": [answer_label(a, task.labels) for a in answers],
                            "requests": reqs}
                else:
                    r = await runner.run(task, method, text, rid)
                    rec |= {"requests": r.requests, "label_mass": r.label_mass,
                            "raw": None if r.raw is None else r.raw.tolist(), "reason": r.reason}
            except ModelError as exc:
                rec["error"] = f"{exc.kind}: {exc.message}"
            rec["seconds"] = round(time.perf_counter() - started, 3)
        f = files.get(path) or files.setdefault(path, path.open("ab"))
        f.write(orjson.dumps(rec) + b"\n")
        f.flush()
        progress.step()

    try:
        await asyncio.gather(*(one(*j) for j in jobs))
    finally:
        for f in files.values():
            f.close()
        await client.close()


def auroc(conf: np.ndarray, correct: np.ndarray) -> float:
    """P(confidence of a right answer > that of a wrong one), ties half (Mann-Whitney U / n1 n0)."""
    from scipy.stats import mannwhitneyu

    correct = np.asarray(correct, dtype=bool)
    pos, neg = conf[correct], conf[~correct]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def evaluate(name: str, probs: np.ndarray, y: np.ndarray, ok: np.ndarray, requests: float, samples: float | None,
             seed: int = 0, test_only: bool = False) -> dict[str, Any]:
    """Accuracy/AUROC on every scored item (on the held-out half only with `test_only`, for scores that
    were fitted on the other half); ECE before/after on the held-out half."""
    p, yy = probs[ok], y[ok]
    fit, test = split(yy, (0.5, 0.5), seed)
    conf, correct = confidence_and_correct(p[test], yy[test]) if test_only else confidence_and_correct(p, yy)
    cal, _ = select_calibrator(p[fit], yy[fit], CAL_METHODS)
    c_raw, r_raw = confidence_and_correct(p[test], yy[test])
    c_cal, r_cal = confidence_and_correct(cal.transform(p[test]), yy[test])
    return {"method": name, "scored": int(len(test) if test_only else ok.sum()), "items": len(y),
            "accuracy": float(np.mean(correct)),
            "ece_raw": ece(c_raw, r_raw), "ece_calibrated": ece(c_cal, r_cal), "calibrator": cal.method,
            "auroc": auroc(conf, correct),
            "requests_per_item": requests, "samples_per_item": samples}


def fixed_leader(votes: list[int], k: int) -> int:
    tally = sc.VoteTally(k)
    tally.extend(votes)
    return sc.summary(tally.counts).leader


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=101, help="shuffle of the snippets (items 0..n-1 are used)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--design", action="store_true", help="print the temperature choice on snippets 2000-2599")
    parser.add_argument("--base-url", help="use this running model server instead of starting one")
    parser.add_argument("--available", action="store_true",
                        help="no model calls: evaluate the items whose every cache entry is already there")
    args = parser.parse_args(argv)
    task = movie_task()
    if args.design:
        return design(task)
    from streams.localdev.sample_data import load_reviews

    reviews = load_reviews(seed=args.seed)[: args.n]
    rows = [(f"rt-eval-{i:05d}", ex.text, ex.label) for i, ex in enumerate(reviews)]
    ids = [r[0] for r in rows]
    all_rows = list(rows)
    if args.available:
        have = set(ids)
        for m in (*SINGLE_METHODS, *TEMPERATURES):
            have &= set(_load_for(task, m, ids))
        rows = [r for r in rows if r[0] in have]
        ids = [r[0] for r in rows]
        print(f"--available: {len(ids)} of {args.n} items have every method cached", file=sys.stderr)
    need = any(len(_load_for(task, m, ids)) < len(ids) for m in (*SINGLE_METHODS, *TEMPERATURES))
    if need and args.base_url:
        asyncio.run(_collect(task, rows, args.base_url, args.concurrency))
    elif need:
        from streams.localdev.model_server import LocalModelServer

        with LocalModelServer(parallel=PER_REQUEST) as server:
            asyncio.run(_collect(task, rows, server.base_url, args.concurrency))
    index = {label: i for i, label in enumerate(task.labels)}
    y = np.array([index[r[2]] for r in rows])
    k = len(task.labels)
    results: list[dict[str, Any]] = []
    raws: dict[str, np.ndarray] = {}
    oks: dict[str, np.ndarray] = {}
    reqs: dict[str, np.ndarray] = {}
    for method in SINGLE_METHODS:
        recs = _load_for(task, method, ids)
        ok = np.array([recs[i].get("raw") is not None for i in ids])
        probs = np.array([recs[i]["raw"] if recs[i].get("raw") is not None else [1.0 / k] * k for i in ids])
        requests_per_item = np.array([recs[i].get("requests", 1) for i in ids], dtype=float)
        raws[method], oks[method], reqs[method] = probs, ok, requests_per_item
        results.append(evaluate(method, probs, y, ok, float(requests_per_item.mean()), None))
    pol = task.confidence.self_consistency
    adaptive_rows = []
    for t in TEMPERATURES:
        recs = _load_for(task, t, ids)
        ok_all = np.array(["votes" in recs[i] and len(recs[i]["votes"]) >= BUDGET for i in ids])
        votes = [recs[i]["votes"][:BUDGET] if ok_all[j] else [] for j, i in enumerate(ids)]
        # fixed 20-sample vote: smoothed vote shares of all 20
        fixed_p, fixed_lead, fixed_ok = [], [], []
        for v in votes:
            tally = sc.VoteTally(k)
            tally.extend(v)
            s = sc.summary(tally.counts, pol.prior)
            fixed_p.append(s.probabilities if s.probabilities is not None else np.full(k, 1.0 / k))
            fixed_lead.append(s.leader)
            fixed_ok.append(s.probabilities is not None and not s.ambiguous)
        fixed_ok_a = np.array(fixed_ok) & ok_all
        results.append(evaluate(f"self_consistency fixed 20 (T={t})", np.array(fixed_p), y, fixed_ok_a,
                                BUDGET / PER_REQUEST, float(BUDGET)))
        for rule_name in RULES:
            rule = sc.StoppingRule(rule_name, pol.error_rate, pol.prior, pol.min_samples, BUDGET)
            used, agree, lead_a, probs_a, ok_a, requests = [], [], [], [], [], []
            for j, v in enumerate(votes):
                if not ok_all[j]:
                    used.append(0)
                    agree.append(False)
                    probs_a.append(np.full(k, 1.0 / k))
                    ok_a.append(False)
                    requests.append(0)
                    lead_a.append(-2)
                    continue
                n_used, _ = sc.run_on_stream(v, k, rule, batch=1)
                tally = sc.VoteTally(k)
                tally.extend(v[:n_used])
                s = sc.summary(tally.counts, pol.prior)
                used.append(n_used)
                requests.append(-(-n_used // PER_REQUEST))  # the same stop, taken in requests of n=4
                lead_a.append(s.leader)
                agree.append(s.leader == fixed_lead[j])
                probs_a.append(s.probabilities if s.probabilities is not None else np.full(k, 1.0 / k))
                ok_a.append(s.probabilities is not None and not s.ambiguous)
            used_a, agree_a = np.array(used)[ok_all], np.array(agree)[ok_all]
            acc_fixed = float(np.mean(np.array(fixed_lead)[ok_all] == y[ok_all]))
            acc_adapt = float(np.mean(np.array(lead_a)[ok_all] == y[ok_all]))
            adaptive_rows.append({"temperature": t, "rule": rule_name, "items": int(ok_all.sum()),
                                  "samples_mean": float(used_a.mean()), "samples_ratio": float(used_a.mean() / BUDGET),
                                  "samples_saved": float(1 - used_a.mean() / BUDGET),
                                  "agreement": float(agree_a.mean()), "disagreements": int((~agree_a).sum()),
                                  "accuracy_adaptive": acc_adapt, "accuracy_fixed": acc_fixed,
                                  "stopped_early": float(np.mean(used_a < BUDGET)),
                                  "requests_mean_n4": float(np.array(requests)[ok_all].mean())})
            if rule_name == "posterior":
                name = f"self_consistency adaptive (T={t})"
                pa = np.array(probs_a)
                raws[name], oks[name] = pa, np.array(ok_a) & ok_all
                reqs[name] = np.array(requests, dtype=float)
                results.append(evaluate(name, pa, y, oks[name], float(np.array(requests)[ok_all].mean()),
                                        float(used_a.mean())))
    # ensembles: members calibrated on the fit half, pooled, then a calibrator on the pooled scores
    members = ("sequence_scores", "verbalized", "self_consistency adaptive (T=0.7)")
    ok = np.logical_and.reduce([oks[m] for m in members])
    fit, _ = split(y[ok], (0.5, 0.5), 0)
    cal_members = []
    for m in members:
        cal, _ = select_calibrator(raws[m][ok][fit], y[ok][fit], CAL_METHODS)
        cal_members.append(cal.transform(raws[m]))
    for how in ("mean", "loglinear"):
        pooled = pool(cal_members, None, how)
        rq = float(np.sum([reqs[m] for m in members], axis=0).mean())
        r = evaluate(f"ensemble {how} (seq + verb + SC 0.7), held-out", pooled, y, ok, rq, None, test_only=True)
        r["note"] = "members' calibrators fitted on the fit half; every figure on the held-out half"
        results.append(r)
    if len(all_rows) > len(rows):  # single-call methods are cached for more items: report them on all too
        all_ids = [r[0] for r in all_rows]
        y_all = np.array([index[r[2]] for r in all_rows])
        for method in SINGLE_METHODS:
            recs = _load_for(task, method, all_ids)
            keep = [i for i in all_ids if i in recs]
            yk = np.array([y_all[all_ids.index(i)] for i in keep])
            ok = np.array([recs[i].get("raw") is not None for i in keep])
            probs = np.array([recs[i]["raw"] if recs[i].get("raw") is not None else [1.0 / k] * k for i in keep])
            rq = float(np.mean([recs[i].get("requests", 1) for i in keep]))
            results.append(evaluate(f"{method} (all {len(keep)} items)", probs, yk, ok, rq, None))
    print_report(results, adaptive_rows, len(ids))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "confidence_methods.json").write_bytes(orjson.dumps({"methods": results, "adaptive": adaptive_rows,
                                                                "n": len(ids), "seed": args.seed},
                                                               option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return 0


def _load_for(task: Task, what: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    if isinstance(what, float):
        pol = task.confidence.self_consistency
        path = CACHE / f"samples-T{what}-{_key(task, ('sc', what, pol.max_tokens, BUDGET))}.jsonl"
    else:
        path = CACHE / f"{what}-{_key(task, what)}.jsonl"
    recs = _load(path)
    return {i: recs[i] for i in ids if i in recs}


def print_report(results: list[dict[str, Any]], adaptive: list[dict[str, Any]], n: int) -> None:
    print(f"\nGemma 3 270M on {n} Rotten Tomatoes snippets (ECE: 15 equal bins, on the held-out half; "
          "calibrator chosen by 5-fold CV NLL on the fit half)\n")
    head = (f"{'method':<49}{'scored':>7}{'acc':>7}{'ECE raw':>9}{'ECE cal':>9}{'calibrator':>12}{'AUROC':>7}"
            f"{'req/item':>9}{'samples':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        smp = f"{r['samples_per_item']:.2f}" if r["samples_per_item"] is not None else "-"
        print(f"{r['method']:<49}{r['scored']:>7}{r['accuracy']:>7.3f}{r['ece_raw']:>9.4f}{r['ece_calibrated']:>9.4f}"
              f"{r['calibrator']:>12}{r['auroc']:>7.3f}{r['requests_per_item']:>9.2f}{smp:>8}")
    print(f"\nadaptive self-consistency vs a fixed {BUDGET}-sample vote (same samples; prefix replay; "
          "a tied vote counts as wrong in the accuracies)\n")
    head = (f"{'T':>4} {'rule':<20}{'samples':>8}{'of 20':>7}{'saved':>7}{'agree':>8}{'disagree':>9}"
            f"{'acc adapt':>10}{'acc fixed':>10}{'req (n=4)':>10}")
    print(head)
    print("-" * len(head))
    for a in adaptive:
        print(f"{a['temperature']:>4} {a['rule']:<20}{a['samples_mean']:>8.2f}{a['samples_ratio']:>7.1%}"
              f"{a['samples_saved']:>7.1%}{a['agreement']:>8.1%}{a['disagreements']:>9}{a['accuracy_adaptive']:>10.3f}"
              f"{a['accuracy_fixed']:>10.3f}{a['requests_mean_n4']:>10.2f}")
    target = [a for a in adaptive if a["samples_ratio"] <= 1 / 3 and a["agreement"] >= 0.98]
    print("\ntarget (<= 1/3 of the samples of the fixed vote, >= 98% agreement with its label): "
          + (", ".join(f"met at T={a['temperature']} with {a['rule']}" for a in target) or "not met"))


def design(task: Task) -> int:
    """Replays first-token scores of snippets 2000-2599 (not the evaluation items) as sampling
    distributions at each temperature, to see which temperature lets the default rule meet the
    target; only the temperature is chosen here, the rule's parameters stay the defaults."""
    from bench.dataset_scores import dataset_scores

    recs = dataset_scores("rotten_tomatoes", RT_N, RT_SEED)[2000:2600]  # the calibration benchmark's scores
    p = np.array([r["raw_probabilities"][task.labels[0]] for r in recs if "raw_probabilities" in r])
    pol = task.confidence.self_consistency
    rule = sc.StoppingRule("posterior", pol.error_rate, pol.prior, pol.min_samples, BUDGET)
    rng = np.random.default_rng(0)
    print(f"design on {len(p)} snippets (first-token shares as sampling distributions), default posterior rule")
    for t in (1.0, 0.7, 0.5, 0.3, 0.2, 0.1):
        used, agree = [], []
        for pi in p:
            q = pi ** (1 / t) / (pi ** (1 / t) + (1 - pi) ** (1 / t))
            votes = list((rng.random(BUDGET) >= q).astype(int))
            n_used, d = sc.run_on_stream(votes, 2, rule)
            used.append(n_used)
            agree.append(d.leader == fixed_leader(votes, 2))
        print(f"T={t}: samples {np.mean(used):.2f} ({np.mean(used) / BUDGET:.1%} of {BUDGET}), "
              f"agreement {np.mean(agree):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
