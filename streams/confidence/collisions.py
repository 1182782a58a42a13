"""Answers that share a first token, found before traffic rather than as silent `low_label_mass` reviews.

First-token scoring counts a token toward a label only when it starts exactly one answer
(`streams/classify/probabilities.py`); when "account_access" and "account_deletion" both begin with the
token "account", that token's mass is dropped and every such item goes to review. So at start the worker
(and `python -m streams probe`) asks each endpoint's tokenizer for the first token of every answer, where
the server has one (llama.cpp: `POST /tokenize {"content"}`; vLLM: `POST /tokenize {"model", "prompt"}`;
one body serves both), and otherwise applies a conservative text rule: answers collide when their first
word or segment before `_`, `-` or a space is the same (ignoring case). A task that would use first-token
scoring with colliding answers is refused with a `ConfigError`, unless it sets
`accept_first_token_collisions = true`; option codes or sequence scoring avoid the loss.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

import orjson

from streams.confidence.names import ENSEMBLE, FIRST_TOKEN
from streams.errors import ConfigError
from streams.tasks import ModelEndpoint, Task, TaskRegistry

_SEGMENT = re.compile(r"[_\-\s]+")
TOKENIZE_TIMEOUT_S = 3.0

#: (endpoint, answers) -> the first token of each answer, or None when the endpoint has no tokenizer.
FirstTokens = Callable[[ModelEndpoint, Sequence[str]], list[object] | None]


def first_segment(answer: str) -> str:
    """The text rule's stand-in for a first token: the first word or segment before `_`, `-` or a space."""
    return _SEGMENT.split(answer.strip().casefold(), maxsplit=1)[0]


def colliding(answers: Sequence[str], firsts: Sequence[object]) -> list[tuple[int, ...]]:
    """Groups (label indices, two or more) whose answers have the same first token, in label order."""
    groups: dict[object, list[int]] = {}
    for i, first in enumerate(firsts):
        groups.setdefault(first, []).append(i)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def tokenizer_first_tokens(endpoint: ModelEndpoint, answers: Sequence[str],
                           timeout_s: float = TOKENIZE_TIMEOUT_S) -> list[object] | None:
    """First token id of each answer from the server's `/tokenize` (beside its `/v1`); None when it has none."""
    root = endpoint.base_url.rstrip("/").removesuffix("/v1")
    out: list[object] = []
    for answer in answers:
        body = orjson.dumps({"content": answer, "prompt": answer, "model": endpoint.name,
                             "add_special": False, "add_special_tokens": False})
        req = urllib.request.Request(f"{root}/tokenize", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                tokens = orjson.loads(resp.read()).get("tokens")
        except (urllib.error.URLError, OSError, ValueError, AttributeError):
            return None
        if not isinstance(tokens, list) or not tokens:
            return None
        first = tokens[0]
        out.append(first.get("id") if isinstance(first, dict) else first)  # llama.cpp with_pieces gives objects
    return out


def uses_first_token(task: Task) -> bool:
    """Whether first-token scoring may run for the task: listed as a method or as an ensemble member."""
    methods = task.confidence.methods
    return FIRST_TOKEN in methods or (ENSEMBLE in methods and any(
        m.method == FIRST_TOKEN for m in task.confidence.ensemble_members))


def collisions(task: Task, first_tokens: FirstTokens = tokenizer_first_tokens) -> tuple[list[tuple[str, ...]], str]:
    """(groups of label names whose answers share a first token, how that was decided)."""
    firsts = first_tokens(task.model, task.answers)
    how = f"tokenizer of {task.model.base_url}"
    if firsts is None:
        firsts, how = [first_segment(a) for a in task.answers], "text rule (no tokenizer endpoint)"
    return [tuple(task.labels[i] for i in g) for g in colliding(task.answers, firsts)], how


def collision_problems(tasks: TaskRegistry, first_tokens: FirstTokens = tokenizer_first_tokens) -> list[str]:
    """One problem per task that would score first tokens over colliding answers, naming the labels and fixes."""
    problems = []
    for i, task in enumerate(tasks.tasks.values()):
        if not uses_first_token(task) or task.accept_first_token_collisions:
            continue
        groups, how = collisions(task, first_tokens)
        if groups:
            named = "; ".join(" / ".join(repr(lbl) for lbl in g) for g in groups)
            problems.append(
                f"task[{i}] ({task.name}).labels: {named} start with the same first token ({how}), so "
                "first_token_logprobs cannot tell them apart and such items would go to review as low_label_mass; "
                "answer with option codes (codes = \"letters\"), score whole labels "
                "([task.confidence] methods = [\"sequence_scores\"]), or set accept_first_token_collisions = true")
    return problems


def refuse_collisions(tasks: TaskRegistry, first_tokens: FirstTokens = tokenizer_first_tokens) -> None:
    """Raise ConfigError (every colliding task, with its fixes) before the worker takes traffic."""
    problems = collision_problems(tasks, first_tokens)
    if problems:
        raise ConfigError(tasks.source, problems)
