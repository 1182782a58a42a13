"""Verbalised confidence: ask for the label and a probability in words, and parse the answer. Pure.

The answer is free text from a model that may ramble, so the parser is strict about what counts:

- the label: `answers.answer_label` (one label, not negated);
- the probability: the first of, in order of appearance, a percentage (``85%``, ``85 %``,
  ``85 percent``), a fraction ``n/d`` with 0 <= n <= d <= 100, a decimal in [0, 1] (``0.85``,
  ``.85``, ``1.0``), an integer 0-100 right after a confidence word (``confidence: 85``), or a
  word (``certain``, ``very high``, ``high``, ``moderate``, ``low``...). Anything out of range
  (``1.7``, ``120%``, ``-0.2``, ``nan``) is not a probability.

What cannot be parsed is treated as low confidence, never guessed: a label without a usable
probability scores 1/K + 0.01 (the stated label, at almost no confidence), and an answer without
exactly one label gives no scores at all (the item goes to review as ambiguous).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streams.confidence.answers import answer_label, first_line, fold

#: Appended to the task's prompt template for this method; `{labels}` becomes "a, b or c".
DEFAULT_INSTRUCTION = (
    "\nAnswer with the label, then how likely it is that your label is right, as a probability "
    "from 0 to 1. Example: {example} 0.8"
)
#: Few-shot assistant turns show the answer format with this probability ("fresh 0.9"): the examples are
#: clear-cut ones, and a model that answers only in the format it was shown needs to see a number.
EXAMPLE_CONFIDENCE = 0.9
UNPARSED_MARGIN = 0.01
_WORDS = (  # longest first, so "very high" is not read as "high"
    ("almost certain", 0.95), ("very confident", 0.9), ("very high", 0.9), ("very likely", 0.9),
    ("very low", 0.1), ("very unlikely", 0.1), ("certain", 0.99), ("confident", 0.8), ("high", 0.8),
    ("likely", 0.7), ("moderate", 0.6), ("medium", 0.6), ("unsure", 0.5), ("uncertain", 0.5),
    ("low", 0.3), ("unlikely", 0.3),
)
_NUM = r"(?<![\w.\-])(-?\d+(?:\.\d+)?|-?\.\d+)"
_PERCENT = re.compile(_NUM + r"\s*(?:%|percent\b|per cent\b)")
_FRACTION = re.compile(r"(?<![\w./])(\d{1,3})\s*/\s*(\d{1,3})(?![\w./])")
_DECIMAL = re.compile(_NUM + r"(?!\.\d)(?![\w%/]|\s*%|\s*/\s*\d|\s*percent)")
_CONF_INT = re.compile(r"(?:confidence|probability|certainty|sure)\s*(?:is|of|:|=)?\s*(\d{1,3})(?![\w.%/])")


@dataclass(frozen=True, slots=True)
class Verbalized:
    label: int  # label index, -1 when none or several
    confidence: float | None  # the stated probability, None when unparseable
    probabilities: np.ndarray | None  # over the labels; None when no single label was given


def messages(chat: list[dict[str, str]], labels: Sequence[str],
             template: str = DEFAULT_INSTRUCTION) -> list[dict[str, str]]:
    """The task's chat messages for this method: examples answer "label 0.9", the item gets the instruction."""
    out = [dict(m) for m in chat]
    for m in out[:-1]:
        if m["role"] == "assistant":
            m["content"] = f"{m['content']} {EXAMPLE_CONFIDENCE}"
    out[-1]["content"] += instruction(labels, template)
    return out


def instruction(labels: Sequence[str], template: str = DEFAULT_INSTRUCTION) -> str:
    names = list(labels)
    spelled = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
    return template.replace("{labels}", spelled).replace("{example}", names[0])


def parse_confidence(text: str) -> float | None:
    """The first probability stated in the text, in [0, 1]; None when there is none that is valid."""
    t = fold(text)
    found: list[tuple[int, float | None]] = []
    for m in _PERCENT.finditer(t):
        v = float(m.group(1)) / 100.0
        found.append((m.start(), v if 0.0 <= v <= 1.0 else None))
    for m in _FRACTION.finditer(t):
        num, den = int(m.group(1)), int(m.group(2))
        found.append((m.start(), num / den if den > 0 and num <= den else None))
    for m in _CONF_INT.finditer(t):
        v = int(m.group(1))
        if v > 1:  # 0 and 1 are read as decimals below
            found.append((m.start(1), v / 100.0 if v <= 100 else None))
    taken = {pos for pos, _ in found}
    for m in _DECIMAL.finditer(t):
        if m.start() in taken:
            continue
        raw = m.group(1)
        v = float(raw)
        if "." not in raw and v not in (0.0, 1.0):
            continue  # a bare integer like "2" or "85" is not a probability unless a confidence word says so
        found.append((m.start(), v if 0.0 <= v <= 1.0 else None))
    if found:
        found.sort(key=lambda pv: pv[0])
        value = found[0][1]
        return value if value is not None and math.isfinite(value) else None
    for word, v in _WORDS:
        if re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", t):
            return v
    return None


def _without_answer(line: str, answer: str) -> str:
    """The line with the stated answer cut out, so an option code such as "1" is not read as a probability."""
    t = fold(line)
    m = re.search(r"(?<!\w)" + re.escape(fold(answer)) + r"(?!\w)", t)
    return t[: m.start()] + t[m.end():] if m else t


def parse(text: str, labels: Sequence[str]) -> Verbalized:
    k = len(labels)
    label = answer_label(text, labels)
    line = first_line(text)
    if label < 0:
        return Verbalized(-1, parse_confidence(line), None)
    conf = parse_confidence(_without_answer(line, labels[label]))
    c = conf if conf is not None else 1.0 / k + UNPARSED_MARGIN
    probs = np.full(k, (1.0 - c) / (k - 1))
    probs[label] = c
    return Verbalized(label, conf, probs)
