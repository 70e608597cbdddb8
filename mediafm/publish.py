"""The pipeline's edges, for ingestion systems and people: publish, follow, sink, backfill.

    mediafm publish title FILE ──► titles           (a TitleRequest; media copied under <state_dir>/media)
    mediafm publish live FILE ───► live.segments    (FILE cut into segments, published in order)
    mediafm follow ◄────────────── embeddings       (prints contextual embeddings as they arrive)
    mediafm sink --out DIR ◄────── shots.fused + embeddings  (v1 dataset + contextual.parquet)
    mediafm backfill TITLE... ───► titles           (the title's last request again, new request id)
    mediafm publish dataset DIR ─► shots.fused      (a v1 dataset's fused shots, a new request per title)

Workers read media only from allowed roots (Settings.worker_media_roots);
publishing a file from elsewhere links or copies it into <state_dir>/media,
the stand-in for the object store an ingestion system uploads to.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from array import array
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import numpy as np

from mediafm.bus import Tail, consumer, producer, send_and_wait
from mediafm.config import Settings
from mediafm.errors import ConfigError, DatasetError, MediaError, SchemaError, StackError
from mediafm.fusion import MODALITIES, Layout
from mediafm.schema import (
    ContextualEmbedding,
    FusedShot,
    FusedShots,
    LiveSegment,
    ShotsRefused,
    TitleMeta,
    TitleRequest,
    bytes_to_vec,
    check_id,
    decode,
    load_meta,
    not_a_file,
    record_shots,
    shot_records,
    vec_to_bytes,
)
from mediafm.topics import Topics


def check_file(path: str | Path, what: str = "media file") -> Path:
    """`path` if it is a regular file (or a link to one); else MediaError saying what it is instead
    (missing, a directory, a device, a FIFO) and that a `what` is wanted."""
    p = Path(path).expanduser()
    problem = not_a_file(p)
    if problem is None:
        return p
    if problem.startswith("no such file"):
        raise MediaError(f"{p}: {problem}; pass the {what} to publish")
    raise MediaError(f"{p}: {problem}; pass a {what}")


def id_dir(root: str | Path, name: str) -> Path:
    """<root>/<name> with the id as one directory name, whatever it holds: an id is any printable text (a '/', a
    '..'), and as a path `../../x` staged its media outside the root. A name quoted past 200 bytes (an id may
    have 512 characters, and a CJK one quotes to 9 bytes a character; a file system takes 255) keeps its first
    160 and a hash of the whole."""
    part = quote(name, safe=" -_.,+=@()[]")
    if len(part) > 200:
        cut = part[:160]
        if (k := cut.rfind("%", 158)) >= 0:  # not half a %XX escape
            cut = cut[:k]
        part = cut + "~" + hashlib.sha1(name.encode()).hexdigest()[:16]
    return Path(root) / (part.replace(".", "%2E") if part in (".", "..") else part)


def named(meta: dict, given: str | None, file: str | Path, kind: str) -> tuple[str, dict]:
    """The id a publication goes under (`given`: --id; else the metadata's title_id; else the file's name without
    its extension) and its metadata less title_id, both checked as a worker checks them (SchemaError naming what
    to fix), before any media is staged or cut: a worker dead-letters what it refuses, and the publisher said
    it was published."""
    said = meta.pop("title_id", None)
    name = given or said or Path(file).stem
    if not isinstance(name, str):
        raise SchemaError(f"the metadata's title_id is {said!r}, a JSON {type(said).__name__}; an id is a string")
    check_id(name, "title_id" if kind == "title" else "event id")
    TitleMeta.from_dict(meta, title_id=name, kind=kind)
    return name, meta


def stage_media(settings: Settings, path: str | Path, name: str, what: str = "media file") -> Path:
    """The file as workers may read it: itself if under an allowed root, else hard-linked (or copied) into the first
    root, at <root>/<name>/<version>/<file name>. The version tells apart the files published under one name (the
    file's device, inode, size and modification time): publishing another film.mp4 for a title stages it beside
    the first, where before the first one's media was embedded again, and publishing the same file again reuses
    its link."""
    src = check_file(path, what)
    from mediafm.media.decode import under_roots

    roots = settings.worker_media_roots
    if under_roots(src, roots):
        return src.resolve()
    st = src.stat()
    version = hashlib.sha1(f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dest_dir = id_dir(roots[0], name) / version
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    if not dest.exists():
        tmp = dest_dir / f".{src.name}.{os.getpid()}.tmp"
        try:
            os.link(src, tmp)  # same filesystem: free
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dest)  # a worker never sees a copy half made
    return dest.resolve()


def publish_title(settings: Settings, file: str | Path, *, title_id: str | None = None,
                  meta: str | Path | dict | None = None, subtitles: str | Path | None = None,
                  subtitle_encoding: str | None = None) -> TitleRequest:
    tid, m = named(load_meta(meta), title_id, file, "title")
    check_file(file)
    if subtitles:
        check_file(subtitles, "subtitle file")  # before anything is staged
    req = TitleRequest(title_id=tid, uri=str(stage_media(settings, file, tid)), request_id=uuid.uuid4().hex[:12],
                       subtitles_uri=str(stage_media(settings, subtitles, tid, "subtitle file")) if subtitles else None,
                       subtitle_encoding=subtitle_encoding, meta=m)
    req.check()
    p = producer(settings)
    try:
        send_and_wait(settings, p, f"the request for title {tid!r}",
                      [(Topics.from_settings(settings).titles, tid.encode(), req.to_bytes())])
    finally:
        p.close()
    return req


def dataset_layout(meta, where: str | Path = "meta.json") -> Layout:
    """The encoder profile of a v1 dataset's meta (mediafm.dataset.Meta), or DatasetError saying why none fits.

    The pipeline contextualises only the profiles of mediafm/profiles.py, so a dataset's modality widths,
    their order in the fused vector and its title_dim must be one profile's."""
    mods = meta.modalities
    if set(mods) != set(MODALITIES):
        raise DatasetError(f"{where}: modalities {sorted(mods)}; the pipeline's encoder profiles have exactly "
                           f"{list(MODALITIES)}")
    widths = tuple(mods[m][1] - mods[m][0] for m in MODALITIES)
    from mediafm.profiles import profile_for_widths

    try:
        layout = profile_for_widths(*widths).layout
    except ConfigError as e:
        raise DatasetError(f"{where}: {e}; the workers fuse and contextualise only those profiles, so this "
                           "dataset cannot be published (train or evaluate on it directly instead)") from None
    if {m: tuple(v) for m, v in mods.items()} != layout.slices:
        raise DatasetError(f"{where}: modalities {dict(mods)} are not in the order of profile {layout.name!r} "
                           f"{layout.slices} (video | audio | text)")
    if meta.title_dim != layout.title:
        raise DatasetError(f"{where}: title_dim {meta.title_dim}, but profile {layout.name!r} (modality widths "
                           f"{widths}) has title embeddings of {layout.title}")
    return layout


def fused_shot_messages(title, layout: Layout, request_id: str) -> list[FusedShot]:
    """One FusedShot per shot of a dataset Title (mediafm.dataset.Title), as the fuse stage would publish
    them: kind "title", n_shots set, `present` from which modality slices are non-zero.

    DatasetError for a shot with no modality or a message over MAX_MESSAGE_BYTES (checked here, before
    anything of the title is sent)."""
    info, n = title.info, len(title.fused)
    te = vec_to_bytes(info.title_embedding)
    out = []
    for i in range(n):
        v = title.fused[i]
        present = [bool(np.any(v[lo:hi])) for lo, hi in layout.slices.values()]
        if not any(present):
            raise DatasetError(f"title {info.title_id!r} shot {i}: its fused vector is all zeros (no modality); "
                               "every shot needs at least one of video/audio/text")
        msg = FusedShot(title_id=info.title_id, shot_index=i, start_s=float(title.start_s[i]),
                        end_s=float(title.end_s[i]), profile=layout.name, fused=vec_to_bytes(v), present=present,
                        n_shots=n, kind="title", title_embedding=te, request_id=request_id)
        try:
            msg.check()  # what a worker's decode would refuse (an id with control characters, a span backwards)
        except SchemaError as e:
            raise DatasetError(f"title {info.title_id!r} shot {i}: a worker would refuse it: {e}") from None
        try:
            msg.to_bytes()
        except SchemaError as e:
            raise DatasetError(f"title {info.title_id!r} shot {i}: {e}; one shot per message cannot be split "
                               "further") from None
        out.append(msg)
    return out


def publish_dataset(settings: Settings, root: str | Path, *, title_ids: list[str] | None = None,
                    progress: bool = True) -> list[tuple[str, str, int]]:
    """Every title of a v1 dataset (or those named) as FusedShot messages on shots.fused, a title's shots
    in FusedShots records as the fuse stage sends them (mediafm.schema.shot_records).

    A v1 dataset holds fused vectors only (DATASET_FORMAT.md), so its shots join the pipeline after
    fusion: the workers contextualise each title once all its shots arrived, and `mediafm sink` collects
    them. Each title gets a fresh request id (a new request, like `mediafm backfill`), so publishing
    again re-embeds it. Titles are read shard by shard, one title's messages in memory at a time.
    Returns [(title_id, request_id, n_shots)] in publishing order.
    """
    from kafka.errors import KafkaError
    from tqdm import tqdm

    from mediafm.dataset import Dataset

    ds = Dataset(root)
    layout = dataset_layout(ds.meta, ds.root / "meta.json")
    if title_ids:
        wanted = list(dict.fromkeys(title_ids))
        missing = [t for t in wanted if t not in ds.titles]
        if missing:
            some = ", ".join(list(ds.titles)[:5])
            raise DatasetError(f"{ds.root / 'titles.parquet'}: no title {missing}; it has {len(ds.titles)} titles "
                               f"({some}{', ...' if len(ds.titles) > 5 else ''})")
        infos = [ds.titles[t] for t in wanted]
    else:
        infos = list(ds.titles.values())
    topic = Topics.from_settings(settings).fused
    try:
        p = producer(settings)
    except KafkaError as e:
        raise StackError(f"no Kafka broker answered at {settings.kafka_bootstrap} ({type(e).__name__}: {e}); "
                         "start one with `mediafm stack up`") from None
    sent: list[tuple[str, str, int]] = []
    bar = tqdm(total=sum(i.n_shots for i in infos), unit="shot", desc=f"publishing to {topic}",
               disable=not progress, dynamic_ncols=True)
    try:
        for title in ds.iter_titles(infos):
            tid = title.info.title_id
            req = uuid.uuid4().hex[:12]
            msgs = fused_shot_messages(title, layout, req)
            send_and_wait(settings, p, f"title {tid!r}",  # as the fuse stage sends them
                          [(topic, tid.encode(), record)
                           for record in shot_records(FusedShots, [m.to_bytes() for m in msgs], tid, req)])
            sent.append((tid, req, len(msgs)))
            bar.update(len(msgs))
            bar.set_postfix_str(tid, refresh=False)
    except (DatasetError, StackError) as e:
        if not sent:
            raise
        raise type(e)(f"{e}; {len(sent)} titles were published before it ({', '.join(t for t, _, _ in sent[:5])}"
                      f"{', ...' if len(sent) > 5 else ''}); publish the others with --titles") from None
    finally:
        bar.close()
        p.close()
    return sent


def _first_frame_time(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            return float(frame.time or 0.0)
    raise MediaError(f"{path}: a segment without a video frame; use a longer --segment-s")


def cut_segments(file: str | Path, out_dir: Path, segment_s: float) -> list[tuple[Path, float]]:
    """FILE -> MPEG-TS segments of about segment_s seconds (keyframes forced at the cuts); [(path, start_s)].

    Lossless x264 (-qp 0): the segments hold the film's exact frames, so the live detector sees what a
    whole-file pass sees (a lossy re-encode moved TransNetV2's scores by up to ~0.1: false and missed cuts).

    Timestamps stay continuous across segments, so each segment's start is its first frame's time
    (the segmenter's own list reports packet times, a few frames off with B-frames)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("seg*.ts"), *out_dir.glob("seg*.vtt")]:
        old.unlink()
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(file), "-map", "0:v:0", "-map", "0:a?",
           "-c:v", "libx264", "-preset", "veryfast", "-qp", "0",  # lossless: the film's own frames (issue 13)
           "-force_key_frames", f"expr:gte(t,n_forced*{segment_s})",
           "-c:a", "aac", "-f", "segment", "-segment_time", str(segment_s), str(out_dir / "seg%05d.ts")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise MediaError(f"{file}: ffmpeg could not cut it into segments: {r.stderr.strip()[-300:]}")
    paths = sorted(out_dir.glob("seg*.ts"))
    if not paths:
        raise MediaError(f"{file}: ffmpeg wrote no segments")
    times = [_first_frame_time(p) for p in paths]
    return [(p, round(t - times[0], 6)) for p, t in zip(paths, times, strict=True)]


def write_segment_cues(cues: list, segments: list[tuple[Path, float]], out_dir: Path) -> list[Path | None]:
    """Per segment, a WebVTT file of the cues overlapping it, times on the event's clock (None: no cue).

    What a live captioning feed publishes beside its media segments (HLS: WebVTT segments)."""
    from mediafm.media.subtitles import write_webvtt

    out: list[Path | None] = []
    for k, (path, start) in enumerate(segments):
        end = segments[k + 1][1] if k + 1 < len(segments) else float("inf")
        mine = [c for c in cues if c.start_s < end and c.end_s > start]
        if mine:
            vtt = out_dir / f"{path.stem}.vtt"
            write_webvtt(mine, vtt)
            out.append(vtt)
        else:
            out.append(None)
    return out


def publish_live(settings: Settings, file: str | Path, *, event_id: str | None = None, segment_s: float = 2.0,
                 realtime: bool = False, meta: str | Path | dict | None = None,
                 subtitles: str | Path | None = None, subtitle_encoding: str | None = None,
                 on_segment: Callable[[LiveSegment], None] | None = None) -> list[LiveSegment]:
    """Simulate a live event from FILE: cut it into segments and publish them in order
    (paced at real time with realtime=True, else as fast as the broker takes them). With `subtitles`
    (SRT / WebVTT of the whole file), each segment carries the cues overlapping it as a WebVTT file.
    event_id: default the metadata's title_id, else the file's name without its extension. The segments are
    written under <media root>/live/<event id>: an event id with a segment on the broker is refused (a worker may
    still read its segments, and a finished event takes no new ones); one whose publication sent nothing (no
    broker, ffmpeg failed, Ctrl-C while cutting) may be published again."""
    event_id, m = named(load_meta(meta), event_id, file, "live")
    check_file(file)
    seg_dir = id_dir(Path(settings.worker_media_roots[0]) / "live", event_id)
    sent_mark = seg_dir / ".sent"  # made once its first segment is on the broker
    if sent_mark.exists():
        raise MediaError(f"live event {event_id!r} was published before (its segments are in {seg_dir}); a new "
                         "broadcast needs a new event id (--id). To publish this one again, stop the workers reading "
                         f"it and remove {seg_dir}")
    cues = []
    if subtitles:
        from mediafm.media.subtitles import load_subtitles

        check_file(subtitles, "subtitle file")
        cues = load_subtitles(Path(subtitles).resolve(), encoding=subtitle_encoding)
    topic = Topics.from_settings(settings).live_segments
    p = producer(settings)  # the broker found (or named) before minutes of cutting
    sent = []
    try:
        segments = cut_segments(file, seg_dir, segment_s)
        vtts = write_segment_cues(cues, segments, seg_dir)
        t0 = time.monotonic()
        for k, (path, start) in enumerate(segments):
            if realtime:  # a segment exists once its last frame has happened
                end = segments[k + 1][1] if k + 1 < len(segments) else start + segment_s
                time.sleep(max(0.0, end - (time.monotonic() - t0)))
            seg = LiveSegment(event_id=event_id, segment_index=k, uri=str(path.resolve()), start_s=start,
                              last=k == len(segments) - 1, meta=m if k == 0 else {},
                              subtitles_uri=str(vtts[k].resolve()) if vtts[k] else None)
            send_and_wait(settings, p, f"segment {k} of live event {event_id!r}",
                          [(topic, event_id.encode(), seg.to_bytes())])
            if k == 0:
                sent_mark.touch()
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


def _index(settings: Settings, topic: str, idle_s: float, deadline: float, progress: bool, keep):
    """Pass 1 of the sink: every record of `topic` from its beginning, handed to keep(record); first every
    record there now (MediaError if that takes past `deadline`), then any that arrive until idle_s passes
    without one (or the deadline)."""
    from tqdm import tqdm

    tail = Tail(settings, topic, from_beginning=True)
    try:
        with tqdm(total=tail.backlog(), unit="msg", desc=f"indexing {topic}", disable=not progress,
                  dynamic_ncols=True, leave=False) as bar:
            try:
                for rec in tail.to_end(timeout_s=max(0.0, deadline - time.monotonic())):
                    bar.update()
                    keep(rec)
            except TimeoutError as e:
                raise MediaError(f"{topic}: {e}; nothing was written: give the sink a longer --timeout") from None
        for rec in tail.until_idle(idle_s=idle_s, timeout_s=deadline - time.monotonic()):  # what workers add now
            keep(rec)
    finally:
        tail.close()


def _fetch(settings: Settings, topic: str, wanted: dict[int, np.ndarray], what: str, deadline: float, progress: bool):
    """Pass 2 of the sink: (partition, k, record) for the records at the `wanted` offsets {partition: sorted
    offsets} of `topic` (k: the offset's place in that array), one partition after another, each read once from
    its first wanted offset to its last (by `deadline`)."""
    from kafka import TopicPartition
    from tqdm import tqdm

    c = consumer(settings)
    try:
        with tqdm(total=sum(len(v) for v in wanted.values()), unit="msg", desc=what, disable=not progress,
                  dynamic_ncols=True, leave=False) as bar:
            for partition, offsets in sorted(wanted.items()):
                if not len(offsets):
                    continue
                tp = TopicPartition(topic, partition)
                c.assign([tp])
                c.seek(tp, int(offsets[0]))
                last, k = int(offsets[-1]), 0
                while c.position(tp) <= last:
                    if time.monotonic() > deadline:
                        raise MediaError(f"{topic}[{partition}] was not read back to offset {last} by the timeout; "
                                         "nothing was written: give the sink a longer --timeout")
                    for rec in c.poll(timeout_ms=500).get(tp, []):  # in offset order, as the wanted ones
                        while k < len(offsets) and offsets[k] < rec.offset:
                            k += 1  # a wanted offset with no record (gone): the caller counts what came
                        while k < len(offsets) and offsets[k] == rec.offset:  # once per shot the record holds
                            bar.update()
                            yield partition, k, rec
                            k += 1
    finally:
        c.close()


class _Publication:
    """Pass 1's note of one (title, request) on shots.fused: where each of its shots is."""

    __slots__ = ("partition", "n", "index", "offset")

    def __init__(self, partition: int) -> None:
        self.partition, self.n = partition, None
        self.index, self.offset = array("q"), array("q")  # 16 bytes a shot: a catalog's index fits in memory

    def offsets(self) -> np.ndarray | None:
        """Offsets by shot index when every one of the n shots is there, else None."""
        if self.n is None:
            return None
        at = np.full(self.n, -1, np.int64)
        idx = np.frombuffer(self.index, np.int64)
        if idx.size and (idx.max() >= self.n):
            return None
        at[idx] = np.frombuffer(self.offset, np.int64)  # a shot sent twice: its last copy
        return at if (at >= 0).all() else None


def sink(settings: Settings, out: str | Path, *, idle_s: float = 5.0, timeout_s: float = 600.0,
         profile: str | None = None, progress: bool = False, val_fraction: float = 0.1,
         test_fraction: float = 0.1) -> dict:
    """Write what the pipeline produced as a v1 dataset: every complete title's fused shots
    (shots.fused; the trainer's and the evaluation's input) and, in contextual.parquet, the final
    contextual embeddings (one per title, shot and model version; rows in the order they were published).

    Two passes over each topic, so that what is held grows by about 16 bytes a shot, not by the shots: the
    first reads every record and keeps only where each shot is (its offset; the titles' last complete requests), the second reads
    back the records chosen, a partition at a time, writing each title as soon as its shots are in. What is
    held is the titles whose shots are still being read (the shots of one title are in one partition).
    A dataset has one layout: with titles of several encoder profiles on the topic, `profile` names the one
    to write (the others are left out). Each title's split is drawn from its id (`split_for`): about val_fraction
    of the titles are "val" and test_fraction "test", and a title keeps its split from one sink to the next, so
    the evaluation titles of a refreshed dataset are never among those an earlier model was trained on. Raises MediaError when the topics cannot be read to their end before
    timeout_s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mediafm.dataset import DatasetWriter, Meta, split_for
    from mediafm.profiles import get_profile

    split_for("", val_fraction, test_fraction)  # a DatasetError for fractions that are no shares, before any read

    names = Topics.from_settings(settings)
    deadline = time.monotonic() + timeout_s
    pubs: dict[tuple[str, str], _Publication] = {}  # in order of first shot: a later request replaces one before
    profiles: set[str] = set()
    others: set[str] = set()  # profiles left out (`profile`)
    if profile is not None:
        get_profile(profile)  # a ConfigError naming the known profiles

    given_up: dict[tuple[str, str], str] = {}  # a title's publication whose shots a stage refused (ShotsRefused)

    def note_shot(rec) -> None:
        try:
            shots = record_shots(FusedShots, rec.value, refusals=True)
        except SchemaError:
            return  # the workers dead-letter it; nothing to sink
        if isinstance(shots, ShotsRefused):
            if shots.kind == "title":
                given_up.setdefault((shots.title_id, shots.request_id), shots.describe())
            return
        for s in shots:
            if profile is not None and s.profile != profile:
                others.add(s.profile)
                continue
            pub = pubs.get((s.title_id, s.request_id))
            if pub is None:
                pub = pubs[(s.title_id, s.request_id)] = _Publication(rec.partition)
            if s.n_shots is not None:
                pub.n = s.n_shots
            if rec.partition == pub.partition:  # keyed by title: any other copy is not this publication's
                pub.index.append(s.shot_index)
                pub.offset.append(rec.offset)
                profiles.add(s.profile)

    _index(settings, names.fused, idle_s, deadline, progress, note_shot)
    latest: dict[str, tuple[_Publication, np.ndarray]] = {}
    request: dict[str, str] = {}  # title -> the request whose shots are written: only its finals go with them
    skipped = set()
    for (tid, rid), pub in pubs.items():
        at = pub.offsets()
        if at is None:
            skipped.add(tid)
        else:
            latest[tid], request[tid] = (pub, at), rid
    pubs_order = list(pubs)
    pubs.clear()
    if not latest:
        raise MediaError(f"no complete title{f' of profile {profile!r}' if profile else ''} on {names.fused}; "
                         "publish titles and run a worker first" + (f" (titles of {sorted(others)} were left out)"
                                                                    if others else ""))
    if len(profiles) != 1:
        raise MediaError(f"titles of several encoder profiles {sorted(profiles)} on {names.fused}; one dataset has "
                         "one layout: choose one with --profile")
    written = get_profile(profiles.pop())
    layout = written.layout

    # where each wanted shot is, per partition: sorted offsets, and each one's title (index into `order`) and shot
    order = list(latest)
    wanted: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for p in {pub.partition for pub, _ in latest.values()}:
        mine = [(t, latest[tid][1]) for t, tid in enumerate(order) if latest[tid][0].partition == p]
        off = np.concatenate([at for _, at in mine])
        title = np.concatenate([np.full(len(at), t, np.int32) for t, at in mine])
        shot = np.concatenate([np.arange(len(at), dtype=np.int32) for _, at in mine])
        by = np.argsort(off, kind="stable")
        wanted[p] = (off[by], title[by], shot[by])  # 16 bytes a shot: what the catalog costs in memory here
    writer = DatasetWriter(out, Meta.from_layout(layout, written.encoders))
    try:
        open_titles: dict[str, list] = {}  # title -> [shots so far (n slots), count]
        # title -> why its shots are not written; first, those whose last publication on the topic was given up for
        # shots a stage refused, none of them complete (with no shot at all on the topic: where no profile is named)
        refused: dict[str, str] = {}
        last_request = dict(pubs_order)
        for (tid, rid), why in given_up.items():
            if tid not in latest and last_request.get(tid, rid if profile is None else None) == rid:
                refused[tid] = why
        splits: dict[str, int] = {}  # split -> titles written
        found, last = 0, (None, {})  # the record read last and its shots by index (a record holds several)
        for p, k, rec in _fetch(settings, names.fused, {p: w[0] for p, w in wanted.items()},
                                f"writing titles from {names.fused}", deadline, progress):
            tid, i = order[wanted[p][1][k]], int(wanted[p][2][k])
            found += 1
            if last[0] != (p, rec.offset):
                last = ((p, rec.offset), {(s.title_id, s.shot_index): s for s in record_shots(FusedShots, rec.value)})
            slots = open_titles.setdefault(tid, [[None] * len(latest[tid][1]), 0])
            slots[0][i] = last[1][(tid, i)]
            slots[1] += 1
            if slots[1] == len(slots[0]):
                shots = open_titles.pop(tid)[0]
                te = next((s.title_embedding for s in shots if s.title_embedding), None)
                try:  # what a worker refuses (dead-lettered there) is not written here either
                    fused = np.stack([bytes_to_vec(s.fused, layout.fused_dim, what=f"shot {s.shot_index}'s fused")
                                      for s in shots])
                    title = bytes_to_vec(te, layout.title, what="title_embedding") if te else np.zeros(layout.title,
                                                                                                       np.float32)
                except SchemaError as e:
                    refused[tid] = str(e)
                    continue
                split = split_for(tid, val_fraction, test_fraction)
                splits[split] = splits.get(split, 0) + 1
                writer.add_title(title_id=tid, kind=shots[0].kind, title_embedding=title, fused=fused,
                                 start_s=np.array([s.start_s for s in shots]), end_s=np.array([s.end_s for s in shots]),
                                 split=split)
        missing = sum(len(w[0]) for w in wanted.values()) - found
        if missing:  # cannot happen unless the topic lost records between the passes (retention)
            raise MediaError(f"{missing} shots indexed on {names.fused} were gone when read back (the topic's "
                             "retention?); nothing was written: run the sink again")
        n_shots = {tid: len(at) for tid, (_, at) in latest.items() if tid not in refused}
        if not n_shots:  # --out is left as it was: a dataset of no titles is not one Dataset() opens
            raise MediaError(f"every complete title on {names.fused} was refused ({refused}); nothing was written")
        del latest, open_titles, wanted

        # (title, model version, representation, dim) -> offset of each shot's last final; only the written
        # profile's finals (a title id may have been run under both), and one representation in the file
        finals: dict[tuple[str, str, str, int], np.ndarray] = {}
        newest: dict[tuple[str, int], float] = {}  # (representation, dim) -> when its newest final was made
        final_partition: dict[str, int] = {}

        def note_final(rec) -> None:
            try:
                e = decode(rec.value, expect=ContextualEmbedding)
            except SchemaError:
                return
            n = n_shots.get(e.title_id)
            if not e.final or n is None or not 0 <= e.shot_index < n or e.profile != written.name:
                return
            if e.request_id and e.request_id != request[e.title_id]:  # another publication's (its shots, its cuts)
                return
            key = (e.title_id, e.model_version, e.representation, e.dim)
            at = finals.get(key)
            if at is None:
                at = finals[key] = np.full(n, -1, np.int64)
            at[e.shot_index] = rec.offset
            final_partition[e.title_id] = rec.partition
            newest[(e.representation, e.dim)] = max(newest.get((e.representation, e.dim), 0.0), e.produced_at)

        _index(settings, names.embeddings, idle_s, deadline, progress, note_final)
        # several representations (embedding_representation changed between runs): the one made last
        kept = max(newest, key=newest.get) if newest else None
        left_out = sorted({f"{r} ({d}-d)" for r, d in newest if (r, d) != kept})
        chosen: dict[int, list[np.ndarray]] = {}
        for (tid, _, rep, dim), at in finals.items():
            if (rep, dim) == kept:
                chosen.setdefault(final_partition[tid], []).append(at[at >= 0])
        path, pqw, rows, count = writer.tmp / "contextual.parquet", None, [], 0

        def write(rows: list[ContextualEmbedding]) -> None:
            nonlocal pqw
            table = pa.table({
                "title_id": pa.array([e.title_id for e in rows], pa.string()),
                "shot_index": pa.array([e.shot_index for e in rows], pa.int32()),
                "model_version": pa.array([e.model_version for e in rows], pa.string()),
                "representation": pa.array([e.representation for e in rows], pa.string()),
                "embedding": pa.array([e.vector() for e in rows], pa.list_(pa.float32(), kept[1] if kept else 0)),
            })
            if pqw is None:
                pqw = pq.ParquetWriter(path, table.schema)
            pqw.write_table(table)

        for _, _, rec in _fetch(settings, names.embeddings, {p: np.sort(np.concatenate(o)) for p, o in chosen.items()},
                                f"writing finals from {names.embeddings}", deadline, progress):
            rows.append(decode(rec.value, expect=ContextualEmbedding))
            count += 1
            if len(rows) == 4096:
                write(rows)
                rows = []
        if rows or pqw is None:
            write(rows)
        pqw.close()
    except BaseException:
        shutil.rmtree(writer.tmp, ignore_errors=True)  # nothing half written is left behind
        raise
    root = writer.close()
    return {"out": str(root), "titles": len(n_shots), "shots": sum(n_shots.values()),
            "contextual": count, "incomplete": sorted(skipped - set(n_shots) - set(refused)), "refused": refused,
            "representations_left_out": left_out, "splits": splits}


def backfill(settings: Settings, title_ids: list[str], *, idle_s: float = 3.0, timeout_s: float = 300.0,
             on_sent=None) -> list[TitleRequest]:
    """Publish each title's last request again with a new request id: re-embedded with the model served now.
    The titles topic is read to its end first (MediaError if that takes past timeout_s: a request missed there
    would be reused old or reported missing). Each id once, in order; on_sent(request) as each is on the broker,
    and a failure part way names those already sent."""
    title_ids = list(dict.fromkeys(title_ids))  # `backfill t1 t1` re-embeds t1 once
    topic = Topics.from_settings(settings).titles
    last: dict[str, TitleRequest] = {}

    def note(rec) -> None:
        try:
            r = decode(rec.value, expect=TitleRequest)
        except SchemaError:
            return
        last[r.title_id] = r

    tail = Tail(settings, topic, from_beginning=True)
    try:
        for rec in tail.to_end(timeout_s=timeout_s):
            note(rec)
        for rec in tail.until_idle(idle_s=idle_s, timeout_s=timeout_s):  # what is published meanwhile
            note(rec)
    except TimeoutError as e:
        raise MediaError(f"{topic}: {e}; nothing was re-published: give backfill more time") from None
    finally:
        tail.close()
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
            send_and_wait(settings, p, f"the request for title {tid!r}", [(topic, tid.encode(), req.to_bytes())])
            sent.append(req)
            if on_sent is not None:
                on_sent(req)
    except StackError as e:
        if not sent:
            raise
        raise StackError(f"{e}; {len(sent)} of {len(title_ids)} titles were re-published before it "
                         f"({', '.join(r.title_id for r in sent[:5])}{', ...' if len(sent) > 5 else ''}); "
                         f"backfill the others: {' '.join(title_ids[len(sent):][:5])}"
                         f"{' ...' if len(title_ids) > len(sent) + 5 else ''}") from None
    finally:
        p.close()
    return sent
