"""A broker that checks ACLs: the pipeline's user gets what `mediafm acls` lists (mediafm/acls.py) and no more.

Managed and shared brokers deny what they were not told to allow. Here a real broker (the local stack's, with
kafka_acls: SASL, KRaft's StandardAuthorizer, the broker's own user its one super user) grants the pipeline's user
only the list: a worker with it takes a title from the fused topic to one final per shot and a live event from its
segments to a provisional and a final per shot, through every topic, its consumer group and Faust's changelogs. The
same user is denied another pipeline's topics, and what denies it is named.

A second broker (SSL, no login: mutual TLS) names each client by its certificate's subject instead. There the
pipeline shows a certificate of its own whose subject has three attributes, one with a comma, and `stack up` grants
that subject as the broker writes it: a worker takes a title to one final per shot, and is told what it is denied
under that name.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid

import pytest
from conftest import (
    broker_beside,
    finals_of_a_fused_title,
    free_port,
    kinds_of_a_live_event,
    round_trip,
    self_signed,
    worker_that_stops,
)

from mediafm.acls import check_access, pipeline_acls
from mediafm.bus import producer, send_and_wait
from mediafm.config import replace
from mediafm.errors import ConfigError
from mediafm.kafka_security import principal
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
    """The pipeline principal's grant of `operation` on `name` taken away while the block runs (by the broker's
    super user, the only one that may change ACLs), then everything granted again."""
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ResourcePatternFilter, ResourceType

    admin = kafka.broker_admin(s)
    (acl,) = [a for a in pipeline_acls(s) if (a.resource, a.name, a.operation) == (resource, name, operation)]
    granted = acl.to_kafka_python(principal(s))
    pattern = ResourcePatternFilter(ResourceType[resource], name, granted.resource_pattern.pattern_type)
    try:
        (_, dropped, _), = admin.delete_acls([ACLFilter(principal(s), "*", ACLOperation[operation],
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
def test_a_worker_that_may_describe_its_group_but_not_read_it_stops_naming_it(acl_stack, tmp_path):
    """DESCRIBE on the group lets a client read the group's offsets, not join it (JoinGroup needs READ): a worker
    with that alone would pass a check of the offsets and then wait for ever, silent. It also asks to read the group
    (a heartbeat of no member, refused before anything else when READ is denied) and stops naming it."""
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ResourcePatternFilter, ResourceType

    from mediafm.acls import Acl

    s, p = acl_stack, acl_stack.topic_prefix
    describe = Acl("GROUP", p, "LITERAL", "DESCRIBE").to_kafka_python("User:pipeline")
    admin = kafka.broker_admin(s)
    try:
        with _taken_away(s, "GROUP", p, "READ"):
            assert not admin.create_acls([describe])["failed"]
            from kafka import KafkaAdminClient
            from kafka.errors import KafkaError

            from mediafm.bus import kafka_python_options

            with contextlib.closing(KafkaAdminClient(**kafka_python_options(s))) as mine:
                deadline = time.monotonic() + 60
                while True:  # allowed: what check_access asked alone until 2026-12-07
                    try:
                        mine.list_group_offsets({p: None})
                        break
                    except KafkaError as e:  # a new broker makes its offsets topic at the first group asked for
                        assert e.retriable and time.monotonic() < deadline, e
                        time.sleep(0.5)
            code, out = worker_that_stops(s, tmp_path / "worker.log")
            assert code == 2 and f"denies user 'pipeline' the consumer group '{p}'" in out, out[-2000:]
    finally:
        admin.delete_acls([ACLFilter("User:pipeline", "*", ACLOperation.DESCRIBE, ACLPermissionType.ALLOW,
                                     ResourcePatternFilter(ResourceType.GROUP, p, describe.resource_pattern.pattern_type))])
        admin.close()
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


SUBJECT = r"CN=pipeline,O=Example\, Inc.,C=NL"  # how RFC 2253, and so the broker, writes /C=NL/O=Example, Inc./CN=pipeline


@pytest.fixture(scope="module")
def mtls_acl_stack(stack_settings, tmp_path_factory):
    """SSL with kafka_acls on a broker beside the session's Triton: no login, so its ACLs name each client by its
    certificate's subject; the pipeline shows a certificate of its own (the broker trusts what kafka_ssl_certfile
    names), and `stack up` grants its subject what `mediafm acls` lists."""
    tmp = tmp_path_factory.mktemp("mtls-acls")
    pem, key = self_signed(tmp, "pipeline", subject="/C=NL/O=Example, Inc./CN=pipeline")
    with broker_beside(stack_settings, tmp / "state", PASSWORD_ENV, PASSWORD, kafka_security_protocol="SSL",
                       kafka_ssl_certfile=pem, kafka_ssl_keyfile=key, kafka_acls=True) as s:
        with pytest.raises(ConfigError, match="set kafka_ssl_cafile="):  # makes the broker's certificate
            kafka.up(s)
        s = replace(s, kafka_ssl_cafile=str(kafka.certificate(s)))
        said = kafka.up(s)
        assert f"ACLs on, {len(pipeline_acls(s))} grants to User:{SUBJECT} " in said, said
        kafka.create_topics(s, Topics.from_settings(s).all())
        yield s


@pytest.mark.kafka
def test_a_client_certificate_gets_its_topics_and_no_others(mtls_acl_stack):
    s = mtls_acl_stack
    assert round_trip(s, Topics.from_settings(s).models, b"granted") == [b"granted"]
    other = replace(s, topic_prefix="other" + uuid.uuid4().hex[:4])
    with pytest.raises(ConfigError, match=re.escape(f"denies the client certificate in {s.kafka_ssl_certfile} "
                                                    f"(User:{SUBJECT}) the topics {other.topic_prefix}.titles, ")):
        check_access(other)
    check_access(s)  # its own: allowed


@pytest.mark.kafka
@pytest.mark.triton
def test_a_worker_with_a_certificate_granted_only_the_listed_acls_gives_every_shot_its_final(
        mtls_acl_stack, offline_model, tmp_path):
    s = replace(mtls_acl_stack, worker_web_port=free_port(), state_dir=tmp_path / "state", held_shots_mb=0)
    n = 300  # held_shots_mb=0: the title is read back from the fused topic too
    finals = finals_of_a_fused_title(s, n, tmp_path / "worker.log", seed=5)
    assert sorted(finals) == list(range(n)) and set(finals.values()) == {1}


@pytest.mark.kafka
def test_a_worker_whose_certificate_is_denied_its_group_stops_naming_the_certificate(mtls_acl_stack, tmp_path):
    s = mtls_acl_stack
    with _taken_away(s, "GROUP", s.topic_prefix, "READ"):
        code, out = worker_that_stops(s, tmp_path / "worker.log")
        assert code == 2 and re.search(re.escape(f"mediafm worker: error: Kafka at {s.kafka_bootstrap} denies the "
                                                 f"client certificate in {s.kafka_ssl_certfile} (User:{SUBJECT}) "
                                                 f"the consumer group '{s.topic_prefix}'"), out), out[-2000:]
    check_access(s)
