"""streams.tasks: each default is declared once, on the dataclasses, and the parser takes it from there."""

from __future__ import annotations

import dataclasses

import pytest

from streams.calibration.calibrators import DEFAULT_METHODS
from streams.confidence.names import FIRST_TOKEN, MEMBER_METHODS, METHOD_NAMES
from streams.errors import ConfigError
from streams.tasks import (
    CONFIDENCE_METHODS,
    CalibrationPolicy,
    ConfidencePolicy,
    DriftPolicy,
    EnsembleMember,
    ModelEndpoint,
    Prompt,
    SelfConsistencyPolicy,
    Task,
    parse_tasks,
)

MINIMAL = """
[[task]]
name = "t"
labels = ["yes", "no"]
[task.model]
base_url = "http://127.0.0.1:8080/v1"
name = "m"
"""


def only_task(text: str) -> Task:
    return parse_tasks(text, "test", env={}).tasks["t"]


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_tasks(text, "test", env={})
    return info.value.problems


def test_every_policy_field_has_a_default() -> None:
    for cls in (CalibrationPolicy, DriftPolicy, SelfConsistencyPolicy, ConfidencePolicy):
        for f in dataclasses.fields(cls):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, (
                f"{cls.__name__}.{f.name} has no default")


def test_a_task_without_optional_sections_gets_the_dataclass_defaults() -> None:
    t = only_task(MINIMAL)
    assert t.prompt == Prompt()
    assert t.model == ModelEndpoint("http://127.0.0.1:8080/v1", "m")
    assert t.calibration == CalibrationPolicy()
    assert t.drift == DriftPolicy()
    assert t.confidence == ConfidencePolicy()
    assert t.confidence.self_consistency == SelfConsistencyPolicy()
    defaults = Task("t", ("yes", "no"), Prompt(), ModelEndpoint("http://127.0.0.1:8080/v1", "m"))
    assert t == defaults, "routing defaults (review_threshold, min_label_mass, ...) are Task's own"


def test_empty_sections_also_give_the_defaults() -> None:
    text = MINIMAL + "".join(f"[task.{s}]\n" for s in ("prompt", "routing", "calibration", "drift", "confidence",
                                                        "confidence.self_consistency", "confidence.verbalized",
                                                        "confidence.sequence_scores", "confidence.ensemble"))
    assert only_task(text) == only_task(MINIMAL)


def test_known_default_values() -> None:
    """The values themselves (each written once, on its dataclass)."""
    assert (CalibrationPolicy().refit_every, CalibrationPolicy().min_examples) == (200, 100)
    assert CalibrationPolicy().methods == DEFAULT_METHODS
    d = DriftPolicy()
    assert (d.window_s, d.alpha, d.confirm_windows, d.clear_windows) == (300.0, 1e-4, 1, 3)
    assert ConfidencePolicy().methods == (FIRST_TOKEN,) == (METHOD_NAMES[0],)
    t = only_task(MINIMAL)
    assert (t.review_threshold, t.min_label_mass, t.failure_probability, t.audit_rate) == (0.8, 0.5, 0.1, 0.0)
    assert t.target_error is None and (t.model.top_logprobs, t.model.temperature) == (20, 0.0)


def test_method_names_come_from_their_modules() -> None:
    assert CONFIDENCE_METHODS is METHOD_NAMES
    t = only_task(MINIMAL + "[task.calibration]\nmethods = " + str(list(DEFAULT_METHODS)).replace("'", '"') + "\n")
    assert t.calibration.methods == DEFAULT_METHODS
    problems = problems_of(MINIMAL + '[task.calibration]\nmethods = ["no_such_method"]\n')
    assert any("calibration.methods" in p and str(list(DEFAULT_METHODS)) in p for p in problems), problems


def test_ensemble_members_default_weight_and_model() -> None:
    text = MINIMAL + ('[task.confidence]\nmethods = ["ensemble"]\n[task.confidence.ensemble]\n'
                      'members = ["first_token_logprobs", {method = "verbalized", name = "other"}]\n')
    members = only_task(text).confidence.ensemble_members
    assert members[0] == EnsembleMember(FIRST_TOKEN, None)
    assert members[0].weight == 1.0
    assert members[1].model == ModelEndpoint("http://127.0.0.1:8080/v1", "other"), "the task's URL, default sampling"


@pytest.mark.parametrize("method", sorted(set(METHOD_NAMES) - set(MEMBER_METHODS)))
def test_an_ensemble_cannot_contain_an_ensemble(method: str) -> None:
    text = MINIMAL + f'[task.confidence.ensemble]\nmembers = ["{method}", "verbalized"]\n'
    problems = problems_of(text)
    assert any("ensemble.members[0].method" in p and str(list(MEMBER_METHODS)) in p for p in problems), problems


@pytest.mark.parametrize(("section", "setting", "path"), [
    ("calibration", "refit_every = 0", "calibration.refit_every"),
    ("calibration", "holdout_fraction = 0.95", "calibration.holdout_fraction"),
    ("drift", "window_s = 1e6", "drift.window_s"),
    ("drift", "canary_repeats = 1", "drift.canary_repeats"),
    ("drift", 'webhook_url = "ftp://x"', "drift.webhook_url"),
    ("routing", "failure_probability = 0.9", "routing.failure_probability"),
    ("routing", "target_error = 0", "routing.target_error"),
    ("confidence.self_consistency", "min_samples = 30", "confidence.self_consistency.min_samples"),
    ("confidence.self_consistency", 'rule = "vote"', "confidence.self_consistency.rule"),
    ("confidence.sequence_scores", 'length_normalization = "max"', "confidence.sequence_scores.length_normalization"),
    ("confidence.verbalized", "max_tokens = 1", "confidence.verbalized.max_tokens"),
    ("confidence.ensemble", 'pooling = "max"', "confidence.ensemble.pooling"),
])
def test_each_section_checks_its_ranges(section: str, setting: str, path: str) -> None:
    problems = problems_of(MINIMAL + f"[task.{section}]\n{setting}\n")
    assert len(problems) == 1 and problems[0].startswith(f"task[0] (t).{path}: "), problems
