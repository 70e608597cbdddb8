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
import contextvars
import gc
from types import SimpleNamespace

import pytest
from conftest import until
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


def flowing(rt) -> tuple:
    """(app, consumer, TP of partition 0 of the fused topic), as after the first assignment: generation 1,
    flow running, the topic acknowledged (what the conductor does when the agents subscribe; needs a broker)."""
    app, c = rt.app, rt.app.consumer
    tp = TP(rt.names.fused, 0)
    app.topics._acking_topics.add(tp.topic)
    app.consumer_generation_id = 1
    app.flow_control.resume()
    return app, c, tp


def test_the_worker_consumes_with_the_safe_consumer(rt):
    assert type(rt.app.consumer).__module__ == "streams.consumer"
    assert isinstance(rt.app.consumer, FaustConsumer)


def test_messages_skipped_in_a_rebalance_are_not_committed_and_processed_ones_are(rt):
    asyncio.run(_rebalance(rt))


async def _rebalance(rt):
    app, c, tp = flowing(rt)
    dropped = metrics.acks_dropped.labels(tp.topic)._value.get()
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


def test_the_fetch_loop_hands_on_every_message_once_in_order_and_drops_a_delivery_when_the_flow_stops(rt):
    """streams/consumer.py, 3: the worker's own fetch loop. While the flow runs, each fetched message goes to
    the conductor in order; a record below the partition's read offset, from a fetch that overlapped a seek, is
    not handed on again (the one at it is, as in Faust), and a jump in offsets is recorded as a gap. While a rebalance stops the flow,
    a delivery that cannot finish is given up when the flow is suspended, so the loop is never stuck on it."""
    asyncio.run(_fetch_loop(rt))


async def _fetch_loop(rt):
    app, c, tp = flowing(rt)
    c.resume_flow()
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    got: list[int] = []
    fetches = [[0, 1, 2], [2, 1, 3, 7]]  # the second overlaps the first (a seek), then skips 4..6

    async def deliver(message):
        got.append(message.offset)

    async def getmany(timeout):
        offsets = fetches.pop(0)
        if not fetches:
            fetcher._stopped.set()  # the loop ends after this fetch
        for o in offsets:
            yield tp, delivered(rt, tp, o)

    c.callback, c.getmany = deliver, getmany
    await asyncio.wait_for(c._drain_messages(fetcher), 5)
    assert got == [0, 1, 2, 2, 3, 7], "each offset once, in fetch order; 2 is the read offset, so it may come again"
    assert c._read_offset[tp] == 7
    assert [(i.begin, i.end) for i in c._gap[tp]] == [(4, 7)], "offsets 4..6 never came: a gap, not acked"

    # A rebalance: the flow stops while a delivery waits on a full queue. The loop gives it up.
    c.stop_flow()
    app.flow_control.suspend()
    fetcher._stopped.clear()
    fetches.append([8, 9])
    blocked: list[int] = []

    async def stuck(message):
        blocked.append(message.offset)
        await asyncio.Event().wait()  # a queue that never drains

    c.callback = stuck
    await asyncio.wait_for(c._drain_messages(fetcher), 5)
    assert blocked == [8, 9], "both deliveries were tried and given up, none hung the loop"
    assert c._read_offset[tp] == 9


def test_a_batch_left_mid_way_is_not_committed_though_faust_acknowledges_it(rt):
    """streams/consumer.py, 4: Faust's take_events acknowledges a batch in a `finally`, also when the agent
    stopped or failed inside it (a clean stop during a Triton call). Runtime.batches keeps such a batch's
    messages out of the commit; a batch that finished is committed."""
    asyncio.run(_left_mid_way(rt))


