"""Films we did not make: odd streams, damaged files, joined recordings. Each file is made here by the ffmpeg
CLI the way a user's tools make it; each test says what went wrong before."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from mediafm.errors import MediaURIError, NoVideoError
from mediafm.media.decode import has_audio, iter_audio, probe
from mediafm.media.subtitles import container_subtitles
from mediafm.media.synthfilm import ffmpeg


def run_ffmpeg(*args) -> None:
    subprocess.run([ffmpeg(), "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """8 s of 160x90 test pattern at 25 fps with a 440 Hz tone (AAC, 44.1 kHz), and a 64x64 cover picture."""
    d = tmp_path_factory.mktemp("hostile")
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x90:r=25:d=8", "-f", "lavfi", "-i", "sine=f=440:r=44100:d=8",
               "-pix_fmt", "yuv420p", "-c:v", "libx264", "-g", "50", "-c:a", "aac", "-shortest", d / "base.mp4")
    run_ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x64:d=1", "-frames:v", "1", d / "cover.png")
    return d


def test_an_audio_file_with_cover_art_is_not_a_film(base):
    """Before: the cover picture was taken for the video: one shot of 0.04 s, its audio too short to count."""
    out = base / "song.m4a"
    run_ffmpeg("-i", base / "base.mp4", "-i", base / "cover.png", "-map", "0:a", "-map", "1:v", "-c:a", "copy",
               "-c:v", "png", "-disposition:v:0", "attached_pic", out)
    with pytest.raises(NoVideoError, match=r"no video stream .* \(its picture is cover art, not video\)"):
        probe(out)


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_picture_before_the_film_is_passed_over(base, container):
    """mp4 marks the picture an attached picture; Matroska keeps it as a video stream, the film marked
    default. Before: the 64x64 picture was taken for the film."""
    out = base / f"cover_first.{container}"
    run_ffmpeg("-i", base / "base.mp4", "-i", base / "cover.png", "-map", "1:v", "-map", "0:v", "-map", "0:a",
               "-c", "copy", "-c:v:0", "png", "-disposition:v:0", "attached_pic", "-disposition:v:1", "default", out)
    info = probe(out)
    assert (info.width, info.height, info.has_audio) == (160, 90, True)


def test_the_default_audio_stream_is_the_one_heard(base):
    """A silent commentary track first, the film's sound second and marked default (as a player picks it).
    Before: the first stream was read, and every shot's audio was silence."""
    out = base / "two_tracks.mkv"
    run_ffmpeg("-i", base / "base.mp4", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-map", "0:v",
               "-map", "1:a", "-map", "0:a", "-c:v", "copy", "-c:a", "aac", "-shortest", "-disposition:a:0", "0",
               "-disposition:a:1", "default", out)
    x = np.concatenate([chunk for _, _, chunk in iter_audio(out)])
    assert len(x) > 7 * 44100 and np.sqrt(np.mean(x[44100:] ** 2)) > 0.05  # the tone: 0.088; silence: 0


def test_other_readers_of_a_file_keep_the_decoders_guards(base, tmp_path):
    """A playlist naming a file elsewhere: the audio check and the subtitle reader opened it with FFmpeg's
    defaults, and so read the file it names."""
    (tmp_path / "elsewhere").mkdir()
    run_ffmpeg("-i", base / "base.mp4", "-c", "copy", "-f", "mpegts", tmp_path / "elsewhere" / "secret.ts")
    pl = tmp_path / "film.mp4"
    pl.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:8.0,\n{tmp_path / 'elsewhere' / 'secret.ts'}\n"
                  "#EXT-X-ENDLIST\n")
    with pytest.raises(MediaURIError, match="a playlist or concat script, not media"):
        has_audio(pl)
    assert container_subtitles(pl) == []


def _tone_at(x: np.ndarray, rate: int, t0: float, t1: float) -> float:
    """The strongest frequency (Hz) of samples [t0, t1) s, or 0.0 for silence."""
    seg = x[int(t0 * rate):int(t1 * rate)]
    if np.sqrt(np.mean(seg ** 2)) < 1e-3:
        return 0.0
    return float(np.argmax(np.abs(np.fft.rfft(seg))) * rate / len(seg))


