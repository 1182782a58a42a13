"""streams.tasks: loading and validating the task file, env expansion, prompt rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.tasks import (
    DEFAULT_TEMPLATE,
    Example,
    ModelEndpoint,
    Prompt,
    TaskRegistry,
    load_tasks,
    parse_tasks,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TASKS_FILE = REPO_ROOT / "config" / "tasks.toml"

MINIMAL = """
[[task]]
name = "t"
labels = ["yes", "no"]
[task.model]
base_url = "http://127.0.0.1:8080/v1"
name = "m"
"""


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_tasks(text, "test", env={} if env is None else env)
    assert info.value.source == "test"
    return info.value.problems


def has(problems: list[str], *fragments: str) -> bool:
    """Some single problem contains every fragment."""
    return any(all(f in p for f in fragments) for p in problems)


# --- the repo's task file -------------------------------------------------------------------------


def test_repo_task_file_loads() -> None:
    reg = load_tasks(TASKS_FILE, env={})
    assert isinstance(reg, TaskRegistry)
    assert reg.source == str(TASKS_FILE)
    assert "movie_sentiment" in reg
    task = reg.get("movie_sentiment")
    assert task is not None
    assert task.labels == ("fresh", "rotten")
    assert len(task.prompt.examples) == 4
    assert [ex.label for ex in task.prompt.examples] == ["fresh", "rotten", "fresh", "rotten"]
    assert task.prompt.template.count("{text}") == 1
    assert task.model.base_url == "http://127.0.0.1:8080/v1"
    assert task.model.name == "gemma3-270m"
    assert task.model.api_key_env is None
    assert task.model.top_logprobs == 20
    assert task.model.temperature == 0.0
    # Tunables are edited as the model is evaluated; check they are sane, not their exact values.
    assert 0.0 < task.review_threshold <= 1.0
    assert 0.0 <= task.min_label_mass <= 1.0


def test_repo_task_file_uses_env_when_set() -> None:
    env = {"MODEL_BASE_URL": "https://llm.example/v1", "MODEL_NAME": "big-model"}
    task = load_tasks(TASKS_FILE, env=env).tasks["movie_sentiment"]
    assert task.model.base_url == "https://llm.example/v1"
    assert task.model.name == "big-model"


def test_minimal_task_gets_defaults() -> None:
    reg = parse_tasks(MINIMAL, "test", env={})
    assert len(reg) == 1
    t = reg.tasks["t"]
    assert t.prompt == Prompt(system="", template=DEFAULT_TEMPLATE, examples=())
    assert t.model == ModelEndpoint("http://127.0.0.1:8080/v1", "m", None, 20, 0.0)
    assert t.review_threshold == 0.8
    assert t.min_label_mass == 0.5
    assert reg.get("missing") is None
    assert "missing" not in reg


# --- environment expansion ------------------------------------------------------------------------

ENV_TASK = """
[[task]]
name = "t"
labels = ["yes", "no"]
[task.model]
base_url = "${BASE:-http://default:1/v1}"
name = "${MODEL}"
"""


def test_env_default_used_when_unset() -> None:
    t = parse_tasks(ENV_TASK, "test", env={"MODEL": "m1"}).tasks["t"]
    assert t.model.base_url == "http://default:1/v1"
    assert t.model.name == "m1"


def test_env_value_used_when_set() -> None:
    t = parse_tasks(ENV_TASK, "test", env={"MODEL": "m1", "BASE": "https://set:2/v1"}).tasks["t"]
    assert t.model.base_url == "https://set:2/v1"


def test_env_set_to_empty_string_wins_over_default() -> None:
    text = MINIMAL.replace('name = "m"', 'name = "x${SUFFIX:-dflt}"')
    t = parse_tasks(text, "test", env={"SUFFIX": ""}).tasks["t"]
    assert t.model.name == "x"


def test_env_expansion_inside_longer_strings_and_lists() -> None:
    text = """
