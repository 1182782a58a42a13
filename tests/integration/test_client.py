"""streams.client on the real broker with a real worker and the synthetic model: the README's flow, a
reviewer's answer superseding the model, request/reply, and a worker killed with -9 mid-stream whose
replayed outputs the client's consumer yields only once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.client import (
    ClassifyTimeout,
    DeadLetter,
    DeadLettered,
    Outcome,
    OutcomeStream,
    Result,
    ReviewItem,
    StreamsClient,
)
from streams.localdev.broker import EmbeddedBroker
from tests.integration.harness import SyntheticModel, Worker, collect, produce, run, wait_ready, write_tasks

#: Threshold 0.8: the synthetic model gives unmarked texts p = 0.7 (review) and `[[label=X]]` ones 0.97 (auto).
THRESHOLD = 0.8


def marked(i: int) -> tuple[str, str]:
    label = "fresh" if i % 3 else "rotten"
    return f"confident {i} [[label={label}]]", label


@pytest.fixture(scope="module")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One worker for the tests that do not kill it."""
    workdir = tmp_path_factory.mktemp("client")
    with SyntheticModel(workdir) as model:
        w = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic",
                                                 threshold=THRESHOLD), workdir)
        with w.process() as proc:
            wait_ready(proc)
            yield w


async def read_until(stream: OutcomeStream, want: set[str], timeout_s: float) -> list[Outcome]:
    """Outcomes from `stream` until every id in `want` has come once."""
    got: list[Outcome] = []
    missing = set(want)
    async with asyncio.timeout(timeout_s):
        async for outcome in stream:
            got.append(outcome)
            missing.discard(outcome.id or "")
            if not missing:
                return got
    return got


def test_readme_flow_twenty_requests_in_and_their_outcomes_out(worker: Worker) -> None:
    """Publish 20 requests through the client and read their 20 results and review items back through it;
    then a reviewer's answer comes through once more as the final `human` result."""
    texts = [marked(i) for i in range(14)] + [(f"doubtful {i}", "fresh") for i in range(6)]

    async def go() -> tuple[list[str], list[Outcome], list[Outcome], float]:
        async with StreamsClient.from_settings(worker.settings, tasks=["sentiment"]) as client, \
                client.outcomes(start="latest", dead_letters=True) as stream:
            started = time.monotonic()
            ids = await client.publish_many({"task": "sentiment", "text": t, "metadata": {"n": i}}
                                            for i, (t, _) in enumerate(texts))
            got = await read_until(stream, set(ids), timeout_s=60)
            took = time.monotonic() - started
            answered = next(o.id for o in got if isinstance(o, ReviewItem))
            final: list[Outcome] = []
            async with asyncio.timeout(30):
                while not any(isinstance(o, Result) for o in final):
                    # The worker indexes review items a moment after it publishes them; until then it
                    # dead-letters an answer as `unknown_id`, and a reviewer would answer again.
                    await produce(worker.bootstrap, worker.topic("feedback"), [(answered.encode(), orjson.dumps(
                        {"id": answered, "task": "sentiment", "label": "rotten", "reviewer": "ann"}))])
                    final += await read_until(stream, {answered}, timeout_s=30)
        return ids, got, final, took

    ids, got, final, took = run(go())
    print(f"20 requests published and their outcomes read back in {took:.2f}s")
    assert len(ids) == len(set(ids)) == 20
    assert sorted(o.id or "" for o in got) == sorted(ids), "each request's outcome exactly once"
    by_id = {o.id: o for o in got}
    for i, rid in enumerate(ids):
        outcome = by_id[rid]
        assert not isinstance(outcome, DeadLetter)
        assert outcome.task == "sentiment" and outcome.metadata == {"n": i} and outcome.model == "synthetic"
        assert outcome.method == "first_token_logprobs" and outcome.raw["id"] == rid
        if i < 14:
            assert isinstance(outcome, Result) and outcome.decision == "auto" and outcome.review_reason is None
            assert outcome.label == texts[i][1] and outcome.confidence is not None and outcome.confidence > THRESHOLD
        else:
            assert isinstance(outcome, ReviewItem) and outcome.decision == "review"
            assert outcome.review_reason == "low_confidence" and outcome.text == texts[i][0]
            assert outcome.confidence is not None and outcome.confidence < THRESHOLD
        assert set(outcome.probabilities) == {"fresh", "rotten"}
    *refused, human = final
    assert all(isinstance(d, DeadLetter) and d.stage == "feedback" for d in refused)
    assert isinstance(human, Result) and human.decision == "human" and human.label == "rotten"
    assert human.raw["reviewer"] == "ann"


