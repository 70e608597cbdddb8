"""Stage: fused shots of a title -> MediaFM over windows -> one contextual embedding per shot.

    shots.fused ──► contextualise ──(Triton: mediafm)──► embeddings
                       │  table:  contextualise-titles "<title>#<request>" -> TitleProgress (shots, offsets)
                       │  memory: HeldShots, the decoded shots up to held_shots_mb; the rest read back by offset
                       └── malformed / unsupported ──► deadletter

A title is contextualised once all of its n_shots fused shots have arrived
(they may arrive in any order, and twice); a new request for the same title
(`mediafm backfill`) is contextualised again, with the model served then.
A shot is not copied anywhere: it is durable in the fused topic already, and the
title's progress record names its offset there (streams/fused_source.py): the
offset of the record that holds it, as the fuse stage sends a title's shots
several to a record (FusedShots). The
record lives in a changelog-backed RocksDB table, written to the partition of
the event being processed, so it is co-partitioned with the title-keyed source
topic and a restarted or rebalanced worker resumes where it stopped, reading the
shots it does not hold back from the topic.
A title some of whose shots a stage before refused (a ShotsRefused in their
place) is given up once the rest have come: one dead letter for the title, and
what it held let go.
Live shots are handed to streams/live.py: one agent reads this topic, so each
message is decoded and checked once.
"""

from __future__ import annotations

import logging
import time

from mediafm.errors import BadInput, ConfigError, SchemaError
from mediafm.kafka_security import client_security
from mediafm.profiles import get_profile
from mediafm.schema import FusedShot, FusedShots, ShotsRefused, bytes_to_vec, record_shots
from mediafm.windows import plan
from streams import metrics
from streams.fused_source import HeldShots, OffsetReader, ReadRefused
from streams.live import LiveEvents
from streams.progress import TitleProgress
from streams.runtime import Runtime, processing

log = logging.getLogger(__name__)
STAGE = "contextualise"
BATCH = 256
WITHIN_S = 0.02
"""Events taken at once: their table writes wait for the broker together (Runtime.batches). A live shot
waits at most WITHIN_S for its batch to fill."""
FINISHING = 2
"""Titles whose MediaFM pass runs beside the agent at once: the agent goes on with the next shots meanwhile
(Runtime.later; a title complete while FINISHING run waits its turn, streams/runtime.py LATER_QUEUED), and each
holds its title's shots."""
PASS_COPIES = 4
"""A title's MediaFM pass holds about this many times its shots' bytes: the shots, their vectors in one block,
the outputs kept, and a request with its answer (streams/runtime.py Runtime.contextualise, run_windows)."""
PASSES_BYTES = 128 * 2**20
"""Two titles' passes run at once only while their shots (records' bytes) together are under this: a pass holds
PASS_COPIES times its title's shots, so two 10,000-shot titles at once (about 90 MB of shots each at the offline
width) took one worker to 1.35 GiB (bench/catalog.py --titles 12 --shots 10000). A title over it has its pass
alone."""


def parse(raw: bytes) -> list[FusedShot] | ShotsRefused:
    """The fused shots of a record (a FusedShot, or a FusedShots of one title's), each checked (check); or a
    ShotsRefused."""
    shots = record_shots(FusedShots, raw, refusals=True)
    if isinstance(shots, ShotsRefused):
        return shots
    if len(shots) == 1:
        return [check(shots[0])]
    for shot in shots:
        try:
            check(shot)
        except SchemaError as e:
            raise SchemaError(f"shot {shot.shot_index} of {shot.title_id!r} in a record of {len(shots)}: {e}") from None
    # taken whole or refused whole: shots that disagree would be counted up to the one refused (a live event's
    # n_shots comes with its last shots only, so it may differ within a record)
    def what(s: FusedShot) -> tuple:
        return s.kind, s.profile, s.n_shots if s.kind == "title" else None

    first = what(shots[0])
    for shot in shots[1:]:
        if what(shot) != first:
            raise SchemaError(f"shot {shot.shot_index} of {shot.title_id!r} in a record of {len(shots)} has kind, "
                              f"profile and n_shots {what(shot)}, the record's first {first}: a record carries one "
                              "title's shots alike")
    return shots