[[task]]
name = "t"
labels = ["${A:-yes}", "no"]
[task.model]
base_url = "http://${HOST:-localhost}:${PORT:-8080}/v1"
name = "m"
"""
    t = parse_tasks(text, "test", env={"PORT": "9000"}).tasks["t"]
    assert t.model.base_url == "http://localhost:9000/v1"
    assert t.labels == ("yes", "no")


def test_env_without_default_and_unset_is_error_naming_path_and_variable() -> None:
    problems = problems_of(ENV_TASK, env={})
    assert has(problems, "task[0] (t).model.name", "MODEL", "not set")


def test_env_unset_inside_list_names_index() -> None:
    text = MINIMAL.replace('labels = ["yes", "no"]', 'labels = ["yes", "${NOPE}"]')
    problems = problems_of(text)
    assert has(problems, "task[0] (t).labels[1]", "NOPE")


# --- collected errors -----------------------------------------------------------------------------

BROKEN = """
[[task]]
name = "x"
labels = ["only"]
[task.model]
base_url = "http://127.0.0.1:8080/v1"
[task.routing]
review_threshold = 1.5

[[task]]
name = "y"
labels = ["a", "b"]
[task.model]
base_url = "http://127.0.0.1:8080/v1"
name = "m"
api_key = "sk-secret"
api_key_env = "MISSING_KEY_VAR"
[task.prompt]
template = "no placeholder here"
[[task.prompt.examples]]
text = "hello"
label = "c"

