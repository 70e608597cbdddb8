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
detector and carries on numbering shots where it stopped. The frames the
detector decodes are kept at the video encoder's size (Runtime.decoded,
mediafm/media/segment_cache.py), so the encode stage samples a live shot's
frames from memory instead of decoding its segments a second time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from pathlib import Path

import msgpack

from mediafm.config import Settings
from mediafm.errors import BadInput, MediaError, SchemaError, SubtitleError, Transient
from mediafm.media.decode import check_uri, probe
from mediafm.media.segment_cache import DecodedSegments
from mediafm.media.shots import Shot, ShotDetector, detect_shots
from mediafm.media.subtitles import Cue, align, container_subtitles, load_subtitles
from mediafm.profiles import get_profile
from mediafm.schema import LiveSegment, ShotRef, TitleMeta, TitleRequest, decode
from streams import metrics
from streams.runtime import Runtime

log = logging.getLogger(__name__)
STAGE = "segment"


def cut_title(req: TitleRequest, settings: Settings, media_settings: Settings) -> list[ShotRef]:
    """Blocking: decode, detect, align timed text. Runs in a thread."""
    meta = TitleMeta.from_dict(req.meta, title_id=req.title_id, kind="title")
    path = check_uri(req.uri, media_settings, allow_relative=False)
    probe(path, media_settings)
    if req.subtitles_uri:  # the text: the container's own subtitle streams are read only without one
        cues = load_subtitles(check_uri(req.subtitles_uri, media_settings, allow_relative=False),
                              encoding=req.subtitle_encoding)
    else:
        cues = container_subtitles(path, settings.subtitle_languages)
    shots = detect_shots(path, detector=settings.shot_detector, max_duration_s=media_settings.max_media_duration_s)
    texts = align(cues, shots)
    return [ShotRef(title_id=req.title_id, shot_index=s.index, start_s=s.start_s, end_s=s.end_s,
                    start_frame=s.start_frame, end_frame=s.end_frame, media=[str(path)], media_start_s=0.0,
                    text=t, title_text=meta.text(), profile=settings.encoder_profile, n_shots=len(shots),
                    kind="title", request_id=req.request_id, published_at=req.published_at)
            for s, t in zip(shots, texts, strict=True)]


# --- live events ---------------------------------------------------------------------------------

def new_state(seg: LiveSegment) -> dict:
    """An event's record in the segment-live table."""
    return {"next_segment": 0, "next_shot": 0, "cut_s": 0.0, "segments": [], "done": False, "meta": seg.meta,
            "cues": []}


def covering(segments: list[list], start_s: float, end_s: float) -> list[list]:
    """The [uri, start_s] of the segments ([uri, start_s, first frame]) that hold any of [start_s, end_s)."""
    out = []
    for i, (uri, s0, *_) in enumerate(segments):
        s1 = segments[i + 1][1] if i + 1 < len(segments) else float("inf")
        if s0 < end_s and s1 > start_s:
            out.append([uri, s0])
    return out


