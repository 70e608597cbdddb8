"""Limits a hostile upload must not get past (a security audit's findings): a file swapped after check_uri
checked it, media longer or faster than the settings allow, absurd audio, credentials in URIs, relative paths,
frames over the size limit. Each test says what happened before."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
import zlib

import numpy as np
import pytest

from mediafm.config import Settings
from mediafm.errors import CorruptMediaError, MediaURIError
from mediafm.media import decode
from mediafm.media.decode import check_uri, iter_audio, iter_video_frames, probe
from mediafm.media.synthfilm import ffmpeg


def run_ffmpeg(*args) -> None:
    subprocess.run([ffmpeg(), "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """2 s of 64x36 video at 25 fps with a stereo tone (mp4), the same video as a raw H.264 stream (no
    duration), and a film outside the media root."""
    d = tmp_path_factory.mktemp("limits")
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x36:r=25:d=2", "-f", "lavfi", "-i", "sine=f=440:r=16000:d=2",
               "-pix_fmt", "yuv420p", "-c:v", "libx264", "-c:a", "aac", "-ac", "2", "-shortest", d / "film.mp4")
    run_ffmpeg("-i", d / "film.mp4", "-map", "0:v", "-c", "copy", "-bsf:v", "h264_mp4toannexb", d / "raw.h264")
    (d / "outside").mkdir()
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=96x54:r=25:d=1", "-pix_fmt", "yuv420p", "-c:v", "libx264",
               d / "outside" / "secret.mp4")
    return d


@pytest.fixture
def root(tmp_path, media):
    r = tmp_path / "root"
    r.mkdir()
    shutil.copy(media / "film.mp4", r / "film.mp4")
    return r


def _settings(root) -> Settings:
    return Settings(media_roots=(str(root),))


def _in_thread(fn, timeout: float = 10.0):
    """fn() run in a thread: (finished, its result or exception). A read that blocks does not hang the test."""
    out = {}

    def run():
        try:
            out["r"] = fn()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            out["r"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    return not th.is_alive(), out.get("r")


# --- the file checked is the file read


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_read(root, media):
    """Before: check_uri passed the file, then probe and the decoders reopened the path and read the symlink's
    target outside media_roots."""
    path = check_uri(str(root / "film.mp4"), _settings(root))
    path.unlink()
    path.symlink_to(media / "outside" / "secret.mp4")
    with pytest.raises(MediaURIError, match="a symbolic link"):
        probe(path)
    with pytest.raises(MediaURIError, match="a symbolic link"):
        next(iter_video_frames(path))
    with pytest.raises(MediaURIError, match="a symbolic link"):
        next(iter_audio(path))


def test_a_directory_swapped_for_a_symlink_after_the_check_is_not_read(root, media):
    """A directory on the checked path replaced by a symlink out of the root: the last name is no symlink
    (O_NOFOLLOW does not see it), the descriptor's real path does."""
    (root / "d").mkdir()
    shutil.copy(media / "film.mp4", root / "d" / "secret.mp4")
    path = check_uri(str(root / "d" / "secret.mp4"), _settings(root))
    (root / "d").rename(root / "d_old")
    (root / "d").symlink_to(media / "outside")
    with pytest.raises(MediaURIError, match="changed after it was checked"):
        probe(path)


