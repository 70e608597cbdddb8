"""Nothing lost, nothing duplicated in effect: kill -9 a worker mid-stream, start another one."""

from __future__ import annotations

import signal
import time
import uuid
from collections import defaultdict

import numpy as np
import pytest
from conftest import free_port, start_worker, stop_worker

from mediafm.bus import Tail, producer
from mediafm.config import replace
from mediafm.fusion import OFFLINE
from mediafm.schema import ContextualEmbedding, decode
from mediafm.stack import kafka
from mediafm.synth import World, encoded_shots, generate_title
from mediafm.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.triton, pytest.mark.slow]


def test_kill_9_mid_stream_then_restart_every_shot_gets_one_final(kafka_stack, offline_model, tmp_path):
    # A pipeline of its own (topic prefix = faust app id = consumer group), so the session's worker stays out.
    s = replace(kafka_stack, topic_prefix=f"kill{uuid.uuid4().hex[:6]}", state_dir=tmp_path / "a",
                worker_web_port=free_port(), embedding_dtype="float16")  # and: half-size vectors on the wire
    names = Topics.from_settings(s)
    kafka.create_topics(s, names.all())
    world = World(OFFLINE, seed=3)
    titles = [generate_title(world, f"k{i}", n, np.random.default_rng(100 + i))
              for i, n in enumerate((150, 140, 130, 120, 110, 100))]
    want = {(t.title_id, i) for t in titles for i in range(len(t.start_s))}

    tail = Tail(s, names.embeddings, from_beginning=True)
    a = start_worker(s, tmp_path / "worker-a.log")
    p = producer(s)
    for t in titles:
        for m in encoded_shots(t):
            p.send(names.encoded, key=t.title_id.encode(), value=m.to_bytes())
    p.flush()
    p.close()

    finals: dict[tuple[str, int, str], list[np.ndarray]] = defaultdict(list)

    def take(rec):
        m = decode(rec.value, expect=ContextualEmbedding)
        assert m.dtype == "float16" and len(m.embedding) == 2 * m.dim
        if m.final:
            finals[(m.title_id, m.shot_index, m.model_version)].append(m.vector())

    for rec in tail.poll(timeout_s=240, stop=lambda: len(finals) > 0 or a.poll() is not None):
        take(rec)
    assert a.poll() is None, (tmp_path / "worker-a.log").read_text()[-3000:]
    a.send_signal(signal.SIGKILL)  # mid-stream: some titles are out, the rest in flight
    a.wait()
    before = {(t, i) for t, i, _ in finals}
    assert before and before < want, "the kill must land while work is in flight"

    # A new worker with empty local state: its tables come back from their changelog topics.
    b = start_worker(replace(s, state_dir=tmp_path / "b", worker_web_port=free_port()), tmp_path / "worker-b.log")
    try:
        for rec in tail.poll(timeout_s=300, stop=lambda: {(t, i) for t, i, _ in finals} >= want):
            take(rec)
        time.sleep(3)
        for rec in tail.poll(timeout_s=2):
            take(rec)
    finally:
        stop_worker(b)
        tail.close()
    assert {(t, i) for t, i, _ in finals} == want, f"missing: {sorted(want - {(t, i) for t, i, _ in finals})[:10]}"
    assert len({v for _, _, v in finals}) == 1, "one model version served throughout"
    # At-least-once delivery may publish a shot twice across the kill; consumers deduplicate on
    # (title, shot, version), so a repeat must carry the same embedding: one final in effect.
    for key, vecs in finals.items():
        for v in vecs[1:]:
            np.testing.assert_allclose(v, vecs[0], atol=1e-5, err_msg=str(key))
