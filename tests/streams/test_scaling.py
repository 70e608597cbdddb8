"""Scale out and in under load: workers join, leave cleanly and die, and every shot still gets one final.

Three workers of one pipeline on this machine (each its own table state), 30 titles of mixed length (three
over 3,000 shots) published at once; a fourth worker joins mid-run, one of the first three is stopped
cleanly (SIGTERM) and another is killed with SIGKILL. Afterwards, once the surviving workers have committed
all of their input: every shot of every title has exactly one final per model version (none lost, none
doubled in effect: a final published twice must carry the same vector), nothing was dead-lettered, and no
worker reported offsets it never processed.
"""

from __future__ import annotations

import signal
import uuid
from collections import defaultdict

import numpy as np
import pytest
from conftest import free_port, newest_version, rest_of_output, start_worker, stop_worker

from mediafm.bus import Tail, producer
from mediafm.config import replace
from mediafm.profiles import OFFLINE
from mediafm.schema import ContextualEmbedding, FusedShot, decode, vec_to_bytes
from mediafm.stack import kafka
from mediafm.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.triton, pytest.mark.slow]


def test_workers_join_leave_and_die_mid_catalog_and_every_shot_gets_one_final(kafka_stack, offline_model, tmp_path):
    s = replace(kafka_stack, topic_prefix=f"scale{uuid.uuid4().hex[:6]}", state_dir=tmp_path / "state",
                partitions=4, embedding_dtype="float16")
    names = Topics.from_settings(s)
    kafka.create_topics(s, names.all())
    rng = np.random.default_rng(5)
    lengths = [3100, 3300, 3050] + [int(x) for x in rng.integers(20, 400, size=27)]
    run = uuid.uuid4().hex[:6]
    want = {(f"s{i}-{run}", j) for i, n in enumerate(lengths) for j in range(n)}

    logs = [tmp_path / f"worker{i}.log" for i in range(4)]
    tail = Tail(s, names.embeddings, from_beginning=True)
    ws = [start_worker(replace(s, worker_web_port=free_port()), logs[i]) for i in range(3)]
    p = producer(s)
    for i, n in enumerate(lengths):
        tid = f"s{i}-{run}"
        title = vec_to_bytes(rng.normal(size=OFFLINE.layout.title))
        for j in range(n):
            v = rng.normal(size=OFFLINE.layout.fused_dim)
            p.send(names.fused, key=tid.encode(), value=FusedShot(
                title_id=tid, shot_index=j, start_s=float(j), end_s=j + 1.0, profile="offline",
                fused=vec_to_bytes(v / np.linalg.norm(v)), present=[True, True, True], n_shots=n,
                title_embedding=title).to_bytes())
    p.flush()
    p.close()

    finals: dict[tuple[str, int, str], list[np.ndarray]] = defaultdict(list)

    def take(rec):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.final:
            finals[(m.title_id, m.shot_index, m.model_version)].append(m.vector())

    def done() -> bool:
        return {(t, i) for t, i, _ in finals} >= want

    stopped: list = []
    try:
        # mid-run: some titles out, most still in flight
        for rec in tail.poll(timeout_s=600, stop=lambda: len(finals) >= 300):
            take(rec)
        assert all(w.poll() is None for w in ws), [lg.read_text()[-2000:] for lg in logs[:3]]
        ws.append(start_worker(replace(s, worker_web_port=free_port()), logs[3]))  # scale out
        for rec in tail.poll(timeout_s=600, stop=lambda: len(finals) >= 2000 or done()):
            take(rec)
        stop_worker(ws[0])  # scale in, cleanly
        stopped.append(ws[0])
        ws[1].send_signal(signal.SIGKILL)  # and a worker lost
        ws[1].wait()
        stopped.append(ws[1])
        for rec in tail.poll(timeout_s=1500, stop=lambda: done() or all(w.poll() is not None for w in ws[2:])):
            take(rec)
        for rec in rest_of_output(s, tail, names.fused, timeout_s=180):
            take(rec)
        assert all(w.poll() is None for w in ws[2:]), [lg.read_text()[-2000:] for lg in logs[2:]]
    finally:
        for w in ws:
            if w not in stopped:
                stop_worker(w)
        tail.close()
    text = "\n".join(lg.read_text() for lg in logs)
    missing = want - {(t, i) for t, i, _ in finals}
    assert not missing, f"{len(missing)} shots without a final, e.g. {sorted(missing)[:5]}\n{text[-4000:]}"
    assert {v for _, _, v in finals} == {newest_version(kafka_stack, "mediafm_offline")}
    for key, vecs in finals.items():  # a final published again after a restart is the same final
        for v in vecs[1:]:
            np.testing.assert_allclose(v, vecs[0], atol=1e-3, err_msg=str(key))
    assert "never reached this agent" not in text
    assert "Resource temporarily unavailable" not in text  # no two workers on one RocksDB store
    dead = Tail(s, names.deadletter, from_beginning=True)
    letters = [decode(r.value).reason for r in dead.to_end(timeout_s=30)]
    dead.close()
    assert not letters, letters[:3]
