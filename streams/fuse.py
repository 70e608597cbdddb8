"""Stage: encoded shots -> fused shot vectors, via Triton's `fusion` model.

    shots.encoded ──► fuse_shots ──(Triton: fusion)──► shots.fused
                          └── malformed / rejected ──► deadletter

A record of the encoded topic holds one shot (EncodedShot) or a run of one
title's shots (EncodedShots, as the encode stage publishes them). Records are
checked one by one, and a record is fused whole or not at all: a bad shot
dead-letters its record alone, naming the shot. Shots are fused in Triton calls
of up to BATCH shots across records and titles. A call's fused shots of one
title go out together, in FusedShots records (mediafm.schema.shot_records): the
contextualise stage then reads, records and acknowledges a record per run of a
title's shots, not one per shot. A refused record is followed by a ShotsRefused
in its place (mediafm.schema), and one from the encode stage is passed on in
order: the live stage goes on past a live event's shots, and ends the event where
they carried its n_shots; the contextualise stage gives up a title's publication
with one dead letter for the title, instead of waiting for its shots for ever.
A batch's live records are fused before its titles' (live_first), each kind in
the order it came.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from mediafm.errors import BadRequest, ConfigError, SchemaError
from mediafm.fusion import MODALITIES
from mediafm.profiles import get_layout
from mediafm.schema import (
    EncodedShot,
    EncodedShots,
    FusedShot,
    FusedShots,
    ShotsRefused,
    bytes_to_vec,
    record_kind,
    record_shots,
    shot_records,
    vec_to_bytes,
)
from streams import metrics
from streams.runtime import Runtime

STAGE = "fuse"
log = logging.getLogger(__name__)
BATCH = 256
"""Shots a Triton call fuses at most, and records a batch takes at most. Records of runs of shots are parsed
and fused a slice of up to BATCH shots at a time; how many of them wait fetched is bounded by the topic's
stream buffer (streams/runtime.py RUNS_BUFFER)."""
WITHIN_S = 0.05


Parsed = tuple[EncodedShot, dict[str, np.ndarray], np.ndarray]


def checked(shot: EncodedShot) -> Parsed:
    """An encoded shot, checked: known profile, a real span, vectors of the profile's widths, one at least."""
    try:
        layout = get_layout(shot.profile)
    except ConfigError as e:
        raise SchemaError(str(e)) from None
    if shot.end_s < shot.start_s or shot.shot_index < 0:
        raise SchemaError(f"shot {shot.shot_index} of {shot.title_id!r} has span [{shot.start_s}, {shot.end_s})")
    vecs, present = {}, np.zeros(len(MODALITIES), bool)
    for i, m in enumerate(MODALITIES):
        raw_vec = getattr(shot, m)
        dim = layout.dims[m]
        present[i] = raw_vec is not None
        vecs[m] = bytes_to_vec(raw_vec, dim, what=m) if raw_vec is not None else np.zeros(dim, np.float32)
    if not present.any():
        raise SchemaError(f"shot {shot.shot_index} of {shot.title_id!r} has no modality (video/audio/text all null)")
    if shot.title_embedding is not None:  # refused here, on the topic its sender wrote, not a stage later
        bytes_to_vec(shot.title_embedding, layout.title, what="title_embedding")
    return shot, vecs, present


def parse(raw: bytes) -> list[Parsed] | ShotsRefused:
    """The encoded shots of one record (an EncodedShot, or the shots of an EncodedShots), each checked; or a
    ShotsRefused (passed on as it is). Raises SchemaError for the whole record, naming the shot at fault in a
    record of several."""
    shots = record_shots(EncodedShots, raw, refusals=True)
    if isinstance(shots, ShotsRefused):
        return shots
    out = []
    for k, shot in enumerate(shots):
        try:
            out.append(checked(shot))
        except SchemaError as e:
            if len(shots) == 1:
                raise
            raise SchemaError(f"{EncodedShots.SCHEMA} of {shot.title_id!r}, shot {k} (index {shot.shot_index}): "
                              f"{e}") from None
    return out


async def fuse(rt: Runtime, batch: list[Parsed]) -> list[np.ndarray | BadRequest]:
    """Fuse parsed shots in one Triton call; isolate bad ones if the batch is refused."""
    inputs = {m.upper(): np.stack([v[m] for _, v, _ in batch]) for m in MODALITIES}
    inputs["PRESENT"] = np.stack([p for _, _, p in batch])
    try:
        return list((await rt.triton.infer("fusion", inputs, ["FUSED"]))["FUSED"])
    except BadRequest as e:
        if len(batch) == 1:
            return [e]
    out: list = []
    for item in batch:  # one bad shot must not sink its neighbours
        out.extend(await fuse(rt, [item]))
    return out


def fused_shot(shot: EncodedShot, fused: np.ndarray, present: np.ndarray) -> FusedShot:
    return FusedShot(title_id=shot.title_id, shot_index=shot.shot_index, start_s=shot.start_s, end_s=shot.end_s,
                     profile=shot.profile, fused=vec_to_bytes(fused), present=[bool(p) for p in present],
                     n_shots=shot.n_shots, kind=shot.kind, title_embedding=shot.title_embedding,
                     request_id=shot.request_id, published_at=shot.published_at)


