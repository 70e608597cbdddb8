"""Shots -> modality embeddings on Triton -> EncodedShot messages; and `mediafm embed` for one title.

The one encode path, :func:`encode_aligned` (shots + their aligned timed text ->
per-shot vectors). `mediafm embed` reaches it through :func:`encode_shots`, which
aligns a title's subtitles first; the encode stage (streams/encode.py) calls it
directly, since its shots arrive with their text already aligned::

    shots = detect_shots(path)                                  # or ShotDetector on live segments
    cues = load_subtitles(srt)                                  # or container_subtitles(path), or None: the container's
    msgs = await encode_shots(client, path, shots, cues, TitleMeta("tt01", synopsis=...), "offline")
    msgs = encode_shots_sync(settings.triton_http_url, path, shots, cues, meta, "offline")
    vecs = await encode_aligned(client, path, shots, texts, "offline", settings=settings)

`media` is one file or a list of consecutive segment files (their times continue one
after the other, as in ShotDetector.push_segment). Decoding streams: per shot,
`frames_per_shot` frames at uniform times inside it (scaled to the encoder's size
on decode) and the central `audio_window_s` seconds of audio, then the shot is
sent; memory is bounded by one batch of shots, whatever the file's length. Live
segments the shot detector has just decoded are read from memory instead
(`decoded=`, mediafm/media/segment_cache.py: the same pixels at the same times).

Missing modalities are None in the message (zeros in the fused vector, as the
source): a file without audio stream -> audio None; a shot without timed text
-> text None. The title embedding (metadata text, same text encoder) rides on
every message.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mediafm.config import Settings
from mediafm.errors import EncoderError, MediaError
from mediafm.fusion import MODALITIES, Layout, fuse
from mediafm.media.decode import VideoEnd, has_audio, iter_audio, iter_video_frames, resample_span, to_array
from mediafm.media.segment_cache import DecodedSegment, DecodedSegments
from mediafm.media.shots import Shot
from mediafm.media.subtitles import Cue, align, container_subtitles
from mediafm.profiles import EncoderProfile, get_profile
from mediafm.schema import EncodedShot, TitleMeta, vec_to_bytes
from mediafm.triton_client import TritonClient


@dataclass
class ShotMedia:
    shot: Shot
    frames: np.ndarray  # (F, S, S, 3) uint8
    audio: np.ndarray | None  # (n,) float32 at the profile's rate; None = no audio stream


def _segments(media) -> list[Path]:
    return [Path(m) for m in media] if isinstance(media, (list, tuple)) else [Path(media)]


def _video(paths: list[Path], seek_s: float | None = None,
           held: dict[Path, DecodedSegment | None] | None = None,
           end: VideoEnd | None = None) -> Iterator[tuple[float, object, int]]:
    """(time, frame, rotation) of the files laid end to end; a file `held` decoded is replayed from memory
    (its frames already pixels at the encoders' size), the others are decoded (av frames). `end` is told where
    the last file's video ends when it is decoded (its last frame's own duration, as the shot detector has it)."""
    offset, idx, last, dt = None, 0, None, 0.04
    for k, p in enumerate(paths):
        seg = (held or {}).get(p)
        frames = seg.replay(start_index=idx, time_offset=offset) if seg is not None else \
            iter_video_frames(p, start_index=idx, time_offset=offset, seek_s=seek_s if len(paths) == 1 else None,
                              end=end if k == len(paths) - 1 else None)
        for i, t, frame, rot in frames:
            if last is not None and t > last:
                dt = t - last
            last, idx = t, i + 1
            yield t, frame, rot
        offset = (last + dt) if last is not None else None


def _audio(paths: list[Path], seek_s: float | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first sample's index, rate, samples) of the files laid end to end, all at the first file's rate."""
    offset, first_rate = None, None
    for p in paths:
        for i, rate, x in iter_audio(p, rate=first_rate, time_offset=offset, seek_s=seek_s if len(paths) == 1 else None):
            first_rate, offset = rate, (i + len(x)) / rate
            yield i, rate, x


