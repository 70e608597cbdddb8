"""Timed text, help text and media an audit found wrong (2026-12): each test says what went wrong before."""

from __future__ import annotations

import argparse
import json
from fractions import Fraction

import numpy as np
import pytest

from mediafm.media.subtitles import Cue, load_subtitles, write_webvtt


def _vtt(tmp_path, body: str, name: str = "cues.vtt"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return load_subtitles(path)


def test_webvtt_cue_identifiers_are_not_text(tmp_path):
    """An identifier line before a cue's timing line named the cue; it was glued onto the previous cue's text
    ("First cue scene-2")."""
    cues = _vtt(tmp_path, "WEBVTT\n\nintro\n00:00:00.500 --> 00:00:01.500\nFirst cue\n\n"
                          "scene-2\n00:00:02.500 --> 00:00:03.500\nSecond cue\n\n"
                          "3\n00:04.500 --> 00:05.500 line:0 position:20%\nThird cue\n")
    assert cues == [Cue(0.5, 1.5, "First cue"), Cue(2.5, 3.5, "Second cue"), Cue(4.5, 5.5, "Third cue")]


def test_webvtt_character_references_are_decoded(tmp_path):
    """`&amp;` and `&lt;3` went to the text encoder as written. Tags go first: `&lt;b&gt;` is text, not a tag."""
    cues = _vtt(tmp_path, "WEBVTT\n\n00:00:00.500 --> 00:00:01.500\n<v Roger>Fish &amp; chips &lt;3</v>\n"
                          "&lt;b&gt;&nbsp;caf&#233; &#x263A; &gt; <i>ok</i>\n")
    assert cues == [Cue(0.5, 1.5, "Fish & chips <3 <b> café \u263a > ok")]


def test_webvtt_note_style_and_region_blocks_are_passed_over(tmp_path):
    cues = _vtt(tmp_path, "WEBVTT - a title\nKind: captions\n\nSTYLE\n::cue { color: yellow }\n\n"
                          "REGION\nid:fred width:40%\n\nNOTE a comment\nover two lines\n\n"
                          "00:00:00.500 --> 00:00:01.500 region:fred\n<c.yellow>First</c> <00:00:01.000>karaoke\n\n"
                          "NOTE\nanother\n\n00:00:02.000 --> 00:00:03.000\nSecond\n")
    assert cues == [Cue(0.5, 1.5, "First karaoke"), Cue(2.0, 3.0, "Second")]


def test_a_cue_line_of_digits_stays_in_its_cue(tmp_path):
    """A line of digits in a cue's text is text, in WebVTT (only a line before the timing line names a cue)
    and in SRT (whose cue numbers are such lines)."""
    vtt = _vtt(tmp_path, "WEBVTT\n\n1\n00:00:01.000 --> 00:00:02.000\nThe year was\n1984\n\n"
                         "2\n00:00:03.000 --> 00:00:04.000\n42\n")
    srt = _vtt(tmp_path, "1\n00:00:01,000 --> 00:00:02,000\nThe year was\n1984\n\n"
                         "2\n00:00:03,000 --> 00:00:04,000\n42\n\n", name="cues.srt")
    assert vtt == srt == [Cue(1.0, 2.0, "The year was 1984"), Cue(3.0, 4.0, "42")]


def test_written_webvtt_reads_back_the_same_text(tmp_path):
    """write_webvtt (a live event's per-segment timed text) writes `&` `<` `>` as references, so text that
    looks like a tag or a reference reads back as it was."""
    cues = [Cue(0.5, 1.5, "Fish & chips <3"), Cue(2.0, 3.0, "AT&amp;T <b>bold</b> -->")]
    assert load_subtitles(write_webvtt(cues, tmp_path / "seg.vtt")) == cues


def test_the_meta_example_in_embed_help_is_accepted():
    """`mediafm embed --help` showed a --meta document with "kind": "title", which the command refuses
    (meta has unknown keys ['kind'])."""
    from mediafm.cli import build_parser
    from mediafm.schema import TitleMeta

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    example = json.loads(sub.choices["embed"].epilog.split("--meta JSON:", 1)[1])
    meta = TitleMeta.from_dict(example, title_id=example["title_id"])
    assert meta.tags == ["..."] and meta.genres == [4]


# Media made with the ffmpeg CLI (the audit's), made here with PyAV: anamorphic pixels, Matroska without
# per-track DURATION tags, a last frame with no duration.

def _video(path, *, sar=None, rotation=None, n=10, w=64, h=48):
    """`n` frames of w x h H.264 at 25 fps, each a flat grey; `sar` the pixels' aspect, `rotation` a display
    matrix (counter-clockwise degrees), as `-vf setsar=16/11` and `-display_rotation` write them."""
    import av

    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        if sar is not None:
            v.codec_context.sample_aspect_ratio = sar
        if rotation is not None:
            v.set_display_rotation(rotation)
        for i in range(n):
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), i * 20, np.uint8), format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize(("rotation", "shown", "thumb", "small"), [
    (None, (93, 48), (66, 128, 3), (132, 256, 3)),  # 64 * 16/11 = 93.1 wide: 128 x 66 as a player shows it
    (90, (48, 93), (248, 128, 3), (496, 256, 3)),  # the stretched picture, turned a quarter: 48 x 93
])
def test_anamorphic_video_is_sized_as_a_player_shows_it(tmp_path, rotation, shown, thumb, small):
    """64x48 stored with 16:11 pixels (`ffmpeg -vf setsar=16/11`; 320x240 so is shown 465x240). Before: probe
    said 64x48 and thumbnails were 128x96 (with the 90-degree display matrix, 48x64 and 128 wide x 170): the
    stored shape, the picture squeezed; the content detector's frames too (256 wide x 192, 340)."""
    from mediafm.media.decode import probe
    from mediafm.media.shots import detect_shots, detector_frames

    path = _video(tmp_path / "sar.mp4", sar=Fraction(16, 11), rotation=rotation)
    info = probe(path)
    assert (info.width, info.height) == shown
    assert detect_shots(path, detector="content")[0].thumbnail.shape == thumb
    _, _, frame, th = next(detector_frames(path, "content"))
    assert (frame.shape, th.shape) == (small, thumb)
    square = _video(tmp_path / "square.mp4", rotation=rotation)  # no SAR written: square pixels, as before
    assert (probe(square).width, probe(square).height) == ((64, 48) if rotation is None else (48, 64))


