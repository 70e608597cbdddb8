"""A live event across a model refresh and a kill -9: one version per event, one final per shot.

The event's fused shots go straight onto shots.fused (the stages before are tested on media elsewhere).
Its first shots are contextualised by version N; then a new version is exported and the worker is killed
with SIGKILL, a new worker starts, and the rest of the event is published, together with a title. The
event's finals all come from version N (pinned at its start), every shot has exactly one final (a final
published again after the restart is the same vector), and the title is made by the new version.
Windows of 16 shots, so the 40-shot event is longer than a window: once it is over, its held shots are all
deleted, across the kill -9, as the live-shots changelog on the broker shows (each key's last record a
tombstone), and its progress there says it is over.
"""

from __future__ import annotations

import signal
import uuid
from collections import defaultdict

import numpy as np
import pytest
from conftest import free_port, rest_of_output, start_worker, stop_worker
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from mediafm.bus import Tail, producer
from mediafm.config import replace
from mediafm.profiles import PRODUCTION
from mediafm.schema import ContextualEmbedding, FusedShot, decode, vec_to_bytes
from mediafm.stack import kafka
from mediafm.synth import write_corpus
from mediafm.topics import Topics
from streams.progress import LiveProgress
from streams.runtime import CHANGELOG_SEGMENT_MS
from trainer.export import export
from trainer.train import TrainConfig, train

pytestmark = [pytest.mark.kafka, pytest.mark.triton, pytest.mark.slow]

LAY = PRODUCTION.layout


def _shot(eid: str, i: int, n: int | None, rng, kind: str = "live") -> bytes:
    v = rng.normal(size=LAY.fused_dim)
    return FusedShot(title_id=eid, shot_index=i, start_s=2.0 * i, end_s=2.0 * i + 2, profile=LAY.name,
                     fused=vec_to_bytes(v / np.linalg.norm(v)), present=[True, True, False], n_shots=n, kind=kind,
                     title_embedding=vec_to_bytes(np.ones(LAY.title))).to_bytes()


def _records(settings, topic: str) -> list:
    """Every record of `topic`, read to its end offsets."""
    tail = Tail(settings, topic, from_beginning=True)
    try:
        return list(tail.to_end(timeout_s=60))
    finally:
        tail.close()


def _last_records(settings, topic: str) -> dict[bytes, bytes | None]:
    """Each key's last record on `topic` (a changelog: None for a tombstone), read to its end offsets."""
    return {rec.key: rec.value for rec in _records(settings, topic)}


