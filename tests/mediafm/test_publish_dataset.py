"""`mediafm publish dataset`: a v1 dataset's fused shots onto shots.fused, one message per shot."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from mediafm.config import Settings
from mediafm.dataset import Dataset, DatasetWriter, Meta
from mediafm.errors import DatasetError
from mediafm.fusion import Layout
from mediafm.profiles import OFFLINE
from mediafm.publish import dataset_layout, fused_shot_messages, publish_dataset
from mediafm.schema import FusedShot, bytes_to_vec, decode

LAYOUT = OFFLINE.layout  # 1280 + 512 + 384, title 384


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def write_dataset(path, lengths, *, layout=LAYOUT, shard_shots=8, prefix="", seed=0, no_audio=()):
    """Titles prefix+"t<i>" of lengths[i] shots, unit fused vectors; shots in no_audio have zeros in the audio slice."""
    rng = np.random.default_rng(seed)
    w = DatasetWriter(path, Meta.from_layout(layout, {"video": "v"}), shard_shots=shard_shots, split_titles=True)
    data = {}
    lo, hi = layout.slices["audio"]
    for i, n in enumerate(lengths):
        tid = f"{prefix}t{i}"
        x = rng.normal(size=(n, layout.fused_dim)).astype(np.float32)
        for t, s in no_audio:
            if t == tid:
                x[s, lo:hi] = 0
        data[tid] = dict(fused=_unit(x), title=rng.normal(size=layout.title).astype(np.float32),
                         start=np.arange(n) * 1.5, end=np.arange(n) * 1.5 + 1.25)
        w.add_title(title_id=tid, title_embedding=data[tid]["title"], fused=data[tid]["fused"],
                    start_s=data[tid]["start"], end_s=data[tid]["end"], kind="live" if i == 2 else "title")
    w.close()
    return data


def test_messages_of_a_title(tmp_path):
    data = write_dataset(tmp_path / "ds", [5, 9], no_audio=[("t1", 3)])
    ds = Dataset(tmp_path / "ds")
    assert len(ds.titles["t1"].pieces) == 2, "t1 straddles two shard files"
    layout = dataset_layout(ds.meta)
    assert layout == LAYOUT
    (title,) = list(ds.iter_titles([ds.titles["t1"]]))
    msgs = fused_shot_messages(title, layout, "req-1")
    assert [m.shot_index for m in msgs] == list(range(9))
    for m in msgs:
        back = decode(m.to_bytes(), expect=FusedShot)
        assert (back.title_id, back.n_shots, back.kind, back.request_id, back.profile) == ("t1", 9, "title", "req-1",
                                                                                        "offline")
        np.testing.assert_array_equal(bytes_to_vec(back.fused, layout.fused_dim), data["t1"]["fused"][m.shot_index])
        np.testing.assert_array_equal(bytes_to_vec(back.title_embedding, layout.title), data["t1"]["title"])
        assert (back.start_s, back.end_s) == (data["t1"]["start"][m.shot_index], data["t1"]["end"][m.shot_index])
        assert back.present == [True, m.shot_index != 3, True]


def test_all_zero_shot_refused(tmp_path):
    write_dataset(tmp_path / "ds", [3])
    ds = Dataset(tmp_path / "ds")
    (title,) = list(ds.iter_titles())
    title.fused[1] = 0
    with pytest.raises(DatasetError, match=r"title 't0' shot 1: its fused vector is all zeros \(no modality\)"):
        fused_shot_messages(title, LAYOUT, "r")


def _offline_settings(tmp_path):
    from conftest import free_port

    return Settings(state_dir=tmp_path / "state", kafka_port=free_port(), topic_prefix="nobroker")


def test_widths_of_no_profile_refused_before_any_broker(tmp_path):
    write_dataset(tmp_path / "ds", [3], layout=Layout("small", video=4, audio=4, text=4, title=3))
    with pytest.raises(DatasetError, match=r"meta.json: modality widths \(video, audio, text\) = \(4, 4, 4\) match no "
                       r"encoder profile; known: .*'offline': \(1280, 512, 384\).*cannot be published"):
        publish_dataset(_offline_settings(tmp_path), tmp_path / "ds", progress=False)
    odd_title = Layout("odd", video=1280, audio=512, text=384, title=16)
    write_dataset(tmp_path / "ds2", [3], layout=odd_title)
    with pytest.raises(DatasetError, match=r"title_dim 16, but profile 'offline' .* has title embeddings of 384"):
        publish_dataset(_offline_settings(tmp_path), tmp_path / "ds2", progress=False)


def test_unknown_titles_refused(tmp_path):
    write_dataset(tmp_path / "ds", [3, 4])
    with pytest.raises(DatasetError, match=r"titles.parquet: no title \['nope'\]; it has 2 titles \(t0, t1\)"):
        publish_dataset(_offline_settings(tmp_path), tmp_path / "ds", title_ids=["t0", "nope"], progress=False)


def _read_range(settings, topic, start: dict, end: dict, timeout_s=60.0):
    """Every record of `topic` between the offsets start and end (per partition), polled until reached."""
    from kafka import KafkaConsumer

    from mediafm.schema import MAX_MESSAGE_BYTES

    c = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                      max_partition_fetch_bytes=MAX_MESSAGE_BYTES + 65536)
    try:
        tps = [tp for tp in end if end[tp] > start[tp]]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, start[tp])
        out = []
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"topic {topic} not read to {end} within {timeout_s}s"
            for tp, records in c.poll(timeout_ms=500).items():
                out += [r for r in records if r.offset < end[tp]]
        return out
    finally:
        c.close()


def _offsets(settings, topic):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        return c.end_offsets(tps)
    finally:
        c.close()


def _create_topics(settings, timeout_s=60.0):
    """The pipeline topics of settings.topic_prefix, returned once every partition of each is known."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewTopic

    from mediafm.topics import Topics

    names = Topics.from_settings(settings).all()
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(n, settings.partitions, 1) for n in names])
    finally:
        admin.close()
    c = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    deadline = time.monotonic() + timeout_s
    try:
        for n in names:
            while len(c.partitions_for_topic(n) or ()) != settings.partitions:
                assert time.monotonic() < deadline, f"topic {n} has no partitions after {timeout_s}s"
                time.sleep(0.1)  # a poll: metadata of a new topic reaches the broker's cache shortly
    finally:
        c.close()


