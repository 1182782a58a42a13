"""Traces across Kafka: W3C trace context in message headers, OpenTelemetry spans when configured.

A producer that traces puts a `traceparent` header on its request (`streams.client` does). The worker
carries that context to every output of the request (result, review item, dead letter) and, through
the review item, to the reviewer's final `human` result, so one trace runs from the producer to the
answer. With `STREAMS_OTLP_ENDPOINT` set, the worker also records spans of its own under that trace:
one per request (`classify`), its parsing, every model call (a self-consistency item shows each
sample's call) and every publish, exported over OTLP/HTTP. Unset, nothing is recorded and the headers
are passed through as they came: no span is created on the hot path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

#: Kafka headers as aiokafka and Faust hand them over: (name, bytes) pairs, or a mapping.
Headers = Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None
#: The W3C trace context headers this service reads and writes.
TRACE_HEADERS = ("traceparent", "tracestate")


def trace_headers(headers: Headers) -> list[tuple[str, bytes]]:
    """Only the trace context of a message's headers (what the outputs carry on)."""
    if not headers:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, v) for k, v in pairs if k in TRACE_HEADERS and isinstance(v, bytes | bytearray)]


def carrier(headers: Headers) -> dict[str, str]:
    """Kafka headers as the text map OpenTelemetry's propagators read."""
    return {k: bytes(v).decode("latin-1") for k, v in trace_headers(headers)}


def as_headers(text_map: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(k, v.encode("latin-1")) for k, v in text_map.items() if k in TRACE_HEADERS]


class Tracing:
    """The worker's tracer, or a pass-through when tracing is off (`enabled` False: no span is made)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer: trace.Tracer | None = provider.get_tracer("streams") if provider is not None else None

    @classmethod
    def from_endpoint(cls, endpoint: str | None, service_name: str) -> Tracing:
        """OTLP/HTTP export to `endpoint` (e.g. http://collector:4318/v1/traces); off when it is None."""
        if not endpoint:
            return cls()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls.exporting(OTLPSpanExporter(endpoint=endpoint), service_name)

    @classmethod
    def exporting(cls, exporter: SpanExporter, service_name: str, batch: bool = True) -> Tracing:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        return cls(provider)

    @contextlib.contextmanager
    def consumed(self, name: str, headers: Headers, **attributes: Any) -> Iterator[list[tuple[str, bytes]]]:
        """Around the handling of one consumed message: a CONSUMER span child of the producer's context.

        Yields the headers every output of this message carries: the new span's context when tracing,
        else the message's own trace headers unchanged.
        """
        if self.tracer is None:
            yield trace_headers(headers)
            return
        parent = extract(carrier(headers))
        with self.tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.CONSUMER,
                                               attributes=attributes):
            out: dict[str, str] = {}
            inject(out)
            yield as_headers(out)

    @contextlib.contextmanager
    def span(self, name: str, headers: Headers = None, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
             **attributes: Any) -> Iterator[None]:
        """A span under the current context, or under `headers`' context when given; nothing when off."""
        if self.tracer is None:
            yield
            return
        parent: Context | None = extract(carrier(headers)) if headers else None
        with self.tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes):
            yield

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def current_headers() -> list[tuple[str, bytes]]:
    """The current context as Kafka headers (for a producer that has a span open)."""
    out: dict[str, str] = {}
    inject(out, context=otel_context.get_current())
    return as_headers(out)
