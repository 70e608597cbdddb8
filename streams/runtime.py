"""What every stage runs with: the Faust app built from Settings, and the operations the stages share.

    Runtime(settings)
      .app            faust.App: consumer group and changelog topics named by topic_prefix
      .topics         the pipeline's topics (mediafm/topics.py names), raw bytes in and out
      .triton         TritonClient: retries while Triton is down, BadRequest when the input is wrong
      .table(name)    a changelog-backed table whose writes events() waits for; RocksDB under table_memory_mb
      .send()         a record to a topic; sends_acknowledged() waits for it (and for every table write)
      .events(stream) each event acknowledged only once the records it made are in their topics (.batches too)
      .later()        work beside the agent (a title's MediaFM pass), its event committed once it is done
      .dead_letter()  the raw message and the reason to the dead-letter topic
      .contextualise() MediaFM over windows of fused shots, then one ContextualEmbedding per shot

Topics carry raw bytes: each agent decodes with mediafm.schema inside a
per-message try, so a malformed message reaches the dead-letter topic with its
reason instead of being dropped by a serializer before any agent sees it.
This module imports no stage: streams/app.py builds a Runtime and hands it to
each stage's `register`.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import logging
import os
import re
import socket
import time
import weakref
from bisect import bisect_left
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import faust
import numpy as np
from faust.streams import _current_event
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mediafm.config import Settings, replace
from mediafm.errors import BadRequest, ConfigError, MediaError, MediaUnavailable, SchemaError, Transient
from mediafm.kafka_security import client_security
from mediafm.media.segment_cache import DecodedSegments
from mediafm.profiles import get_profile
from mediafm.redact import redact_url
from mediafm.representations import published, served_output, uses_input
from mediafm.retry_metrics import count_retry
from mediafm.schema import (
    MAX_MESSAGE_BYTES,
    ContextualEmbedding,
    DeadLetter,
    FusedShot,
    ShotsRefused,
    bytes_to_vec,
    vec_to_bytes,
)
from mediafm.topics import Topics
from mediafm.triton_client import TritonClient
from mediafm.windows import Window
from streams import consumer, metrics
from streams.store import TableMemory, budgeted

log = logging.getLogger(__name__)


def broker_credentials(s: Settings) -> faust.types.auth.CredentialsT | None:
    """The broker security of mediafm.kafka_security.client_security as Faust takes it (None: PLAINTEXT). Faust's
    aiokafka driver gives its consumer, producer and admin client the same keywords back, with the protocol
    named by the credentials' kind: SASL with an SSL context is SASL_SSL, without one SASL_PLAINTEXT."""
    sec = client_security(s)
    if not sec:
        return None
    if "sasl_mechanism" not in sec:
        return faust.SSLCredentials(sec["ssl_context"])
    return faust.SASLCredentials(username=sec["sasl_plain_username"], password=sec["sasl_plain_password"],
                                 mechanism=sec["sasl_mechanism"], ssl_context=sec.get("ssl_context"))


RUNS_BUFFER = 64
"""Records the agents of the encoded and fused topics hold fetched and not yet taken (Faust's stream buffer,
stream_buffer_maxsize = 4096 records for every other channel; fetching pauses at 1/1.25 of it). A record there
may be a run of shots of up to 448 KiB (EncodedShots, FusedShots): 64 of them are 28 MiB. One worker on a
backlog of runs (bench/catalog.py --titles 40) peaked at 1.1 GiB with 4096, 0.9 GiB with 256, and 613-641 MiB
with 64, against 546-582 MiB for one shot a record."""


MAX_LETTER_KEY_BYTES = 1024
"""A dead letter keeps this much of the record's key (the broker takes keys of megabytes; ours are ids)."""
MAX_REASON_CHARS = 2000
"""A dead letter's reason, as sent and as logged, is cut to this: reasons echo what was wrong, and a hostile message
makes that megabytes (a 3 MB schema name gave a 3 MB log line)."""

CHANGELOG_SEGMENT_MS = 3_600_000
"""A table changelog's log segment closes after an hour. The broker compacts closed segments only; by default one
closes at 1 GiB or after 7 days, so a live event's held shots (a put and a delete per shot, 7.2 MB an hour) were
never compacted while it ran, and a restarted worker replayed every record of it (2.2 s for a 3-hour event).
Set when Faust declares a changelog: one declared by an older worker keeps its configuration (`kafka-configs.sh
--alter --entity-type topics --entity-name PREFIX-TABLE-changelog --add-config segment.ms=3600000`)."""

