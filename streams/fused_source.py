"""Where a title's fused shots wait for the rest of the title: its source topic, and a bounded copy in memory.

    shots.fused[p] @ offset ──► contextualise ── TitleProgress: which shots, at which offsets (changelog)
                                   │
                                   ├── HeldShots: the decoded shots in memory, up to held_shots_mb a worker
                                   └── OffsetReader: the others read back from shots.fused[p] by offset
                                       once the title is complete (a restart, a rebalance, a title too big)

A fused shot is already durable in its topic, so the contextualise stage does not copy it into a table:
it records the shot's offset in the title's progress record, and an event is acknowledged once that record
is in its changelog (Runtime.batches). Holding the shot in memory is only a shortcut; everything the memory
loses (a kill -9, a partition moving to another worker, the budget) is read back from the topic.
The topic's retention must outlast the slowest title: a shot deleted before its title is complete cannot
be read back, and the title is dead-lettered saying so (OffsetReader.read reports it as gone). A worker
checks the topic's configuration before it starts (check_retention): compaction, or time retention under
the fused_retention_min_h setting, is refused; a size limit is logged with what it holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
    UnsupportedVersionError,
)

from mediafm.schema import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

_OVERHEAD = 600
"""Bytes a held shot costs beyond the message it came in: the decoded object, its fields, the dict entry."""


class HeldShots:
    """Decoded fused shots of titles in flight, {title key: {shot index: (offset, shot)}}, bounded in bytes
    (each counted at the size of the message it came in, plus a fixed overhead).

    Past the budget the titles used least recently are let go whole (their shots are read back when they
    complete, in one pass over the topic); a shot that does not fit even then is not held. A held shot is
    used only where its offset is the one the title's progress record names, so a copy held from an older
    assignment of the partition never stands in for the record that counts.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.bytes = 0
        self.reserved = 0  # of the budget, for titles' passes running (reserve())
        self._titles: OrderedDict[bytes, dict[int, tuple[int, int, object]]] = OrderedDict()

    def reserve(self, n: int) -> None:
        """Take `n` bytes of the budget for other work (a title's MediaFM pass) until release(n): titles held
        are let go, least recently used first, until what is held fits beside it."""
        self.reserved += n
        while self.bytes + self.reserved > self.budget and self._titles:
            self.drop(next(iter(self._titles)))

    def release(self, n: int) -> None:
        self.reserved -= n

    def put(self, title: bytes, index: int, offset: int, shot: object, size: int) -> None:
        size += _OVERHEAD
        shots = self._titles.get(title)
        if shots is not None and index in shots:
            if shots[index][0] == offset:
                return
            self.bytes -= shots.pop(index)[1]  # a copy held under an older record: the one named now replaces it
        while self.bytes + self.reserved + size > self.budget and self._titles:
            oldest = next(iter(self._titles))
            if oldest == title:
                if len(self._titles) == 1:
                    return  # the title alone fills the budget: the rest of it is read back
                self._titles.move_to_end(title)
                continue
            self.drop(oldest)
        if self.bytes + self.reserved + size > self.budget:
            return
        if shots is None:
            shots = self._titles[title] = {}
        self._titles.move_to_end(title)
        shots[index] = (offset, size, shot)
        self.bytes += size

    def get(self, title: bytes, index: int, offset: int) -> object | None:
        held = self._titles.get(title, {}).get(index)
        return held[2] if held is not None and held[0] == offset else None

    def drop(self, title: bytes) -> None:
        shots = self._titles.pop(title, None)
        if shots:
            self.bytes -= sum(size for _, size, _ in shots.values())


REFUSED_FOR_GOOD = (TopicAuthorizationFailedError, ClusterAuthorizationFailedError, UnsupportedVersionError)
"""What the broker says no retry mends: its ACLs, or a request it does not support. Others aiokafka calls not
retriable are passing in a broker's roll (BrokerNotAvailableError, ReplicaNotAvailableError, ...): waited out."""


class ReadRefused(Exception):
    """The broker refused a read back in a way no retry mends (OffsetReader.read)."""