async def _left_mid_way(rt):
    app, c, tp = flowing(rt)

    class Stream:
        """Batches of real consumer messages, acknowledged as faust/streams.py's take_events does (0.15.3)."""

        async def take_events(self, size, within):
            for first in (0, 5):
                events = [SimpleNamespace(message=delivered(rt, tp, o)) for o in range(first, first + 5)]
                try:
                    yield events
                finally:
                    for event in events:
                        event.message.ack(c)

    batches = rt.batches(Stream(), 5, 0.01)
    assert [e.message.offset for e in await anext(batches)] == [0, 1, 2, 3, 4]
    assert [e.message.offset for e in await anext(batches)] == [5, 6, 7, 8, 9]  # batch 1 done: acknowledged
    assert c._new_offset(tp) == 5  # (and taken: the next call says what is new since)
    await batches.aclose()  # the agent stops inside batch 2; once the loop finalizes take_events' generator,
    del batches             # its finally acknowledges batch 2 all the same
    gc.collect()
    for _ in range(3):
        await asyncio.sleep(0)
    assert c._new_offset(tp) is None, "offsets 5..9 were not processed to the end: committing them loses them"
    assert not c.unacked and not c.unfinished


def test_a_batch_that_fails_outside_the_stage_checks_stops_the_worker_and_a_stop_does_not(rt, worker_exits):
    """Runtime.unfinished: an exception the stage did not handle stops the worker (exit 75, as a lost write does),
    so the batch is fetched again; Faust would restart the agent without a seek and the uncommitted batch would
    hold up every later commit of its partitions. A stop (CancelledError) just leaves the batch uncommitted."""
    codes = worker_exits
    app, c, tp = flowing(rt)
    events = [SimpleNamespace(message=delivered(rt, tp, o)) for o in range(3)]
    with pytest.raises(SystemExit), rt.unfinished(events):
        raise RuntimeError("the dead-letter topic could not be written")
    assert codes == [75]
    with pytest.raises(asyncio.CancelledError), rt.unfinished(events):
        raise asyncio.CancelledError
    assert codes == [75] and all(e.message in c.unfinished for e in events)
    for e in events:
        e.message.ack(c)
    assert c._new_offset(tp) is None and not c.unfinished


def test_an_event_whose_work_runs_beside_the_agent_is_committed_once_that_work_is_done(rt):
    """streams/consumer.py, 6 (Runtime.later): the shot that completes a title starts its MediaFM pass beside
    the agent, which acknowledges the batch and goes on. Nothing from that shot on is committed until the pass
    is done; a pass cut short by a stop leaves it uncommitted (fetched again)."""
    asyncio.run(_later(rt))


async def _later(rt):
    app, c, tp = flowing(rt)
    messages = [delivered(rt, tp, o) for o in range(6)]
    gate = asyncio.Event()

    async def title_pass():
        await gate.wait()

    await rt.later(title_pass(), SimpleNamespace(message=messages[2]), at_most=2)
    for m in messages:  # the agent's batch, acknowledged by take_events while the pass runs
        m.ack(c)
    assert c._new_offset(tp) == 2, "offsets 2..5 committed before the title's pass is done: a crash loses it"
    gate.set()
    await until(lambda: not rt._later, "the pass to finish")
    assert c._new_offset(tp) == 6 and not c.deferred
    c._committed_offset[tp] = 6  # as the commit of offset 6 sets it (Faust then skips one missing offset at the head)

    stopped = asyncio.Event()
    await rt.later(stopped.wait(), SimpleNamespace(message=delivered(rt, tp, 6)), at_most=2)
    delivered(rt, tp, 7).ack(c)
    await asyncio.sleep(0)
    next(iter(rt._later)).cancel()  # the worker stops mid-pass
    await until(lambda: not rt._later, "the pass to be cancelled")
    assert c._new_offset(tp) is None, "a pass cut short must be run again: offset 6 stays uncommitted"
    c.deferred.clear()

    # a pass that ends before its own batch does: the batch's acknowledgement commits it, none is dropped
    dropped = metrics.acks_dropped.labels(tp.topic)._value.get()
    batch = [SimpleNamespace(message=delivered(rt, tp, o)) for o in (8, 9)]
    with rt.unfinished(batch):
        await rt.later(asyncio.sleep(0), batch[0], at_most=2)
        await until(lambda: not rt._later, "the pass to finish")
    for e in batch:
        e.message.ack(c)
    assert metrics.acks_dropped.labels(tp.topic)._value.get() == dropped
    assert c._acked[tp] == [7, 8, 9] and not c.deferred


