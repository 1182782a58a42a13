"""The confidence methods' names: one constant each, declared once (a leaf module: no imports).

The task file, the worker, calibrator records, labelled examples and the calibrate command all use
these, so a method is spelled in one place.
"""

from __future__ import annotations

FIRST_TOKEN = "first_token_logprobs"
SEQUENCE_SCORES = "sequence_scores"
SELF_CONSISTENCY = "self_consistency"
VERBALIZED = "verbalized"
ENSEMBLE = "ensemble"

#: Every method a task may list, in the order the docs present them; the default is the first.
METHOD_NAMES: tuple[str, ...] = (FIRST_TOKEN, SEQUENCE_SCORES, SELF_CONSISTENCY, VERBALIZED, ENSEMBLE)
#: Methods an ensemble may pool (an ensemble cannot contain an ensemble).
MEMBER_METHODS: tuple[str, ...] = tuple(m for m in METHOD_NAMES if m != ENSEMBLE)
