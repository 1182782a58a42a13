"""Traces across Kafka: one trace from a producer's span to the result, a span per model call.

In process, with OpenTelemetry's in-memory exporter: the real `Classifier` and `ModelClient` against
the project's synthetic model over HTTP, and the worker's `KafkaPublisher` over a recording producer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streams.calibration.loop import FeedbackHandler, with_trace
from streams.classify.model_client import ModelClient
from streams.classify.records import Source
from streams.classify.service import Classifier
from streams.localdev.synthetic_model import SyntheticConfig, SyntheticModelServer
from streams.ops.tracing import Tracing, current_headers, trace_headers
from streams.publishing import KafkaPublisher, Output
from streams.tasks import parse_tasks

TASKS = """
[[task]]
name = "sc"
labels = ["fresh", "rotten"]
[task.model]
base_url = "{url}"
name = "synthetic"
[task.confidence]
methods = ["self_consistency"]
[task.confidence.self_consistency]
batch = 1
min_samples = 3
"""


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, Any]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: Any) -> asyncio.Future[None]:
        self.sent.append((topic, key, value, headers))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _traceparent(headers: Any) -> str:
    return dict(trace_headers(headers))["traceparent"].decode()


def test_one_trace_runs_from_the_producer_through_every_model_call_to_the_result() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.exporting(exporter, "worker", batch=False)
    producer_side = TracerProvider()
    producer_side.add_span_processor(SimpleSpanProcessor(exporter))
    recorder = RecordingProducer()

    async def go() -> tuple[list[Output], int]:
        async with SyntheticModelServer(SyntheticConfig(seed=2)) as server:
            tasks = parse_tasks(TASKS.format(url=server.base_url), "test", {})
            client = ModelClient(5, 0, tracing=tracing)
            classifier = Classifier(tasks, client, 1000, 256, tracing=tracing)
            with producer_side.get_tracer("producer").start_as_current_span("send request",
                                                                            kind=trace.SpanKind.PRODUCER):
                headers = current_headers()  # what a tracing producer puts on its request
            raw = orjson.dumps({"id": "r1", "task": "sc", "text": "a fine film"})
            outputs = await classifier.process(raw, b"r1", Source("classify.requests", 0, 1), headers)

            async def producer() -> RecordingProducer:
                return recorder

            publish = KafkaPublisher(producer, {"results": "classify.results", "review": "classify.review"}, tracing)
            for o in outputs:
                await publish(o)
            await client.close()
            return outputs, server.stats()["requests"]

    outputs, served = asyncio.run(go())
    spans = exporter.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (root,) = by_name["send request"]
    trace_id = root.context.trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}, "one trace, producer to result"
    (classify,) = by_name["classify"]
    assert classify.parent is not None and classify.parent.span_id == root.context.span_id
    assert classify.kind == trace.SpanKind.CONSUMER
    (parse,) = by_name["parse request"]
    assert parse.parent is not None and parse.parent.span_id == classify.context.span_id
    calls = by_name["model call"]
    record = orjson.loads(outputs[0].value)
    assert len(calls) == record["requests"] == served >= 3, "a span per model call, every sample's"
    assert all(c.parent is not None and c.parent.span_id == classify.context.span_id for c in calls)
    assert all(c.attributes is not None and c.attributes["task"] == "sc" for c in calls)
    (published,) = [s for name, ss in by_name.items() if name.startswith("publish ") for s in ss]
    assert published.kind == trace.SpanKind.PRODUCER and published.parent is not None
    assert published.parent.span_id == classify.context.span_id
    ((topic, key, _, sent_headers),) = recorder.sent
    assert topic in ("classify.results", "classify.review") and key == b"r1"
    assert f"{trace_id:032x}" in _traceparent(sent_headers), "the result carries the trace"


def test_tracing_off_passes_the_context_through_and_the_human_result_joins_it() -> None:
    """No SDK configured: no span, but every output (and later the human answer) carries the request's
    own traceparent, so a tracing consumer still sees one trace."""
    parent = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), ("other", b"x")]

    async def go() -> list[Output]:
        async with SyntheticModelServer(SyntheticConfig(seed=2)) as server:
            tasks = parse_tasks(TASKS.format(url=server.base_url), "test", {})
            client = ModelClient(5, 0)
            outs = await Classifier(tasks, client, 1000, 256).process(
                orjson.dumps({"id": "r2", "task": "sc", "text": "x"}), b"r2", Source("t", 0, 2), parent)
            bad = await Classifier(tasks, client, 1000, 256).process(b"{", b"k", Source("t", 0, 3), parent)
            await client.close()
            return outs + bad

    outputs = asyncio.run(go())
    assert all(o.headers == [parent[0]] for o in outputs), "results, review items and dead letters alike"
    review = next((o for o in outputs if o.topic == "review"), None) or outputs[0]
    tasks = parse_tasks(TASKS.format(url="http://x/v1"), "test", {})
    item = with_trace({**orjson.loads(review.value), "decision": "review"}, review.headers)
    table = {"r2": item}
    human = FeedbackHandler(tasks, table, 64)(orjson.dumps({"id": "r2", "task": "sc", "label": "fresh"}), b"r2",
                                              Source("classify.feedback", 0, 9))
    assert human[0].topic == "results" and human[0].headers == [parent[0]]
    assert "_trace" not in orjson.loads(human[0].value), "the trace rides in headers, not in the payload"


def test_the_client_puts_the_callers_trace_context_on_its_requests() -> None:
    """A producer with a span open: the request's headers carry that span's context (else none)."""
    from streams.client import StreamsClient

    provider = TracerProvider()
    sent: list[Any] = []

    class Producer:
        async def send(self, topic: str, value: bytes, key: bytes, headers: Any = None) -> asyncio.Future[None]:
            sent.append(headers)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    async def go() -> str:
        client = StreamsClient("127.0.0.1:1")

        async def started() -> Producer:
            return Producer()

        client._producer_started = started  # type: ignore[method-assign]  # no broker needed here
        await client.publish_many([{"task": "t", "text": "x"}])
        with provider.get_tracer("producer").start_as_current_span("send") as span:
            await client.publish_many([{"task": "t", "text": "y"}])
            return f"{span.get_span_context().trace_id:032x}"

    trace_id = asyncio.run(go())
    assert sent[0] is None, "no span open: no trace headers"
    assert trace_id in _traceparent(sent[1])
