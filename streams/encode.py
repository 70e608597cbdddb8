"""Stage: shots -> per-modality embeddings on Triton (video frames, audio, timed text).

    shots ──► encode_shots ──(Triton: video / audio / text encoders)──► shots.encoded
                  └── media gone or undecodable, Triton refusing the input ──► deadletter

Shots are taken in batches across messages (Faust `take`); each run of
consecutive shots of one title is decoded in one streaming pass that starts
at the keyframe before its first shot, and encoded with
mediafm.media.embed.encode_aligned, the same code `mediafm embed` runs (the
shots arrive with their timed text already aligned by the segment stage). The
title embedding is made once per title (request) and reused. A run's encoded
shots go out together, in EncodedShots records (mediafm.schema.shot_records).
Fusion is the next stage (streams/fuse.py), so pre-encoded input can join
there, a shot or a run of a title's shots per record. A run refused here is
dead-lettered shot by shot and followed by a ShotsRefused in its place
(mediafm.schema), which the fuse stage passes on: the live stage goes on past
it, and the contextualise stage gives up the title's publication.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import numpy as np

from mediafm.errors import BadInput, ConfigError, SchemaError
from mediafm.media.decode import check_uri
from mediafm.media.embed import encode_aligned, encode_title, encoded_shot
from mediafm.media.shots import Shot
from mediafm.profiles import get_profile
from mediafm.schema import (
    EncodedShot,
    EncodedShots,
    ShotRef,
    ShotsRefused,
    TitleMeta,
    decode,
    shot_records,
    vec_to_bytes,
)
from streams import metrics
from streams.runtime import Runtime

log = logging.getLogger(__name__)
STAGE = "encode"
BATCH = 16
WITHIN_S = 0.2
TITLES_KEPT = 1024


def parse(raw: bytes) -> ShotRef:
    ref = decode(raw, expect=ShotRef)
    try:
        get_profile(ref.profile)
    except ConfigError as e:
        raise SchemaError(str(e)) from None
    if not ref.media or ref.end_s <= ref.start_s:
        raise SchemaError(f"shot {ref.shot_index} of {ref.title_id!r}: no media or empty span "
                          f"[{ref.start_s}, {ref.end_s})")
    return ref


def runs(items: list[tuple]) -> list[list[tuple]]:
    """Split (event, ref) pairs into runs of consecutive shots sharing title, request, media and n_shots; an
    (event, ShotsRefused) is a run of its own, in its place."""
    out: list[list[tuple]] = []
    for item in items:
        ref = item[1]
        if out and not isinstance(ref, ShotsRefused) and not isinstance(out[-1][-1][1], ShotsRefused):
            prev = out[-1][-1][1]
            if (prev.title_id, prev.request_id, prev.media, prev.n_shots, prev.profile) == \
               (ref.title_id, ref.request_id, ref.media, ref.n_shots, ref.profile) and \
               ref.shot_index == prev.shot_index + 1:
                out[-1].append(item)
                continue
        out.append([item])
    return out


def refused_ref(raw: bytes, reason: str) -> ShotsRefused | None:
    """The ShotsRefused standing for a ShotRef that parse() refused (a profile unknown, an empty span), where the
    message is a ShotRef at all."""
    try:
        ref = decode(raw, expect=ShotRef)
    except SchemaError:
        return None
    return Runtime.refusal(STAGE, [ref], reason)


class Encoder:
    """Encodes runs of shots on Triton; keeps the title embeddings it made (one per title request)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.titles: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()  # (title, request) -> embedding

    async def title_embedding(self, ref: ShotRef) -> np.ndarray:
        key = (ref.title_id, ref.request_id)
        if key not in self.titles:
            self.titles[key] = await encode_title(self.rt.triton, TitleMeta(ref.title_id, title=ref.title_text),
                                                  ref.profile, settings=self.rt.settings)
            while len(self.titles) > TITLES_KEPT:
                self.titles.popitem(last=False)
        return self.titles[key]

    async def encode_run(self, refs: list[ShotRef]) -> list[EncodedShot]:
        """One run of consecutive shots (runs()) -> their EncodedShot messages. Raises BadInput."""
        first = refs[0]
        media = [str(check_uri(m, self.rt.media_settings, allow_relative=False)) for m in first.media]
        off = first.media_start_s  # shot times in the media's own time
        shots = [Shot(r.shot_index, r.start_s - off, r.end_s - off, r.start_frame, r.end_frame) for r in refs]
        vecs = await encode_aligned(self.rt.triton, media if len(media) > 1 else media[0], shots,
                                    [r.text for r in refs], first.profile, settings=self.rt.settings,
                                    batch_shots=BATCH, decoded=self.rt.decoded if first.kind == "live" else None,
                                    live=first.kind == "live")
        title = vec_to_bytes(await self.title_embedding(first))
        return [encoded_shot(v, title_id=r.title_id, shot_index=r.shot_index, start_s=r.start_s, end_s=r.end_s,
                             profile=r.profile, n_shots=r.n_shots, kind=r.kind, title_embedding=title,
                             request_id=r.request_id, published_at=r.published_at)
                for r, v in zip(refs, vecs, strict=True)]

    async def encode_run_patiently(self, refs: list[ShotRef]) -> list[EncodedShot]:
        """encode_run, waiting out what is transient (an embedding service down past its own patience, the
        media's storage failing a read): retried with capped backoff, never dead-lettered."""
        return await self.rt.patiently(f"encoding {refs[0].title_id} shots {refs[0].shot_index}.."
                                       f"{refs[-1].shot_index}", lambda: self.encode_run(refs))