def test_live_event_keeps_its_version_across_an_export_and_a_kill_9(kafka_stack, triton_stack, tmp_path):
    data = write_corpus(tmp_path / "data", n_titles=6, layout=LAY, seed=0, shots=(20, 40))
    train(data, tmp_path / "run", TrainConfig(config="tiny", max_steps=2, batch_size=2, eval_every=2, ckpt_every=2,
                                                val_batches=1), quiet=True)
    first, _, _ = export(tmp_path / "run", settings=kafka_stack)
    s = replace(kafka_stack, topic_prefix=f"liver{uuid.uuid4().hex[:6]}", state_dir=tmp_path / "state",
                live_right_context=2, window_shots=16, window_stride=8)
    names = Topics.from_settings(s)
    kafka.create_topics(s, names.all())
    eid, tid, n = f"ev-{uuid.uuid4().hex[:6]}", f"t-{uuid.uuid4().hex[:6]}", 40
    rng = np.random.default_rng(3)
    shots = [_shot(eid, i, n if i == n - 1 else None, rng) for i in range(n)]

    finals: dict[tuple[str, int], list[tuple[str, np.ndarray]]] = defaultdict(list)

    def take(rec):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.final:
            finals[(m.title_id, m.shot_index)].append((m.model_version, m.vector()))

    tail = Tail(s, names.embeddings, from_beginning=True)
    a = start_worker(replace(s, worker_web_port=free_port()), tmp_path / "a.log")
    p = producer(s)
    for raw in shots[:20]:
        p.send(names.fused, key=eid.encode(), value=raw)
    p.flush()
    try:
        for rec in tail.poll(timeout_s=300, stop=lambda: len(finals) >= 10 or a.poll() is not None):
            take(rec)
        assert a.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
        second, _, _ = export(tmp_path / "run", settings=kafka_stack)  # a model refresh mid-event
        a.send_signal(signal.SIGKILL)
        a.wait()
        b = start_worker(replace(s, worker_web_port=free_port()), tmp_path / "b.log")
        for raw in shots[20:]:
            p.send(names.fused, key=eid.encode(), value=raw)
        title_rng = np.random.default_rng(4)
        for i in range(30):
            p.send(names.fused, key=tid.encode(), value=_shot(tid, i, 30, title_rng, kind="title"))
        p.flush()
        p.close()
        want = {(eid, i) for i in range(n)} | {(tid, i) for i in range(30)}
        for rec in tail.poll(timeout_s=600, stop=lambda: set(finals) >= want or b.poll() is not None):
            take(rec)
        for rec in rest_of_output(s, tail, names.fused, timeout_s=120):
            take(rec)
        assert b.poll() is None, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        for w in (a, locals().get("b")):
            if w is not None and w.poll() is None:
                stop_worker(w)
        tail.close()
    assert set(finals) == want, sorted(want - set(finals))[:10]
    assert second == first + 1
    event_versions = {v for i in range(n) for v, _ in finals[(eid, i)]}
    assert event_versions == {str(first)}, f"the event's finals mix versions: {event_versions}"
    assert {v for i in range(30) for v, _ in finals[(tid, i)]} == {str(second)}, "new titles get the new version"
    for key, got in finals.items():  # published twice after the kill: the same final
        for _, v in got[1:]:
            np.testing.assert_allclose(v, got[0][1], atol=1e-5, err_msg=str(key))
    # The held shots' changelog, as the worker declared it: compacted, a segment closed every hour (by default
    # 1 GiB or 7 days, so a live event's puts and deletes were never compacted while it ran).
    changelog = f"{s.topic_prefix}-live-shots-changelog"
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    keys = ("cleanup.policy", "segment.ms")
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, changelog, dict.fromkeys(keys))],
                                       config_filter="all")["topic"][changelog]
    finally:
        admin.close()
    assert tuple(str(found[k]["value"]) for k in keys) == ("compact", str(CHANGELOG_SEGMENT_MS)), found

    # What the tables hold, as their changelogs on the broker say (last record per key): the ended event holds
    # none of its shots (an event longer than a window once leaked one), and its progress says it is over.
    last = _last_records(s, f"{s.topic_prefix}-live-shots-changelog")
    written = {k for k in last if k.startswith(f"{eid}/".encode())}
    assert len(written) == n, f"{len(written)} of the event's {n} shots were ever held"
    assert not [k for k in written if last[k] is not None], "the ended event still holds shots"
    progress = Tail(s, f"{s.topic_prefix}-live-events-changelog", from_beginning=True)
    try:
        events = {rec.key: rec.value for rec in progress.to_end(timeout_s=60)}
    finally:
        progress.close()
    st = LiveProgress.from_bytes(events[eid.encode()])
    assert (st.over, st.n, st.final, st.version) == (True, n, n, str(first)), st


def test_a_live_event_goes_on_past_shots_lost_upstream(kafka_stack, triton_stack, tmp_path):
    """Shots 7, 8 and 25 of a 40-shot event never reach shots.fused (dead-lettered on an earlier stage: a segment
    file gone, an encoder's refusal). Before, every shot after the first gap was dead-lettered ("arrived before
    shot 7") and the event never ended. Now each shot that came gets one provisional and one final, nothing of
    the event is dead-lettered here, and the ended event holds none of its shots (the changelog's last records)."""
    data = write_corpus(tmp_path / "data", n_titles=6, layout=LAY, seed=0, shots=(20, 40))
    train(data, tmp_path / "run", TrainConfig(config="tiny", max_steps=2, batch_size=2, eval_every=2, ckpt_every=2,
                                                val_batches=1), quiet=True)
    export(tmp_path / "run", settings=kafka_stack)
    s = replace(kafka_stack, topic_prefix=f"livegap{uuid.uuid4().hex[:6]}", state_dir=tmp_path / "state",
                live_right_context=2, window_shots=16, window_stride=8, worker_web_port=free_port())
    names = Topics.from_settings(s)
    kafka.create_topics(s, names.all())
    eid, n, lost = f"ev-{uuid.uuid4().hex[:6]}", 40, {7, 8, 25}
    rng = np.random.default_rng(5)
    shots = {i: _shot(eid, i, n if i == n - 1 else None, rng) for i in range(n)}
    kinds: dict[int, list[bool]] = defaultdict(list)

    def take(rec):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.title_id == eid:
            kinds[m.shot_index].append(m.final)

    tail = Tail(s, names.embeddings, from_beginning=True)
    letters = Tail(s, names.deadletter, from_beginning=True)
    w = start_worker(s, tmp_path / "w.log")
    try:
        p = producer(s)
        for i in sorted(set(shots) - lost):
            p.send(names.fused, key=eid.encode(), value=shots[i])
        p.flush()
        p.close()
        for rec in tail.poll(timeout_s=300, stop=lambda: sum(k.count(True) for k in kinds.values()) >= n - len(lost)
                             or w.poll() is not None):
            take(rec)
        for rec in rest_of_output(s, tail, names.fused, timeout_s=120):
            take(rec)
        assert w.poll() is None, (tmp_path / "w.log").read_text()[-3000:]
        dead = [rec.value for rec in letters.to_end(timeout_s=60)]
    finally:
        stop_worker(w)
        tail.close()
        letters.close()
    assert {i: sorted(k) for i, k in kinds.items()} == {i: [False, True] for i in range(n) if i not in lost}
    assert not [d for d in dead if eid.encode() in d], dead
    last = _last_records(s, f"{s.topic_prefix}-live-shots-changelog")
    written = {k for k in last if k.startswith(f"{eid}/".encode())}
    assert len(written) == n - len(lost) and not [k for k in written if last[k] is not None], "held after its end"


