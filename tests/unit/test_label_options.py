"""Tasks with many labels: label descriptions and option codes in the task file and the prompt, every confidence
method answering with codes (results still name labels), and first-token collisions refused at start."""

from __future__ import annotations

import asyncio
import http.server
import re
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streams.classify.model_client import ModelClient
from streams.confidence import probe
from streams.confidence.capabilities import Capabilities
from streams.confidence.collisions import collision_problems, collisions, first_segment, refuse_collisions
from streams.confidence.methods import MethodRunner
from streams.confidence.names import METHOD_NAMES
from streams.confidence.verbalized import parse
from streams.errors import ConfigError
from streams.localdev.synthetic_model import SyntheticConfig, SyntheticModelServer, option_codes
from streams.tasks import Task, parse_tasks

NAMES = ("account_access", "account_deletion", "billing_refund", "billing_invoice", "shipping_delay")


def _toml(labels: str, extra: str = "", base_url: str = "http://127.0.0.1:9/v1", methods: str = "") -> str:
    example = '[[task.prompt.examples]]\ntext = "I was charged twice"\nlabel = "billing_refund"\n'
    return f"""
[[task]]
name = "support"
labels = {labels}
{extra}
[task.model]
base_url = "{base_url}"
name = "synthetic"
[task.confidence]
methods = {methods or '["first_token_logprobs"]'}
[task.confidence.ensemble]
members = ["first_token_logprobs", "verbalized"]
[task.confidence.self_consistency]
budget = 4
{example if "billing_refund" in labels else ""}"""


def _task(labels: str = str(list(NAMES)).replace("'", '"'), extra: str = 'codes = "letters"', **kw: str) -> Task:
    return parse_tasks(_toml(labels, extra, **kw), "tasks.toml", {}).tasks["support"]


