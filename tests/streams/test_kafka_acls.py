"""A broker that checks ACLs: the pipeline's user gets what `mediafm acls` lists (mediafm/acls.py) and no more.

Managed and shared brokers deny what they were not told to allow. Here a real broker (the local stack's, with
kafka_acls: SASL, KRaft's StandardAuthorizer, the broker's own user its one super user) grants the pipeline's user
only the list: a worker with it takes a title from the fused topic to one final per shot and a live event from its
segments to a provisional and a final per shot, through every topic, its consumer group and Faust's changelogs. The
same user is denied another pipeline's topics, and what denies it is named.
"""

from __future__ import annotations

import contextlib
import re
import uuid

import pytest
from conftest import (
    broker_beside,
    finals_of_a_fused_title,
    free_port,
    kinds_of_a_live_event,
    round_trip,
    worker_that_stops,
)

from mediafm.acls import check_access, pipeline_acls
from mediafm.bus import producer, send_and_wait
from mediafm.config import replace
from mediafm.errors import ConfigError
from mediafm.stack import kafka
from mediafm.topics import Topics

PASSWORD_ENV = "MEDIAFM_TEST_KAFKA_ACL_PASSWORD"
PASSWORD = "pw-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def acl_stack(stack_settings, tmp_path_factory):
    with broker_beside(stack_settings, tmp_path_factory.mktemp("acls") / "state", PASSWORD_ENV, PASSWORD,
                       kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-256",
                       kafka_sasl_username="pipeline", kafka_acls=True) as s:
        kafka.up(s)
        kafka.create_topics(s, Topics.from_settings(s).all())
        yield s


@pytest.mark.kafka
def test_the_user_gets_its_topics_and_no_others(acl_stack):
    s = acl_stack
    assert round_trip(s, Topics.from_settings(s).models, b"granted") == [b"granted"]
    other = replace(s, topic_prefix="other" + uuid.uuid4().hex[:4])
    with pytest.raises(ConfigError, match=f"denies user 'pipeline' creating topics {other.topic_prefix}.titles, .*"
                                          f"what `mediafm acls` lists .*topic_prefix='{other.topic_prefix}'"):
        kafka.create_topics(other, Topics.from_settings(other).all())
    with pytest.raises(ConfigError, match=f"denies user 'pipeline' the topics {other.topic_prefix}.titles, "):
        check_access(other)
    p = producer(s)
    try:
        with pytest.raises(ConfigError, match=f"denies user 'pipeline' writing a test record to {other.topic_prefix}"):
            send_and_wait(other, p, "a test record", [(Topics.from_settings(other).titles, b"k", b"v")])
    finally:
        p.close()
    check_access(s)  # its own: allowed


@pytest.mark.kafka
@pytest.mark.triton
def test_a_worker_with_only_the_listed_acls_gives_every_shot_its_final(acl_stack, offline_model, tmp_path):
    s = replace(acl_stack, worker_web_port=free_port(), state_dir=tmp_path / "state", held_shots_mb=0)
    n = 300
    finals = finals_of_a_fused_title(s, n, tmp_path / "worker.log", seed=3)
    assert sorted(finals) == list(range(n)) and set(finals.values()) == {1}


@pytest.mark.kafka
@pytest.mark.triton
def test_a_live_event_with_only_the_listed_acls_gives_every_shot_a_provisional_then_a_final(acl_stack, offline_model,
                                                                                          tmp_path):
    s = replace(acl_stack, worker_web_port=free_port(), state_dir=tmp_path / "state")
    got, n = kinds_of_a_live_event(s, tmp_path)
    assert got == {i: [False, True] for i in range(n)}, got


@contextlib.contextmanager
def _taken_away(s, resource: str, name: str, operation: str):
    """The pipeline user's grant of `operation` on `name` taken away while the block runs (by the broker's own
    user, the only one that may change ACLs), then everything granted again."""
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ResourcePatternFilter, ResourceType

    admin = kafka.broker_admin(s)
    (acl,) = [a for a in pipeline_acls(s) if (a.resource, a.name, a.operation) == (resource, name, operation)]
    granted = acl.to_kafka_python("User:pipeline")
    pattern = ResourcePatternFilter(ResourceType[resource], name, granted.resource_pattern.pattern_type)
    try:
        (_, dropped, _), = admin.delete_acls([ACLFilter("User:pipeline", "*", ACLOperation[operation],
                                                        ACLPermissionType.ALLOW, pattern)])
        assert len(dropped) == 1, dropped
        yield
    finally:
        kafka.grant_acls(s)
        admin.close()


# After the runs above: Faust's own topics (<prefix>-*) are there to be denied.
@pytest.mark.kafka
@pytest.mark.parametrize("resource, name, operation, said", [
    ("GROUP", "{p}", "READ", "the consumer group '{p}'"),
    ("TOPIC", "{p}.", "READ", "reading {p}.titles, {p}.live.segments, {p}.shots, {p}.shots.encoded, {p}.shots.fused, "
                             "{p}.embeddings, {p}.deadletter, {p}.models: "),
    ("TOPIC", "{p}-", "READ", "reading {p}-__assignor-__leader, {p}-contextualise-titles-changelog, "),
    ("TOPIC", "{p}-", "CREATE", "making Faust's topics ({p}-*: "),
])
def test_a_worker_denied_a_grant_it_can_ask_about_stops_at_once_naming_it(acl_stack, tmp_path, resource, name,
                                                                         operation, said):
    """Denied its group, a worker would wait for ever, silent (aiokafka's coordinator task dies with an error
    nobody reads); denied a read or Faust's topics, it would crash with a traceback. It asks first, with no side
    effect, and stops in one line naming what to grant; granted again, the same asking lets it through."""
    s, p = acl_stack, acl_stack.topic_prefix
    with _taken_away(s, resource, name.format(p=p), operation):
        code, out = worker_that_stops(s, tmp_path / "worker.log")
        assert code == 2 and re.search("mediafm worker: error: Kafka at .* denies user 'pipeline' "
                                       + re.escape(said.format(p=p)), out), out[-2000:]
        assert "Traceback" not in out
    check_access(s)


@pytest.mark.kafka
@pytest.mark.triton
def test_a_worker_denied_a_write_stops_at_its_first_send_naming_the_grant(acl_stack, offline_model, tmp_path):
    """Writing cannot be asked without writing: a worker denied WRITE on the pipeline's topics starts, and at its
    first embedding stops (75: its supervisor starts it again, and it goes on once the grant is back) saying what
    to grant; nothing of the title was committed as done."""
    from conftest import publish_fused_title, start_worker

    s = replace(acl_stack, worker_web_port=free_port(), state_dir=tmp_path / "state", held_shots_mb=0)
    log = tmp_path / "worker.log"
    publish_fused_title(s, 20, seed=4)  # before the grant goes: the same user publishes
    with _taken_away(acl_stack, "TOPIC", f"{s.topic_prefix}.", "WRITE"):
        w = start_worker(s, log)
        try:
            code = w.wait(timeout=180)  # the condition: it exits (a wedged worker fails here)
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
    said = log.read_text()
    assert code == 75, said[-2000:]
    assert "TopicAuthorizationFailedError" in said and "grant what `mediafm acls` lists" in said, said[-2000:]
