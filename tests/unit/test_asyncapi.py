"""schemas/asyncapi.yaml: valid AsyncAPI 3.0.0, and in step with the code and docs/ARCHITECTURE.md.

Each check is a function returning a list of problems, so a failure names every mismatch at once, and
`test_each_check_catches_a_broken_document` breaks the document in one place per check to show that
the check can fail. The AsyncAPI JSON Schema is vendored (tests/data/asyncapi/README.md): nothing here
touches the network.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

import pytest
import yaml
from jsonschema.validators import validator_for
from referencing import Registry
from referencing.exceptions import Unresolvable

from streams.calibration.registry import CalibratorKey
from streams.schemas import NON_TOPIC_SCHEMAS, SCHEMA_FOR_TOPIC, SCHEMAS_DIR
from streams.settings import TOPIC_NAMES, VARIABLES
from streams.topics import COMPACTED

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = SCHEMAS_DIR / "asyncapi.yaml"
SPEC_PATH = ROOT / "tests" / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"
SPEC_README = SPEC_PATH.parent / "README.md"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
PREFIX = "{prefix}"
COMPACT = "compact"

#: Where the "written by" column of the Topics table says it longer than the document's role names.
WRITER_ALIASES = {
    "every worker": "drift flush timer",  # `every worker (traffic, each second)` on drift.summaries
    "the leader's canary runs": "canary timer",
    "python -m streams drift baseline": "drift baseline command",
}

#: Senders the document names and the Topics table does not, with the reason. A stale entry fails.
EXTRA_SENDERS: dict[tuple[str, str], str] = {}

#: Keys the document states differently from the Topics table, with the reason. A stale entry fails.
KEY_DIFFERENCES: dict[str, tuple[str, str, str]] = {}


# --------------------------------------------------------------------------- loading


@cache
def _load_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
    return doc


@pytest.fixture
def doc() -> dict[str, Any]:
    """A fresh copy of the document, free to break."""
    return copy.deepcopy(_load_doc())


@cache
def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return spec


def _setting_default(name: str) -> str:
    return next(v.default for v in VARIABLES if v.name == name)


def _pointer(document: Any, fragment: str) -> Any:
    """The value at a JSON pointer ('' or '/a/b'); KeyError/IndexError if it is not there."""
    node = document
    for part in fragment.split("/")[1:] if fragment else []:
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow internal `$ref`s (as the document's channels, bindings and tags use them); {} if one dangles."""
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#"):
        try:
            node = _pointer(doc, node["$ref"][1:])
        except (KeyError, IndexError, ValueError, TypeError):
            return {}  # ref_problems names it
    return node


