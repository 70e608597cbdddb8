"""Static group membership (Settings.worker_instance_id, KIP-345): a worker killed with SIGKILL and started again
under the same instance id replaces its dead self in the group at once; with dynamic membership the dead member
stays in the group until its session (15 s) times out, and the group cannot settle before.

Read from the broker (DescribeGroups): the members at the moment the restarted worker is first seen in the
group. Then the restarted worker serves a title, every shot one final.
"""

from __future__ import annotations

import signal
import socket
import time
import uuid

import numpy as np
import pytest
from conftest import free_port, rest_of_output, start_worker, stop_worker
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from mediafm.bus import Tail, kafka_python_options, producer
from mediafm.config import replace
from mediafm.profiles import OFFLINE
from mediafm.schema import ContextualEmbedding, FusedShot, decode, vec_to_bytes
from mediafm.stack import kafka
from mediafm.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.triton, pytest.mark.slow]


def _members(admin: KafkaAdminClient, group: str) -> tuple[str, list[dict]]:
    """The group's state and its members (member_id, group_instance_id, ...), as the broker has them now."""
    while True:
        try:
            g = admin.describe_groups([group])[group]
            return g.get("group_state", ""), list(g.get("members", ()))
        except KafkaError as e:  # its coordinator not loaded yet: ask again
            if not e.retriable:
                raise
            time.sleep(0.2)


def _wait(admin, group: str, until, what: str, timeout_s: float = 120):
    deadline, seen = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        seen = _members(admin, group)
        if until(*seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"group {group}: {what} not seen within {timeout_s:.0f} s; last {seen}")


@pytest.mark.parametrize("instance_id", ["auto", ""], ids=["static", "dynamic"])
def test_a_worker_killed_and_started_again_replaces_its_dead_self(kafka_stack, offline_model, tmp_path, instance_id):
    s = replace(kafka_stack, topic_prefix=f"static{uuid.uuid4().hex[:6]}", state_dir=tmp_path / "state",
                worker_web_port=free_port(), worker_instance_id=instance_id)
    names = Topics.from_settings(s)
    kafka.create_topics(s, names.all())
    log = tmp_path / "worker.log"
    admin = KafkaAdminClient(**kafka_python_options(s))
    w = start_worker(s, log)
    try:
        _, first = _wait(admin, s.topic_prefix, lambda state, ms: state == "Stable" and len(ms) == 1,
                         "one member, Stable")
        dead = first[0]["member_id"]
        assert first[0].get("group_instance_id") == (f"{socket.gethostname()}-{s.worker_web_port}"
                                                     if instance_id else None)
        w.send_signal(signal.SIGKILL)
        w.wait()
        w = start_worker(s, log)  # the same settings: the same web port, state directory and instance id
        state, members = _wait(admin, s.topic_prefix, lambda state, ms: any(m["member_id"] != dead for m in ms),
                               "the restarted worker")
        ids = {m["member_id"] for m in members}
        if instance_id:  # the dead member is gone the moment its successor joins
            assert dead not in ids and len(ids) == 1, (state, members)
        else:  # the dead member is waited for until its session times out
            assert dead in ids and len(ids) == 2, (state, members)
        _wait(admin, s.topic_prefix, lambda state, ms: state == "Stable" and len(ms) == 1, "one member, Stable")

        # and it serves: a title of fused shots, every shot one final
        tid, n = f"st-{uuid.uuid4().hex[:6]}", 80
        rng = np.random.default_rng(7)
        tail = Tail(s, names.embeddings, from_beginning=True)
        p = producer(s)
        title = vec_to_bytes(rng.normal(size=OFFLINE.layout.title))
        for j in range(n):
            v = rng.normal(size=OFFLINE.layout.fused_dim)
            p.send(names.fused, key=tid.encode(), value=FusedShot(
                title_id=tid, shot_index=j, start_s=float(j), end_s=j + 1.0, profile="offline",
                fused=vec_to_bytes(v / np.linalg.norm(v)), present=[True, True, True], n_shots=n,
                title_embedding=title).to_bytes())
        p.flush()
        p.close()
        finals = set()
        for rec in tail.poll(timeout_s=240, stop=lambda: len(finals) >= n or w.poll() is not None):
            m = decode(rec.value, expect=ContextualEmbedding)
            if m.final and m.title_id == tid:
                finals.add(m.shot_index)
        for rec in rest_of_output(s, tail, names.fused):
            m = decode(rec.value, expect=ContextualEmbedding)
            if m.final and m.title_id == tid:
                finals.add(m.shot_index)
        tail.close()
        assert finals == set(range(n)), log.read_text()[-3000:]
    finally:
        admin.close()
        if w.poll() is None:
            stop_worker(w)
