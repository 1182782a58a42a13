"""Close a window in Faust's rebalance where fetched records are thrown away but counted as read.

At the end of every rebalance, Faust's recovery (faust-streaming 0.15.3, `Recovery.on_recovery_completed`
and `_resume_streams`) does, in this order, with the consumer's flow already running (it resumed flow to
read the table changelogs):

1. resume the stream partitions;
2. seek them to their committed offsets (a broker round trip per partition);
3. resume flow control, which clears every stream's queue (`clear_on_resume=True`).

Records fetched during step 2 reach the agents' queues and move the consumer's read offset forward;
step 3 then drops them. The consumer skips records below its read offset as already seen, and treats
a jump above it as a gap it may commit across. So each record dropped in that window was either never
handled (a partition that stops being read, its lag never moving) or committed without an output (lost).
The two-worker handoff test lost requests this way on a loaded machine (counts in docs/RELIABILITY.md),
each loss matching records cleared at step 3.

The fix: stop the consumer's flow when Faust announces the end of a rebalance (`on_rebalance_complete`
is sent just before step 1). Nothing is fetched until Faust itself resumes flow, after step 3, so no
record is delivered into a queue about to be cleared. Faust already stops flow the same way at the start
of every rebalance; this only extends that stop to the end of its own seek.
"""

from __future__ import annotations

from typing import Any

import faust


def hold_fetch_until_seeked(app: faust.App) -> None:
    """Connect the handler; call once, on the worker's app."""

    @app.on_rebalance_complete.connect
    async def _stop_flow_until_seeked(sender: faust.App, /, *args: Any, **kwargs: Any) -> None:
        sender.consumer.stop_flow()  # Faust calls resume_flow() right after the seek and queue clear