def check(shot: FusedShot) -> FusedShot:
    """A fused shot, checked: known profile, vectors of its widths, a shot index inside its title."""
    try:
        layout = get_profile(shot.profile).layout
    except ConfigError as e:
        raise SchemaError(str(e)) from None
    bytes_to_vec(shot.fused, layout.fused_dim, what="fused")
    if shot.title_embedding is not None:
        bytes_to_vec(shot.title_embedding, layout.title, what="title_embedding")
    if shot.kind == "live":  # its n_shots comes with the event's last shots (streams/live.py)
        if shot.shot_index < 0 or (shot.n_shots is not None and shot.shot_index >= shot.n_shots):
            raise SchemaError(f"shot_index {shot.shot_index} outside 0..{shot.n_shots} of live {shot.title_id!r}")
        return shot
    if shot.kind != "title" or shot.n_shots is None:
        raise SchemaError(f"{shot.title_id!r}: kind={shot.kind!r} n_shots={shot.n_shots}: a title shot needs a "
                          "known n_shots (kind is 'title' or 'live')")
    if not 0 <= shot.shot_index < shot.n_shots:
        raise SchemaError(f"shot_index {shot.shot_index} outside 0..{shot.n_shots - 1} of {shot.title_id!r}")
    return shot


class Titles:
    """Collects a title's fused shots (their offsets, and in memory what fits) and contextualises the title
    once all have arrived."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.progress = rt.table("contextualise-titles")
        self.pending: dict[bytes, tuple[TitleProgress, object]] = {}  # changed since flush(), with its last event
        self.held = HeldShots(rt.settings.held_shots_mb * 2**20)
        self.reader = OffsetReader(rt.settings.kafka_bootstrap, client_security(rt.settings))
        self.finishing: set[bytes] = set()  # titles whose MediaFM pass runs beside the agent or waits its turn
        metrics.held_shots.set_function(lambda: self.held.bytes)

    async def on_shot(self, shot: FusedShot, event, size: int) -> None:
        """One checked title shot (from `event`, whose record may hold more shots of the title; `size`: its
        share of the record's bytes). Raises BadInput when it contradicts the title's other shots."""
        msg = event.message
        tid, rid, i = shot.title_id, shot.request_id, shot.shot_index
        tkey = f"{tid}#{rid}".encode()
        progress = self.pending[tkey][0] if tkey in self.pending else self._read(tkey, shot.n_shots)
        if progress.n != shot.n_shots:
            raise SchemaError(f"{tid!r}: n_shots={shot.n_shots} disagrees with {progress.n} from earlier shots of "
                              "the same title")
        if progress.done:
            metrics.duplicates.labels(STAGE).inc()  # redelivery after a restart
            return
        if msg.offset <= progress.floor and msg.partition == progress.partition:
            metrics.duplicates.labels(STAGE).inc()  # redelivered from a publication given up (ShotsGone, refused shots)
            return
        if progress.partition < 0:
            progress.partition = msg.partition
        elif progress.partition != msg.partition:
            raise SchemaError(f"shot {i} of {tid!r} came on partition {msg.partition}, its title's other shots on "
                              f"{progress.partition}: key every shot of a title by its title id")
        # The offset is recorded in the progress record (written once per title per batch, flush()), and the
        # batch is acknowledged only once that record is in its changelog (Runtime.batches): a kill -9 before
        # then loses the record and the events together, and they come again.
        if progress.add(i, msg.offset):
            self.pending[tkey] = (progress, event)
        else:
            metrics.duplicates.labels(STAGE).inc()
        if progress.offsets[i] == msg.offset and tkey not in self.finishing:  # the recorded copy (after a
            self.held.put(tkey, i, msg.offset, shot, size)                     # restart: read back otherwise)
        if progress.complete and tkey not in self.finishing:  # else: a repeat while its pass runs or waits
            self.finishing.add(tkey)
            title_bytes = progress.n * size
            await self.rt.later(self._finish(tid, rid, progress, event, title_bytes), event,
                                at_most=FINISHING, size=title_bytes, budget=PASSES_BYTES)
        elif progress.settled:  # its last shot but those refused before (on_refused)
            await self._give_up(tkey, progress, event)

    async def on_refused(self, refused: ShotsRefused, event) -> None:
        """Shots of a title's publication that a stage before refused (each dead-lettered there, ShotsRefused).
        Marked so in its record: once every shot has arrived or been refused, the publication is given up
        (_give_up). A copy of a refused shot that arrives before then is taken (a bad copy refused, then a good
        one), and a refusal of shots the title holds (a copy refused on a redelivery) changes nothing."""
        tid, rid, n, msg = refused.title_id, refused.request_id, refused.n_shots, event.message
        tkey = f"{tid}#{rid}".encode()
        progress = self.pending[tkey][0] if tkey in self.pending else self._read(tkey, n)
        if progress.n != n:
            raise SchemaError(f"{tid!r}: a ShotsRefused of n_shots={n} disagrees with {progress.n} from the "
                              "title's shots")
        if progress.partition >= 0 and progress.partition != msg.partition:
            raise SchemaError(f"a ShotsRefused of {tid!r} came on partition {msg.partition}, its title's "
                              f"shots on {progress.partition}: key it by its title id")
        if progress.done or tkey in self.finishing or msg.offset <= progress.floor or \
                not progress.refuse(refused.first, refused.last, refused.describe()[:2000]):
            metrics.duplicates.labels(STAGE).inc()  # the title has these shots, or this is a redelivery
            return
        progress.partition = msg.partition
        self.pending[tkey] = (progress, event)
        if progress.settled:
            await self._give_up(tkey, progress, event)

    async def _give_up(self, tkey: bytes, progress: TitleProgress, event) -> None:
        """Every shot of the publication has arrived or been refused: one dead letter says so for the title, its
        held shots are let go, and its record starts afresh after this event (floor), as for shots gone: a
        redelivery of the publication's records is not counted, and a publication after it (its request id
        used again) is taken."""
        tid, rid = tkey.decode().rsplit("#", 1)
        refused = (int.from_bytes(progress.refused, "little") & ~int.from_bytes(progress.have, "little")).bit_count()
        self.held.drop(tkey)
        self.pending[tkey] = (TitleProgress(progress.n, partition=progress.partition, floor=event.message.offset),
                              event)
        metrics.titles_given_up.inc()
        await self.rt.dead_letter(STAGE, event, f"title {tid!r} (request {rid!r}, {progress.n} shots) given up: "
                                                f"{progress.why}; {refused} of its shots were refused before this "
                                                "stage, so no embedding of this publication is made. Mend what the "
                                                "reason names and publish the title again")
        log.warning("title %s given up: %d shots refused before this stage (%s)", tkey.decode(), refused,
                    progress.why)

    def _read(self, tkey: bytes, n: int) -> TitleProgress:
        if tkey not in self.progress:
            return TitleProgress(n)
        progress = TitleProgress.from_bytes(self.progress[tkey])
        if progress.forgotten:
            log.warning("%s: %d shots were counted by a worker from before offsets were recorded; they have to be "
                        "published again (mediafm backfill %s)", tkey.decode(), progress.forgotten,
                        tkey.decode().rsplit("#", 1)[0])
        return progress

    async def _finish(self, tid: str, rid: str, progress: TitleProgress, event, size: int) -> None:
        """All shots have arrived: gather them (memory, else the topic), contextualise, record "done".
        Runs beside the agent (Runtime.later): `event`, the shot that completed the title, is committed after.
        size: the title's shots' bytes. The pass's memory (PASS_COPIES times that) comes out of held_shots_mb
        while it runs: titles still arriving are held only in what is left, the rest read back later."""
        tkey = f"{tid}#{rid}".encode()
        work = min(PASS_COPIES * size, self.held.budget)
        try:
            shots = await self._gather(tkey, progress)
            self.held.drop(tkey)  # the pass holds them now, and its reservation counts them
            self.held.reserve(work)
            try:
                await self.contextualise(tid, shots, rid)
            finally:
                self.held.release(work)
        except BadInput as e:  # the title itself is unusable: say so, do not retry forever
            await self.rt.dead_letter(STAGE, event, f"title {tid!r} ({progress.n} shots) rejected: {e}")
        except ReadRefused:  # not the title's fault: the worker stops (Runtime.later), and the event comes again
            raise
        except Exception as e:  # its shots gone, or a failure no check foresaw: nothing will try it again by itself
            if not isinstance(e, ShotsGone):
                log.exception("contextualising %s failed", tid)
            why = str(e) if isinstance(e, ShotsGone) else f"contextualise failed: {type(e).__name__}: {e}"
            await self.rt.dead_letter(STAGE, event, f"title {tid!r} ({progress.n} shots) cannot be "
                                                    f"contextualised: {why}; publish it again")
            self.pending.pop(tkey, None)
            self.held.drop(tkey)
            # Not forgotten: a redelivery of this publication's shots (a restart before the commit) would open a
            # record that never completes. Shots after this event's offset are a new publication. (An unforeseen
            # failure was once dead-lettered with the record left as it was, committed, and never tried again.)
            self.progress[tkey] = TitleProgress(progress.n, partition=progress.partition,
                                                floor=event.message.offset).to_bytes()
            return
        finally:
            self.finishing.discard(tkey)
        progress.done = True  # (its held shots went when the pass began)
        self.pending.pop(tkey, None)
        self.progress[tkey] = progress.to_bytes()

    async def _gather(self, tkey: bytes, progress: TitleProgress) -> list[FusedShot]:
        """The title's shots in index order: held ones from memory, the others read back by offset."""
        shots: list = [self.held.get(tkey, i, int(o)) for i, o in enumerate(progress.offsets)]
        missing = [i for i, r in enumerate(shots) if r is None]
        if missing:
            topic = self.rt.topics.fused.get_topic_name()
            found, gone = await self.reader.read(topic, progress.partition, [int(progress.offsets[i]) for i in missing])
            if gone:
                raise ShotsGone(f"{len(gone)} of its records are no longer in {topic}[{progress.partition}] "
                                f"(offsets {gone[0]}..{gone[-1]}; the topic's retention is shorter than the title "
                                "took to arrive?)")
            records = {o: {s.shot_index: s for s in parse(raw)} for o, raw in found.items()}  # a record: several shots
            for i in missing:
                shots[i] = records[int(progress.offsets[i])].get(i)
                if shots[i] is None:
                    raise ShotsGone(f"the record at offset {progress.offsets[i]} of {topic}[{progress.partition}] "
                                    f"kept for shot {i} does not hold it")
            metrics.read_back.inc(len(missing))
            log.info("%s: %d of %d shots read back from %s[%d]", tkey.decode(), len(missing), progress.n, topic,
                     progress.partition)
        return shots

    def flush(self) -> None:
        """Write the progress records changed since the last flush: once per title per batch."""
        for tkey, (progress, event) in self.pending.items():
            with processing(event):  # the title's partition
                self.progress[tkey] = progress.to_bytes()
        self.pending.clear()

    async def contextualise(self, title_id: str, shots: list[FusedShot], request_id: str = "") -> None:
        """Run MediaFM over the title's windows and publish every shot's final embedding."""
        n = len(shots)
        for i, shot in enumerate(shots):  # read back by offset: make sure each is the shot it stands for
            if (shot.title_id, shot.request_id, shot.shot_index) != (title_id, request_id, i):
                raise ShotsGone(f"the record kept for shot {i} is shot {shot.shot_index} of "
                                f"{shot.title_id!r}#{shot.request_id}")

        def windows_for(size: int, stride: int):
            windows, owner = plan(n, size=size, stride=stride)
            return windows, [(i, int(owner[i]), True) for i in range(n)]

        await self.rt.contextualise(shots, windows_for, n_shots=n)  # the newest version served
        metrics.shots.labels(STAGE).inc(n)
        log.info("contextualised %s: %d shots", title_id, n)


