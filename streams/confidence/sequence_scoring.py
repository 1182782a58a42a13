"""Whole-label sequence scoring: each complete label scored as a continuation. Pure.

A label such as "rotten" is two tokens for Gemma ("ro" + "tten"), so its first-token probability is
only P("ro"). Here each label is followed token by token: at each position the model's top-k
next-token logprobs are read (one chat completion with the answer so far *prefilled* as the
assistant turn, `max_tokens=1`), the most probable token that continues the label's remaining text is
taken (case, space-marker and leading-space variants of that same piece are added together, as in
first-token scoring), its logprob is added, and the label text is extended by it, until the label is
complete. Labels that share a prefix share those calls. This is teacher forcing through the chat API,
a constrained decoding of each label; it needs an endpoint that continues a prefilled assistant turn
(llama.cpp, vLLM and Ollama do; the capability probe checks). An endpoint that returns prompt
logprobs with `echo` (legacy completions) could score each label in one call instead; llama.cpp's
OpenAI layer ignores `echo`, so that path is not used here.

When no top-k token continues the label, its remaining probability is below the smallest one shown:
that logprob is added as a bound and the label is marked `bounded` (a small optimism, as labels
absent from the first-token top-k).

**Length.** The label's score is log P(label) = sum of its token logprobs: a proper probability of
the answer starting with that label. Labels are prefix-free (the task file rejects a label that is a
prefix of another), so these events are disjoint, their probabilities sum to at most 1, and
renormalising over the label set is exact; no end-of-answer term is needed to tell "rot" from
"rotten". A longer label is not penalised for its length as such: a model that commits to it after
its first token gives the later tokens logprobs near 0 (Gemma: P("tten" | "ro") = 0.99). The bias
that remains is the real one of a model spreading mass over paraphrases or tokenisations of a
long label; `length_normalization = "mean"` (per-token average logprob, then softmax) removes it for
tasks where that is wanted, at the price of no longer being a probability before calibration. The
calibrator of the method corrects what is left either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

NORMALIZATIONS = ("sum", "mean")
_MARKERS = str.maketrans({"\u2581": " ", "\u0120": " ", "\u010a": "\n"})


def piece(token: str) -> str:
    """Token text with tokeniser space markers made spaces, case folded (spaces kept)."""
    return token.translate(_MARKERS).casefold()


@dataclass
class LabelPath:
    """One label's progress: the text prefilled so far, what is left of the label, its logprob."""

    index: int
    remaining: str  # the label text not yet covered, case-folded
    prefix: str = ""  # what to prefill as the assistant turn (the chosen tokens' own text)
    logprob: float = 0.0
    tokens: int = 0
    bounded: bool = False  # a piece was missing from the top-k: logprob is an upper bound
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.bounded or not self.remaining


def start_paths(labels: Sequence[str]) -> list[LabelPath]:
    return [LabelPath(i, label.casefold()) for i, label in enumerate(labels)]


def advance(path: LabelPath, top_logprobs: Sequence[tuple[str, float]]) -> None:
    """Extend the path by one token from the top-k at its prefix (in place)."""
    first = path.tokens == 0
    variants: dict[str, list[tuple[str, float]]] = {}
    for token, lp in top_logprobs:
        if not math.isfinite(lp):
            continue
        text = piece(token)
        if first:
            text = text.lstrip()  # the answer may open with a space
        if text and path.remaining.startswith(text):
            variants.setdefault(text, []).append((token, min(lp, 0.0)))
    if not variants:
        floor = min((lp for _, lp in top_logprobs if math.isfinite(lp)), default=-30.0)
        path.logprob += min(floor, 0.0)
        path.bounded = True
        path.steps.append(("", floor))
        return
    text, group = max(variants.items(), key=lambda kv: _logsumexp([lp for _, lp in kv[1]]))
    lp = _logsumexp([lp for _, lp in group])
    token = max(group, key=lambda g: g[1])[0]
    path.prefix += token.translate(_MARKERS)
    path.remaining = path.remaining[len(text):]
    path.logprob += min(lp, 0.0)
    path.tokens += 1
    path.steps.append((token, lp))


def _logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


@dataclass(frozen=True, slots=True)
class SequenceScores:
    probabilities: np.ndarray  # over the labels, sums to 1
    label_mass: float  # P(answer starts with some label) / top-k mass at the first position, in [0, 1]
    logprobs: np.ndarray  # log P(label) per label (sum of token logprobs)
    tokens: np.ndarray  # tokens per label
    bounded: np.ndarray  # bool per label


def combine(paths: Sequence[LabelPath], first_topk_mass: float, normalization: str = "sum") -> SequenceScores:
    """Renormalise the labels' sequence logprobs into probabilities over the label set."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"length_normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    lps = np.array([p.logprob for p in paths], dtype=np.float64)
    toks = np.array([max(p.tokens, 1) for p in paths], dtype=np.float64)
    scores = lps if normalization == "sum" else lps / toks
    z = scores - scores.max()
    probs = np.exp(z) / np.exp(z).sum()
    total = float(np.exp(lps).sum())
    mass = min(1.0, total / first_topk_mass) if first_topk_mass > 0 else 0.0
    return SequenceScores(probs, mass, lps, toks.astype(np.int64), np.array([p.bounded for p in paths]))