def _audio(path) -> tuple[np.ndarray, int]:
    """The whole audio of a file by index: chunk (i, rate, x) put at i."""
    chunks = list(iter_audio(path))
    rate = chunks[0][1]
    out = np.zeros(max(i + len(x) for i, _, x in chunks), np.float32)
    for i, _, x in chunks:
        out[i:i + len(x)] = x
    return out, rate


@pytest.mark.parametrize("container", ["mkv", "ts"])
def test_audio_after_a_gap_stays_at_its_time(base, container):
    """440 Hz for 3 s, nothing from 3 to 4 s, 880 Hz from 4 s: the second tone plays at 4 s. Before: samples
    were counted on from the first, and everything after the gap came 1 s early."""
    out = base / f"gap.{container}"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x90:r=25:d=8", "-f", "lavfi",
               "-i", "aevalsrc=sin(2*PI*if(lt(t\\,3.5)\\,440\\,880)*t):s=44100:d=8",
               "-af", "aselect='not(between(t,3,4))'", "-pix_fmt", "yuv420p", "-c:v", "libx264",
               "-c:a", "pcm_s16le" if container == "mkv" else "aac", "-shortest", out)
    x, rate = _audio(out)
    start = probe(out)  # times from the container start, as the shots' (a TS starts at 1.4 s or so)
    assert start.duration_s > 7
    assert abs(_tone_at(x, rate, 1.0, 2.0) - 440) < 5
    assert _tone_at(x, rate, 3.2, 3.8) == 0.0, "the gap is silence"
    assert abs(_tone_at(x, rate, 4.2, 5.2) - 880) < 5
    assert len(x) > 7.9 * rate


def _overwrite_packets(path, stream_type: str, after_s: float, n: int) -> None:
    """Overwrite n packets of the first stream of `stream_type` from after_s with random bytes (sizes kept)."""
    import av

    with av.open(str(path)) as c:
        s = getattr(c.streams, stream_type)[0]
        spots = [(p.pos, p.size) for p in c.demux(s) if p.pts is not None and p.pos is not None
                 and float(p.pts * p.time_base) > after_s][:n]
    rng = np.random.default_rng(0)
    with open(path, "r+b") as f:
        for pos, size in spots:
            f.seek(pos)
            f.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())


def test_damaged_audio_packets_cost_their_own_samples_only(base, tmp_path, caplog):
    """Before: the first packet that did not decode ended the audio; every shot after it had none. The
    samples after the damage are where they were (a gap for the skipped packets), and the encode stage's
    passes, which stop early, say what they skipped too."""
    from mediafm.media.embed import iter_shot_media
    from mediafm.media.shots import Shot

    out = tmp_path / "bad_audio.mp4"
    out.write_bytes((base / "base.mp4").read_bytes())
    _overwrite_packets(out, "audio", 4.0, 3)
    with caplog.at_level("WARNING", logger="mediafm.media.decode"):
        x, rate = _audio(out)
    good, _ = _audio(base / "base.mp4")
    assert abs(len(x) - len(good)) < 1024
    np.testing.assert_allclose(x[5 * rate:7 * rate], good[5 * rate:7 * rate], atol=1e-3)
    assert "3 audio packets did not decode and were skipped" in caplog.text
    caplog.clear()
    shots = [Shot(0, 3.0, 5.0, 75, 125)]  # the pass stops after this shot, before the stream's end
    with caplog.at_level("WARNING", logger="mediafm.media.decode"):
        (m,) = iter_shot_media(out, shots, frames_per_shot=2, frame_size=32, audio_rate=16000, audio_window_s=2.0)
    assert m.audio is not None and len(m.audio) == 32000
    assert "audio packets did not decode and were skipped" in caplog.text


def test_a_long_damaged_stretch_ends_the_audio_not_the_title(base, tmp_path, caplog):
    """60 audio packets in a row that do not decode (1.4 s of AAC): the audio ends there, as a truncated
    file's does, and the video goes on."""
    from mediafm.media.decode import iter_video_frames

    out = tmp_path / "bad_audio_long.mp4"
    out.write_bytes((base / "base.mp4").read_bytes())
    _overwrite_packets(out, "audio", 2.0, 60)
    with caplog.at_level("WARNING", logger="mediafm.media.decode"):
        x, rate = _audio(out)
    assert 1.9 * rate < len(x) < 3.5 * rate
    assert "reading the audio stopped early (50 packets in a row did not decode)" in caplog.text
    assert [t for _, t, _, _ in iter_video_frames(out)][-1] > 7.8