class ShotsGone(Exception):
    """Shots a title's progress record names are not in the fused topic (any more)."""


def register(rt: Runtime) -> None:
    titles, live = Titles(rt), LiveEvents(rt)

    @rt.app.agent(rt.topics.fused, name=f"{__name__}.contextualise")
    async def contextualise(stream):
        async for events in rt.batches(stream, BATCH, WITHIN_S):
            with rt.failure_stops():
                for event in events:
                    await on_record(event)
                titles.flush()

    if rt.settings.live_idle_end_s > 0:
        @rt.app.timer(interval=min(60.0, max(1.0, rt.settings.live_idle_end_s / 4)))
        async def end_idle_events() -> None:
            """Live events of this worker's partitions with no shot and no segment for live_idle_end_s, and nothing
            of theirs waiting upstream: ended as their last segment would end them (LiveEvents.idle_end), through the
            fused topic, so that the agent takes it in order."""
            try:
                fused = rt.topics.fused.get_topic_name()
                mine = {tp.partition for tp in rt.app.assignor.assigned_actives() if tp.topic == fused}
                now = time.monotonic()
                for eid, st in live.idle(now, mine, fed=rt.live_fed, backlog=upstream_backlog()):
                    idle_s = now - live.seen[eid]
                    await rt.send(rt.topics.fused, eid.encode(), live.idle_end(eid, st, idle_s).to_bytes())
                    live.seen.pop(eid, None)  # sent: its end comes back through the agent
                    log.warning("live event %s: no shot for %.0f s (live_idle_end_s): ended at shot %d, its owed "
                                "finals from the right context there is", eid, idle_s, st.next - 1)
            except Exception:  # the next tick tries again; the events go on meanwhile
                log.exception("ending idle live events failed")

        def upstream_backlog() -> set[int]:
            """Partitions with records not yet committed on a topic before the live stage (a live event's
            records are in the same partition of each)."""
            names = {t.get_topic_name() for t in (rt.topics.live_segments, rt.topics.shots, rt.topics.encoded,
                                                  rt.topics.fused)}
            mon = rt.app.monitor
            committed = mon.tp_committed_offsets or {}
            return {tp.partition for tp, end in (mon.tp_end_offsets or {}).items()
                    if tp.topic in names and end > (committed.get(tp) or 0)}

    async def refused_here(event, reason: str) -> None:
        """A record refused here, dead-lettered: its shots go as a ShotsRefused from an earlier stage's would. A
        live event's are counted lost (the event ended where they carried its n_shots); a title's publication is
        given up, unless the record contradicts the title's other shots (another n_shots or partition): they go on."""
        try:
            refusal = rt.refusal(STAGE, record_shots(FusedShots, event.message.value), reason)
        except SchemaError:
            return
        if refusal is None:
            return
        try:
            with processing(event):
                if refusal.kind == "live":
                    await live.on_refused(refusal)
                else:
                    await titles.on_refused(refusal, event)
        except BadInput as e:
            log.warning("%s %s: its refused shots %d-%d are not counted against it: %s", refusal.kind,
                        refusal.title_id, refusal.first, refusal.last, e)
        except Exception:  # its own dead letter says why; the event goes on as it would without this
            log.exception("%s %s: its refused shots %d-%d could not be counted", refusal.kind, refusal.title_id,
                          refusal.first, refusal.last)

    async def on_record(event) -> None:
        metrics.messages.labels(STAGE).inc()
        stage = STAGE
        try:
            with processing(event):
                shots = parse(event.message.value)  # all checked before any is counted
                if isinstance(shots, ShotsRefused):
                    if shots.kind == "live":
                        stage = "live"
                        await live.on_refused(shots)
                    else:
                        await titles.on_refused(shots, event)
                    return
                size = len(event.message.value) // len(shots)
                for shot in shots:
                    if shot.kind == "live":
                        stage = "live"
                        await live.on_shot(shot)
                    else:
                        await titles.on_shot(shot, event, size)
        except BadInput as e:
            await rt.dead_letter(stage, event, str(e))
            await refused_here(event, str(e))
        except Exception as e:  # unforeseen: say so, never lose the batch with the agent
            log.exception("%s failed", stage)
            await rt.dead_letter(stage, event, f"{stage} failed: {type(e).__name__}: {e}")  # not counted: the
            # same shot published again is taken (tests/streams/test_unforeseen_errors.py)
