"""Live events get timed text: cues published beside the segments reach the shots they overlap.

Real segments (ffmpeg, as `mediafm publish live` cuts them) with a WebVTT file each, driven through the
segment stage's live logic the way its agent drives it; each live shot's text must equal what the whole
file's shots get from the same cues (mediafm.media.subtitles.align), cue by cue.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import msgpack
import numpy as np
import pytest

from mediafm.config import Settings
from mediafm.media.shots import detect_shots
from mediafm.media.subtitles import Cue, align
from mediafm.media.synthfilm import make_film
from mediafm.publish import cut_segments, write_segment_cues
from mediafm.schema import LiveSegment, TitleMeta
from streams import segment


def test_live_shots_get_the_cues_published_beside_their_segments(tmp_path):
    film = make_film(tmp_path / "live.mp4", shots=[30, 36, 24, 40, 30, 28], fps=24, size=(160, 96), first_source=2)
    cues = [Cue(0.2, 1.1, "Kick-off."), Cue(1.4, 2.9, "A long pass across two shots"),
            Cue(4.0, 6.5, "spanning a segment edge"), Cue(7.0, 7.4, "Goal!")]
    settings = Settings(state_dir=tmp_path / "state", media_roots=(str(tmp_path),), live_shot_detector="content")
    segs = cut_segments(film.path, tmp_path / "segs", 1.0)
    vtts = write_segment_cues(cues, segs, tmp_path / "segs")
    assert sum(v is not None for v in vtts) >= 4  # the long cue rides on two segments

    refs = _run_event(settings, segs, vtts)
    whole = detect_shots(film.path, detector="content")
    assert [(r[1], r[2]) for r in refs] == [(s.start_frame, s.end_frame) for s in whole]
    assert [r[5] for r in refs] == align(cues, whole)
    assert sum(bool(r[5]) for r in refs) >= 4


def _run_event(settings, segs, vtts, restart_at=()):
    """The live segment logic over an event's segments, as the agent runs it; a fresh LiveCutter (a worker
    restarted with the table's state) before each segment in restart_at."""
    cutter, state, refs = segment.LiveCutter(settings), None, []
    for k, ((path, start), vtt) in enumerate(zip(segs, vtts, strict=True)):
        seg = LiveSegment(event_id="ev", segment_index=k, uri=str(path), start_s=start, last=k == len(segs) - 1,
                          subtitles_uri=str(vtt) if vtt else None)
        if k in restart_at:
            cutter = segment.LiveCutter(settings)
        state = state or segment.new_state(seg)
        assert segment.check_next(state, seg)
        shots, n_frames, end_s = cutter.push(state, seg, str(path))
        segment.pushed(state, str(path), start, n_frames, end_s)
        state["cues"] += segment.segment_cues(seg, settings, state["cues"])
        refs += cutter.refs(state, seg, shots, TitleMeta("ev", kind="live"))
        segment.advance(state, seg, shots)
        state = msgpack.unpackb(msgpack.packb(state))  # through the table, as the agent keeps it
    assert state["cues"] == []  # nothing kept once every shot is closed
    return [(r.shot_index, r.start_frame, r.end_frame, round(r.start_s, 6), round(r.end_s, 6), r.text) for r in refs]


@pytest.mark.parametrize("detector, restarts", [("content", (2,)), ("content", (3, 5, 6)),
                                                ("transnetv2", (4,))])
def test_a_restarted_worker_numbers_frames_and_shots_where_the_event_was(tmp_path, detector, restarts):
    film = make_film(tmp_path / "live.mp4", shots=[30, 36, 24, 40, 30, 28], fps=24, size=(160, 96), first_source=2)
    settings = Settings(state_dir=tmp_path / "state", media_roots=(str(tmp_path),), live_shot_detector=detector)
    segs = cut_segments(film.path, tmp_path / "segs", 1.0)
    vtts = write_segment_cues([Cue(1.4, 2.9, "across two shots"), Cue(4.0, 6.5, "across a segment edge")],
                              segs, tmp_path / "segs")
    straight = _run_event(settings, segs, vtts)
    assert straight[-1][2] == sum([30, 36, 24, 40, 30, 28])  # every frame of the event is in a shot
    if detector == "content":  # TransNetV2 on re-encoded segments can still differ from the cuts (issue 13)
        assert len(straight) == 6
    assert _run_event(settings, segs, vtts, restart_at=restarts) == straight


