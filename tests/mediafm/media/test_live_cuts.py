"""Segment edges never change the cuts (issue 13).

A live event is a film cut into segments; one ShotDetector is fed the segments one after the other
(streams/segment.py). Its shots must be the shots of `detect_shots` on the whole film, frame for frame,
whatever the segment length and wherever the segment edges fall: on a cut, one frame before or one
frame after it, through hard cuts and dissolves.

Detection depends only on the sequence of frames fed to the detector (mediafm.media.shots.
detector_frames), so the check is in two layers:

- all 20 films x 4 segment lengths (and 6 films with the second segmenter): the frames fed to the
  detector (48x27 RGB, the thumbnails, indices and times) from the segments are exactly those from
  the whole film;
- the shots streamed over the segments equal the whole film's, start_frame/end_frame, times and
  thumbnails: transnetv2-fast on all 20 films x 4 segment lengths (and 6 films with the second
  segmenter), transnetv2 (several times the network time) on 1 film x 4 segment lengths and on the
  issue's film (below).

Segmenters: "publish" is mediafm.publish.cut_segments's ffmpeg invocation with lossless x264 (-qp 0),
so its frames are bit-exact copies; "copy" stream-copies a film with B-frames and a keyframe every
0.5 s into MPEG-TS segments, as a live encoder's HLS segments are. publish.cut_segments used to
re-encode lossily (x264 veryfast, CRF 23): its segments did not hold the film's frames, which was the
root cause of the issue's false cut; it now encodes with -qp 0 (test_publish_cut_segments_keep_the_frames).
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from mediafm.media import shots as shots_module
from mediafm.media.shots import GAP_S, ShotDetector, detect_shots, detector_frames
from mediafm.media.synthfilm import Film, ffmpeg, make_film

FPS = 24
SIZE = (128, 72)
SEG_S = (0.5, 1.0, 2.0, 6.0)  # 12, 24, 48 and 144 frames: edges on multiples of 12 frames
N_FILMS = 20


def film_plan(k: int) -> tuple[list[int], list[int]]:
    """Film k: 180 frames (7.5 s); cuts one frame before, on and one frame after segment edges.

    Cuts near frames 48 and 96 (edges of the 0.5, 1 and 2 s segments), 144 (all four) and 24 or 120
    (0.5 and 1 s), each offset by -1, 0 or +1 (rotating with k, so each edge sees each offset); about a
    third of the cuts are dissolves of 6, 8 or 12 frames centred on the cut."""
    offs = [(-1, 0, 1), (0, 1, -1), (1, -1, 0)][k % 3]
    extra = (24 if k % 2 else 120) + (k // 3) % 3 - 1
    cuts = sorted([48 + offs[0], 96 + offs[1], 144 + offs[2], extra])
    shots = [b - a for a, b in zip([0, *cuts], [*cuts, 180], strict=True)]
    dissolves = [(6, 8, 12)[(k + j) % 3] if (k + j) % 3 != 1 and (k + 2 * j) % 4 == 0 else 0
                 for j in range(len(cuts))]
    return shots, dissolves


def first_frame_time(path: Path) -> float:
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            return float(frame.time)
    raise AssertionError(f"{path}: no video frame")


def _segments(out_dir: Path) -> list[tuple[Path, float]]:
    """[(path, start_s)] as publish.cut_segments reports them: each segment's first frame time,
    from the first segment's."""
    paths = sorted(out_dir.glob("seg*.ts"))
    times = [first_frame_time(p) for p in paths]
    return [(p, round(t - times[0], 6)) for p, t in zip(paths, times, strict=True)]


