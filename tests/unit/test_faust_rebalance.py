"""The rebalance-end guard (streams.faust_rebalance): what it does, and the Faust behaviour it relies on.

The loss it prevents needs a real rebalance to show (tests/integration/test_crash.py, the two-worker
handoff); these tests pin the two facts the guard depends on, so a Faust upgrade that changes either
fails here instead of silently bringing the loss back.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

from faust.tables.recovery import Recovery
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.app import build_app
from streams.settings import Settings


def test_the_end_of_a_rebalance_stops_fetching_until_faust_resumes_flow(tmp_path: Path) -> None:
    """On the app the worker runs (`build_app`), so this fails if the guard is not connected there."""

    async def scenario() -> tuple[bool, bool, bool]:
        app = build_app(Settings.from_env({"STREAMS_BROKER": "kafka://127.0.0.1:1",
                                           "STREAMS_DATA_DIR": str(tmp_path)}))
        consumer: Any = app.consumer  # the aiokafka-backed Consumer: ConsumerT lacks the flow attributes
        consumer.resume_flow()
        before = consumer.flow_active
        await app.on_rebalance_complete.send()
        held = consumer.flow_active or consumer.can_resume_flow.is_set()
        consumer.resume_flow()  # what Faust's recovery calls after its seek
        return before, held, consumer.flow_active

    before, held, after = asyncio.run(scenario())
    assert before, "flow runs before the signal"
    assert not held, "on_rebalance_complete must stop the consumer's flow"
    assert after, "Faust's own resume_flow() lets it run again"


def _order(source: str, *calls: str) -> list[int]:
    return [source.index(c) for c in calls]


def test_faust_recovery_still_seeks_after_resuming_partitions_and_clears_queues_after_the_seek() -> None:
    """The window the guard closes: signal, resume stream partitions, seek, clear queues, resume flow."""
    for method in (Recovery.on_recovery_completed, Recovery._resume_streams):
        source = inspect.getsource(method)
        positions = _order(source, "on_rebalance_complete.send()", "resume_partitions(", "perform_seek()",
                           "flow_control.resume()", "resume_flow()")
        assert positions == sorted(positions), f"{method.__qualname__} changed order; re-check streams.faust_rebalance"


def test_resuming_flow_control_drops_what_stream_queues_hold() -> None:
    """Why records fetched inside the window are lost: resume() empties every clear_on_resume queue."""
    async def scenario() -> int:
        flow = FlowControlEvent()
        queue: FlowControlQueue[int] = FlowControlQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
        for i in range(3):
            queue.put_nowait(i)
        flow.suspend()
        flow.resume()
        return queue.qsize()

    assert asyncio.run(scenario()) == 0