def test_a_fifo_swapped_in_after_the_check_is_refused_at_once(root):
    """Before: probe opened the FIFO and blocked forever (a worker thread awaited forever)."""
    path = check_uri(str(root / "film.mp4"), _settings(root))
    path.unlink()
    os.mkfifo(path)
    try:
        done, result = _in_thread(lambda: probe(path))
        assert done, "probe blocked on a FIFO"
        assert isinstance(result, MediaURIError) and "a FIFO" in str(result), result
    finally:
        if not done:  # unblock the reader the old code left waiting
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_read_checked_reads_only_a_small_regular_file(root, media):
    """The helper subtitle files are read with: the same guards as open_media, and a size limit."""
    from mediafm.media.decode import read_checked

    srt = root / "a.srt"
    srt.write_bytes(b"1\n00:00:00,000 --> 00:00:01,000\nhi\n")
    assert read_checked(srt, 1000) == srt.read_bytes()
    with pytest.raises(MediaURIError, match="over the limit of 10"):
        read_checked(srt, 10)
    (root / "link.srt").symlink_to(media / "outside" / "secret.mp4")
    with pytest.raises(MediaURIError, match="a symbolic link"):
        read_checked(root / "link.srt", 10**9)
    os.mkfifo(root / "fifo.srt")
    done, result = _in_thread(lambda: read_checked(root / "fifo.srt", 1000))
    if not done:
        os.close(os.open(root / "fifo.srt", os.O_WRONLY | os.O_NONBLOCK))
    assert done and isinstance(result, MediaURIError) and "a FIFO" in str(result), result


# --- how long and how fast


def test_decoding_stops_past_the_duration_limit(media):
    """A raw H.264 stream declares no duration, so probe cannot check it (before: a 16.7-hour one was decoded
    to its end, past max_media_duration_s)."""
    assert probe(media / "raw.h264", Settings(max_media_duration_s=1.0)).duration_s is None
    with pytest.raises(MediaURIError, match=r"video runs past max_media_duration_s=0.5 \(decoding reached 1.5"):
        for _ in iter_video_frames(media / "raw.h264", max_duration_s=0.5):
            pass
    assert len(list(iter_video_frames(media / "raw.h264", max_duration_s=2.0))) == 50  # 1 s of slack
    with pytest.raises(MediaURIError, match="its audio runs past max_media_duration_s=0.5"):
        for _ in iter_audio(media / "film.mp4", max_duration_s=0.5):
            pass
    assert sum(len(x) for _, _, x in iter_audio(media / "film.mp4", max_duration_s=2.0)) >= 31000


def test_a_title_or_live_segment_without_a_declared_length_stops_at_the_limit(root, media):
    """The stages pass max_media_duration_s to the shot detector, which decodes the whole file: a title (a raw
    stream) and a live segment longer than it are refused while decoded, where probe saw no length to check."""
    from mediafm.schema import LiveSegment, TitleRequest
    from streams.segment import LiveCutter, cut_title, new_state

    shutil.copy(media / "raw.h264", root / "raw.h264")
    s = Settings(media_roots=(str(root),), max_media_duration_s=0.5, shot_detector="content",
                 live_shot_detector="content")
    with pytest.raises(MediaURIError, match=r"runs past max_media_duration_s=0.5"):
        cut_title(TitleRequest(title_id="t", uri=str(root / "raw.h264")), s, s)
    seg = LiveSegment(event_id="ev", segment_index=0, uri=str(root / "raw.h264"), start_s=0.0)
    with pytest.raises(MediaURIError, match=r"runs past max_media_duration_s=0.5"):
        LiveCutter(s).push(new_state(seg), seg, str(root / "raw.h264"))
    relaxed = Settings(media_roots=(str(root),), shot_detector="content")
    assert cut_title(TitleRequest(title_id="t", uri=str(root / "raw.h264")), relaxed, relaxed)
    with pytest.raises(MediaURIError, match="not an absolute path"):  # a message's URI never names the worker's cwd
        cut_title(TitleRequest(title_id="t", uri="raw.h264"), relaxed, relaxed)


def test_video_over_the_frame_rate_cap_is_refused(tmp_path):
    """Before: 1000 frames/s passed (12 hours of it would take about 15 days of CPU to decode)."""
    out = tmp_path / "fast.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=32x18:r=1000:d=0.1", "-pix_fmt", "yuv420p", "-c:v", "libx264", out)
    with pytest.raises(MediaURIError, match=r"video at 1000 frames/s, over the limit of 240"):
        probe(out, Settings())
    assert decode.MAX_FPS == 240