def _problems(toml: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_tasks(toml, "tasks.toml", {})
    return exc.value.problems


# ---------------------------------------------------------------------------------------------- task file


def test_descriptions_are_listed_in_the_prompt_without_codes() -> None:
    t = _task('["fresh", {name = "rotten", description = "the critic disliked it"}]', "")
    assert t.codes == () and t.answers == ("fresh", "rotten") and t.descriptions == ("", "the critic disliked it")
    system = t.prompt.messages("x")[0]
    assert system["role"] == "system" and system["content"] == "Labels:\n- fresh\n- rotten: the critic disliked it"


def test_letter_codes_are_listed_with_names_and_descriptions_and_answer_the_examples() -> None:
    t = _task('["account_access", {name = "account_deletion", description = "close my account"}, "billing_refund"]')
    assert t.codes == ("A", "B", "C") and t.answers == t.codes and t.labels[1] == "account_deletion"
    msgs = t.prompt.messages("hello")
    assert msgs[0]["content"] == ("Options (answer with one of the codes A, B or C, nothing else):\nA) account_access\n"
                                  "B) account_deletion: close my account\nC) billing_refund")
    assert msgs[2] == {"role": "assistant", "content": "C"}  # the few-shot example answers billing_refund's code


def test_the_code_header_names_every_valid_code_in_listed_order() -> None:
    """Told only "the code", Gemma 3 270M answered letters that code no option; the header names the valid ones."""
    labels = '[{name = "bad", code = "N"}, {name = "very bad", code = "V"}, {name = "fine", code = "K"}]'
    t = _task(labels, '[task.prompt]\noption_order = "shuffled"')
    for rid in ("r1", "r2", "r3"):
        header, *lines = t.for_request(rid).prompt.messages("x")[0]["content"].splitlines()
        listed = [line.split(")")[0] for line in lines]
        valid = f"{listed[0]}, {listed[1]} or {listed[2]}"
        assert header == f"Options (answer with one of the codes {valid}, nothing else):"
    assert option_codes(t.prompt.messages("x")) == {"bad": "N", "very bad": "V", "fine": "K"}  # the synthetic model


def test_the_options_placeholder_puts_the_list_in_the_template_and_braces_stay_literal() -> None:
    extra = 'codes = "digits"\n[task.prompt]\ntemplate = "Pick one.\\n{options}\\nText: {text}\\nCode:"'
    t = parse_tasks(_toml('["yes", {name = "no", description = "not {text}"}]', extra), "t", {}).tasks["support"]
    msgs = t.prompt.messages("{options} {text}")
    assert msgs[0]["role"] == "user"  # no system message: the template holds the list
    assert msgs[0]["content"] == ("Pick one.\nOptions (answer with one of the codes 1 or 2, nothing else):\n1) yes\n"
                                  "2) no: not {text}\n"
                                  "Text: {options} {text}\nCode:")


def test_named_codes_and_prefix_sharing_names_are_allowed_with_codes() -> None:
    t = _task('[{name = "bad", code = "N"}, {name = "very bad", code = "V"}]', "")
    assert t.codes == ("N", "V") and t.answers == ("N", "V")


@pytest.mark.parametrize("labels,extra,problem", [
    ('["bad", "very bad", "badly"]', "", "'bad' and 'badly' share a prefix"),
    ('[{name = "a", code = "X1"}, {name = "b", code = "X"}]', "", "codes: 'x1' and 'x' share a prefix"),
    ('[{name = "a", code = "x"}, {name = "b", code = "X"}]', "", "'x' is used twice"),
    ('[{name = "a", code = "A-1"}, {name = "b", code = "B"}]', "", "labels[0].code: 'A-1'"),
    ('[{name = "a", code = "A"}, "b"]', "", 'needs a `code` on every label'),
    ('[{name = "a", code = "A"}, {name = "b", code = "B"}]', 'codes = "letters"', "assigns the codes"),
    ('[{name = "a", code = "A"}, {name = "b", code = "B"}]', 'codes = "off"', "labels name codes"),
    (str([f"l{i}" for i in range(11)]).replace("'", '"'), 'codes = "digits"', "at most 10 codes for 11"),
    ('["a", {name = "b", description = "two\\nlines"}]', "", "labels[1].description: one line"),
    ('["a", "b"]', 'codes = "greek"', "codes: 'greek'"),
    ('["a", "b"]', 'accept_first_token_collisions = "yes"', "accept_first_token_collisions: expected a boolean"),
])
def test_codes_and_descriptions_are_validated_with_their_field_path(labels: str, extra: str, problem: str) -> None:
    problems = _problems(_toml(labels, extra))
    assert any(problem in p and p.startswith("task[0] (support).") for p in problems), problems


# ------------------------------------------------------------------------------ every method answers codes


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_maps_code_answers_to_labels(method: str) -> None:
    """The synthetic model answers the code of the label its marker names; each method turns that into the
    label's index, so the record (built from task.labels) names the label."""
    async def go() -> np.ndarray | None:
        cfg = SyntheticConfig(list(NAMES), [0.2] * 5, seed=3)
        async with SyntheticModelServer(cfg) as server:
            task = _task(base_url=server.base_url, methods=f'["{method}"]')
            client = ModelClient(5, 1)
            try:
                res = await MethodRunner(client).run(task, method, "refund me [[label=billing_invoice]]", "r1")
            finally:
                await client.close()
            return res.raw
    raw = asyncio.run(go())
    assert raw is not None and NAMES[int(np.argmax(raw))] == "billing_invoice"


def test_a_digit_code_is_not_read_as_a_probability() -> None:
    v = parse("1", ("1", "2", "3"))
    assert v.label == 0 and v.confidence is None
    assert parse("3 0.8", ("1", "2", "3")).confidence == pytest.approx(0.8)


def test_the_synthetic_model_reads_the_option_list() -> None:
    t = _task()
    codes = option_codes(t.prompt.messages("x"))
    assert codes == dict(zip(NAMES, "ABCDE", strict=True))
    ranked = SyntheticConfig(list(NAMES), [0.2] * 5).distribution("shipping_delay", codes)
    assert ranked[0][0] == "E" and option_codes([{"role": "user", "content": "no options"}]) == {}


# -------------------------------------------------------------------------------------------- collisions


def test_the_text_rule_groups_answers_by_their_first_segment() -> None:
    assert [first_segment(a) for a in ("Account_access", "account-deletion", "account x", "billing")] == [
        "account", "account", "account", "billing"]
    groups, how = collisions(_task(extra=""), lambda ep, answers: None)
    assert groups == [("account_access", "account_deletion"), ("billing_refund", "billing_invoice")]
    assert how.startswith("text rule")


def test_colliding_names_are_refused_for_first_token_scoring_with_every_fix_named() -> None:
    registry = parse_tasks(_toml(str(list(NAMES)).replace("'", '"')), "tasks.toml", {})
    with pytest.raises(ConfigError) as exc:
        refuse_collisions(registry, lambda ep, answers: None)
    (problem,) = exc.value.problems
    assert problem.startswith("task[0] (support).labels: 'account_access' / 'account_deletion'; "
                              "'billing_refund' / 'billing_invoice'")
    for fix in ('codes = "letters"', "sequence_scores", "accept_first_token_collisions = true"):
        assert fix in problem


@pytest.mark.parametrize("extra,methods", [
    ('codes = "letters"', ""),  # codes do not collide
    ("accept_first_token_collisions = true", ""),  # the task accepts the loss
    ("", '["sequence_scores"]'),  # no first-token scoring
])
def test_codes_the_flag_or_another_method_let_the_task_start(extra: str, methods: str) -> None:
    registry = parse_tasks(_toml(str(list(NAMES)).replace("'", '"'), extra, methods=methods), "t", {})
    assert collision_problems(registry, lambda ep, answers: None) == []


def test_an_ensemble_member_scoring_first_tokens_counts() -> None:
    registry = parse_tasks(_toml(str(list(NAMES)).replace("'", '"'), methods='["ensemble"]'), "t", {})
    assert len(collision_problems(registry, lambda ep, answers: None)) == 1


@pytest.fixture
def tokenizer() -> Iterator[tuple[str, list[dict]]]:
    """A llama.cpp-shaped /tokenize: 'acc' + rest for account_*, one token per other word."""
    bodies: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            text = body["content"]
            tokens = [1, 2] if text.startswith("account") else [hash(text) % 1000 + 10]
            out = orjson.dumps({"tokens": tokens})
            self.send_response(200 if self.path == "/tokenize" else 404)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_the_servers_tokenizer_decides_where_it_has_one(tokenizer: tuple[str, list[dict]]) -> None:
    """billing_refund and billing_invoice share a first segment but not (here) a first token."""
    base_url, bodies = tokenizer
    groups, how = collisions(_task(extra="", base_url=base_url))
    assert groups == [("account_access", "account_deletion")] and how == f"tokenizer of {base_url}"
    assert bodies[0] == {"content": "account_access", "prompt": "account_access", "model": "synthetic",
                         "add_special": False, "add_special_tokens": False}  # llama.cpp and vLLM both read it


def test_without_a_tokenizer_endpoint_the_text_rule_is_used() -> None:
    groups, how = collisions(_task(extra=""))  # nothing listens on port 9
    assert len(groups) == 2 and how.startswith("text rule")


# ------------------------------------------------------------------------- the task file's many-label example

ROOT = Path(__file__).resolve().parents[2]
TASK_FILES = (ROOT / "config" / "tasks.toml", ROOT / "deploy" / "k8s" / "tasks.toml")
NO_SERVER = {"MODEL_BASE_URL": "http://127.0.0.1:9/v1", "MODEL_API_KEY": "placeholder"}


def uncommented_example(path: Path) -> tuple[str, str]:
    """(the task file with its commented many-label example uncommented in place, the example alone): the block
    from the line "# [[task]]" to the first line that is not a comment, each line without its leading "# "."""
    lines = path.read_text(encoding="utf-8").splitlines()
    (start,) = [i for i, line in enumerate(lines) if line == "# [[task]]"]
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("#")), len(lines))
    example = [line[2:] if line.startswith("# ") else "" for line in lines[start:end]]
    return "\n".join([*lines[:start], *example, *lines[end:]]) + "\n", "\n".join(example) + "\n"


