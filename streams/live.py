"""Stage: fused shots of a live event -> provisional, then final, contextual embeddings.

    shots.fused (kind=live) ──► contextualise agent ──► LiveEvents.on_shot ──(Triton: mediafm)──► embeddings
                                   │  tables: live-shots "<event>/<index>" -> FusedShot bytes
                                   │          live-events "<event>" -> LiveProgress
                                   └── malformed, out of order ──► deadletter
(streams/contextualise.py's agent reads the fused topic once and hands live shots here.)

Shot i of an event arrives; one MediaFM pass over the window that ends at i
(at most window_shots shots of left context) gives
- shot i's *provisional* embedding (final=False): its left context only, out
  as soon as the shot is fused;
- shot i-R's *final* embedding (final=True), R = live_right_context: by then
  it has R shots of right context.
When the event's last shot arrives (it carries n_shots), the shots still
without a final one get it from a pass over the event's last window. A final
is always published after its provisional, into the same partition (key =
event id), so a consumer reading in order sees provisional then final.

An event's embeddings all come from one MediaFM version: the one that made its
first (pinned in its progress record and asked for by number). Triton keeps the
two newest versions loaded (version_policy), so an export during an event
serves new titles and events while the running event finishes on its own
version; only a second export within one event retires it, and the event then
moves to the newest version (logged; every message names its version).

Shots arrive in order (one partition per event, each stage keeps order); a
redelivered shot is recognised and skipped. A shot that never comes (dead-lettered
on an earlier stage, with its reason there: a segment file gone, an encoder's
refusal) is a gap: the event goes on, its windows holding the shots there are,
and the gap is logged and counted (mediafm_live_shots_lost_total). The encode and
fuse stages send a ShotsRefused in place of the live shots they refuse (and this
stage counts its own refusals so), so the gap is known when they would have
come, and an event whose last shots (those carrying n_shots) were refused still
ends. A change of encoder profile mid-event (a worker of another encoder_profile
took the partition) starts windows of the new profile. Only the last
window_shots fused vectors of an event are kept.
"""

from __future__ import annotations

import logging
import time

from mediafm.errors import BadInput, SchemaError, VersionRetired
from mediafm.schema import FusedShot, ShotsRefused, decode
from mediafm.topics import partition_of
from mediafm.windows import Window
from streams import metrics
from streams.progress import LiveProgress
from streams.runtime import Runtime

log = logging.getLogger(__name__)
STAGE = "live"