def test_a_late_start_is_not_counted_as_length(tmp_path):
    """A 1-s Matroska file whose timestamps start at 9e9 s. Before: refused as '9000000001 s long'."""
    out = tmp_path / "late.mkv"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=32x18:r=25:d=1", "-pix_fmt", "yuv420p", "-c:v", "libx264",
               "-output_ts_offset", "9000000000", out)
    info = probe(out, Settings())
    assert (info.width, info.height) == (32, 18)


# --- absurd audio


def _wav(path, rate: int, channels: int, samples: int) -> None:
    data = np.random.default_rng(0).integers(-3000, 3000, size=samples * channels).astype("<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2 & 0xFFFFFFFF, channels * 2, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data"
                     + struct.pack("<I", len(data)) + data)


@pytest.mark.parametrize(("rate", "channels", "message"), [
    (1_000_000_007, 1, "audio at 1000000007 Hz, over the limit of 384000 Hz; resample it first"),
    (16000, 64, "audio with 64 channels, over the limit of 32; downmix it first"),
])
def test_absurd_audio_is_refused(tmp_path, rate, channels, message):
    """Before: 1,000,000,007 Hz passed probe, and resampling it to the encoders' rate raised MemoryError (a
    149 GiB filter); 64-channel PCM made av.error.ArgumentError escape iter_audio."""
    wav = tmp_path / "a.wav"
    _wav(wav, rate, channels, 16000)
    film = tmp_path / "film.mkv"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=32x18:r=25:d=1", "-i", wav, "-pix_fmt", "yuv420p",
               "-c:v", "libx264", "-c:a", "copy", film)
    with pytest.raises(MediaURIError, match=message):
        probe(film, Settings())
    with pytest.raises(MediaURIError, match=message):
        next(iter_audio(wav))


def test_resampling_by_an_absurd_ratio_is_refused():
    """Before: 383,999 Hz to 16 kHz built (and cached) a filter of 7.7 M taps; 1,000,003 Hz one of 20 M."""
    with pytest.raises(MediaURIError, match="resample it first"):
        decode.resample_span(np.zeros(1000, np.float32), 0, 383_999, 16000, 0, 10)
    assert len(decode.resample_span(np.zeros(48001, np.float32), 0, 48001, 16000, 0, 16000)) == 16000


def test_ffmpeg_errors_converting_audio_are_corrupt_media(media, monkeypatch):
    """Before: av.error.ArgumentError from the resampler escaped iter_audio (a PyAV error, not a MediaError)."""
    import av

    def refuse(**kwargs):
        raise av.error.ArgumentError(22, "Invalid argument")

    monkeypatch.setattr(decode.av, "AudioResampler", refuse)
    with pytest.raises(CorruptMediaError, match="FFmpeg cannot convert its audio"):
        list(iter_audio(media / "film.mp4"))


# --- URIs


@pytest.mark.parametrize("uri", ["http://user:PASSWORD@example.com/a.mp4", "file://user:PASSWORD@localhost/a.mp4"])
def test_passwords_in_uris_are_masked(uri, tmp_path):
    """Before: 'http://user:PASSWORD@example.com/a.mp4: scheme ...' and "file URI names host
    'user:PASSWORD@localhost'" (in dead letters and logs)."""
    with pytest.raises(MediaURIError) as e:
        check_uri(uri, Settings(media_roots=(str(tmp_path),)))
    assert "PASSWORD" not in str(e.value) and "user:***@" in str(e.value), str(e.value)