def test_a_damaged_video_packet_costs_its_own_frames_only(base, tmp_path, caplog):
    """Before: decoding stopped at the first packet that did not decode, and the title ended there."""
    from mediafm.media.decode import iter_video_frames

    out = tmp_path / "bad_video.mp4"
    out.write_bytes((base / "base.mp4").read_bytes())
    _overwrite_packets(out, "video", 3.0, 2)
    with caplog.at_level("WARNING", logger="mediafm.media.decode"):
        times = [t for _, t, _, _ in iter_video_frames(out)]
    assert times[-1] > 7.8 and len(times) > 150
    assert "video packets did not decode and were skipped" in caplog.text


def test_recordings_joined_end_to_end_are_refused_with_the_fix(base, tmp_path):
    """Two MPEG-TS recordings concatenated: times run 0..8 s twice. Before: shots that end before they start,
    and frames taken from the wrong recording."""
    from mediafm.errors import CorruptMediaError
    from mediafm.media.shots import detect_shots

    ts = tmp_path / "one.ts"
    run_ffmpeg("-i", base / "base.mp4", "-c", "copy", ts)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(ts.read_bytes() * 2)
    with pytest.raises(CorruptMediaError, match=r"video timestamps go back from 7.\d\d s to 0.\d\d s: recordings "
                                                r"joined end to end\? .*ffmpeg -i IN -c copy OUT.mp4"):
        detect_shots(joined, detector="content")


def test_a_stream_whose_frame_size_changes_is_cut(tmp_path):
    """16:9 then 4:3 in one MPEG-TS (a broadcast switching format). Before: the content detector failed an
    assertion (scenedetect compares frames of one size), a traceback instead of shots."""
    from mediafm.media.shots import detect_shots

    a, b = tmp_path / "a.ts", tmp_path / "b.ts"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x90:r=25:d=4", "-pix_fmt", "yuv420p", "-c:v", "libx264", a)
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=s=120x90:r=25:d=4", "-pix_fmt", "yuv420p", "-c:v", "libx264",
               "-output_ts_offset", "4", b)
    both = tmp_path / "both.ts"
    both.write_bytes(a.read_bytes() + b.read_bytes())
    shots = detect_shots(both, detector="content")
    assert shots[0].start_s < 0.1 and shots[-1].end_s > 7.5
    assert any(abs(s.start_s - 4.0) < 0.2 for s in shots), "the cut where the picture changes"


def test_huge_frames_after_small_ones_are_not_decoded(tmp_path, caplog):
    """A decompression bomb: 1 s of 160x90, then frames of 9000x9000 (81 M pixels, over the 67 M limit). The
    probe sees only the first frame. Before: every frame was decoded at full size (805 MB for three of
    16000x16000 in a review's run)."""
    from mediafm.media.decode import iter_video_frames

    small, big, both = tmp_path / "small.mjpeg", tmp_path / "big.mjpeg", tmp_path / "both.mjpeg"
    run_ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=160x90:r=25:d=1", "-c:v", "mjpeg", "-f", "mjpeg", small)
    run_ffmpeg("-f", "lavfi", "-i", "color=c=white:s=9000x9000:r=1:d=2", "-c:v", "mjpeg", "-q:v", "31",
               "-f", "mjpeg", big)
    both.write_bytes(small.read_bytes() + big.read_bytes())
    film = tmp_path / "bomb.mkv"
    run_ffmpeg("-framerate", "25", "-i", both, "-c", "copy", film)
    assert probe(film).width == 160
    with caplog.at_level("WARNING", logger="mediafm.media.decode"):
        sizes = {(f.width, f.height) for _, _, f, _ in iter_video_frames(film)}
    assert sizes == {(160, 90)}
    assert "2 video packets did not decode and were skipped" in caplog.text


