"""Make Faust's stop wait for the calls in flight, and only for them, within a deadline.

On stop, Faust (faust-streaming 0.15.3, `App._stop_consumer`) stops fetching, clears the agents'
queues and then waits, with no deadline, until every message it delivered to a stream is acked
(`Consumer.wait_empty`, which holds them weakly and commits as acks come in). That is what makes a
SIGTERM clean: calls in flight finish, are published, acked and committed before the consumer leaves
the group. Two things it lacks, which the classify agent's stop hook adds through this module:

- a deadline: a call stuck past STREAMS_STOP_GRACE_S is cancelled and its event handed back. Faust
  would wait for it forever, so `forget_unacked` takes such events out of the set it waits on. They
  are not acked, so their offsets are not committed: the partition's next owner replays them.
- stopping first: `stop_fetching` is the same first step Faust takes, done before the hook waits, so
  no new request starts during the wait.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.exceptions import ConsumerNotStarted


def stop_fetching(app: faust.App) -> None:
    """Stop fetching and drop what the agents have not taken yet, as Faust's own stop does first."""
    consumer: Any = app.consumer  # the aiokafka-backed Consumer: ConsumerT lacks the flow attributes
    try:
        assignment = consumer.assignment()
    except ConsumerNotStarted:  # stopped while starting: nothing fetched yet
        return
    consumer.stop_flow()
    app.flow_control.suspend()
    if assignment:
        consumer.pause_partitions(assignment)
    app.flow_control.clear()


def forget_unacked(app: faust.App, topic: str) -> int:
    """Stop Faust's stop waiting for the unacked messages of `topic` (handed back, never to be acked).

    Returns how many were forgotten. Their offsets stay uncommitted.
    """
    consumer: Any = app.consumer
    waiting = consumer._unacked_messages  # Faust's set of delivered, unacked messages (a WeakSet)
    forgotten = [m for m in list(waiting) if m.topic == topic and not m.acked]
    for message in forgotten:
        waiting.discard(message)
    return len(forgotten)
