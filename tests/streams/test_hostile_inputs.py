"""A corpus of hostile inputs, kept and grown: each must reach the dead-letter topic with a clear reason,
and the worker must then still embed a good title.

Real broker, real Triton, the session's real `mediafm worker`. Every hostile message goes to the topic
of the stage it attacks (titles, live segments, shots, encoded shots, fused shots) under its own key;
the test publishes them all, then a good title (and a video-only one, which must succeed), and reads the
dead-letter and embeddings topics until every expected record has arrived (no fixed sleeps).
Messages the broker or the producer refuses outright are checked at produce time instead.

Add a case: a `Case(name, topic, payload, reason)` in `_cases` (payload: bytes, or None for a
tombstone); media it needs goes in the `media` fixture (small, made with ffmpeg in seconds).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest

from mediafm.bus import Tail, producer
from mediafm.errors import SchemaError
from mediafm.media.synthfilm import ffmpeg, make_film
from mediafm.profiles import OFFLINE
from mediafm.publish import publish_title
from mediafm.schema import (
    MAX_MESSAGE_BYTES,
    ContextualEmbedding,
    DeadLetter,
    EncodedShot,
    EncodedShots,
    FusedShot,
    FusedShots,
    LiveSegment,
    ShotRef,
    TitleRequest,
    decode,
    vec_to_bytes,
)
from mediafm.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.triton, pytest.mark.slow]

LAY = OFFLINE.layout


@dataclass
class Case:
    name: str
    topic: str  # attribute of Topics: titles, live_segments, shots, encoded, fused
    payload: bytes | None
    reason: str  # a substring of the dead letter's reason


def _ff(*args: str) -> None:
    subprocess.run([ffmpeg(), "-y", "-hide_banner", "-loglevel", "error", *args], check=True, timeout=120)


@pytest.fixture(scope="module")
def media(kafka_stack, tmp_path_factory):
    """Hostile (and two good) media files: under the worker's media root, except what must stay outside it."""
    root = Path(kafka_stack.worker_media_roots[0]) / f"hostile-{uuid.uuid4().hex[:6]}"
    root.mkdir(parents=True)
    outside = tmp_path_factory.mktemp("outside-the-media-roots")
    m: dict[str, Path | str] = {"root": root}
    m["good"] = make_film(root / "good.mp4", shots=[24, 30], fps=24, size=(160, 96), audio=["tone:440", "noise"]).path
    m["video_only"] = make_film(root / "video_only.mkv", shots=[24, 24], fps=24, size=(160, 96), first_source=3).path
    _ff("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "2", str(root / "audio_only.m4a"))
    m["audio_only"] = root / "audio_only.m4a"
    # truncated: the first 40% of an MP4 whose index (moov) is at its end
    (root / "truncated.mp4").write_bytes(m["good"].read_bytes()[: int(m["good"].stat().st_size * 0.4)])
    m["truncated"] = root / "truncated.mp4"
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 40_000, dtype=np.uint8).tobytes())
    m["garbage"] = root / "garbage.mp4"
    (root / "empty.mp4").write_bytes(b"")
    m["empty"] = root / "empty.mp4"
    # three frames 12 hours apart: a tiny file whose container says 24 h
    _ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=1", "-frames:v", "3", "-vf", "setpts=N*43200/TB",
        "-fps_mode", "passthrough", "-c:v", "mjpeg", str(root / "day.mkv"))
    m["day"] = root / "day.mkv"
    # an MPEG-4 Part 2 stream whose Matroska codec id is renamed to one no decoder knows
    _ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=24", "-t", "1", "-c:v", "mpeg4", str(outside / "codec.mkv"))
    raw = (outside / "codec.mkv").read_bytes()
    assert b"V_MPEG4/ISO/ASP" in raw
    (root / "unsupported_codec.mkv").write_bytes(raw.replace(b"V_MPEG4/ISO/ASP", b"V_ZZZZZ/ISO/ASP"))
    m["codec"] = root / "unsupported_codec.mkv"
    # headers claiming huge frames: one FFmpeg refuses to open, one it accepts (16000 x 16000 = 384 MB a frame)
    (root / "huge.y4m").write_bytes(b"YUV4MPEG2 W100000 H100000 F24:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(1000))
    m["huge"] = root / "huge.y4m"
    (root / "big.y4m").write_bytes(b"YUV4MPEG2 W16000 H16000 F24:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(100_000))
    m["big"] = root / "big.y4m"
    # a playlist in the media root naming media outside it
    _ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=24", "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
        str(outside / "secret.ts"))
    (root / "playlist.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{outside / 'secret.ts'}\n"
                                        "#EXT-X-ENDLIST\n")
    m["playlist"] = root / "playlist.m3u8"
    os.mkfifo(root / "fifo.mp4")
    m["fifo"] = root / "fifo.mp4"
    try:  # a device node inside the media root (root only); else a link to one, which resolves outside
        os.mknod(root / "zero.mp4", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        m["device"], m["device_reason"] = root / "zero.mp4", "not a regular file (a device)"
    except PermissionError:
        os.symlink("/dev/zero", root / "zero.mp4")
        m["device"], m["device_reason"] = root / "zero.mp4", "outside the allowed media_roots"
    (outside / "secret.mp4").write_bytes(m["good"].read_bytes())
    os.symlink(outside / "secret.mp4", root / "link_out.mp4")
    m["link_out"] = root / "link_out.mp4"
    os.symlink(root / "loop_b", root / "loop_a")
    os.symlink(root / "loop_a", root / "loop_b")
    m["loop"] = root / "loop_a"
    # subtitles: a million cues; Latin-1 text without a declared encoding
    with open(root / "million.srt", "w") as f:
        for i in range(1_000_000):
            f.write(f"{i + 1}\n00:00:00,000 --> 00:00:02,000\nw{i}\n\n")
    m["million"] = root / "million.srt"
    (root / "latin1.srt").write_bytes("1\n00:00:00,200 --> 00:00:01,300\nCafé crème brûlée\n".encode("cp1252"))
    m["latin1"] = root / "latin1.srt"
    yield m
    shutil.rmtree(root, ignore_errors=True)


def _title(tid: str, uri: str, **kw) -> bytes:
    return TitleRequest(title_id=tid, uri=uri, **kw).to_bytes()


def _raw(cls, **fields) -> bytes:
    """A message of schema `cls` with any fields, bypassing the dataclass (and its to_bytes checks)."""
    return msgpack.packb({"schema": cls.SCHEMA, "v": cls.VERSION, **fields}, use_bin_type=True)


def _shot_ref(tid: str, uri: str, **kw) -> dict:
    base = dict(title_id=tid, shot_index=0, start_s=0.0, end_s=1.0, start_frame=0, end_frame=24, media=[uri],
                media_start_s=0.0, text="", title_text="t", profile="offline", n_shots=2)
    return {**base, **kw}


def _encoded(tid: str, **kw) -> dict:
    v = np.ones(LAY.video, np.float32) / np.sqrt(LAY.video)
    base = dict(title_id=tid, shot_index=0, start_s=0.0, end_s=1.0, profile="offline", video=vec_to_bytes(v),
                audio=None, text=None, n_shots=2)
    return {**base, **kw}


def _fused(tid: str, **kw) -> dict:
    v = np.ones(LAY.fused_dim, np.float32) / np.sqrt(LAY.fused_dim)
    base = dict(title_id=tid, shot_index=0, start_s=0.0, end_s=1.0, profile="offline", fused=vec_to_bytes(v),
                present=[True, False, False], n_shots=2)
    return {**base, **kw}


def _cases(run: str, m: dict) -> list[Case]:
    good = str(m["good"])

    def k(name: str) -> str:
        return f"hx-{run}-{name}"

    valid = msgpack.unpackb(_title("x", good))
    nan, inf = np.full(LAY.video, np.nan, np.float32), np.full(LAY.fused_dim, np.inf, np.float32)
    cases = [
        # --- the wire: bytes that are not a message of ours
        Case("garbage-bytes", "titles", b"\xc1\xc1 this is not msgpack \x00\xff", "not msgpack"),
        Case("tombstone", "titles", None, "message has no bytes"),
        Case("tombstone-shots", "shots", None, "message has no bytes"),
        Case("tombstone-encoded", "encoded", None, "message has no bytes"),
        Case("tombstone-fused", "fused", None, "message has no bytes"),
        Case("msgpack-list", "titles", msgpack.packb([1, 2, 3]), "must be a msgpack map"),
        Case("msgpack-int-keys", "titles", msgpack.packb({1: 2}), "not msgpack"),
        Case("msgpack-deep", "titles", b"\x91" * 100_000 + b"\xc0", "nested too deeply"),
        Case("msgpack-length-bomb", "titles", b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),
        Case("msgpack-bad-utf8", "titles", _title("ab", good).replace(b"\xa2ab", b"\xa2\xff\xfe"), "UnicodeDecodeError"),
        Case("no-schema", "titles", msgpack.packb({"title_id": k("no-schema"), "uri": good}), "unknown schema None"),
        Case("unknown-schema", "titles", msgpack.packb({**valid, "schema": "mediafm.title_request_v9"}),
             "unknown schema 'mediafm.title_request_v9'"),
        Case("wrong-schema", "titles", _raw(FusedShot, **_fused(k("wrong-schema"))),
             "expected a mediafm.title_request message, got mediafm.fused_shot"),
        Case("future-version", "titles", msgpack.packb({**valid, "v": 2}), "version 2 is not supported"),
        Case("no-version", "titles", msgpack.packb({k_: v for k_, v in valid.items() if k_ != "v"}),
             "version None is not supported"),
        Case("over-size-limit", "titles",
             _raw(TitleRequest, title_id=k("over-size-limit"), uri=good, meta={"synopsis": "x" * MAX_MESSAGE_BYTES}),
             f"over the {MAX_MESSAGE_BYTES} limit"),
        # --- fields
        Case("missing-field", "titles", _raw(TitleRequest, title_id=k("missing-field")),
             "missing required field 'uri'"),
        Case("extra-field", "titles", _raw(TitleRequest, title_id=k("extra-field"), uri=good, priority=9),
             "unknown fields ['priority']"),
        Case("wrong-type", "titles", _raw(TitleRequest, title_id=12345, uri=good), "field 'title_id' must be str"),
        Case("bool-as-int", "live_segments", _raw(LiveSegment, event_id=k("bool-as-int"), segment_index=True,
                                                   uri=good, start_s=0.0), "must be int, got bool"),
        Case("ext-type", "titles", msgpack.packb({**valid, "uri": msgpack.ExtType(7, b"zz")}),
             "field 'uri' must be str, got ExtType"),
        # --- ids
        Case("id-control-chars", "titles", _raw(TitleRequest, title_id="evil\x1b[2J\nFAKE LOG LINE\x00", uri=good),
             "field 'title_id' has control characters"),
        Case("id-bidi-override", "titles", _raw(TitleRequest, title_id="abc\u202egnp.exe", uri=good),
             "field 'title_id' has control characters"),
        Case("id-empty", "titles", _raw(TitleRequest, title_id="", uri=good), "field 'title_id' is empty"),
        Case("id-huge", "titles", _raw(TitleRequest, title_id="t" * 100_000, uri=good), "over the 512 limit"),
        # --- metadata
        Case("meta-not-a-map", "titles", _title(k("meta-not-a-map"), good, meta=["x"]), "field 'meta' must be dict"),
        Case("meta-wrong-type", "titles", _title(k("meta-wrong-type"), good, meta={"tags": "drama"}),
             "field 'meta.tags' must be a list"),
        Case("meta-3mb-synopsis", "titles", _title(k("meta-3mb-synopsis"), good, meta={"synopsis": "word " * 600_000}),
             "meta text (title, synopsis, tags) is 3000000 characters, over the 32000 limit"),
        # --- URIs
        Case("path-traversal", "titles", _title(k("path-traversal"), f"{m['root']}/../../../../../etc/passwd"),
             "outside the allowed media_roots"),
        Case("path-traversal-encoded", "titles",
             _title(k("path-traversal-encoded"), f"file://{m['root']}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
             "outside the allowed media_roots"),
        Case("symlink-out", "titles", _title(k("symlink-out"), str(m["link_out"])), "outside the allowed media_roots"),
        Case("symlink-loop", "titles", _title(k("symlink-loop"), str(m["loop"])), "cannot resolve it"),
        Case("file-uri-device", "titles", _title(k("file-uri-device"), f"file://{m['device']}"), m["device_reason"]),
        Case("file-uri-dev-zero", "titles", _title(k("file-uri-dev-zero"), "file:///dev/zero"),
             "/dev/zero: outside the allowed media_roots"),
        Case("file-uri-fifo", "titles", _title(k("file-uri-fifo"), f"file://{m['fifo']}"),
             "not a regular file (a FIFO)"),
        Case("file-uri-other-host", "titles", _title(k("file-uri-other-host"), "file://attacker.example/x.mp4"),
             "names host 'attacker.example'"),
        Case("s3-scheme", "titles", _title(k("s3-scheme"), "s3://bucket/film.mp4"), "scheme 's3' is not supported"),
        Case("uri-nul-byte", "titles", _title(k("uri-nul-byte"), f"file://{m['root']}/good.mp4%00.txt"),
             "control characters in a media URI"),
        Case("uri-too-long", "titles", _title(k("uri-too-long"), f"{m['root']}/{'a' * 5000}.mp4"),
             "cannot read it (File name too long)"),
        Case("uri-directory", "titles", _title(k("uri-directory"), str(m["root"])), "not a regular file (a directory)"),
        Case("uri-empty", "titles", _title(k("uri-empty"), ""), "empty media URI"),
        # --- media
        Case("empty-file", "titles", _title(k("empty-file"), str(m["empty"])), "zero-length file"),
        Case("garbage-file", "titles", _title(k("garbage-file"), str(m["garbage"])), "FFmpeg cannot open it"),
        Case("truncated-file", "titles", _title(k("truncated-file"), str(m["truncated"])), "FFmpeg cannot open it"),
        Case("header-100000x100000", "titles", _title(k("header-100000x100000"), str(m["huge"])),
             "FFmpeg cannot open it"),
        Case("header-16000x16000", "titles", _title(k("header-16000x16000"), str(m["big"])),
             "declares frames of 16000x16000 pixels, over the limit"),
        Case("24-hour-duration", "titles", _title(k("24-hour-duration"), str(m["day"])),
             "86401 s long, over max_media_duration_s=43200"),
        Case("audio-only", "titles", _title(k("audio-only"), str(m["audio_only"])), "no video stream (streams: audio)"),
        Case("unsupported-codec", "titles", _title(k("unsupported-codec"), str(m["codec"])),
             "FFmpeg has no decoder for its video codec"),
        Case("playlist-to-outside", "titles", _title(k("playlist-to-outside"), str(m["playlist"])),
             "a playlist or concat script, not media"),
        # --- subtitles
        Case("subtitles-million-cues", "titles", _title(k("subtitles-million-cues"), good,
                                                         subtitles_uri=str(m["million"])),
             "1000000 cues, over the limit of 100000"),
        Case("subtitles-undeclared-encoding", "titles", _title(k("subtitles-undeclared-encoding"), good,
                                                                subtitles_uri=str(m["latin1"])),
             "not UTF-8 (byte 35); pass its encoding"),
        Case("subtitles-unknown-encoding", "titles", _title(k("subtitles-unknown-encoding"), good,
                                                             subtitles_uri=str(m["latin1"]), subtitle_encoding="klingon"),
             "unknown text encoding 'klingon'"),
        Case("subtitles-are-the-video", "titles", _title(k("subtitles-are-the-video"), good, subtitles_uri=good),
             "not UTF-8"),
        # a codec that is not a text encoding (bytes to bytes): before, LookupError crashed the live agent
        Case("subtitles-rot13", "titles", _title(k("subtitles-rot13"), good, subtitles_uri=str(m["latin1"]),
                                                 subtitle_encoding="rot13"), "'rot13' is not a text encoding"),
        Case("live-subtitles-hex", "live_segments",
             LiveSegment(event_id=k("live-subtitles-hex"), segment_index=0, uri=good, start_s=0.0,
                         subtitles_uri=str(m["latin1"]), subtitle_encoding="hex_codec").to_bytes(),
             "'hex_codec' is not a text encoding"),
        # what is echoed back is cut (a 3 MB schema name made a 3 MB log line) and never shows a URL's password
        Case("schema-3mb", "titles", msgpack.packb({**valid, "schema": "A" * 3_000_000}), "characters in all)"),
        Case("url-password", "titles", _title(k("url-password"), "http://me:url-password@example.com/a.mp4"),
             "http://me:***@example.com/a.mp4: scheme 'http' is not supported"),
        # --- live segments
        Case("live-negative-segment", "live_segments",
             LiveSegment(event_id=k("live-negative-segment"), segment_index=-1, uri=good, start_s=0.0).to_bytes(),
             "field 'segment_index' is -1; it counts from 0"),
        Case("live-nan-start", "live_segments",
             LiveSegment(event_id=k("live-nan-start"), segment_index=0, uri=good, start_s=float("nan")).to_bytes(),
             "field 'start_s' is nan"),
        Case("live-fifo", "live_segments",
             LiveSegment(event_id=k("live-fifo"), segment_index=0, uri=str(m["fifo"]), start_s=0.0).to_bytes(),
             "segment 0 skipped: MediaURIError"),
        # a segment is probed as a title is (before: decoded whatever its size and length)
        Case("live-16000x16000", "live_segments",
             LiveSegment(event_id=k("live-16000x16000"), segment_index=0, uri=str(m["big"]), start_s=0.0).to_bytes(),
             "declares frames of 16000x16000 pixels, over the limit"),
        Case("live-24-hours", "live_segments",
             LiveSegment(event_id=k("live-24-hours"), segment_index=0, uri=str(m["day"]), start_s=0.0).to_bytes(),
             "86401 s long, over max_media_duration_s=43200"),
        # --- shots (encode stage)
        Case("shot-negative-index", "shots", _raw(ShotRef, **_shot_ref(k("shot-negative-index"), good, shot_index=-1)),
             "shot_index -1 outside 0..1"),
        Case("shot-huge-index", "shots", _raw(ShotRef, **_shot_ref(k("shot-huge-index"), good, shot_index=2**62)),
             f"field 'shot_index' is {2**62}, over 1,000,000,000"),
        Case("shot-index-past-the-title", "shots", _raw(ShotRef, **_shot_ref(k("shot-index-past-the-title"), good,
                                                                            shot_index=2)), "shot_index 2 outside 0..1"),
        Case("shot-zero-n-shots", "shots", _raw(ShotRef, **_shot_ref(k("shot-zero-n-shots"), good, n_shots=0)),
             "n_shots=0"),
        Case("shot-nan-time", "shots", _raw(ShotRef, **_shot_ref(k("shot-nan-time"), good, start_s=float("nan"))),
             "field 'start_s' is nan"),
        Case("shot-beyond-the-media", "shots", _raw(ShotRef, **_shot_ref(k("shot-beyond-the-media"), good, start_s=1000.0,
                                                                        end_s=1001.0, start_frame=24000, end_frame=24024)),
             "shot 0 spans 1000.000-1001.000 s, but the video ends at"),
        Case("shot-media-outside", "shots", _raw(ShotRef, **_shot_ref(k("shot-media-outside"), "/etc/hostname")),
             "outside the allowed media_roots"),
        # --- encoded shots (fuse stage)
        Case("encoded-nan", "encoded", _raw(EncodedShot, **_encoded(k("encoded-nan"), video=vec_to_bytes(nan))),
             "video contains NaN or inf"),
        Case("encoded-wrong-width", "encoded",
             _raw(EncodedShot, **_encoded(k("encoded-wrong-width"), video=vec_to_bytes(np.ones(100)))),
             f"video has 400 bytes, expected {4 * LAY.video}"),
        Case("encoded-unknown-profile", "encoded",
             _raw(EncodedShot, **_encoded(k("encoded-unknown-profile"), profile="../../etc")), "unknown encoder profile"),
        # --- several encoded shots in one record (what the encode stage sends; ingestion systems may)
        Case("encoded-shots-two-titles", "encoded", _raw(EncodedShots, title_id=k("encoded-shots-two-titles"), shots=[
            _raw(EncodedShot, **_encoded(k("encoded-shots-two-titles"))),
            _raw(EncodedShot, **_encoded(k("other"), shot_index=1))]), "one record carries one title's shots"),
        Case("encoded-shots-none", "encoded", _raw(EncodedShots, title_id=k("encoded-shots-none"), shots=[]),
             "holds no shot"),
        Case("encoded-shots-one-bad", "encoded", _raw(EncodedShots, title_id=k("encoded-shots-one-bad"), shots=[
            _raw(EncodedShot, **_encoded(k("encoded-shots-one-bad"))),
            _raw(EncodedShot, **_encoded(k("encoded-shots-one-bad"), shot_index=1, audio=vec_to_bytes(np.ones(3))))]),
             "shot 1 (index 1): audio has 12 bytes"),
        # --- fused shots (contextualise stage)
        Case("fused-inf", "fused", _raw(FusedShot, **_fused(k("fused-inf"), fused=vec_to_bytes(inf))),
             "fused contains NaN or inf"),
        Case("fused-wrong-width", "fused",
             _raw(FusedShot, **_fused(k("fused-wrong-width"), fused=vec_to_bytes(np.ones(7)))), "fused has 28 bytes"),
        Case("fused-huge-index", "fused", _raw(FusedShot, **_fused(k("fused-huge-index"), shot_index=10**12)),
             "over 1,000,000,000"),
        Case("fused-index-past-the-title", "fused", _raw(FusedShot, **_fused(k("fused-index-past-the-title"),
                                                                             shot_index=2)), "outside 0..1"),
        # --- several fused shots in one record (what the fuse stage sends)
        Case("fused-shots-two-titles", "fused", _raw(FusedShots, title_id=k("fused-shots-two-titles"), shots=[
            _raw(FusedShot, **_fused(k("fused-shots-two-titles"))), _raw(FusedShot, **_fused(k("other"), shot_index=1))]),
             "one record carries one title's shots"),
        Case("fused-shots-none", "fused", _raw(FusedShots, title_id=k("fused-shots-none"), shots=[]), "holds no shot"),
        Case("fused-shots-one-bad", "fused", _raw(FusedShots, title_id=k("fused-shots-one-bad"), shots=[
            _raw(FusedShot, **_fused(k("fused-shots-one-bad"))),
            _raw(FusedShot, **_fused(k("fused-shots-one-bad"), shot_index=1, fused=vec_to_bytes(inf)))]),
             "shot 1 of 'hx-"),
        Case("fused-shots-not-bytes", "fused", _raw(FusedShots, title_id=k("fused-shots-not-bytes"), shots=[7]),
             "field 'shots[]' must be bytes"),
        # --- shapes the field checks did not foresee: before 2026-12-08 a TypeError no stage catches, the worker
        # stopped and stopped again on the same record after each restart
        Case("schema-a-list", "shots", msgpack.packb({**msgpack.unpackb(_raw(ShotRef, **_shot_ref(
            k("schema-a-list"), good))), "schema": [1]}), "field 'schema' must be a string"),
        Case("bytes-and-str-keys", "encoded", msgpack.packb({**msgpack.unpackb(_raw(EncodedShot, **_encoded(
            k("bytes-and-str-keys")))), b"x": 1, "y": 2}, use_bin_type=True), "has unknown fields [b'x', 'y']"),
        Case("live-meta-bytes-keys", "live_segments", _raw(LiveSegment, event_id=k("live-meta-bytes-keys"),
                                                            segment_index=0, uri=good, start_s=0.0,
                                                            meta={b"a": 1, "b": 2}), "meta has unknown keys"),
    ]
    return cases


def test_hostile_inputs_are_dead_lettered_and_the_worker_goes_on(kafka_stack, worker, offline_model, media):
    names = Topics.from_settings(kafka_stack)
    run = uuid.uuid4().hex[:6]
    cases = _cases(run, media)
    assert len({c.name for c in cases}) == len(cases) >= 30
    # n_shots that disagrees with the title's other shots: shot 0 says 2, shot 1 says 5
    nkey = f"hx-{run}-n-shots-disagree"
    huge_key = f"hx-{run}-huge-key-".encode().ljust(3 * 2**20, b"k")
    disagree = [_raw(FusedShot, **_fused(nkey, n_shots=2)),
                _raw(FusedShot, **_fused(nkey, shot_index=1, start_s=1.0, end_s=2.0, n_shots=5))]

    dead, tail = Tail(kafka_stack, names.deadletter), Tail(kafka_stack, names.embeddings)
    t0 = time.monotonic()
    p = producer(kafka_stack)
    try:
        # refused before any worker sees it: the producer's own limit, then the broker's
        with pytest.raises(Exception, match="MessageSizeTooLarge|larger than the maximum request size") as err:
            p.send(names.titles, key=b"too-big", value=b"\x00" * (MAX_MESSAGE_BYTES + 128 * 1024)).get(timeout=30)
        assert "max_request_size" in str(err.value) or "MessageSizeTooLarge" in type(err.value).__name__
        with pytest.raises(SchemaError, match=f"over the {MAX_MESSAGE_BYTES} limit"):  # publishers using to_bytes
            TitleRequest(title_id="t", uri="x", meta={"synopsis": "x" * 10 * 1024 * 1024}).to_bytes()
        for case in cases:
            p.send(getattr(names, case.topic), key=f"hx-{run}-{case.name}".encode(), value=case.payload)
        for raw in disagree:
            p.send(names.fused, key=nkey.encode(), value=raw)
        # a key of 3 MiB and a value that is no message: the letter keeps 1 KiB of the key (before, it was too large
        # to pack, and the worker stopped on it again and again)
        p.send(names.encoded, key=huge_key, value=b"\xc1 not msgpack")
        p.flush()
    finally:
        p.close()
    from kafka import KafkaProducer
    from kafka.errors import MessageSizeTooLargeError

    lax = KafkaProducer(bootstrap_servers=kafka_stack.kafka_bootstrap, max_request_size=16 * 1024 * 1024)
    try:
        with pytest.raises(MessageSizeTooLargeError):  # the broker's message.max.bytes
            lax.send(names.titles, key=b"too-big", value=b"\x00" * (8 * 1024 * 1024)).get(timeout=30)
    finally:
        lax.close()

    # then good titles: one with audio, one without (video-only media is not an error)
    good_ids = {f"hx-{run}-good": 2, f"hx-{run}-video-only": 2}
    publish_title(kafka_stack, media["good"], title_id=f"hx-{run}-good", meta={"title": "A good one"})
    publish_title(kafka_stack, media["video_only"], title_id=f"hx-{run}-video-only")

    expect = {f"hx-{run}-{c.name}".encode(): c.reason for c in cases} | {nkey.encode(): "disagrees with 2",
                                                                         huge_key[:1024]: "key of 3145728 bytes is cut"}
    letters: dict[bytes, list[DeadLetter]] = defaultdict(list)
    for rec in dead.poll(timeout_s=240, stop=lambda: set(expect) <= set(letters)):
        letter = decode(rec.value, expect=DeadLetter)
        if letter.key and letter.key.startswith(f"hx-{run}-".encode()):
            letters[letter.key].append(letter)
    finals: dict[str, set[int]] = defaultdict(set)
    for rec in tail.poll(timeout_s=240, stop=lambda: all(len(finals[t]) >= n for t, n in good_ids.items())):
        e = decode(rec.value, expect=ContextualEmbedding)
        if e.title_id in good_ids and e.final:
            finals[e.title_id].add(e.shot_index)
            assert np.isfinite(e.vector()).all()
    dead.close()
    tail.close()
    took = time.monotonic() - t0

    report = [f"{c.name:32s} {letters[k][0].stage if letters.get(k) else '-':14s} "
              f"{letters[k][0].reason[:160] if letters.get(k) else 'NO DEAD LETTER'}"
              for c, k in ((c, f"hx-{run}-{c.name}".encode()) for c in cases)]
    print(f"\n{len(cases)} hostile cases, {took:.0f}s\n" + "\n".join(report))
    missing = [k for k in expect if k not in letters]
    assert not missing, f"no dead letter for {missing}\n" + "\n".join(report)
    for key, why in expect.items():
        reasons = [x.reason for x in letters[key]]
        assert any(why in r for r in reasons), (key, why, reasons)
    assert len(letters[nkey.encode()]) == 1, "only the shot that contradicts its title is rejected"
    assert {t: sorted(s) for t, s in finals.items()} == {t: list(range(n)) for t, n in good_ids.items()}, finals
    assert not [k for k in letters if any(k == t.encode() for t in good_ids)], "a good title was dead-lettered"
    assert worker.poll() is None, "the worker must survive every hostile input"
    assert all(len(x.reason) <= 2000 for v in letters.values() for x in v)
    lines = (kafka_stack.state_dir / "worker.log").read_text(errors="replace").splitlines()
    assert max(map(len, lines)) < 10_000 and not [x for x in lines if "url-password" in x]
    import urllib.request

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{kafka_stack.worker_web_port}/metrics", timeout=10).read()
    assert b"# TYPE mediafm_retries_total counter" in metrics, "retries are visible on the worker's /metrics"


def test_a_live_event_whose_last_segment_cannot_be_read_still_ends(kafka_stack, worker, offline_model, media):
    """The last segment of an event (last=true) is a zero-length file. Before, it was dead-lettered as "skipped"
    like any other and the event never ended: the shot still open was never published, no shot carried the
    event's n_shots, so its last live_right_context shots never got a final and its held shots stayed. Now the
    event ends with the media before it: every shot cut gets one provisional and one final."""
    from mediafm.publish import cut_segments

    names = Topics.from_settings(kafka_stack)
    eid = f"hx-{uuid.uuid4().hex[:6]}-last-segment-empty"
    film = make_film(media["root"] / f"{eid}.mp4", shots=[30, 36, 24, 40, 30], fps=24, size=(160, 96),
                     first_source=1, audio=["tone:330", "noise", "tone:660", "noise", "tone:220"])
    segs = cut_segments(film.path, media["root"] / eid, 1.0)
    assert len(segs) >= 5
    dead, tail = Tail(kafka_stack, names.deadletter), Tail(kafka_stack, names.embeddings)
    p = producer(kafka_stack)
    try:
        for k, (path, start) in enumerate(segs):
            last = k == len(segs) - 1
            p.send(names.live_segments, key=eid.encode(), value=LiveSegment(
                event_id=eid, segment_index=k, uri=str(media["empty"] if last else path), start_s=start,
                last=last).to_bytes())
        p.flush()
    finally:
        p.close()
    kinds: dict[int, list[bool]] = defaultdict(list)
    ends: set[int] = set()

    def ended() -> bool:
        return bool(ends) and all(True in kinds[i] for i in range(max(ends)))

    try:
        for rec in tail.poll(timeout_s=240, stop=ended):
            e = decode(rec.value, expect=ContextualEmbedding)
            if e.title_id == eid:
                kinds[e.shot_index].append(e.final)
                if e.n_shots is not None:
                    ends.add(e.n_shots)
        reasons = [letter.reason for letter in (decode(r.value, expect=DeadLetter) for r in dead.to_end(timeout_s=60))
                   if letter.key == eid.encode()]
    finally:
        dead.close()
        tail.close()
    (n,) = ends
    assert n >= 4, "the film's 5 shots, less any the detector merges: the last second is inside the fifth"
    assert {i: sorted(k) for i, k in kinds.items()} == {i: [False, True] for i in range(n)}
    assert len(reasons) == 1 and f"segment {len(segs) - 1} (its last) skipped" in reasons[0] \
        and "the event ends with the media before it" in reasons[0], reasons
    assert worker.poll() is None


def _five_shots(kafka_stack, media, key: str):
    """A 5-shot film for `key`, and a maker of its ShotRefs cut by hand: those in `bad` point at media no decoder
    reads."""
    frames, fps = [30, 36, 24, 40, 30], 24
    film = make_film(media["root"] / f"{key}.mp4", shots=frames, fps=fps, size=(160, 96), first_source=2,
                     audio=["tone:330", "noise", "tone:660", "noise", "tone:220"])
    starts = np.concatenate([[0], np.cumsum(frames)])

    def make(*, bad: set[int], kind: str, n_shots: list, request_id: str = "") -> list[ShotRef]:
        return [ShotRef(title_id=key, shot_index=i, start_s=starts[i] / fps, end_s=starts[i + 1] / fps,
                        start_frame=int(starts[i]), end_frame=int(starts[i + 1]),
                        media=[str(media["garbage"] if i in bad else film.path)], media_start_s=0.0, text="",
                        title_text="", profile=kafka_stack.encoder_profile, n_shots=n_shots[i], kind=kind,
                        request_id=request_id) for i in range(5)]

    return make


def _send(kafka_stack, topic: str, key: str, messages) -> None:
    p = producer(kafka_stack)
    try:
        for m in messages:
            p.send(topic, key=key.encode(), value=m.to_bytes())
        p.flush()
    finally:
        p.close()


def test_a_live_event_whose_last_shots_the_encoder_refuses_still_ends(kafka_stack, worker, offline_model, media):
    """A live event of 5 shots whose last two (those of its last segment, carrying n_shots) point at media no
    decoder reads, so the encode stage dead-letters them. Before, nothing told the live stage: no shot it got
    carried n_shots, the event never ended, and shots 0-2 never had a final (they wait for 16 shots of right
    context, or the end). Now the encode stage sends a ShotsRefused in their place, the fuse stage passes it on,
    and the live stage ends the event: shots 0-2 each get one provisional and one final, 3 and 4 none."""
    names = Topics.from_settings(kafka_stack)
    eid = f"hx-{uuid.uuid4().hex[:6]}-last-shots-refused"
    make = _five_shots(kafka_stack, media, eid)
    dead, tail = Tail(kafka_stack, names.deadletter), Tail(kafka_stack, names.embeddings)
    _send(kafka_stack, names.shots, eid, make(bad={3, 4}, kind="live", n_shots=[None, None, None, 5, 5]))
    kinds: dict[int, list[bool]] = defaultdict(list)
    try:
        for rec in tail.poll(timeout_s=240, stop=lambda: all(True in kinds[i] for i in range(3))):
            e = decode(rec.value, expect=ContextualEmbedding)
            if e.title_id == eid:
                kinds[e.shot_index].append(e.final)
        letters = [x for x in (decode(r.value, expect=DeadLetter) for r in dead.to_end(timeout_s=60))
                   if x.key == eid.encode()]
    finally:
        dead.close()
        tail.close()
    assert {i: sorted(k) for i, k in kinds.items()} == {i: [False, True] for i in range(3)}
    assert sorted(x.stage for x in letters) == ["encode", "encode"], [(x.stage, x.reason) for x in letters]
    assert worker.poll() is None


def test_a_title_whose_shots_the_encoder_refuses_is_given_up_with_one_dead_letter(kafka_stack, worker, offline_model,
                                                                                   media):
    """A title of 5 shots whose last two point at media no decoder reads. Before, the encode stage dead-lettered
    those two and nothing took their place: the contextualise stage waited for them for ever, its progress record
    and held shots kept, and no word was said for the title. Now a ShotsRefused takes their place: one dead letter
    from the contextualise stage names the title, the shots and the reason, and no final is made of it. Published
    again with good media (a new request), the title is embedded."""
    import urllib.request

    names = Topics.from_settings(kafka_stack)
    tid = f"hx-{uuid.uuid4().hex[:6]}-title-shots-refused"
    make = _five_shots(kafka_stack, media, tid)

    def send(request_id: str, bad: set[int]) -> None:
        _send(kafka_stack, names.shots, tid, make(bad=bad, kind="title", n_shots=[5] * 5, request_id=request_id))

    dead, tail = Tail(kafka_stack, names.deadletter), Tail(kafka_stack, names.embeddings)
    letters, finals = [], defaultdict(set)
    try:
        send("r1", {3, 4})
        for rec in dead.poll(timeout_s=240, stop=lambda: any(x.stage == "contextualise" for x in letters)):
            letter = decode(rec.value, expect=DeadLetter)
            if letter.key == tid.encode():
                letters.append(letter)
        send("r2", set())
        for rec in tail.poll(timeout_s=240, stop=lambda: len(finals["r2"]) == 5):
            e = decode(rec.value, expect=ContextualEmbedding)
            if e.title_id == tid and e.final:
                finals[e.request_id].add(e.shot_index)
        letters += [x for x in (decode(r.value, expect=DeadLetter) for r in dead.to_end(timeout_s=60))
                    if x.key == tid.encode()]  # any after the first of the contextualise stage
    finally:
        dead.close()
        tail.close()
    assert sorted(x.stage for x in letters) == ["contextualise", "encode", "encode"], [(x.stage, x.reason)
                                                                                        for x in letters]
    (given_up,) = [x.reason for x in letters if x.stage == "contextualise"]
    assert re.match(rf"title '{tid}' \(request 'r1', 5 shots\) given up: shots? 3(-4)? refused at the encode stage: ",
                    given_up), given_up  # one run of shots 3-4, or two where a batch ended between them
    assert "2 of its shots were refused before this stage" in given_up and "publish the title again" in given_up
    assert dict(finals) == {"r2": {0, 1, 2, 3, 4}}, "none of the publication given up; all of the next"
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{kafka_stack.worker_web_port}/metrics", timeout=10).read()
    (count,) = [float(line.split()[1]) for line in metrics.decode().splitlines()
                if line.startswith("mediafm_titles_given_up_total ")]
    assert count >= 1, "counted on the worker's /metrics"
    assert worker.poll() is None


def test_a_title_published_again_without_a_request_id_is_embedded_again(kafka_stack, worker, offline_model, media):
    """An ingestion system that leaves request_id out and publishes a title again (the file replaced, say): before,
    every shot of the second publication was skipped as a redelivery of the first, with no dead letter and no
    embedding. The worker names such a request after its record, so each publication gets its finals."""
    names = Topics.from_settings(kafka_stack)
    tid = f"hx-{uuid.uuid4().hex[:6]}-no-request-id"
    tail = Tail(kafka_stack, names.embeddings)
    finals: dict[int, int] = defaultdict(int)

    def publish_and_wait(times: int) -> None:
        p = producer(kafka_stack)
        try:
            p.send(names.titles, key=tid.encode(), value=_title(tid, str(media["good"])))
            p.flush()
        finally:
            p.close()
        for rec in tail.poll(timeout_s=240, stop=lambda: len(finals) == 2 and min(finals.values()) >= times):
            e = decode(rec.value, expect=ContextualEmbedding)
            if e.title_id == tid and e.final:
                finals[e.shot_index] += 1

    try:
        publish_and_wait(1)
        assert dict(finals) == {0: 1, 1: 1}
        publish_and_wait(2)
    finally:
        tail.close()
    assert dict(finals) == {0: 2, 1: 2}, "the second publication embedded too"
    assert worker.poll() is None
