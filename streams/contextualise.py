"""Stage: fused shots of a title -> MediaFM over windows -> one contextual embedding per shot.

    shots.fused ──► contextualise ──(Triton: mediafm)──► embeddings
                       │  tables: contextualise-shots  "<title>#<request>/<index>" -> FusedShot bytes
                       │          contextualise-titles "<title>#<request>" -> progress (which shots are held)
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
import time

import msgpack
import numpy as np

from mediafm.errors import SchemaError
from mediafm.fusion import get_layout
from mediafm.inference import BadRequest
from mediafm.schema import ContextualEmbedding, FusedShot, bytes_to_vec, decode, vec_to_bytes
from mediafm.windows import plan
from streams import metrics
from streams.app import app, changelog_sent, dead_letter, events, run_windows, settings, title_vector, topics
from streams.live import on_shot as on_live_shot

log = logging.getLogger(__name__)
STAGE = "contextualise"

# bytes in, bytes out: the app's raw key/value serializers apply to tables too
shots_table = app.Table("contextualise-shots", key_type=bytes, value_type=bytes, partitions=settings.partitions)
titles_table = app.Table("contextualise-titles", key_type=bytes, value_type=bytes, partitions=settings.partitions)


def _shot_key(title_id: str, index: int, request_id: str = "") -> bytes:
    return f"{title_id}#{request_id}/{index:07d}".encode()


def _parse(raw: bytes) -> FusedShot:
    shot = decode(raw, expect=FusedShot)
    try:
        layout = get_layout(shot.profile)
    except ValueError as e:
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


async def contextualise_title(title_id: str, n: int, request_id: str = "") -> int:
    """Run MediaFM over the title's windows and publish every shot. Returns shots published."""
    shots = [decode(shots_table[_shot_key(title_id, i, request_id)], expect=FusedShot) for i in range(n)]
    layout = get_layout(shots[0].profile)
    fused = np.stack([bytes_to_vec(s.fused, layout.fused_dim) for s in shots])  # (n, fused_dim)
    windows, owner = plan(n, size=settings.window_shots, stride=settings.window_stride)
    hidden, version = await run_windows(fused, title_vector(shots, layout.title), windows, layout.name)  # (W, T, H)
    for i, s in enumerate(shots):
        w = windows[owner[i]]
        emb = hidden[owner[i], i - w.start]
        msg = ContextualEmbedding(
            title_id=title_id, shot_index=i, start_s=s.start_s, end_s=s.end_s,
            embedding=vec_to_bytes(emb, settings.embedding_dtype), dtype=settings.embedding_dtype,
            dim=int(emb.shape[0]), model_version=version, profile=s.profile,
            window_start=w.start, window_end=w.end, final=True, n_shots=n, kind=s.kind, published_at=s.published_at)
        await topics.embeddings.send(key=title_id.encode(), value=msg.to_bytes())
        metrics.e2e_seconds.labels("title", "final").observe(max(0.0, time.time() - s.published_at))
    metrics.shots.labels(STAGE).inc(n)
    return n


def _new_progress(n: int) -> dict:
    return {"n": n, "have": bytearray((n + 7) // 8), "done": False}  # have: bit i = shot i is held


def _count(have: bytearray) -> int:
    return int.from_bytes(have, "little").bit_count()


@app.agent(topics.fused)
async def contextualise(stream):
    async for event in events(stream):
        metrics.messages.labels(STAGE).inc()
        try:
            shot = _parse(event.message.value)
        except SchemaError as e:
            await dead_letter(STAGE, event, str(e))
            continue
        if shot.kind == "live":
            try:
                await on_live_shot(shot)
            except (BadRequest, SchemaError) as e:
                await dead_letter("live", event, str(e))
            continue
        tid, rid, i = shot.title_id, shot.request_id, shot.shot_index
        tkey = f"{tid}#{rid}".encode()
        progress = msgpack.unpackb(titles_table[tkey]) if tkey in titles_table else _new_progress(shot.n_shots)
        if progress["n"] != shot.n_shots:
            await dead_letter(STAGE, event, f"{tid!r}: n_shots={shot.n_shots} disagrees with {progress['n']} "
                                            "from earlier shots of the same title")
            continue
        key, n, have = _shot_key(tid, i, rid), progress["n"], bytearray(progress["have"])
        if progress["done"]:
            metrics.duplicates.labels(STAGE).inc()  # redelivery after a restart
            shots_table.pop(key, None)  # in case the worker died between "done" and the clean-up
            continue
        # The shot and its bit are two writes to two changelogs; either may be lost to a kill -9 before
        # the event is acknowledged (streams.app.events), and then the event comes again: both writes
        # are idempotent, and the check below trusts a bit only where the shot is held too.
        if key not in shots_table:
            shots_table[key] = event.message.value
        if have[i // 8] >> (i % 8) & 1:
            metrics.duplicates.labels(STAGE).inc()
        else:
            have[i // 8] |= 1 << (i % 8)
            progress["have"] = have
            titles_table[tkey] = msgpack.packb(progress)
        if _count(have) < n:
            continue
        lost = [j for j in range(n) if _shot_key(tid, j, rid) not in shots_table]
        if lost:  # their events were not acknowledged, so they come again
            for j in lost:
                have[j // 8] &= ~(1 << (j % 8))
            progress["have"] = have
            titles_table[tkey] = msgpack.packb(progress)
            log.warning("%s: %d shots counted but not held (a restart lost them); waiting for them again",
                        tid, len(lost))
            continue
        try:
            await contextualise_title(tid, n, rid)
        except (BadRequest, SchemaError) as e:  # the title itself is unusable: say so, do not retry forever
            await dead_letter(STAGE, event, f"title {tid!r} ({n} shots) rejected: {e}")
        progress["done"] = True
        titles_table[tkey] = msgpack.packb(progress)
        await changelog_sent()  # "done" first: shots deleted before it would leave a title that never ends
        for j in range(n):  # the fused vectors are no longer needed
            del shots_table[_shot_key(tid, j, rid)]
        log.info("contextualised %s: %d shots", tid, n)
