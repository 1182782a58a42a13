"""Canary statistics: model drift from the top-k token distributions of fixed prompts. Pure numpy/scipy.

Traffic statistics cannot tell a changed model from changed data. Canaries can: the leader re-runs
each task's fixed canary prompts through the model and `compare_canaries` judges how far their top-k
token distributions moved from the baseline's (`canary_kl`), against the spread among repeated
samples of the baseline model itself (`canary_baseline`), since batching, kernels and quantisation
make logprobs jitter between identical calls.

A top-k is a mapping token -> logprob, as the model client returns it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import rel_entr

from streams.drift.homogeneity import DriftVerdict

PROB_FLOOR = 1e-6
"""Last-resort probability for a token missing from a top-k that covered (almost) all the mass."""


def _probs(topk: Mapping[str, float]) -> dict[str, float]:
    """Logprobs -> probabilities, clipped at 1 (servers return +1e-7 for a certain token)."""
    return {tok: math.exp(min(lp, 0.0)) for tok, lp in topk.items()}


def _missing_floor(p: Mapping[str, float]) -> float:
    """Probability for a token this top-k did not show: at most the smallest shown one and the unshown mass."""
    if not p:
        return PROB_FLOOR
    return max(min(min(p.values()), 1.0 - sum(p.values())), PROB_FLOOR)


def canary_kl(baseline_topk: Mapping[str, float], current_topk: Mapping[str, float],
              floor: float | None = None) -> float:
    """KL(baseline || current) in nats between two top-k token distributions (token -> logprob).

    Both are taken over the union of their shown tokens and renormalised there. A token one side did
    not show gets `floor`, by default that side's min(smallest shown probability, unshown mass) (its
    true probability is below both; at least 1e-6). The unshown mass itself is not a bucket of its
    own: it jitters between identical calls, and when a top-k covers almost all the mass its
    near-zero remainder would dominate the KL. Direction: how badly the current model explains what
    the baseline model said.

    Examples
    --------
    >>> import math
    >>> before = {"Positive": math.log(0.7), "Negative": math.log(0.25)}
    >>> after = {"Positive": math.log(0.6), "Negative": math.log(0.35)}
    >>> round(canary_kl(before, after), 4)
    0.025
    >>> canary_kl(before, before)
    0.0
    """
    p, q = _probs(baseline_topk), _probs(current_topk)
    fp = floor if floor is not None else _missing_floor(p)
    fq = floor if floor is not None else _missing_floor(q)
    tokens = sorted(p.keys() | q.keys())
    pv = np.array([p.get(t, fp) for t in tokens])
    qv = np.array([q.get(t, fq) for t in tokens])
    return float(rel_entr(pv / pv.sum(), qv / qv.sum()).sum())


def pool_topk(samples: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean probability per token over repeated samples of one prompt (unshown counts 0), as logprobs."""
    total: dict[str, float] = {}
    for s in samples:
        for tok, pr in _probs(s).items():
            total[tok] = total.get(tok, 0.0) + pr
    return {tok: math.log(v / len(samples)) for tok, v in total.items()}


def canary_score(reference: Mapping[str, Mapping[str, float]], current: Mapping[str, Mapping[str, float]],
                 floor: float | None = None) -> float:
    """Mean canary_kl over the reference's prompts (every prompt must be in current)."""
    return float(np.mean([canary_kl(reference[k], current[k], floor) for k in reference]))


@dataclass
class CanaryBaseline:
    """Pooled top-k per canary prompt and the null distribution of the canary score.

    Built from m >= 2 repeats of every prompt under the baseline model. null_scores[r] is the score of
    repeat r against the pool of the other m - 1 repeats: how far a sample of the *same* model lands.
    """

    reference: dict[str, dict[str, float]]
    null_scores: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "null_scores": self.null_scores}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CanaryBaseline:
        return cls({k: dict(v) for k, v in d["reference"].items()}, [float(x) for x in d["null_scores"]])


