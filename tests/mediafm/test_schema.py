"""mediafm.schema: versioned msgpack records, validated on decode."""

import msgpack
import numpy as np
import pytest

from mediafm.errors import SchemaError
from mediafm.schema import (
    MAX_MESSAGE_BYTES,
    RECORD_BYTES,
    EncodedShot,
    EncodedShots,
    FusedShot,
    FusedShots,
    TitleRequest,
    bytes_to_vec,
    decode,
    record_shots,
    shot_records,
    vec_to_bytes,
)


def _shot(**kw):
    base = dict(title_id="tt1", shot_index=3, start_s=1.0, end_s=2.5, profile="production",
                video=vec_to_bytes(np.arange(4, dtype=np.float32)), audio=None, text=None, n_shots=10)
    base.update(kw)
    return EncodedShot(**base)


def test_roundtrip_keeps_every_field():
    shot = _shot()
    back = decode(shot.to_bytes(), expect=EncodedShot)
    assert back == shot
    np.testing.assert_array_equal(bytes_to_vec(back.video, 4), np.arange(4, dtype=np.float32))


def test_vectors_are_little_endian_float32():
    b = vec_to_bytes(np.array([1.0, -2.0], dtype=">f8"))
    assert b == np.array([1.0, -2.0], dtype="<f4").tobytes()


def _raw(**body):
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize("data, match", [
    (b"\xc1garbage", "not msgpack"),
    (_raw(schema="nope", v=1), "unknown schema 'nope'"),
    (_raw(schema="mediafm.encoded_shot", v=99), "version 99 is not supported"),
    (_raw(schema="mediafm.encoded_shot", v=1, title_id="t"), "missing required field 'shot_index'"),
    (msgpack.packb([1, 2]), "must be a msgpack map"),
])
def test_malformed_messages_say_what_is_wrong(data, match):
    with pytest.raises(SchemaError, match=match):
        decode(data)


