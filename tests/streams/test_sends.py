"""No offset is committed past a record its event made (fused shots, dead letters, ...) that is not in its topic.

Faust commits acknowledged offsets after a producer flush that stops waiting on its own send buffer after 0.1 s
without progress, and that does not fail when a record could not be delivered: a kill -9 after such a commit
loses the records with nothing left to redeliver their events (streams/runtime.py, Runtime.send; streams/
consumer.py, 5).

In-process (Faust's agent test context: no broker), with the producer replaced by one whose acknowledgements
the test gives; the stages run against the real broker in the other tests of this folder.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiokafka.errors import KafkaTimeoutError
from conftest import until
from faust.types import TP

from mediafm.config import Settings
from mediafm.profiles import OFFLINE
from mediafm.schema import EncodedShot, vec_to_bytes
from streams.app import create_runtime

LAY = OFFLINE.layout


def encoded(i: int) -> bytes:
    return EncodedShot(title_id="t", shot_index=i, start_s=i, end_s=i + 1, profile=OFFLINE.name,
                       video=vec_to_bytes(np.ones(LAY.dims["video"], np.float32)), audio=None, text=None,
                       n_shots=4, published_at=1.0).to_bytes()


@pytest.fixture
def rt(tmp_path):
    rt = create_runtime(Settings(state_dir=tmp_path, topic_prefix="sends", worker_web_port=16073))
    rt.sent = []  # (topic, future) per record handed to the producer

    async def send(topic, key, value, **kw):  # the producer: a future the test resolves as the broker would
        rt.sent.append((topic, asyncio.get_running_loop().create_future()))
        return rt.sent[-1][1]

    async def infer(model, inputs, outputs, **kw):
        return {"FUSED": np.ones((len(inputs["VIDEO"]), LAY.fused_dim), np.float32)}

    rt.app.producer.send, rt.triton.infer = send, infer
    return rt


def test_fused_shots_and_dead_letters_go_to_the_producer_and_are_tracked_until_acknowledged(rt):
    asyncio.run(_fuse_sends(rt))


async def _fuse_sends(rt):
    agent = rt.app.agents["streams.fuse.fuse_shots"]
    async with agent.test_context() as ctx:
        await ctx.put(key=b"t", value=b"not msgpack")  # dead-lettered
        await ctx.put(key=b"t", value=encoded(0))
        await until(lambda: len(rt.sent) == 2, f"a dead letter and a fused shot sent, got {rt.sent}")
        assert sorted(t for t, _ in rt.sent) == sorted([rt.topics.deadletter.get_topic_name(),
                                                        rt.topics.fused.get_topic_name()])
        assert rt._unsent == {f for _, f in rt.sent}, "both wait for the broker (Runtime.sends_acknowledged)"
        for _, f in rt.sent:
            f.set_result(None)
        await until(lambda: not rt._unsent, "acknowledged records are no longer waited for")


def test_no_commit_passes_a_record_the_producer_could_not_deliver(rt, monkeypatch, worker_exits):
    """streams/consumer.py, 5: Faust flushes the producer before a commit but commits whether or not the
    records were delivered. A lost record stops the worker (exit 75) before the commit reaches the broker."""
    from faust.transport.drivers.aiokafka import Consumer as FaustConsumer

    codes, commits = worker_exits, []

    async def commit(self, offsets):  # what reaches the broker
        commits.append(dict(offsets))
        return True

    monkeypatch.setattr(FaustConsumer, "_commit", commit)
    tp = TP(rt.topics.encoded.get_topic_name(), 0)

    async def main():
        c = rt.app.consumer
        assert await c._commit({tp: 3})  # nothing lost: committed
        await rt.send(rt.topics.fused, b"t", b"x")
        rt.sent[0][1].set_exception(KafkaTimeoutError())  # the producer gave up on it
        await asyncio.sleep(0)
        with pytest.raises(SystemExit):
            await c._commit({tp: 5})

    asyncio.run(main())
    assert commits == [{tp: 3}] and codes == [75]


def test_a_record_that_failed_before_anyone_waited_still_stops_the_worker(rt, worker_exits):
    """A send that fails (the producer gave up after its retries) between two waits is not forgotten: the next
    wait stops the worker (exit 75, uncommitted) instead of acknowledging the events the record came from."""
    codes = worker_exits

    async def main():
        await rt.send(rt.topics.fused, b"t", b"x")
        rt.sent[0][1].set_exception(KafkaTimeoutError())
        for _ in range(5):
            await asyncio.sleep(0)  # its done-callback has run: nothing is pending any more
        with pytest.raises(SystemExit):
            await rt.sends_acknowledged()

    asyncio.run(main())
    assert codes == [75]


def test_a_wait_covers_the_records_handed_on_before_it_not_those_other_agents_send_while_it_waits(rt, worker_exits):
    """A title's pass waits for its own embeddings and table writes, not for the fused shots the fuse stage keeps
    handing on meanwhile (before, it waited until nothing at all was in flight); a record it waits for that fails
    still stops the worker."""

    async def main():
        await rt.send(rt.topics.embeddings, b"t", b"mine")
        waiting = asyncio.ensure_future(rt.sends_acknowledged())
        await asyncio.sleep(0)
        await rt.send(rt.topics.fused, b"u", b"another agent's")
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done(), "a record handed on before the wait is waited for"
        rt.sent[0][1].set_result(None)
        await asyncio.wait_for(waiting, 5)
        assert not rt.sent[1][1].done(), "returned while the later record was still in flight"

        asyncio.get_running_loop().call_soon(rt.sent[1][1].set_exception, KafkaTimeoutError())
        with pytest.raises(SystemExit):
            await rt.sends_acknowledged()  # the later one, failing while it is waited for

    asyncio.run(main())
    assert worker_exits == [75]


def test_a_record_cancelled_while_it_is_waited_for_is_not_taken_for_sent(rt, worker_exits):
    """The producer cancels what it holds when it stops: the wait ends with the worker's stop (CancelledError), and
    what the caller would record next (a title "done") is never written."""

    async def main():
        await rt.send(rt.topics.embeddings, b"t", b"mine")
        asyncio.get_running_loop().call_soon(rt.sent[0][1].cancel)
        with pytest.raises(asyncio.CancelledError):
            await rt.sends_acknowledged()

    asyncio.run(main())
    assert worker_exits == []
