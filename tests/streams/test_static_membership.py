"""Static group membership (Settings.worker_instance_id, KIP-345): a worker killed with SIGKILL and started again
under the same instance id replaces its dead self in the group at once; with dynamic membership the dead member
stays in the group until its session (15 s) times out, and the group cannot settle before.

Read from the broker (DescribeGroups): the members at the moment the restarted worker is first seen in the
group. Then the restarted worker serves a title, every shot one final.
"""

from __future__ import annotations

import signal
import socket
import uuid

import pytest
from conftest import finals_of_a_fused_title, free_port, start_worker, stop_worker, wait_for_group
from kafka import KafkaAdminClient

from mediafm.bus import kafka_python_options
from mediafm.config import replace
from mediafm.stack import kafka
from mediafm.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.triton, pytest.mark.slow]


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
        _, first = wait_for_group(admin, s.topic_prefix, lambda state, ms: state == "Stable" and len(ms) == 1,
                         "one member, Stable")
        dead = first[0]["member_id"]
        assert first[0].get("group_instance_id") == (f"{socket.gethostname()}-{s.worker_web_port}"
                                                     if instance_id else None)
        w.send_signal(signal.SIGKILL)
        w.wait()
        w = start_worker(s, log)  # the same settings: the same web port, state directory and instance id
        state, members = wait_for_group(admin, s.topic_prefix, lambda state, ms: any(m["member_id"] != dead for m in ms),
                               "the restarted worker")
        ids = {m["member_id"] for m in members}
        if instance_id:  # the dead member is gone the moment its successor joins
            assert dead not in ids and len(ids) == 1, (state, members)
        else:  # the dead member is waited for until its session times out
            assert dead in ids and len(ids) == 2, (state, members)
        wait_for_group(admin, s.topic_prefix, lambda state, ms: state == "Stable" and len(ms) == 1, "one member, Stable")

        # and it serves: a title of fused shots, every shot one final
        assert finals_of_a_fused_title(s, 80, log, seed=7, worker=w) == dict.fromkeys(range(80), 1)
    finally:
        admin.close()
        if w.poll() is None:
            stop_worker(w)