def test_a_live_event_whose_feed_dies_without_its_last_segment_is_ended_after_live_idle_end_s(
        kafka_stack, triton_stack, offline_model, tmp_path):
    """20 shots of an event, none saying it is the last (the feed died). Before 2026-12-08 its last
    live_right_context shots never got a final and the event held a window of fused shots in the table and its
    changelog for good. With live_idle_end_s=4 the worker ends it: every shot one provisional and one final, the
    end said in a dead-letter-free way (its ShotsRefused on the fused topic), nothing held; a shot sent after the
    end is dead-lettered saying to publish a new event."""
    from mediafm.profiles import OFFLINE
    from mediafm.schema import DeadLetter, FusedShots, ShotsRefused, record_shots

    s = replace(kafka_stack, topic_prefix=f"liveidle{uuid.uuid4().hex[:6]}", state_dir=tmp_path / "state",
                live_right_context=2, window_shots=16, window_stride=8, worker_web_port=free_port(),
                live_idle_end_s=4.0)
    names = Topics.from_settings(s)
    kafka.create_topics(s, names.all())
    eid, n, rng = f"ev-{uuid.uuid4().hex[:6]}", 20, np.random.default_rng(3)

    def shot(i: int) -> bytes:
        v = rng.normal(size=OFFLINE.layout.fused_dim)
        return FusedShot(title_id=eid, shot_index=i, start_s=2.0 * i, end_s=2.0 * i + 2, profile=OFFLINE.name,
                         fused=vec_to_bytes(v / np.linalg.norm(v)), present=[True, True, False], n_shots=None,
                         kind="live").to_bytes()

    kinds: dict[int, list[bool]] = defaultdict(list)
    tail = Tail(s, names.embeddings, from_beginning=True)
    w = start_worker(s, tmp_path / "w.log")
    try:
        p = producer(s)
        for i in range(n):
            p.send(names.fused, key=eid.encode(), value=shot(i))
        p.flush()
        for rec in tail.poll(timeout_s=300, stop=lambda: sum(k.count(True) for k in kinds.values()) >= n
                             or w.poll() is not None):
            m = decode(rec.value, expect=ContextualEmbedding)
            if m.title_id == eid:
                kinds[m.shot_index].append(m.final)
        assert w.poll() is None, (tmp_path / "w.log").read_text()[-3000:]
        p.send(names.fused, key=eid.encode(), value=shot(n)).get(30)  # the feed back after its end
        p.close()
        for rec in rest_of_output(s, tail, names.fused, timeout_s=120):
            m = decode(rec.value, expect=ContextualEmbedding)
            if m.title_id == eid:
                kinds[m.shot_index].append(m.final)
        dead = [decode(r.value, expect=DeadLetter) for r in _records(s, names.deadletter)]
        ends = [x for r in _records(s, names.fused)
                if isinstance(x := record_shots(FusedShots, r.value, refusals=True), ShotsRefused)]
    finally:
        stop_worker(w)
        tail.close()
    assert {i: sorted(k) for i, k in kinds.items()} == {i: [False, True] for i in range(n)}
    assert [(e.title_id, e.n_shots, e.stage) for e in ends] == [(eid, n, "live")]
    assert [d.reason for d in dead if d.key == eid.encode()] == [
        d.reason for d in dead if "comes after its end; publish the rest of the feed as a new event" in d.reason]
    assert len(dead) == 1, [d.reason for d in dead]
    last = _last_records(s, f"{s.topic_prefix}-live-shots-changelog")
    assert not [k for k, v in last.items() if k.startswith(f"{eid}/".encode()) and v is not None], "held after its end"
    assert LiveProgress.from_bytes(_last_records(s, f"{s.topic_prefix}-live-events-changelog")[eid.encode()]).over
