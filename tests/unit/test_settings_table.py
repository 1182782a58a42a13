"""streams.settings.VARIABLES: one declaration per environment variable drives parsing, ENV_DEFAULTS and the README."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.settings import ENV_DEFAULTS, VARIABLES, Choice, Integer, Invalid, Number, Settings, Var, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- env-table:start", "<!-- env-table:end -->"


def readme_table() -> str:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text, f"README.md lost its {START} ... {END} markers"
    block = text[text.index(START):text.index(END)]
    return block.split("\n", 1)[1]  # drop the start marker's line


def test_readme_table_is_the_generated_one() -> None:
    assert readme_table() == markdown_table(), (
        "README.md's table of environment variables differs from streams/settings.py VARIABLES; "
        "paste the output of `python -m streams.settings` between the env-table markers")


def test_readme_table_has_one_row_per_variable() -> None:
    rows = markdown_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [v.name for v in VARIABLES]


def test_each_variable_is_declared_once_with_a_description() -> None:
    names = [v.name for v in VARIABLES]
    assert len(names) == len(set(names))
    assert all(n.startswith("STREAMS_") for n in names)
    assert all(v.doc.strip() for v in VARIABLES)


def test_the_table_fills_every_settings_field_and_settings_declares_no_defaults() -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert {v.field for v in VARIABLES} == set(fields) - {"topics"}
    for f in fields.values():
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, (
            f"Settings.{f.name} declares a default; defaults live in VARIABLES")


def test_env_defaults_is_derived_from_the_table_and_gives_the_defaults() -> None:
    assert list(ENV_DEFAULTS) == [v.name for v in VARIABLES]
    assert ENV_DEFAULTS["STREAMS_DATA_DIR"] == ".llm-classify-data", "references to other variables resolved"
    assert Settings.from_env(ENV_DEFAULTS) == Settings.from_env({})


def test_defaults_come_from_the_table() -> None:
    s = Settings.from_env({})
    for var in VARIABLES:
        if var.field == "sasl_password":
            continue
        parsed = var.parse(var.name, ENV_DEFAULTS[var.name])
        assert getattr(s, var.field) == parsed, var.name


def test_data_dir_default_follows_the_app_id_even_when_set_blank() -> None:
    assert Settings.from_env({"STREAMS_APP_ID": "svc", "STREAMS_DATA_DIR": " "}).data_dir == Path(".svc-data")


def test_blank_security_protocol_means_the_default() -> None:
    assert Settings.from_env({"STREAMS_SECURITY_PROTOCOL": " "}).security_protocol == "PLAINTEXT"


BOUNDED = [v for v in VARIABLES if isinstance(v.parse, Integer | Number)]


@pytest.mark.parametrize("var", BOUNDED, ids=[v.name for v in BOUNDED])
def test_every_range_in_the_table_is_enforced(var: Var) -> None:
    parser = var.parse
    assert isinstance(parser, Integer | Number)
    kind = "a whole number" if isinstance(parser, Integer) else "a value"
    room = {"STREAMS_MAX_IN_FLIGHT": "100000"} if var.name == "STREAMS_MIN_IN_FLIGHT" else {}  # min <= max
    for ok in (parser.low, parser.high):
        assert getattr(Settings.from_env(room | {var.name: str(ok)}), var.field) == ok
    for bad in (parser.low - 1, parser.high + 1):
        with pytest.raises(ConfigError) as info:
            Settings.from_env(room | {var.name: str(bad)})
        [problem] = info.value.problems
        assert problem.startswith(f"{var.name}=") and "out of range" in problem
        assert f"set {kind} in [{parser.low}, {parser.high}]" in problem


CHOICES = [v for v in VARIABLES if isinstance(v.parse, Choice)]


@pytest.mark.parametrize("var", CHOICES, ids=[v.name for v in CHOICES])
def test_every_choice_in_the_table_is_enforced(var: Var) -> None:
    assert isinstance(var.parse, Choice)
    for choice in var.parse.choices:
        assert var.parse(var.name, choice.lower()) == choice, "case-insensitive, stored upper-case"
    with pytest.raises(Invalid) as info:
        var.parse(var.name, "nope")
    assert info.value.problems == [f"{var.name}='NOPE' is not one of {', '.join(var.parse.choices)}"]
    # End to end, a wrong value under a protocol that reads the variable is reported by name.
    env = {"STREAMS_SECURITY_PROTOCOL": "SASL_SSL", "STREAMS_SASL_USERNAME": "u", "STREAMS_SASL_PASSWORD": "p",
           "STREAMS_SASL_MECHANISM": "PLAIN", var.name: "nope"}
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert error.value.problems == [f"{var.name}='NOPE' is not one of {', '.join(var.parse.choices)}"]


def test_conditional_variables_say_when_they_are_read() -> None:
    rows = {row.split("`")[1]: row for row in markdown_table().splitlines()[2:]}
    assert "read only when `STREAMS_SECURITY_PROTOCOL` is SASL_PLAINTEXT or SASL_SSL, and then required" in (
        rows["STREAMS_SASL_USERNAME"])
    assert "SSL or SASL_SSL" in rows["STREAMS_SSL_CAFILE"] and "required" not in rows["STREAMS_SSL_CAFILE"]


def test_the_password_is_never_shown_in_the_table() -> None:
    password = next(v for v in VARIABLES if v.name == "STREAMS_SASL_PASSWORD")
    assert password.secret and password.default == ""