@pytest.mark.parametrize("path", TASK_FILES, ids=["config", "k8s"])
def test_the_tasks_files_many_label_example_parses_and_validates_uncommented(path: Path) -> None:
    shipped = parse_tasks(path.read_text(encoding="utf-8"), str(path), NO_SERVER)
    whole, _ = uncommented_example(path)
    registry = parse_tasks(whole, str(path), NO_SERVER)
    assert list(registry.tasks) == [*shipped.tasks, "support_intent"], "the example adds a task, changes none"
    t = registry.tasks["support_intent"]
    assert len(t.labels) == 10 and t.codes == tuple("ABCDEFGHIJ") and all(t.descriptions)
    assert t.prompt.option_order == "shuffled" and not t.accept_first_token_collisions
    assert [ex.answer for ex in t.prompt.examples] == [  # bare codes teach the answer format
        t.codes[t.labels.index(label)] for label in ("billing_dispute", "shipping_delay", "account_access")]
    assert "A) " in t.for_request("r1").prompt.messages("x")[0]["content"]
    # The point of the example: its names share first words, which codes make harmless.
    assert len(collisions(replace(t, codes=()), lambda ep, answers: None)[0]) == 3
    assert collision_problems(registry, lambda ep, answers: None) == []


def test_without_codes_the_example_is_refused_unless_it_accepts_the_loss() -> None:
    whole, _ = uncommented_example(TASK_FILES[0])
    off = whole.replace('codes = "letters"', 'codes = "off"')
    (problem,) = collision_problems(parse_tasks(off, "tasks.toml", NO_SERVER), lambda ep, answers: None)
    assert "(support_intent).labels: 'account_access' / 'account_deletion' / 'account_update'" in problem
    accepting = off.replace("# accept_first_token_collisions = true", "accept_first_token_collisions = true")
    assert collision_problems(parse_tasks(accepting, "tasks.toml", NO_SERVER), lambda ep, answers: None) == []