def _segment(cutter, state: dict, seg: LiveSegment):
    """One segment of event "ev" through the live segment logic, as the agent runs it (no timed text):
    (the event's record, through the table as the agent keeps it; the refs of the shots it closed)."""
    shots, n_frames, end_s = cutter.push(state, seg, seg.uri)
    segment.pushed(state, seg.uri, seg.start_s, n_frames, end_s)
    refs = cutter.refs(state, seg, shots, TitleMeta("ev", kind="live"))
    segment.advance(state, seg, shots)
    return msgpack.unpackb(msgpack.packb(state)), refs


@pytest.mark.parametrize("restart", [False, True])
def test_an_event_whose_last_segment_fails_closes_its_open_shot_with_the_media_before_it(tmp_path, restart):
    """The segment agent's path for a last segment it cannot read: forget the detector, close() the event from the
    segments kept in its record. The shot still open ends where the media before the last segment ends, numbered
    after the shots published, and the refs carry the event's n_shots (what lets the live stage finish it)."""
    film = make_film(tmp_path / "live.mp4", shots=[30, 36, 24, 40, 30, 28], fps=24, size=(160, 96), first_source=2)
    settings = Settings(state_dir=tmp_path / "state", media_roots=(str(tmp_path),), live_shot_detector="content")
    segs = cut_segments(film.path, tmp_path / "segs", 1.0)
    cutter, state, refs = segment.LiveCutter(settings), None, []
    for k, (path, start) in enumerate(segs[:-1]):
        seg = LiveSegment(event_id="ev", segment_index=k, uri=str(path), start_s=start)
        state, closed = _segment(cutter, state or segment.new_state(seg), seg)
        refs += closed
    last = LiveSegment(event_id="ev", segment_index=len(segs) - 1, uri=str(tmp_path / "gone.ts"),
                       start_s=segs[-1][1], last=True)
    if restart:
        cutter = segment.LiveCutter(settings)
    cutter.forget("ev")  # as the agent does when a segment fails
    shots = cutter.close(state, last)
    refs += cutter.refs(state, last, shots, TitleMeta("ev", kind="live"))
    segment.advance(state, last, shots)
    frames = state["frames"]  # the media before the last segment
    whole = detect_shots(film.path, detector="content")
    got = [(r.shot_index, r.start_frame, r.end_frame) for r in refs]
    assert [i for i, _, _ in got] == list(range(len(got))) and got[0][1] == 0 and got[-1][2] == frames
    assert all(a[2] == b[1] for a, b in pairwise(got)), "the shots tile the media, no frame twice or lost"
    assert got[:-1] == [(i, s.start_frame, s.end_frame) for i, s in enumerate(whole[:len(got) - 1])]
    assert shots and all(r.n_shots == len(got) for r in refs[-len(shots):]), "the closing refs carry n_shots"
    assert state["done"] and state["next_shot"] == len(got)


def test_a_restarted_worker_whose_segments_to_replay_are_gone_goes_on_from_the_next(tmp_path):
    """A restarted worker rebuilds its detector from the segments since the last cut. A live encoder deletes old
    segment files (an HLS playlist keeps a minute or less): before, the replay raised on every later segment, each
    was dead-lettered and the event was over. Now the shot open there is lost and the event goes on: the next
    shots numbered after those published, from the next segment's first frame."""
    film = make_film(tmp_path / "live.mp4", shots=[30, 90, 36, 40], fps=24, size=(160, 96), first_source=2)
    settings = Settings(state_dir=tmp_path / "state", media_roots=(str(tmp_path),), live_shot_detector="content")
    segs = cut_segments(film.path, tmp_path / "segs", 1.0)
    cutter, state, refs, restart = segment.LiveCutter(settings), None, [], 3  # inside the 90-frame shot
    for k, (path, start) in enumerate(segs):
        seg = LiveSegment(event_id="ev", segment_index=k, uri=str(path), start_s=start, last=k == len(segs) - 1)
        if k == restart:
            assert len(state["segments"]) >= 2, "the open shot spans segments to replay"
            for uri, *_ in state["segments"]:
                Path(uri).unlink()
            cutter, frames_before = segment.LiveCutter(settings), state["frames"]
        state, closed = _segment(cutter, state or segment.new_state(seg), seg)
        refs += closed
    got = [(r.shot_index, r.start_frame, r.end_frame) for r in refs]
    assert [i for i, _, _ in got] == list(range(len(got)))
    assert got[0] == (0, 0, 30), "the shot closed before the restart"
    assert got[1][1] == frames_before and got[-1][2] == sum([30, 90, 36, 40]), "from the next segment, to the end"
    assert state["done"] and refs[-1].n_shots == len(got)


