"""`mediafm publish dataset`: a v1 dataset's fused shots onto shots.fused, one message per shot."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from mediafm.config import Settings
from mediafm.dataset import Dataset, DatasetWriter, Meta, split_for
from mediafm.errors import DatasetError
from mediafm.fusion import Layout
from mediafm.profiles import OFFLINE
from mediafm.publish import dataset_layout, fused_shot_messages, publish_dataset
from mediafm.schema import FusedShot, FusedShots, bytes_to_vec, decode, record_shots, vec_to_bytes

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


@pytest.mark.parametrize("prefix, message", [
    ("bell\x07", r"field 'title_id' has control characters \['\\x07'\]"),
    ("x" * 600, r"field 'title_id' is 602 characters, over the 512 limit"),
])
def test_a_title_a_worker_would_refuse_is_refused_before_sending(tmp_path, prefix, message):
    """The dataset format takes any string as a title id; the pipeline does not. Before, such a title was sent
    and every one of its shots dead-lettered by the worker, so it never completed."""
    write_dataset(tmp_path / "ds", [3], prefix=prefix)
    (title,) = list(Dataset(tmp_path / "ds").iter_titles())
    with pytest.raises(DatasetError, match=r"shot 0: a worker would refuse it: " + message):
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
        for m in record_shots(FusedShots, rec.value):  # a title's shots in FusedShots records, as the fuse stage sends them
            if m.title_id in data:
                assert rec.key == m.title_id.encode()
                got.setdefault(m.title_id, {}).setdefault(m.shot_index, []).append(m)
    assert len(records) < sum(lengths), "several shots a record"
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

    # a complete title a worker would refuse (a shot's vector is not finite): the sink leaves it out, saying why
    from mediafm.bus import producer

    bad = [FusedShot(title_id=f"{run}-bad", shot_index=i, start_s=float(i), end_s=i + 1.0, profile="offline",
                     fused=vec_to_bytes(np.full(LAYOUT.fused_dim, np.inf if i else 0.5, np.float32)),
                     present=[True, True, True], n_shots=2).to_bytes() for i in range(2)]
    p = producer(settings)
    p.send(topic, key=f"{run}-bad".encode(), value=FusedShots(title_id=f"{run}-bad", shots=bad).to_bytes()).get(30)
    p.close()

    # the sink collects them: the same dataset back (no worker runs here, so no contextual embeddings)
    # (half the titles val, half test: each title's split drawn from its id, the same in every sink)
    out = sink(settings, tmp_path / "sunk", idle_s=1.0, timeout_s=60, val_fraction=0.5, test_fraction=0.5)
    assert (out["titles"], out["shots"], out["incomplete"]) == (4, sum(lengths), [])
    assert list(out["refused"]) == [f"{run}-bad"] and "shot 1's fused contains NaN or inf" in out["refused"][f"{run}-bad"]
    sunk = Dataset(tmp_path / "sunk")
    want = {tid: split_for(tid, 0.5, 0.5) for tid in data}
    assert {tid: i.split for tid, i in sunk.titles.items()} == want and "train" not in want.values()
    assert out["splits"] == {k: list(want.values()).count(k) for k in set(want.values())}
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
    again = [m for r in records for m in record_shots(FusedShots, r.value)]
    again = [m for m in again if m.title_id in data]
    assert sorted(m.shot_index for m in again) == list(range(9))
    assert {m.request_id for m in again} == {sent[0][1]} and sent[0][1] not in requests


@pytest.mark.kafka
def test_the_tools_producer_batches_shots_and_checksums_natively(kafka_stack):
    """`mediafm publish` and the sink are bound by kafka-python's per-record work: a shot message (~9 KB here)
    must share its produce request with others, and the CRC-32C of every batch written or read must not be
    kafka-python's pure-Python fallback (together 200-400 -> 7,700 shots/s, bench/publish.py)."""
    import crc32c
    import kafka.record.default_records as records
    import kafka.record.util

    from mediafm.bus import producer
    from mediafm.stack.kafka import create_topics

    assert kafka.record.util._crc32c is crc32c.crc32c, "kafka-python checksums in Python: install `crc32c`"
    view = memoryview(b"mediafm shot batch")
    assert records.calc_crc32c(view) == kafka.record.util.crc32c_py(view)  # the same checksum, natively
    topic = f"batching-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_stack, [topic])
    p = producer(kafka_stack)
    try:
        for _ in range(300):
            p.send(topic, key=b"t0", value=bytes(9000))
        p.flush(timeout=60)
        m = p.metrics()["producer-metrics"]
        assert m["record-error-rate"] == 0
        assert m["records-per-request-avg"] >= 20, m["records-per-request-avg"]  # 16 KiB batches: 1 a request
    finally:
        p.close()


