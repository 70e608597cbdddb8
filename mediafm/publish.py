"""The pipeline's edges, for ingestion systems and people: publish, follow, sink, backfill.

    mediafm publish title FILE ──► titles           (a TitleRequest; media copied under <state_dir>/media)
    mediafm publish live FILE ───► live.segments    (FILE cut into segments, published in order)
    mediafm follow ◄────────────── embeddings       (prints contextual embeddings as they arrive)
    mediafm sink --out DIR ◄────── shots.fused + embeddings  (v1 dataset + contextual.parquet)
    mediafm backfill TITLE... ───► titles           (the title's last request again, new request id)

Workers read media only from allowed roots (Settings.worker_media_roots);
publishing a file from elsewhere links or copies it into <state_dir>/media,
the stand-in for the object store an ingestion system uploads to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mediafm.bus import Tail, producer
from mediafm.config import Settings
from mediafm.errors import MediaError, SchemaError
from mediafm.schema import ContextualEmbedding, FusedShot, LiveSegment, TitleRequest, bytes_to_vec, decode
from mediafm.topics import Topics


def stage_media(settings: Settings, path: str | Path, name: str) -> Path:
    """The file as workers may read it: itself if under an allowed root, else linked/copied into <state_dir>/media."""
    src = Path(path).expanduser()
    if not src.is_file():
        raise MediaError(f"{src}: no such file; pass the media file to publish")
    from mediafm.media.decode import under_roots

    roots = settings.worker_media_roots
    if under_roots(src, roots):
        return src.resolve()
    dest_dir = Path(roots[0]) / name
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    if not dest.exists():
        try:
            os.link(src, dest)  # same filesystem: free
        except OSError:
            shutil.copy2(src, dest)
    return dest.resolve()


def _load_meta(meta: str | Path | dict | None) -> dict:
    from mediafm.media.embed import TitleMeta

    if meta is None or isinstance(meta, dict):
        return dict(meta or {})
    return TitleMeta.read(meta)


def publish_title(settings: Settings, file: str | Path, *, title_id: str | None = None,
                  meta: str | Path | dict | None = None, subtitles: str | Path | None = None,
                  subtitle_encoding: str | None = None) -> TitleRequest:
    m = _load_meta(meta)
    tid = title_id or m.pop("title_id", None) or Path(file).stem
    m.pop("title_id", None)
    req = TitleRequest(title_id=tid, uri=str(stage_media(settings, file, tid)), request_id=uuid.uuid4().hex[:12],
                       subtitles_uri=str(stage_media(settings, subtitles, tid)) if subtitles else None,
                       subtitle_encoding=subtitle_encoding, meta=m)
    p = producer(settings)
    try:
        p.send(Topics.from_settings(settings).titles, key=tid.encode(), value=req.to_bytes()).get(timeout=30)
    finally:
        p.close()
    return req


def _first_frame_time(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            return float(frame.time or 0.0)
    raise MediaError(f"{path}: a segment without a video frame; use a longer --segment-s")


def cut_segments(file: str | Path, out_dir: Path, segment_s: float) -> list[tuple[Path, float]]:
    """FILE -> MPEG-TS segments of about segment_s seconds (keyframes forced at the cuts); [(path, start_s)].

    Timestamps stay continuous across segments, so each segment's start is its first frame's time
    (the segmenter's own list reports packet times, a few frames off with B-frames)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("seg*.ts"):
        old.unlink()
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(file), "-map", "0:v:0", "-map", "0:a?",
           "-c:v", "libx264", "-preset", "veryfast", "-force_key_frames", f"expr:gte(t,n_forced*{segment_s})",
           "-c:a", "aac", "-f", "segment", "-segment_time", str(segment_s), str(out_dir / "seg%05d.ts")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise MediaError(f"{file}: ffmpeg could not cut it into segments: {r.stderr.strip()[-300:]}")
    paths = sorted(out_dir.glob("seg*.ts"))
    if not paths:
        raise MediaError(f"{file}: ffmpeg wrote no segments")
    times = [_first_frame_time(p) for p in paths]
    return [(p, round(t - times[0], 6)) for p, t in zip(paths, times, strict=True)]


def publish_live(settings: Settings, file: str | Path, *, event_id: str, segment_s: float = 2.0,
                 realtime: bool = False, meta: str | Path | dict | None = None,
                 on_segment: Callable[[LiveSegment], None] | None = None) -> list[LiveSegment]:
    """Simulate a live event from FILE: cut it into segments and publish them in order
    (paced at real time with realtime=True, else as fast as the broker takes them)."""
    seg_dir = Path(settings.worker_media_roots[0]) / "live" / event_id
    segments = cut_segments(file, seg_dir, segment_s)
    topic = Topics.from_settings(settings).live_segments
    m = _load_meta(meta)
    p = producer(settings)
    sent = []
    t0 = time.monotonic()
    try:
        for k, (path, start) in enumerate(segments):
            if realtime:  # a segment exists once its last frame has happened
                end = segments[k + 1][1] if k + 1 < len(segments) else start + segment_s
                time.sleep(max(0.0, end - (time.monotonic() - t0)))
            seg = LiveSegment(event_id=event_id, segment_index=k, uri=str(path.resolve()), start_s=start,
                              last=k == len(segments) - 1, meta=m if k == 0 else {})
            p.send(topic, key=event_id.encode(), value=seg.to_bytes()).get(timeout=30)
            sent.append(seg)
            if on_segment:
                on_segment(seg)
    finally:
        p.close()
    return sent


def follow(settings: Settings, *, from_beginning: bool = False, title_id: str | None = None,
           timeout_s: float | None = None, out=sys.stdout) -> int:
    """Print contextual embeddings as they arrive; returns how many were printed."""
    tail = Tail(settings, Topics.from_settings(settings).embeddings, from_beginning=from_beginning)
    n = 0
    try:
        for rec in tail.poll(timeout_s=timeout_s):
            try:
                e = decode(rec.value, expect=ContextualEmbedding)
            except SchemaError as err:
                print(f"(unreadable message at {rec.topic}[{rec.partition}]@{rec.offset}: {err})", file=out)
                continue
            if title_id and e.title_id != title_id:
                continue
            v = e.vector()
            lag = e.produced_at - e.published_at if e.published_at else float("nan")
            print(f"{e.kind:5s} {e.title_id} shot {e.shot_index:4d} [{e.start_s:8.2f}, {e.end_s:8.2f}) "
                  f"{'final      ' if e.final else 'provisional'} {e.model}:{e.model_version} "
                  f"window [{e.window_start}, {e.window_end}) dim {e.dim} |v| {np.linalg.norm(v):.3f} "
                  f"{lag:6.2f}s after publish", file=out, flush=True)
            n += 1
    finally:
        tail.close()
    return n


def _drain(settings: Settings, topic: str, idle_s: float, timeout_s: float):
    """Every record of `topic` from the beginning, until nothing new for idle_s (or timeout_s)."""
    tail = Tail(settings, topic, from_beginning=True)
    last = time.monotonic()
    deadline = last + timeout_s
    try:
        while time.monotonic() - last < idle_s and time.monotonic() < deadline:
            for rec in tail.poll(timeout_s=0.5):
                last = time.monotonic()
                yield rec
    finally:
        tail.close()


def sink(settings: Settings, out: str | Path, *, idle_s: float = 5.0, timeout_s: float = 600.0) -> dict:
    """Write what the pipeline produced as a v1 dataset: every complete title's fused shots
    (shots.fused; the trainer's and the evaluation's input) and, in contextual.parquet, the final
    contextual embeddings (one per title, shot and model version)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mediafm.dataset import DatasetWriter, Meta
    from mediafm.fusion import get_layout

    names = Topics.from_settings(settings)
    titles: dict[tuple[str, str], dict[int, FusedShot]] = {}
    for rec in _drain(settings, names.fused, idle_s, timeout_s):
        try:
            s = decode(rec.value, expect=FusedShot)
        except SchemaError:
            continue  # the workers dead-letter it; nothing to sink
        titles.setdefault((s.title_id, s.request_id), {})[s.shot_index] = s
    latest: dict[str, dict[int, FusedShot]] = {}
    skipped = []
    for (tid, _), shots in titles.items():
        n = next((s.n_shots for s in shots.values() if s.n_shots is not None), None)
        if n is None or len(shots) != n:
            skipped.append(tid)
        else:
            latest[tid] = shots  # a later request of the same title replaces an earlier one
    if not latest:
        raise MediaError(f"no complete title on {names.fused}; publish titles and run a worker first")
    layouts = {s.profile for shots in latest.values() for s in shots.values()}
    if len(layouts) != 1:
        raise MediaError(f"titles of several encoder profiles {sorted(layouts)}; one dataset has one layout")
    layout = get_layout(layouts.pop())
    from mediafm.media.embed import get_profile

    writer = DatasetWriter(out, Meta.from_layout(layout, get_profile(layout.name).encoders))
    for tid in sorted(latest):
        shots = [latest[tid][i] for i in range(len(latest[tid]))]
        te = next((s.title_embedding for s in shots if s.title_embedding), None)
        writer.add_title(title_id=tid, kind=shots[0].kind,
                         title_embedding=bytes_to_vec(te, layout.title) if te else np.zeros(layout.title, np.float32),
                         fused=np.stack([bytes_to_vec(s.fused, layout.fused_dim) for s in shots]),
                         start_s=np.array([s.start_s for s in shots]), end_s=np.array([s.end_s for s in shots]))
    root = writer.close()
    finals: dict[tuple[str, int, str], ContextualEmbedding] = {}
    for rec in _drain(settings, names.embeddings, idle_s, timeout_s):
        try:
            e = decode(rec.value, expect=ContextualEmbedding)
        except SchemaError:
            continue
        if e.final and e.title_id in latest:
            finals[(e.title_id, e.shot_index, e.model_version)] = e
    rows = sorted(finals.values(), key=lambda e: (e.title_id, e.model_version, e.shot_index))
    pq.write_table(pa.table({
        "title_id": pa.array([e.title_id for e in rows], pa.string()),
        "shot_index": pa.array([e.shot_index for e in rows], pa.int32()),
        "model_version": pa.array([e.model_version for e in rows], pa.string()),
        "embedding": pa.array([e.vector() for e in rows],
                              pa.list_(pa.float32(), rows[0].dim if rows else 0)),
    }), Path(root) / "contextual.parquet")
    return {"out": str(root), "titles": len(latest), "shots": sum(len(v) for v in latest.values()),
            "contextual": len(rows), "incomplete": sorted(set(skipped) - set(latest))}


def backfill(settings: Settings, title_ids: list[str], *, idle_s: float = 3.0) -> list[TitleRequest]:
    """Publish each title's last request again with a new request id: re-embedded with the model served now."""
    last: dict[str, TitleRequest] = {}
    for rec in _drain(settings, Topics.from_settings(settings).titles, idle_s, 300.0):
        try:
            r = decode(rec.value, expect=TitleRequest)
        except SchemaError:
            continue
        last[r.title_id] = r
    missing = [t for t in title_ids if t not in last]
    if missing:
        raise MediaError(f"no earlier request for {missing} on the titles topic; publish them with "
                         "`mediafm publish title` instead")
    p = producer(settings)
    sent = []
    try:
        for tid in title_ids:
            old = last[tid]
            req = TitleRequest(title_id=tid, uri=old.uri, request_id=uuid.uuid4().hex[:12],
                               subtitles_uri=old.subtitles_uri, subtitle_encoding=old.subtitle_encoding,
                               meta=old.meta)
            p.send(Topics.from_settings(settings).titles, key=tid.encode(), value=req.to_bytes()).get(timeout=30)
            sent.append(req)
    finally:
        p.close()
    return sent
