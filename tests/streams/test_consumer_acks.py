"""A message Faust skipped is never committed (streams/consumer.py).

Faust skips a message that reaches an agent during a rebalance (flow stopped) or that was fetched under an
older consumer generation, and acknowledges it. Committed, it would never be fetched again (read from
Faust's code; streams/consumer.py). These tests drive the worker's real consumer object
(the one `streams.app.create_runtime` builds; no broker needed for its acknowledgement bookkeeping) through
a rebalance's sequence and ask it what it would commit. They fail with Faust's own consumer class.
The real-broker proof of both of streams/consumer.py's fixes is tests/streams/test_scaling.py (workers
joining, leaving and dying mid-catalog), which lost shots in most runs before the first of them.
"""

from __future__ import annotations

import asyncio

import pytest
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP, ConsumerMessage

from mediafm.config import Settings
from streams import metrics
from streams.app import create_runtime


@pytest.fixture
def rt(tmp_path):
    return create_runtime(Settings(state_dir=tmp_path, topic_prefix="acks", worker_web_port=16072))


def delivered(rt, tp: TP, offset: int) -> ConsumerMessage:
    """A message as Faust's fetcher hands it to a stream: stamped with the generation it was fetched under."""
    m = ConsumerMessage(tp.topic, tp.partition, offset, 0.0, 0, None, b"t", b"v", None, 1, 1, tp,
                        generation_id=rt.app.consumer_generation_id)
    rt.app.consumer.track_message(m)
    return m


def test_the_worker_consumes_with_the_safe_consumer(rt):
    assert type(rt.app.consumer).__module__ == "streams.consumer"
    assert isinstance(rt.app.consumer, FaustConsumer)


def test_messages_skipped_in_a_rebalance_are_not_committed_and_processed_ones_are(rt):
    asyncio.run(_rebalance(rt))


async def _rebalance(rt):
    app, c = rt.app, rt.app.consumer
    tp = TP(rt.names.fused, 0)
    app.topics._acking_topics.add(tp.topic)  # what the conductor does when the agents subscribe (needs a broker)
    dropped = metrics.acks_dropped.labels(tp.topic)._value.get()
    app.consumer_generation_id = 1
    app.flow_control.resume()
    for o in range(5):  # processed in generation 1
        delivered(rt, tp, o).ack(c)
    assert c._new_offset(tp) == 5

    fetched = [delivered(rt, tp, o) for o in range(5, 10)]  # fetched, still queued for the agent
    app.flow_control.suspend()  # a rebalance starts: the agent skips what it reads now, and acks it
    for m in fetched[:2]:
        m.ack(c)
    app.consumer_generation_id = 2  # partitions assigned again
    app.flow_control.resume()  # seek done, flow resumed: the older generation's messages are skipped too
    for m in fetched[2:]:
        m.ack(c)
    assert c._new_offset(tp) is None, "offsets 5..9 were never processed: committing them loses them"
    assert not c.unacked, "skipped messages must not hold up wait_empty() at the next rebalance"
    assert metrics.acks_dropped.labels(tp.topic)._value.get() - dropped == 5

    for o in range(5, 8):  # fetched again after the seek, in generation 2, and processed
        delivered(rt, tp, o).ack(c)
    assert c._new_offset(tp) == 8
