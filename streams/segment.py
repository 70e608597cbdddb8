"""Stage: title requests and live segments -> shots.

    titles ─────────► segment_titles ──► shots      (one ShotRef per shot, n_shots known)
    live.segments ──► segment_live ────► shots      (shots as they close; n_shots on the last ones)
                          └── bad URI / undecodable media / malformed ──► deadletter

A title is cut in one streaming pass over its file (PyAV decode + the
configured detector, mediafm.media.shots); its timed text (a subtitle file
and the container's text streams) is aligned to the shots here, so the
encoding stage gets each shot's text with the shot.

A live event's detector keeps state across segments (a shot spanning two
segments is one shot). The segments not yet behind a closed shot are kept in
a changelog-backed table: a restarted worker replays them into a fresh
detector and carries on numbering shots where it stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import msgpack

from mediafm.errors import MediaError, SchemaError
from mediafm.media.decode import check_uri, probe
from mediafm.media.embed import TitleMeta
from mediafm.media.shots import Shot, ShotDetector, detect_shots
from mediafm.media.subtitles import align, container_subtitles, load_subtitles
from mediafm.schema import LiveSegment, ShotRef, TitleRequest, decode
from streams import metrics
from streams.app import app, dead_letter, events, settings, topics

log = logging.getLogger(__name__)
STAGE = "segment"

# Workers read media only from allowed roots: media_roots, or <state_dir>/media when unset.
media_settings = dataclasses.replace(settings, media_roots=settings.worker_media_roots)

live_table = app.Table("segment-live", key_type=bytes, value_type=bytes, partitions=settings.partitions)
_detectors: dict[str, ShotDetector] = {}  # event id -> detector (in memory; rebuilt from live_table)


def title_meta(title_id: str, kind: str, meta: dict) -> TitleMeta:
    known = {f.name for f in dataclasses.fields(TitleMeta)} - {"title_id", "kind"}
    unknown = sorted(set(meta) - known)
    if unknown:
        raise SchemaError(f"meta has unknown keys {unknown}; known: {sorted(known)}")
    try:
        return TitleMeta(title_id=title_id, kind=kind, **meta)
    except TypeError as e:
        raise SchemaError(f"meta is malformed: {e}") from None


def cut_title(req: TitleRequest) -> list[ShotRef]:
    """Blocking: decode, detect, align timed text. Runs in a thread."""
    meta = title_meta(req.title_id, "title", req.meta)
    path = check_uri(req.uri, media_settings)
    probe(path, media_settings)
    cues = []
    if req.subtitles_uri:
        cues += load_subtitles(check_uri(req.subtitles_uri, media_settings), encoding=req.subtitle_encoding)
    cues += container_subtitles(path)
    shots = detect_shots(path, detector=settings.shot_detector)
    texts = align(cues, shots)
    return [ShotRef(title_id=req.title_id, shot_index=s.index, start_s=s.start_s, end_s=s.end_s,
                    start_frame=s.start_frame, end_frame=s.end_frame, media=[str(path)], media_start_s=0.0,
                    text=t, title_text=meta.text(), profile=settings.encoder_profile, n_shots=len(shots),
                    kind="title", request_id=req.request_id, published_at=req.published_at)
            for s, t in zip(shots, texts, strict=True)]


@app.agent(topics.titles)
async def segment_titles(stream):
    async for event in stream.events():
        metrics.messages.labels(STAGE).inc()
        try:
            req = decode(event.message.value, expect=TitleRequest)
            refs = await asyncio.to_thread(cut_title, req)  # CPU work off the event loop
        except (SchemaError, MediaError) as e:
            await dead_letter(STAGE, event, str(e))
            continue
        except Exception as e:  # a decoder/library failure on this input must not stop the worker
            log.exception("segmenting failed")
            await dead_letter(STAGE, event, f"segmentation failed: {type(e).__name__}: {e}")
            continue
        for ref in refs:
            await topics.shots.send(key=ref.title_id.encode(), value=ref.to_bytes())
        metrics.shots.labels(STAGE).inc(len(refs))
        log.info("segmented %s: %d shots", req.title_id, len(refs))


# --- live events ---------------------------------------------------------------------------------

def _new_state(seg: LiveSegment) -> dict:
    return {"next_segment": 0, "next_shot": 0, "cut_s": 0.0, "segments": [], "done": False, "meta": seg.meta}


def _covering(segments: list[list], start_s: float, end_s: float) -> list[list]:
    """The [uri, start_s] segments that hold any of [start_s, end_s)."""
    out = []
    for i, (uri, s0) in enumerate(segments):
        s1 = segments[i + 1][1] if i + 1 < len(segments) else float("inf")
        if s0 < end_s and s1 > start_s:
            out.append([uri, s0])
    return out


def push_live(state: dict, seg: LiveSegment, path: str) -> list[Shot]:
    """Blocking: feed one segment (rebuilding the detector after a restart); closed shots, renumbered."""
    det = _detectors.get(seg.event_id)
    if det is None:
        det = _detectors[seg.event_id] = ShotDetector(settings.shot_detector)
        for uri, s0 in state["segments"]:  # replay what is not yet behind a closed shot
            det.push_segment(uri, time_offset=s0)
    shots = det.push_segment(path, time_offset=seg.start_s)
    if seg.last:
        shots += det.flush()
        del _detectors[seg.event_id]
    out = []
    for s in shots:  # a replayed detector re-finds shots already published: skip them
        if s.end_s <= state["cut_s"] + 1e-6:
            continue
        start = max(s.start_s, state["cut_s"])
        out.append(dataclasses.replace(s, index=state["next_shot"] + len(out), start_s=start))
    return out


@app.agent(topics.live_segments)
async def segment_live(stream):
    async for event in events(stream):
        metrics.messages.labels(STAGE).inc()
        try:
            seg = decode(event.message.value, expect=LiveSegment)
            key = seg.event_id.encode()
            state = msgpack.unpackb(live_table[key]) if key in live_table else _new_state(seg)
            if seg.segment_index < state["next_segment"] or state["done"]:
                metrics.duplicates.labels(STAGE).inc()  # redelivered after a restart
                continue
            if seg.segment_index > state["next_segment"]:
                raise SchemaError(f"event {seg.event_id!r}: segment {seg.segment_index} arrived but segment "
                                  f"{state['next_segment']} is next; publish segments in order, without gaps")
            meta = title_meta(seg.event_id, "live", state["meta"] or seg.meta)
        except SchemaError as e:
            await dead_letter(STAGE, event, str(e))
            continue
        try:
            path = str(check_uri(seg.uri, media_settings))
            shots = await asyncio.to_thread(push_live, state, seg, path)
        except Exception as e:  # this segment is unusable: say so, and let the event go on without it
            if not isinstance(e, MediaError):
                log.exception("live segmentation failed")
            _detectors.pop(seg.event_id, None)  # rebuilt from the table's segments on the next one
            await dead_letter(STAGE, event, f"event {seg.event_id!r} segment {seg.segment_index} skipped: "
                                            f"{type(e).__name__}: {e}")
            state["next_segment"] += 1
            live_table[key] = msgpack.packb(state)
            continue
        state["segments"].append([path, seg.start_s])
        total = state["next_shot"] + len(shots) if seg.last else None
        for s in shots:
            media = _covering(state["segments"], s.start_s, s.end_s)
            ref = ShotRef(title_id=seg.event_id, shot_index=s.index, start_s=s.start_s, end_s=s.end_s,
                          start_frame=s.start_frame, end_frame=s.end_frame, media=[m[0] for m in media],
                          media_start_s=media[0][1], text="", title_text=meta.text(),
                          profile=settings.encoder_profile, n_shots=total, kind="live",
                          published_at=seg.published_at)
            await topics.shots.send(key=key, value=ref.to_bytes())
        metrics.shots.labels(STAGE).inc(len(shots))
        state["next_segment"] += 1
        state["next_shot"] += len(shots)
        if shots:
            state["cut_s"] = shots[-1].end_s
        # keep only the segments a restarted detector must replay: those ending after the last cut
        # (less a second of lead-in); a segment ends where the next one starts
        segs = state["segments"]
        state["segments"] = [s for i, s in enumerate(segs)
                             if i + 1 == len(segs) or segs[i + 1][1] > state["cut_s"] - 1.0]
        state["done"] = seg.last
        live_table[key] = msgpack.packb(state)