class LiveEvents:
    """Live shots in, provisional and final contextual embeddings out (see the module docstring)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.shots = rt.table("live-shots")
        self.events = rt.table("live-events")
        self.short_windows: set[int] = set()  # served window sizes no longer than live_right_context, said
        self.seen: dict[str, float] = {}  # event id -> when a shot or refusal of it last came (monotonic)
        self.partitions: set[int] | None = None  # the partitions `seen` was last counted for (idle())

    @staticmethod
    def key(event_id: str, index: int) -> bytes:
        return f"{event_id}/{index:07d}".encode()

    async def publish(self, event_id: str, end: int, provisional: list[int], final: list[int],
                      st: LiveProgress) -> None:
        """One MediaFM pass over the window ending at shot `end` (exclusive), as long as the served model
        takes, on the event's version (st.version, pinned by its first pass); the provisional and final
        embeddings it yields, in index order. A final the window cannot hold (a gap of lost shots longer than
        a window since it) gets a window ending at it, run in the same request."""
        most, R = self.rt.settings.window_shots, self.rt.settings.live_right_context
        wanted = set(range(max(0, end - most), end))
        for j in final:
            if j < end - most:
                wanted.update(range(max(0, j + 1 - most), j + 1))
        held = (self.shots.get(self.key(event_id, i)) for i in sorted(wanted))  # less those lost upstream
        shots = [s for s in (decode(raw, expect=FusedShot) for raw in held if raw is not None)
                 if s.profile == st.profile]  # after a change of profile: this profile's shots only
        have = {s.shot_index for s in shots}
        picks = sorted([(i, False) for i in provisional if i in have] + [(i, True) for i in final if i in have])
        if not picks:
            return

        def windows_for(size: int, _stride: int):
            if size <= R and size not in self.short_windows:  # said once per size and worker
                self.short_windows.add(size)
                log.warning("the served MediaFM takes windows of %d shots, no more than live_right_context=%d: a live "
                            "final gets at most %d shots of right context (and, where %d + %d > window_shots, less "
                            "left context than its window's range: the shots before it are let go); lower "
                            "live_right_context, or export a model of longer windows", size, R, size - 1, size, R)
            windows, out = [Window(max(0, end - size), end)], []
            for i, is_final in reversed(picks):
                if i < windows[-1].start:
                    windows.append(Window(max(0, i + 1 - size), i + 1))
                out.append((i, len(windows) - 1, is_final))
            return windows, out[::-1]

        try:
            published, st.version = await self.rt.contextualise(shots, windows_for, n_shots=st.n,
                                                                version=st.version)
        except VersionRetired as e:  # two exports within the event: the older is gone, so it moves on
            log.warning("live event %s: %s; its embeddings from shot %d on come from the newest version",
                        event_id, e, min(provisional + final))
            published, st.version = await self.rt.contextualise(shots, windows_for, n_shots=st.n)
        metrics.shots.labels(STAGE).inc(published)

    async def on_shot(self, shot: FusedShot) -> None:
        """One fused shot of a live event, already decoded and checked. Raises BadInput."""
        metrics.messages.labels(STAGE).inc()
        eid = shot.title_id
        ekey = eid.encode()
        st = LiveProgress.from_bytes(self.events[ekey]) if ekey in self.events else LiveProgress()
        if st.over and shot.shot_index >= st.n:
            raise SchemaError(f"live event {eid!r} ended at shot {st.n - 1} (its last segment, or no shot for "
                              f"live_idle_end_s={self.rt.settings.live_idle_end_s:g} s), and shot {shot.shot_index} "
                              "comes after its end; publish the rest of the feed as a new event (a new --id)")
        self.seen[eid] = time.monotonic()
        if shot.shot_index < st.next or st.over:
            metrics.duplicates.labels(STAGE).inc()
            self._let_go(eid, st)  # a kill after the progress, before the shots it let go were deleted
            return
        if st.profile and shot.profile != st.profile:  # a worker of another encoder_profile cut or encoded it
            await self._change_profile(eid, st, shot)
        st.profile = shot.profile
        i, was = shot.shot_index, st.next
        self._lost(eid, st, i, "never reached this stage or were refused by it (dead-lettered, where the reason is)")
        self.shots[self.key(eid, i)] = shot.to_bytes()
        if shot.n_shots is not None:
            st.n = shot.n_shots
        try:
            await self._advance(eid, st, was, i + 1, shot=i)
        except BaseException:  # not held as context, nor finalised later, when its own pass failed (dead-lettered)
            self.shots.pop(self.key(eid, i), None)
            raise

    async def on_refused(self, refused: ShotsRefused) -> None:
        """Shots [first, last] of a live event that a stage refused (each dead-lettered there): counted lost, the
        finals they held up go out with the right context there is, and where they carried the event's n_shots,
        the event ends. One that comes after later shots (the fuse stage sends it after its batch) only brings
        n_shots. Raises BadInput."""
        metrics.messages.labels(STAGE).inc()
        eid, r = refused.title_id, refused
        ekey = eid.encode()
        st = LiveProgress.from_bytes(self.events[ekey]) if ekey in self.events else LiveProgress()
        self.seen[eid] = time.monotonic()
        if st.over:
            self.seen.pop(eid, None)
            metrics.duplicates.labels(STAGE).inc()
            self._let_go(eid, st)  # the one that ended it, again: a kill after the progress, before the deletes
            return
        if r.n_shots is not None and r.n_shots < st.next:
            raise SchemaError(f"shots {r.first}-{r.last} of live event {eid!r} refused with n_shots={r.n_shots}, "
                              f"but shots up to {st.next - 1} have come")
        was, end = st.next, max(st.next, r.last + 1)
        if end == was and (r.n_shots is None or r.n_shots == st.n):
            metrics.duplicates.labels(STAGE).inc()  # nothing new: a redelivery, or after the shots it names
            self._let_go(eid, st)
            return
        st.n = r.n_shots if r.n_shots is not None else st.n
        self._lost(eid, st, end, f"were refused at the {r.stage} stage ({r.reason[:300]})")
        await self._advance(eid, st, was, end, best_effort=True)

    async def _change_profile(self, eid: str, st: LiveProgress, shot: FusedShot) -> None:
        """The event's shots change encoder profile at `shot` (a worker of another encoder_profile took the
        partition): windows never mix the two (their vectors differ in width and meaning). The finals owed go
        out now, from windows of the profile before, with the right context there is; the event goes on in the
        new one. Before, the shot was held and every window holding it refused (and a pin to the first profile
        would refuse the rest of an event that changed for good)."""
        size = self.rt.settings.window_shots
        owed = [j for j in range(max(0, st.next - size), st.next) if j >= st.final]
        log.warning("live event %s: shot %d is of profile %r, the shots before it of %r; its windows from there hold "
                    "only %r shots, and the finals owed before it go out now", eid, shot.shot_index, shot.profile,
                    st.profile, shot.profile)
        if owed:
            await self.publish(eid, st.next, [], owed, st)
        st.final = max(st.final, st.next)
        st.version = ""  # the pin was of the other profile's model: the new one's first pass pins its own

    def idle(self, now: float, partitions: set[int], *, fed: dict[str, float] | None = None,
             backlog: set[int] = frozenset()) -> list[tuple[str, LiveProgress]]:
        """The events (and their records) of `partitions` (those this worker holds) that have shots, are not over,
        and have had no shot here and no segment at the segment stage (`fed`: when one last came, on this worker)
        for live_idle_end_s by `now` (monotonic). An event of a partition with a `backlog` upstream (records not yet
        through the segment, encode or fuse stage: Triton down, a burst) is not idle: its shots may be on the way.
        The events of a partition this worker gains are counted from then (its table's records; an old count of
        a partition that comes back is stale), and those of one it lost are dropped."""
        limit, fed = self.rt.settings.live_idle_end_s, fed or {}
        if partitions != self.partitions:
            was = self.partitions if self.partitions is not None else set(range(self.rt.settings.partitions))
            gained, lost = partitions - (self.partitions or set()), was - partitions
            self.partitions = set(partitions)
            n = self.rt.settings.partitions
            for eid in [e for e in self.seen if partition_of(e, n) in lost]:
                del self.seen[eid]
            for key in list(self.events.keys()):
                eid = key.decode() if isinstance(key, bytes) else key
                if partition_of(eid, n) in gained:
                    self.seen[eid] = now
        out = []
        for eid, at in list(self.seen.items()):
            p = partition_of(eid, self.rt.settings.partitions)
            if p not in partitions or p in backlog or now - max(at, fed.get(eid, at)) < limit:
                continue
            raw = self.events.get(eid.encode())
            st = LiveProgress.from_bytes(raw) if raw is not None else None
            if st is None or st.over or st.next == 0:
                self.seen.pop(eid, None)
                continue
            out.append((eid, st))
        return out

    def idle_end(self, eid: str, st: LiveProgress, idle_s: float) -> ShotsRefused:
        """What ends an idle event as its last segment would: its last shot said to be its last (n_shots =
        st.next; nothing is counted lost). Sent to the fused topic keyed by the event, so the worker holding its
        partition takes it in order, after any shot of it still on the way (one that came first makes it a
        contradiction there: dead-lettered, and the event goes on)."""
        return ShotsRefused(title_id=eid, first=st.next - 1, last=st.next - 1, stage=STAGE, kind="live",
                            n_shots=st.next, reason=f"no shot for {idle_s:.0f} s (live_idle_end_s): the event is "
                                                    "ended without its last segment")

    def _let_go(self, eid: str, st: LiveProgress) -> None:
        """On a redelivery: delete again the shots the record's last step let go (`held_from`: where what it held
        started), which a kill -9 after the record was written, before the deletes, left in the table; the
        steps after it delete only what they hold. An ended event's: all it held (a record from before
        `held_from`: the last window's)."""
        size = self.rt.settings.window_shots
        if st.over:
            start = st.held_from if st.held_from >= 0 else max(0, st.n - 1 - size)
            gone = [*range(start, min(start + size, st.n)), st.n - 1]
        else:
            gone = range(max(0, st.held_from), max(0, st.held_from, st.next - size))
        for j in gone:
            self.shots.pop(self.key(eid, j), None)

    def _lost(self, eid: str, st: LiveProgress, upto: int, why: str) -> None:
        """Shots [st.next, upto) will not come: counted, logged."""
        if upto > st.next:
            st.lost += upto - st.next
            metrics.live_shots_lost.inc(upto - st.next)
            log.warning("live event %s: shots %d-%d %s; the event goes on without them, its windows holding the "
                        "shots there are", eid, st.next, upto - 1, why)

    async def _advance(self, eid: str, st: LiveProgress, was: int, end: int, shot: int | None = None,
                       best_effort: bool = False) -> None:
        """The event's shots before `end` have come or are lost (`was`: its next shot before): shot `shot`'s
        provisional, the finals now due, and once every shot is in, the rest; then the record, and the held shots
        no window needs any more let go. best_effort: a pass refused (BadInput: the shots' own fault, dead-lettered
        before) loses its finals, logged, and the record still moves on (else one shot that every window holding it
        fails on would stop the event)."""
        size, R = self.rt.settings.window_shots, self.rt.settings.live_right_context
        # What the table may hold of the event: the window before the shots' next one, and this shot. Only these
        # are looked at, so a jump in the indices (a gap, a hostile index of a billion) costs no more than a window.
        held = [*range(max(0, was - size), was), *([] if shot is None else [shot])]
        wend = end if shot is not None else was  # the window's end: just past the newest shot held
        if end - 1 - R >= st.final:  # shot end-1-R has its right context now (any before it a gap skipped over)
            final = [j for j in held if st.final <= j <= end - 1 - R and self.key(eid, j) in self.shots]
            st.final = end - R
        else:
            final = []
        async def publish(provisional: list[int], finals: list[int]) -> None:
            try:
                await self.publish(eid, wend, provisional, finals, st)
            except BadInput as e:
                if not best_effort:
                    raise
                log.warning("live event %s: the finals of shots %s are lost: their pass was refused (%s)", eid,
                            finals, e)

        if shot is not None or final:
            await publish([] if shot is None else [shot], final)
        st.next, st.held_from = end, max(0, was - size)
        if st.n is not None and st.next >= st.n:  # the event is over: finalise the rest
            rest = [j for j in held if j >= st.final and self.key(eid, j) in self.shots]
            if rest:
                await publish([], rest)
            st.final = st.n
            unused = held  # all it holds: the last window's shots, and the one before it
            self.seen.pop(eid, None)
            self.rt.live_fed.pop(eid, None)
            log.info("live event %s finished: %d shots%s", eid, st.n, f", {st.lost} lost upstream" if st.lost else "")
        else:
            unused = [j for j in held if j < end - size]  # no longer inside any future window (after a gap: more)
        # Each write is in its changelog before the next one is made, so a kill -9 anywhere in between leaves
        # state this shot's redelivery can carry on from: the shot held before the progress that counts it,
        # and that progress before the shots it makes unused are deleted.
        await self.rt.sends_acknowledged()
        self.events[eid.encode()] = st.to_bytes()
        await self.rt.sends_acknowledged()
        for j in unused:
            self.shots.pop(self.key(eid, j), None)