def test_wrong_field_type_and_unknown_field():
    body = msgpack.unpackb(_shot().to_bytes())
    body["shot_index"] = "three"
    with pytest.raises(SchemaError, match="field 'shot_index' must be int, got str"):
        decode(msgpack.packb(body, use_bin_type=True))
    body["shot_index"] = 3
    body["surprise"] = 1
    with pytest.raises(SchemaError, match=r"unknown fields \['surprise'\]"):
        decode(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize("field, value, match", [
    ("shot_index", True, "field 'shot_index' must be int, got bool"),
    ("n_shots", False, "field 'n_shots' must be int, got bool"),
    ("video", "text", "field 'video' must be bytes, got str"),
    ("start_s", float("nan"), "field 'start_s' is nan; times are finite seconds"),
    ("end_s", float("inf"), "field 'end_s' is inf"),
    ("title_id", "a\x1b[2Jb", "field 'title_id' has control characters"),
    ("title_id", "a\u202eb", "field 'title_id' has control characters"),
    ("title_id", "a\x85b", "field 'title_id' has control characters"),
    ("title_id", "a\x7fb", "field 'title_id' has control characters"),
    ("request_id", "r\u2028", "field 'request_id' has control characters"),
    # invisible (two ids that look the same) and unencodable (a lone surrogate: a file name in another encoding
    # taken as an id was a UnicodeEncodeError at the publisher, before 2026-12-08)
    ("title_id", "film\u200b", r"has control characters \['\\u200b'\]"),
    ("title_id", "\ufefffilm", r"has control characters \['\\ufeff'\]"),
    ("title_id", "fi\u200elm", r"has control characters \['\\u200e'\]"),
    ("request_id", "a#b", "has '#' or '/'"),
    # found by sending raw messages to a worker (2026-12-05): a span at 1e15 s overflowed a media seek, a clock
    # at 1e16 s lost its frames to float precision, a publication time of -1e12 s skewed the latency metrics, and
    # an n_shots of 30 million made a title's progress record too large to store, which crashed the worker
    ("end_s", 1e15, r"field 'end_s' is 1e\+15; it is seconds on the media's clock, within -1e\+11..1e\+11"),
    ("start_s", -1e16, r"field 'start_s' is -1e\+16"),
    ("published_at", -1e12, r"field 'published_at' is -1e\+12; it is seconds since the epoch \(time.time\(\)\), "
                            r"within 0..1e\+11"),
    ("n_shots", 30_000_000, r"n_shots=30000000 for 'tt1', over the 200,000 a title may have"),
    ("kind", "clip", r"kind='clip'; a shot is of a 'title' or of a 'live' event"),
])
def test_each_field_is_checked_on_the_fast_path_too(field, value, match):
    """decode checks plain-typed fields by exact type first (mediafm.schema._exact_types): what it let through
    before must still pass, and what it refused must still be refused with the same reason."""
    body = msgpack.unpackb(_shot().to_bytes())
    body[field] = value
    with pytest.raises(SchemaError, match=match):
        decode(msgpack.packb(body, use_bin_type=True))


def test_an_int_where_a_float_is_expected_is_taken_as_a_float():
    body = msgpack.unpackb(_shot().to_bytes())
    body["start_s"], body["n_shots"], body["text"] = 1, None, None
    shot = decode(msgpack.packb(body, use_bin_type=True), expect=EncodedShot)
    assert type(shot.start_s) is float and shot.start_s == 1.0 and shot.n_shots is None
    assert decode(_shot(title_id="Ünïcode \u00e9 ok").to_bytes()).title_id == "Ünïcode \u00e9 ok"


def test_expect_rejects_another_schema():
    with pytest.raises(SchemaError, match="expected a mediafm.fused_shot message"):
        decode(_shot().to_bytes(), expect=FusedShot)


def _fused(i: int, **kw) -> FusedShot:
    return FusedShot(**{**dict(title_id="tt1", shot_index=i, start_s=float(i), end_s=i + 1.0, profile="offline",
                               fused=vec_to_bytes(np.full(3, i, np.float32)), present=[True, True, False],
                               n_shots=10, request_id="r1", published_at=5.0), **kw})


def test_a_fused_record_holds_one_shot_or_several_of_one_title():
    assert record_shots(FusedShots, _fused(4).to_bytes()) == [_fused(4)]
    many = FusedShots(title_id="tt1", request_id="r1", shots=[_fused(i).to_bytes() for i in (7, 2, 3)])
    assert record_shots(FusedShots, many.to_bytes()) == [_fused(7), _fused(2), _fused(3)], "every shot, in the order sent"


@pytest.mark.parametrize("shots, match", [
    ([], "holds no shot"),
    ([_fused(1).to_bytes(), _fused(2, title_id="tt2").to_bytes()], "holds a shot of 'tt2'#r1: one record carries one"),
    ([_fused(1, request_id="r2").to_bytes()], "holds a shot of 'tt1'#r2"),
    ([_fused(1).to_bytes(), b"\xc1"], "shot 1: not msgpack"),
    ([_fused(1).to_bytes(), _shot().to_bytes()], "shot 1: expected a mediafm.fused_shot message"),
])
def test_a_fused_record_that_mixes_titles_or_holds_a_bad_shot_is_refused_whole(shots, match):
    with pytest.raises(SchemaError, match=match):
        record_shots(FusedShots, FusedShots(title_id="tt1", request_id="r1", shots=shots).to_bytes())


def test_a_run_of_fused_shots_goes_in_as_few_records_as_fit_the_limit():
    run = [_fused(i, n_shots=120, fused=vec_to_bytes(np.full(2176, i, np.float32))).to_bytes() for i in range(120)]
    per = len(run[0])
    records = list(shot_records(FusedShots, run, "tt1", "r1"))
    assert len(records) == -(-120 // (RECORD_BYTES // per)), "as few records as fit"
    assert all(len(r) <= RECORD_BYTES + 1024 for r in records)
    assert [len(record_shots(FusedShots, r)) for r in records[:-1]] == [RECORD_BYTES // per] * (len(records) - 1)
    assert [s.shot_index for r in records for s in record_shots(FusedShots, r)] == list(range(120)), "each once, in order"
    assert list(shot_records(FusedShots, run[:1], "tt1", "r1")) == run[:1], "a lone shot goes as its FusedShot"
    assert list(shot_records(FusedShots, run[:3], "tt1", "r1", limit=1)) == run[:3], "a shot over the limit goes alone"


def test_a_fused_record_is_a_fused_shot_or_fused_shots():
    with pytest.raises(SchemaError, match="expected a mediafm.fused_shot or mediafm.fused_shots message, got mediafm.enc"):
        record_shots(FusedShots, _shot().to_bytes())


def test_an_encoded_record_holds_one_encoded_shot_or_a_run_of_one_title_and_nothing_else():
    run = [_shot(shot_index=i, title_id="tt1", request_id="r1") for i in range(3)]
    assert record_shots(EncodedShots, run[0].to_bytes()) == run[:1]
    [record] = shot_records(EncodedShots, [m.to_bytes() for m in run], "tt1", "r1")
    assert record_shots(EncodedShots, record) == run, "every shot, in the order sent"
    mixed = EncodedShots(title_id="tt1", request_id="r1", shots=[run[0].to_bytes(), _shot(title_id="tt2").to_bytes()])
    with pytest.raises(SchemaError, match="mediafm.encoded_shots of 'tt1'#r1 holds a shot of 'tt2'#: one record"):
        record_shots(EncodedShots, mixed.to_bytes())
    fused_inside = EncodedShots(title_id="tt1", request_id="r1", shots=[_fused(1).to_bytes()])
    with pytest.raises(SchemaError, match="shot 0: expected a mediafm.encoded_shot message, got mediafm.fused_shot"):
        record_shots(EncodedShots, fused_inside.to_bytes())
    with pytest.raises(SchemaError, match="expected a mediafm.encoded_shot or mediafm.encoded_shots message, got "
                                          "mediafm.fused_shots"):
        record_shots(EncodedShots, FusedShots(title_id="tt1", request_id="r1", shots=[_fused(1).to_bytes()]).to_bytes())


def test_size_limit_on_both_sides():
    with pytest.raises(SchemaError, match="over the"):
        _shot(video=b"\0" * (MAX_MESSAGE_BYTES + 8)).to_bytes()
    with pytest.raises(SchemaError, match="over the"):
        decode(b"\0" * (MAX_MESSAGE_BYTES + 1))


def test_vector_length_and_nan_checked():
    with pytest.raises(SchemaError, match="has 8 bytes, expected 12"):
        bytes_to_vec(vec_to_bytes(np.zeros(2)), 3, what="video")
    with pytest.raises(SchemaError, match="NaN"):
        bytes_to_vec(vec_to_bytes(np.array([np.nan])), 1)


def test_contextual_embedding_float16_on_the_wire():
    from mediafm.schema import ContextualEmbedding, SchemaError, decode, vec_to_bytes

    v = np.random.default_rng(0).normal(size=64).astype(np.float32)
    m = ContextualEmbedding(title_id="t", shot_index=0, start_s=0.0, end_s=1.0, embedding=vec_to_bytes(v, "float16"),
                            dim=64, model_version="1", profile="offline", window_start=0, window_end=1, final=True,
                            dtype="float16")
    back = decode(m.to_bytes(), expect=ContextualEmbedding)
    assert len(back.embedding) == 128 and back.vector().dtype == np.float32
    np.testing.assert_allclose(back.vector(), v, rtol=1e-3, atol=1e-3)
    back.dtype = "float32"  # 128 bytes are not 64 float32 values
    with pytest.raises(SchemaError, match="expected 256 \\(float32 x 64\\)"):
        back.vector()


@pytest.mark.parametrize("rid", ["b#", "2026/11/30"])
def test_request_ids_that_could_join_two_titles_table_keys_are_refused(rid):
    # the contextualise stage keys a title's shots "<title_id>#<request_id>/<shot>": with '#' or '/' in the
    # request id, ("a#b", "") and ("a", "b#") would share keys and mix two titles' shots
    with pytest.raises(SchemaError, match=r"request_id .* has '#' or '/'; request ids are tokens"):
        decode(TitleRequest(title_id="a", uri="/m/a.mp4", request_id=rid).to_bytes())
    assert decode(TitleRequest(title_id="a#b", uri="/m/a.mp4", request_id="c0ffee").to_bytes()).title_id == "a#b"


def test_limits_leave_real_work_alone():
    """A 12-hour title cut every 0.2 s, epoch-second clocks, and a live event of any length pass."""
    for kw in ({"n_shots": 200_000, "shot_index": 199_999}, {"published_at": 1.8e9, "start_s": 1.8e9, "end_s": 1.8e9 + 2},
               {"kind": "live", "n_shots": None, "shot_index": 5_000_000}):
        shot = _shot(**kw)
        assert decode(shot.to_bytes()) == shot


@pytest.mark.parametrize("change, match", [
    ({"end_frame": 2**62}, r"field 'end_frame' is 4611686018427387904, over 1,000,000,000"),
    ({"start_frame": 30, "end_frame": 20}, r"has frames \[30, 20\), which end before they start"),
])
def test_a_shot_refs_frames_are_checked(change, match):
    """Found by sending raw messages to a worker (2026-12-05): both were accepted and embedded."""
    from mediafm.schema import ShotRef

    body = dict(title_id="tt1", shot_index=0, start_s=0.0, end_s=1.0, start_frame=0, end_frame=25,
                media=["/m/a.mp4"], media_start_s=0.0, text="", title_text="t", profile="offline", n_shots=1)
    assert decode(ShotRef(**body).to_bytes()).end_frame == 25
    with pytest.raises(SchemaError, match=match):
        decode(ShotRef(**{**body, **change}).to_bytes())


def test_a_live_shots_refused_is_written_as_before_its_request_id_and_a_titles_names_its_request():
    """ShotsRefused gained request_id (a title's refused shots are sent on too, 2026-12-07). A worker from before
    refuses a message with a field it does not know, so a live event's, whose request_id is "", is written
    without it, byte for byte as before; a title's names its request and n_shots, or is refused."""
    import msgpack

    from mediafm.schema import ShotsRefused

    live = ShotsRefused(title_id="ev", first=3, last=4, stage="encode", reason="x", n_shots=5, published_at=1.0)
    body = msgpack.unpackb(live.to_bytes())
    assert "request_id" not in body and decode(live.to_bytes()) == live
    title = ShotsRefused(title_id="t", first=3, last=4, stage="fuse", reason="x", n_shots=5, kind="title",
                         request_id="r1", published_at=1.0)
    assert msgpack.unpackb(title.to_bytes())["request_id"] == "r1" and decode(title.to_bytes()) == title
    with pytest.raises(SchemaError, match="a title's refused shots carry its n_shots"):
        decode(ShotsRefused(title_id="t", first=3, last=4, stage="fuse", reason="x", kind="title").to_bytes())


def _one_of_each():
    from mediafm.schema import ContextualEmbedding, DeadLetter, LiveSegment, ShotRef, ShotsRefused

    v = vec_to_bytes(np.ones(4, np.float32) / 2)
    return [
        TitleRequest(title_id="t", uri="file:///x.mp4", meta={"title": "a"}),
        LiveSegment(event_id="e", segment_index=0, uri="file:///x.ts", start_s=0.0, meta={"title": "a"}),
        ShotRef(title_id="t", shot_index=0, start_s=0, end_s=1, start_frame=0, end_frame=10, media=["file:///x"],
                media_start_s=0, text="", title_text="", profile="offline", n_shots=2),
        _shot(),
        FusedShot(title_id="t", shot_index=0, start_s=0, end_s=1, profile="offline", fused=v,
                  present=[True, False, False], n_shots=2),
        EncodedShots(title_id="tt1", shots=[_shot().to_bytes()]),
        ContextualEmbedding(title_id="t", shot_index=0, start_s=0, end_s=1, embedding=v, dim=4, model_version="1",
                            profile="offline", window_start=0, window_end=1, final=True),
        ShotsRefused(title_id="t", first=0, last=1, stage="encode", reason="x"),
        DeadLetter(stage="s", topic="t", partition=0, offset=0, key=None, reason="r", payload=b"p"),
    ]


_ODD = [None, 1, -1, 2**63, 1.5, float("nan"), "s", b"b", [], [1, "a"], [b"x"], {}, {b"k": 1, "k": 2},
        {"a": {b"x": 1}}, True, [[[]]], {"k": [b"x", {b"y": 1}]}]


def test_a_malformed_message_is_a_schema_error_in_every_stage_that_reads_it():
    """Every field of every record replaced by values of other shapes (lists, maps with bytes keys beside str ones,
    nested), and keys added: decode and each stage's parse either take it or raise SchemaError, the error a stage
    dead-letters. Before 2026-12-08 a list as the schema name or a bytes key beside a str key raised TypeError,
    which no stage catches: the worker stopped, and stopped again on the same message after each restart."""
    from mediafm.schema import TitleMeta
    from streams import contextualise, encode, fuse

    readers = {"ShotRef": encode.parse, "EncodedShot": fuse.parse, "EncodedShots": fuse.parse,
               "FusedShot": contextualise.parse}
    tried = 0
    for m in _one_of_each():
        body = msgpack.unpackb(m.to_bytes(), raw=False)
        variants = [{**body, k: x} for k in body for x in _ODD] + [{**body, b"extra": 1, "extra2": x} for x in _ODD]
        for b in variants:
            raw = msgpack.packb(b, use_bin_type=True)
            for read in (decode, readers.get(type(m).__name__)):
                if read is None:
                    continue
                tried += 1
                try:
                    got = read(raw)
                except SchemaError:
                    continue
                if hasattr(got, "meta"):  # the segment stages check meta when they use it
                    try:
                        TitleMeta.from_dict(got.meta, title_id="t")
                    except SchemaError:
                        pass
    assert tried > 2000


@pytest.mark.parametrize("change, match", [
    ({"dtype": "bogus"}, "dtype 'bogus' is not one of"),
    ({"dim": 5}, "has 16 bytes, expected 20"),
    ({"dim": 0}, "dim=0"),
    ({"embedding": vec_to_bytes(np.array([1, np.nan, 0, 0], np.float32))}, "NaN or inf"),
])
def test_a_contextual_embedding_is_checked_whole_where_it_is_decoded(change, match):
    """follow, the sink and any consumer call .vector() on what decode gave them, outside their own checks: a
    message with a vector that is not what it says stopped `mediafm follow` and the sink (before 2026-12-08)."""
    (emb,) = [m for m in _one_of_each() if type(m).__name__ == "ContextualEmbedding"]
    body = msgpack.unpackb(emb.to_bytes(), raw=False) | change
    with pytest.raises(SchemaError, match=match):
        decode(msgpack.packb(body, use_bin_type=True))


def test_a_float16_embedding_past_its_range_is_saturated_not_inf():
    """decode refuses a vector with inf in it: a worker publishing float16 must not make one of a large value."""
    from mediafm.schema import ContextualEmbedding

    v = np.array([1e6, -1e6, 0.5, 70000.0], np.float32)
    e = ContextualEmbedding(title_id="t", shot_index=0, start_s=0, end_s=1, embedding=vec_to_bytes(v, "float16"),
                            dim=4, model_version="1", profile="offline", window_start=0, window_end=1, final=True,
                            dtype="float16")
    got = decode(e.to_bytes()).vector()
    np.testing.assert_array_equal(got, np.array([65504, -65504, 0.5, 65504], np.float32))


def test_an_id_with_a_lone_surrogate_is_refused_before_it_is_written_and_persian_text_is_an_id():
    """No UTF-8 holds a lone surrogate (a file name in another encoding taken as an id): before 2026-12-08 check_id
    took it and writing the message was a UnicodeEncodeError at the publisher. ZWNJ, which Persian words are
    written with, stays allowed."""
    from mediafm.schema import check_id

    with pytest.raises(SchemaError, match=r"has control characters \['\\udcff'\]"):
        check_id("film\udcff")
    assert check_id("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645") == "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
