"""Unit tests of each stage's pure logic: no broker, no Triton (the stages run on both in tests/streams/)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from mediafm.config import Settings
from mediafm.errors import BadInput, SchemaError
from mediafm.media.shots import Shot
from mediafm.profiles import OFFLINE
from mediafm.schema import (
    EncodedShot,
    EncodedShots,
    FusedShot,
    FusedShots,
    LiveSegment,
    ShotRef,
    ShotsRefused,
    TitleMeta,
    vec_to_bytes,
)
from streams import contextualise, encode, fuse, segment
from streams.progress import LiveProgress, TitleProgress

LAY = OFFLINE.layout


# --- progress records -------------------------------------------------------------------------------

def test_title_progress_counts_each_shot_once_and_roundtrips():
    p = TitleProgress(11)
    assert len(p.have) == 2 and p.count == 0 and not p.complete
    assert p.add(0, 500) and p.add(10, 7) and not p.add(10, 9)  # a redelivery (or a second copy) is recognised
    assert p.holds(10) and not p.holds(9) and p.count == 2 and p.offsets[10] == 7  # the first copy counts
    for i in range(11):
        p.add(i, 1000 + i)
    assert p.complete and p.count == 11
    p = TitleProgress(11)
    p.add(0, 500)
    p.add(10, 7)
    assert not p.holds(3) and p.offsets[3] == -1 and not p.complete
    p.partition = 2
    q = TitleProgress.from_bytes(p.to_bytes())
    assert (q.n, bytes(q.have), q.done, q.partition, q.forgotten) == (11, bytes(p.have), False, 2, 0)
    np.testing.assert_array_equal(q.offsets, p.offsets)


def test_title_progress_of_a_long_title_stays_small():
    """Offsets are rewritten once per title per batch: a 10,000-shot title's record must stay small."""
    p = TitleProgress(10_000)
    for i in range(10_000):
        p.add(i, 3_000_000 + i + i // 1500 * 40_000)  # runs of consecutive offsets, other titles between
    raw = p.to_bytes()
    assert len(raw) < 3_000, len(raw)
    np.testing.assert_array_equal(TitleProgress.from_bytes(raw).offsets, p.offsets)
    p.done = True
    assert len(p.to_bytes()) < 1_400  # a finished title keeps its bits only


def test_title_progress_reads_the_format_older_workers_wrote():
    import msgpack

    raw = msgpack.packb({"n": 9, "have": bytes([0b00000101, 0b1]), "done": True})
    p = TitleProgress.from_bytes(raw)
    assert [i for i in range(9) if p.holds(i)] == [0, 2, 8] and p.done
    assert msgpack.unpackb(p.to_bytes()) == msgpack.unpackb(raw)
    # In flight under an older worker, which held the shots in a table: they are forgotten, and said so.
    p = TitleProgress.from_bytes(msgpack.packb({"n": 9, "have": bytes([0b00000101, 0b1]), "done": False}))
    assert p.forgotten == 3 and p.count == 0 and not p.done


def test_title_progress_refuses_a_bitmap_of_the_wrong_size():
    with pytest.raises(ValueError, match="needs 2 bytes, has 3"):
        TitleProgress(9, bytearray(3))


def test_live_progress_is_over_once_every_shot_is_final():
    p = LiveProgress()
    assert not p.over
    p.n, p.final = 5, 4
    assert not p.over
    p.final = 5
    assert p.over and LiveProgress.from_bytes(p.to_bytes()) == p


# --- segment ----------------------------------------------------------------------------------------

def _seg(i: int, start: float, last: bool = False) -> LiveSegment:
    return LiveSegment(event_id="ev", segment_index=i, uri=f"/m/{i}.ts", start_s=start, last=last)


def test_live_segments_must_come_in_order_without_gaps():
    state = segment.new_state(_seg(0, 0.0))
    assert segment.check_next(state, _seg(0, 0.0))
    state["next_segment"] = 2
    assert not segment.check_next(state, _seg(1, 2.0))  # already done: a redelivery
    with pytest.raises(SchemaError, match="segment 3 arrived but segment 2 is next"):
        segment.check_next(state, _seg(3, 6.0))
    state["done"], state["last_published_at"] = True, 100.0  # segment 1 was the last, published at 100
    with pytest.raises(SchemaError, match=r"event 'ev' ended with segment 1 \(last=true\); segment 2 arrived "
                                          r"after it. A new broadcast needs a new event id"):
        segment.check_next(state, _seg(2, 4.0))
    redelivered = dataclasses.replace(_seg(1, 2.0), published_at=99.0)
    assert not segment.check_next(state, redelivered), "a segment of the ended event, sent again: a redelivery"
    reused = dataclasses.replace(_seg(0, 0.0), published_at=200.0)
    with pytest.raises(SchemaError, match=r"ended with segment 1 \(last=true\) and segment 0 was published after "
                                          r"that, at 200.000: not a redelivery"):
        segment.check_next(state, reused)


def test_a_live_clock_that_goes_back_is_refused_at_the_segment():
    """Before: the segment stage published a shot that ended before it started, and every later shot of the
    event was dead-lettered a stage later for arriving out of order."""
    state = segment.new_state(_seg(0, 5.0))
    state["segments"].append(["/m/0.ts", 5.0, 0])
    state["next_segment"] = 1
    with pytest.raises(SchemaError, match=r"segment 1 starts at 1 s, before the segment before it \(5 s\); an "
                                          r"event's clock only goes forward"):
        segment.check_next(state, _seg(1, 1.0))
    assert segment.check_next(state, _seg(1, 7.0))


def test_a_live_segment_that_starts_inside_the_one_before_is_refused():
    """Before: only the previous segment's start was checked, so a segment starting 3 s into a 4-s one was cut,
    and the shot across the edge ended before it started (dead-lettered a stage later, for an empty span)."""
    state = segment.new_state(_seg(0, 0.0))
    state["segments"].append(["/m/0.ts", 0.0, 0])
    state["next_segment"], state["end_s"] = 1, 4.0
    with pytest.raises(SchemaError, match=r"segment 1 starts at 3 s, inside the media of the segment before it, "
                                          r"which ends at 4 s"):
        segment.check_next(state, _seg(1, 3.0))
    assert segment.check_next(state, _seg(1, 3.8)), "start times rounded by a segmenter"
    assert segment.check_next(state, _seg(1, 1000.0)), "a clock that jumps ahead: a gap, cut by the detector"


def test_advance_records_when_the_event_was_last_published():
    state = segment.new_state(_seg(0, 0.0))
    segment.advance(state, dataclasses.replace(_seg(0, 0.0), published_at=50.0), [])
    segment.advance(state, dataclasses.replace(_seg(1, 2.0, last=True), published_at=60.0), [])
    assert state["done"] and state["last_published_at"] == 60.0


def test_covering_segments_of_a_shot():
    segs = [["a", 0.0], ["b", 2.0], ["c", 4.0]]
    assert segment.covering(segs, 1.0, 2.0) == [["a", 0.0]]
    assert segment.covering(segs, 1.5, 4.5) == segs
    assert segment.covering(segs, 5.0, 9.0) == [["c", 4.0]]


def test_advance_keeps_only_segments_a_restart_must_replay():
    state = segment.new_state(_seg(0, 0.0))
    for i in range(4):
        state["segments"].append([f"/m/{i}.ts", 2.0 * i])
    shots = [Shot(0, 0.0, 3.0, 0, 75), Shot(1, 3.0, 6.5, 75, 162)]
    segment.advance(state, _seg(3, 6.0), shots)
    assert (state["next_segment"], state["next_shot"], state["cut_s"]) == (1, 2, 6.5)
    # segments ending after the last cut less a second of lead-in: those starting at 4.0 and 6.0
    assert state["segments"] == [["/m/2.ts", 4.0], ["/m/3.ts", 6.0]]
    assert not state["done"]
    segment.advance(state, _seg(4, 8.0, last=True), [])
    assert state["done"]


def test_live_refs_carry_the_segments_they_span_and_n_shots_on_the_last():
    cutter = segment.LiveCutter(Settings())
    state = segment.new_state(_seg(0, 0.0))
    state["segments"] = [["/m/0.ts", 0.0], ["/m/1.ts", 2.0]]
    state["next_shot"] = 4
    meta = TitleMeta("ev", kind="live", title="Final")
    refs = cutter.refs(state, _seg(1, 2.0, last=True), [Shot(4, 1.5, 3.0, 37, 75)], meta)
    (ref,) = refs
    assert ref.media == ["/m/0.ts", "/m/1.ts"] and ref.media_start_s == 0.0
    assert ref.n_shots == 5 and ref.kind == "live" and ref.title_text == "Final"


def test_title_meta_has_one_validator():
    assert TitleMeta.from_dict({"title": "T", "tags": ["a"]}, title_id="t1").text() == "T. Tags: a"
    with pytest.raises(SchemaError, match=r"unknown keys \['colour'\]"):
        TitleMeta.from_dict({"colour": 1}, title_id="t1")
    with pytest.raises(SchemaError, match="'meta.tags' must be a list"):
        TitleMeta.from_dict({"tags": "a"}, title_id="t1")
    with pytest.raises(SchemaError, match="names title_id 'x', but this is 't1'"):
        TitleMeta.from_dict({"title_id": "x"}, title_id="t1")
    with pytest.raises(SchemaError, match="must be a JSON object"):
        TitleMeta.from_dict(["title"], title_id="t1")


# --- encode -----------------------------------------------------------------------------------------

def _ref(i: int, title: str = "t", media: str = "/m/t.mp4", **kw) -> ShotRef:
    return ShotRef(title_id=title, shot_index=i, start_s=float(i), end_s=i + 1.0, start_frame=25 * i,
                   end_frame=25 * i + 25, media=[media], media_start_s=0.0, text="", title_text="",
                   profile="offline", n_shots=10, **kw)


def test_runs_split_where_title_media_or_continuity_changes():
    items = [(None, r) for r in (_ref(0), _ref(1), _ref(3), _ref(4, title="u"), _ref(5, title="u"),
                                  _ref(6, title="u", media="/m/other.mp4"), _ref(7, title="u", request_id="r2"))]
    runs = encode.runs(items)
    assert [[r.shot_index for _, r in run] for run in runs] == [[0, 1], [3], [4, 5], [6], [7]]


@pytest.mark.parametrize("change, match", [
    ({"profile": "nope"}, "unknown encoder profile 'nope'"),
    ({"media": []}, "no media or empty span"),
    ({"end_s": 0.0}, "no media or empty span"),
])
def test_encode_parse_rejects(change, match):
    ref = _ref(0)
    for k, v in change.items():
        setattr(ref, k, v)
    with pytest.raises(BadInput, match=match):
        encode.parse(ref.to_bytes())


# --- fuse -------------------------------------------------------------------------------------------

def _encoded(**kw) -> EncodedShot:
    rng = np.random.default_rng(0)
    base = dict(title_id="t", shot_index=0, start_s=0.0, end_s=1.0, profile="offline",
                video=vec_to_bytes(rng.normal(size=LAY.video)), audio=None, text=None, n_shots=3)
    return EncodedShot(**{**base, **kw})


def test_fuse_parse_marks_present_modalities_and_zero_fills_the_rest():
    [(shot, vecs, present)] = fuse.parse(_encoded().to_bytes())
    assert present.tolist() == [True, False, False]
    assert vecs["audio"].shape == (LAY.audio,) and not vecs["audio"].any()


@pytest.mark.parametrize("change, match", [
    ({"profile": "nope"}, "unknown encoder profile"),
    ({"video": None}, "has no modality"),
    ({"video": vec_to_bytes(np.ones(7))}, "video has 28 bytes"),
    ({"start_s": 2.0}, "has span"),
    ({"video": vec_to_bytes(np.full(LAY.video, np.nan))}, "NaN or inf"),
    ({"title_embedding": vec_to_bytes(np.ones(3))}, "title_embedding has 12 bytes"),  # refused where it was sent
])
def test_fuse_parse_rejects(change, match):
    with pytest.raises(SchemaError, match=match):
        fuse.parse(_encoded(**change).to_bytes())


def test_fuse_parse_reads_every_shot_of_a_record_of_several_and_refuses_it_whole_for_one_bad_shot():
    shots = [_encoded(shot_index=i, request_id="r1") for i in range(3)]
    record = EncodedShots(title_id="t", request_id="r1", shots=[s.to_bytes() for s in shots]).to_bytes()
    assert [shot for shot, _, _ in fuse.parse(record)] == shots, "every shot, in the order sent"
    shots[1] = _encoded(shot_index=1, request_id="r1", video=vec_to_bytes(np.ones(7)))
    record = EncodedShots(title_id="t", request_id="r1", shots=[s.to_bytes() for s in shots]).to_bytes()
    with pytest.raises(SchemaError, match=r"mediafm.encoded_shots of 't', shot 1 \(index 1\): video has 28 bytes"):
        fuse.parse(record)


def test_fused_shot_keeps_the_identity_of_its_encoded_shot():
    enc = _encoded(request_id="r1", kind="title", published_at=12.5, title_embedding=vec_to_bytes(np.ones(LAY.title)))
    out = fuse.fused_shot(enc, np.ones(LAY.fused_dim, np.float32), np.array([True, False, True]))
    assert (out.title_id, out.shot_index, out.request_id, out.published_at, out.n_shots) == ("t", 0, "r1", 12.5, 3)
    assert out.present == [True, False, True] and out.title_embedding == enc.title_embedding


# --- contextualise ----------------------------------------------------------------------------------

def test_the_fuse_stage_takes_live_records_first_and_each_kind_in_the_order_it_came():
    """streams/fuse.py live_first: a live event's run fetched behind a backfill's runs is fused in the batch's
    first Triton call. Records of one kind keep their order (a live ShotsRefused after the live shots before it);
    a record that cannot be read stays with the titles', where parse() refuses it with its reason."""
    from types import SimpleNamespace

    import msgpack

    def run(tid, kind, first, n):
        shots = [_encoded(title_id=tid, kind=kind, shot_index=first + k, n_shots=None if kind == "live" else 99)
                 for k in range(n)]
        return EncodedShots(title_id=tid, shots=[x.to_bytes() for x in shots]).to_bytes() if n > 1 \
            else shots[0].to_bytes()

    records = {
        "title a 0-2": run("a", "title", 0, 3),
        "live e 0-1": run("e", "live", 0, 2),
        "title b 0": run("b", "title", 0, 1),
        "garbage": b"\x92\x01",  # a msgpack list, no map
        "live e 2": run("e", "live", 2, 1),
        "title a 3-4": run("a", "title", 3, 2),
        "live e refused 3-4": ShotsRefused(title_id="e", first=3, last=4, stage="encode", reason="x").to_bytes(),
        "live e refused 5, no kind": msgpack.packb({k: v for k, v in msgpack.unpackb(ShotsRefused(
            title_id="e", first=5, last=5, stage="encode", reason="x").to_bytes()).items() if k != "kind"}),
        "title b refused 1": ShotsRefused(title_id="b", first=1, last=1, stage="encode", reason="x",
                                          kind="title").to_bytes(),
    }
    events = [SimpleNamespace(name=k, message=SimpleNamespace(value=v)) for k, v in records.items()]
    assert [e.name for e in fuse.live_first(events)] == [
        "live e 0-1", "live e 2", "live e refused 3-4", "live e refused 5, no kind",
        "title a 0-2", "title b 0", "garbage", "title a 3-4", "title b refused 1"]
    titles_only = [e for e in events if not e.name.startswith("live")]
    assert fuse.live_first(titles_only) == titles_only


def _fused(**kw) -> FusedShot:
    base = dict(title_id="t", shot_index=0, start_s=0.0, end_s=1.0, profile="offline",
                fused=vec_to_bytes(np.ones(LAY.fused_dim)), present=[True, True, False], n_shots=3)
    return FusedShot(**{**base, **kw})


@pytest.mark.parametrize("change, match", [
    ({"shot_index": 3}, "outside 0..2"),
    ({"shot_index": -1}, "outside 0..2"),
    ({"n_shots": None}, "needs a known n_shots"),
    ({"kind": "clip"}, "kind='clip'; a shot is of a 'title' or of a 'live' event"),
    ({"profile": "nope"}, "unknown encoder profile"),
    ({"fused": vec_to_bytes(np.ones(5))}, "fused has 20 bytes"),
    ({"title_embedding": vec_to_bytes(np.ones(3))}, "title_embedding has 12 bytes"),
    ({"kind": "live", "shot_index": 5}, "outside 0..3 of live"),
])
def test_contextualise_parse_rejects(change, match):
    with pytest.raises(SchemaError, match=match):
        contextualise.parse(_fused(**change).to_bytes())


def test_contextualise_takes_a_record_of_shots_whole_or_refuses_it_whole():
    """A FusedShots record (pre-encoded input may be published so) whose shots disagree on n_shots, kind or profile.
    Before, each shot was checked alone: the shots before the odd one were counted in their title's progress and
    the record dead-lettered, so the title could complete from a record refused. Now the record is refused whole,
    naming the shot; a live event's shots may differ in n_shots (only its last ones carry it)."""
    from mediafm.schema import FusedShots

    def record(*shots):
        return FusedShots(title_id="t", shots=[x.to_bytes() for x in shots]).to_bytes()

    ok = [_fused(shot_index=i, n_shots=3) for i in range(3)]
    assert [x.shot_index for x in contextualise.parse(record(*ok))] == [0, 1, 2]
    live = [dataclasses.replace(_fused(shot_index=i, n_shots=3 if i == 2 else None), kind="live") for i in range(3)]
    assert len(contextualise.parse(record(*live))) == 3
    for odd, said in [(dataclasses.replace(ok[2], n_shots=4), "('title', 'offline', 4)"),
                      (dataclasses.replace(ok[2], kind="live"), "('live', 'offline', None)")]:
        with pytest.raises(SchemaError, match=re.escape(f"shot 2 of 't' in a record of 3 has kind, profile and "
                                                        f"n_shots {said}")):
            contextualise.parse(record(ok[0], ok[1], odd))


def test_contextualise_parse_accepts_live_shots_before_their_event_ends():
    (shot,) = contextualise.parse(_fused(kind="live", n_shots=None, shot_index=40).to_bytes())
    assert shot.kind == "live" and shot.n_shots is None


def test_a_title_given_up_for_shots_gone_ignores_its_stragglers_and_starts_afresh_after(tmp_path):
    """Shots gone from the fused topic: the title is dead-lettered and its record keeps where that happened.
    A shot of it redelivered after a restart (offset at or below) is a duplicate, not a new one-shot record
    that would never complete; shots published after it are a new publication and complete the title."""
    import asyncio
    from types import SimpleNamespace

    letters, done = [], []

    async def dead_letter(stage, event, reason):
        letters.append((event.message.offset, reason))

    async def later(work, event, *, at_most, size=0, budget=0):  # the title's pass at once, not beside the agent
        await work

    rt = SimpleNamespace(settings=Settings(state_dir=tmp_path), table=lambda name: {},  # the table, no broker
                         dead_letter=dead_letter, later=later)
    titles = contextualise.Titles(rt)
    gathered = titles._gather

    async def gather(tkey, progress):
        if not letters:
            raise contextualise.ShotsGone("3 of its shots are no longer in shots.fused[0]")
        return await gathered(tkey, progress)

    async def contextualise_(tid, shots, rid=""):
        done.append([s.shot_index for s in shots])

    titles._gather, titles.contextualise = gather, contextualise_

    class Event:  # what the stage reads of a Faust event (weak-referenceable, as processing() needs)
        def __init__(self, message):
            self.message = message

    async def main():
        for offset, i in [(10, 0), (11, 1), (12, 2), (11, 1), (12, 2), (13, 0), (14, 1), (15, 2)]:
            raw = _fused(shot_index=i).to_bytes()
            (shot,) = contextualise.parse(raw)
            await titles.on_shot(shot, Event(SimpleNamespace(partition=0, offset=offset, value=raw)), len(raw))
            titles.flush()
            if offset == 12 and letters:  # given up: the record says where, and counts nothing
                p = TitleProgress.from_bytes(titles.progress[b"t#"])
                assert (p.count, p.floor, p.done) == (0, 12, False)

    asyncio.run(main())
    assert [o for o, _ in letters] == [12] and "publish it again" in letters[0][1]
    assert done == [[0, 1, 2]], "published again after the floor, the title completes once"
    assert TitleProgress.from_bytes(titles.progress[b"t#"]).done


def test_a_title_whose_pass_fails_unforeseen_is_dead_lettered_and_starts_afresh_when_published_again(tmp_path):
    """The title's pass runs beside the agent (Runtime.later), outside the agent's per-shot try: an error no
    check foresaw is still dead-lettered with its reason, as it was inside the agent. The event that completed the
    title is then committed, so nothing would try it again: the reason says to publish it again, and the record
    starts afresh after that event, as for shots gone (before: left counted, never done, never tried again)."""
    import asyncio
    from types import SimpleNamespace

    letters = []

    async def dead_letter(stage, event, reason):
        letters.append((stage, event.message.offset, reason))

    async def later(work, event, *, at_most, size=0, budget=0):
        await work

    titles = contextualise.Titles(SimpleNamespace(settings=Settings(state_dir=tmp_path), table=lambda name: {},
                                                  dead_letter=dead_letter, later=later))

    done = []

    async def failing_once(tid, shots, rid=""):
        if not letters:
            raise KeyError("a bug")
        done.append([s.shot_index for s in shots])

    titles.contextualise = failing_once

    class Event:
        def __init__(self, message):
            self.message = message

    async def main():
        for offset, i in [(5, 0), (6, 1), (7, 2), (6, 1), (7, 2), (8, 0), (9, 1), (10, 2)]:
            raw = _fused(shot_index=i).to_bytes()
            (shot,) = contextualise.parse(raw)
            await titles.on_shot(shot, Event(SimpleNamespace(partition=0, offset=offset, value=raw)), len(raw))
            titles.flush()
            if offset == 7 and letters:  # given up: the record says where, and counts nothing
                p = TitleProgress.from_bytes(titles.progress[b"t#"])
                assert (p.count, p.floor, p.done) == (0, 7, False) and not titles.finishing

    asyncio.run(main())
    assert letters == [("contextualise", 7, "title 't' (3 shots) cannot be contextualised: contextualise failed: "
                                            "KeyError: 'a bug'; publish it again")]
    assert done == [[0, 1, 2]], "published again after the failure, the title completes once"
    assert TitleProgress.from_bytes(titles.progress[b"t#"]).done


def test_a_title_some_of_whose_shots_a_stage_refused_is_given_up_once_and_lets_go_of_what_it_held(tmp_path):
    """Shots of a title's publication dead-lettered upstream (media no decoder reads, a vector the fusion model
    refuses): before, nothing reached this stage in their place, so the title waited for them for ever, its
    progress record and held shots kept and no word said for the title. Now a ShotsRefused takes their place: once
    every shot has arrived or been refused, the publication is given up with one dead letter naming the shots, the
    stage and the reason; what it held is let go; a redelivery of its records (after a restart too) counts
    nothing, and a publication after it under the same request id is taken. A refused shot whose good copy comes
    after (a bad copy refused first), and a refusal of shots the title holds (a copy refused on a redelivery),
    leave the title to complete."""
    import asyncio
    from types import SimpleNamespace

    from mediafm.schema import ShotsRefused

    letters, done, table = [], [], {}

    async def dead_letter(stage, event, reason):
        letters.append((stage, event.message.offset, reason))

    async def later(work, event, *, at_most, size=0, budget=0):
        await work

    def stage():
        titles = contextualise.Titles(SimpleNamespace(settings=Settings(state_dir=tmp_path), table=lambda name: table,
                                                      dead_letter=dead_letter, later=later))

        async def contextualise_(tid, shots, rid=""):
            done.append((tid, rid, [s.shot_index for s in shots]))

        titles.contextualise = contextualise_
        return titles

    class Event:
        def __init__(self, message):
            self.message = message

    def refusal(first, last, *, tid="t", rid="r1", n=5):
        return ShotsRefused(title_id=tid, first=first, last=last, stage="encode", reason="no decoder reads it",
                            n_shots=n, kind="title", request_id=rid)

    async def feed(titles, items, partition=0):
        for offset, x in items:
            raw = x.to_bytes()
            event = Event(SimpleNamespace(partition=partition, offset=offset, value=raw))
            if isinstance(x, ShotsRefused):
                await titles.on_refused(x, event)
            else:
                await titles.on_shot(x, event, len(raw))
            titles.flush()

    def shot(i, *, tid="t", rid="r1", n=5):
        return _fused(title_id=tid, shot_index=i, n_shots=n, request_id=rid)

    async def main():
        titles = stage()
        await feed(titles, [(10, shot(0)), (11, shot(1)), (12, shot(2)), (13, refusal(3, 3))])
        assert titles.held.bytes > 0 and not letters, "shot 4 may still come"
        await feed(titles, [(14, refusal(4, 4))])
        assert [o for _, o, _ in letters] == [14] and titles.held.bytes == 0, "given up; its held shots let go"
        p = TitleProgress.from_bytes(table[b"t#r1"])
        assert (p.count, p.floor, p.done, bytes(p.refused)) == (0, 14, False, b"")
        await feed(titles, [(13, refusal(3, 3)), (12, shot(2))])  # redelivered
        await feed(stage(), [(14, refusal(4, 4)), (11, shot(1))])  # redelivered after a restart
        assert len(letters) == 1
        # a bad copy of shot 0 refused, then the good one: the title completes
        await feed(titles, [(20, refusal(0, 0, tid="u", n=3))] + [(21 + i, shot(i, tid="u", n=3)) for i in range(3)])
        # a copy of shots held refused on a redelivery: the title goes on; after it is done, nothing
        await feed(titles, [(30, shot(0, tid="v", n=3)), (31, shot(1, tid="v", n=3)), (32, refusal(0, 1, tid="v", n=3)),
                            (33, shot(2, tid="v", n=3)), (34, refusal(2, 2, tid="v", n=3))])
        with pytest.raises(SchemaError, match="n_shots=4 disagrees with 3"):
            await titles.on_refused(refusal(1, 1, tid="v", n=4), Event(SimpleNamespace(partition=0, offset=35)))
        await feed(titles, [(36, shot(0, tid="w", n=3))])
        with pytest.raises(SchemaError, match="came on partition 1, its title's shots on 0"):
            await titles.on_refused(refusal(2, 2, tid="w", n=3), Event(SimpleNamespace(partition=1, offset=37)))
        await feed(titles, [(40 + i, shot(i)) for i in range(5)])  # published again under the same request id

    asyncio.run(main())
    assert [(s, o) for s, o, _ in letters] == [("contextualise", 14)], "one dead letter, for the title"
    assert letters[0][2] == ("title 't' (request 'r1', 5 shots) given up: shot 3 refused at the encode stage: no "
                             "decoder reads it; 2 of its shots were refused before this stage, so no embedding of "
                             "this publication is made. Mend what the reason names and publish the title again")
    assert done == [("u", "r1", [0, 1, 2]), ("v", "r1", [0, 1, 2]), ("t", "r1", [0, 1, 2, 3, 4])]


def test_a_title_whose_shots_the_broker_refuses_to_read_back_stops_the_worker_and_is_not_dead_lettered(tmp_path):
    """A read back the broker refuses for good (ReadRefused: its ACLs deny it) is not the title's fault: it is
    raised out of the title's pass, which stops the worker (Runtime.later) with the event to come again, and
    the title is neither dead-lettered nor started afresh. (Before, the read was retried for ever.)"""
    import asyncio
    from types import SimpleNamespace

    from streams.fused_source import ReadRefused

    letters = []

    async def dead_letter(stage, event, reason):
        letters.append(reason)

    async def later(work, event, *, at_most, size=0, budget=0):
        await work

    table = {}
    titles = contextualise.Titles(SimpleNamespace(
        settings=Settings(state_dir=tmp_path, held_shots_mb=0), table=lambda name: table, dead_letter=dead_letter,
        later=later, topics=SimpleNamespace(fused=SimpleNamespace(get_topic_name=lambda: "shots.fused"))))

    class Reader:
        async def read(self, name, partition, offsets):
            raise ReadRefused("reading shots.fused[0] back: TopicAuthorizationFailedError")

    titles.reader = Reader()

    class Event:
        def __init__(self, message):
            self.message = message

    async def main():
        for i in range(3):
            raw = _fused(shot_index=i).to_bytes()
            (shot,) = contextualise.parse(raw)
            await titles.on_shot(shot, Event(SimpleNamespace(partition=0, offset=10 + i, value=raw)), len(raw))
            titles.flush()

    with pytest.raises(ReadRefused):
        asyncio.run(main())
    assert letters == [] and not titles.finishing
    p = TitleProgress.from_bytes(table[b"t#"])
    assert (p.count, p.floor, p.done) == (2, -1, False), "its record as it was: the event that completed it comes again"


def test_a_title_in_records_of_several_shots_is_gathered_by_offset_and_a_record_without_its_shot_named(tmp_path):
    """A FusedShots record stands at one offset for each of its shots: the title's record names that offset for
    each, and the shots the memory did not keep (held_shots_mb=0 here) are picked from the records read back.
    A record that does not hold the shot named for it (a topic made again under the same name) is not taken
    for it: the title is dead-lettered saying so."""
    import asyncio
    from types import SimpleNamespace

    letters, done = [], []

    async def dead_letter(stage, event, reason):
        letters.append(reason)

    async def later(work, event, *, at_most, size=0, budget=0):
        await work

    rt = SimpleNamespace(settings=Settings(state_dir=tmp_path, held_shots_mb=0), table=lambda name: {},
                         dead_letter=dead_letter, later=later,
                         topics=SimpleNamespace(fused=SimpleNamespace(get_topic_name=lambda: "shots.fused")))
    titles = contextualise.Titles(rt)
    topic: dict[int, bytes] = {}  # offset -> record: what the reader reads back (the broker's part: test_fused_source)

    class Reader:
        async def read(self, name, partition, offsets):
            assert name == "shots.fused" and partition == 0
            return {o: topic[o] for o in offsets}, []

    async def contextualise_(tid, shots, rid=""):
        done.append((tid, [s.shot_index for s in shots], [s.start_s for s in shots]))

    titles.reader, titles.contextualise = Reader(), contextualise_

    class Event:
        def __init__(self, message):
            self.message = message

    def fused(tid, i):
        return _fused(title_id=tid, shot_index=i, start_s=float(i), end_s=i + 1.0, n_shots=5)

    async def main():
        for offset, tid, idx in [(3, "a", [4, 0, 2]), (4, "a", [1]), (5, "a", [3]), (6, "b", [0, 1, 2]),
                                 (7, "b", [3, 4])]:
            raw = fused(tid, idx[0]).to_bytes() if len(idx) == 1 else FusedShots(
                title_id=tid, shots=[fused(tid, i).to_bytes() for i in idx]).to_bytes()
            topic[offset] = raw if tid == "a" else fused(tid, 9 - offset).to_bytes()  # b's records: not its shots
            shots = contextualise.parse(raw)
            for shot in shots:
                await titles.on_shot(shot, Event(SimpleNamespace(partition=0, offset=offset, value=raw)),
                                     len(raw) // len(shots))
            titles.flush()

    asyncio.run(main())
    assert done == [("a", [0, 1, 2, 3, 4], [0.0, 1.0, 2.0, 3.0, 4.0])]
    assert TitleProgress.from_bytes(titles.progress[b"a#"]).done
    assert len(letters) == 1 and "'b' (5 shots) cannot be contextualised" in letters[0], letters
    assert "does not hold it" in letters[0]


def _live_stage(contextualise_):
    """The live stage on dict tables (no broker), windows of 8 shots, right context 2; (LiveEvents, tables)."""
    from types import SimpleNamespace

    from streams.live import LiveEvents

    async def acked():
        pass

    tables: dict[str, dict] = {}
    rt = SimpleNamespace(settings=Settings(window_shots=8, window_stride=4, live_right_context=2),
                         table=lambda name: tables.setdefault(name, {}), contextualise=contextualise_,
                         sends_acknowledged=acked, live_fed={})
    return LiveEvents(rt), tables


def _feed(live, tables: dict, shots: list) -> None:
    """Each shot to the live stage in turn, the table holding at most a window (8) and the shot being added."""
    import asyncio

    async def main():
        for s in shots:
            await live.on_shot(s)
            assert len(tables["live-shots"]) <= 9, "at most a window, and the shot being added"

    asyncio.run(main())


@pytest.mark.parametrize("n", [1, 8, 9, 10, 40])
def test_a_live_event_that_ended_holds_none_of_its_shots(n):
    """Before: an event longer than its window (window_shots) ended with one fused shot left in the live-shots
    table (shot n - 1 - window_shots), for good: 9 KB of table and changelog for each such event, every event.
    A redelivered last shot (a kill after the progress record, before the deletes) deletes what is left."""
    import asyncio


    passes = []

    async def contextualise_(shots, windows_for, *, n_shots, version=""):
        (w,), picks = windows_for(len(shots), 1)
        passes.append((w.start, w.end, len(picks)))
        return len(picks), "1"

    live, tables = _live_stage(contextualise_)
    shots = [dataclasses.replace(_fused(shot_index=i, n_shots=n if i == n - 1 else None), title_id="ev", kind="live")
             for i in range(n)]

    _feed(live, tables, shots)
    assert tables["live-shots"] == {}, sorted(tables["live-shots"])
    assert sum(p[2] for p in passes) == 2 * n, "every shot: one provisional and one final"
    tables["live-shots"][live.key("ev", n - 1)] = shots[-1].to_bytes()  # as if the deletes never ran
    asyncio.run(live.on_shot(shots[-1]))
    assert tables["live-shots"] == {}


def test_a_live_segments_timed_text_is_bounded_by_what_the_event_holds(tmp_path):
    """The cues a live event holds (its record) and a shot's text (its ShotRef) are messages: a segment whose cues
    would take the text held past MAX_HELD_TEXT_BYTES is refused (the stage dead-letters its timed text and goes
    on with the video). Before, a 5 MB WebVTT made a record over the producer's limit and crashed the worker."""
    from mediafm.errors import SubtitleError

    settings = Settings(media_roots=(str(tmp_path),))

    def vtt(name: str, n: int, size: int) -> str:
        body = "".join(f"00:00:{i // 10:02d}.{i % 10}00 --> 00:00:{i // 10:02d}.{i % 10}90\n{'x' * size}\n\n"
                       for i in range(n))
        (tmp_path / name).write_text("WEBVTT\n\n" + body)
        return str(tmp_path / name)

    def seg(uri: str) -> LiveSegment:
        return LiveSegment(event_id="ev", segment_index=0, uri=str(tmp_path / "s.ts"), start_s=0.0, subtitles_uri=uri)

    small = segment.segment_cues(seg(vtt("small.vtt", 3, 40)), settings)
    assert len(small) == 3 and small[0][2] == "x" * 40
    assert segment.segment_cues(seg(vtt("again.vtt", 3, 40)), settings, small) == [], "a held cue is not added twice"
    with pytest.raises(SubtitleError, match=r"over the 262144 a live event holds"):
        segment.segment_cues(seg(vtt("big.vtt", 100, 3_000)), settings)  # 300 KB in one segment
    near = [[0.0, 1.0, "y" * (segment.MAX_HELD_TEXT_BYTES - 100)]]
    with pytest.raises(SubtitleError, match="with those of the shots still open"):
        segment.segment_cues(seg(vtt("more.vtt", 3, 40)), settings, near)


def test_a_live_event_goes_on_past_shots_lost_upstream():
    """A live shot dead-lettered on an earlier stage (its segment file gone, an encoder's refusal) never reaches
    the live stage. Before, every later shot of the event was dead-lettered ("arrived before shot k"): one lost
    shot ended the event's embeddings, and its held shots stayed in the table for good. Now the gap is counted and
    each shot that arrives gets one provisional and one final, from windows of the shots there are."""


    n, lost = 40, {0, 10, 20, 21, 22, 37}
    provisional, final, windows = [], [], []

    async def contextualise_(shots, windows_for, *, n_shots, version=""):
        (w,), picks = windows_for(8, 4)
        held = [s.shot_index for s in shots]
        assert held == sorted(held) and not set(held) & lost and all(w.start <= i < w.end for i in held)
        for i, _, is_final in picks:
            assert i in held, "a pick is a shot of the window"
            (final if is_final else provisional).append(i)
            if is_final:
                windows.append((i, w.end))
        return len(picks), "1"

    live, tables = _live_stage(contextualise_)
    arrive = [dataclasses.replace(_fused(shot_index=i, n_shots=n if i >= 38 else None), title_id="ev", kind="live")
              for i in range(n) if i not in lost]

    _feed(live, tables, arrive)
    kept = [i for i in range(n) if i not in lost]
    assert provisional == kept and sorted(final) == kept, "each shot that came: one provisional, one final"
    assert all(end >= min(i + 3, n) for i, end in windows if end < n), "a final has its right context (2 shots)"
    assert tables["live-shots"] == {}, "the event ended holding none of its shots"
    st = LiveProgress.from_bytes(tables["live-events"][b"ev"])
    assert st.over and st.lost == len(lost)


def _through_runtime(served_shots: int = 8):
    """Runtime.contextualise itself (its window mapping and row checks) over a stand-in Triton answering each
    row with the shot's own fused vector, the served model taking windows of `served_shots`:
    (contextualise, the ContextualEmbeddings sent, (the local windows, the version asked) of each call)."""
    from types import SimpleNamespace

    from mediafm.schema import ContextualEmbedding, decode
    from streams.runtime import Runtime

    sent, calls = [], []

    async def run_windows(fused, title, local, rows, profile, version=""):
        calls.append((local, version))
        for k, r in rows:
            if not 0 <= r < local[k].end - local[k].start:  # as the real one refuses it
                raise IndexError("rows wanted from outside their window")
        return np.stack([fused[local[k].start + r] for k, r in rows]), "1"

    async def plan(profile):
        return served_shots, served_shots // 2

    async def send(topic, key, value):
        sent.append(decode(value, expect=ContextualEmbedding))

    async def acked():
        pass

    me = SimpleNamespace(settings=Settings(), window_plan=plan, run_windows=run_windows, send=send,
                         sends_acknowledged=acked, topics=SimpleNamespace(embeddings="e"))

    async def contextualise_(shots, windows_for, *, n_shots, version=""):
        return await Runtime.contextualise(me, shots, windows_for, n_shots=n_shots, version=version)

    return contextualise_, sent, calls


@pytest.mark.parametrize("served", [8, 4])
def test_a_live_event_goes_on_past_a_gap_longer_than_its_window(served):
    """Shots 6-29 of a 40-shot event are lost upstream, more than a window (8 shots; the served model may take
    fewer). Before, the finals still owed to shots 4 and 5 were asked of the window ending at shot 30, which does
    not hold them: KeyError in Runtime.contextualise, shot 30 dead-lettered, the event's record never written
    again, and so every later shot of the event dead-lettered the same way. Now those finals get a window
    ending at them, in the same request, and each shot that came has one provisional and one final, of its own
    vector, from a window that holds it."""

    contextualise_, sent, _ = _through_runtime(served)
    live, tables = _live_stage(contextualise_)
    n, lost = 40, set(range(6, 30))
    rng = np.random.default_rng(1)
    vecs = {i: (v := rng.normal(size=LAY.fused_dim)) / np.linalg.norm(v) for i in range(n)}
    arrive = [dataclasses.replace(_fused(shot_index=i, n_shots=n if i == n - 1 else None, fused=vec_to_bytes(vecs[i])),
                                  title_id="ev", kind="live") for i in range(n) if i not in lost]

    _feed(live, tables, arrive)
    kept = [i for i in range(n) if i not in lost]
    assert sorted((m.shot_index, m.final) for m in sent) == sorted([(i, False) for i in kept] + [(i, True) for i in kept])
    for m in sent:
        assert m.window_start <= m.shot_index < m.window_end and m.window_end - m.window_start <= served
        assert np.allclose(m.vector(), vecs[m.shot_index], atol=1e-6), m.shot_index
    late = {m.shot_index: m for m in sent if m.final and m.shot_index in (4, 5)}
    assert [late[4].window_end, late[5].window_end] == [6, 6], "the finals left behind: a window ending at them"
    st = LiveProgress.from_bytes(tables["live-events"][b"ev"])
    assert st.over and st.lost == len(lost) and tables["live-shots"] == {}


def test_a_jump_in_a_live_events_indices_costs_a_window_of_lookups_not_the_jump():
    """A hostile live shot, index a billion less one, carrying n_shots of a billion, after shots 0-3. Before, the
    stage looked up (and deleted) every index of the jump in its table: a billion RocksDB calls in one go, the
    worker's event loop blocked for hours. Now it looks at what the table can hold, a window's worth, and the
    event ends with every shot that came finalised."""
    import asyncio

    from mediafm.schema import MAX_INDEX

    class Counted(dict):
        looked = 0

        def __contains__(self, k):
            Counted.looked += 1
            return super().__contains__(k)

        def get(self, k, default=None):
            Counted.looked += 1
            return super().get(k, default)

        def pop(self, k, *default):
            Counted.looked += 1
            return super().pop(k, *default)

    contextualise_, sent, _ = _through_runtime(8)
    live, tables = _live_stage(contextualise_)
    live.shots = tables["live-shots"] = Counted()
    n = min(10**9, MAX_INDEX + 1)
    arrive = [dataclasses.replace(_fused(shot_index=i, n_shots=None), title_id="ev", kind="live") for i in range(4)]
    arrive.append(dataclasses.replace(_fused(shot_index=n - 1, n_shots=n), title_id="ev", kind="live"))

    async def main():
        for s in arrive:
            await live.on_shot(s)

    asyncio.run(main())
    assert Counted.looked < 200, Counted.looked
    assert sorted((m.shot_index, m.final) for m in sent) == sorted([(i, f) for i in [0, 1, 2, 3, n - 1]
                                                                    for f in (False, True)])
    st = LiveProgress.from_bytes(tables["live-events"][b"ev"])
    assert st.over and st.lost == n - 5 and tables["live-shots"] == {}


def test_shots_refused_upstream_end_a_live_event_or_let_it_go_on():
    """The encode and fuse stages send a ShotsRefused in place of the live shots they dead-letter. Before, the
    live stage learnt of them only from a later shot, so an event whose last shots (those carrying n_shots) were
    refused never ended: its last shots never had a final, its held shots stayed. Now:
    - refused last shots end the event (every shot that came: one provisional, one final);
    - refused shots mid-event are counted when they would have come, and the event goes on;
    - a ShotsRefused that comes after later shots only brings n_shots, and one after the end changes nothing;
    - one whose n_shots is below the shots that came is refused, naming both."""
    import asyncio

    from mediafm.schema import ShotsRefused

    def shot(i: int, n: int | None = None):
        return dataclasses.replace(_fused(shot_index=i, n_shots=n), title_id="ev", kind="live")

    def refused(first: int, last: int, n: int | None = None):
        return ShotsRefused(title_id="ev", first=first, last=last, stage="encode", reason="undecodable", n_shots=n)

    def run(steps):
        contextualise_, sent, _ = _through_runtime(8)
        live, tables = _live_stage(contextualise_)

        async def main():
            for x in steps:
                await (live.on_refused(x) if isinstance(x, ShotsRefused) else live.on_shot(x))

        asyncio.run(main())
        st = LiveProgress.from_bytes(tables["live-events"][b"ev"])
        return sorted((m.shot_index, m.final) for m in sent), st, tables["live-shots"]

    def each(kept):
        return sorted([(i, False) for i in kept] + [(i, True) for i in kept])

    got, st, held = run([shot(i) for i in range(16)] + [refused(16, 19, 20)])
    assert got == each(range(16)) and st.over and st.lost == 4 and held == {}
    got, st, held = run([shot(i) for i in range(6)] + [refused(6, 9)] + [shot(i, 20 if i == 19 else None)
                                                                          for i in range(10, 20)])
    assert got == each([*range(6), *range(10, 20)]) and st.over and st.lost == 4 and held == {}
    got, st, held = run([shot(i) for i in range(10)] + [refused(12, 13, 14), refused(10, 11, 14)])
    assert got == each(range(10)) and st.over and st.lost == 4 and held == {}
    got, st, _ = run([shot(i) for i in range(10)] + [refused(8, 9), refused(6, 7, 10)])  # late, then n only
    assert got == each(range(10)) and st.over and st.lost == 0
    with pytest.raises(SchemaError, match="n_shots=5, but shots up to 9 have come"):
        run([shot(i) for i in range(10)] + [refused(3, 4, 5)])


@pytest.mark.parametrize("odd", [{5}, {0}, set(range(6, 12))])
def test_a_live_event_whose_shots_change_profile_goes_on_in_windows_of_one_profile(odd):
    """Shots of an offline-profile event come encoded under the production profile (a worker started with another
    encoder_profile took the partition): one shot mid-event, the first shot only, or every shot from 6 on. Before,
    the odd shot was held and every window holding it refused ("one title, one profile"), so every later shot was
    dead-lettered until it left the window. Now windows hold one profile's shots (Runtime.contextualise refuses any
    other), the finals owed at a change go out at once, and every shot gets one provisional and one final."""
    import asyncio

    from mediafm.profiles import PRODUCTION

    contextualise_, sent, calls = _through_runtime(8)
    live, tables = _live_stage(contextualise_)
    n = 12
    shots = [dataclasses.replace(_fused(shot_index=i, n_shots=n if i == n - 1 else None), title_id="ev", kind="live")
             for i in range(n)]
    for i in odd:
        shots[i] = dataclasses.replace(shots[i], profile=PRODUCTION.name,
                                       fused=vec_to_bytes(np.ones(PRODUCTION.layout.fused_dim)))

    async def main():
        for s in shots:
            await live.on_shot(s)

    asyncio.run(main())
    assert sorted((m.shot_index, m.final) for m in sent) == sorted([(i, f) for i in range(n) for f in (False, True)])
    assert all(m.profile == shots[m.shot_index].profile for m in sent)
    st = LiveProgress.from_bytes(tables["live-events"][b"ev"])
    assert st.over and st.lost == 0 and st.profile == shots[-1].profile and tables["live-shots"] == {}
    changes = sum(shots[i].profile != shots[i - 1].profile for i in range(1, n))
    assert [v for _, v in calls].count("") == 1 + changes, "each profile's model pins its own version"


@pytest.mark.parametrize("bad", [12, 39])
def test_a_live_shot_whose_own_pass_is_refused_is_not_held(bad):
    """Every MediaFM pass holding shot `bad` is refused (a 400 from Triton: the shot's own fault). Its pass fails,
    it is dead-lettered and counted lost (as the contextualise agent does, by a ShotsRefused). Before, it stayed in
    the table: later windows held it, so every later shot was refused too and the table grew for good; or, where
    a later pass did take it, it got a final with no provisional. The last shot (39): the event ends, nothing held."""
    import asyncio

    from mediafm.errors import BadRequest
    from streams.runtime import Runtime

    real, sent, _ = _through_runtime(8)

    async def contextualise_(shots, windows_for, *, n_shots, version=""):
        if bad in [s.shot_index for s in shots]:
            raise BadRequest(f"shot {bad}: the model refuses it")
        return await real(shots, windows_for, n_shots=n_shots, version=version)

    live, tables = _live_stage(contextualise_)
    n = 40
    shots = [dataclasses.replace(_fused(shot_index=i, n_shots=n if i == n - 1 else None), title_id="ev", kind="live")
             for i in range(n)]

    async def main():
        for s in shots:
            try:
                await live.on_shot(s)
            except BadInput as e:
                await live.on_refused(Runtime.refusal("contextualise", [s], str(e)))

    asyncio.run(main())
    kept = [i for i in range(n) if i != bad]
    assert sorted((m.shot_index, m.final) for m in sent) == sorted([(i, f) for i in kept for f in (False, True)])
    st = LiveProgress.from_bytes(tables["live-events"][b"ev"])
    assert st.over and st.lost == 1 and tables["live-shots"] == {}, sorted(tables["live-shots"])


@pytest.mark.parametrize("gap", [False, True])
def test_a_live_shot_redelivered_after_a_kill_before_its_deletes_lets_go_of_what_its_step_did(gap):
    """A kill -9 after a shot's record is written, before the shots its step let go are deleted: the redelivered
    shot is a duplicate. Before, it deleted nothing, and no later step looks below its own window again: a shot (a
    window of them after a gap) stayed in the table for good. Now the duplicate deletes what that step let go."""
    import asyncio

    contextualise_, _, _ = _through_runtime(8)
    live, tables = _live_stage(contextualise_)
    n, at = 40, 20
    order = [i for i in range(n) if not gap or not 12 <= i < at]
    shots = {i: dataclasses.replace(_fused(shot_index=i, n_shots=n if i == n - 1 else None), title_id="ev",
                                    kind="live") for i in order}

    async def main():
        for i in order:
            kept = dict(tables.get("live-shots", {}))
            await live.on_shot(shots[i])
            if i == at:
                tables["live-shots"].update({k: v for k, v in kept.items() if k not in tables["live-shots"]})
                await live.on_shot(shots[i])  # the redelivery

    asyncio.run(main())
    assert LiveProgress.from_bytes(tables["live-events"][b"ev"]).over
    assert tables["live-shots"] == {}, sorted(tables["live-shots"])


def test_a_served_window_no_longer_than_the_right_context_is_said(caplog):
    """A served model of 4-shot windows under live_right_context=6 (window_shots 8): a final's window cannot hold
    its right context, and its own window reaches back to shots already let go. Before, nothing said so. Now a
    warning names both settings, once, and every shot still gets one provisional and one final."""
    import asyncio
    import logging

    contextualise_, sent, _ = _through_runtime(4)
    live, tables = _live_stage(contextualise_)
    live.rt.settings = Settings(window_shots=8, window_stride=4, live_right_context=6)
    n = 20
    shots = [dataclasses.replace(_fused(shot_index=i, n_shots=n if i == n - 1 else None), title_id="ev", kind="live")
             for i in range(n)]

    async def main():
        for s in shots:
            await live.on_shot(s)

    with caplog.at_level(logging.WARNING, logger="streams.live"):
        asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if "live_right_context=6" in r.getMessage()]
    assert len(said) == 1 and "windows of 4 shots" in said[0], said
    assert sorted((m.shot_index, m.final) for m in sent) == sorted([(i, f) for i in range(n) for f in (False, True)])
    assert tables["live-shots"] == {}


@pytest.mark.parametrize("end", ["last shot after a gap", "ShotsRefused"])
def test_an_ended_live_event_killed_before_its_deletes_lets_go_of_its_shots_on_the_redelivery(end):
    """A kill -9 after an ended event's record is written, before the shots it held are deleted: the redelivered
    message that ended it deletes them. Before, it deleted the last window before shot n-1, which after a gap (or
    when a ShotsRefused ended the event, which deleted nothing) were not the shots held: up to a window of them
    stayed in the table for good."""
    import asyncio

    from mediafm.schema import ShotsRefused

    contextualise_, _, _ = _through_runtime(8)
    live, tables = _live_stage(contextualise_)
    n = 40
    first = [dataclasses.replace(_fused(shot_index=i, n_shots=None), title_id="ev", kind="live") for i in range(10)]
    last = (dataclasses.replace(_fused(shot_index=n - 1, n_shots=n), title_id="ev", kind="live")
            if end.startswith("last") else
            ShotsRefused(title_id="ev", first=10, last=n - 1, stage="encode", reason="x", n_shots=n))

    async def deliver(x):
        await (live.on_refused(x) if isinstance(x, ShotsRefused) else live.on_shot(x))

    async def main():
        for s in first:
            await deliver(s)
        kept = dict(tables["live-shots"])
        await deliver(last)
        tables["live-shots"].update(kept)  # as if the deletes never ran
        if not isinstance(last, ShotsRefused):
            tables["live-shots"][live.key("ev", n - 1)] = last.to_bytes()
        await deliver(last)  # the redelivery

    asyncio.run(main())
    assert LiveProgress.from_bytes(tables["live-events"][b"ev"]).over
    assert tables["live-shots"] == {}, sorted(tables["live-shots"])


def test_contextualise_maps_a_window_with_gaps_to_its_shots():
    """Runtime.contextualise (the one publishing path) takes a live window that lacks shots lost upstream: each
    pick's row is its own shot's, not the shot at its offset from the window's first."""
    import asyncio

    from mediafm.windows import Window

    rng = np.random.default_rng(0)
    present = [3, 4, 6, 9, 10]
    vecs = {i: (v := rng.normal(size=LAY.fused_dim)) / np.linalg.norm(v) for i in present}
    shots = [dataclasses.replace(_fused(shot_index=i, fused=vec_to_bytes(vecs[i]), n_shots=None), kind="live",
                                 title_id="ev") for i in present]
    contextualise_, sent, calls = _through_runtime(8)
    picks = [(6, 0, False), (9, 1, True), (10, 1, True), (3, 0, True)]
    count, _ = asyncio.run(contextualise_(shots, lambda size, stride: ([Window(3, 11), Window(6, 11)], picks),
                                          n_shots=None))
    assert [[(w.start, w.end) for w in local] for local, _ in calls] == [[(0, 5), (2, 5)]], "rows of `fused`"
    assert count == 4 and [m.shot_index for m in sent] == [6, 9, 10, 3]
    for m in sent:
        assert np.allclose(m.vector(), vecs[m.shot_index], atol=1e-2), m.shot_index


def test_a_live_shot_ref_refused_at_the_encode_stage_is_said_in_its_place():
    """A live ShotRef the encode stage refuses before encoding (an unknown profile, an empty span) was only
    dead-lettered: an event whose last shot that was never ended. Now a ShotsRefused stands in its place, a run of
    its own between the shots around it, so it goes out after the shots before it. A title's is sent too (naming
    its request and n_shots): the contextualise stage gives the publication up on it."""
    bad = dataclasses.replace(_ref(4, title="ev", kind="live"), n_shots=5, profile="nope")
    with pytest.raises(BadInput, match="nope"):
        encode.parse(bad.to_bytes())
    r = encode.refused_ref(bad.to_bytes(), "unknown encoder profile 'nope'")
    assert (r.title_id, r.first, r.last, r.n_shots, r.stage) == ("ev", 4, 4, 5, "encode")
    t = encode.refused_ref(dataclasses.replace(_ref(4), profile="nope", request_id="r1").to_bytes(), "x")
    assert (t.kind, t.title_id, t.request_id, t.first, t.last, t.n_shots) == ("title", "t", "r1", 4, 4, 10)
    assert encode.refused_ref(b"not msgpack", "x") is None
    items = [(f"e{i}", _ref(i, title="ev", kind="live")) for i in (2, 3)] + [("e4", r)] + \
        [("e5", _ref(5, title="ev", kind="live"))]
    assert [[e for e, _ in run] for run in encode.runs(items)] == [["e2", "e3"], ["e4"], ["e5"]]


def test_a_live_event_with_no_shot_for_live_idle_end_s_is_ended_and_holds_nothing():
    """A feed that dies without its last segment: before 2026-12-08 its event held a window of fused shots in the
    table (and changelog) for good, and its last live_right_context shots never got a final. Now the worker's
    timer finds it idle (LiveEvents.idle), and the record it sends through the fused topic (idle_end) ends it as
    a last segment would: every shot one final, nothing held; a shot after that end is refused, a redelivery
    of one before it is not."""
    import asyncio

    provisional, final = [], []

    async def contextualise_(shots, windows_for, *, n_shots, version=""):
        _, picks = windows_for(8, 4)
        for i, _, is_final in picks:
            (final if is_final else provisional).append(i)
        return len(picks), "1"

    live, tables = _live_stage(contextualise_)
    live.rt.settings = Settings(window_shots=8, window_stride=4, live_right_context=2, live_idle_end_s=60,
                                partitions=4)
    shots = [dataclasses.replace(_fused(shot_index=i, n_shots=None), title_id="ev", kind="live") for i in range(20)]
    _feed(live, tables, shots)
    assert len(final) == 18 and len(tables["live-shots"]) == 8, "two shots owed a final, a window held"

    from kafka.partitioner.default import murmur2

    from mediafm.topics import partition_of

    p = partition_of("ev", 4)
    assert p == (murmur2(b"ev") & 0x7FFFFFFF) % 4, "kafka-python's partitioner agrees"
    t = live.seen["ev"]
    assert live.idle(t + 61, {0, 1, 2, 3} - {p}) == [], "another worker's partition: and its count is dropped"
    assert "ev" not in live.seen
    assert live.idle(t + 61, {0, 1, 2, 3}) == [], "the partition gained: counted from now"
    t = live.seen["ev"]
    assert live.idle(t + 59, {0, 1, 2, 3}) == [], "not idle yet"
    assert live.idle(t + 61, {0, 1, 2, 3}, fed={"ev": t + 30}) == [], "a segment came 31 s ago: the feed is alive"
    assert live.idle(t + 61, {0, 1, 2, 3}, backlog={p}) == [], "its partition has records on the way"
    ((eid, st),) = live.idle(t + 61, {0, 1, 2, 3}, fed={"ev": t - 5}, backlog={(p + 1) % 4})
    refusal = live.idle_end(eid, st, 61.0)
    assert (refusal.first, refusal.last, refusal.n_shots, refusal.kind) == (19, 19, 20, "live")
    from mediafm.schema import ShotsRefused, decode

    asyncio.run(live.on_refused(decode(refusal.to_bytes(), expect=ShotsRefused)))  # as the agent takes it
    assert sorted(final) == list(range(20)) and sorted(provisional) == list(range(20)), "each shot once of each"
    assert tables["live-shots"] == {} and LiveProgress.from_bytes(tables["live-events"][b"ev"]).over
    assert "ev" not in live.seen
    asyncio.run(live.on_shot(shots[5]))  # a redelivery from before the end: a duplicate, nothing more
    late = dataclasses.replace(shots[0], shot_index=20)
    with pytest.raises(SchemaError, match=r"ended at shot 19 .*live_idle_end_s=60.*publish the rest .* new event"):
        asyncio.run(live.on_shot(late))


def test_a_worker_started_after_its_events_went_quiet_finds_them_in_its_table():
    """Events idle from before the worker started are in no shot it saw: the first look counts them from then."""
    async def contextualise_(shots, windows_for, *, n_shots, version=""):
        _, picks = windows_for(8, 4)
        return len(picks), "1"

    live, tables = _live_stage(contextualise_)
    live.rt.settings = Settings(window_shots=8, window_stride=4, live_right_context=2, live_idle_end_s=60)
    _feed(live, tables, [dataclasses.replace(_fused(shot_index=i, n_shots=None), title_id="ev", kind="live")
                         for i in range(5)])
    restarted = type(live)(live.rt)  # a new worker on the same table
    everything = set(range(live.rt.settings.partitions))
    assert restarted.idle(1000.0, everything) == [] and restarted.seen == {"ev": 1000.0}
    assert [e for e, _ in restarted.idle(1061.0, everything)] == ["ev"]
