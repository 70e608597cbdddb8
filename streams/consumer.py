"""The Kafka consumer of every worker: Faust's, with the holes closed through which messages were lost.

1. A partition nothing was committed for yet is read from its start after a rebalance.
After every rebalance Faust seeks each partition to its committed offset (aiokafka's seek_to_committed),
which leaves a partition with no committed offset (or 0) wherever the fetcher happened to be. Messages
fetched before the rebalance but never handed to an agent (Faust drops the rest of a fetched batch when
the generation changes) were then skipped for good, and the next commit went past them. Workers started
together on a backlog (tests/streams/test_scaling.py: the first generation lasts seconds, so nothing is
committed before the next worker joins) lost 15-45 consecutive fused shots of a title in most runs;
read back from the topics and the changelogs, the offsets were committed and no table ever held them.
Here such a partition is sought to its beginning, as the consumer's `earliest` reset policy says.

2. A message Faust skipped is never committed.
Faust (0.15, faust/streams.py) skips a message that reaches an agent while the app's flow is stopped (a
rebalance under way) or that was fetched under an older consumer generation, and then *acknowledges* it
like a processed one, so that the lag does not grow. Once acknowledged, its offset is committed with the
next commit. Faust seeks to the committed offsets after every rebalance to fetch the skipped messages
again; when that commit lands first, the seek starts past them and they are never processed. Between
a rebalance's assignment and its seek Faust does not know the committed offset and commits whatever run
of offsets it holds acknowledged. Read from Faust's code; such acknowledgements do come (60 in a run of
bench/catalog.py with a worker joining mid-run), but no loss was traced to this hole alone: closing it
did not stop test_scaling's losses, closing hole 1 did.

Here an acknowledgement counts towards a commit only if it comes while the app's flow is running and
for a message of the current generation. Any other is a message that was skipped, or processed under
the old assignment just before it was taken away. It is dropped: the message is fetched again after
the seek, by this worker or by the partition's new owner. At worst a processed message is processed
twice, and every stage recognises redeliveries (mediafm_duplicates_total). Dropped acknowledgements
are counted in mediafm_acks_dropped_total{topic}.

3. Delivery without two new tasks per message.
Faust's fetch loop (Consumer._drain_messages) hands each fetched message to the agents' queues racing it
against the flow's suspension: Service.wait_first makes two tasks and an asyncio.wait per message. A bare
Faust agent draining 9 KB messages with take_events read 10,700-10,900 messages/s that way and
26,300-27,500 with the delivery awaited directly (two runs each, a one-off script, this machine). Every shot
crosses two topics in a worker, and the agents waited for their messages half of the time: bench/catalog.py
(20 titles x 1,500 shots, one worker, runs alternated) went from 1,264 and 1,124 shots/s to 1,620 and 1,580,
the worker's main thread from about 70% busy to 83%. Here a message is
delivered by awaiting the callback directly while the flow runs, and with Faust's race while it is
stopped. A delivery under way when a rebalance stops the flow finishes once the flow resumes (Faust would
have abandoned it): it lands in the queue stamped with the old generation, the stream skips it, and hole 2's
rule drops its acknowledgement, so it is fetched again after the seek. A jump in offsets within a fetch
(transaction markers) is counted as acknowledged up to the message before it; Faust's loop included the
message itself, which a commit could then pass before it was processed.

4. A batch whose processing did not finish is never committed.
Faust's take_events acknowledges a batch's messages in a `finally` (faust/streams.py), so also when the agent
stopped or failed inside the batch: a worker stopped cleanly during a Triton call committed messages whose
table writes (a title's progress) were never made, and their shots were lost (read from Faust's code; not
seen in a run). Runtime.unfinished, around each batch an agent processes (in Runtime.batches and Runtime.events,
and around the fuse and encode stages' own batches), names its messages in Consumer.unfinished until the batch is
done and its writes are in their changelogs; an acknowledgement of an unfinished message is dropped like those of hole 2.

5. Nothing is committed past a record the producer could not deliver.
Before every commit Faust flushes the producer (Consumer._commit_offsets), and aiokafka's flush waits for
every record handed to it, delivered or not; a record that failed (the broker unreachable past the
producer's own retries) did not stop the commit, which then acknowledged the events the record came from.
The stages send their records straight to aiokafka (Runtime.send, not Faust's buffered Topic.send), so the
flush covers them all, and the runtime remembers a failed one (its done-callback runs before the flush
returns: aiokafka resolves a batch's futures in one call, the flush's waiter wakes after their callbacks).
Consumer._commit asks the runtime first (`before_commit`, set by install()): a lost record stops the worker
with exit 75, uncommitted, and the events are processed again by whoever takes over.

6. An event whose work outlives its batch is committed once that work is done.
The contextualise stage runs a title's MediaFM pass beside the agent, which goes on with the next shots
(Runtime.later): the event that completed the title is then acknowledged by take_events before the pass is
over. Consumer.deferred names such messages: Faust's acknowledgement of one is ignored (not dropped: it stays
unacknowledged), and Consumer.settle acknowledges it once the work is done. Nothing past it in its partition
is committed meanwhile: Faust's own offset finder (Consumer._new_offset, 0.15.3) commits past a single
unacknowledged message at the head (it takes the committed offset for the last one processed) and past any
number of them before the partition's first commit, so the acknowledged offsets at or above a deferred message
are set aside while it looks. If the worker dies first, the partition is read again from that event on, and the title
is contextualised again; a rebalance meanwhile drops the late acknowledgement as in 2. Faust's rebalance and
stop wait for every unacknowledged message (stream_wait_empty), deferred ones included: they wait for the passes
running and those waiting their turn (streams/runtime.py LATER_QUEUED), which go on starting meanwhile.

7. A partition whose position is being looked up does not crash the worker.
Faust's livelock detector (verify_event_path, every few seconds) reads each assigned partition's position from
aiokafka's state once the partition has been fetched from; aiokafka asserts that the position is known. After 1.
seeks a partition to its start, the position is unknown until the fetcher has asked the broker for it, and a
second rebalance of a worker that had already fetched hit that window: the consumer thread crashed with a bare
AssertionError and the worker stopped (CI, 2026-12-02, tests/streams/test_live_restarts.py). The check is
skipped for such a partition until its position is known.

All seven read from faust-streaming 0.15.3 and aiokafka 0.14 (pyproject.toml pins both lines): an upgrade must
be checked against this module.
"""