def test_classify_answers_within_the_timeout_and_reports_review_dead_letters_and_timeouts(worker: Worker) -> None:
    async def go() -> None:
        async with StreamsClient.from_settings(worker.settings) as client:
            started = time.monotonic()
            auto = await client.classify("A triumph [[label=fresh]]", "sentiment", timeout=20)
            took = time.monotonic() - started
            assert isinstance(auto, Result) and auto.decision == "auto" and auto.label == "fresh", auto
            assert auto.confidence is not None and auto.confidence > THRESHOLD

            started = time.monotonic()
            doubtful = await client.classify("Hard to say.", "sentiment", timeout=20, metadata={"ticket": 9})
            took_review = time.monotonic() - started
            assert isinstance(doubtful, ReviewItem) and doubtful.review_reason == "low_confidence"
            assert doubtful.label == "fresh" and doubtful.metadata == {"ticket": 9}
            print(f"classify: auto in {took:.2f}s (follower start included), review in {took_review:.2f}s")

            # Many at once share one follower; each call gets its own answer.
            texts = [marked(i) for i in range(8)] + [(f"unsure {i}", "") for i in range(4)]
            answers = await asyncio.gather(*(client.classify(t, "sentiment", timeout=20) for t, _ in texts))
            assert len({a.id for a in answers}) == len(texts)
            for (text, label), answer in zip(texts, answers, strict=True):
                assert (answer.label, type(answer)) == ((label, Result) if label else ("fresh", ReviewItem)), text

            with pytest.raises(DeadLettered) as refused:  # this client does not know the task list; the worker does
                await client.classify("Fine film.", "no_such_task", timeout=20)
            assert refused.value.dead_letter.error_type == "unknown_task"

            with pytest.raises(ClassifyTimeout) as late:
                await client.classify("Slow [[label=rotten]]", "sentiment", timeout=0.01, id="retry-me")
            again = await client.classify("Slow [[label=rotten]]", "sentiment", timeout=20, id="retry-me")
            assert late.value.request_id == again.id == "retry-me" and again.label == "rotten"

    run(go())


def test_a_worker_killed_mid_stream_replays_outputs_that_the_client_yields_once(
        broker: EmbeddedBroker, workdir: Path) -> None:
    n = 400
    at_kill = n // 4
    with SyntheticModel(workdir, "--latency-ms", "100") as model:
        # 16 calls of 100 ms at once: about 160 requests/s, so the stream outlasts the kill.
        worker = Worker(broker.bootstrap, write_tasks(workdir / "tasks.toml", model.base_url, model="synthetic",
                                                      threshold=THRESHOLD), workdir, partitions=4, max_in_flight=16)
        outputs = [worker.topic("results"), worker.topic("review")]
        first = wait_ready(worker.process().start())
        restarted = worker.process()

        yielded: Counter[str] = Counter()

        async def go() -> tuple[Counter[str], list[str]]:
            async with StreamsClient.from_settings(worker.settings) as client, \
                    client.outcomes(start="earliest") as stream:
                ids = await client.publish_many(
                    {"id": f"c{i}", "task": "sentiment", "text": marked(i)[0] if i % 4 else f"unsure {i}"}
                    for i in range(n))
                async with asyncio.timeout(120):
                    async for outcome in stream:
                        yielded[outcome.id or ""] += 1
                        if len(yielded) == at_kill and first.alive():
                            first.kill()  # SIGKILL with calls in flight and outputs not yet committed
                            await asyncio.to_thread(lambda: wait_ready(restarted.start()))
                        if len(yielded) == n:
                            break
                stream.idle_timeout = 2.0  # then whatever else comes, until 2 s pass without a record
                async for outcome in stream:
                    yielded[outcome.id or ""] += 1
            return yielded, ids

        try:
            try:
                yielded, ids = run(go())
            except TimeoutError:  # a stall: say where it stood and what each worker logged last
                raise AssertionError(
                    f"{len(yielded)} of {n} ids yielded in 120 s (first worker alive: {first.alive()}, restarted "
                    f"alive: {restarted.alive()})\n-- first worker:\n{first.tail(40)}\n-- restarted worker:\n"
                    f"{restarted.tail(40)}") from None
            raw = run(collect(broker.bootstrap, outputs, lambda g: len({r.key for r in g}) >= n,
                              timeout_s=30, settle_s=1))
        finally:
            first.kill()
            restarted.stop()

    per_id = Counter(r.json()["id"] for r in raw)
    duplicates = sum(c - 1 for c in per_id.values())
    print(f"sent {n}; raw outputs {len(raw)} for {len(per_id)} ids ({duplicates} duplicates from the replay "
          f"after kill -9 at {at_kill} outputs); the client yielded {sum(yielded.values())} for {len(yielded)} ids")
    assert set(per_id) == set(ids), "nothing lost"
    assert duplicates > 0, "the kill must leave replayed outputs on the topics, or this test proves nothing"
    assert set(yielded) == set(ids) and set(yielded.values()) == {1}, \
        f"ids yielded more than once: {[k for k, v in yielded.items() if v > 1][:10]}"