@pytest.mark.kafka
def test_sink_reads_back_interleaved_repeated_and_replaced_publications(kafka_stack, tmp_path):
    """The sink's two passes (where each shot is, then the shots chosen, a title at a time): titles whose shots
    are interleaved in one partition and sent twice come back whole, a later request replaces an earlier one,
    an incomplete one is named, and each (title, shot, version) has one final, the last published."""
    import pyarrow.parquet as pq

    from mediafm.bus import producer
    from mediafm.config import replace
    from mediafm.errors import MediaError
    from mediafm.publish import sink
    from mediafm.schema import ContextualEmbedding, ShotsRefused
    from mediafm.topics import Topics

    settings = replace(kafka_stack, topic_prefix=f"sink-{uuid.uuid4().hex[:6]}", partitions=1)  # all interleaved
    _create_topics(settings)
    names = Topics.from_settings(settings)
    data = write_dataset(tmp_path / "ds", [7, 5, 6], prefix="s-")
    ds = Dataset(tmp_path / "ds")
    titles = {t.info.title_id: t for t in ds.iter_titles()}
    old = fused_shot_messages(titles["s-t0"], LAYOUT, "old")
    old[3].fused = vec_to_bytes(np.ones(LAYOUT.fused_dim, np.float32) / 10)  # the earlier request's shot differs
    msgs = {"old": old, **{tid: fused_shot_messages(t, LAYOUT, "new") for tid, t in titles.items()}}
    p = producer(settings)
    order = old + [m for group in zip(msgs["s-t0"][:5], msgs["s-t1"], msgs["s-t2"][:5], strict=True) for m in group]
    order += msgs["s-t0"][5:] + msgs["s-t2"][5:] + msgs["s-t1"][:2]  # the rest, and two shots sent again
    order += fused_shot_messages(titles["s-t1"], LAYOUT, "cut")[:3]  # a later request never completed
    lone = fused_shot_messages(titles["s-t2"], LAYOUT, "x")[:2]
    for m in lone:
        m.title_id = "s-lone"  # a title with no complete request
    order += lone
    gone = fused_shot_messages(titles["s-t2"], LAYOUT, "g")[:2]
    for m in gone:
        m.title_id = "s-gone"  # a title whose third shot a stage refused: given up, and named so
    order += gone
    order += [ShotsRefused(title_id="s-gone", first=2, last=2, stage="encode", reason="no decoder reads it",
                           n_shots=6, kind="title", request_id="g"),
              ShotsRefused(title_id="s-t1", first=3, last=4, stage="fuse", reason="NaN", n_shots=5, kind="title",
                           request_id="cut"),  # an earlier request of it is whole: that one is written
              ShotsRefused(title_id="s-live", first=0, last=0, stage="encode", reason="x"),  # a live event's
              ShotsRefused(title_id="s-lone", first=0, last=0, stage="encode", reason="x", n_shots=6, kind="title",
                           request_id="before")]  # an earlier publication's: its last one is incomplete
    for m in order:
        p.send(names.fused, key=m.title_id.encode(), value=m.to_bytes())
    rng = np.random.default_rng(1)
    want = {}
    for version in ("1", "2"):
        for tid, t in titles.items():
            for i in range(len(t.fused)):
                for _ in range(2):  # published twice (a restart): the last one counts
                    v = rng.standard_normal(8).astype(np.float32)
                    want[(tid, i, version)] = v
                    e = ContextualEmbedding(title_id=tid, shot_index=i, start_s=0.0, end_s=1.0, embedding=vec_to_bytes(v),
                                            dim=8, model_version=version, profile="offline", window_start=0,
                                            window_end=len(t.fused), final=True, n_shots=len(t.fused))
                    p.send(names.embeddings, key=tid.encode(), value=e.to_bytes())
                e.final = False  # a provisional one is never sunk
                p.send(names.embeddings, key=tid.encode(), value=e.to_bytes())
    p.flush()
    p.close()

    out = sink(settings, tmp_path / "sunk", idle_s=1.0, timeout_s=120)
    assert (out["titles"], out["shots"], out["contextual"]) == (3, 18, 36)
    assert out["incomplete"] == ["s-lone"]  # s-t1's last request is incomplete too, but an earlier one is whole
    assert out["refused"] == {"s-gone": "shot 2 refused at the encode stage: no decoder reads it"}
    sunk = Dataset(tmp_path / "sunk")
    for title in sunk.iter_titles():
        np.testing.assert_array_equal(title.fused, data[title.info.title_id]["fused"])  # the "new" request's shots
    rows = pq.read_table(tmp_path / "sunk" / "contextual.parquet").to_pylist()
    assert len({(r["title_id"], r["shot_index"], r["model_version"]) for r in rows}) == len(rows) == 36
    for r in rows:
        np.testing.assert_array_equal(np.array(r["embedding"], np.float32),
                                      want[(r["title_id"], r["shot_index"], r["model_version"])])

    with pytest.raises(MediaError, match=r"records left unread after 0s: .*; nothing was written: give the sink a longer --timeout"):
        sink(settings, tmp_path / "late", idle_s=1.0, timeout_s=0)
    assert not (tmp_path / "late").exists() and not list(tmp_path.glob("late*"))