class LiveCutter:
    """One ShotDetector per live event, fed segment by segment; rebuilt from the table after a restart.
    Every segment it decodes is also kept in `decoded` at the video encoder's frame size, for the encode
    stage (mediafm/media/segment_cache.py)."""

    def __init__(self, settings: Settings, decoded: DecodedSegments | None = None) -> None:
        self.settings = settings
        self.decoded = decoded
        self.frame_size = get_profile(settings.encoder_profile).frame_size
        # event id -> (detector, its frame 0 in the event, the segment it takes next)
        self.detectors: dict[str, tuple[ShotDetector, int, int]] = {}
        self.used: dict[str, float] = {}  # event id -> when its detector was last fed (monotonic)

    def push(self, state: dict, seg: LiveSegment, path: str) -> tuple[list[Shot], int, float]:
        """Blocking: feed one segment (rebuilding the detector after a restart); (closed shots, renumbered
        in the event's shots and frames; the segment's frame count; where its media ends on the event's
        clock). state is read, not changed.

        state["segments"] holds [uri, start_s, first frame in the event] of each kept segment, so a
        detector rebuilt after a restart numbers frames where the event was."""
        self._let_go_idle()
        det, frame0 = self._detector(state, seg.event_id)
        before = det.n_frames
        try:
            shots = self._push(det, path, seg.start_s)
        except BaseException:  # part of the segment may be in the detector: the next try starts from the record
            self.forget(seg.event_id)
            raise
        n_frames, end_s = det.n_frames - before, det.end_s
        self.detectors[seg.event_id] = (det, frame0, state["next_segment"] + 1)
        self.used[seg.event_id] = time.monotonic()
        if seg.last:
            shots += det.flush()
            self.forget(seg.event_id)
        return self._numbered(state, shots, frame0), n_frames, end_s

    def close(self, state: dict, seg: LiveSegment) -> list[Shot]:
        """Blocking: end the event without `seg`, its last segment, whose media could not be used: the shot still
        open closes where the media before it ends. The closed shots, numbered as push() numbers them."""
        det, frame0 = self._detector(state, seg.event_id)
        shots = det.flush()
        self.forget(seg.event_id)
        return self._numbered(state, shots, frame0)

    def _let_go_idle(self) -> None:
        """The detectors of events with no segment for live_idle_end_s (a feed that died without its last): let
        go, a few MB of decoder state each, which before 2026-12-08 stayed for the worker's life. One whose event
        goes on after all is rebuilt from its record, as after a restart."""
        limit = self.settings.live_idle_end_s
        if limit <= 0:
            return
        now = time.monotonic()
        for eid in [e for e, at in self.used.items() if now - at > limit]:
            log.info("live event %s: no segment for %.0f s; its shot detector is let go", eid, now - self.used[eid])
            self.forget(eid)

    def _detector(self, state: dict, event_id: str) -> tuple[ShotDetector, int]:
        """The event's detector and its frame 0 in the event; after a restart, or a segment that failed, one
        rebuilt by replaying the segments since the last cut. One of those that cannot be read any more (a live
        encoder deletes old segment files; an HLS playlist keeps a minute or less) gives a fresh detector from the
        event's next frame: the shot open there is lost (its frames are gone; logged), the event goes on."""
        cached = self.detectors.get(event_id)
        if cached is not None and cached[2] != state["next_segment"]:
            # the record went on without this detector: the event's partition was another worker's meanwhile (a
            # rebalance there and back). Before 2026-12-08 it was fed on from where it had stopped: the segments
            # between were a gap to it, its frame numbers stale, and the shots after them cut wrong or refused
            log.info("live event %s: its detector stopped at segment %d and the event is at %d; rebuilt from the "
                     "event's record", event_id, cached[2], state["next_segment"])
            del self.detectors[event_id]
        if event_id not in self.detectors:
            kept = state["segments"]  # replay what is not yet behind a closed shot
            det = self._new_detector()
            frame0 = kept[0][2] if kept and len(kept[0]) > 2 else 0
            try:
                for uri, s0, *_ in kept:
                    self._push(det, uri, s0)
            except Transient:  # the storage did not answer: the segments are there, the caller waits and retries
                raise
            except Exception as e:
                log.warning("live event %s: a segment since its last cut cannot be read again (%s: %s); the shot "
                            "open from %.3f s is lost, the event goes on from its next segment", event_id,
                            type(e).__name__, e, state["cut_s"])
                det = self._new_detector()
                frame0 = state.get("frames", 0)
            self.detectors[event_id] = (det, frame0, state["next_segment"])
        return self.detectors[event_id][:2]

    def _new_detector(self) -> ShotDetector:
        return ShotDetector(self.settings.live_shot_detector, max_duration_s=self.settings.max_media_duration_s)

    @staticmethod
    def _numbered(state: dict, shots: list[Shot], frame0: int) -> list[Shot]:
        out = []
        for s in shots:  # a replayed detector re-finds shots already published: skip them
            if s.end_s <= state["cut_s"] + 1e-6:
                continue
            start = max(s.start_s, state["cut_s"])
            first = max(s.start_frame + frame0, state.get("cut_frame", 0))
            out.append(dataclasses.replace(s, index=state["next_shot"] + len(out), start_s=start, start_frame=first,
                                           end_frame=s.end_frame + frame0))
        return out

    def _push(self, det: ShotDetector, path: str, start_s: float) -> list[Shot]:
        rec = self.decoded.recorder(self.frame_size) if self.decoded is not None else None
        shots = det.push_segment(path, time_offset=start_s, tap=rec)
        if rec is not None:
            self.decoded.put(path, rec.result())
        return shots

    def forget(self, event_id: str) -> None:
        self.detectors.pop(event_id, None)  # rebuilt from the table's segments on the next segment
        self.used.pop(event_id, None)

    def refs(self, state: dict, seg: LiveSegment, shots: list[Shot], meta: TitleMeta) -> list[ShotRef]:
        """The ShotRefs of the shots this segment closed (state["segments"] includes the segment), each with
        the timed text of the event's cues (state["cues"]) it overlaps."""
        total = state["next_shot"] + len(shots) if seg.last else None
        texts = align([Cue(*c) for c in state.get("cues", [])], shots)
        out = []
        for s, text in zip(shots, texts, strict=True):
            media = covering(state["segments"], s.start_s, s.end_s)
            out.append(ShotRef(title_id=seg.event_id, shot_index=s.index, start_s=s.start_s, end_s=s.end_s,
                               start_frame=s.start_frame, end_frame=s.end_frame, media=[m[0] for m in media],
                               media_start_s=media[0][1], text=text, title_text=meta.text(),
                               profile=self.settings.encoder_profile, n_shots=total, kind="live",
                               published_at=seg.published_at))
        return out