@pytest.mark.parametrize("change", ["channels", "rate"])
def test_audio_whose_format_changes_mid_stream_stays_on_its_timeline(tmp_path, change):
    """An MPEG-TS recording whose audio switches mono to stereo, or 44.1 to 48 kHz, at 3 s (a broadcast's ad
    break): 440 Hz before, 880 Hz after. Before: `ValueError: Frame does not match AudioResampler setup.` at
    the switch (the resampler was made for the first frame's format), a traceback from `mediafm embed`."""
    second = {"channels": ("44100", "2"), "rate": ("48000", "1")}[change]
    a, b, both = tmp_path / "a.ts", tmp_path / "b.ts", tmp_path / "both.ts"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x90:r=25:d=3", "-f", "lavfi", "-i", "sine=f=440:r=44100:d=3",
               "-pix_fmt", "yuv420p", "-c:v", "libx264", "-c:a", "mp2", "-ar", "44100", "-ac", "1", a)
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x90:r=25:d=3", "-f", "lavfi", "-i", "sine=f=880:r=44100:d=3",
               "-pix_fmt", "yuv420p", "-c:v", "libx264", "-c:a", "mp2", "-ar", second[0], "-ac", second[1],
               "-output_ts_offset", "3", b)
    both.write_bytes(a.read_bytes() + b.read_bytes())
    chunks = list(iter_audio(both))
    assert {r for _, r, _ in chunks} == {44100}, "one rate throughout: the first segment's"
    assert all(i + len(x) == j for (i, _, x), (j, _, _) in zip(chunks, chunks[1:], strict=False)), "no gap, no overlap"
    x, rate = _audio(both)
    assert 5.9 * rate < len(x) < 6.1 * rate
    for t0, t1, f in [(0.5, 2.5, 440), (2.5, 2.95, 440), (3.05, 3.5, 880), (3.5, 5.8, 880)]:
        assert abs(_tone_at(x, rate, t0, t1) - f) < 5, (t0, t1, f)


@pytest.mark.parametrize("container", ["mkv", "mp4"])
def test_a_truncated_file_is_reported(tmp_path, caplog, container):
    """A 6-s film cut at 60% of its bytes still opens (Matroska; MP4 with its index first) and decodes up to the
    cut, its header still saying 6 s. Before: its shots covered the first 3.6 s with no word that the rest
    was missing (FFmpeg's CLI says "File ended prematurely")."""
    from mediafm.media.shots import detect_shots

    full, cut = tmp_path / f"full.{container}", tmp_path / f"cut.{container}"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x90:r=25:d=6", "-pix_fmt", "yuv420p", "-c:v", "libx264",
               *(["-movflags", "+faststart"] if container == "mp4" else []), full)
    data = full.read_bytes()
    cut.write_bytes(data[:len(data) * 6 // 10])
    with caplog.at_level("WARNING", logger="mediafm.media.decode"):
        shots = detect_shots(full, detector="content")
    assert shots[-1].end_s == pytest.approx(6.0, abs=0.05) and not caplog.records
    with caplog.at_level("WARNING", logger="mediafm.media.decode"):
        shots = detect_shots(cut, detector="content")
    assert 2.0 < shots[-1].end_s < 4.5
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.startswith(f"{cut}: the file declares 6.0") and "a truncated file?" in msg
    assert f"of video but it ends at {shots[-1].end_s:.2f} s" in msg


def test_a_raw_video_stream_is_decoded_from_its_start_when_a_seek_is_asked(tmp_path):
    """A raw .h264 stream carries no timestamps to seek by. Before (2026-12-07), a seek there failed, and the
    rewind after it raised FFmpeg's PermissionError out of the decoder: the encode stage dead-lettered every batch
    of the title's shots after the first ("encoding failed: PermissionError"). Now it is decoded from its start,
    which holds every frame at or after the time asked."""
    import subprocess

    from mediafm.media.decode import iter_video_frames
    from mediafm.media.synthfilm import ffmpeg

    raw = tmp_path / "film.h264"
    subprocess.run([ffmpeg(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "6",
                    "-c:v", "libx264", "-g", "25", str(raw)], check=True)
    whole = [(i, t) for i, t, _, _ in iter_video_frames(raw)]
    sought = [(i, t) for i, t, _, _ in iter_video_frames(raw, seek_s=4.0)]
    assert len(whole) == 150 and sought == whole
