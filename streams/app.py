"""The Faust application: settings, topics, and agent discovery. `python -m streams worker` runs it.

Configuration is read and validated on import, so a worker with a bad environment or task file
stops before it joins a consumer group, with a message that names what to fix.
"""

from __future__ import annotations

import logging

import faust

from streams.faust_rebalance import hold_fetch_until_seeked
from streams.faust_tuning import FAUST_TUNING
from streams.kafka_security import faust_broker_options
from streams.settings import Settings
from streams.tasks import load_tasks
from streams.topics import ensure_topics

# One INFO line per model call drowns the worker's own log; errors still show.
for _noisy in ("httpx", "httpx2"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

settings = Settings.from_env()
tasks = load_tasks(settings.tasks_file)


class ClassifyApp(faust.App):
    async def on_first_start(self) -> None:
        await super().on_first_start()
        # Before the consumer subscribes, so no topic is auto-created with the broker's default count.
        await ensure_topics(settings)
        # Before any request is classified: every task's newest calibrator, read to the exact end.
        from streams.classify.agents import calibrator_feed
        from streams.drift.agents import baseline_feed

        self.log.info("loaded %d calibrator record(s)", await calibrator_feed.load())
        self.log.info("loaded %d drift baseline record(s)", await baseline_feed.load())

    async def on_stop(self) -> None:
        from streams.classify.agents import calibrator_feed
        from streams.drift.agents import baseline_feed

        await calibrator_feed.stop()
        await baseline_feed.stop()
        await super().on_stop()


app = ClassifyApp(
    settings.app_id,
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


def _topic(logical: str) -> faust.TopicT:
    return app.topic(
        settings.topic(logical),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        replicas=settings.replication,
    )


#: The service's topics by logical name; payloads are raw bytes, parsed by the pure modules.
topics: dict[str, faust.TopicT] = {logical: _topic(logical) for logical in settings.topics}

# Explicit imports rather than Faust's autodiscover, which logs an import error and carries on
# without the agents in that module: a worker missing an agent must not start.
from streams.classify import agents as _classify_agents  # noqa: E402,F401
from streams.calibration import agents as _calibration_agents  # noqa: E402,F401
from streams.drift import agents as _drift_agents  # noqa: E402,F401
from streams.ops import agents as _ops_agents  # noqa: E402,F401
