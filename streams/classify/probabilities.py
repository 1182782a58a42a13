"""First-token logprobs -> probabilities over a task's fixed label set. Pure numpy/scipy, no Kafka.

A model answers with a token, not a label. Every top-k token that is a tokenisation of the start of
exactly one label (after folding case and the leading-space markers of the common tokenisers) counts
toward that label; tokens that could start several labels count toward none, because assigning them
would be a guess. The label probabilities are renormalised over the label set, and the *label mass*
(share of the shown top-k probability that fell on labels) says how much of the model's answer was
about the task at all: a low mass means the model wanted to say something else, so its label
distribution is not to be trusted.

Labels missing from the top-k get probability 0 before calibration. Their true probability is below
the smallest top-k probability, so this is a small, documented optimism that calibration corrects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Leading-space markers: SentencePiece (Gemma, Llama) and GPT-2 byte-level BPE.
_SPACE_MARKERS = str.maketrans({"\u2581": " ", "\u0120": " ", "\u010a": "\n"})


def fold_token(token: str) -> str:
    """The part of a token that can match a label: no space markers, no surrounding space, no case."""
    return token.translate(_SPACE_MARKERS).strip().casefold()


class LabelMatcher:
    """Maps tokens to label indices, memoised, because the same few tokens recur in every reply."""

    __slots__ = ("_cache", "_folded", "labels")

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self._folded = tuple(fold_token(lbl) for lbl in labels)
        self._cache: dict[str, int] = {}

    def index(self, token: str) -> int:
        """Label index the token starts, or -1 when it starts none or is ambiguous."""
        found = self._cache.get(token)
        if found is None:
            folded = fold_token(token)
            hits = [i for i, lbl in enumerate(self._folded) if folded and lbl.startswith(folded)]
            found = hits[0] if len(hits) == 1 else -1
            if len(self._cache) < 65536:
                self._cache[token] = found
        return found


@dataclass(frozen=True, slots=True)
class LabelScores:
    probabilities: np.ndarray  # over the task's labels, sums to 1 (or all zero when label_mass == 0)
    label_mass: float  # share of the shown top-k probability on label tokens, in [0, 1]
    topk_mass: float  # total probability the top-k tokens cover, in (0, 1]


def label_scores(top_logprobs: Sequence[tuple[str, float]], matcher: LabelMatcher) -> LabelScores:
    """Aggregate `(token, logprob)` pairs of the first generated position into label probabilities.

    Plain Python over the (at most 20) pairs: per message, numpy calls on arrays this small cost
    several times more (bench/stats_path.py measures both; bench/README.md has the figures). Sums are
    `math.fsum` (correctly rounded, so the same on every CPU); numpy's SIMD exp, log and pairwise sum
    differ from it in the last bits from one CPU to another, so tests/unit/test_probabilities.py
    compares with the numpy formulation to 1e-12.
    """
    k = len(matcher.labels)
    if not top_logprobs:
        return LabelScores(np.zeros(k), 0.0, 0.0)
    sums = [0.0] * k
    probs: list[float] = []
    index, known = matcher.index, matcher._cache
    exp, fsum = math.exp, math.fsum
    for tok, lp in top_logprobs:
        # Clip: servers sometimes return +1e-7 for a certain token. NaN (a broken server) counts as no mass.
        p = exp(lp) if lp < 0.0 else (1.0 if lp >= 0.0 else 0.0)
        probs.append(p)
        i = known.get(tok)
        if i is None:
            i = index(tok)
        if i >= 0:
            sums[i] += p
    topk_mass = fsum(probs)
    label_total = fsum(sums)
    if label_total <= 0.0:
        return LabelScores(np.array(sums), 0.0, topk_mass)
    return LabelScores(np.array([v / label_total for v in sums]), label_total / topk_mass if topk_mass > 0 else 0.0,
                       topk_mass)


def normalised_entropy(p: np.ndarray) -> float:
    """Shannon entropy divided by log(K): 0 = certain, 1 = uniform; comparable across label-set sizes."""
    k = p.shape[-1]
    if k < 2:
        return 0.0
    if k > 128 or p.ndim != 1:
        nz = p[p > 0]
        return float(-(nz * np.log(nz)).sum() / math.log(k))
    log = math.log  # per message: Python on the few labels beats numpy calls (bench/stats_path.py)
    return float(-math.fsum([v * log(v) for v in p.tolist() if v > 0]) / log(k))
