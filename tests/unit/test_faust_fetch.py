"""The fair poll: a bounded share of every ready partition per poll, nothing taken and then lost to an error."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import pytest
from aiokafka.consumer.fetcher import FetchResult
from aiokafka.structs import TopicPartition

from streams.faust_fetch import fair_fetched_records


class Buffered(FetchResult):
    """A fetched partition's records (integers standing in for records); built without a real assignment."""

    def __init__(self, records: list[int]) -> None:
        self.left = records

    def getall(self, max_records: int | None = None) -> list[int]:
        n = len(self.left) if max_records is None else max_records
        taken, self.left = self.left[:n], self.left[n:]
        return taken

    def has_more(self) -> bool:
        return bool(self.left)


class Failed:
    def check_raise(self) -> None:
        raise RuntimeError("offset out of range")


class Fetcher:
    """aiokafka's `Fetcher.fetched_records` over a dict of buffered fetches, in the dict's order."""

    def __init__(self, records: dict[TopicPartition, Any]) -> None:
        self._records = records

    async def fetched_records(self, partitions: Collection[TopicPartition], timeout: float = 0,  # noqa: ASYNC109
                              max_records: int | None = None) -> dict[TopicPartition, list[int]]:
        drained: dict[TopicPartition, list[int]] = {}
        for tp in list(self._records):
            if partitions and tp not in partitions:
                continue
            entry = self._records[tp]
            if isinstance(entry, Buffered):
                records = entry.getall(max_records)
                if not entry.has_more():
                    del self._records[tp]
                drained[tp] = records
                if max_records is not None:
                    max_records -= len(records)
                    if not max_records:
                        break
            elif drained:
                return drained
            else:
                del self._records[tp]
                entry.check_raise()
        return drained


def tp(p: int) -> TopicPartition:
    return TopicPartition("requests", p)


def poll(fetcher: Fetcher, cap: int) -> dict[TopicPartition, list[int]]:
    fair = fair_fetched_records(fetcher, per_partition=cap)
    return asyncio.run(fair(set(fetcher._records)))


def test_every_ready_partition_gets_at_most_its_share_of_a_poll() -> None:
    # aiokafka's own method, asked for everything, returns the first partition's 10,000 records with the rest
    fetcher = Fetcher({tp(0): Buffered(list(range(10_000))), tp(1): Buffered([1, 2, 3]), tp(2): Buffered([7] * 500)})
    got = poll(fetcher, cap=100)
    assert {k: len(v) for k, v in got.items()} == {tp(0): 100, tp(1): 3, tp(2): 100}
    assert got[tp(0)] == list(range(100)), "records come in order, and the rest stays buffered for the next poll"
    again = poll(fetcher, cap=100)
    assert again[tp(0)] == list(range(100, 200)) and tp(1) not in again


def test_the_visiting_order_rotates_from_poll_to_poll() -> None:
    fetcher = Fetcher({tp(p): Buffered(list(range(1000))) for p in range(3)})
    fair = fair_fetched_records(fetcher, per_partition=10)
    firsts = [next(iter(asyncio.run(fair(set(fetcher._records))))) for _ in range(3)]
    assert firsts == [tp(0), tp(1), tp(2)]


def test_an_error_waits_for_a_poll_that_took_nothing_so_no_taken_record_is_lost() -> None:
    fetcher = Fetcher({tp(0): Buffered([1, 2]), tp(1): Failed(), tp(2): Buffered([3])})
    fair = fair_fetched_records(fetcher, per_partition=10)
    got = asyncio.run(fair(set(fetcher._records)))
    assert got == {tp(0): [1, 2], tp(2): [3]}
    with pytest.raises(RuntimeError, match="offset out of range"):
        asyncio.run(fair(set(fetcher._records)))
