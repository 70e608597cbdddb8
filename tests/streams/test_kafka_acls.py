"""A broker that checks ACLs: the pipeline's user gets what `mediafm acls` lists (mediafm/acls.py) and no more.

Managed and shared brokers deny what they were not told to allow. Here a real broker (the local stack's, with
kafka_acls: SASL, KRaft's StandardAuthorizer, the broker's own user its one super user) grants the pipeline's user
only the list: a worker with it takes a title from the fused topic to one final per shot and a live event from its
segments to a provisional and a final per shot, through every topic, its consumer group and Faust's changelogs. The
same user is denied another pipeline's topics, and what denies it is named.
"""

from __future__ import annotations

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

from mediafm.acls import check_access
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
def test_a_worker_denied_its_group_stops_saying_so(acl_stack, tmp_path):
    """Without the group's grant a worker would wait for ever, silent: the broker says no to Faust's consumer,
    whose coordinator task dies with an error nobody reads. It stops in one line instead; granted again, it runs."""
    from kafka import KafkaAdminClient
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
        ResourceType,
    )

    from mediafm.bus import kafka_python_options

    s = acl_stack
    me, mine = kafka._broker_user(s)  # the broker's own user, the only one that may change ACLs
    admin = KafkaAdminClient(**{**kafka_python_options(s), "sasl_plain_username": me, "sasl_plain_password": mine})
    group = ResourcePatternFilter(ResourceType.GROUP, s.topic_prefix, ACLResourcePatternType.LITERAL)
    try:
        (_, dropped, _), = admin.delete_acls([ACLFilter("User:pipeline", "*", ACLOperation.ANY, ACLPermissionType.ANY,
                                                        group)])
        assert dropped, "the group's grant was there to take away"
        code, said = worker_that_stops(s, tmp_path / "worker.log")
        assert code == 2 and f"denies user 'pipeline' the consumer group '{s.topic_prefix}'" in said, said[-2000:]
        assert "Traceback" not in said
    finally:
        kafka.grant_acls(s)
        admin.close()
    check_access(s)


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
