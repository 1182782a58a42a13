"""The worker's Faust producer, consumer and commit options, in one place.

Shared by the Faust app (`streams.app`) and the benchmark's Faust floor (`bench/faust_passthrough.py`),
so the floor measures the worker's Kafka path and not a differently tuned one.
"""

from __future__ import annotations

from typing import Any

FAUST_TUNING: dict[str, Any] = {
    "producer_acks": -1,
    # Every output waits for its acknowledgement, and its in-flight slot is held until then, so linger
    # adds straight to each slot's time (measured in bench/README.md, Throughput); 5 ms still lets
    # concurrent outputs share a produce request.
    # Batches up to 256 KiB per partition.
    "producer_linger": 0.005,
    "producer_max_batch_size": 256 * 1024,
    "consumer_auto_offset_reset": "earliest",
    "stream_wait_empty": True,
    "broker_commit_every": 1000,
    "broker_commit_interval": 1.0,
}
