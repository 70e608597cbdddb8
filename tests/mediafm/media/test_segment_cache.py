"""Live segments decoded once (mediafm/media/segment_cache.py, issue 13).

The segment stage records each segment's frames as the shot detector decodes them; the encode stage then
samples its shots' frames from memory. That is only an optimisation if it changes nothing: for every shot
of a film cut into segments (both segmenters of test_live_cuts: lossless re-encode, and stream copy with
B-frames and rotation-free MPEG-TS), the frames and audio iter_shot_media gives from the cache must be the
arrays it gives decoding the segments, bit for bit, including shots whose sample times fall exactly halfway
between two frames (8, 24, 40 frames long: the float arithmetic of the frame times decides those ties).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from mediafm.media.embed import iter_shot_media
from mediafm.media.segment_cache import DecodedSegments
from mediafm.media.shots import Shot, ShotDetector
from mediafm.media.synthfilm import make_film
from mediafm.publish import cut_segments
from streams.segment import covering
from tests.mediafm.media.test_live_cuts import copy_cut, copy_source

FPS = 24
FRAME_SIZE = 64
SHOTS = [40, 8, 24, 31, 57, 40, 17, 75]  # sample ties in the 8/24/40-frame shots; shots across 1-4 segments


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    d = tmp_path_factory.mktemp("segcache")
    return make_film(d / "film.mp4", shots=SHOTS, fps=FPS, size=(128, 72), audio=["tone:440", "noise"] * 4)


def live_spans(segments: list[tuple[str, float]]) -> list[tuple[list[str], Shot]]:
    """Each shot as the encode stage gets it: the segments covering it (the segment stage's own covering())
    and its times relative to the first of them."""
    bounds = np.cumsum([0, *SHOTS]) / FPS
    out = []
    for i in range(len(SHOTS)):
        cov = covering([list(seg) for seg in segments], bounds[i], bounds[i + 1])
        off = cov[0][1]
        out.append(([p for p, _ in cov], Shot(i, bounds[i] - off, bounds[i + 1] - off, 0, 0)))
    return out


def record(segments: list[tuple[str, float]], cache: DecodedSegments) -> None:
    """What streams/segment.py's LiveCutter does: one detector fed the segments, each recorded."""
    det = ShotDetector("content")
    for p, s0 in segments:
        rec = cache.recorder(FRAME_SIZE)
        det.push_segment(p, time_offset=s0, tap=rec)
        cache.put(p, rec.result())


def media(paths, shot, cache):
    (sm,) = iter_shot_media(paths, [shot], frames_per_shot=8, frame_size=FRAME_SIZE, audio_rate=16000,
                            audio_window_s=10.0, decoded=cache)
    return sm


def assert_same(segments, cache) -> None:
    spans = live_spans(segments)
    assert any(len(p) >= 3 for p, _ in spans), "no shot spans several segments: the test proves less than it says"
    for paths, shot in spans:
        want, got = media(paths, shot, None), media(paths, shot, cache)
        assert got.frames.shape == (8, FRAME_SIZE, FRAME_SIZE, 3)
        assert np.array_equal(want.frames, got.frames), f"shot {shot.index}: frames differ from a fresh decode"
        assert np.array_equal(want.audio, got.audio), f"shot {shot.index}: audio differs from a fresh decode"


@pytest.mark.parametrize("segmenter", ["publish", "copy"])
def test_replayed_segments_give_the_decoded_frames(film, tmp_path, segmenter):
    if segmenter == "publish":
        segments = [(str(p), s0) for p, s0 in cut_segments(film.path, tmp_path / "segs", 0.5)]
    else:
        segments = [(str(p), s0) for p, s0 in copy_cut(copy_source(film, tmp_path / "src.mp4"), tmp_path / "segs", 0.5)]
    cache = DecodedSegments(1 << 30)
    record(segments, cache)
    assert len(cache) == len(segments)
    assert_same(segments, cache)
    assert cache.hits > 0 and cache.misses == 0, (cache.hits, cache.misses)


def test_evicted_or_changed_segments_are_decoded_again(film, tmp_path):
    segments = [(str(p), s0) for p, s0 in cut_segments(film.path, tmp_path / "segs", 0.5)]
    full = DecodedSegments(1 << 30)
    record(segments, full)
    per_segment = max(full.get(p, FRAME_SIZE).nbytes for p, _ in segments)
    small = DecodedSegments(3 * per_segment)  # holds the last three segments at most
    record(segments, small)
    assert len(small) <= 3 and small.nbytes <= 3 * per_segment
    assert_same(segments, small)  # a mix of held and decoded segments gives the same arrays
    assert small.hits > 0 and small.misses > 0

    p = segments[-1][0]
    assert small.get(p, FRAME_SIZE) is not None
    assert small.get(p, FRAME_SIZE * 2) is None, "held at another frame size: must be decoded again"
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the file changed since it was recorded
    assert small.get(p, FRAME_SIZE) is None


def test_a_segment_over_the_budget_is_not_recorded(film, tmp_path):
    segments = cut_segments(film.path, tmp_path / "segs", 2.0)
    one_frame = FRAME_SIZE * FRAME_SIZE * 3
    cache = DecodedSegments(10 * one_frame)  # a 2 s segment is 48 frames
    rec = cache.recorder(FRAME_SIZE)
    ShotDetector("content").push_segment(segments[0][0], time_offset=0.0, tap=rec)
    assert rec.result() is None
    cache.put(str(segments[0][0]), rec.result())
    assert len(cache) == 0
    assert DecodedSegments(0).recorder(FRAME_SIZE) is None  # live_decoded_mb = 0: off
