"""The whole product path on generated films: publish -> segment -> encode -> fuse -> MediaFM -> embeddings.

Real broker, real Triton (offline-profile encoders with their shipped weights),
a real `mediafm worker`, real decoded media.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from pathlib import Path

import msgpack
import numpy as np
import pytest
from conftest import rest_of_output

from mediafm.bus import Tail, producer
from mediafm.config import replace
from mediafm.dataset import Dataset
from mediafm.media.embed import embed_title
from mediafm.media.synthfilm import Cue, make_film, write_srt
from mediafm.profiles import OFFLINE
from mediafm.publish import backfill, cut_segments, publish_live, publish_title, sink
from mediafm.schema import ContextualEmbedding, DeadLetter, LiveSegment, TitleRequest, decode
from mediafm.stack import triton
from mediafm.synth import write_corpus
from mediafm.topics import Topics
from trainer.export import export
from trainer.train import TrainConfig, train

pytestmark = [pytest.mark.kafka, pytest.mark.triton, pytest.mark.slow]

FPS = 24


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    d = tmp_path_factory.mktemp("films")
    a = make_film(d / "a.mp4", shots=[36, 30, 42, 30], fps=FPS, size=(160, 96),
                  audio=["speech:where is the station", "tone:440", "noise", "speech:the train leaves at noon"])
    srt = write_srt(d / "a.srt", [Cue(0.2, 1.3, "Where is the station?"), Cue(3.0, 4.3, "The train leaves at noon.")])
    b = make_film(d / "b.mkv", shots=[30, 40, 30], fps=FPS, size=(160, 96), first_source=4)  # no audio stream
    live = make_film(d / "live.mp4", shots=[30, 36, 24, 40, 30, 28], fps=FPS, size=(160, 96), first_source=2,
                     audio=["tone:330", "noise", "tone:660", "noise", "tone:220", "tone:880"])
    return {"a": a, "srt": srt, "b": b, "live": live}


def _collect(settings, tail: Tail, want: dict[str, int], timeout_s: float) -> dict[str, list[ContextualEmbedding]]:
    """Embeddings (in topic order) of the wanted ids until each has `want` final ones, then the rest of what
    the pipeline publishes for its input (any more would be duplicates)."""
    got: dict[str, list[ContextualEmbedding]] = defaultdict(list)

    def done():
        return all(len({m.shot_index for m in got[t] if m.final}) >= n for t, n in want.items())

    for rec in tail.poll(timeout_s=timeout_s, stop=done):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.title_id in want:
            got[m.title_id].append(m)
    names = Topics.from_settings(settings)
    for rec in rest_of_output(settings, tail, [names.titles, names.live_segments, names.shots, names.encoded,
                                               names.fused], timeout_s=timeout_s):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.title_id in want:
            got[m.title_id].append(m)
    return got


def test_titles_and_a_live_event_end_to_end(kafka_stack, worker, offline_model, films, tmp_path):
    names = Topics.from_settings(kafka_stack)
    run = uuid.uuid4().hex[:6]
    ids = {"a": f"film-a-{run}", "b": f"film-b-{run}", "live": f"event-{run}"}
    tail, dead = Tail(kafka_stack, names.embeddings), Tail(kafka_stack, names.deadletter)

    publish_title(kafka_stack, films["a"].path, title_id=ids["a"], subtitles=films["srt"],
                  meta={"title": "Station", "synopsis": "Two strangers wait for a train.", "tags": ["drama"]})
    publish_title(kafka_stack, films["b"].path, title_id=ids["b"])
    segs = publish_live(kafka_stack, films["live"].path, event_id=ids["live"], segment_s=1.0)
    assert len(segs) >= 5 and segs[-1].last

    want = {ids[k]: len(films[k].shot_frames) for k in ("a", "b", "live")}
    got = _collect(kafka_stack, tail, want, timeout_s=300)
    tail.close()
    letters = [decode(r.value, expect=DeadLetter) for r in dead.poll(timeout_s=2)]
    dead.close()
    assert not [x for x in letters if any(i.encode() == x.key for i in ids.values())], letters

    for key, tid in ids.items():
        n = len(films[key].shot_frames)
        msgs = got[tid]
        finals = [m for m in msgs if m.final]
        # exactly one final per (title, shot, version), every shot, the served version, the offline profile
        assert sorted(m.shot_index for m in finals) == list(range(n)), (key, [m.shot_index for m in finals])
        assert {m.model_version for m in msgs} == {offline_model} and {m.profile for m in msgs} == {"offline"}
        # every message names the served model, its version and the representation (output by default)
        assert {(m.model, m.representation) for m in msgs} == {("mediafm_offline", "output")}
        for m in msgs:
            v = m.vector()
            assert m.dim == OFFLINE.layout.fused_dim and np.isfinite(v).all() and np.linalg.norm(v) > 0
            assert m.n_shots in (n, None) and m.window_start <= m.shot_index < m.window_end
        # shot spans follow the film's hard cuts (TransNetV2 on decoded frames)
        spans = sorted((m.start_s, m.end_s) for m in finals)
        np.testing.assert_allclose(spans, films[key].bounds_s, atol=1.5 / FPS)
        assert all(m.kind == ("live" if key == "live" else "title") for m in msgs)

    # titles: final only; the live event: a provisional for every shot, and its final after it
    assert not [m for k in ("a", "b") for m in got[ids[k]] if not m.final]
    live = got[ids["live"]]
    for i in range(want[ids["live"]]):
        kinds = [m.final for m in live if m.shot_index == i]
        assert kinds == [False, True], (i, kinds)
        prov = next(m for m in live if m.shot_index == i and not m.final)
        assert prov.window_end == i + 1, "a provisional embedding sees left context only"

    # `mediafm follow` prints them, one line each, provisional and final told apart
    import io

    from mediafm.publish import follow

    buf = io.StringIO()
    assert follow(kafka_stack, from_beginning=True, title_id=ids["live"], timeout_s=8, out=buf) == len(live)
    lines = buf.getvalue().splitlines()
    assert sum("provisional" in x for x in lines) == sum("final " in x for x in lines) == want[ids["live"]]
    assert all(ids["live"] in x and f"mediafm_offline:{offline_model}" in x for x in lines)

    # the sink writes what the pipeline made as a v1 dataset; equal to `mediafm embed` on the same file
    out = sink(kafka_stack, tmp_path / "sink", idle_s=3, profile="offline")  # other tests send production titles
    ds = Dataset(out["out"])
    assert ds.meta.fused_dim == OFFLINE.layout.fused_dim and ds.meta.title_dim == OFFLINE.layout.title
    sunk = {t.info.title_id: t for t in ds.iter_titles([ds.titles[i] for i in ids.values()])}
    assert sunk[ids["live"]].info.kind == "live"
    a = sunk[ids["a"]]
    assert a.fused.shape == (4, OFFLINE.layout.fused_dim)
    text = slice(*OFFLINE.layout.slices["text"])
    audio = slice(*OFFLINE.layout.slices["audio"])
    # shots [0, 1.5) [1.5, 2.75) [2.75, 4.5) [4.5, 5.75); cues [0.2, 1.3) and [3.0, 4.3)
    assert [bool(np.abs(a.fused[i, text]).sum() > 0) for i in range(4)] == [True, False, True, False], \
        "timed text lands on the shots its cues overlap, zeros elsewhere"
    assert not np.abs(sunk[ids["b"]].fused[:, audio]).any(), "no audio stream: zeros in the audio slice"
    local = embed_title(films["a"].path, out=tmp_path / "embed", settings=kafka_stack, subtitles=films["srt"],
                        meta=_meta_file(tmp_path, ids["a"]))
    ref = Dataset(local["out"])
    want_fused = next(ref.iter_titles(list(ref.titles.values()))).fused
    # Same frames, audio and text through the same encoders; Triton batches the pipeline's requests
    # with others, which moves float rounding in the convolutions (~1e-4), nothing more.
    cos = (a.fused * want_fused).sum(1)  # unit vectors
    diffs = {m: float(np.abs(a.fused[:, slice(*sl)] - want_fused[:, slice(*sl)]).max()) for m, sl in OFFLINE.layout.slices.items()}
    assert cos.min() > 0.9999, (cos, diffs)

    # the worker's Prometheus metrics saw it: latency publish -> embedding by kind, lag per partition
    metrics = _metrics(kafka_stack)
    for labels in ('final="final",kind="title"', 'final="provisional",kind="live"', 'final="final",kind="live"'):
        assert _sample(metrics, f"mediafm_e2e_latency_seconds_count{{{labels}}}") > 0, labels
    assert _sample(metrics, 'mediafm_shots_total{stage="encode"}') >= 13
    assert "mediafm_consumer_lag_messages{" in metrics
    # the live shots were encoded from the frames the segment stage had decoded (mediafm/media/segment_cache.py),
    # and still equal what a fresh decode gives (tests/mediafm/media/test_segment_cache.py)
    assert _sample(metrics, 'mediafm_live_decoded_segments_total{result="hit"}') >= len(segs)
    # its tables' RocksDB stores share one budget (streams/store.py): in use, and within it
    table_memory = _sample(metrics, "mediafm_table_memory_bytes")
    assert 0 < table_memory <= 1.25 * kafka_stack.table_memory_mb * 2**20, table_memory
    assert worker.poll() is None


def test_a_live_feed_that_drops_out_and_comes_back(kafka_stack, worker, offline_model, films, tmp_path):
    """The live film's feed stops after 3 s and comes back on the event's clock 100 s later, its media going on
    where it stopped: the shot open at the gap ends where the media stops, the frames after it are cut as a
    film of their own (mediafm.media.shots.GAP_S), and no shot spans the 100 s without media (before: one shot
    ran from 2.75 s to the first cut after the gap, its frames and audio sampled across the gap). A second
    event whose next segment starts inside the media of the one before is dead-lettered with the reason."""
    names = Topics.from_settings(kafka_stack)
    run = uuid.uuid4().hex[:6]
    gap_id, lap_id = f"drop-{run}", f"overlap-{run}"
    root = Path(kafka_stack.worker_media_roots[0]) / "live"
    stop_s, jump = 3.0, 100.0
    segs = cut_segments(films["live"].path, root / gap_id, 1.0)
    assert [s for _, s in segs][:4] == [0.0, 1.0, 2.0, stop_s]
    lap = cut_segments(films["live"].path, root / lap_id, 1.0)[:2]
    tail, dead = Tail(kafka_stack, names.embeddings), Tail(kafka_stack, names.deadletter)
    p = producer(kafka_stack)
    for k, (path, start) in enumerate(segs):
        seg = LiveSegment(event_id=gap_id, segment_index=k, uri=str(path.resolve()),
                          start_s=start + (jump if start >= stop_s else 0.0), last=k == len(segs) - 1)
        p.send(names.live_segments, key=gap_id.encode(), value=seg.to_bytes())
    for k, ((path, _), start) in enumerate(zip(lap, [0.0, 0.3], strict=True)):  # 0.7 s into [0, 1)
        seg = LiveSegment(event_id=lap_id, segment_index=k, uri=str(path.resolve()), start_s=start)
        p.send(names.live_segments, key=lap_id.encode(), value=seg.to_bytes())
    p.flush()
    p.close()

    want = []  # the film's shots, the one open at 3 s cut in two, those after it on the clock 100 s on
    for a, b in films["live"].bounds_s:
        if b <= stop_s + 1e-9:
            want.append((a, b))
        elif a >= stop_s - 1e-9:
            want.append((a + jump, b + jump))
        else:
            want += [(a, stop_s), (stop_s + jump, b + jump)]
    assert len(want) == len(films["live"].shot_frames) + 1
    got = _collect(kafka_stack, tail, {gap_id: len(want)}, timeout_s=300)[gap_id]
    tail.close()
    finals = sorted((m for m in got if m.final), key=lambda m: m.shot_index)
    assert [m.shot_index for m in finals] == list(range(len(want))), [m.shot_index for m in finals]
    np.testing.assert_allclose([(m.start_s, m.end_s) for m in finals], want, atol=1.5 / FPS)
    assert {m.n_shots for m in finals} <= {len(want), None}
    letters = {}
    for rec in dead.poll(timeout_s=60, stop=lambda: lap_id.encode() in letters):
        letter = decode(rec.value, expect=DeadLetter)
        letters[letter.key] = letter
    dead.close()
    assert gap_id.encode() not in letters, letters[gap_id.encode()].reason
    assert "inside the media of the segment before it" in letters[lap_id.encode()].reason, letters[lap_id.encode()]
    assert worker.poll() is None


def _metrics(settings) -> str:
    import urllib.request

    deadline = time.monotonic() + 30
    while True:  # the lag gauge is refreshed every 5 s
        text = urllib.request.urlopen(f"http://127.0.0.1:{settings.worker_web_port}/metrics", timeout=5).read().decode()
        if "mediafm_consumer_lag_messages{" in text or time.monotonic() > deadline:
            return text
        time.sleep(1)


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _meta_file(tmp_path, title_id):
    import json

    p = tmp_path / "meta.json"
    p.write_text(json.dumps({"title_id": title_id, "title": "Station", "synopsis": "Two strangers wait for a train.",
                             "tags": ["drama"]}))
    return p


def test_bad_requests_are_dead_lettered_with_the_reason(kafka_stack, worker, offline_model, tmp_path):
    names = Topics.from_settings(kafka_stack)
    media = kafka_stack.worker_media_roots[0]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    dead = Tail(kafka_stack, names.deadletter)
    staged = publish_title(kafka_stack, corrupt, title_id=f"corrupt-{uuid.uuid4().hex[:6]}")
    run = uuid.uuid4().hex[:6]
    bad = {
        f"outside-{run}": (TitleRequest(title_id=f"outside-{run}", uri="/etc/hostname").to_bytes(), "outside"),
        f"scheme-{run}": (TitleRequest(title_id=f"scheme-{run}", uri="http://example.com/a.mp4").to_bytes(), "scheme"),
        f"meta-{run}": (TitleRequest(title_id=f"meta-{run}", uri=f"{media}/x.mp4", meta={"colour": 1}).to_bytes(),
                        "unknown keys ['colour']"),
        f"version-{run}": (msgpack.packb({**msgpack.unpackb(TitleRequest(title_id="v", uri="x").to_bytes()),
                                          "v": 9}), "version 9 is not supported"),
        f"gap-{run}": (LiveSegment(event_id=f"gap-{run}", segment_index=3, uri=f"{media}/x.ts", start_s=6.0).to_bytes(),
                       "segment 0 is next"),
        f"live-corrupt-{run}": (LiveSegment(event_id=f"live-corrupt-{run}", segment_index=0, uri=staged.uri,
                                            start_s=0.0).to_bytes(), "segment 0 skipped"),
    }
    p = producer(kafka_stack)
    for key, (raw, _) in bad.items():
        p.send(names.live_segments if key.startswith(("gap", "live")) else names.titles, key=key.encode(), value=raw)
    p.flush()
    p.close()
    expect = {**{k.encode(): why for k, (_, why) in bad.items()}, staged.title_id.encode(): "corrupt"}
    letters = {}
    for rec in dead.poll(timeout_s=120, stop=lambda: set(expect) <= set(letters)):
        letter = decode(rec.value, expect=DeadLetter)
        letters[letter.key] = letter
    dead.close()
    for key, why in expect.items():
        assert key in letters, f"no dead letter for {key}"
        assert why in letters[key].reason, (key, letters[key].reason)
        assert letters[key].stage == "segment"
    assert worker.poll() is None, "the worker must survive bad input"


def test_triton_outage_waits_then_completes_and_backfill_uses_the_new_version(kafka_stack, worker, offline_model,
                                                                               films, tmp_path):
    """Unload MediaFM while a title is in flight: nothing is dropped or dead-lettered; it completes once the
    model is back. Then a new version is exported and `backfill` re-embeds the title with it."""
    names = Topics.from_settings(kafka_stack)
    tid = f"outage-{uuid.uuid4().hex[:6]}"
    tail, dead = Tail(kafka_stack, names.embeddings), Tail(kafka_stack, names.deadletter)
    triton.unload_model(kafka_stack, "mediafm_offline")
    try:
        publish_title(kafka_stack, films["b"].path, title_id=tid)
        early = [decode(r.value, expect=ContextualEmbedding) for r in tail.poll(timeout_s=25)]
        assert not [m for m in early if m.title_id == tid], "no MediaFM is served: nothing can be contextualised"
    finally:
        triton.load_model(kafka_stack, "mediafm_offline")
    got = _collect(kafka_stack, tail, {tid: 3}, timeout_s=180)
    assert sorted(m.shot_index for m in got[tid] if m.final) == [0, 1, 2]
    assert not [d for d in (decode(r.value, expect=DeadLetter) for r in dead.poll(timeout_s=1)) if d.key == tid.encode()]

    # a new MediaFM version: backfill re-embeds the title with it, and every output says so
    d = tmp_path / "v2"
    data = write_corpus(d / "data", n_titles=6, layout=OFFLINE.layout, seed=1, shots=(20, 40))
    train(data, d / "run", TrainConfig(config="tiny", max_steps=2, batch_size=2, eval_every=2, ckpt_every=2,
                                       val_batches=1, seed=1), quiet=True)
    new, _, loaded = export(d / "run", settings=kafka_stack)
    assert loaded and str(new) != got[tid][0].model_version
    (req,) = backfill(kafka_stack, [tid], idle_s=2)
    again = _collect(kafka_stack, tail, {tid: 3}, timeout_s=180)
    tail.close()
    dead.close()
    assert req.request_id
    assert sorted(m.shot_index for m in again[tid] if m.final) == [0, 1, 2]
    assert {m.model_version for m in again[tid]} == {str(new)}
    assert worker.poll() is None


def test_publish_refuses_missing_files(kafka_stack, tmp_path):
    from mediafm.errors import MediaError

    with pytest.raises(MediaError, match="no such file"):
        publish_title(kafka_stack, tmp_path / "nope.mp4")
    assert replace(kafka_stack, media_roots=()).worker_media_roots == (str(kafka_stack.state_dir / "media"),)