def test_a_worker_given_an_event_back_after_another_cut_some_of_it_numbers_where_the_event_is(tmp_path):
    """A rebalance moves the event's partition to worker B for a few segments and back to A. A still held its
    detector from before: before 2026-12-08 it fed it on as if nothing had come between (the segments B cut were
    a gap to it, its frame numbers stale), and the shots after came out cut wrong or with frames that end before
    they start. A detector that is behind the event's record is rebuilt from it; the shots equal a straight run."""
    film = make_film(tmp_path / "live.mp4", shots=[30, 36, 24, 40, 30, 28], fps=24, size=(160, 96), first_source=2)
    settings = Settings(state_dir=tmp_path / "state", media_roots=(str(tmp_path),), live_shot_detector="content")
    segs = cut_segments(film.path, tmp_path / "segs", 1.0)
    assert len(segs) >= 7
    straight = _run_event(settings, segs, [None] * len(segs))
    workers = {"A": segment.LiveCutter(settings), "B": segment.LiveCutter(settings)}
    owner = ["A", "A", "B", "B", "B"] + ["A"] * (len(segs) - 5)
    state, refs = None, []
    for k, (path, start) in enumerate(segs):
        seg = LiveSegment(event_id="ev", segment_index=k, uri=str(path), start_s=start, last=k == len(segs) - 1)
        state = state or segment.new_state(seg)
        assert segment.check_next(state, seg)
        state, got = _segment(workers[owner[k]], state, seg)
        refs += got
    assert [(r.shot_index, r.start_frame, r.end_frame, round(r.start_s, 6), round(r.end_s, 6), r.text)
            for r in refs] == straight


def test_a_detector_idle_past_live_idle_end_s_is_let_go_and_rebuilt_if_its_event_goes_on(tmp_path):
    """A feed that dies without its last segment left its shot detector in the worker for good (before 2026-12-08).
    Now one idle past live_idle_end_s is let go when the cutter is next used; should the event go on after all,
    its detector is rebuilt from the record and the shots are those of a straight run."""
    film = make_film(tmp_path / "live.mp4", shots=[30, 36, 24, 40, 30, 28], fps=24, size=(160, 96), first_source=2)
    settings = Settings(state_dir=tmp_path / "state", media_roots=(str(tmp_path),), live_shot_detector="content",
                        live_idle_end_s=60)
    segs = cut_segments(film.path, tmp_path / "segs", 1.0)
    straight = _run_event(settings, segs, [None] * len(segs))
    cutter, state, refs = segment.LiveCutter(settings), None, []
    for k, (path, start) in enumerate(segs):
        seg = LiveSegment(event_id="ev", segment_index=k, uri=str(path), start_s=start, last=k == len(segs) - 1)
        state = state or segment.new_state(seg)
        if k == 3:  # the feed paused past live_idle_end_s: the next use of the cutter lets its detector go
            cutter.used["ev"] -= 61
            cutter._let_go_idle()
            assert "ev" not in cutter.detectors and "ev" not in cutter.used
        state, got = _segment(cutter, state, seg)
        refs += got
    assert cutter.detectors == {} and cutter.used == {}
    assert [(r.shot_index, r.start_frame, r.end_frame, round(r.start_s, 6), round(r.end_s, 6), r.text)
            for r in refs] == straight


