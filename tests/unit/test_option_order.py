"""Option order (issue 18): `[task.prompt] option_order = "shuffled"` lists each request's options in an order
drawn from its id, re-assigns letter and digit codes in that order, and every confidence method still maps the
answer back to the right label (`Task.for_request`, applied once by `MethodRunner.run`)."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest

from streams.classify.model_client import ModelClient
from streams.confidence.methods import MethodRunner
from streams.confidence.names import METHOD_NAMES
from streams.errors import ConfigError
from streams.localdev.synthetic_model import SyntheticConfig, SyntheticModelServer, option_codes
from streams.tasks import Task, parse_tasks, shuffled_order

NAMES = ("account_access", "account_deletion", "billing_refund", "billing_invoice", "shipping_delay")
LABELS = str(list(NAMES)).replace("'", '"')
EXAMPLE = '[[task.prompt.examples]]\ntext = "I was charged twice"\nlabel = "billing_refund"'


def _task(labels: str = LABELS, codes: str = 'codes = "letters"', order: str = "shuffled",
          base_url: str = "http://127.0.0.1:9/v1", method: str = "first_token_logprobs") -> Task:
    toml = f"""
[[task]]
name = "support"
labels = {labels}
{codes}
[task.model]
base_url = "{base_url}"
name = "synthetic"
[task.prompt]
option_order = "{order}"
{EXAMPLE if "billing_refund" in labels else ""}
[task.confidence]
methods = ["{method}"]
[task.confidence.ensemble]
members = ["first_token_logprobs", "verbalized"]
[task.confidence.self_consistency]
budget = 4
"""
    return parse_tasks(toml, "tasks.toml", {}).tasks["support"]


def _listed(task: Task) -> list[str]:
    """The option lines of the request's prompt, in the order shown."""
    return task.prompt.messages("x")[0]["content"].splitlines()[1:]


def test_the_order_is_a_function_of_the_request_id_alone() -> None:
    a, b = _task(), _task()  # two parses: nothing but the id decides
    assert a.for_request("req-7") == b.for_request("req-7")
    assert a.for_request("req-7").prompt.messages("t") == b.for_request("req-7").prompt.messages("t")
    orders = {tuple(_listed(a.for_request(f"req-{i}"))) for i in range(30)}
    assert len(orders) > 20  # 120 permutations of 5: different ids see different orders
    assert shuffled_order("req-7", 5) == shuffled_order("req-7", 5)
    assert sorted(shuffled_order("req-7", 50)) == list(range(50))


def test_a_fixed_order_is_the_task_itself() -> None:
    t = _task(order="fixed")
    assert t.for_request("req-7") is t and t.prompt.option_order == "fixed"


def test_letters_follow_the_shuffled_list_and_the_examples_answer_with_them() -> None:
    u = _task().for_request("req-3")
    lines = _listed(u)
    assert [line[0] for line in lines] == list("ABCDE")  # codes name positions: the first listed is always A
    assert [line.split(") ")[1] for line in lines] != list(NAMES)  # this id's order is not the file's
    shown = {line.split(") ")[1]: line[0] for line in lines}
    assert tuple(shown[name] for name in NAMES) == u.answers  # Task.answers maps each label to its shown code
    assert u.labels == NAMES  # labels keep their order, so probabilities stay indexed by label
    assert u.prompt.examples[0].answer == shown["billing_refund"]
    assert option_codes(u.prompt.messages("x")) == shown


def test_named_codes_move_with_their_labels() -> None:
    labels = '[{name = "bad", code = "N"}, {name = "good", code = "G"}, {name = "meh", code = "M"}]'
    t = _task(labels, codes="")
    orders = {tuple(_listed(t.for_request(f"r{i}"))) for i in range(12)}
    assert len(orders) > 1
    for order in orders:
        assert sorted(order) == ["G) good", "M) meh", "N) bad"]
    assert t.for_request("r1").answers == ("N", "G", "M")


def test_descriptions_without_codes_are_shuffled_and_answered_by_name() -> None:
    t = _task('[{name = "fresh", description = "liked"}, {name = "rotten", description = "disliked"}]', codes="")
    seen = {tuple(_listed(t.for_request(f"r{i}"))) for i in range(12)}
    assert seen == {("- fresh: liked", "- rotten: disliked"), ("- rotten: disliked", "- fresh: liked")}
    assert all(t.for_request(f"r{i}").answers == ("fresh", "rotten") for i in range(12))


def test_applying_it_twice_changes_nothing() -> None:
    """An ensemble's members run through the runner again; the order drawn for the request must stay."""
    u = _task().for_request("req-3")
    assert u.prompt.option_order == "fixed" and u.for_request("req-3") is u and u.for_request("other") is u


def test_every_label_is_listed_first_equally_often() -> None:
    """The draw has no position bias of its own: each of 10 labels is first in about a tenth of 5000 ids."""
    firsts = Counter(shuffled_order(f"id-{i}", 10)[0] for i in range(5000))
    assert len(firsts) == 10 and all(abs(c - 500) < 100 for c in firsts.values())  # ~ 4.7 binomial sd


@pytest.mark.parametrize("labels,codes,problem", [
    (LABELS.replace("account_", "a"), "", '"shuffled" reorders the option list, and this task shows none'),
    (LABELS, 'codes = "letters"', None),
])
def test_shuffling_needs_an_option_list(labels: str, codes: str, problem: str | None) -> None:
    if problem is None:
        assert _task(labels, codes).prompt.option_order == "shuffled"
        return
    with pytest.raises(ConfigError) as exc:
        _task(labels, codes)
    assert any(p.startswith("task[0] (support).prompt.option_order: ") and problem in p for p in exc.value.problems)


def test_an_unknown_order_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        _task(order="random")
    assert any("prompt.option_order: 'random'; use one of ['fixed', 'shuffled']" in p for p in exc.value.problems)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_maps_shuffled_codes_to_the_right_label(method: str) -> None:
    """The synthetic model answers the code its prompt lists for the marked label; with the list shuffled that code
    differs per request, and every method must still name the marked label. A replay gives the same scores."""
    ids = [f"r{i}" for i in range(6)]
    marked = ("billing_invoice", "account_access", "shipping_delay")

    async def go() -> list[tuple[str, np.ndarray | None, np.ndarray | None]]:
        cfg = SyntheticConfig(list(NAMES), [0.2] * 5, seed=3)
        async with SyntheticModelServer(cfg) as server:
            task = _task(base_url=server.base_url, method=method)
            client = ModelClient(5, 1)
            runner = MethodRunner(client)
            out = []
            try:
                for i, rid in enumerate(ids):
                    text = f"help [[label={marked[i % 3]}]]"
                    first = await runner.run(task, method, text, rid)
                    again = await runner.run(task, method, text, rid)
                    out.append((marked[i % 3], first.raw, again.raw))
            finally:
                await client.close()
            return out

    codes = {_task().for_request(rid).answers[NAMES.index(marked[i % 3])] for i, rid in enumerate(ids)}
    assert len(codes) > 1  # the marked labels were answered with several different codes
    for label, raw, again in asyncio.run(go()):
        assert raw is not None and NAMES[int(np.argmax(raw))] == label
        assert again is not None and np.array_equal(raw, again)