def pushed(state: dict, path: str, start_s: float, n_frames: int, end_s: float) -> None:
    """The event's record once a segment is in its detector (LiveCutter.push): the segment kept for a replay,
    with its first frame in the event, and where the event's media now ends (check_next)."""
    state["segments"].append([path, start_s, state.get("frames", 0)])
    state["frames"] = state.get("frames", 0) + n_frames
    state["end_s"] = end_s


def advance(state: dict, seg: LiveSegment, shots: list[Shot]) -> None:
    """The event's record after this segment and the shots it closed."""
    state["next_segment"] += 1
    state["next_shot"] += len(shots)
    if shots:
        state["cut_s"], state["cut_frame"] = shots[-1].end_s, shots[-1].end_frame
    # keep only the segments a restarted detector must replay: those ending after the last cut
    # (less a second of lead-in); a segment ends where the next one starts
    segs = state["segments"]
    state["segments"] = [s for i, s in enumerate(segs) if i + 1 == len(segs) or segs[i + 1][1] > state["cut_s"] - 1.0]
    state["cues"] = [c for c in state.get("cues", []) if c[1] > state["cut_s"]]  # only cues of shots still open
    state["done"] = seg.last
    state["last_published_at"] = max(state.get("last_published_at", 0.0), seg.published_at)


MAX_HELD_TEXT_BYTES = 256 * 1024
"""A live event's record holds the cues of the shots still open (a restarted worker aligns them again), and the
ShotRef of a shot carries its text: both are messages (MAX_MESSAGE_BYTES). A segment whose cues would take the
text held past this is published without its timed text, the reason dead-lettered. Captions run to a few hundred
bytes a second; this is minutes of them even for a shot of MAX_SHOT_S. Before, one 5 MB WebVTT on one segment made
a record over the producer's limit: the worker crashed on its changelog write, and on the next segment again."""


def segment_cues(seg: LiveSegment, media_settings: Settings, held: list[list] = ()) -> list[list]:
    """The segment's timed text as [start_s, end_s, text] on the event's clock, less the cues already `held`
    (one cue over two segments). Raises BadInput, also when the text held would pass MAX_HELD_TEXT_BYTES."""
    if not seg.subtitles_uri:
        return []
    cues = load_subtitles(check_uri(seg.subtitles_uri, media_settings, allow_relative=False),
                          encoding=seg.subtitle_encoding)
    new = [c for c in ([c.start_s, c.end_s, c.text] for c in cues) if c not in held]
    size = sum(len(c[2].encode()) for c in [*held, *new])
    if size > MAX_HELD_TEXT_BYTES:
        raise SubtitleError(f"{seg.subtitles_uri}: {len(new)} cues, with those of the shots still open "
                            f"{size} bytes of text, over the {MAX_HELD_TEXT_BYTES} a live event holds; is it this "
                            "segment's timed text? Publish each segment with the cues of its own seconds")
    return new