@pytest.mark.kafka
def test_publish_dataset_on_a_real_broker(kafka_stack, tmp_path):
    from conftest import REPO, settings_env

    from mediafm.config import replace
    from mediafm.publish import sink
    from mediafm.topics import Topics

    run = uuid.uuid4().hex[:6]
    # topics of its own: the sink below reads whole topics, and other tests publish other profiles' shots
    settings = replace(kafka_stack, topic_prefix=f"pubds-{run}")
    _create_topics(settings)
    lengths = [5, 9, 4, 12]
    data = write_dataset(tmp_path / "ds", lengths, prefix=f"{run}-", no_audio=[(f"{run}-t3", 0)])
    ds = Dataset(tmp_path / "ds")
    assert sum(len(i.pieces) > 1 for i in ds.titles.values()) >= 2, "some titles straddle shard files"
    topic = Topics.from_settings(settings).fused
    before = _offsets(settings, topic)
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", "publish", "dataset", str(tmp_path / "ds")],
                       env=settings_env(settings), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert f"published 4 titles, {sum(lengths)} shots to {topic}" in r.stdout
    assert f"publishing to {topic}" in r.stderr, "a progress bar on stderr"
    after = _offsets(settings, topic)
    records = _read_range(settings, topic, before, after)

    got: dict[str, dict[int, list[FusedShot]]] = {}
    for rec in records:
        m = decode(rec.value, expect=FusedShot)
        if m.title_id in data:
            assert rec.key == m.title_id.encode()
            got.setdefault(m.title_id, {}).setdefault(m.shot_index, []).append(m)
    assert sorted(got) == sorted(data)
    requests = set()
    for tid, shots in got.items():
        d = data[tid]
        n = len(d["fused"])
        assert sorted(shots) == list(range(n)), f"{tid}: shots {sorted(shots)}"
        assert all(len(v) == 1 for v in shots.values()), f"{tid}: a shot arrived twice"
        req = {v[0].request_id for v in shots.values()}
        assert len(req) == 1 and "" not in req, f"{tid}: one request id per title, got {req}"
        requests |= req
        for i, (m,) in shots.items():
            assert (m.n_shots, m.kind, m.profile) == (n, "title", "offline")
            np.testing.assert_array_equal(bytes_to_vec(m.fused, LAYOUT.fused_dim), d["fused"][i])
            np.testing.assert_array_equal(bytes_to_vec(m.title_embedding, LAYOUT.title), d["title"])
            assert (m.start_s, m.end_s) == (d["start"][i], d["end"][i])
            assert m.present == [True, not (tid.endswith("t3") and i == 0), True]
    assert len(requests) == 4, "a fresh request id per title"

    # the sink collects them: the same dataset back (no worker runs here, so no contextual embeddings)
    out = sink(settings, tmp_path / "sunk", idle_s=1.0, timeout_s=60)
    assert (out["titles"], out["shots"], out["incomplete"]) == (4, sum(lengths), [])
    sunk = Dataset(tmp_path / "sunk")
    for title in sunk.iter_titles():
        d = data[title.info.title_id]
        np.testing.assert_array_equal(title.fused, d["fused"])
        np.testing.assert_array_equal(title.info.title_embedding, d["title"])
        np.testing.assert_array_equal(title.start_s, d["start"])

    # again, one title only: a new request id, nothing else
    before = after
    sent = publish_dataset(settings, tmp_path / "ds", title_ids=[f"{run}-t1"], progress=False)
    assert [(t, n) for t, _, n in sent] == [(f"{run}-t1", 9)]
    records = _read_range(settings, topic, before, _offsets(settings, topic))
    again = [decode(r.value, expect=FusedShot) for r in records]
    again = [m for m in again if m.title_id in data]
    assert sorted(m.shot_index for m in again) == list(range(9))
    assert {m.request_id for m in again} == {sent[0][1]} and sent[0][1] not in requests