class OffsetReader:
    """Records of one topic partition read back by offset, with a consumer of no group (nothing committed)."""

    SEEK_GAP = 1000
    """Offsets further apart than this are reached by a seek, not by reading what lies between (other
    titles' shots: a fetch is about this many)."""

    def __init__(self, bootstrap: str, security: dict | None = None) -> None:
        self.bootstrap, self.security = bootstrap, security or {}  # security: mediafm.kafka_security.client_security

    async def read(self, topic: str, partition: int, offsets: list[int]) -> tuple[dict[int, bytes], list[int]]:
        """({offset: value} of the records found, offsets not in the partition any more).

        An offset is gone when it lies outside the partition's offsets (below the first: retention deleted
        it; at or past the end: not this topic's record, say a topic made again) or when reading passed it
        without meeting it (compaction). A broker that is down or slow is waited out: the read starts again
        after a pause, logged, for as long as it takes (a transient fault is never reported as gone). An error
        the broker says retrying will not mend (its ACLs deny the read, a version it does not support) is raised
        as ReadRefused: the worker stops on it (Runtime.later), its event is fetched again, and the worker's start
        names what is missing (mediafm.acls.check_access). Before (2026-12-07), it was retried for ever, a warning
        every 30 s, the title's pass holding one of the passes that may run at once.
        """
        pause = 1.0
        while True:
            try:
                return await self._read(TopicPartition(topic, partition), sorted(set(offsets)))
            except KafkaError as e:
                if isinstance(e, REFUSED_FOR_GOOD):
                    raise ReadRefused(f"reading {topic}[{partition}] back: {type(e).__name__}: {e}") from e
                log.warning("reading %s[%d] back: %s: %s; again in %.0f s", topic, partition, type(e).__name__, e,
                            pause)
                await asyncio.sleep(pause)
                pause = min(30.0, pause * 2)

    async def _read(self, tp: TopicPartition, want: list[int]) -> tuple[dict[int, bytes], list[int]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", max_partition_fetch_bytes=MAX_MESSAGE_BYTES + 65536,
                                    fetch_max_bytes=4 * MAX_MESSAGE_BYTES, request_timeout_ms=30_000,
                                    **self.security)
        try:
            await consumer.start()
            consumer.assign([tp])
            first = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            gone = [o for o in want if not first <= o < end]
            todo = [o for o in want if first <= o < end]
            found: dict[int, bytes] = {}
            wanted = set(todo)
            k, since = 0, time.monotonic()
            while k < len(todo):
                consumer.seek(tp, todo[k])
                while k < len(todo):
                    batch = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
                    if not batch:
                        if time.monotonic() - since > 30:
                            raise KafkaTimeoutError(f"nothing fetched from offset {todo[k]} for 30 s")
                        continue
                    since = time.monotonic()
                    for rec in batch:
                        if rec.offset in wanted:
                            found[rec.offset] = rec.value
                    last = batch[-1].offset
                    while k < len(todo) and todo[k] <= last:
                        if todo[k] not in found:
                            gone.append(todo[k])
                        k += 1
                    if k < len(todo) and todo[k] - last > self.SEEK_GAP:
                        break  # seek ahead
            return {o: found[o] for o in want if o in found}, sorted(gone)
        finally:
            await consumer.stop()


def check_retention(settings, topic: str, *, timeout_s: float = 10.0) -> str:
    """Refuse a fused topic that would delete shots a title still needs (ConfigError naming the fix); returns a
    line saying what was found. A broker that does not answer is not checked (logged): the worker asks once it
    has waited for one (mediafm.kafka_security.wait_for_broker), so only one gone again in between goes unchecked."""
    from kafka import KafkaAdminClient  # lazy: kafka-python is slow to import
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import KafkaError

    from mediafm.bus import kafka_python_options
    from mediafm.errors import ConfigError

    keys = ("cleanup.policy", "retention.ms", "retention.bytes")
    try:
        admin = KafkaAdminClient(request_timeout_ms=int(timeout_s * 1000), **kafka_python_options(settings))
        try:
            found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, dict.fromkeys(keys))],
                                           config_filter="all")["topic"].get(topic) or {}
        finally:
            admin.close()
    except (KafkaError, OSError, KeyError) as e:
        log.warning("could not read the configuration of %s (%s: %s); its retention is not checked", topic,
                    type(e).__name__, e)
        return f"{topic}: retention not checked (broker did not answer)"
    if not found:  # kafka-python gives {} for a topic that is not there and for one whose configs it is denied
        return f"{topic}: no configuration given (not there yet, or the broker's ACLs deny DescribeConfigs on it: " \
               "`mediafm acls` lists the grant); retention not checked"
    value = {k: str(found.get(k, {}).get("value")) for k in keys}
    alter = f"kafka-configs.sh --bootstrap-server {settings.kafka_bootstrap} --alter --entity-type topics " \
            f"--entity-name {topic} --add-config"
    if "compact" in value["cleanup.policy"].split(","):
        raise ConfigError(f"{topic} has cleanup.policy={value['cleanup.policy']}: compaction keeps one record per key "
                          f"(title id) and deletes the shots a title still needs; fix it with `{alter} "
                          "cleanup.policy=delete`")
    ms = int(value["retention.ms"]) if value["retention.ms"].lstrip("-").isdigit() else -1
    if 0 <= ms < settings.fused_retention_min_h * 3600_000:  # fused_retention_min_h=0: no time check
        raise ConfigError(f"{topic} keeps records {ms / 3600_000:g} h (retention.ms={ms}), less than "
                          f"fused_retention_min_h={settings.fused_retention_min_h:g}: a title whose shots take longer "
                          f"to arrive would lose them. Raise it (`{alter} retention.ms="
                          f"{int(settings.fused_retention_min_h * 3600_000)}` or more), or lower the setting "
                          "(MEDIAFM_FUSED_RETENTION_MIN_H) if titles always arrive faster")
    size = int(value["retention.bytes"]) if value["retention.bytes"].lstrip("-").isdigit() else -1
    if size >= 0:
        log.warning("%s keeps at most %d MiB a partition (retention.bytes): a backlog larger than that deletes shots "
                    "of titles still arriving, which are then dead-lettered", topic, size >> 20)
    kept = "forever" if ms < 0 else f"{ms / 3600_000:g} h"
    return f"{topic}: cleanup.policy={value['cleanup.policy']}, kept {kept}" + (
        f", at most {size >> 20} MiB a partition" if size >= 0 else "")