def canary_baseline(repeats: Mapping[str, Sequence[Mapping[str, float]]], floor: float | None = None) -> CanaryBaseline:
    """The baseline's canaries: pooled top-k per prompt, and how far the model's own repeats land.

    Without the null scores a canary score has no scale: a server that jitters would alarm on every
    run, a deterministic one would hide a real change under any fixed threshold. Each null score is a
    leave-one-out score: repeat r against the pool of the other m - 1 repeats.

    Parameters
    ----------
    repeats
        {prompt: [top-k of repeat 1, ..., repeat m]}, the same m >= 2 for every prompt.
    floor
        Probability for a token one side did not show (see `canary_kl`); None for the default.

    Examples
    --------
    >>> import math
    >>> runs = [{"Positive": math.log(p), "Negative": math.log(0.95 - p)} for p in (0.70, 0.72, 0.69)]
    >>> base = canary_baseline({"great film": runs})
    >>> round(math.exp(base.reference["great film"]["Positive"]), 3)
    0.703
    >>> [round(s, 4) for s in base.null_scores]  # each repeat against the pool of the other two
    [0.0001, 0.0018, 0.0011]
    """
    sizes = {len(v) for v in repeats.values()}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ValueError(f"every prompt needs the same number (>= 2) of repeats, got {sorted(sizes)}")
    m = sizes.pop()
    null = []
    for r in range(m):
        loo = {k: pool_topk([s for i, s in enumerate(v) if i != r]) for k, v in repeats.items()}
        null.append(canary_score(loo, {k: v[r] for k, v in repeats.items()}, floor))
    return CanaryBaseline({k: pool_topk(v) for k, v in repeats.items()}, null)


def compare_canaries(baseline: CanaryBaseline, current: Mapping[str, Mapping[str, float]],
                     min_effect: float = 0.02, quantile: float = 1.0, floor: float | None = None) -> DriftVerdict:
    """Current canary score against the baseline's repeat-to-repeat spread: has the model changed?

    Drift when the score exceeds both the `quantile` of the null scores (1.0 = their max) and
    min_effect (0.02 nats is about a 10-point move of a canary's top token, 0.7 -> 0.6). The rank
    p-value (1 + #{null >= score}) / (m + 1) is exact for exchangeable samples but no smaller than
    1 / (m + 1); with a deterministic server the null is all zeros and min_effect decides alone.
    The live score uses the pool of all m repeats, a little closer to any sample than the m - 1 pools
    behind the null, so the comparison errs toward silence.

    Parameters
    ----------
    baseline
        From `canary_baseline`.
    current
        {prompt: top-k} of the current run (pooled over its repeats), every baseline prompt present.
    min_effect
        Score (nats) the current run must exceed in any case (the task's `drift.canary_min_effect`).
    quantile
        Quantile of the null scores the current score must exceed.
    floor
        Probability for a token one side did not show (see `canary_kl`); None for the default.

    Examples
    --------
    >>> import math
    >>> runs = [{"Positive": math.log(p), "Negative": math.log(0.95 - p)} for p in (0.70, 0.72, 0.69)]
    >>> base = canary_baseline({"great film": runs})
    >>> same = compare_canaries(base, {"great film": runs[0]})
    >>> same.drifted, same.p_value
    (False, 1.0)
    >>> moved = compare_canaries(base, {"great film": {"Positive": math.log(0.55), "Negative": math.log(0.4)}})
    >>> moved.drifted, moved.statistic, round(moved.value, 3), moved.p_value
    (True, 'canary_kl', 0.057, 0.25)
    """
    score = canary_score(baseline.reference, current, floor)
    null = np.asarray(baseline.null_scores, dtype=np.float64)
    threshold = max(float(np.quantile(null, quantile)), min_effect)
    p_value = (1 + int(np.sum(null >= score))) / (null.shape[0] + 1)
    return DriftVerdict("canary_kl", score, threshold, p_value, bool(score > threshold))
