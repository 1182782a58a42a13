"""The feedback loop's wiring: pending review items, reviewer answers, and online refits.

- `index-review` keeps every pending review item in a changelogged Faust table keyed by request id.
  Review and feedback topics are both keyed by request id with the same partition count, so Faust
  co-partitions them: the worker answering feedback for an id holds that id's table partition.
  Feedback must therefore be keyed by request id with Kafka's default (murmur2) partitioner.
- `feedback` hands each answer to `FeedbackHandler` (final `human` result, labelled example on the
  examples topic keyed by task, so one worker sees all of a task's labels).
- `refit` hands each labelled example to `Refitter`, which reads the task's whole example set to the
  exact high watermark when a refit is due (streams/calibration/loop.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from faust.types import StreamT

from streams.calibration.loop import FeedbackHandler, Refitter, with_trace
from streams.classify.records import Source
from streams.kafka_io import read_topic
from streams.kafka_security import kafka_client_options

if TYPE_CHECKING:
    from streams.worker import Services


def register(s: Services) -> None:
    app, settings = s.app, s.settings
    #: Pending review items by request id (the review record as a dict), changelogged.
    review_items = app.Table("review-items", default=None, partitions=settings.partitions)
    handle_feedback = FeedbackHandler(s.tasks, review_items, settings.deadletter_excerpt_bytes)

    async def read_examples(task: str) -> list[dict[str, Any]]:
        records = await read_topic(settings.bootstrap_servers, settings.topic("examples"),
                                   kafka_client_options(settings))
        return [value for _, key, value in records if key == task.encode()]

    refitter = Refitter(s.tasks, s.calibrators, read_examples, s.publish)

    @app.agent(s.topics["review"], name="index-review")
    async def index_review(stream: StreamT) -> None:
        async for event in stream.events():
            key, value = event.key, event.value
            if key and value:
                review_items[key.decode()] = with_trace(orjson.loads(value), event.message.headers)

    @app.agent(s.topics["feedback"], name="feedback")
    async def feedback(stream: StreamT) -> None:
        async for event in stream.events():
            msg = event.message
            await handle_feedback.item_indexed(msg.value)  # an answer can overtake its item's indexing
            for output in handle_feedback(msg.value, msg.key, Source(msg.topic, msg.partition, msg.offset)):
                await s.publish(output)

    @app.agent(s.topics["examples"], name="refit")
    async def refit(stream: StreamT) -> None:
        async for value in stream:  # the values
            await refitter.on_example(value)
