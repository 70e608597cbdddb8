"""bench/live.py's account of an event's outputs, shot by shot (what `--kill-at` reports after a kill -9)."""

from pathlib import Path

import numpy as np

from mediafm.schema import ContextualEmbedding

BENCH = Path(__file__).resolve().parents[2] / "bench"


def out(i: int, final: bool, start: float, end: float, value: float = 0.0) -> ContextualEmbedding:
    return ContextualEmbedding(
        title_id="live-x", shot_index=i, start_s=start, end_s=end, embedding=np.full(4, value, "<f4").tobytes(),
        dim=4, model_version="1", profile="offline", window_start=0, window_end=i + 1, final=final, kind="live")


def test_an_event_with_every_shot_once_and_tiled_spans_is_reported_clean(bench_script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    live = bench_script("live")
    spans = [(0.0, 2.5), (2.5, 6.0), (6.0, 7.0)]
    r = live.per_shot([out(i, f, *span) for f in (False, True) for i, span in enumerate(spans)])
    assert r == {"shots": 3, "no_final": [], "no_provisional": [], "finals_twice": [], "finals_differ": [],
                 "provisionals_twice": 0, "gaps": []}


def test_a_missing_final_a_final_published_again_with_other_values_and_a_false_cut_are_each_named(
        bench_script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    live = bench_script("live")
    got = [out(0, False, 0, 2), out(0, True, 0, 2), out(0, True, 0, 2),  # again, the same values: allowed
           out(1, False, 2, 4), out(1, True, 2, 4, 1.0), out(1, True, 2, 4, 2.0),  # again, other values
           out(2, False, 4, 5), out(2, False, 4, 5),  # a provisional twice and no final
           out(3, False, 5, 6), out(3, True, 5, 6),
           out(4, False, 6.5, 8), out(4, True, 6.5, 8)]  # half a second of the event in no shot
    r = live.per_shot(got)
    assert r["shots"] == 5
    assert r["no_final"] == [2] and r["no_provisional"] == []
    assert r["finals_twice"] == [0, 1] and r["finals_differ"] == [1]
    assert r["provisionals_twice"] == 1
    assert r["gaps"] == [(1, 1.0), (3, 0.5)]  # 1 -> 3 skips the shot with no final; 3 -> 4 leaves 0.5 s


def test_the_event_clock_starts_at_the_timely_segments_and_names_those_a_held_send_made_late(
        bench_script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    live = bench_script("live")
    from mediafm.schema import LiveSegment

    # 2-s segments of an event that started at t = 1000: each is stamped when its last frame has happened (its
    # end, the next one's start), 0.01 s of sleep overshoot; the send of segment 2 was held 9 s, so 3 to 6 are
    # stamped one after another once it returned, and 7 is on time again.
    stamped = [1002.01, 1004.01, 1006.01, 1015.02, 1015.03, 1015.04, 1015.05, 1016.01]
    sent = [LiveSegment(event_id="e", segment_index=k, uri=f"/s/{k}.ts", start_s=2.0 * k, published_at=at)
            for k, at in enumerate(stamped)]
    t0, late = live.event_clock(sent, segment_s=2.0)
    assert abs(t0 - 1000.01) < 1e-9
    np.testing.assert_allclose(late, [0.0, 0.0, 0.0, 7.01, 5.02, 3.03, 1.04, 0.0], atol=1e-9)