def publish_cut(file: Path, out_dir: Path, segment_s: float, *, lossless: bool = True) -> list[tuple[Path, float]]:
    """mediafm.publish.cut_segments's ffmpeg invocation (copied), with -qp 0 (lossless x264) when
    `lossless`; without it, exactly publish's (x264 veryfast, default CRF 23)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-i", str(file), "-map", "0:v:0", "-map", "0:a?",
           "-c:v", "libx264", "-preset", "veryfast", *(["-qp", "0"] if lossless else []),
           "-force_key_frames", f"expr:gte(t,n_forced*{segment_s})",
           "-c:a", "aac", "-f", "segment", "-segment_time", str(segment_s), str(out_dir / "seg%05d.ts")]
    subprocess.run(cmd, check=True, timeout=120)
    return _segments(out_dir)


def copy_source(film: Film, out: Path) -> Path:
    """The film as a live encoder would send it: x264 with B-frames, a keyframe every 12 frames."""
    subprocess.run([ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-i", str(film.path), "-c:v", "libx264",
                    "-preset", "veryfast", "-qp", "0", "-bf", "3", "-g", "12", "-keyint_min", "12",
                    "-force_key_frames", "expr:eq(mod(n,12),0)", "-sc_threshold", "0", str(out)],
                   check=True, timeout=120)
    return out


def copy_cut(file: Path, out_dir: Path, segment_s: float) -> list[tuple[Path, float]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-i", str(file), "-map", "0:v:0",
                    "-c", "copy", "-f", "segment", "-segment_time", str(segment_s), str(out_dir / "seg%05d.ts")],
                   check=True, timeout=120)
    return _segments(out_dir)


def frames_of(path: Path, **kw) -> list:
    return list(detector_frames(path, "transnetv2", **kw))


def streamed_frames(segments: list[tuple[Path, float]]) -> list:
    out: list = []
    for p, s0 in segments:
        out += frames_of(p, start_index=len(out), time_offset=s0)
    return out


def assert_same_frames(whole: list, streamed: list, what: str) -> None:
    assert len(streamed) == len(whole), f"{what}: {len(streamed)} frames from the segments, {len(whole)} whole"
    for (i, t, small, thumb), (j, u, small2, thumb2) in zip(whole, streamed, strict=True):
        assert i == j, what
        assert abs(t - u) < 1e-6, f"{what}: frame {i} at {u} s in the segments, {t} s whole"
        assert np.array_equal(small, small2), f"{what}: frame {i} differs"
        assert np.array_equal(thumb, thumb2), f"{what}: thumbnail {i} differs"


def live_shots(detector: str, segments: list[tuple[Path, float]]):
    """Shots as streams/segment.py's LiveCutter finds them: one detector, each segment at its start_s."""
    det = ShotDetector(detector)
    shots = [s for p, s0 in segments for s in det.push_segment(p, time_offset=s0)]
    return shots + det.flush()


def assert_same_shots(whole, streamed, what: str) -> None:
    assert [(s.index, s.start_frame, s.end_frame) for s in streamed] == \
        [(s.index, s.start_frame, s.end_frame) for s in whole], what
    for a, b in zip(whole, streamed, strict=True):
        assert abs(a.start_s - b.start_s) < 1e-6 and abs(a.end_s - b.end_s) < 1e-6, (what, a, b)
        assert np.array_equal(a.thumbnail, b.thumbnail), what


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> list[Film]:
    d = tmp_path_factory.mktemp("films")
    out = []
    for k in range(N_FILMS):
        shots, dissolves = film_plan(k)
        out.append(make_film(d / f"film{k:02d}.mp4", shots=shots, fps=FPS, size=SIZE, first_source=k % 10,
                             dissolves=dissolves))
    return out


@pytest.fixture(scope="module")
def cut(films, tmp_path_factory):
    """(film k, segmenter, segment_s) -> (whole file, [(segment, start_s)]), made once."""
    d = tmp_path_factory.mktemp("segments")
    cache: dict = {}

    def get(k: int, how: str, seg_s: float):
        key = (k, how, seg_s)
        if key not in cache:
            out = d / f"{k}-{how}-{seg_s}"
            if how == "publish":
                cache[key] = (films[k].path, publish_cut(films[k].path, out, seg_s))
            else:
                src = d / f"{k}-src.mp4"
                if not src.exists():
                    copy_source(films[k], src)
                cache[key] = (src, copy_cut(src, out, seg_s))
        return cache[key]

    return get