@pytest.mark.kafka
def test_sink_of_a_pipeline_carrying_two_profiles_writes_the_one_named(kafka_stack, tmp_path):
    """A dataset has one layout: titles of both encoder profiles on the fused topic are refused with a message
    naming --profile, and with a profile named only its titles are written."""
    from mediafm.bus import producer
    from mediafm.config import replace
    from mediafm.errors import ConfigError, MediaError
    from mediafm.profiles import PRODUCTION
    from mediafm.publish import sink
    from mediafm.topics import Topics

    settings = replace(kafka_stack, topic_prefix=f"prof-{uuid.uuid4().hex[:6]}", partitions=2)
    _create_topics(settings)
    names = Topics.from_settings(settings)
    offline = write_dataset(tmp_path / "off", [4, 3], prefix="off-")
    production = write_dataset(tmp_path / "prod", [5], prefix="prod-", layout=PRODUCTION.layout)
    p = producer(settings)
    for path, layout in ((tmp_path / "off", LAYOUT), (tmp_path / "prod", PRODUCTION.layout)):
        for title in Dataset(path).iter_titles():
            for m in fused_shot_messages(title, layout, "r"):
                p.send(names.fused, key=m.title_id.encode(), value=m.to_bytes())
    p.flush()
    p.close()

    with pytest.raises(MediaError, match=r"titles of several encoder profiles \['offline', 'production'\].*"
                                         "choose one with --profile"):
        sink(settings, tmp_path / "both", idle_s=1.0, timeout_s=60)
    assert not (tmp_path / "both").exists()
    for name, want in (("offline", offline), ("production", production)):
        out = sink(settings, tmp_path / name, idle_s=1.0, timeout_s=60, profile=name)
        assert (out["titles"], out["shots"]) == (len(want), sum(len(d["fused"]) for d in want.values()))
        sunk = Dataset(tmp_path / name)
        assert sunk.meta.fused_dim == (LAYOUT if name == "offline" else PRODUCTION.layout).fused_dim
        for title in sunk.iter_titles():
            np.testing.assert_array_equal(title.fused, want[title.info.title_id]["fused"])
    with pytest.raises(ConfigError, match="nonesuch"):
        sink(settings, tmp_path / "x", idle_s=1.0, timeout_s=60, profile="nonesuch")


