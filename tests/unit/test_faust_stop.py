"""The stop deadline's glue (streams.faust_stop): it must take handed-back messages out of what Faust's stop
waits on, and only those; and Faust must still wait for unacked messages at stop, or the hook is moot."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

from faust.app.base import App
from faust.transport.consumer import Consumer
from faust.types import TP, Message

from streams.app import build_app
from streams.faust_stop import forget_unacked, stop_fetching
from streams.settings import Settings


def _message(topic: str, offset: int) -> Message:
    return Message(topic, 0, offset, 0.0, 0, [], b"k", b"v", None, tp=TP(topic, 0))


def test_forget_unacked_drops_only_the_given_topics_unacked_messages(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, set[str]]:
        app = build_app(Settings.from_env({"STREAMS_BROKER": "kafka://127.0.0.1:1",
                                           "STREAMS_DATA_DIR": str(tmp_path)}))
        consumer: Any = app.consumer
        held = [_message("requests", 1), _message("requests", 2), _message("feedback", 1)]
        for m in held:
            consumer.track_message(m)
        stop_fetching(app)  # a stop before the consumer started must not fail
        forgotten = forget_unacked(app, "requests")
        return forgotten, {m.topic for m in consumer._unacked_messages}

    forgotten, left = asyncio.run(scenario())
    assert forgotten == 2
    assert left == {"feedback"}, "other topics' unacked messages are still waited for"


def test_faust_stop_still_waits_for_unacked_messages_before_it_stops_the_consumer() -> None:
    """What makes SIGTERM clean (and forget_unacked necessary): App._stop_consumer pauses, then waits."""
    source = inspect.getsource(App._stop_consumer)
    positions = [source.index(c) for c in ("stop_flow()", "pause_partitions(", "_consumer_wait_empty(")]
    assert positions == sorted(positions), "Faust's stop order changed; re-check streams.faust_stop"
    assert "self._unacked_messages" in inspect.getsource(Consumer.wait_empty), "wait_empty waits on another set"