from __future__ import annotations

import asyncio
import logging

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import ensure_aiokafka_TP
from faust.types import Message
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from streams import metrics

log = logging.getLogger(__name__)


class Consumer(AIOKafkaConsumer):
    """aiokafka's Faust consumer: never-committed partitions read from the start after a rebalance, and
    commits that cover processed messages only (see the module doc)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unfinished: set[Message] = set()
        """Messages an agent is processing (4.): an acknowledgement of one of them is dropped."""
        self.deferred: set[Message] = set()
        """Messages whose work outlives their batch (6.): acknowledged by settle(), not by the agent."""

    async def _commit(self, offsets) -> bool:
        before_commit = getattr(self.app, "mediafm_before_commit", None)  # install()
        if before_commit is not None:
            before_commit()  # stops the worker if a record handed to the producer was not delivered (5.)
        return await super()._commit(offsets)

    async def perform_seek(self) -> None:
        await super().perform_seek()  # sets _committed_offset: None where nothing (or 0) was committed
        if self.app.conf.consumer_auto_offset_reset != "earliest":
            return
        fresh = [tp for tp in self.assignment() if not self._is_changelog_tp(tp)
                 and self.app.topics.acks_enabled_for(tp.topic) and not self._committed_offset.get(tp)]
        if fresh:
            log.info("nothing committed yet on %d partition(s): reading them from the start", len(fresh))
            await self._thread.seek_to_beginning(*(ensure_aiokafka_TP(tp) for tp in fresh))

    def verify_event_path(self, now: float, tp) -> None:
        """Faust's livelock check, skipped while the partition's position is unknown (7.)."""
        try:
            state = self._thread._ensure_consumer()._fetcher._subscriptions.subscription.assignment.state_value(
                ensure_aiokafka_TP(tp))
        except AttributeError:  # no fetcher or no assignment yet (starting, or mid-rebalance): nothing to check
            return None
        if state is not None and not state.has_valid_position:
            return None
        return super().verify_event_path(now, tp)

    def _new_offset(self, tp):
        """Faust's, blind to acknowledged offsets at or past the partition's first deferred message (6.)."""
        held = [m.offset for m in self.deferred if m.tp == tp]
        if not held:
            return super()._new_offset(tp)
        limit = min(held)
        acked = self._acked[tp]
        self._acked[tp] = [o for o in acked if o < limit]
        try:
            return super()._new_offset(tp)
        finally:  # Faust's removes the run it returns from the list in place: keep the rest, and what was set aside
            self._acked[tp] = self._acked[tp] + [o for o in acked if o >= limit]

    def settle(self, message: Message) -> bool:
        """The work a deferred message (6.) started is done: acknowledge it now, or, if its batch is still being
        processed (4.), leave it to the batch's own acknowledgement."""
        self.deferred.discard(message)
        if message in self.unfinished:
            return False
        return self.ack(message)

    def ack(self, message: Message) -> bool:
        if message in self.deferred:
            return False  # settle() acknowledges it (6.); until then nothing past it is committed
        app = self.app
        if (app.flow_control.is_active() and message.generation_id == app.consumer_generation_id
                and message not in self.unfinished):
            return super().ack(message)
        self.unfinished.discard(message)
        with ack_lock:  # the same critical section as Faust's ack: these sets are shared with it
            if message.acked:
                return False
            message.acked = True  # done with, as far as waiting for streams goes (wait_empty)
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
        metrics.acks_dropped.labels(message.topic).inc()
        log.debug("not committing %s[%d]@%d: skipped, unfinished or processed across a rebalance; it is fetched "
                  "again",
                  message.topic, message.partition, message.offset)
        return False

    async def _drain_messages(self, fetcher) -> None:
        """Faust's fetch loop (faust/transport/consumer.py, 0.15.3): each fetched message to the conductor,
        in order, noting read offsets and gaps. Differs only in how a message is delivered (module doc, 3)."""
        deliver, suspended = self.callback, self.suspend_flow
        flow = self.app.flow_control
        acks_enabled_for = self.app.topics.acks_enabled_for
        read = self._read_offset
        since_yield = 0
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records = self.getmany(timeout=1.0)
                await asyncio.sleep(0)  # getmany can return at once, again and again
                if self.should_stop:
                    continue
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > 100:  # let the agents run within a long fetch
                        await asyncio.sleep(0)
                        since_yield = 0
                    last = read[tp]
                    if last is not None and message.offset < last:
                        continue  # already handed on (a fetch that overlapped a seek)
                    if last and message.offset - last > 1 and acks_enabled_for(message.topic):
                        # offsets with no message (transaction markers): counted as acknowledged. Faust's loop
                        # passes the message's own offset as the gap's end, which may commit it unprocessed
                        await self._add_gap(tp, last + 1, message.offset - 1)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if flow.is_active() and not suspended.is_set():
                        await deliver(message)
                    else:  # a rebalance under way: give up on the delivery if the flow stops meanwhile
                        await self.wait_first(deliver(message), suspended.wait())
                    read[tp] = message.offset
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


def install(app, before_commit=None) -> None:
    """Make `app` (a faust.App not yet started) consume with Consumer; `before_commit()` runs before each
    commit, after the producer flush, and may stop the worker (5.)."""
    app.transport.Consumer = Consumer
    app.mediafm_before_commit = before_commit