@pytest.mark.kafka
def test_sink_keeps_the_written_profiles_finals_of_one_representation_into_a_linked_out(kafka_stack, tmp_path):
    """Finals of the same title id under the other profile are not the written dataset's (before: mixed in by
    version, the last published winning); finals of an earlier representation of another width are left out and
    named (before: pyarrow's "Length of item not correct", a traceback, after the whole read). --out a link to a
    dataset: that dataset is replaced and the link kept (before: rmtree on a link, a traceback, the .partial
    left). Every complete title refused: nothing written, --out left as it was (before: a dataset with no
    shards, reported as written)."""
    import os

    import pyarrow.parquet as pq

    from mediafm.bus import producer
    from mediafm.config import replace
    from mediafm.errors import MediaError
    from mediafm.publish import sink
    from mediafm.schema import ContextualEmbedding
    from mediafm.topics import Topics

    settings = replace(kafka_stack, topic_prefix=f"sinkrep-{uuid.uuid4().hex[:6]}", partitions=1)
    _create_topics(settings)
    names = Topics.from_settings(settings)
    data = write_dataset(tmp_path / "ds", [4, 3], prefix="r-")
    p = producer(settings)
    for title in Dataset(tmp_path / "ds").iter_titles():
        for m in fused_shot_messages(title, LAYOUT, "r"):
            p.send(names.fused, key=m.title_id.encode(), value=m.to_bytes())
    rng = np.random.default_rng(2)
    want = {}
    for profile, representation, dim in (("offline", "hidden", 6), ("production", "output", 8),
                                         ("offline", "output", 8)):
        for tid, d in data.items():
            for i in range(len(d["fused"])):
                v = rng.standard_normal(dim).astype(np.float32)
                if (profile, representation) == ("offline", "output"):
                    want[(tid, i)] = v
                e = ContextualEmbedding(title_id=tid, shot_index=i, start_s=0.0, end_s=1.0, embedding=vec_to_bytes(v),
                                        dim=dim, model_version="1", profile=profile, representation=representation,
                                        window_start=0, window_end=len(d["fused"]), final=True, n_shots=len(d["fused"]))
                p.send(names.embeddings, key=tid.encode(), value=e.to_bytes())
    p.flush()
    p.close()

    (tmp_path / "elsewhere").mkdir()
    write_dataset(tmp_path / "elsewhere" / "sunk", [2], prefix="old-")  # what the link names now
    os.symlink(tmp_path / "elsewhere" / "sunk", tmp_path / "link")
    out = sink(settings, tmp_path / "link", idle_s=1.0, timeout_s=120, profile="offline")
    assert (out["titles"], out["shots"], out["contextual"]) == (2, 7, 7)
    assert out["representations_left_out"] == ["hidden (6-d)"]
    assert (tmp_path / "link").is_symlink() and out["out"] == str(tmp_path / "elsewhere" / "sunk")
    assert sorted(t.info.title_id for t in Dataset(tmp_path / "link").iter_titles()) == ["r-t0", "r-t1"]
    assert not list((tmp_path / "elsewhere").glob("sunk.*")), "no .partial or .old left"
    rows = pq.read_table(tmp_path / "link" / "contextual.parquet").to_pylist()
    assert {r["representation"] for r in rows} == {"output"} and len(rows) == 7
    for r in rows:
        np.testing.assert_array_equal(np.array(r["embedding"], np.float32), want[(r["title_id"], r["shot_index"])])

    bad = replace(kafka_stack, topic_prefix=f"sinkbad-{uuid.uuid4().hex[:6]}", partitions=1)
    _create_topics(bad)
    p = producer(bad)
    for m in fused_shot_messages(next(iter(Dataset(tmp_path / "ds").iter_titles())), LAYOUT, "r"):
        m.title_embedding = vec_to_bytes(np.full(LAYOUT.title, np.inf, np.float32))  # refused, as a worker would
        p.send(Topics.from_settings(bad).fused, key=m.title_id.encode(), value=m.to_bytes())
    p.flush()
    p.close()
    with pytest.raises(MediaError, match=r"every complete title on .* was refused \(\{'r-t0': .*nothing was written"):
        sink(bad, tmp_path / "link", idle_s=1.0, timeout_s=60)
    assert sorted(t.info.title_id for t in Dataset(tmp_path / "link").iter_titles()) == ["r-t0", "r-t1"], "untouched"