@pytest.mark.parametrize("held", [False, True])
def test_a_live_shot_is_encoded_from_the_frames_the_detector_cut_it_at(tmp_path, held):
    """The live detector puts each segment's first video frame at its start_s; the container's clock puts the
    first segment's at its lead over the audio (23 ms here: x264 with B-frames, AAC). Before 2026-12-08 the encode
    stage sampled a live shot on the container's clock: that lead early, the frames of another instant than the
    detector cut (a shot of a frame or two got the shot before it). Each live shot's sampled frames must be those
    on screen, on the detector's clock, at its sample times: decoded again from the segments (held=False) and
    replayed from what the detector decoded (held=True, the worker's default)."""
    from mediafm.media.decode import iter_video_frames, to_array
    from mediafm.media.embed import iter_shot_media
    from mediafm.media.segment_cache import DecodedSegments
    from mediafm.media.shots import Shot

    film = make_film(tmp_path / "live.mp4", shots=[30, 36, 24, 40, 30], fps=25, size=(160, 96), first_source=1,
                     audio=["tone:330", "noise", "tone:660", "noise", "tone:220"], preset="veryfast")
    segs = cut_segments(film.path, tmp_path / "segs", 1.0)
    (_, lead, _, _), *_ = iter_video_frames(segs[0][0])
    assert lead > 0.01, "the film's video must lead on the container's clock, or this test shows nothing"
    settings = Settings(state_dir=tmp_path / "state", media_roots=(str(tmp_path),), live_shot_detector="content")
    decoded = DecodedSegments(64 * 2**20) if held else None
    cutter, state, refs = segment.LiveCutter(settings, decoded), None, []
    for k, (path, start) in enumerate(segs):
        seg = LiveSegment(event_id="ev", segment_index=k, uri=str(path), start_s=start, last=k == len(segs) - 1)
        state = state or segment.new_state(seg)
        state, got = _segment(cutter, state, seg)
        refs += got
    assert len(refs) == 5
    starts = dict((str(p), s) for p, s in segs)
    for r in refs:
        # the detector's clock: each covered segment's frames from its start_s, relative to the shot's media_start_s
        frames = [(t - r.media_start_s, f, rot) for m in r.media
                  for _, t, f, rot in iter_video_frames(Path(m), time_offset=starts[m])]
        shot = Shot(r.shot_index, r.start_s - r.media_start_s, r.end_s - r.media_start_s, r.start_frame, r.end_frame)
        (m,) = iter_shot_media(r.media if len(r.media) > 1 else r.media[0], [shot], frames_per_shot=4,
                               frame_size=32, audio_rate=16000, audio_window_s=1.0, decoded=decoded, live=True)
        dur = shot.end_s - shot.start_s
        for j in range(4):
            s = shot.start_s + (j + 0.5) * dur / 4
            t, f, rot = [x for x in frames if x[0] <= s + 1e-9][-1]
            np.testing.assert_array_equal(m.frames[j], to_array(f, (32, 32), rot), err_msg=f"shot {r.shot_index} "
                                          f"sample {j} at {s:.3f} s: not the frame at {t:.3f} s")
        assert m.audio is not None and len(m.audio) == round(min(max(dur, 0.2), 1.0) * 16000)


def test_a_storage_fault_midway_through_a_segment_is_retried_from_the_events_record(tmp_path, monkeypatch):
    """The segment stage waits out a storage fault (MediaUnavailable) and feeds the segment again. A fault after
    the detector took part of the segment left those frames in it (this session's first version): the retry fed
    them again, a shot was lost and every later frame number was off. Now the detector is let go on any failure
    and rebuilt from the event's record; the shots equal a straight run."""
    from mediafm.errors import MediaUnavailable
    from mediafm.media import shots as shots_mod

    film = make_film(tmp_path / "live.mp4", shots=[30, 36, 24, 40, 30, 28], fps=24, size=(160, 96), first_source=2)
    settings = Settings(state_dir=tmp_path / "state", media_roots=(str(tmp_path),), live_shot_detector="content")
    segs = cut_segments(film.path, tmp_path / "segs", 1.0)
    straight = _run_event(settings, segs, [None] * len(segs))
    real, failed = shots_mod.detector_frames, []

    def flaky(path, *a, **kw):  # segment 3's first read fails after 12 frames, as an NFS mount going stale would
        for k, item in enumerate(real(path, *a, **kw)):
            if str(path) == str(segs[3][0]) and not failed and k == 12:
                failed.append(k)
                raise MediaUnavailable(f"{path}: its storage did not answer a read (Stale file handle); retried")
            yield item

    monkeypatch.setattr(shots_mod, "detector_frames", flaky)
    cutter, state, refs = segment.LiveCutter(settings), None, []
    for k, (path, start) in enumerate(segs):
        seg = LiveSegment(event_id="ev", segment_index=k, uri=str(path), start_s=start, last=k == len(segs) - 1)
        state = state or segment.new_state(seg)
        while True:  # what Runtime.patiently does with the stage's call
            try:
                state, got = _segment(cutter, msgpack.unpackb(msgpack.packb(state)), seg)
                break
            except MediaUnavailable:
                pass
        refs += got
    assert failed == [12]
    assert [(r.shot_index, r.start_frame, r.end_frame, round(r.start_s, 6), round(r.end_s, 6), r.text)
            for r in refs] == straight