def test_work_beside_the_agent_waits_while_what_runs_with_it_would_pass_its_budget(rt):
    """Runtime.later with a budget (a title's pass sized by its shots' bytes, streams/contextualise.py
    PASSES_BYTES): a second pass starts beside a running one only while both fit; one over the budget on its
    own runs alone, never forever refused."""
    asyncio.run(_budget(rt))


async def _budget(rt):
    app, c, tp = flowing(rt)
    started, gates = [], {name: asyncio.Event() for name in ("big", "small", "bigger", "next")}

    def title_pass(name):
        async def run():
            started.append(name)
            await gates[name].wait()
        return run()

    def later(name, size, offset):
        return asyncio.ensure_future(rt.later(title_pass(name), SimpleNamespace(message=delivered(rt, tp, offset)),
                                              at_most=2, size=size, budget=100))

    await later("big", 70, 0)
    await until(lambda: started == ["big"], "the first pass to start")
    await later("small", 30, 1)  # 70 + 30: within the budget, beside it
    await until(lambda: started == ["big", "small"], "the second pass to start beside the first")
    gates["small"].set()
    await until(lambda: len(rt._later) == 1, "the small pass to finish")
    await later("bigger", 150, 2)  # over the budget on its own: waits for the big one, then runs alone
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == ["big", "small"], "a pass started beside one it does not fit with"
    gates["big"].set()
    await until(lambda: started[-1] == "bigger", "the large pass to run once alone")
    assert list(rt._later.values()) == [150]
    await later("next", 1, 3)  # anything beside a pass over the budget waits too
    for _ in range(20):
        await asyncio.sleep(0)
    assert started[-1] == "bigger"
    gates["bigger"].set()
    await until(lambda: started[-1] == "next", "the pass after the large one to start")
    gates["next"].set()
    await until(lambda: not rt._later, "every pass to finish")
    assert not c.deferred, "each pass's event is settled once its pass is done"


def test_the_agent_is_not_held_up_by_work_that_waits_its_turn_beside_it(rt):
    """Runtime.later with `at_most` passes running: a third title's pass waits its turn, and the agent goes on at
    once (the live shots behind it in the fused topic are not held up by titles' passes). Passes start first come
    first started, each in the context it was handed over in (its event's, which names the partition of its table
    writes); each event is committed once its own pass is done. Only with `queued_most` waiting does the agent
    wait too (what holds a fast upstream back), and a stop closes those that never started."""
    asyncio.run(_turns(rt))


async def _turns(rt):
    app, c, tp = flowing(rt)
    started, gates = [], {}
    tag = contextvars.ContextVar("tag")

    def title_pass(name):
        gates[name] = asyncio.Event()

        async def run():
            started.append((name, tag.get()))
            await gates[name].wait()
        return run()

    async def later(name, offset):
        tag.set(name)
        await asyncio.wait_for(rt.later(title_pass(name), SimpleNamespace(message=delivered(rt, tp, offset)),
                                        at_most=2, queued_most=2), timeout=5)

    for offset, name in enumerate("abcd"):  # a, b run; c, d wait: none of the four holds the agent up
        await later(name, offset)
    await until(lambda: len(started) == 2, "two passes to start")
    assert started == [("a", "a"), ("b", "b")] and len(rt._waiting) == 2
    blocked = asyncio.ensure_future(later("e", 4))  # two waiting already: the agent waits for a turn
    for _ in range(20):
        await asyncio.sleep(0)
    assert not blocked.done(), "the agent handed over more work than queued_most while none could start"
    gates["b"].set()  # b done: c starts in its own event's context, and e is taken in
    await blocked
    await until(lambda: len(started) == 3, "the first pass waiting to start")
    assert started[-1] == ("c", "c") and [w.event.message.offset for w in rt._waiting] == [3, 4]
    for m in (delivered(rt, tp, o) for o in range(5, 8)):  # the agent's batches meanwhile, acknowledged
        m.ack(c)
    assert c._new_offset(tp) is None, "offset 0 is committed before its pass (a) is done"
    gates["a"].set()
    await until(lambda: len(started) == 4, "the next pass to start")
    assert started[-1] == ("d", "d")
    for name in "cd":
        gates[name].set()
    await until(lambda: len(started) == 5, "the last pass to start")
    gates["e"].set()
    await until(lambda: not rt._later and not rt._waiting, "every pass to finish")
    assert [n for n, _ in started] == list("abcde") and all(n == t for n, t in started), started
    assert c._new_offset(tp) == 8 and not c.deferred
    c._committed_offset[tp] = 8

    await later("f", 8)
    await later("g", 9)
    await later("h", 10)
    waiting = rt._waiting[0].work
    await until(lambda: len(started) == 7, "two passes to start")
    for task in list(rt._later):  # the worker stops: what runs is cancelled, what waits is never started
        task.cancel()
    for m in (delivered(rt, tp, o) for o in (11, 12)):  # the agent's batch meanwhile, acknowledged
        m.ack(c)
    await until(lambda: not rt._later and not rt._waiting, "the passes to be cancelled")
    assert waiting.cr_frame is None, "a pass that never started is left unclosed"
    assert [n for n, _ in started][-2:] == ["f", "g"]
    assert c._new_offset(tp) is None and {m.offset for m in c.deferred} == {8, 9, 10}, \
        "passes cut short or never started must be run again: their offsets stay uncommitted"
    c.deferred.clear()


