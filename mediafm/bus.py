"""Plain Kafka producer / consumer for tools outside the Faust workers.

`mediafm demo`, `publish`, `follow` and the tests talk to the broker with
kafka-python through these two helpers, so every tool uses the same limits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mediafm.config import Settings
from mediafm.schema import MAX_MESSAGE_BYTES


def producer(settings: Settings) -> KafkaProducer:
    # acks=all + idempotence: a retried send is not written twice.
    return KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                         max_request_size=MAX_MESSAGE_BYTES + 64 * 1024, linger_ms=5)


class Tail:
    """Read a topic from its current end (or its beginning), all partitions, no group."""

    def __init__(self, settings: Settings, topic: str, *, from_beginning: bool = False) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                      fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
                                      max_partition_fetch_bytes=MAX_MESSAGE_BYTES + 64 * 1024)
        parts = self.consumer.partitions_for_topic(topic) or set()
        if not parts:
            raise RuntimeError(f"topic {topic!r} does not exist; run `mediafm stack up` first")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        if from_beginning:
            self.consumer.seek_to_beginning(*tps)
        else:
            self.consumer.seek_to_end(*tps)
            for tp in tps:  # resolve the lazy seek now, before anything is published
                self.consumer.position(tp)

    def poll(self, *, timeout_s: float | None, stop=lambda: False) -> Iterator:
        """Yield records until timeout_s has passed (None: forever) or stop() is true."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (deadline is None or time.monotonic() < deadline) and not stop():
            batch = self.consumer.poll(timeout_ms=200)
            for records in batch.values():
                yield from records

    def close(self) -> None:
        self.consumer.close()