def _refs(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (location, $ref) in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield path or "/", value
            else:
                yield from _refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{path}/{i}")


def _channel_schema_file(doc: dict[str, Any], channel: dict[str, Any]) -> list[str]:
    """The payload schema file(s) of a channel's messages."""
    files = []
    for message in (channel.get("messages") or {}).values():
        schema = _resolve(doc, _resolve(doc, message).get("payload", {})).get("schema", {})
        files.append(str(schema.get("$ref", "")))
    return files


class Op(NamedTuple):
    name: str
    action: str
    channel: str  # the channel's id under `channels`
    role: str


def _operations(doc: dict[str, Any]) -> list[Op]:
    ops = []
    for name, op in (doc.get("operations") or {}).items():
        ref = str(op.get("channel", {}).get("$ref", ""))
        roles = [str(_resolve(doc, tag).get("name")) for tag in op.get("tags") or []]
        ops.append(Op(name, str(op.get("action")), ref.removeprefix("#/channels/"),
                      roles[0] if len(roles) == 1 else f"<{len(roles)} role tags>"))
    return ops


class Row(NamedTuple):
    key: str
    schema: str
    writers: str


def architecture_topics(text: str) -> dict[str, Row]:
    """The Topics table of docs/ARCHITECTURE.md: topic -> (key, schema path, written by)."""
    section = text.split("\n## Topics", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = Row(cells[1], cells[2].strip("`"), cells[3])
    return rows


def _key_name(cell: str) -> str:
    """'request id, else the source key' and 'request id (default partitioner)' -> 'request id'."""
    return re.split(r"[,(]", cell, maxsplit=1)[0].strip()


def _writers(cell: str) -> tuple[set[str], bool]:
    """The roles of a `written by` cell, and whether it says the topic is compacted."""
    roles, compacted = set(), False
    for part in cell.split(";"):
        name = re.sub(r"\([^)]*\)", "", part).replace("`", "").strip()
        if name == "compacted":
            compacted = True
        elif name:
            roles.add(WRITER_ALIASES.get(name, name))
    return roles, compacted


def _faust_agents() -> set[tuple[str, str]]:
    """(logical topic, agent name) of every `@app.agent(s.topics["X"], name="Y")` under streams/."""
    found = set()
    pattern = re.compile(r"""@app\.agent\(\s*\w+\.topics\[["'](\w+)["']\]\s*,\s*name=["']([\w-]+)["']""")
    for path in (ROOT / "streams").rglob("*.py"):
        found.update(pattern.findall(path.read_text(encoding="utf-8")))
    return found


# --------------------------------------------------------------------------- checks


def spec_problems(doc: dict[str, Any]) -> list[str]:
    """(a) Errors against the official AsyncAPI 3.0.0 JSON Schema."""
    return _problems(_spec(), doc)


def _problems(schema: dict[str, Any], instance: Any) -> list[str]:
    cls = validator_for(schema)
    # An explicit registry retrieves nothing (jsonschema's default would still fetch an unknown http
    # $ref, with a warning); the vendored schema bundles every definition under its $id.
    registry: Registry[Any] = Registry()
    validator = cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)
    return [f"{e.json_path}: {e.message[:300]}" for e in validator.iter_errors(instance)]


def topic_problems(doc: dict[str, Any]) -> list[str]:
    """(b) Channels are exactly the worker's topics (streams.settings.TOPIC_NAMES, streams.topics)."""
    problems = []
    channels = doc.get("channels") or {}
    addresses = {str(c.get("address")): cid for cid, c in channels.items()}
    for logical, topic in TOPIC_NAMES.items():
        if PREFIX + topic not in addresses:
            problems.append(f"topic {topic} ({logical}) has no channel with address {PREFIX}{topic}")
        elif addresses[PREFIX + topic] != logical:
            problems.append(f"channel of {topic} is {addresses[PREFIX + topic]!r}, not its logical name {logical!r}")
    for address, cid in addresses.items():
        if address.removeprefix(PREFIX) not in TOPIC_NAMES.values():
            problems.append(f"channel {cid} ({address}) is no topic the worker creates")
        if not address.startswith(PREFIX):
            problems.append(f"channel {cid} ({address}) does not start with the topic prefix {PREFIX}")
    prefix_default = _setting_default("STREAMS_TOPIC_PREFIX")
    partitions = int(_setting_default("STREAMS_PARTITIONS"))
    replicas = int(_setting_default("STREAMS_REPLICATION"))
    for cid, channel in channels.items():
        param = _resolve(doc, (channel.get("parameters") or {}).get("prefix"))
        if not isinstance(param, dict) or param.get("default") != prefix_default:
            problems.append(f"channel {cid}: parameter prefix missing or its default is not {prefix_default!r}")
        kafka = _resolve(doc, channel.get("bindings") or {}).get("kafka", {})
        compacted = COMPACT in kafka.get("topicConfiguration", {}).get("cleanup.policy", [])
        if compacted != (cid in COMPACTED):
            problems.append(f"channel {cid}: compacted is {compacted}, "
                            f"streams.topics.COMPACTED says {cid in COMPACTED}")
        if (kafka.get("partitions"), kafka.get("replicas")) != (partitions, replicas):
            problems.append(f"channel {cid}: partitions/replicas {kafka.get('partitions')}/{kafka.get('replicas')}, "
                            f"the defaults are {partitions}/{replicas}")
    return problems


def ref_problems(doc: dict[str, Any]) -> list[str]:
    """(c) Every $ref resolves; every payload schema is used, by the right channel; only the webhook's by none."""
    problems = []
    used: set[str] = set()
    for where, ref in _refs(doc):
        target, _, fragment = ref.partition("#")
        try:
            if not target:
                _pointer(doc, fragment)
                continue
            path = (DOC_PATH.parent / target).resolve()
            if not path.is_file():
                problems.append(f"{where}: $ref {ref} names no file")
                continue
            _pointer(json.loads(path.read_text(encoding="utf-8")), fragment)
            used.add(path.name)
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(f"{where}: $ref {ref} does not resolve")
    files = {p.name for p in SCHEMAS_DIR.glob("*.schema.json")}
    problems += [f"schemas/{name} is referenced by nothing" for name in sorted(files - used)]
    on_channels: set[str] = set()
    for cid, channel in (doc.get("channels") or {}).items():
        want = f"./{SCHEMA_FOR_TOPIC.get(cid, '?')}.schema.json"
        got = _channel_schema_file(doc, channel)
        on_channels.update(Path(g).name for g in got)
        if got != [want]:
            problems.append(f"channel {cid}: payload {got}, streams.schemas.SCHEMA_FOR_TOPIC says {want}")
    off_channels = {f.removesuffix(".schema.json") for f in files - on_channels}
    if off_channels != set(NON_TOPIC_SCHEMAS):
        problems.append(f"schemas on no channel {sorted(off_channels)}, "
                        f"streams.schemas.NON_TOPIC_SCHEMAS says {sorted(NON_TOPIC_SCHEMAS)}")
    return problems


def role_problems(doc: dict[str, Any]) -> list[str]:
    """Operations are well formed: one role tag each, messages of their own channel, both ends of every channel."""
    problems = []
    role_names = {str(t.get("name")) for t in (doc.get("components", {}).get("tags") or {}).values()}
    channels = doc.get("channels") or {}
    for op in _operations(doc):
        raw = doc["operations"][op.name]
        if op.role not in role_names:
            problems.append(f"operation {op.name}: role {op.role!r} is not one of components.tags")
        if op.channel not in channels:
            problems.append(f"operation {op.name}: no channel {op.channel!r}")
        for message in raw.get("messages") or []:
            if not str(message.get("$ref", "")).startswith(f"#/channels/{op.channel}/messages/"):
                problems.append(f"operation {op.name}: message {message} is not one of its channel's")
    for cid in channels:
        actions = {op.action for op in _operations(doc) if op.channel == cid}
        if actions != {"send", "receive"}:
            problems.append(f"channel {cid}: operations {sorted(actions)}, want a sender and a receiver")
    return problems


def architecture_problems(doc: dict[str, Any], text: str) -> list[str]:
    """(d) Keys, payload schemas, compaction and writers match the Topics table of docs/ARCHITECTURE.md."""
    problems = []
    table = architecture_topics(text)
    if set(table) != set(TOPIC_NAMES.values()):
        problems.append(f"Topics table lists {sorted(table)}, the worker creates {sorted(TOPIC_NAMES.values())}")
    channels = doc.get("channels") or {}
    by_address = {str(c.get("address")).removeprefix(PREFIX): cid for cid, c in channels.items()}
    ops = _operations(doc)
    for topic, row in table.items():
        cid = by_address.get(topic)
        if cid is None:
            problems.append(f"{topic}: in the Topics table, no channel")
            continue
        channel = channels[cid]
        if [f"./{Path(row.schema).name}"] != _channel_schema_file(doc, channel):
            problems.append(f"{topic}: table payload {row.schema}, channel {_channel_schema_file(doc, channel)}")
        for message in (channel.get("messages") or {}).values():
            key = _resolve(doc, _resolve(doc, message).get("bindings", {})).get("kafka", {}).get("key", {})
            want = _key_name(row.key)
            got = str(_resolve(doc, key).get("title"))
            if topic in KEY_DIFFERENCES:
                table_key, doc_key, _ = KEY_DIFFERENCES[topic]
                if want != table_key:
                    problems.append(f"{topic}: the table's key is now {want!r}: update KEY_DIFFERENCES")
                want = doc_key
            if got != want:
                problems.append(f"{topic}: key {got!r}, the Topics table says {want!r}")
        writers, compacted = _writers(row.writers)
        senders = {op.role for op in ops if op.channel == cid and op.action == "send"}
        extras = {role for (t, role) in EXTRA_SENDERS if t == topic}
        problems += [f"{topic}: EXTRA_SENDERS lists {r!r}, which the table names now" for r in extras & writers]
        if senders != writers | extras:
            problems.append(f"{topic}: senders {sorted(senders)}, the Topics table says {sorted(writers)}"
                            + (f" plus {sorted(extras)}" if extras else ""))
        kafka = _resolve(doc, channel.get("bindings") or {}).get("kafka", {})
        if compacted != (COMPACT in kafka.get("topicConfiguration", {}).get("cleanup.policy", [])):
            problems.append(f"{topic}: the Topics table says compacted={compacted}, the channel binding does not")
    return problems


def agent_problems(doc: dict[str, Any]) -> list[str]:
    """Receivers that are Faust agents are exactly the code's `@app.agent(s.topics[...], name=...)`."""
    in_code = {(logical, f"{name} agent") for logical, name in _faust_agents()}
    in_doc = {(op.channel, op.role) for op in _operations(doc) if op.action == "receive" and op.role.endswith(" agent")}
    return ([f"Faust agent {r!r} reads {t} but the document has no such receive operation"
             for t, r in sorted(in_code - in_doc)]
            + [f"receive operation of {r!r} on {t} is no Faust agent over that topic in streams/"
               for t, r in sorted(in_doc - in_code)])


def key_pattern_problems(doc: dict[str, Any]) -> list[str]:
    """The calibrator key's pattern matches what the code writes."""
    key = doc["components"]["messageBindings"]["calibratorKey"]["kafka"]["key"]
    written = CalibratorKey("sentiment", "first_token_logprobs", "gemma-3-270m").topic_key().decode()
    return [] if re.search(key.get("pattern", "(?!)"), written) else [f"calibrator key {written!r} does not match"]


# --------------------------------------------------------------------------- tests


def test_the_vendored_asyncapi_schema_is_the_one_its_readme_names() -> None:
    digest = hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest()
    assert digest in SPEC_README.read_text(encoding="utf-8")
    spec = _spec()
    assert spec["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    validator_for(spec).check_schema(spec)


def test_document_is_valid_asyncapi_3(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert spec_problems(doc) == []


def test_validation_fetches_nothing() -> None:
    with pytest.raises(Unresolvable):
        _problems({"$ref": "http://asyncapi.com/definitions/9.9.9/nothing.json"}, {})


def test_every_topic_is_a_channel_and_every_channel_a_topic(doc: dict[str, Any]) -> None:
    assert topic_problems(doc) == []


def test_every_payload_schema_is_referenced_and_every_ref_resolves(doc: dict[str, Any]) -> None:
    assert ref_problems(doc) == []


def test_operations_name_one_role_and_their_own_channels_messages(doc: dict[str, Any]) -> None:
    assert role_problems(doc) == []


def test_keys_payloads_and_writers_match_the_architecture_topics_table(doc: dict[str, Any]) -> None:
    assert architecture_problems(doc, ARCHITECTURE.read_text(encoding="utf-8")) == []


def test_faust_agents_are_the_documented_receivers(doc: dict[str, Any]) -> None:
    assert len(_faust_agents()) >= 6  # the regex still finds the agents
    assert agent_problems(doc) == []


def test_calibrator_key_pattern_matches_the_code(doc: dict[str, Any]) -> None:
    assert key_pattern_problems(doc) == []


# --------------------------------------------------------------------------- each check can fail


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return mutate


_DELETE = object()
_CB = "components/channelBindings"
_MB = "components/messageBindings"

BREAKAGES: list[tuple[str, Callable[[dict[str, Any]], list[str]], Callable[[dict[str, Any]], None]]] = [
    ("spec: unknown action", spec_problems, _set("operations/producers.sendRequests/action", "publish")),
    ("spec: cleanup.policy not a list", spec_problems,
     _set(f"{_CB}/compactedTopic/kafka/topicConfiguration/cleanup.policy", COMPACT)),
    ("spec: server without protocol", spec_problems, _set("servers/kafka/protocol", _DELETE)),
    ("topics: a channel missing", topic_problems, _set("channels/drift_status", _DELETE)),
    ("topics: wrong address", topic_problems, _set("channels/results/address", "{prefix}classify.result")),
    ("topics: not compacted", topic_problems, _set("channels/calibrators/bindings",
                                                    {"$ref": f"#/{_CB}/topic"})),
    ("topics: compacted", topic_problems, _set("channels/requests/bindings", {"$ref": f"#/{_CB}/compactedTopic"})),
    ("refs: a schema unreferenced", ref_problems, _set("components/messages/review_queue_alert", _DELETE)),
    ("refs: missing file", ref_problems, _set("components/messages/feedback/payload/schema/$ref",
                                               "./feedbacks.schema.json")),
    ("refs: dangling internal ref", ref_problems, _set("channels/review/messages/review_item/$ref",
                                                        "#/components/messages/nothing")),
    ("refs: payload on the wrong channel", ref_problems, _set("channels/review/messages",
                                                               {"m": {"$ref": "#/components/messages/feedback"}})),
    ("roles: two role tags", role_problems, _set("operations/producers.sendRequests/tags",
                                                  [{"$ref": "#/components/tags/producers"},
                                                   {"$ref": "#/components/tags/reviewers"}])),
    ("roles: another channel's message", role_problems, _set("operations/producers.sendRequests/messages",
                                                              [{"$ref": "#/channels/results/messages/"
                                                                        "classification_result"}])),
    ("roles: a channel nobody reads", role_problems, _set("operations/downstream.receiveDeadLetters", _DELETE)),
    ("table: wrong payload", lambda d: architecture_problems(d, ARCHITECTURE.read_text(encoding="utf-8")),
     _set("channels/examples/messages/labelled_example/$ref", "#/components/messages/drift_alert")),
    ("table: wrong key title", lambda d: architecture_problems(d, ARCHITECTURE.read_text(encoding="utf-8")),
     _set(f"{_MB}/task/kafka/key/title", "task name")),
    ("table: writer missing", lambda d: architecture_problems(d, ARCHITECTURE.read_text(encoding="utf-8")),
     _set("operations/calibrateCommand.sendExamples", _DELETE)),
    ("table: extra writer", lambda d: architecture_problems(d, ARCHITECTURE.read_text(encoding="utf-8")),
     _set("operations/downstream.receiveResults/action", "send")),
    ("agents: a Faust agent undocumented", agent_problems, _set("operations/refitAgent.receiveExamples", _DELETE)),
    ("agents: a receiver that is no agent", agent_problems, _set("components/tags/reviewQueue/name",
                                                                  "review-queue agent")),
    ("calibrator key pattern", key_pattern_problems, _set(f"{_MB}/calibratorKey/kafka/key/pattern", "^[^/]+$")),
]


@pytest.mark.parametrize(("check", "mutate"), [(c, m) for _, c, m in BREAKAGES], ids=[n for n, _, _ in BREAKAGES])
def test_each_check_catches_a_broken_document(doc: dict[str, Any], check: Callable[[dict[str, Any]], list[str]],
                                             mutate: Callable[[dict[str, Any]], None]) -> None:
    assert check(doc) == []
    mutate(doc)
    assert check(doc) != []


def test_the_table_check_catches_a_changed_table(doc: dict[str, Any]) -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert architecture_problems(doc, text) == []
    for old, new in [("| `drift.alerts` | task |", "| `drift.alerts` | alert id |"),
                     ("| drift agent; compacted |", "| drift agent |"),
                     ("| feedback agent; calibrate command |", "| feedback agent |"),
                     ("| `classify.calibrators` | calibrator key (`task/method@model`) |",
                      "| `classify.calibrators` | task |"),
                     ("| classify agent; feedback agent |\n| `classify.feedback`",
                      "| classify agent |\n| `classify.feedback`")]:
        assert old in text, old
        assert architecture_problems(doc, text.replace(old, new)) != [], new
