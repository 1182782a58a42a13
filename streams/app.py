"""The Faust application and its topics, built from settings. Importing this module reads nothing and
registers nothing: `streams.worker` (the composition root) builds the app, the services and the agents.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from streams.faust_fetch import fetch_fairly
from streams.faust_rebalance import hold_fetch_until_seeked
from streams.faust_tuning import FAUST_TUNING
from streams.kafka_io import TopicFeed
from streams.kafka_security import faust_broker_options
from streams.ops.tracing import Tracing
from streams.settings import Settings
from streams.topics import ensure_topics


class ClassifyApp(faust.App):
    """The worker's Faust app: creates the topics, then loads the state feeds before any agent runs."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        super().__init__(settings.app_id, **options)
        self.settings = settings
        #: (what, feed) read to the exact high watermark at start, before any request is classified,
        #: and stopped with the app (calibrators, drift baselines); registered by the agents modules.
        self.preload: list[tuple[str, TopicFeed]] = []
        #: Set once every preload feed was read to its end (readiness needs it).
        self.preloaded = asyncio.Event()
        #: Flushed and stopped with the app (set by the composition root).
        self.tracing: Tracing | None = None
        #: Awaited first when the worker stops (SIGTERM), while the consumer and producer still run, so
        #: work in flight can finish and be acked before Faust commits and leaves the group.
        self.stopping: list[Callable[[], Awaitable[None]]] = []

    async def on_first_start(self) -> None:
        await super().on_first_start()
        # Before the consumer subscribes, so no topic is auto-created with the broker's default count.
        await ensure_topics(self.settings)
        for what, feed in self.preload:
            self.log.info("loaded %d %s record(s)", await feed.load(), what)
        self.preloaded.set()

    async def on_stop(self) -> None:
        for hook in self.stopping:
            try:
                await hook()
            except Exception:  # the stop goes on: what was not acked is replayed by the next owner
                self.log.exception("a stop hook failed")
        for _, feed in self.preload:
            await feed.stop()
        if self.tracing is not None:
            self.tracing.shutdown()  # exports the spans still batched
        await super().on_stop()


def build_app(settings: Settings) -> ClassifyApp:
    app = ClassifyApp(
        settings,
        broker=settings.broker,
        datadir=str(settings.data_dir),
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=settings.web_host,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(settings.session_timeout_s / 10, 0.5),
        broker_request_timeout=max(settings.session_timeout_s + 10, 40),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        **FAUST_TUNING,
        **faust_broker_options(settings),
    )
    hold_fetch_until_seeked(app)  # else records fetched at a rebalance's end can be dropped yet committed
    fetch_fairly(app)  # else a deep backlog starves partitions and the drift summaries
    return app


def build_topics(app: faust.App, settings: Settings) -> dict[str, faust.TopicT]:
    """The service's topics by logical name; payloads are raw bytes, parsed by the pure modules."""
    return {logical: app.topic(settings.topic(logical), key_type=bytes, value_type=bytes, key_serializer="raw",
                               value_serializer="raw", partitions=settings.partitions, replicas=settings.replication)
            for logical in settings.topics}


def quiet_http_logs() -> None:
    """One INFO line per model call drowns the worker's own log; errors still show."""
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