OVERLAP_S = 0.5
"""check_next: a segment may start this much before the media of the one before it ends (start times rounded
by a segmenter), not more: segments that overlap would give the shots across their edge times that go back."""


def check_next(state: dict, seg: LiveSegment) -> bool:
    """True if `seg` is the event's next segment, False if already processed (a redelivery); SchemaError on a
    gap, on a segment after the event's last, on a segment published after the event ended (its id used again),
    and on a clock that goes back (before the segment before it, or into its media). A clock that jumps ahead
    is a gap in the media, and cut there (mediafm.media.shots.GAP_S)."""
    ended = f"event {seg.event_id!r} ended with segment {state['next_segment'] - 1} (last=true)"
    if state["done"] and seg.segment_index >= state["next_segment"]:
        raise SchemaError(f"{ended}; segment {seg.segment_index} arrived after it. A new broadcast needs a new "
                          "event id")
    if state["done"] and seg.published_at > state.get("last_published_at", math.inf):
        raise SchemaError(f"{ended} and segment {seg.segment_index} was published after that, at "
                          f"{seg.published_at:.3f}: not a redelivery. A new broadcast needs a new event id")
    if seg.segment_index < state["next_segment"] or state["done"]:
        return False
    if seg.segment_index > state["next_segment"]:
        raise SchemaError(f"event {seg.event_id!r}: segment {seg.segment_index} arrived but segment "
                          f"{state['next_segment']} is next; publish segments in order, without gaps")
    if state["segments"] and seg.start_s < state["segments"][-1][1]:
        raise SchemaError(f"event {seg.event_id!r}: segment {seg.segment_index} starts at {seg.start_s:g} s, before "
                          f"the segment before it ({state['segments'][-1][1]:g} s); an event's clock only goes "
                          "forward (start_s on one clock for the whole event)")
    if "end_s" in state and seg.start_s < state["end_s"] - OVERLAP_S:
        raise SchemaError(f"event {seg.event_id!r}: segment {seg.segment_index} starts at {seg.start_s:g} s, inside "
                          f"the media of the segment before it, which ends at {state['end_s']:g} s; start_s is "
                          "the time of a segment's first frame on the event's clock, and segments do not overlap")
    return True