LATER_QUEUED = 8
"""Works (titles' MediaFM passes) handed to Runtime.later that may wait for their turn to start before the agent
that hands over one more waits too. Each holds its partition's commits from its event on (streams/consumer.py, 6)
and keeps its title's shots held within held_shots_mb (or they are read back by offset when its pass starts).
Faust's rebalance and stop wait for every deferred event, so a rebalance under a backfill waits for up to
FINISHING + LATER_QUEUED passes, and those the agent's batch in hand completes after them (the agent, held up,
waited for FINISHING and what its batch then started): a longer queue would keep a live event's shots moving
through more titles' passes and make rebalances that much longer."""


@dataclass
class _Later:
    """Work handed to Runtime.later, waiting its turn: the coroutine, its event, its size and the limits it starts
    within, and the context it was handed over in."""

    work: object
    event: object
    size: int
    at_most: int
    budget: int
    context: contextvars.Context


class Runtime:
    """The Faust app of one worker and what its stages share; built from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Workers read media only from allowed roots: media_roots, or <state_dir>/media when unset.
        self.media_settings = replace(settings, media_roots=settings.worker_media_roots)
        self.names = Topics.from_settings(settings)
        self._unsent: set[asyncio.Future] = set()  # records handed to the producer, not yet acknowledged
        self._lost: BaseException | None = None  # the first of them the producer could not deliver
        self._later: dict[asyncio.Task, int] = {}  # work running beside the agents (later()), with its size
        self._waiting: deque[_Later] = deque()  # work handed to later() that waits its turn to start
        self.app = self._make_app()
        self.topics = SimpleNamespace(**{name: self._topic(topic, RUNS_BUFFER if name in ("encoded", "fused") else None)
                                         for name, topic in vars(self.names).items()})
        self.triton = TritonClient(settings.triton_http_url, request_timeout_s=settings.triton_timeout_s,
                                   on_latency=lambda m, s: metrics.triton_seconds.labels(m).observe(s))
        self._served: dict[str, Served] = {}  # MediaFM model -> what it accepts
        # Live segments the segment stage decoded, kept for the encode stage (mediafm/media/segment_cache.py)
        self.live_fed: dict[str, float] = {}  # live event id -> when a segment of it last came here (monotonic)
        self.decoded = DecodedSegments(settings.live_decoded_mb * 2**20,
                                       on_lookup=lambda hit: metrics.live_decoded.labels("hit" if hit else "miss").inc())

    # --- the app -------------------------------------------------------------------------------------
    def _make_app(self) -> faust.App:
        s, awaited = self.settings, self._awaited
        memory = TableMemory(s.table_memory_mb * 2**20)
        metrics.table_memory.set_function(memory.usage)

        class Table(faust.Table):
            """faust.Table whose changelog writes can be waited for (Runtime.sends_acknowledged), its RocksDB
            stores under the worker's one memory budget (streams/store.py)."""

            def _new_store_by_url(self, url):
                return budgeted(super()._new_store_by_url(url), memory)

            def send_changelog(self, *args, **kwargs):
                return awaited(super().send_changelog(*args, **kwargs))

        datadir = self._claim_state_dir()
        app = faust.App(
            # The app id names the consumer group and the changelog topics: one pipeline per topic prefix.
            s.topic_prefix,
            broker=f"kafka://{s.kafka_bootstrap}",
            broker_credentials=broker_credentials(s),
            store="rocksdb://",
            datadir=str(datadir),
            # Pipeline topics are created by `mediafm stack up` with this same count
            # (faust refuses to start when the two disagree: PartitionsMismatch);
            # faust declares only its own internal topics (changelogs, leader).
            topic_partitions=s.partitions,
            # A dead worker's partitions move to the others after 15 s without heartbeats
            # (kill -9, a lost machine), not after faust's default minute.
            broker_session_timeout=15.0,
            broker_heartbeat_interval=3.0,
            consumer_group_instance_id=self._instance_id(),
            producer_max_request_size=MAX_MESSAGE_BYTES + 64 * 1024,
            # Sends gathered for 5 ms into batches of up to 512 KiB a partition (Faust: no linger, 16 KiB):
            # a fused shot and an embedding are 4-10 KiB each, so every few shots made a produce
            # request of their own, and the socket writes and the broker's work on them cost more than the
            # stages' own code (py-spy, bench/catalog.py). 5 ms is what a live shot pays per hop.
            producer_linger=0.005,
            producer_max_batch_size=512 * 1024,
            consumer_max_fetch_size=MAX_MESSAGE_BYTES + 64 * 1024,
            web_bind=s.bind_host,
            web_host=s.bind_host,
            web_port=s.worker_web_port,
            # keys are title ids, so one title's shots stay ordered in one partition
            key_serializer="raw",
            value_serializer="raw",
            Table=Table,  # app.Table(...) makes the class above
            Worker=QuietWorker,
        )
        consumer.install(app, before_commit=self._before_commit)  # commits cover processed messages only

        @app.on_rebalance_complete.connect
        async def _hold_streams_until_seek(sender, **kwargs) -> None:
            """Fetch nothing for the agents until Faust has sought their partitions to the committed offsets.

            After a rebalance Faust (0.15, Recovery.on_recovery_completed) resumes the source partitions, then
            seeks them to the committed offsets, then resumes flow, which empties the agents' queues. Whatever
            was fetched in between was thrown away with the queues while the fetch position had moved past it,
            and the consumer took the hole for acknowledged offsets: a restarted worker skipped a few messages
            of each partition (tests/test_recovery.py saw titles wait for ever for shots it never delivered).
            Stopping the consumer's flow here (Faust resumes it right after the seek) leaves nothing to lose.
            """
            app.consumer.stop_flow()

        @app.page("/metrics")
        async def prometheus_metrics(web, request):
            # aiohttp refuses a charset inside content_type; pass the full header instead
            return web.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        @app.timer(interval=5.0)
        async def report_consumer_lag():
            """Per assigned partition: end offset - committed offset, from faust's monitor."""
            mon = app.monitor
            committed = mon.tp_committed_offsets or {}
            for tp, end in (mon.tp_end_offsets or {}).items():
                if committed.get(tp) is not None:
                    metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - committed[tp]))

        @app.on_after_configured.connect
        def _configure(app, **kwargs):  # pragma: no cover - faust signal
            log.info("mediafm worker: broker %s, triton %s, %d partitions", s.kafka_bootstrap, redact_url(s.triton_http_url),
                     s.partitions)

        return app

    def _instance_id(self) -> str | None:
        """The worker's static group membership (Settings.worker_instance_id), None for dynamic."""
        s = self.settings
        if s.worker_instance_id == "auto":  # unique on a machine: the web port locks the state dir (_claim_state_dir)
            return f"{socket.gethostname()}-{s.worker_web_port}"
        return s.worker_instance_id or None

    def _claim_state_dir(self) -> Path:
        """This worker's own directory for its tables' RocksDB stores, locked for as long as it runs.

        One directory per pipeline (topic prefix): faust names the files after the tables only, so two
        pipelines sharing one would read each other's changelog offsets. And one per worker (named by its web
        port, which no two workers of a machine share): RocksDB locks each store, so a second worker on the
        same directory crashed at its first rebalance ("While lock file ... LOCK: Resource temporarily
        unavailable"). A worker whose directory is taken stops here, before joining the group, saying why.
        """
        s = self.settings
        datadir = s.state_dir / "faust" / s.topic_prefix / f"worker-{s.worker_web_port}"
        datadir.mkdir(parents=True, exist_ok=True)
        self._lock = open(datadir / "worker.lock", "w")  # noqa: SIM115 - held for the worker's lifetime
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ConfigError(f"another worker of pipeline {s.topic_prefix!r} on this machine holds {datadir} "
                              f"(worker_web_port={s.worker_web_port}); give each worker its own --web-port") from None
        return datadir

    def _topic(self, name: str, buffer: int | None) -> faust.TopicT:
        """A pipeline topic; `buffer`: its agents' stream buffer in records (None: Faust's default)."""
        topic = self.app.topic(name, key_type=bytes, value_type=bytes, partitions=self.settings.partitions)
        topic.maxsize = buffer  # App.topic takes maxsize and drops it (faust-streaming 0.15); the agents' clones
        return topic            # of the topic, whose queues hold the fetched records, copy it

    def table(self, name: str) -> faust.Table:
        """A changelog-backed table, bytes in and out, co-partitioned with the title-keyed topics. Its changelog
        (compacted, declared by Faust) closes a log segment every CHANGELOG_SEGMENT_MS."""
        return self.app.Table(name, key_type=bytes, value_type=bytes, partitions=self.settings.partitions,
                              extra_topic_configs={"segment.ms": str(CHANGELOG_SEGMENT_MS)})

    # --- events, table writes, dead letters --------------------------------------------------------------
    def _awaited(self, fut: asyncio.Future) -> asyncio.Future:
        """A record handed to the producer that sends_acknowledged() waits for until the broker has it."""
        self._unsent.add(fut)
        fut.add_done_callback(self._sent)
        return fut

    def _sent(self, fut: asyncio.Future) -> None:
        self._unsent.discard(fut)
        if not fut.cancelled() and fut.exception() is not None and self._lost is None:
            self._lost = fut.exception()  # kept: a record that failed before anyone waited is still a loss

    def _before_commit(self) -> None:
        """Right before Faust commits offsets, after its producer flush (streams/consumer.py, 5): every record
        handed to the producer before it is delivered or lost, so a lost one stops the worker uncommitted."""
        if self._lost is not None:
            self._stop(self._lost)

    async def sends_acknowledged(self) -> None:
        """Wait until every record handed to the producer before this call (Runtime.send, table writes) is in its
        topic.

        Stages whose table writes must be in their changelogs before an event is acknowledged wait here (events(),
        batches()); Faust's own pre-commit flush stops waiting on its send buffer, through which table writes go,
        after 0.1 s without progress. Records sent with Runtime.send are covered by the flush before every commit.
        A record the producer could not deliver (after its own retries) stops the worker at once, without
        committing: the events since the last commit are then redelivered to whichever worker takes over,
        which is what kill -9 does too, whereas going on would acknowledge an event whose output is lost.

        Records handed on while this waits (the other agents' sends) are not waited for: the caller's records
        were all handed on before it asked. Waiting until none was in flight tied each contextualise batch and
        each title's pass to the fuse stage's stream of fused shots: under load they waited for records they
        had nothing to do with (bench/catalog.py; the README's "what bounds it").
        """
        pending = [] if self._lost is not None else list(self._unsent)
        if pending:
            await asyncio.wait(pending)  # never raises; a failure is in self._lost (_sent runs before the wait returns)
        if self._lost is not None:
            self._stop(self._lost)
        if any(fut.cancelled() for fut in pending):  # the producer is stopping, so is the worker: nothing counts as sent
            raise asyncio.CancelledError("a record was cancelled before the broker had it")

    @staticmethod
    def _stop(e: BaseException) -> None:
        from aiokafka.errors import TopicAuthorizationFailedError

        grant = ("; the broker's ACLs deny this worker's user writing there: grant what `mediafm acls` lists (it "
                 "cannot be asked before a write, as reading can)" if isinstance(e, TopicAuthorizationFailedError)
                 else "")
        log.critical("a record did not reach its topic (%s: %s); stopping this worker now so that the "
                     "events it came from are processed again%s", type(e).__name__, e, grant)
        logging.shutdown()
        os._exit(75)  # EX_TEMPFAIL: a supervisor (compose `restart:`) starts it again

    @staticmethod
    def refusal(stage: str, shots: list, reason: str) -> ShotsRefused | None:
        """The ShotsRefused that stands for a run of one live event's or one title publication's shots (ShotRefs,
        EncodedShots, FusedShots) a stage dead-lettered; None for shots too malformed to name."""
        first = shots[0]
        msg = ShotsRefused(title_id=first.title_id, first=min(s.shot_index for s in shots),
                           last=max(s.shot_index for s in shots), stage=stage, reason=reason[:2000],
                           n_shots=shots[-1].n_shots, kind=first.kind, published_at=first.published_at,
                           request_id=first.request_id if first.kind == "title" else "")
        try:
            msg.check()
        except SchemaError:
            return None
        return msg

    async def patiently(self, what: str, call, *, first_s: float = 1.0, most_s: float = 60.0):
        """`await call()` again while it raises Transient (a service down, the media's storage failing a read):
        waited out with capped backoff, a log line each time. What the input caused (BadInput) and anything else
        goes to the caller, and so does a media read the storage keeps failing for media_retry_s: as a MediaError
        with its last error (the caller dead-letters it), since a bad sector or a FUSE mount's refusal fails the
        same way every time and would hold the partition for good."""
        delay, start = first_s, None  # start: the first storage fault (a Triton outage before it does not count)
        while True:
            try:
                return await call()
            except Transient as e:
                if isinstance(e, MediaUnavailable):
                    count_retry("media")
                    start = time.monotonic() if start is None else start
                    if time.monotonic() - start >= self.settings.media_retry_s:
                        raise MediaError(f"{e} for {time.monotonic() - start:.0f} s (media_retry_s): given up; "
                                         "mend the storage and publish it again") from None
                log.warning("%s waits: %s; retrying in %.0fs", what, e, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, most_s)

    async def refused(self, stage: str, topic, shots: list, reason: str) -> None:
        """After a run of shots was dead-lettered: its ShotsRefused (refusal) on `topic`, the next stage's, which
        passes it on (the fuse stage). The live stage goes on past them and ends the event where they carried its
        n_shots; the contextualise stage gives up the title's publication, with one dead letter that says so."""
        if (msg := self.refusal(stage, shots, reason)) is not None:
            await self.send(topic, msg.title_id.encode(), msg.to_bytes())

    async def events(self, stream):
        """`stream.events()`, each event acknowledged only once the records it made (Runtime.send, its table
        writes) are in their topics.

        Faust acknowledges an event when the agent asks for the next one and later commits acknowledged
        offsets after `producer.flush()`. In faust-streaming 0.15 that flush stops waiting on the send buffer
        after 0.1 s without progress (ProducerBuffer.flush_atmost), so under load an offset could be committed
        while its event's table writes were still buffered, and a crash then would lose them with nothing to
        redeliver the event (read from Faust's code; not seen in a test run). It also says when a partition's
        offsets jump within one consumer generation: messages that never reached the agent (the loss
        `_hold_streams_until_seek` closes), logged and counted. Run each event's body inside
        `with rt.failure_stops():`.
        """
        last: dict = {}  # TP -> (consumer generation, offset) of the last event from it
        async for event in stream.events():
            _check_continuous(last, event)
            with self.unfinished([event]):
                yield event
                await self.sends_acknowledged()

    async def batches(self, stream, size: int, within_s: float):
        """Like events(), a batch at a time: Faust's take_events acknowledges a batch's events once the agent
        asks for the next batch, and this waits for the batch's records and table writes first. One wait per
        batch, not per event: what lets a stage keep up with a title of thousands of shots arriving at once.
        Process each event inside `with processing(event):` so its table writes go to its partition, and each
        batch inside `with rt.failure_stops():`."""
        last: dict = {}
        async for events in stream.take_events(size, within=within_s):
            for event in events:
                _check_continuous(last, event)
            with self.unfinished(events):
                yield events
                await self.sends_acknowledged()

    @contextmanager
    def unfinished(self, events):
        """Acknowledgements of `events` are not committed unless this block ends normally.

        Faust's take_events acknowledges a batch in a `finally`, also when the agent stopped or failed inside
        it (streams/consumer.py, 4): a batch left mid-way is then fetched again, not committed half done.
        """
        held = self.app.consumer.unfinished
        messages = [event.message for event in events]
        held.update(messages)
        with self.failure_stops():
            yield
        held.difference_update(messages)

    @contextmanager
    def failure_stops(self):
        """An exception out of this block (not a stop: CancelledError, GeneratorExit) is an agent failing outside
        its stage's own checks: Faust would restart the agent without a seek, and the offsets not committed would
        hold up every later commit of their partitions until a rebalance. So the worker stops, as a lost write
        does, and they are fetched again.

        An agent iterating events() or batches() runs its body in this block itself: an exception in the body
        of an `async for` is not thrown into the generator it iterates (the generator is only closed, later,
        with GeneratorExit), so their own `unfinished` block never sees it."""
        try:
            yield
        except Exception as e:
            log.critical("a batch failed outside the stage's checks (%s: %s); stopping this worker now so that its "
                         "messages are processed again", type(e).__name__, e, exc_info=True)
            logging.shutdown()
            os._exit(75)  # EX_TEMPFAIL: a supervisor (compose `restart:`) starts it again

    async def later(self, work, event, *, at_most: int, size: int = 0, budget: int = 0,
                    queued_most: int = LATER_QUEUED) -> None:
        """Run coroutine `work`, started by `event`, beside the agent; `event` is committed once it is done.

        The agent goes on with its next events meanwhile (a title's MediaFM pass while the next titles' shots,
        and live events' shots, arrive). `event` stays uncommitted, and with it its partition from there on
        (streams/consumer.py, 6), until `work` and the records and table writes it made are in their topics: a
        worker that dies first has the event delivered again. `work` starts at once while fewer than `at_most`
        run and, with a `budget`, while the sizes of those running and its own `size` together are within it
        (work over the budget on its own runs alone); else it waits its turn, first come first started, and
        this returns at once all the same: the agent is not held up by work it does not wait for (a live shot
        behind two titles' passes). Only with `queued_most` works already waiting does this wait too, for one
        of those running to finish: what holds a fast upstream back. `work` runs in the context it was handed
        over in (its event's: its table writes' partition). `work` must handle bad input itself (dead
        letters); anything else it raises stops the worker, as an unfinished batch does.
        """
        while len(self._waiting) >= queued_most and self._later:
            await asyncio.wait(self._later, return_when=asyncio.FIRST_COMPLETED)
        self.app.consumer.deferred.add(event.message)
        self._waiting.append(_Later(work, event, size, at_most, budget, contextvars.copy_context()))
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start the works waiting (later()), in order, while the first of them fits beside those running."""
        while self._waiting:
            w = self._waiting[0]
            running = sum(self._later.values())
            if self._later and (len(self._later) >= w.at_most or (w.budget and running + w.size > w.budget)):
                return
            self._waiting.popleft()
            self._run_beside(w)

    def _run_beside(self, w: _Later) -> None:
        consumer, work = self.app.consumer, w.work

        async def run():
            await work
            await self.sends_acknowledged()

        task = asyncio.get_running_loop().create_task(run(), context=w.context)
        self._later[task] = w.size

        def done(t: asyncio.Task) -> None:
            self._later.pop(t, None)
            if t.cancelled():  # the worker is stopping: the event is fetched again, and so are those waiting
                work.close()  # never started, if cancelled at once
                while self._waiting:
                    self._waiting.popleft().work.close()
                return
            if t.exception() is not None:
                e = t.exception()
                log.critical("work left to run beside the agent failed (%s: %s); stopping this worker now so that "
                             "its event is processed again", type(e).__name__, e, exc_info=e)
                self._stop(e)
            consumer.settle(w.event.message)
            self._start_waiting()

        task.add_done_callback(done)

    async def send(self, topic: faust.TopicT, key: bytes | None, value: bytes) -> asyncio.Future:
        """One record to `topic` by the worker's producer; the future resolves once the broker has it.
        Its events' offsets are not committed before it is delivered: Faust flushes the producer before each
        commit, and a record that failed stops the worker first (streams/consumer.py, 5); sends_acknowledged()
        waits for it too. For shots, encoded and fused shots, embeddings and dead letters.

        Faust's Topic.send is not used: it queues each record in Faust's own send buffer first, which the
        flush before a commit stops waiting on after 0.1 s without progress (Runtime.events), and it wraps
        each record in a message future, a pending message and callbacks: a bare Faust worker sent 23,800
        records of 9 KB a second that way and 46,100 through the producer directly (one run, a one-off script).
        Partitioned by key with the producer's default partitioner, as Topic.send does.
        """
        return self._awaited(await self.app.producer.send(topic.get_topic_name(), key, value, partition=None,
                                                          timestamp=None, headers=None))

    async def dead_letter(self, stage: str, event: faust.EventT, reason: str) -> None:
        """Send the raw message and the reason to the dead-letter topic. Never raises on the reason."""
        msg = event.message
        reason = redact_url(reason)
        reason = reason if len(reason) <= MAX_REASON_CHARS else \
            f"{reason[:MAX_REASON_CHARS - 40]}... ({len(reason)} characters in all)"
        log.warning("dead letter from %s (%s[%d]@%d): %s", stage, msg.topic, msg.partition, msg.offset, reason)
        metrics.dead_letters.labels(stage).inc()
        value = msg.value if isinstance(msg.value, bytes) else bytes(str(msg.value), "utf-8")
        key = msg.key if isinstance(msg.key, bytes | None) else str(msg.key).encode()
        if key is not None and len(key) > MAX_LETTER_KEY_BYTES:  # a key of megabytes made the letter too large to
            # pack: SchemaError out of the stage's handler, the worker stopped, and again on the same record
            reason = f"{reason} (its key of {len(key)} bytes is cut to {MAX_LETTER_KEY_BYTES} here)"
            key = key[:MAX_LETTER_KEY_BYTES]
        letter = DeadLetter(stage=stage, topic=msg.topic, partition=msg.partition, offset=msg.offset,
                            key=key, reason=reason, payload=value[: 1024 * 1024])
        await self.send(self.topics.deadletter, letter.key, letter.to_bytes())

    # --- MediaFM ---------------------------------------------------------------------------------------
    async def served(self, model: str) -> Served:
        """What the served MediaFM model accepts: read from Triton's model config once per version."""
        if model not in self._served:
            cfg = await self.triton.model_config(model)
            max_shots = cfg.get("parameters", {}).get("max_shots", {}).get("string_value")
            self._served[model] = Served(max_batch=max(1, int(cfg.get("max_batch_size", 1))),
                                         max_shots=int(max_shots) if max_shots else None)
            log.info("%s accepts %d windows a request, max_shots %s", model, self._served[model].max_batch,
                     self._served[model].max_shots or f"not recorded (the window_shots setting, "
                                                        f"{self.settings.window_shots}, is assumed)")
        return self._served[model]

    async def window_plan(self, profile: str) -> tuple[int, int]:
        """(size, stride) of the window plan: the window_* settings, cut to the served model's max_shots.

        A model trained on shorter windows (`mediafm train --max_shots 128`; `mediafm export` records it in
        the served model's config) gets windows it was trained for, the stride scaled with them.
        """
        served = await self.served(get_profile(profile).mediafm_model)
        s = self.settings
        size = min(s.window_shots, served.max_shots or s.window_shots)
        return size, max(1, min(size, round(s.window_stride * size / s.window_shots)))

    async def run_windows(self, fused: np.ndarray, title: np.ndarray, windows: list[Window],
                          rows: list[tuple[int, int]], profile: str, *,
                          version: str = "") -> tuple[np.ndarray, str]:
        """MediaFM on Triton over windows [(start, end)] of `fused` (n, D); (vectors (R, H), model version).

        rows: the R vectors wanted, each (index into windows, shot within that window), in the order returned.
        The vectors are the served output the embedding_representation setting is made from (HIDDEN or
        OUTPUT; mediafm.representations.served_output). Only the rows wanted are kept, copied out of each
        answer as it comes: a title's vectors once, not every window's (T, H), which at the stride of half a
        window is twice as much (174 MB for a 10,000-shot title at the fused width). Windows go in
        requests of at most the served model's max_batch_size, so a title of any length fits; all of one
        title's requests must be answered by one version (a version loaded in between: the title again).
        version: a version to ask for by number ("" = the newest served); VersionRetired once it is gone.
        Raises WindowsTooLong when the model now served takes shorter windows than these.
        """
        model = get_profile(profile).mediafm_model
        served = await self.served(model)
        rep = served_output(self.settings.embedding_representation)
        T = max(w.end - w.start for w in windows)
        if served.max_shots is not None and T > served.max_shots and not version:
            raise WindowsTooLong(f"{model} takes windows of at most {served.max_shots} shots, not {T}",
                                 served.max_shots)
        ks, at = np.array([k for k, _ in rows], np.int64), np.array([r for _, r in rows], np.int64)
        if ((ks < 0) | (ks >= len(windows))).any():
            raise IndexError(f"rows wanted from windows outside the {len(windows)} to run")
        lengths = np.array([w.end - w.start for w in windows], np.int64)
        if ((at < 0) | (at >= lengths[ks])).any():  # numpy would wrap a negative one round to another shot
            raise IndexError("rows wanted from outside their window")
        order = np.argsort(ks, kind="stable")  # the rows wanted from each request, together
        sorted_ks = ks[order]
        out, versions = None, set()
        for k0 in range(0, len(windows), served.max_batch):
            chunk = windows[k0 : k0 + served.max_batch]
            shots = np.zeros((len(chunk), T, fused.shape[1]), np.float32)  # zero padding past each LENGTH
            for k, w in enumerate(chunk):
                shots[k, : w.end - w.start] = fused[w.start : w.end]
            meta: dict = {}
            try:
                res = await self.triton.infer(model, {
                    "SHOTS": shots,
                    "TITLE": np.repeat(title[None], len(chunk), axis=0),
                    "LENGTH": np.array([[w.end - w.start] for w in chunk], np.int64),
                }, [rep], meta=meta, version=version)
            except BadRequest as e:
                limit = re.search(r"max_shots=(\d+)", str(e))
                if limit is None:
                    raise
                self._served.pop(model, None)  # a model trained on shorter windows was loaded: read it again
                raise WindowsTooLong(str(e), int(limit.group(1))) from None
            answered = meta.get("model_version", "")
            if served.version is None:
                served.version = answered
            elif answered != served.version and not version:  # a new version is served: read its config again
                self._served.pop(model, None)
            if versions and answered not in versions:  # before its rows are kept: the new one may be wider
                log.info("%s: model version changed mid-title (%s, then %s); running the title again", model,
                         versions.pop(), answered)
                del out, res
                return await self.run_windows(fused, title, windows, rows, profile, version=version)
            versions.add(answered)
            answer = res[rep]  # (len(chunk), T, H)
            if out is None:
                out = np.empty((len(rows), *answer.shape[2:]), answer.dtype)
            mine = order[np.searchsorted(sorted_ks, k0) : np.searchsorted(sorted_ks, k0 + len(chunk))]
            out[mine] = answer[ks[mine] - k0, at[mine]]
            del res, answer  # not held while the next request is out
        return out, versions.pop()

    async def contextualise(self, shots: list[FusedShot], windows_for, *, n_shots: int | None,
                            version: str = "") -> tuple[int, str]:
        """MediaFM over windows of a title's (or live event's) shots, then one ContextualEmbedding per pick.

        shots: fused shots in index order: a title's are consecutive; a live event's may lack shots lost upstream
        (dead-lettered there), and a window then holds the shots of its index range that there are.
        windows_for(size, stride) -> (windows, picks): the windows to run (ranges of shot indices), for the
        served plan (size, stride), and the picks (shot index, index into windows, final) to publish, in the
        order given.
        version: the MediaFM version to ask for ("" = the newest; VersionRetired once it is gone).
        The one publishing path of contextual embeddings, for titles and live events alike.
        Returns (embeddings published, the version that made them) once the broker has acknowledged them all.
        """
        first = shots[0].shot_index
        indices = [s.shot_index for s in shots]
        at = {i: p for p, i in enumerate(indices)}  # shot index -> row of `fused`
        profile = get_profile(shots[0].profile)
        width = 4 * profile.layout.fused_dim
        for s in shots:
            if len(s.fused) != width:
                raise SchemaError(f"shot {s.shot_index} of {s.title_id!r} has {len(s.fused)} bytes of fused vector, "
                                  f"{width} in profile {profile.name!r} of its shot {first}: one title, one profile")
        # (n, fused_dim) at once: each vector was checked (width, finite) when its record was parsed
        fused = np.frombuffer(b"".join(s.fused for s in shots), "<f4").reshape(len(shots), -1)
        title = title_vector(shots, profile.layout.title)
        limit = None  # what the answering version said it takes, when the plan asked for more
        for attempt in range(3):
            size, stride = await self.window_plan(profile.name)
            if limit is not None and limit < size:
                size, stride = limit, max(1, min(limit, round(stride * limit / size)))
            windows, picks = windows_for(size, stride)
            local = [Window(bisect_left(indices, w.start), bisect_left(indices, w.end)) for w in windows]
            rows = [(k, at[i] - local[k].start) for i, k, _ in picks]
            try:
                vectors, version = await self.run_windows(fused, title, local, rows, profile.name, version=version)
                break
            except WindowsTooLong as e:
                if attempt == 2:
                    raise BadRequest(f"{e}; the served model keeps changing its window length") from None
                limit = e.limit
                log.info("%s; planning the windows again", e)
        s, count = self.settings, 0
        inputs = fused[[at[i] for i, _, _ in picks]] if uses_input(s.embedding_representation) else None
        embs = published(s.embedding_representation, vectors, inputs)  # all rows at once
        for emb, (i, k, final) in zip(embs, picks, strict=True):
            shot, w = shots[at[i]], windows[k]
            msg = ContextualEmbedding(
                title_id=shot.title_id, shot_index=i, start_s=shot.start_s, end_s=shot.end_s,
                embedding=vec_to_bytes(emb, s.embedding_dtype), dtype=s.embedding_dtype, dim=int(emb.shape[0]),
                model=profile.mediafm_model, model_version=version, representation=s.embedding_representation,
                profile=shot.profile, window_start=w.start, window_end=w.end, final=final, n_shots=n_shots,
                kind=shot.kind, published_at=shot.published_at, request_id=shot.request_id)
            await self.send(self.topics.embeddings, shot.title_id.encode(), msg.to_bytes())
            metrics.e2e_seconds.labels(shot.kind, "final" if final else "provisional").observe(
                max(0.0, time.time() - shot.published_at))
            count += 1
        # Acknowledged before the caller records them as made ("done", a live event's final count): a partition
        # of the progress changelog may be led by another broker than the embeddings', and a kill -9 between the
        # two acknowledgements would otherwise leave shots counted as published that never were.
        await self.sends_acknowledged()
        return count, version