def test_film_plan_puts_edges_around_cuts():
    seen = set()
    for k in range(N_FILMS):
        shots, dissolves = film_plan(k)
        f = Film(Path("x"), FPS, shots, [], dissolves)
        assert f.n_frames == 180 and len(f.cuts) == 4 and min(shots) >= 20
        for c, dis in zip(f.cuts, dissolves, strict=True):
            for seg_s in SEG_S:
                edge = round(c / (seg_s * FPS)) * seg_s * FPS
                if abs(c - edge) <= 1 and edge > 0:
                    seen.add((seg_s, int(c - edge), bool(dis)))
    # every segment length has edges on, one before and one after a hard cut, and (but for the 6 s
    # edge, one per film) a dissolve
    for seg_s in SEG_S:
        for off in (-1, 0, 1):
            assert (seg_s, off, False) in seen, (seg_s, off)
            if seg_s < 6:
                assert (seg_s, off, True) in seen, (seg_s, off)


def test_dissolves_blend_linearly(tmp_path):
    f = make_film(tmp_path / "d.mp4", shots=[30, 30, 30], fps=FPS, size=SIZE, first_source=8, dissolves=[8, 0])
    assert f.cuts == [30, 60] and f.spans == [(26, 34), (60, 60)]
    m = np.array([fr[2].astype(float).mean() for fr in frames_of(f.path)])
    assert len(m) == 90
    a, b = m[20:26].mean(), m[34:40].mean()  # the two shots' mean levels (both nearly static)
    w = (m[26:34] - a) / (b - a)
    assert np.allclose(w, np.arange(1, 9) / 9, atol=0.04), w


