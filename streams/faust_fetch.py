"""Fair fetching under a deep backlog: every assigned partition gets a bounded share of every poll.

Faust (faust-streaming 0.15.3) asks aiokafka for everything fetched so far (`max_poll_records` unset) and
hands the whole batch to the agents before it asks again. aiokafka fetches a partition again only once
its last fetch is drained, and a broker may answer one partition's fetch with megabytes (Tansu ignores
the per-partition byte limit; Kafka honours it but still sends about a megabyte a partition). With a
deep backlog, one batch is tens of thousands of records from whichever partitions answered first. The
partitions that did not, and the drift summaries, wait until that batch is worked through: measured in
bench/README.md (*Fair progress under a backlog*), three of eight partitions started 18 s late on a
300k backlog, and drift summaries sat up to a minute unread.

The fix bounds each poll per partition: at most `per_partition` records from each assigned partition
whose records are ready, in a rotating order. The rest stay in aiokafka's buffer for the next poll (no
record is dropped or skipped: the consumer's position moves only over records returned). A poll is
then at most `per_partition` records per partition, so every partition, and the drift summaries, are
served once per poll.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Coroutine
from typing import Any

import faust
from aiokafka.consumer.fetcher import FetchResult
from aiokafka.structs import TopicPartition

#: Records taken from one partition per poll; a poll holds at most this many per assigned partition.
PER_PARTITION = 256

Records = dict[TopicPartition, list[Any]]  # aiokafka's ConsumerRecords, per partition
FetchedRecords = Callable[..., Coroutine[Any, Any, Records]]


def fair_fetched_records(fetcher: Any, per_partition: int = PER_PARTITION) -> FetchedRecords:
    """A drop-in for `fetcher.fetched_records` that takes at most `per_partition` records a partition.

    A `max_records` (Faust passes `broker_max_poll_records`, unset by default) lowers each partition's share,
    not the poll's total. Partitions are visited in an order that rotates by one on every poll. A partition
    whose buffered fetch holds an error is left for the next poll when records were already taken in this
    one, so the error is raised with nothing taken and lost, as aiokafka's own method does.
    """
    original: FetchedRecords = fetcher.fetched_records
    turn = itertools.count()

    async def fetched_records(partitions: Collection[TopicPartition], timeout: float = 0,  # noqa: ASYNC109
                              max_records: int | None = None) -> Records:
        cap = per_partition if max_records is None else min(per_partition, max_records)
        ready = [tp for tp in fetcher._records if not partitions or tp in partitions]
        drained: Records = {}
        if ready:
            start = next(turn) % len(ready)
            for tp in ready[start:] + ready[:start]:
                if drained and not isinstance(fetcher._records.get(tp), FetchResult):
                    continue  # an error: raised on a later poll, once nothing taken would be lost with it
                drained.update(await original({tp}, timeout=0, max_records=cap))
        if drained or not timeout:
            return drained
        return await original(partitions, timeout=timeout, max_records=cap)  # nothing ready: wait for some

    return fetched_records


def fetch_fairly(app: faust.App, per_partition: int = PER_PARTITION) -> None:
    """Install the fair poll on the worker's consumer; call once, on the worker's app.

    The aiokafka consumer exists once the group has assigned partitions, before the first poll.
    """

    @app.on_partitions_assigned.connect
    async def _install(sender: faust.App, /, *args: Any, **kwargs: Any) -> None:
        consumer = sender.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
        fetcher = consumer._fetcher
        if not getattr(fetcher, "_fair_poll", False):
            fetcher.fetched_records = fair_fetched_records(fetcher, per_partition)
            fetcher._fair_poll = True
