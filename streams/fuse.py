"""Stage: encoded shots -> fused shot vectors, via Triton's `fusion` model.

    shots.encoded ──► fuse_shots ──(Triton: fusion)──► shots.fused
                          └── malformed / rejected ──► deadletter

Messages are decoded one by one (a bad one is dead-lettered alone), then
fused in batches of up to BATCH shots across messages and titles. A batch's
fused shots of one title go out together, in FusedShots records
(mediafm.schema.fused_records): the contextualise stage then reads, records
and acknowledges a record per run of a title's shots, not one per shot.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from mediafm.errors import BadRequest, ConfigError, SchemaError
from mediafm.fusion import MODALITIES
from mediafm.profiles import get_layout
from mediafm.schema import EncodedShot, FusedShot, bytes_to_vec, decode, fused_records, vec_to_bytes
from streams import metrics
from streams.runtime import Runtime

STAGE = "fuse"
log = logging.getLogger(__name__)
BATCH = 256
WITHIN_S = 0.05


def parse(raw: bytes) -> tuple[EncodedShot, dict[str, np.ndarray], np.ndarray]:
    """An encoded shot, checked: known profile, a real span, vectors of the profile's widths, one at least."""
    shot = decode(raw, expect=EncodedShot)
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
    return shot, vecs, present


async def fuse(rt: Runtime, batch: list) -> list[np.ndarray | BadRequest]:
    """Fuse parsed shots in one Triton call; isolate bad ones if the batch is refused."""
    inputs = {m.upper(): np.stack([v[m] for _, _, v, _ in batch]) for m in MODALITIES}
    inputs["PRESENT"] = np.stack([p for _, _, _, p in batch])
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


async def _fuse_batch(rt: Runtime, events: list) -> None:
    """Fuse one batch of encoded-shot events and publish the fused shots; bad ones to the dead-letter topic."""
    batch = []
    for event in events:
        metrics.messages.labels(STAGE).inc()
        try:
            batch.append((event, *parse(event.message.value)))
        except SchemaError as e:
            await rt.dead_letter(STAGE, event, str(e))
    for profile in sorted({shot.profile for _, shot, _, _ in batch}):  # one Triton request, one layout
        group = [b for b in batch if b[1].profile == profile]
        try:
            results = await fuse(rt, group)
        except Exception as e:  # unforeseen: say so for each shot, never lose the batch with the agent
            log.exception("fusing failed")
            for event, shot, _, _ in group:
                await rt.dead_letter(STAGE, event, f"shot {shot.shot_index} of {shot.title_id!r}: fusing "
                                                   f"failed: {type(e).__name__}: {e}")
            continue
        runs: dict[tuple, list[tuple[EncodedShot, bytes]]] = {}  # a title's fused shots, in the order they came
        for (event, shot, _, present), fused in zip(group, results, strict=True):
            if isinstance(fused, BadRequest):
                await rt.dead_letter(STAGE, event, str(fused))
                continue
            key = (shot.title_id, shot.request_id)
            runs.setdefault(key, []).append((shot, fused_shot(shot, fused, present).to_bytes()))
        for (tid, rid), run in runs.items():
            for record in fused_records([raw for _, raw in run], tid, rid):
                await rt.send(rt.topics.fused, tid.encode(), record)
            now = time.time()
            for shot, _ in run:
                metrics.stage_seconds.labels(STAGE, shot.kind).observe(max(0.0, now - shot.published_at))
            metrics.shots.labels(STAGE).inc(len(run))