[[task]]
name = "y"
labels = ["pos", "positive"]
[task.model]
base_url = "http://127.0.0.1:8080/v1"
name = "m"
"""


def test_all_problems_are_collected_with_field_paths() -> None:
    problems = problems_of(BROKEN)
    expected = [
        ("task[0] (x).labels", "at least two labels"),
        ("task[0] (x).routing.review_threshold", "1.5", "out of range"),
        ("task[0] (x).model.name", "missing"),
        ("task[1] (y).prompt.template", "{text}"),
        ("task[1] (y).prompt.examples[0].label", "'c'"),
        ("task[1] (y).model.api_key:", "must not be written"),
        ("task[1] (y).model.api_key_env", "MISSING_KEY_VAR", "not set"),
        ("task[2] (y).name", "duplicate", "'y'"),
        ("task[2] (y).labels", "'pos'", "'positive'", "prefix"),
    ]
    for fragments in expected:
        assert has(problems, *fragments), f"no problem with {fragments} in {problems}"
    assert len(problems) >= len(expected)


def test_secret_is_not_echoed_in_problems() -> None:
    problems = problems_of(BROKEN)
    assert not any("sk-secret" in p for p in problems)


def test_api_key_env_present_is_accepted() -> None:
    text = MINIMAL + 'api_key_env = "MY_KEY"\n'
    t = parse_tasks(text, "test", env={"MY_KEY": "k"}).tasks["t"]
    assert t.model.api_key_env == "MY_KEY"


@pytest.mark.parametrize(
    ("replace", "fragments"),
    [
        (('labels = ["yes", "no"]', 'labels = ["yes", "YES "]'), ("task[0] (t).labels", "differ ignoring case")),
        (('labels = ["yes", "no"]', 'labels = ["yes", ""]'), ("task[0] (t).labels[1]", "non-empty")),
        (('labels = ["yes", "no"]', 'labels = ["yes", 3]'), ("task[0] (t).labels[1]", "non-empty")),
        (('labels = ["yes", "no"]', 'labels = "yes"'), ("task[0] (t).labels", "expected a list")),
        (('labels = ["yes", "no"]', ""), ("task[0] (t).labels", "missing")),
        (('name = "t"', 'name = "has space"'), ("task[0] (has space).name", "letters, digits")),
        (('base_url = "http://127.0.0.1:8080/v1"', 'base_url = "ftp://x"'), ("task[0] (t).model.base_url", "http://")),
        (('name = "m"', 'name = "m"\ntop_logprobs = 21'), ("task[0] (t).model.top_logprobs", "out of range")),
        (('name = "m"', 'name = "m"\ntop_logprobs = 2.5'), ("task[0] (t).model.top_logprobs", "expected a integer")),
        (('name = "m"', 'name = "m"\ntemperature = true'), ("task[0] (t).model.temperature", "got bool")),
        (('name = "m"', 'name = "m"\ntemperature = -0.1'), ("task[0] (t).model.temperature", "out of range")),
    ],
)
def test_single_problem_names_field(replace: tuple[str, str], fragments: tuple[str, ...]) -> None:
    old, new = replace
    assert old in MINIMAL
    problems = problems_of(MINIMAL.replace(old, new, 1))
    assert has(problems, *fragments), problems


def test_missing_model_table_is_reported() -> None:
    text = '[[task]]\nname = "t"\nlabels = ["yes", "no"]\n'
    problems = problems_of(text)
    assert has(problems, "task[0] (t).model", "missing")


def test_invalid_toml_is_config_error() -> None:
    problems = problems_of("[[task]\nname = ")
    assert len(problems) == 1 and "not valid TOML" in problems[0]


@pytest.mark.parametrize("text", ["", "# nothing\n", "[other]\nx = 1\n", 'task = "x"\n', "task = []\n"])
def test_no_tasks_is_config_error(text: str) -> None:
    problems = problems_of(text)
    assert problems == ["no tasks: add at least one [[task]] table"]


@pytest.mark.parametrize("text", ["task = [1]\n", 'task = ["a"]\n'])
def test_task_entries_that_are_not_tables_are_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_tasks(text, "test", env={})


def test_missing_file_mentions_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_tasks(missing, env={})
    assert info.value.source == str(missing)
    assert any("STREAMS_TASKS_FILE" in p for p in info.value.problems)


def test_load_tasks_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    reg = load_tasks(path, env={})
    assert list(reg.tasks) == ["t"]
    assert reg.source == str(path)


# --- Prompt ---------------------------------------------------------------------------------------


def test_prompt_messages_order() -> None:
    p = Prompt(
        system="You classify.",
        template="Q: {text}\nA:",
        examples=(Example("good", "yes"), Example("bad", "no")),
    )
    assert p.messages("meh") == [
        {"role": "system", "content": "You classify."},
        {"role": "user", "content": "Q: good\nA:"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "Q: bad\nA:"},
        {"role": "assistant", "content": "no"},
        {"role": "user", "content": "Q: meh\nA:"},
    ]


def test_prompt_without_system_or_examples() -> None:
    p = Prompt(system="", template="<{text}>", examples=())
    assert p.messages("x") == [{"role": "user", "content": "<x>"}]


def test_prompt_braces_in_user_text_stay_literal() -> None:
    p = Prompt(system="", template="[{text}]", examples=())
    assert p.render("{text} {0} {} {{x}} %s") == "[{text} {0} {} {{x}} %s]"
    assert p.messages("{text} {0} {}")[-1]["content"] == "[{text} {0} {}]"


def test_prompt_from_task_file_renders_text_inside_markers() -> None:
    task = load_tasks(TASKS_FILE, env={}).tasks["movie_sentiment"]
    msgs = task.prompt.messages("Great {fun}")
    assert task.prompt.system == ""  # the repo file sets no system prompt
    assert len(msgs) == 2 * 4 + 1
    assert msgs[-1]["role"] == "user"
    assert "<<<REVIEW\nGreat {fun}\nREVIEW>>>" in msgs[-1]["content"]
    assert [m["content"] for m in msgs if m["role"] == "assistant"] == ["fresh", "rotten", "fresh", "rotten"]


# --- ModelEndpoint.api_key ------------------------------------------------------------------------


def test_api_key_reads_named_variable() -> None:
    ep = ModelEndpoint("http://x/v1", "m", "MY_KEY", 20, 0.0)
    assert ep.api_key({"MY_KEY": "sk-123"}) == "sk-123"


def test_api_key_missing_variable_raises_keyerror() -> None:
    ep = ModelEndpoint("http://x/v1", "m", "MY_KEY", 20, 0.0)
    with pytest.raises(KeyError):
        ep.api_key({})


def test_api_key_placeholder_when_no_env_name() -> None:
    ep = ModelEndpoint("http://x/v1", "m", None, 20, 0.0)
    assert ep.api_key({}) == "not-needed"
    assert ep.api_key({"OPENAI_API_KEY": "sk"}) == "not-needed"