def _matroska_without_duration_tags(path, *, video_s: float, audio_s: float):
    """H.264 (`video_s`, 25 fps) and, when `audio_s`, AAC Matroska, its per-track DURATION tags renamed, as a
    muxer other than FFmpeg's leaves them out; its container duration (Segment Info) stays. No CRC-32 elements,
    so the renamed tags read back as FFmpeg's own writes them."""
    import av

    with av.open(str(path), "w", format="matroska", options={"write_crc32": "0"}) as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=8000, layout="mono") if audio_s else None
        for i in range(round(video_s * 25)):
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 9 % 256, np.uint8), "rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            for k in range(int(audio_s * 8000) // 1024):
                f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
                f.sample_rate, f.pts = 8000, k * 1024
                for p in a.encode(f):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    data = path.read_bytes()
    assert data.count(b"DURATION") == (2 if audio_s else 1)
    path.write_bytes(data.replace(b"DURATION", b"DURATIOX"))  # same length: no element's size changes
    with av.open(str(path)) as c:
        assert all("DURATION" not in s.metadata for s in c.streams) and c.duration
    return path


def test_audio_past_the_video_is_not_a_truncated_matroska(tmp_path, caplog):
    """1 s of video, 3 s of audio, no DURATION tags: the container's 3 s are the audio's. Before: "the file
    declares 3.07 s of video but it ends at 1.00 s ... a truncated file?", though nothing was missing."""
    from mediafm.media.shots import detect_shots

    path = _matroska_without_duration_tags(tmp_path / "long_audio.mkv", video_s=1.0, audio_s=3.0)
    with caplog.at_level("WARNING", logger="mediafm.media.decode"):
        shots = detect_shots(path, detector="content")
    assert not caplog.records
    assert shots[-1].end_s == pytest.approx(1.0, abs=0.01)


def test_a_truncated_matroska_without_duration_tags_and_only_video_is_reported(tmp_path, caplog):
    """With no other track, the container's duration is the video's: cut short, it is still reported (and so
    is one with DURATION tags: test_media_hostile.test_a_truncated_file_is_reported)."""
    from mediafm.media.shots import detect_shots

    full = _matroska_without_duration_tags(tmp_path / "full.mkv", video_s=4.0, audio_s=0)
    cut = tmp_path / "cut.mkv"
    data = full.read_bytes()
    cut.write_bytes(data[:len(data) * 4 // 10])
    with caplog.at_level("WARNING", logger="mediafm.media.decode"):
        shots = detect_shots(full, detector="content")
    assert shots[-1].end_s == pytest.approx(4.0, abs=0.01) and not caplog.records
    with caplog.at_level("WARNING", logger="mediafm.media.decode"):
        shots = detect_shots(cut, detector="content")
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.startswith(f"{cut}: the file declares 4.0") and "a truncated file?" in msg
    assert shots[-1].end_s < 3.0


def test_a_last_frame_without_duration_lasts_the_clocks_frame_period(tmp_path):
    """MJPEG in Matroska, frames 20 and 60 ms apart, no DefaultDuration and no block durations: the last frame
    has none, the average rate is unknown (the clock's nominal rate: 25) and the guessed rate is 50. Before:
    the last frame lasted 1/50 s (guessed_rate) though a frame without a timestamp is placed 1/25 s on."""
    import av

    from mediafm.media.decode import VideoEnd, iter_video_frames

    path = tmp_path / "vfr.mkv"
    tb = Fraction(1, 1000)
    with av.open(str(path), "w", format="matroska") as c:
        v = c.add_mux_stream("mjpeg", width=64, height=48)  # no rate: no DefaultDuration
        v.time_base = tb
        enc = av.CodecContext.create("mjpeg", "w")
        enc.width, enc.height, enc.pix_fmt, enc.time_base = 64, 48, "yuvj420p", tb
        for i in range(20):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 9, np.uint8), format="rgb24")
            f = f.reformat(format="yuvj420p")
            f.pts, f.time_base = i // 2 * 80 + i % 2 * 20, tb
            for p in enc.encode(f):
                p.stream, p.time_base, p.duration = v, tb, 0
                c.mux(p)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.average_rate is None and s.guessed_rate == 50
        assert not list(c.decode(s))[-1].duration

    class Tap:
        def opened(self, base, rate, has_audio):
            self.rate = rate

        def frame(self, raw, frame, rot):
            pass

    tap, end = Tap(), VideoEnd()
    times = [t for _, t, _, _ in iter_video_frames(path, tap=tap, end=end)]
    assert tap.rate == 25 and len(times) == 20 and times[-1] == pytest.approx(0.74)
    assert end.end_s == pytest.approx(times[-1] + 1 / tap.rate)
