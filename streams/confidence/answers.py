"""Free-text answers -> one of the task's labels, or none. Pure.

Sampled answers (self-consistency) and verbalised answers are text, not tokens. An answer maps to a
label when, after folding case, markup and punctuation, it starts with exactly one label, or else
names exactly one label as a whole word and does not negate it ("not fresh"). Anything else maps to
no label: guessing between two named labels would invent agreement that the model did not show.
Callers pass the task's answers (`Task.answers`: option codes such as "B", or the label names), so "B)"
and "Answer: B" map to the label coded B.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_STRIP = re.compile(r"^[\s\"'`*_#>\-\[\](){}:.,;!?]+")
_PREFIXES = ("the answer is", "answer", "label", "classification", "class", "sentiment", "prediction", "final answer")
_NEGATION = re.compile(r"\b(?:not|isn't|isnt|no|never|neither|nor)\s+(?:\w+\s+){0,1}$")


def fold(text: str) -> str:
    """Case-folded, SentencePiece/GPT-2 space markers replaced, whitespace squeezed."""
    text = text.replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n")
    return " ".join(text.casefold().split())


def _strip_lead(text: str) -> str:
    prev = None
    while prev != text:
        prev = text
        text = _STRIP.sub("", text)
        for p in _PREFIXES:
            if text.startswith((p + ":", p + " is", p + " ")):
                text = text[len(p):]
                break
    return text


def first_line(answer: str) -> str:
    """The answer proper: its first non-empty line (models go on with the next few-shot turn)."""
    for line in answer.replace("<|", "\n<|").replace("<end_of_turn>", "\n").splitlines():
        if line.strip() and not line.strip().startswith("<|"):
            return line
    return ""


def answer_label(answer: str, labels: Sequence[str]) -> int:
    """Index of the label the answer gives, or -1 when it gives none or several."""
    text = _strip_lead(fold(first_line(answer)))
    folded = [fold(lbl) for lbl in labels]
    named = []  # labels named as whole words and not negated
    for i, lbl in enumerate(folded):
        for m in re.finditer(r"(?<!\w)" + re.escape(lbl) + r"(?!\w)", text):
            if not _NEGATION.search(text[: m.start()]):
                named.append(i)
                break
    starts = [i for i, lbl in enumerate(folded) if text.startswith(lbl) and not _continues_word(text, len(lbl))]
    if starts:
        best = max(starts, key=lambda i: len(folded[i]))  # "very bad" over "bad" when both start it
        others = [i for i in named if i != best and folded[i] not in folded[best]]
        return -1 if others else best  # "fresh or rotten" names two: no answer
    return named[0] if len(named) == 1 else -1


def _continues_word(text: str, end: int) -> bool:
    """True when the label is only the start of a longer word ("freshly" is not "fresh")."""
    return end < len(text) and (text[end].isalnum() or text[end] == "_")