@pytest.mark.parametrize("how", ["publish", "copy"])
def test_segments_feed_the_detector_the_whole_films_frames(films, cut, how):
    """Every segment length: frame for frame, pixel for pixel, the same input (publish: all 20 films;
    copy: 6 of them)."""
    for k in range(N_FILMS if how == "publish" else 6):
        for seg_s in SEG_S:
            whole, segs = cut(k, how, seg_s)
            assert len(segs) == -(-180 // round(seg_s * FPS)), (k, seg_s, len(segs))
            assert_same_frames(frames_of(whole), streamed_frames(segs), f"film {k} {how} {seg_s} s")


@pytest.mark.parametrize("k", range(N_FILMS))
def test_fast_detector_live_equals_whole(films, cut, k):
    whole = detect_shots(films[k].path, detector="transnetv2-fast")
    for seg_s in SEG_S:
        assert_same_shots(whole, live_shots("transnetv2-fast", cut(k, "publish", seg_s)[1]),
                          f"film {k} {seg_s} s")
    if k < 6:
        assert_same_shots(whole, detect_shots(films[k].path, detector="transnetv2-fast"), "deterministic")
        # the copy segmenter's source is a re-encode: compare with detect_shots on that file
        src = cut(k, "copy", 1.0)[0]
        assert_same_shots(detect_shots(src, detector="transnetv2-fast"),
                          live_shots("transnetv2-fast", cut(k, "copy", 0.5)[1]), f"film {k} copy 0.5 s")


@pytest.mark.slow
@pytest.mark.parametrize("k", [0])
def test_transnetv2_live_equals_whole(films, cut, k):
    whole = detect_shots(films[k].path, detector="transnetv2")
    for seg_s in SEG_S:
        assert_same_shots(whole, live_shots("transnetv2", cut(k, "publish", seg_s)[1]), f"film {k} {seg_s} s")


# --- the issue's film: 7 shots, cuts at 40, 70, 120, 156, 200, 230 at 24 fps, 1 s segments

ISSUE_SHOTS = [40, 30, 50, 36, 44, 30, 34]


@pytest.fixture(scope="module")
def issue_film(tmp_path_factory) -> Film:
    return make_film(tmp_path_factory.mktemp("issue") / "issue13.mp4", shots=ISSUE_SHOTS, fps=FPS)


@pytest.mark.parametrize("detector", ["transnetv2", "transnetv2-fast"])
def test_issue13_film_live_equals_whole(issue_film, tmp_path, detector):
    whole = detect_shots(issue_film.path, detector=detector)
    assert [s.start_frame for s in whole[1:]] == issue_film.cuts == [40, 70, 120, 156, 200, 230]
    segs = publish_cut(issue_film.path, tmp_path / "segs", 1.0)
    assert len(segs) == 11 and segs[5][1] == 5.0  # the cut at 120 is the first frame of segment 5
    assert_same_frames(frames_of(issue_film.path), streamed_frames(segs), "issue film")
    live = live_shots(detector, segs)
    assert_same_shots(whole, live, "issue film")
    assert len(live) == 7 and live[3].start_s == 5.0


@pytest.mark.parametrize("detector", ["transnetv2", "transnetv2-fast", "content"])
def test_a_gap_in_a_live_events_media_ends_the_shot_before_it(issue_film, tmp_path, detector):
    """A feed that stops after 6 s and comes back 1,000 s later (its clock jumps ahead). Before: the shot open at
    the gap (frames 120-156) ran on to the first cut after it, [5 s, 1006.5 s), its frames and audio sampled
    across 1,000 s of media that does not exist. Now each side is cut as a film of its own: the shots are
    those of the frames before the gap pushed alone, then those of the frames after it, numbered on."""
    segs = publish_cut(issue_film.path, tmp_path / "segs", 1.0)
    jump = 1000.0
    before, after = segs[:6], [(p, s0 + jump) for p, s0 in segs[6:]]
    assert after[0][1] == 1006.0 and after[0][1] - 6.0 > GAP_S
    live = live_shots(detector, before + after)

    first = live_shots(detector, before)
    det = ShotDetector(detector)
    rest = [s for p, s0 in after for s in det.push_segment(p, time_offset=s0)] + det.flush()
    n, f = len(first), first[-1].end_frame
    expected = first + [dataclasses.replace(s, index=s.index + n, start_frame=s.start_frame + f,
                                            end_frame=s.end_frame + f) for s in rest]
    assert_same_shots(expected, live, "a gap after 6 s")
    assert first[-1].start_s == 5.0 and first[-1].end_s == pytest.approx(6.0), "the shot open at the gap"
    assert live[n].start_s == 1006.0 and live[n].start_frame == 144
    assert all(s.end_s - s.start_s < 3.0 for s in live), [(s.start_s, s.end_s) for s in live]


@pytest.mark.parametrize("detector", ["transnetv2-fast", "content"])
def test_no_shot_runs_longer_than_max_shot_s_whole_or_live(issue_film, tmp_path, detector, monkeypatch):
    """MAX_SHOT_S (10 min; 1.75 s = 42 frames here): a longer shot is ended at its frame that far in, the same
    whole and in segments. Before, a still picture for a day was one shot, and a live event's record and that
    shot's ShotRef listed every segment since it began (3.3 MB at 24 h of 2-s segments, past a message)."""
    monkeypatch.setattr(shots_module, "MAX_SHOT_S", 1.75)
    whole = detect_shots(issue_film.path, detector=detector)
    live = live_shots(detector, publish_cut(issue_film.path, tmp_path / "segs", 1.0))
    assert_same_shots(whole, live, "shots ended at MAX_SHOT_S")
    assert max(s.end_frame - s.start_frame for s in live) == 42, [(s.start_frame, s.end_frame) for s in live]
    if detector == "transnetv2-fast":  # the film's cuts, and one 42 frames into each shot over 42 frames long
        assert [s.start_frame for s in live[1:]] == [40, 70, 112, 120, 156, 198, 200, 230]


def test_publish_cut_segments_keep_the_frames(issue_film, tmp_path):
    from mediafm.publish import cut_segments

    segs = cut_segments(issue_film.path, tmp_path / "segs", 1.0)
    assert_same_frames(frames_of(issue_film.path), streamed_frames(segs), "publish.cut_segments")


def test_lossy_segments_differ_from_the_film(issue_film, tmp_path):
    """The mechanism, without publish.py: the same invocation without -qp 0 changes the pixels."""
    segs = publish_cut(issue_film.path, tmp_path / "segs", 1.0, lossless=False)
    whole, streamed = frames_of(issue_film.path), streamed_frames(segs)
    assert len(whole) == len(streamed)  # no frame dropped or duplicated, same times ...
    assert all(abs(a[1] - b[1]) < 1e-6 for a, b in zip(whole, streamed, strict=True))
    diff = np.mean([np.abs(a[2].astype(int) - b[2]).mean() for a, b in zip(whole, streamed, strict=True)])
    assert diff > 0.2, diff  # ... but other pixels (about 1.3 levels of 255 on average at 48x27)