class QuietWorker(faust.Worker):
    """Faust's worker without its terminal spinner. At --loglevel warn the spinner sets the root logger to
    DEBUG so that every record spins it: each Kafka send then built a debug record nobody reads
    (py-spy: ~7% of a busy worker's CPU), and the spinner's escape codes went into log files."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None


class WindowsTooLong(Exception):
    """The served MediaFM takes shorter windows than were planned: plan again (Runtime.contextualise)."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass
class Served:
    """What a served MediaFM model accepts (Runtime.served)."""

    max_batch: int
    """Windows per request: the model config's max_batch_size."""
    max_shots: int | None
    """Shots per window: the `max_shots` parameter `mediafm export` records; None for older exports."""
    version: str | None = None
    """The version that answered first after the config was read."""


@contextmanager
def processing(event):
    """Table writes in this block belong to `event`: they go to its partition's changelog.

    Faust finds the partition of a table write from the event being iterated (faust.streams'
    current-event context variable), which take_events leaves unset while a batch is processed.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield event
    finally:
        _current_event.reset(token)


def _check_continuous(last: dict, event) -> None:
    """Say when a partition's offsets jump within one consumer generation: messages never delivered."""
    msg = event.message
    gen, prev = last.get(msg.tp, (None, None))
    if gen == msg.generation_id and msg.offset > prev + 1:
        metrics.offsets_skipped.labels(msg.topic).inc(msg.offset - prev - 1)
        log.error("offsets %d..%d of %s[%d] never reached this agent: those messages were not processed "
                  "(expected only if a transactional producer writes to this topic)",
                  prev + 1, msg.offset - 1, msg.topic, msg.partition)
    last[msg.tp] = (msg.generation_id, msg.offset)


def title_vector(shots: list[FusedShot], dim: int) -> np.ndarray:
    """The title embedding riding on the shots (the first that has one); zeros when none does."""
    src = next((s.title_embedding for s in shots if s.title_embedding is not None), None)
    return bytes_to_vec(src, dim) if src else np.zeros(dim, np.float32)