def test_the_k8s_copy_of_the_example_differs_only_in_naming_the_api_key() -> None:
    config, k8s = (tomllib.loads(uncommented_example(path)[1]) for path in TASK_FILES)
    assert k8s["task"][0]["model"].pop("api_key_env") == "MODEL_API_KEY"
    assert k8s == config


# ------------------------------------------------------------------------ the probe command refuses collisions


@pytest.fixture
def synthetic_in_thread() -> Iterator[SyntheticModelServer]:
    """The synthetic model (no /tokenize, so the text rule decides) on its own loop, for the blocking command."""
    loop = asyncio.new_event_loop()
    server = SyntheticModelServer(SyntheticConfig(list(NAMES), [0.2] * 5, seed=3))
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _probe(tmp_path: Path, monkeypatch: Any, base_url: str, codes: bool) -> int:
    tasks_file = tmp_path / "tasks.toml"
    tasks_file.write_text(_toml(str(list(NAMES)).replace("'", '"'), 'codes = "letters"' if codes else "",
                                base_url=base_url))
    monkeypatch.setenv("STREAMS_TASKS_FILE", str(tasks_file))
    return probe.main(["--cache", str(tmp_path / "probe.json")])


def test_the_probe_command_exits_2_naming_colliding_labels_and_0_with_codes(
        tmp_path: Path, monkeypatch: Any, capsys: Any, synthetic_in_thread: SyntheticModelServer) -> None:
    """The code its docstring gives for a task the worker would refuse, with the worker's message."""
    base_url = synthetic_in_thread.base_url
    assert _probe(tmp_path, monkeypatch, base_url, codes=False) == 2
    out, err = capsys.readouterr()
    assert "answers sharing a first token (text rule (no tokenizer endpoint)): account_access, account_deletion" in out
    (error,) = err.splitlines()
    assert error.startswith("error: task[0] (support).labels: 'account_access' / 'account_deletion'; "
                            "'billing_refund' / 'billing_invoice' start with the same first token")
    assert 'codes = "letters"' in error and "accept_first_token_collisions = true" in error
    assert _probe(tmp_path, monkeypatch, base_url, codes=True) == 0
    out, err = capsys.readouterr()
    assert err == "" and "answers sharing a first token" not in out


def test_the_probe_command_asks_the_servers_tokenizer(
        tmp_path: Path, monkeypatch: Any, capsys: Any, tokenizer: tuple[str, list[dict]]) -> None:
    """Against a server with /tokenize (its capabilities already cached, so no chat calls): its first tokens
    decide, so only the account_* labels collide (billing_* do not on this tokenizer)."""
    base_url, bodies = tokenizer
    caps = Capabilities(base_url, "synthetic", True, 20, True, False, True, True, True, 8)
    (tmp_path / "probe.json").write_bytes(orjson.dumps({f"{base_url} synthetic": caps.to_json() | {"_stored": 4e9}}))
    assert _probe(tmp_path, monkeypatch, base_url, codes=False) == 2
    err = capsys.readouterr().err
    assert re.search(r"\(support\)\.labels: 'account_access' / 'account_deletion' start with the same first "
                     rf"token \(tokenizer of {re.escape(base_url)}\)", err) and "billing" not in err.split(";")[0]
    assert {b["content"] for b in bodies} >= set(NAMES)
    assert _probe(tmp_path, monkeypatch, base_url, codes=True) == 0
