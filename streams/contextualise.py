"""Stage: fused shots of a title -> MediaFM over windows -> one contextual embedding per shot.

    shots.fused ──► contextualise ──(Triton: mediafm)──► embeddings
                       │  tables: contextualise-shots  "<title>#<request>/<index>" -> FusedShot bytes
                       │          contextualise-titles "<title>#<request>" -> TitleProgress
                       └── malformed / unsupported ──► deadletter

A title is contextualised once all of its n_shots fused shots have arrived
(they may arrive in any order, and twice); a new request for the same title
(`mediafm backfill`) is contextualised again, with the model served then.
Live shots are handed to streams/live.py: one agent reads this topic, so each
message is decoded and checked once. State lives in changelog-backed
RocksDB tables, written to the partition of the event being processed, so
they are co-partitioned with the title-keyed source topic and a restarted or
rebalanced worker resumes where it stopped.
"""

from __future__ import annotations

import logging

from mediafm.errors import BadInput, ConfigError, SchemaError
from mediafm.profiles import get_profile
from mediafm.schema import FusedShot, bytes_to_vec, decode
from mediafm.windows import plan
from streams import metrics
from streams.live import LiveEvents
from streams.progress import TitleProgress
from streams.runtime import Runtime, processing

log = logging.getLogger(__name__)
STAGE = "contextualise"
BATCH = 256
WITHIN_S = 0.02
"""Events taken at once: their table writes wait for the broker together (Runtime.batches). A live shot
waits at most WITHIN_S for its batch to fill."""


def parse(raw: bytes) -> FusedShot:
    """A fused shot, checked: known profile, vectors of its widths, a shot index inside its title."""
    shot = decode(raw, expect=FusedShot)
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
    """Collects a title's fused shots in a table and contextualises the title once all have arrived."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.shots = rt.table("contextualise-shots")
        self.progress = rt.table("contextualise-titles")
        self.pending: dict[bytes, tuple[TitleProgress, object]] = {}  # changed since flush(), with its last event

    @staticmethod
    def shot_key(title_id: str, index: int, request_id: str = "") -> bytes:
        return f"{title_id}#{request_id}/{index:07d}".encode()

    async def on_shot(self, shot: FusedShot, event) -> None:
        """One checked title shot (from `event`). Raises BadInput when it contradicts the title's other shots."""
        raw = event.message.value
        tid, rid, i = shot.title_id, shot.request_id, shot.shot_index
        tkey = f"{tid}#{rid}".encode()
        progress = self.pending[tkey][0] if tkey in self.pending else (
            TitleProgress.from_bytes(self.progress[tkey]) if tkey in self.progress else TitleProgress(shot.n_shots))
        if progress.n != shot.n_shots:
            raise SchemaError(f"{tid!r}: n_shots={shot.n_shots} disagrees with {progress.n} from earlier shots of "
                              "the same title")
        key = self.shot_key(tid, i, rid)
        if progress.done:
            metrics.duplicates.labels(STAGE).inc()  # redelivery after a restart
            self.shots.pop(key, None)  # in case the worker died between "done" and the clean-up
            return
        # The shot and its bit are two writes to two changelogs (the bit once per batch, flush()); either
        # may be lost to a kill -9 before the batch is acknowledged (Runtime.batches), and then its events
        # come again: both writes are idempotent, and the check below trusts a bit only where the shot is
        # held too.
        if key not in self.shots:
            self.shots[key] = raw
        if progress.add(i):
            self.pending[tkey] = (progress, event)
        else:
            metrics.duplicates.labels(STAGE).inc()
        if not progress.complete:
            return
        lost = [j for j in range(progress.n) if self.shot_key(tid, j, rid) not in self.shots]
        if lost:  # their events were not acknowledged, so they come again
            for j in lost:
                progress.drop(j)
            self.pending.pop(tkey, None)
            self.progress[tkey] = progress.to_bytes()
            log.warning("%s: %d shots counted but not held (a restart lost them); waiting for them again",
                        tid, len(lost))
            return
        try:
            await self.contextualise(tid, progress.n, rid)
        except BadInput as e:  # the title itself is unusable: say so, do not retry forever
            await self.rt.dead_letter(STAGE, event, f"title {tid!r} ({progress.n} shots) rejected: {e}")
        progress.done = True
        self.pending.pop(tkey, None)
        self.progress[tkey] = progress.to_bytes()
        await self.rt.sends_acknowledged()  # "done" first: shots deleted before it would leave a title that never ends
        for j in range(progress.n):  # the fused vectors are no longer needed
            del self.shots[self.shot_key(tid, j, rid)]

    def flush(self) -> None:
        """Write the progress records changed since the last flush: once per title per batch."""
        for tkey, (progress, event) in self.pending.items():
            with processing(event):  # the title's partition
                self.progress[tkey] = progress.to_bytes()
        self.pending.clear()

    async def contextualise(self, title_id: str, n: int, request_id: str = "") -> None:
        """Run MediaFM over the title's windows and publish every shot's final embedding."""
        shots = [decode(self.shots[self.shot_key(title_id, i, request_id)], expect=FusedShot) for i in range(n)]
        def windows_for(size: int, stride: int):
            windows, owner = plan(n, size=size, stride=stride)
            return windows, [(i, int(owner[i]), True) for i in range(n)]

        await self.rt.contextualise(shots, windows_for, n_shots=n)  # the newest version served
        metrics.shots.labels(STAGE).inc(n)
        log.info("contextualised %s: %d shots", title_id, n)


def register(rt: Runtime) -> None:
    titles, live = Titles(rt), LiveEvents(rt)

    @rt.app.agent(rt.topics.fused, name=f"{__name__}.contextualise")
    async def contextualise(stream):
        async for events in rt.batches(stream, BATCH, WITHIN_S):
            for event in events:
                metrics.messages.labels(STAGE).inc()
                stage = STAGE
                try:
                    with processing(event):
                        shot = parse(event.message.value)
                        if shot.kind == "live":
                            stage = "live"
                            await live.on_shot(shot)
                        else:
                            await titles.on_shot(shot, event)
                except BadInput as e:
                    await rt.dead_letter(stage, event, str(e))
                except Exception as e:  # unforeseen: say so, never lose the batch with the agent
                    log.exception("%s failed", stage)
                    await rt.dead_letter(stage, event, f"{stage} failed: {type(e).__name__}: {e}")
            titles.flush()