@pytest.mark.kafka
def test_sink_writes_the_finals_of_the_publication_whose_shots_it_writes(kafka_stack, tmp_path):
    """A title published twice (requests "a", then "b"): the sink writes b's shots. Before, the finals were chosen
    by title and model version only, the last published winning, so a's finals (published after b's: its pass
    ran late) went into contextual.parquet beside b's shots, though a's shots may be other cuts of other media.
    Now each final names its request (ContextualEmbedding.request_id), and only b's are written; a final without
    one (from before the field) is still taken."""
    import pyarrow.parquet as pq

    from mediafm.bus import producer
    from mediafm.config import replace
    from mediafm.publish import sink
    from mediafm.schema import ContextualEmbedding
    from mediafm.topics import Topics

    settings = replace(kafka_stack, topic_prefix=f"sinkreq-{uuid.uuid4().hex[:6]}", partitions=1)
    _create_topics(settings)
    names = Topics.from_settings(settings)
    write_dataset(tmp_path / "ds", [5], prefix="q-")
    (title,) = Dataset(tmp_path / "ds").iter_titles()
    tid, n = title.info.title_id, len(title.fused)
    rng = np.random.default_rng(4)
    vecs = {rid: rng.standard_normal((n, 8)).astype(np.float32) for rid in ("a", "b", "")}
    p = producer(settings)
    for rid in ("a", "b"):
        for m in fused_shot_messages(title, LAYOUT, rid):
            p.send(names.fused, key=tid.encode(), value=m.to_bytes())
    for rid in ("b", "a", ""):  # a's pass after b's; then one final from before request ids, for shot 0
        for i in range(1 if rid == "" else n):
            e = ContextualEmbedding(title_id=tid, shot_index=i, start_s=0.0, end_s=1.0, embedding=vec_to_bytes(
                vecs[rid][i]), dim=8, model_version="1", profile="offline", representation="output", window_start=0,
                window_end=n, final=True, n_shots=n, request_id=rid)
            p.send(names.embeddings, key=tid.encode(), value=e.to_bytes())
    p.flush()
    p.close()
    out = sink(settings, tmp_path / "sunk", idle_s=1.0, timeout_s=120)
    assert (out["titles"], out["shots"], out["contextual"]) == (1, n, n)
    rows = {r["shot_index"]: np.array(r["embedding"], np.float32)
            for r in pq.read_table(tmp_path / "sunk" / "contextual.parquet").to_pylist()}
    assert sorted(rows) == list(range(n))
    np.testing.assert_array_equal(rows[0], vecs[""][0])  # the last final of shot 0 without a request id
    for i in range(1, n):
        np.testing.assert_array_equal(rows[i], vecs["b"][i])


@pytest.mark.kafka
def test_backfill_sends_each_title_once_and_names_what_it_sent_when_the_broker_stops_taking(kafka_stack, monkeypatch):
    """`backfill a b a c`: a once. A send that fails part way (the broker's refusal stood in for on the third
    send; the broker faults themselves are tests/streams/test_infra_faults.py) names the titles already
    re-published and those left; before, it named only the failing one, and a rerun re-embedded them all."""
    from mediafm import publish as publish_mod
    from mediafm.bus import Tail, producer
    from mediafm.config import replace
    from mediafm.errors import StackError
    from mediafm.schema import TitleRequest
    from mediafm.topics import Topics

    settings = replace(kafka_stack, topic_prefix=f"backfill-{uuid.uuid4().hex[:6]}", partitions=1)
    _create_topics(settings)
    topic = Topics.from_settings(settings).titles
    p = producer(settings)
    for tid in "abcd":
        p.send(topic, key=tid.encode(), value=TitleRequest(title_id=tid, uri=f"/m/{tid}.mp4", request_id="r0").to_bytes())
    p.flush()
    p.close()

    said = []
    (a,) = publish_mod.backfill(settings, ["a", "a"], idle_s=0.5, on_sent=said.append)
    assert said == [a] and a.uri == "/m/a.mp4" and a.request_id != "r0"

    real, calls = publish_mod.send_and_wait, []

    def refused_on_the_third(settings, p, what, records):
        calls.append(what)
        if len(calls) == 3:
            raise StackError(f"{what}: the broker did not take it (stood in)")
        return real(settings, p, what, records)

    monkeypatch.setattr(publish_mod, "send_and_wait", refused_on_the_third)
    with pytest.raises(StackError, match=r"title 'd'.*; 2 of 3 titles were re-published before it \(b, c\); "
                                         r"backfill the others: d$"):
        publish_mod.backfill(settings, ["b", "c", "b", "d"], idle_s=0.5)
    tail = Tail(settings, topic, from_beginning=True)
    try:
        again = [r.key.decode() for r in tail.to_end(timeout_s=30)][4:]
    finally:
        tail.close()
    assert again == ["a", "b", "c"]