class _AudioCursor:
    """The samples of each shot's audio window, the same whichever shots were decoded with it.

    Two things would make them depend on where decoding started, and both are removed here:
    - resampling: FFmpeg's streaming resampler's output depends on where it began; samples are kept at the
      file's rate and each window is resampled on its own (decode.resample_span), on a grid of times that is
      the same for every pass;
    - the codec: an AAC decoder started elsewhere gave other samples, up to 0.02 apart and to the end of a test
      film (likely its overlap, and the noise it substitutes for noisy bands, drawn from a running generator).
      A window starting in period
      `[n * PERIOD_S, (n + 1) * PERIOD_S)` is always decoded from where the container seeks for `n * PERIOD_S - 1 s`
      (decode._decode: at or before it; from the file's start for n = 0): the encode stage, which decodes a title
      in batches of shots, and `mediafm embed`, which decodes it whole, give a shot the same samples. A pass
      restarts once per period. What it cost, one-off scripts, 2-s windows, old pass against this one: a
      20-minute film of 400 shots at 160x90 took x0.9 of the time at 16 kHz and x0.8-0.9 at the file's own
      44.1 kHz (windows are resampled, not the whole stream); a 100-minute film of 3,008 shots at 96x54, 16 kHz,
      took x1.18 whole and x1.10 in batches of 64 shots (beside other work). At full resolution, where video
      decoding dominates, not measured.

    Segments laid end to end (live) are decoded once, from their start.
    """

    PERIOD_S = 30.0
    MARGIN_S = 0.05  # kept before a window, for the resampling filter's reach (< 1 ms at common rates)

    def __init__(self, paths: list[Path], rate: int) -> None:
        self.paths, self.rate = paths, rate
        self.period: int | None = None  # where the pass now open started
        self.chunks: Iterator[tuple[int, int, np.ndarray]] = iter(())
        self.buf: list[tuple[int, np.ndarray]] = []  # (first sample's index, samples) at rate_in
        self.rate_in = rate
        self.done = False

    def _restart(self, period: int) -> None:
        seek = period * self.PERIOD_S - 1.0 if period > 0 else None
        self.period, self.chunks, self.buf, self.done = period, _audio(self.paths, seek), [], False

    def take(self, a: float, b: float) -> np.ndarray:
        """Samples k / rate in [a, b)."""
        period = int(max(a, 0.0) // self.PERIOD_S) if len(self.paths) == 1 else 0
        if period != self.period:
            self._restart(period)
        k0 = math.ceil(a * self.rate)
        k1 = k0 + round((b - a) * self.rate)  # a window of w seconds is w * rate samples, wherever it starts
        while not self.done and (not self.buf or (self.buf[-1][0] + len(self.buf[-1][1])) / self.rate_in
                                 < b + self.MARGIN_S):
            nxt = next(self.chunks, None)
            if nxt is None:
                self.done = True
            else:
                i, self.rate_in, x = nxt
                self.buf.append((i, x))
        keep = (a - self.MARGIN_S) * self.rate_in
        self.buf = [(i, x) for i, x in self.buf if i + len(x) > keep]
        if not self.buf:
            return np.zeros(0, np.float32)
        first = self.buf[0][0]
        return resample_span(np.concatenate([x for _, x in self.buf]), first, self.rate_in, self.rate, k0, k1)


def iter_shot_media(media, shots: Sequence[Shot], *, frames_per_shot: int, frame_size: int,
                    audio_rate: int, audio_window_s: float,
                    decoded: DecodedSegments | None = None, live: bool = False) -> Iterator[ShotMedia]:
    """Per shot, in order: sampled frames and the central audio window, decoded in one streaming pass.

    A run of shots from the middle of one file (the agents encode a title in batches) starts
    decoding video at the keyframe before its first shot, not at the file's start; audio is
    decoded so that a shot gets the same samples in any run (_AudioCursor). Live segments the
    segment stage decoded moments ago are read from `decoded` instead (mediafm.media.segment_cache:
    the same pixels at the same times).

    live: shot times are on the live detector's clock, which puts the first video frame of the first segment at
    0 (shots.ShotDetector.push_segment with the segment's start_s), where the container's clock puts it at its
    lead over the audio (tens of ms with B-frames and AAC). Before 2026-12-08 a live shot's frames and audio were
    taken on the container's clock: that lead early, a frame or two (a shot of one or two frames got the pixels of
    the shot before it). Now the times are moved by the lead, the audio's with them.
    """
    paths = _segments(media)
    seek = max(0.0, shots[0].start_s - 1.0) if shots and not live else None  # a segment is decoded from its start
    held = {p: decoded.get(str(p), frame_size) if decoded is not None else None for p in paths}
    ends = VideoEnd()
    video = _video(paths, seek, held, ends)
    lead = 0.0  # live: the first video frame's time on the container's clock, which the detector's clock calls 0
    if live:
        first = next(video, None)
        if first is not None:
            lead = first[0]
            video = ((t - lead, f, r) for t, f, r in itertools.chain([first], video))
    has_audio = any(held[p].has_audio if held[p] is not None else _has_audio(p) for p in paths)
    audio = _AudioCursor(paths, audio_rate) if has_audio else None
    prev = nxt = None  # (time, av frame, rot)
    video_end, dt = None, 0.04  # where the video ends (the last frame plus a frame), once it has ended
    for shot in shots:
        dur = max(shot.end_s - shot.start_s, 1e-6)
        want = [shot.start_s + (j + 0.5) * dur / frames_per_shot for j in range(frames_per_shot)]
        frames = []
        for s in want:
            while video_end is None and (nxt is None or nxt[0] < s):  # advance until the frame after s
                got = next(video, None)
                if got is None:  # the last frame's own duration where the file gives it (a held end card, VFR)
                    video_end = (ends.end_s - lead if ends.end_s is not None else nxt[0] + dt if nxt is not None
                                 else None)
                    break
                if nxt is not None and got[0] > nxt[0]:
                    dt = got[0] - nxt[0]
                prev, nxt = nxt, got
            if nxt is None:
                raise MediaError(f"{paths[0]}: no video frames for shot {shot.index}; the media ended early")
            # the frame on screen at s: the last one shown at or before it (the nearest one, as before 2026-12-07,
            # gave a shot under 8 frames the first frames of the next shot: half of a 1-frame shot's samples)
            best = nxt if nxt[0] <= s or prev is None else prev
            frames.append(best[1] if isinstance(best[1], np.ndarray)  # replayed: pixels at frame_size already
                          else to_array(best[1], (frame_size, frame_size), best[2]))
        if video_end is not None and (shot.start_s >= video_end or
                                      len(paths) == 1 and shot.end_s > video_end + PAST_END_S):
            raise MediaError(f"{paths[-1]}: shot {shot.index} spans {shot.start_s:.3f}-{shot.end_s:.3f} s, but the "
                             f"video ends at {video_end:.3f} s; the shot's times (or its media_start_s) do not "
                             "match this media: send the shots this media was cut into")
        x = None
        if audio is not None:
            # at least twice MIN_AUDIO_S, centred: a shot of a few frames has the sound around it, where before
            # (under MIN_AUDIO_S of window) it counted as having no audio
            w = min(max(dur, 2 * MIN_AUDIO_S), audio_window_s)
            mid = (shot.start_s + shot.end_s) / 2
            x = audio.take(mid - w / 2 + lead, mid + w / 2 + lead)
        yield ShotMedia(shot, np.stack(frames), x)


PAST_END_S = 1.0
"""iter_shot_media: a shot may end this much past its media's video (another tool's idea of a last frame's
duration), not more: a shot that lies beyond the video, wholly or for more than this, is refused (MediaError)
rather than given the last frame's pixels for frames that do not exist. Segments laid end to end (live) are
refused only wholly beyond: the gaps under a second the detector lets through (shots.GAP_S) would add up."""


def _has_audio(path: Path) -> bool:
    try:
        return has_audio(path)
    except MediaError:  # unreadable here: the video pass says why
        return False


MIN_AUDIO_S = 0.1
"""A shot with less audio than this (the stream ended) counts as having no audio."""


async def _encode_text(client: TritonClient, profile: EncoderProfile, texts: list[str], settings: Settings) -> np.ndarray:
    if not texts:
        return np.zeros((0, profile.layout.text), np.float32)
    if profile.text_model == "openai":
        enc = _openai(settings)
        return await asyncio.to_thread(enc.encode, texts)
    arr = np.array([t.encode("utf-8") for t in texts], dtype=object).reshape(-1, 1)
    return (await client.infer(profile.text_model, {"TEXT": arr}, ["EMBEDDING"]))["EMBEDDING"]


_OPENAI = {}


def _openai(settings: Settings):
    from mediafm.media.encoders import OpenAIText

    key = (settings.openai_base_url, settings.openai_api_key_env, settings.openai_model)
    if key not in _OPENAI:
        _OPENAI[key] = OpenAIText(model=settings.openai_model, dimensions=768,
                                  base_url=settings.openai_base_url or None, api_key_env=settings.openai_api_key_env)
    return _OPENAI[key]


async def encode_title(client: TritonClient, meta: TitleMeta, layout: str | Layout | EncoderProfile = "offline", *,
                       settings: Settings | None = None) -> np.ndarray:
    """The title embedding: the metadata text through the profile's text encoder, (title_dim,)."""
    profile = get_profile(layout)
    return (await _encode_text(client, profile, [meta.text()], settings or Settings.load()))[0]


@dataclass
class ShotVectors:
    """One shot's modality embeddings; None where the shot has no such modality."""

    video: np.ndarray
    audio: np.ndarray | None
    text: np.ndarray | None


@contextmanager
def _timed(timings: dict | None, stage: str):
    """Adds the block's wall seconds to timings[stage] (bench/media.py); nothing when timings is None."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


async def encode_aligned(client: TritonClient, media, shots: Sequence[Shot], texts: Sequence[str],
                         profile: str | Layout | EncoderProfile, *, settings: Settings,
                         batch_shots: int = 16, timings: dict | None = None,
                         decoded: DecodedSegments | None = None, live: bool = False,
                         progress=None) -> list[ShotVectors]:
    """The encoders on Triton over shots whose timed text is already aligned (texts[i]: shot i's, "" = none).

    Shot times are in `media`'s own time. One ShotVectors per shot, in order. decoded: segments held
    decoded (live, mediafm.media.segment_cache), read from memory instead of their files. live: the shots are on
    the live detector's clock (iter_shot_media).
    timings: if given, wall seconds are added under "sample" (decoding, frame sampling, audio) and
    "encode" (waiting for the encoders on Triton). progress: a tqdm bar over the shots, moved by each batch.
    Raises MediaError subclasses for unusable media, BadRequest / TritonUnavailable from Triton.
    """
    profile = get_profile(profile)
    it = iter_shot_media(media, shots, frames_per_shot=settings.frames_per_shot, frame_size=profile.frame_size,
                         audio_rate=profile.audio_rate, audio_window_s=settings.audio_window_s, decoded=decoded,
                         live=live)
    out: list[ShotVectors] = []
    while True:
        batch: list[ShotMedia] = []
        while len(batch) < batch_shots:
            with _timed(timings, "sample"):
                sm = await asyncio.to_thread(next, it, None)  # decoding is CPU work: off the event loop
            if sm is None:
                break
            batch.append(sm)
        if not batch:
            break
        with _timed(timings, "encode"):
            out += await _encode_batch(client, profile, batch, texts[len(out): len(out) + len(batch)], settings)
        if progress is not None:
            progress.update(len(batch))
    lay = profile.layout
    for v in out:
        for name in MODALITIES:
            x = getattr(v, name)
            if x is not None and x.shape != (lay.dims[name],):
                raise EncoderError(f"{name} encoder returned shape {x.shape}, profile {lay.name!r} declares "
                                   f"{lay.dims[name]} dims")
    return out


async def encode_shots(client: TritonClient, media, shots: Sequence[Shot], subtitles: list[Cue] | None,
                       meta: TitleMeta, layout: str | Layout | EncoderProfile = "offline", *,
                       settings: Settings | None = None, batch_shots: int = 16,
                       n_shots: int | None = -1, title_embedding: np.ndarray | None = None,
                       timings: dict | None = None, progress=None) -> list[EncodedShot]:
    """Encode a title's shots on Triton; one EncodedShot per shot, in order.

    subtitles: cues to align to the shots; None = read the container's text subtitle streams.
    n_shots: total shots of the title (-1 = len(shots), None for a live event still running).
    title_embedding: the title's embedding if already made (else made here from meta).
    timings: if given, wall seconds per stage are added to it ("title", and encode_aligned's).
    progress: a tqdm bar over the shots (encode_aligned).
    Raises MediaError subclasses for unusable media, BadRequest / TritonUnavailable from Triton.
    """
    settings = settings or Settings.load()
    profile = get_profile(layout)
    if subtitles is None:
        subtitles = container_subtitles(_segments(media)[0], settings.subtitle_languages) \
            if len(_segments(media)) == 1 else []
    texts = align(subtitles, shots)
    if title_embedding is None:  # callers encoding a title in batches pass the one they made first
        with _timed(timings, "title"):
            title_embedding = await encode_title(client, meta, profile, settings=settings)
    title_vec = vec_to_bytes(title_embedding)
    total = len(shots) if n_shots == -1 else n_shots
    vecs = await encode_aligned(client, media, shots, texts, profile, settings=settings, batch_shots=batch_shots,
                                timings=timings, progress=progress)
    return [encoded_shot(v, title_id=meta.title_id, shot_index=s.index, start_s=float(s.start_s),
                         end_s=float(s.end_s), profile=profile.name, n_shots=total, kind=meta.kind,
                         title_embedding=title_vec)
            for s, v in zip(shots, vecs, strict=True)]


def encoded_shot(v: ShotVectors, **identity) -> EncodedShot:
    """The EncodedShot message of one shot's vectors; `identity`: its other fields (title_id, shot_index, ...)."""
    return EncodedShot(video=vec_to_bytes(v.video), audio=None if v.audio is None else vec_to_bytes(v.audio),
                       text=None if v.text is None else vec_to_bytes(v.text), **identity)


async def _encode_batch(client, profile, batch, texts, settings) -> list[ShotVectors]:
    frames = np.stack([b.frames for b in batch])
    with_audio = [i for i, b in enumerate(batch) if b.audio is not None and len(b.audio) >= MIN_AUDIO_S * profile.audio_rate]
    with_text = [i for i, t in enumerate(texts) if t.strip()]
    jobs = [client.infer(profile.video_model, {"FRAMES": frames}, ["EMBEDDING"])]
    if with_audio:
        longest = max(len(batch[i].audio) for i in with_audio)
        audio = np.zeros((len(with_audio), longest), np.float32)
        for k, i in enumerate(with_audio):
            audio[k, : len(batch[i].audio)] = batch[i].audio
        lengths = np.array([[len(batch[i].audio)] for i in with_audio], np.int64)
        jobs.append(client.infer(profile.audio_model, {"AUDIO": audio, "LENGTH": lengths}, ["EMBEDDING"]))
    res = await asyncio.gather(*jobs, _encode_text(client, profile, [texts[i] for i in with_text], settings))
    video = res[0]["EMBEDDING"]
    audio_e = dict(zip(with_audio, res[1]["EMBEDDING"], strict=True)) if with_audio else {}
    text_e = dict(zip(with_text, res[-1], strict=True))
    return [ShotVectors(video[i], audio_e.get(i), text_e.get(i)) for i in range(len(batch))]


def wait_for_encoders(triton_url: str, profile: str | Layout | EncoderProfile, *, give_up_after_s: float) -> None:
    """Blocks until Triton at `triton_url` serves the profile's encoders (their configurations answer),
    waiting out a server still starting; TritonUnavailable after `give_up_after_s`. For tools that decode a
    whole film before their first request: a server that is down is found before the minutes of decoding."""
    profile = get_profile(profile)
    models = [profile.video_model, profile.audio_model] + ([] if profile.text_model == "openai" else
                                                             [profile.text_model])

    async def run():
        client = TritonClient(triton_url, give_up_after_s=give_up_after_s)
        try:
            for model in models:
                await client.model_config(model)
        finally:
            await client.close()

    asyncio.run(run())


def encode_shots_sync(triton_url: str, media, shots, subtitles, meta, layout="offline", **kw) -> list[EncodedShot]:
    """Blocking wrapper of :func:`encode_shots` (own event loop and client; gives up after 120 s unreachable)."""
    async def run():
        client = TritonClient(triton_url, give_up_after_s=kw.pop("give_up_after_s", 120.0))
        try:
            return await encode_shots(client, media, shots, subtitles, meta, layout, **kw)
        finally:
            await client.close()

    return asyncio.run(run())


def fuse_encoded(msgs: list[EncodedShot], layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(fused (N, fused_dim), present (N, 3)) with mediafm.fusion.fuse: absent slices are zeros."""
    n = len(msgs)
    parts = {m: np.zeros((n, getattr(layout, m)), np.float32) for m in MODALITIES}
    present = np.zeros((n, 3), bool)
    for i, msg in enumerate(msgs):
        for j, m in enumerate(MODALITIES):
            b = getattr(msg, m)
            if b is not None:
                parts[m][i] = np.frombuffer(b, "<f4")
                present[i, j] = True
    return fuse(parts["video"], parts["audio"], parts["text"], present, layout=layout), present


def embed_title(media: str | Path, *, out: str | Path, settings: Settings, subtitles: str | Path | None = None,
                subtitle_encoding: str | None = None, meta: str | Path | None = None,
                detector: str | None = None, progress: bool = False, timings: dict | None = None,
                triton_wait_s: float = 120.0) -> dict:
    """`mediafm embed`: one title -> a v1 dataset (shots, fused vectors, title embedding) via Triton.

    Triton is asked for the profile's encoders first, waiting up to `triton_wait_s` for a server still
    starting (TritonUnavailable after that), then the film is decoded and cut, then encoded.
    timings: if given, wall seconds per stage are added to it: "open" (checks, probe, subtitles), "shots"
    (decode + shot detection), "sample", "encode", "title" (see encode_shots), "fusion", "write".
    progress: two bars on stderr, the film's seconds cut into shots, then the shots encoded.
    """
    from tqdm import tqdm

    from mediafm.dataset import DatasetWriter, Meta
    from mediafm.media.decode import check_uri, probe
    from mediafm.media.shots import cut_progress, detect_shots
    from mediafm.media.subtitles import load_subtitles

    with _timed(timings, "open"):
        path = check_uri(media, settings)
        info = probe(path, settings)
        profile = get_profile(settings.encoder_profile)
        tmeta = TitleMeta.load(meta, default_id=path.stem)
        # a subtitle file given is the text: the container's own streams are read only without one
        cues = load_subtitles(Path(subtitles).resolve(), encoding=subtitle_encoding) if subtitles else \
            container_subtitles(path, settings.subtitle_languages)
        wait_for_encoders(settings.triton_http_url, profile, give_up_after_s=triton_wait_s)
    detector = detector or settings.shot_detector
    with _timed(timings, "shots"), cut_progress(info.duration_s, detector, disable=not progress) as bar:
        shots = detect_shots(path, detector=detector, max_duration_s=settings.max_media_duration_s,
                             progress=bar if progress else None)
    with tqdm(total=len(shots), unit="shot", disable=not progress, mininterval=1,
              desc=f"encoding on Triton ({profile.name} profile)") as bar:
        msgs = encode_shots_sync(settings.triton_http_url, path, shots, cues, tmeta, profile, settings=settings,
                                 timings=timings, give_up_after_s=triton_wait_s,
                                 progress=bar if progress else None)
    with _timed(timings, "fusion"):
        fused, present = fuse_encoded(msgs, profile.layout)
    with _timed(timings, "write"):
        w = DatasetWriter(out, Meta.from_layout(profile.layout, profile.encoders))
        w.add_title(title_id=tmeta.title_id, title_embedding=np.frombuffer(msgs[0].title_embedding, "<f4"),
                    fused=fused, start_s=np.array([m.start_s for m in msgs]), end_s=np.array([m.end_s for m in msgs]),
                    kind=tmeta.kind, split=tmeta.split, genres=tmeta.genres)
        root = w.close()
    return {"out": str(root), "title_id": tmeta.title_id, "shots": len(msgs), "profile": profile.layout.name,
            "present": {m: int(present[:, j].sum()) for j, m in enumerate(MODALITIES)}}