@pytest.mark.parametrize("text, shown", [
    # an AWS secret key holds '/': before 2026-12-08 the whole URL was echoed as written
    ("s3://AKIAEXAMPLE:wJalr/K7MDENG/bPxRfiCY@bucket/film.mp4", "s3://AKIAEXAMPLE:***@bucket/film.mp4"),
    ("https://ghp_SECRETTOKEN@host/a.mp4", "https://***@host/a.mp4"),  # a token as the user name
    ("http://user:p@ss#word@host/x", "http://user:***@host/x"),  # the password runs to the last @
    ("https://b.s3.amazonaws.com/f.mp4?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=SECRET&X-Amz-Security-Token=SECRET"
     "&x=1", "https://b.s3.amazonaws.com/f.mp4?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***&x=1"),
    ("https://a.blob.core.windows.net/c/v.mp4?sv=2020&sig=SECRET%3D&se=1", "https://a.blob.core.windows.net/c/v.mp4?sv=2020&sig=***&se=1"),
    ("see http://a:SECRET@c and http://d:SECRET@f", "see http://a:***@c and http://d:***@f"),
    # nothing to hide: left as written
    ("https://host/@user/v.mp4", "https://host/@user/v.mp4"),
    ("file:///srv/media/a@b.mp4?x=1", "file:///srv/media/a@b.mp4?x=1"),
])
def test_the_secrets_of_a_url_are_masked_wherever_it_is_echoed(text, shown):
    from mediafm.redact import redact_url

    assert redact_url(text) == shown


_HUGE = """
import sys, time
from mediafm.redact import redact_url
n = 3_000_000
for text in ["A" * n, "?" * n, "//" * (n // 2), "a:" * (n // 2), "&x" * (n // 2), "http://" + "a" * n + "@h",
             "?" + "k" * n + "=v", "//a@" * (n // 4), "x://" * (n // 4), "//a " * (n // 4)]:
    t = time.monotonic()
    redact_url(text)
    print(f"{time.monotonic() - t:.2f}")
"""


def test_redacting_megabytes_takes_linear_time():
    """A dead letter's reason echoes what was wrong, and a hostile record makes that megabytes (a 3 MB schema
    name). The first pattern of 2026-12-08 backtracked over every run of letters (an optional scheme before '//'):
    the worker's event loop spent minutes on one reason, every stage of it stopped. Run in a process of its own
    under a timeout that only a quadratic pass would reach."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _HUGE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 10


def test_a_presigned_urls_signature_is_not_in_the_error(tmp_path):
    with pytest.raises(MediaURIError) as e:
        check_uri("https://b.s3.amazonaws.com/f.mp4?X-Amz-Signature=SECRET&X-Amz-Security-Token=SECRET",
                  Settings(media_roots=(str(tmp_path),)))
    assert "SECRET" not in str(e.value) and "scheme 'https' is not supported" in str(e.value), str(e.value)


def test_relative_paths_are_refused_where_asked(tmp_path, monkeypatch):
    """Before: 'C:/x.mp4' from a message became <the worker's cwd>/C:/x.mp4. The CLI's relative paths still
    resolve against the working directory."""
    s = Settings(media_roots=(str(tmp_path),))
    for uri in ("C:/x.mp4", "film.mp4", "./film.mp4"):
        with pytest.raises(MediaURIError, match="must be absolute paths or file:// URIs"):
            check_uri(uri, s, allow_relative=False)
    (tmp_path / "film.mp4").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert check_uri("film.mp4", s) == (tmp_path / "film.mp4").resolve()


# --- frame size


def _png(path, width: int, height: int) -> None:
    """A grey PNG header declaring width x height, with a few rows of pixels (FFmpeg finds its size only by
    decoding it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * 4))
                     + chunk(b"IEND", b""))


def test_a_picture_over_the_pixel_limit_says_so(tmp_path):
    """Before: a 16384x16384 PNG was 'no decodable frame; the file is truncated or empty'."""
    _png(tmp_path / "big.png", 16384, 16384)
    with pytest.raises(MediaURIError, match=r"16384x16384 pixels, over the limit"):
        probe(tmp_path / "big.png")
    _png(tmp_path / "small.png", 64, 64)
    assert probe(tmp_path / "small.png").width == 64
