"""Stage: shots -> per-modality embeddings on Triton (video frames, audio, timed text).

    shots ──► encode_shots ──(Triton: video / audio / text encoders)──► shots.encoded
                  └── media gone or undecodable, Triton refusing the input ──► deadletter

Shots are taken in batches across messages (Faust `take`); each run of
consecutive shots of one title is decoded in one streaming pass that starts
at the keyframe before its first shot, and encoded with
mediafm.media.embed.encode_shots, the same code `mediafm embed` runs. The
title embedding is made once per title (request) and reused. Fusion is the
next stage (streams/fuse.py), so pre-encoded input can join there.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np

from mediafm.errors import MediaError, SchemaError
from mediafm.inference import BadRequest
from mediafm.media.decode import check_uri
from mediafm.media.embed import TitleMeta, encode_shots, encode_title, get_profile
from mediafm.media.shots import Shot
from mediafm.media.subtitles import Cue
from mediafm.schema import ShotRef, decode
from streams import metrics
from streams.app import app, dead_letter, settings, topics, triton
from streams.segment import media_settings

log = logging.getLogger(__name__)
STAGE = "encode"
BATCH = 16
WITHIN_S = 0.2

_titles: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()  # (title, request) -> title embedding
_TITLES_KEPT = 1024


async def title_embedding(ref: ShotRef) -> np.ndarray:
    key = (ref.title_id, ref.request_id)
    if key not in _titles:
        _titles[key] = await encode_title(triton, TitleMeta(ref.title_id, title=ref.title_text), ref.profile,
                                          settings=settings)
        while len(_titles) > _TITLES_KEPT:
            _titles.popitem(last=False)
    return _titles[key]


def runs(items: list[tuple]) -> list[list[tuple]]:
    """Split (event, ref) pairs into runs of consecutive shots sharing title, request, media and n_shots."""
    out: list[list[tuple]] = []
    for item in items:
        ref = item[1]
        if out:
            prev = out[-1][-1][1]
            if (prev.title_id, prev.request_id, prev.media, prev.n_shots, prev.profile) == \
               (ref.title_id, ref.request_id, ref.media, ref.n_shots, ref.profile) and \
               ref.shot_index == prev.shot_index + 1:
                out[-1].append(item)
                continue
        out.append([item])
    return out


async def encode_run(run: list[tuple]) -> list:
    refs: list[ShotRef] = [r for _, r in run]
    first = refs[0]
    media = [str(check_uri(m, media_settings)) for m in first.media]
    off = first.media_start_s
    shots = [Shot(r.shot_index, r.start_s - off, r.end_s - off, r.start_frame, r.end_frame) for r in refs]
    cues = [Cue(s.start_s, s.end_s, r.text) for s, r in zip(shots, refs, strict=True) if r.text]
    msgs = await encode_shots(triton, media if len(media) > 1 else media[0], shots, cues,
                              TitleMeta(first.title_id, kind=first.kind), get_profile(first.profile),
                              settings=settings, batch_shots=BATCH, n_shots=first.n_shots,
                              title_embedding=await title_embedding(first))
    for m, r in zip(msgs, refs, strict=True):  # back to title / event time, with the request's identity
        m.start_s, m.end_s, m.kind = r.start_s, r.end_s, r.kind
        m.request_id, m.published_at = r.request_id, r.published_at
    return msgs


@app.agent(topics.shots)
async def encode(stream):
    async for events in stream.take_events(BATCH, within=WITHIN_S):
        parsed = []
        for event in events:
            metrics.messages.labels(STAGE).inc()
            try:
                ref = decode(event.message.value, expect=ShotRef)
                get_profile(ref.profile)
                if not ref.media or ref.end_s <= ref.start_s:
                    raise SchemaError(f"shot {ref.shot_index} of {ref.title_id!r}: no media or empty span "
                                      f"[{ref.start_s}, {ref.end_s})")
                parsed.append((event, ref))
            except (SchemaError, MediaError) as e:
                await dead_letter(STAGE, event, str(e))
        for run in runs(parsed):
            try:
                msgs = await encode_run(run)
            except (MediaError, BadRequest) as e:
                for event, ref in run:
                    await dead_letter(STAGE, event, f"shot {ref.shot_index} of {ref.title_id!r}: {e}")
                continue
            except Exception as e:  # a decoder failure on this media must not stop the worker
                log.exception("encoding failed")
                for event, _ in run:
                    await dead_letter(STAGE, event, f"encoding failed: {type(e).__name__}: {e}")
                continue
            for m in msgs:
                await topics.encoded.send(key=m.title_id.encode(), value=m.to_bytes())
            metrics.shots.labels(STAGE).inc(len(msgs))