def test_work_beside_the_agent_that_fails_outside_its_checks_stops_the_worker(rt, worker_exits):
    """A title's pass dead-letters bad titles itself; anything else it raises stops the worker (exit 75), as an
    unfinished batch does, so that the event is processed again rather than its partition's commits held up."""
    app, c, tp = flowing(rt)

    async def main():
        async def failing():
            raise RuntimeError("not a bad title: a bug")

        await rt.later(failing(), SimpleNamespace(message=delivered(rt, tp, 0)), at_most=2)
        await until(lambda: False, "the worker to stop", timeout_s=10)

    with pytest.raises(SystemExit):
        asyncio.run(main())
    assert worker_exits == [75] and c._new_offset(tp) is None


def test_a_partition_whose_start_is_being_looked_up_does_not_crash_the_livelock_check(rt):
    """Faust's livelock detector read the position aiokafka asserts is known; after a seek to the start (1.),
    between a second rebalance and the fetcher's offset lookup, it is not, and the consumer thread crashed
    with a bare AssertionError (a worker of tests/streams/test_live_restarts.py in CI, 2026-12-02). The
    aiokafka consumer here is real; it is not started (no broker), so its fetcher's view of the subscription
    is set to the consumer's own, as start() does."""
    asyncio.run(_livelock_check(rt))


async def _livelock_check(rt):
    import time

    from aiokafka.consumer.fetcher import OffsetResetStrategy
    from aiokafka.structs import TopicPartition

    c = rt.app.consumer
    c._thread._consumer = c._thread._create_consumer(loop=asyncio.get_running_loop())
    ak = c._thread._ensure_consumer()
    tp = TP(rt.names.fused, 0)
    ak._subscription.assign_from_user({TopicPartition(tp.topic, 0)})
    ak._fetcher = SimpleNamespace(_subscriptions=ak._subscription)
    rt.app.topics._acking_topics.add(tp.topic)
    state = ak._subscription.subscription.assignment.state_value(TopicPartition(tp.topic, 0))
    state.highwater, state.timestamp = 10, time.time() * 1000  # fetched from once
    c._thread.time_started = time.monotonic()
    state.seek(3)
    c.verify_event_path(time.monotonic(), tp)  # a known position: Faust's check runs
    state.await_reset(OffsetResetStrategy.EARLIEST)  # what seek_to_beginning leaves until the lookup
    assert not state.has_valid_position
    c.verify_event_path(time.monotonic(), tp)  # before: AssertionError from aiokafka's position
    with pytest.raises(AssertionError):
        FaustConsumer.verify_event_path(c, time.monotonic(), tp)  # Faust's own check, the same state