def register(rt: Runtime) -> None:
    live_table = rt.table("segment-live")
    cutter = LiveCutter(rt.settings, rt.decoded)

    @rt.app.agent(rt.topics.titles, name=f"{__name__}.segment_titles")
    async def segment_titles(stream):
        async for event in rt.events(stream):  # a stop while cutting: the title is fetched again, not committed
            with rt.failure_stops():
                await segment_title(event)

    async def segment_title(event) -> None:
        metrics.messages.labels(STAGE).inc()
        try:
            req = decode(event.message.value, expect=TitleRequest)
            if not req.request_id:  # named by its record: a redelivery is the same request, a new publication not
                req = dataclasses.replace(req, request_id=f"p{event.message.partition}o{event.message.offset}")
            refs = await rt.patiently(f"cutting {req.title_id!r}", lambda: asyncio.to_thread(  # CPU: off the loop
                cut_title, req, rt.settings, rt.media_settings))
            out = [ref.to_bytes() for ref in refs]  # an oversize shot message is the title's fault too
        except BadInput as e:
            await rt.dead_letter(STAGE, event, str(e))
            return
        except Exception as e:  # a decoder/library failure on this input must not stop the worker
            log.exception("segmenting failed")
            await rt.dead_letter(STAGE, event, f"segmentation failed: {type(e).__name__}: {e}")
            return
        for raw in out:
            await rt.send(rt.topics.shots, req.title_id.encode(), raw)
        if refs:
            metrics.stage_seconds.labels(STAGE, "title").observe(max(0.0, time.time() - refs[0].published_at))
        metrics.shots.labels(STAGE).inc(len(refs))
        log.info("segmented %s: %d shots", req.title_id, len(refs))

    def probe_and_push(state: dict, seg: LiveSegment, path: str):
        probe(Path(path), rt.media_settings)  # its size and length limits, as a title's, before decoding it all
        return cutter.push(state, seg, path)

    async def skip_segment(event, seg: LiveSegment, state: dict, meta: TitleMeta, why: str) -> None:
        """A segment whose media cannot be used: dead-lettered with `why`, the event's record moved past it. A
        last segment still ends the event: the shot still open closes where the media before it ends, and the
        event's last ShotRefs carry n_shots, so every shot gets its final and the live stage lets go of them."""
        cutter.forget(seg.event_id)  # rebuilt from the record's segments when next needed
        if not seg.last:
            await rt.dead_letter(STAGE, event, f"event {seg.event_id!r} segment {seg.segment_index} skipped: {why}")
            state["next_segment"] += 1
            return
        await rt.dead_letter(STAGE, event, f"event {seg.event_id!r} segment {seg.segment_index} (its last) skipped: "
                                           f"{why}; the event ends with the media before it")
        try:
            shots = await asyncio.to_thread(cutter.close, state, seg)
        except Exception as e:  # the media before it is gone too: the open shot cannot be cut
            log.exception("live event %s: closing its open shot failed", seg.event_id)
            cutter.forget(seg.event_id)
            await rt.dead_letter(STAGE, event, f"event {seg.event_id!r}: its open shot could not be closed either "
                                               f"({type(e).__name__}: {e}); its last shots get no final embedding")
            shots = []
        for ref in cutter.refs(state, seg, shots, meta):
            await rt.send(rt.topics.shots, seg.event_id.encode(), ref.to_bytes())
        metrics.shots.labels(STAGE).inc(len(shots))
        advance(state, seg, shots)

    @rt.app.agent(rt.topics.live_segments, name=f"{__name__}.segment_live")
    async def segment_live(stream):
        async for event in rt.events(stream):
            with rt.failure_stops():
                await segment_segment(event)

    async def segment_segment(event) -> None:
        metrics.messages.labels(STAGE).inc()
        try:
            seg = decode(event.message.value, expect=LiveSegment)
            rt.live_fed[seg.event_id] = time.monotonic()  # the feed is alive, whatever is held up downstream
            key = seg.event_id.encode()
            state = msgpack.unpackb(live_table[key]) if key in live_table else new_state(seg)
            if not check_next(state, seg):
                metrics.duplicates.labels(STAGE).inc()  # redelivered after a restart
                return
            meta = TitleMeta.from_dict(state["meta"] or seg.meta, title_id=seg.event_id, kind="live")
        except SchemaError as e:
            await rt.dead_letter(STAGE, event, str(e))
            return
        try:
            path = str(check_uri(seg.uri, rt.media_settings, allow_relative=False))
            shots, n_frames, end_s = await rt.patiently(
                f"event {seg.event_id!r} segment {seg.segment_index}",
                lambda: asyncio.to_thread(probe_and_push, state, seg, path))
        except Exception as e:  # this segment is unusable: say so, and let the event go on without it
            if not isinstance(e, MediaError):
                log.exception("live segmentation failed")
            await skip_segment(event, seg, state, meta, f"{type(e).__name__}: {e}")
            live_table[key] = msgpack.packb(state)
            return
        pushed(state, path, seg.start_s, n_frames, end_s)
        try:
            held = state.setdefault("cues", [])
            held += segment_cues(seg, rt.media_settings, held)
        except Exception as e:  # the video goes on without this segment's text; the reason is kept
            if not isinstance(e, BadInput):
                log.exception("live timed text failed")
            await rt.dead_letter(STAGE, event, f"event {seg.event_id!r} segment {seg.segment_index}: "
                                               f"timed text skipped: {type(e).__name__}: {e}")
        for ref in cutter.refs(state, seg, shots, meta):
            await rt.send(rt.topics.shots, key, ref.to_bytes())
            metrics.stage_seconds.labels(STAGE, "live").observe(max(0.0, time.time() - seg.published_at))
        metrics.shots.labels(STAGE).inc(len(shots))
        advance(state, seg, shots)
        live_table[key] = msgpack.packb(state)
