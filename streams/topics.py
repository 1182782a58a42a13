"""Creating the service's topics with explicit partition counts before anything reads or writes them.

Brokers that auto-create topics (Tansu does, with 4 partitions) would otherwise pick the count for us
on the first metadata request. Existing topics are left as they are; a partition count that differs
from the configured one is reported, since Kafka cannot shrink and Tansu cannot grow a topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.kafka_security import kafka_client_options
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Topics whose latest record per key is the state (compacted where the broker supports it).
COMPACTED = ("calibrators", "baselines", "drift_status", "answer_cache")


def topic_configs(logical: str, settings: Settings) -> dict[str, str]:
    """Broker settings of a topic the worker creates. The answer cache is compacted (one entry per key) and also
    deleted after its TTL, since an older entry is never served; both are ignored by brokers without them."""
    if logical == "answer_cache":
        return {"cleanup.policy": "compact,delete", "retention.ms": str(int(settings.answer_cache_ttl_s * 1000))}
    return {"cleanup.policy": "compact"} if logical in COMPACTED else {}


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics; return the partition count of each. Retries while the broker starts."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=10_000,
                                    **kafka_client_options(settings))
        try:
            await admin.start()
            return await _ensure(admin, settings)
        except Exception as exc:  # broker not up yet, or a transient metadata error
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"could not create topics on {settings.broker}: {exc!r}") from exc
            log.info("waiting for broker %s: %r", settings.broker, exc)
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


async def _ensure(admin: AIOKafkaAdminClient, settings: Settings) -> dict[str, int]:
    existing = set(await admin.list_topics())
    wanted = dict(settings.topics)
    missing = [
        NewTopic(
            name=name,
            num_partitions=settings.partitions,
            replication_factor=settings.replication,
            topic_configs=topic_configs(logical, settings),
        )
        for logical, name in wanted.items()
        if name not in existing
    ]
    if missing:
        with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
            await admin.create_topics(missing)
        log.info("created topics %s with %d partitions", [t.name for t in missing], settings.partitions)
    counts: dict[str, int] = {}
    for meta in await admin.describe_topics(list(wanted.values())):
        counts[meta["topic"]] = len(meta.get("partitions", []))
    for name, n in counts.items():
        if n != settings.partitions:
            log.warning("topic %s has %d partitions, STREAMS_PARTITIONS says %d; keeping %d",
                        name, n, settings.partitions, n)
    return counts