def register(rt: Runtime) -> None:
    @rt.app.agent(rt.topics.encoded, name=f"{__name__}.fuse_shots")
    async def fuse_shots(stream):
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            with rt.unfinished(events):  # left mid-way (a stop during the Triton call): fetched again
                await _fuse_batch(rt, events)


def live_first(events: list) -> list:
    """The batch's records, live events' first: each kind's in the order they came, so that a title's records, and
    a live event's, keep theirs (a ShotsRefused after the shots before it). A live run of shots fetched behind a
    backfill's runs is fused in its batch's first Triton call, ahead of the titles' runs fetched before it
    (bench/live.py --titles); it still waits for the rest of the batch under way when it was fetched. The kind is
    peeked (mediafm.schema.record_kind); a record that cannot be read goes with the titles', where parse()
    refuses it."""
    return sorted(events, key=lambda e: record_kind(e.message.value) != "live")  # a stable sort


async def _fuse_batch(rt: Runtime, events: list) -> None:
    """Fuse one batch of encoded-shot records and publish the fused shots; bad records to the dead-letter topic.
    Records are parsed, fused and published in slices of up to BATCH shots (a record is never split), so that
    a batch of records of many shots holds one slice's decoded shots and fused vectors at a time. Live events'
    records go first (live_first)."""
    records: list[tuple[object, list[Parsed]]] = []
    size = 0
    for event in live_first(events):
        metrics.messages.labels(STAGE).inc()
        try:
            shots = parse(event.message.value)
        except SchemaError as e:
            await rt.dead_letter(STAGE, event, str(e))
            try:  # a record refused (a NaN in a vector, say): said in its place, as below
                shots = rt.refusal(STAGE, record_shots(EncodedShots, event.message.value), str(e))
            except SchemaError:
                shots = None
            if shots is None:
                continue
        if isinstance(shots, ShotsRefused):  # passed on after the shots before it (rare: the slice is cut here)
            if records:
                await _fuse_slice(rt, records)
                records, size = [], 0
            await rt.send(rt.topics.fused, shots.title_id.encode(), shots.to_bytes())
            continue
        if records and size + len(shots) > BATCH:
            await _fuse_slice(rt, records)
            records, size = [], 0
        records.append((event, shots))
        size += len(shots)
    if records:
        await _fuse_slice(rt, records)


async def _fuse_slice(rt: Runtime, records: list[tuple[object, list[Parsed]]]) -> None:
    """Fuse whole records in Triton calls of up to BATCH shots of one profile; a record with a shot the fusion
    model refuses (or a call that fails unforeseen) is dead-lettered whole, with the first reason; the others'
    fused shots go out as each title's runs, in the order they came."""
    items = [(k, *p) for k, (_, shots) in enumerate(records) for p in shots]
    fused: dict[int, np.ndarray] = {}  # position in items -> fused vector
    refused: dict[int, str] = {}  # record -> why
    for profile in sorted({shot.profile for _, shot, _, _ in items}):  # one Triton request, one layout
        group = [j for j, item in enumerate(items) if item[1].profile == profile]
        for c in range(0, len(group), BATCH):
            chunk = group[c:c + BATCH]
            try:
                results = await fuse(rt, [items[j][1:] for j in chunk])
            except Exception as e:  # unforeseen: say so for each record, never lose the batch with the agent
                log.exception("fusing failed")
                for j in chunk:
                    shot = items[j][1]
                    refused.setdefault(items[j][0], f"shot {shot.shot_index} of {shot.title_id!r}: fusing failed: "
                                                    f"{type(e).__name__}: {e}")
                continue
            for j, result in zip(chunk, results, strict=True):
                if isinstance(result, BadRequest):
                    refused.setdefault(items[j][0], str(result))
                else:
                    fused[j] = result
    for k, why in sorted(refused.items()):
        await rt.dead_letter(STAGE, records[k][0], why)
    runs: dict[tuple, list[tuple[EncodedShot, bytes]]] = {}  # a title's fused shots, in the order they came
    for j, (k, shot, _, present) in enumerate(items):
        if k not in refused:
            runs.setdefault((shot.title_id, shot.request_id), []).append(
                (shot, fused_shot(shot, fused[j], present).to_bytes()))
    for (tid, rid), run in runs.items():
        for record in shot_records(FusedShots, [raw for _, raw in run], tid, rid):
            await rt.send(rt.topics.fused, tid.encode(), record)
        now = time.time()
        for shot, _ in run:
            metrics.stage_seconds.labels(STAGE, shot.kind).observe(max(0.0, now - shot.published_at))
        metrics.shots.labels(STAGE).inc(len(run))
    # The refused records, said after the slice's runs (after the shots before them; a later shot of a live event
    # may have gone first, which the live stage takes: it then learns only their n_shots)
    for k, why in sorted(refused.items()):
        await rt.refused(STAGE, rt.topics.fused, [shot for shot, _, _ in records[k][1]], why)
