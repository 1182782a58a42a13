"""Rate-limit budgets in the task file: `requests_per_minute` / `tokens_per_minute` of a [model] table (and of
an ensemble member's own model), validated with the field to fix, and shared by every mention of the endpoint."""

from __future__ import annotations

import pytest

from streams.errors import ConfigError
from streams.tasks import TaskRegistry, parse_tasks


def task(name: str = "t", model: str = "", url: str = "http://api.example/v1", members: str = "") -> str:
    return f"""
[[task]]
name = "{name}"
labels = ["yes", "no"]
[task.model]
base_url = "{url}"
name = "m"
{model}
{members}
"""


def parse(text: str) -> TaskRegistry:
    return parse_tasks(text, "test", env={})


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def test_budgets_are_optional_and_read_when_given() -> None:
    assert parse(task()).tasks["t"].model.requests_per_minute is None
    ep = parse(task(model="requests_per_minute = 600\ntokens_per_minute = 150000.5")).tasks["t"].model
    assert (ep.requests_per_minute, ep.tokens_per_minute) == (600, 150000.5)


@pytest.mark.parametrize(("line", "fragment"), [
    ("requests_per_minute = 0", "must be above 0"),
    ("tokens_per_minute = -5", "out of range"),
    ('requests_per_minute = "600"', "expected a number, got str"),
    ("tokens_per_minute = true", "expected a number, got bool"),
    ("requests_per_minute = 1e12", "out of range"),
])
def test_a_bad_budget_names_its_field(line: str, fragment: str) -> None:
    problems = problems_of(task(model=line))
    key = line.split(" ")[0]
    assert any(p.startswith(f"task[0] (t).model.{key}:") and fragment in p for p in problems), problems


def test_an_ensemble_member_with_its_own_model_may_declare_a_budget() -> None:
    members = """
[task.confidence]
methods = ["ensemble"]
[task.confidence.ensemble]
members = ["first_token_logprobs", {method = "first_token_logprobs", base_url = "http://other.example/v1", \
name = "big", requests_per_minute = 60, tokens_per_minute = 0}]
"""
    problems = problems_of(task(members=members))
    assert any("members[1].tokens_per_minute" in p and "must be above 0" in p for p in problems), problems
    ok = parse(task(members=members.replace("tokens_per_minute = 0", "tokens_per_minute = 9000")))
    member = ok.tasks["t"].confidence.ensemble_members[1].model
    assert member is not None and (member.requests_per_minute, member.tokens_per_minute) == (60, 9000)


def test_every_mention_of_an_endpoint_gets_its_declared_budget() -> None:
    """Declared once (task a), it paces task b's calls and an ensemble member's on the same model too."""
    member = """
[task.confidence.ensemble]
members = ["first_token_logprobs", {method = "verbalized", base_url = "http://api.example/v1", name = "m"}]
"""
    reg = parse(task("a", "requests_per_minute = 600") + task("b", members=member)
                + task("c", url="http://elsewhere.example/v1"))
    b = reg.tasks["b"]
    assert b.model.requests_per_minute == 600 and b.model.tokens_per_minute is None
    assert b.confidence.ensemble_members[1].model is not None
    assert b.confidence.ensemble_members[1].model.requests_per_minute == 600
    assert reg.tasks["c"].model.requests_per_minute is None  # another endpoint


def test_different_budgets_for_one_endpoint_are_refused_naming_both_places() -> None:
    problems = problems_of(task("a", "requests_per_minute = 600") + task("b", "requests_per_minute = 300"))
    assert any("task 'b' [model]" in p and "task 'a' [model]" in p and "shared by every task" in p
               for p in problems), problems
    # the same values twice are fine
    parse(task("a", "requests_per_minute = 600") + task("b", "requests_per_minute = 600"))
