"""Where a title's fused shots wait: memory within a budget (HeldShots), else the topic, read back by offset."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pytest
from conftest import free_port, settings_env
from kafka import KafkaAdminClient, TopicPartition

from mediafm.bus import producer
from mediafm.config import replace
from mediafm.errors import ConfigError
from mediafm.stack import kafka
from streams.fused_source import _OVERHEAD, HeldShots, OffsetReader, check_retention


def test_held_shots_stay_within_the_budget_and_let_whole_titles_go():
    size = 1000 - _OVERHEAD  # each shot costs 1,000 bytes held
    held = HeldShots(5_000)
    for i in range(3):
        held.put(b"a", i, 100 + i, f"a{i}", size)
    for i in range(2):
        held.put(b"b", i, 200 + i, f"b{i}", size)
    assert held.bytes == 5_000 and held.get(b"a", 1, 101) == "a1"
    assert held.get(b"a", 1, 999) is None  # another copy of the shot than the one the record names
    held.put(b"b", 2, 202, "b2", size)  # over the budget: "a", used least recently, goes whole
    assert [held.get(b"a", i, 100 + i) for i in range(3)] == [None] * 3 and held.bytes == 3_000
    held.put(b"b", 2, 202, "again", size)  # a redelivery changes nothing
    assert held.get(b"b", 2, 202) == "b2" and held.bytes == 3_000
    held.put(b"b", 2, 950, "other copy", size)  # the record now names another copy: it replaces the held one
    assert held.get(b"b", 2, 950) == "other copy" and held.get(b"b", 2, 202) is None and held.bytes == 3_000
    for i in range(3, 9):  # one title alone over the budget: what fits is held, the rest is read back later
        held.put(b"b", i, 200 + i, f"b{i}", size)
    assert held.bytes == 5_000 and held.get(b"b", 4, 204) == "b4" and held.get(b"b", 5, 205) is None
    held.drop(b"b")
    assert held.bytes == 0 and held.get(b"b", 0, 200) is None
    nothing = HeldShots(0)  # held_shots_mb=0: every title is read back
    nothing.put(b"c", 0, 1, "c0", size)
    assert nothing.bytes == 0 and nothing.get(b"c", 0, 1) is None


def test_a_pass_reserves_its_memory_from_the_same_budget():
    """While a title's MediaFM pass runs, its working memory comes out of held_shots_mb: titles held are let go
    (least recently used first) and shots arriving are held only in what is left; released, the budget is whole."""
    size = 1000 - _OVERHEAD
    held = HeldShots(5_000)
    for i in range(2):
        held.put(b"a", i, i, f"a{i}", size)
        held.put(b"b", i, 10 + i, f"b{i}", size)
    held.reserve(2_500)  # 4,000 held + 2,500: "a" goes whole, "b" fits beside the pass
    assert held.bytes == 2_000 and held.get(b"a", 0, 0) is None and held.get(b"b", 1, 11) == "b1"
    held.put(b"c", 0, 20, "c0", size)
    held.put(b"c", 1, 21, "c1", size)  # 2,000 + 2,500 + 1,000 > 5,000: "b" goes for it
    assert held.get(b"c", 1, 21) == "c1" and held.get(b"b", 0, 10) is None and held.bytes == 2_000
    held.reserve(10_000)  # a pass over the whole budget: nothing is held beside it
    assert held.bytes == 0
    held.put(b"d", 0, 30, "d0", size)
    assert held.get(b"d", 0, 30) is None
    held.release(10_000)
    held.release(2_500)
    assert held.reserved == 0
    for i in range(5):
        held.put(b"d", i, 30 + i, f"d{i}", size)
    assert held.bytes == 5_000 and held.get(b"d", 4, 34) == "d4"


@pytest.mark.kafka
def test_offsets_read_back_from_a_real_broker_and_what_is_gone_is_named(kafka_stack):
    s = replace(kafka_stack, partitions=1)
    topic = f"readback-{uuid.uuid4().hex[:6]}"
    kafka.create_topics(s, [topic])
    p = producer(s)
    n = 3 * OffsetReader.SEEK_GAP  # far enough apart that the reader seeks past what lies between
    for i in range(n):
        p.send(topic, key=b"k", value=f"record {i}".encode(), partition=0)
    p.flush()
    p.close()
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    admin.delete_records({TopicPartition(topic, 0): 50})  # as retention would
    admin.close()

    far = 2 * OffsetReader.SEEK_GAP + 17
    wanted = [7, 49, 50, 51, 52, 600, far, n - 1, n + 5, n + 5 * OffsetReader.SEEK_GAP]
    found, gone = asyncio.run(OffsetReader(s.kafka_bootstrap).read(topic, 0, wanted))
    assert found == {o: f"record {o}".encode() for o in (50, 51, 52, 600, far, n - 1)}
    assert gone == [7, 49, n + 5, n + 5 * OffsetReader.SEEK_GAP]  # below the first offset left, and past the end


def test_a_broker_that_does_not_answer_is_waited_for_not_taken_for_lost_shots(caplog):
    """No broker at the address: the reader keeps trying (and says so); it never reports the offsets gone."""
    reader = OffsetReader(f"127.0.0.1:{free_port()}")
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(reader.read("nowhere", 0, [1, 2, 3]), timeout=4))
    assert "reading nowhere[0] back: KafkaConnectionError" in caplog.text


def test_a_read_back_the_broker_refuses_for_good_is_raised_not_retried_for_ever(caplog):
    """An error the broker says no retry mends (its ACLs deny the read) was retried for ever, a warning every
    30 s, with the title's pass waiting. Now it is raised (ReadRefused: the worker stops, and names the missing
    grant when it starts again); our own "nothing fetched for 30 s" and a broker not available (a roll) are still
    waited out, as a broker down is."""
    from aiokafka.errors import BrokerNotAvailableError, KafkaTimeoutError, TopicAuthorizationFailedError

    from streams.fused_source import ReadRefused

    calls = []

    class Reader(OffsetReader):
        async def _read(self, tp, want):
            calls.append(tp)
            raise [KafkaTimeoutError("nothing fetched from offset 1 for 30 s"),
                   BrokerNotAvailableError("a broker's roll"),  # not retriable by aiokafka's flag, yet passing
                   TopicAuthorizationFailedError("shots.fused")][len(calls) - 1]

    async def main():
        return await asyncio.wait_for(Reader("127.0.0.1:9").read("shots.fused", 2, [1]), timeout=20)

    with pytest.raises(ReadRefused, match=r"reading shots.fused\[2\] back: TopicAuthorizationFailedError"):
        asyncio.run(main())
    assert len(calls) == 3, "the time-out and the broker's roll waited out, then the refusal raised"
    assert "reading shots.fused[2] back: KafkaTimeoutError" in caplog.text


@pytest.mark.kafka
def test_a_worker_refuses_a_fused_topic_that_would_delete_shots_a_title_still_needs(kafka_stack, caplog):
    """check_retention, on the real broker: compaction (one record per title id) and a time retention under
    fused_retention_min_h are refused with the fix; a size limit is logged; a topic kept 7 days passes. The
    worker itself (`mediafm worker`) stops on the refusal with its reason, before joining the group."""
    s = replace(kafka_stack, topic_prefix=f"ret{uuid.uuid4().hex[:6]}", partitions=1)
    names = {cfg: f"{s.topic_prefix}.{name}" for name, cfg in [
        ("compact", "cleanup.policy=compact"), ("hour", "retention.ms=3600000"),
        ("bytes", "retention.bytes=104857600"), ("week", "retention.ms=604800000")]}
    for cfg, t in names.items():
        kafka.create_topics(s, [t], configs=dict([cfg.split("=")]))
    with pytest.raises(ConfigError, match=r"cleanup.policy=compact: compaction keeps one record per key .* "
                                          r"--add-config cleanup.policy=delete"):
        check_retention(s, names["cleanup.policy=compact"])
    with pytest.raises(ConfigError, match=r"keeps records 1 h \(retention.ms=3600000\), less than "
                                          r"fused_retention_min_h=24.*retention.ms=86400000"):
        check_retention(s, names["retention.ms=3600000"])
    assert check_retention(replace(s, fused_retention_min_h=0), names["retention.ms=3600000"]).endswith("kept 1 h")
    with pytest.raises(ConfigError, match="compaction"):  # refused whatever fused_retention_min_h says
        check_retention(replace(s, fused_retention_min_h=0), names["cleanup.policy=compact"])
    assert check_retention(s, names["retention.ms=604800000"]).endswith("cleanup.policy=delete, kept 168 h")
    assert check_retention(s, names["retention.bytes=104857600"]).endswith("at most 100 MiB a partition")
    assert "keeps at most 100 MiB a partition (retention.bytes)" in caplog.text
    assert "not there yet" in check_retention(s, f"{s.topic_prefix}.none")

    # the worker, with its fused topic compacted: refused at start, saying why
    kafka.create_topics(s, [f"{s.topic_prefix}.{t}" for t in ("titles", "live.segments", "shots", "shots.encoded",
                                                               "embeddings", "deadletter", "models")])
    kafka.create_topics(s, [f"{s.topic_prefix}.shots.fused"], configs={"cleanup.policy": "compact"})
    run = subprocess.run([sys.executable, "-m", "mediafm.cli", "worker"], env=settings_env(s), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"mediafm worker: error: {s.topic_prefix}.shots.fused has cleanup.policy=compact" in run.stderr

