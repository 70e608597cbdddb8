"""Plain Kafka producer / consumer for tools outside the Faust workers.

`mediafm demo`, `publish`, `follow` and the tests talk to the broker with
kafka-python through these two helpers, so every tool uses the same limits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mediafm.config import Settings
from mediafm.errors import StackError
from mediafm.kafka_security import check_login, client_security, denied
from mediafm.schema import MAX_MESSAGE_BYTES


def kafka_python_options(settings: Settings) -> dict:
    """Keyword arguments every kafka-python client of ours starts from: the broker's address, its security
    (client_security) and a reconnect backoff capped at 1 s.

    kafka-python doubles its wait between attempts to reach a broker that is away, from 50 ms up to
    reconnect_backoff_max_ms, 30 s unless set (the Java client's default is 1 s). So a client that kept trying while
    the broker restarted could wait up to 30 s more once it was back: `mediafm publish live` held an event's
    segments 23 s behind its clock for a broker that served again 12 s after a kill -9, and `mediafm stack up`
    took 30 s to see that broker ready (bench/live.py --kill-broker-at). A refused connection costs the broker
    nothing; a broker that is up but slow is waited for by request timeouts, not by this."""
    return {"bootstrap_servers": settings.kafka_bootstrap, "reconnect_backoff_max_ms": 1000,
            **client_security(settings)}


def producer(settings: Settings) -> KafkaProducer:
    """acks=all + idempotence: a retried send is not written twice. Records gathered for 5 ms into batches of
    up to 512 KiB a partition, as the workers' producer does (streams/runtime.py): a shot message is 4-17 KiB,
    so kafka-python's default 16 KiB made nearly every record a batch of its own, and `mediafm publish dataset`
    sent 200-400 shots/s (bench/publish.py). A refused login is a ConfigError here (check_login), not 30 s of
    retries."""
    check_login(settings)
    with _no_broker_named(settings):
        return KafkaProducer(acks="all", enable_idempotence=True, max_request_size=MAX_MESSAGE_BYTES + 64 * 1024,
                             linger_ms=5, batch_size=512 * 1024, **kafka_python_options(settings))


@contextmanager
def _no_broker_named(settings: Settings):
    """A client that could not bootstrap (kafka-python 3 waits 30 s for a broker to answer, then raises
    KafkaTimeoutError "Unable to bootstrap") as a StackError that names the address and what to check, so every
    command says it in one line rather than a traceback."""
    from kafka.errors import KafkaTimeoutError

    try:
        yield
    except KafkaTimeoutError as e:
        raise StackError(f"no Kafka broker answered at {settings.kafka_bootstrap} ({e}); is it running? (`mediafm "
                         "stack status`; kafka_servers / MEDIAFM_KAFKA_SERVERS say where it is)") from None


def send_and_wait(settings: Settings, p: KafkaProducer, what: str, records: list[tuple[str, bytes, bytes]]) -> None:
    """Send (topic, key, value) records with `p` and wait until the broker has taken every one of them.

    A broker that is away meanwhile (restarted, failed over) is waited out: the producer keeps trying until its
    delivery timeout (kafka-python's delivery_timeout_ms, 2 minutes), and idempotence keeps a retried record from
    being written twice. Past it (or on any other refusal: the error is named), StackError naming `what` and the
    broker. Each call used to give up after 30 s (`.get(timeout=30)`), so a broker restart a little longer than
    that stopped `mediafm publish live` mid-event with a KafkaTimeoutError."""
    from kafka.errors import KafkaError, KafkaTimeoutError, TopicAuthorizationFailedError

    try:
        for f in [p.send(topic, key=key, value=value) for topic, key, value in records]:
            f.get()  # no timeout of our own: the producer's delivery timeout fails the future
    except TopicAuthorizationFailedError:
        raise denied(settings, f"writing {what} to {', '.join(sorted({t for t, _, _ in records}))}") from None
    except KafkaError as e:
        away = isinstance(e, KafkaTimeoutError)
        raise StackError(f"the broker at {settings.kafka_bootstrap} did not take {what}"
                         + (" within the producer's delivery timeout" if away else "")
                         + f" ({type(e).__name__}: {e})"
                         + ("; is it running (`mediafm stack status`), and are the pipeline's topics made "
                            "(`mediafm topics`)? A topic missing looks the same: no metadata for it" if away else "")
                         ) from None


def consumer(settings: Settings, **kwargs) -> KafkaConsumer:
    """A consumer that fetches messages up to MAX_MESSAGE_BYTES and commits nothing by itself (a refused login:
    ConfigError, as for producer)."""
    check_login(settings)
    with _no_broker_named(settings):
        return KafkaConsumer(enable_auto_commit=False, fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
                             max_partition_fetch_bytes=MAX_MESSAGE_BYTES + 64 * 1024, **kafka_python_options(settings),
                             **kwargs)


class Tail:
    """Read a topic from its current end (or its beginning), all partitions, no group."""

    def __init__(self, settings: Settings, topic: str, *, from_beginning: bool = False) -> None:
        self.consumer = consumer(settings)
        parts = self.consumer.partitions_for_topic(topic) or set()
        if not parts:
            self.consumer.close()
            raise StackError(f"topic {topic!r} does not exist on {settings.kafka_bootstrap}; make the pipeline's "
                             "topics (`mediafm topics`, or `mediafm stack up` for the local stack)")
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

    def until_idle(self, *, idle_s: float, timeout_s: float) -> Iterator:
        """Yield records until idle_s passes without one (or timeout_s in all)."""
        last = time.monotonic()
        deadline = last + timeout_s
        while time.monotonic() - last < idle_s and time.monotonic() < deadline:
            for rec in self.poll(timeout_s=0.5):
                last = time.monotonic()
                yield rec

    def backlog(self) -> int:
        """Records between the assigned partitions' beginnings and their ends now."""
        tps = sorted(self.consumer.assignment())
        return sum(self.consumer.end_offsets(tps).values()) - sum(self.consumer.beginning_offsets(tps).values())

    def to_end(self, *, timeout_s: float) -> Iterator:
        """Yield every record up to the end offsets the topic has now; TimeoutError if not read by then."""
        tps = sorted(self.consumer.assignment())
        end = self.consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while any(self.consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                left = {f"{tp.topic}[{tp.partition}]": end[tp] - self.consumer.position(tp) for tp in tps}
                raise TimeoutError(f"records left unread after {timeout_s:.0f}s: {left}")
            for records in self.consumer.poll(timeout_ms=200).values():
                yield from records

    def close(self) -> None:
        self.consumer.close()


def caught_up(settings: Settings, group: str, topic: str) -> bool:
    """True when consumer group `group` has committed every message of `topic` that is there now.

    Faust commits an offset only after the producer flushed what its event made, so once a worker's group
    has caught up on its input topic, everything it will publish for that input is in its output topics:
    the condition tests and tools wait for, instead of a sleep.
    """
    # a consumer of the group that never subscribes: it only fetches the group's committed offsets
    c = consumer(settings, group_id=group)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        end = c.end_offsets(tps)
        return all(end[tp] == 0 or (c.committed(tp) or 0) >= end[tp] for tp in tps)
    finally:
        c.close()