def register(rt: Runtime) -> None:
    encoder = Encoder(rt)

    @rt.app.agent(rt.topics.shots, name=f"{__name__}.encode")
    async def encode(stream):
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            with rt.unfinished(events):  # left mid-way (a stop while encoding): fetched again, not committed
                parsed = []  # (event, ShotRef), or (event, ShotsRefused) for a shot refused here, in order
                for event in events:
                    metrics.messages.labels(STAGE).inc()
                    try:
                        parsed.append((event, parse(event.message.value)))
                    except BadInput as e:
                        await rt.dead_letter(STAGE, event, str(e))
                        if (refusal := refused_ref(event.message.value, str(e))) is not None:
                            parsed.append((event, refusal))
                for run in runs(parsed):
                    if isinstance(run[0][1], ShotsRefused):  # after the shots before it, as they came
                        await rt.send(rt.topics.encoded, run[0][1].title_id.encode(), run[0][1].to_bytes())
                        continue
                    try:
                        msgs = await encoder.encode_run_patiently([r for _, r in run])
                    except BadInput as e:
                        for event, ref in run:
                            await rt.dead_letter(STAGE, event, f"shot {ref.shot_index} of {ref.title_id!r}: {e}")
                        await rt.refused(STAGE, rt.topics.encoded, [ref for _, ref in run], str(e))
                        continue
                    except Exception as e:  # a decoder failure on this media must not stop the worker
                        log.exception("encoding failed")
                        for event, _ in run:
                            await rt.dead_letter(STAGE, event, f"encoding failed: {type(e).__name__}: {e}")
                        await rt.refused(STAGE, rt.topics.encoded, [ref for _, ref in run],
                                         f"encoding failed: {type(e).__name__}: {e}")
                        continue
                    first = msgs[0]  # a run is of one title and request: it goes out in EncodedShots records
                    for record in shot_records(EncodedShots, [m.to_bytes() for m in msgs], first.title_id,
                                               first.request_id):
                        await rt.send(rt.topics.encoded, first.title_id.encode(), record)
                    now = time.time()
                    for m in msgs:
                        metrics.stage_seconds.labels(STAGE, m.kind).observe(max(0.0, now - m.published_at))
                    metrics.shots.labels(STAGE).inc(len(msgs))
