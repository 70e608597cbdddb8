"""A broker that asks who is calling: SASL/SCRAM-SHA-512, as managed and shared brokers do.

The pipeline ran only against brokers that let anyone in. Here a second real broker (the local stack's, with
kafka_security_protocol = SASL_PLAINTEXT) knows one user; a worker with that user's password, given through
the variable kafka_sasl_password_env names, takes a title from the fused topic to one final per shot, through
Faust's consumer, producer and changelogs, the fused-topic reader and the tools' kafka-python clients. A client
with a wrong password or none gets nothing, and the broker's log says why; a worker with a wrong password stops
at once with one line saying why. The password is in no log of ours.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from conftest import broker_beside, finals_of_a_fused_title, free_port, round_trip, settings_env, worker_that_stops

from mediafm.config import Settings, replace
from mediafm.errors import ConfigError
from mediafm.kafka_security import check_login, client_security
from mediafm.stack import kafka
from mediafm.topics import Topics

PASSWORD_ENV = "MEDIAFM_TEST_KAFKA_PASSWORD"
PASSWORD = "pw-" + uuid.uuid4().hex  # not a string any log of ours may hold


@pytest.fixture(scope="module")
def sasl_stack(stack_settings, tmp_path_factory):
    """A second broker, SASL only (SCRAM-SHA-512 for clients, PLAIN between its own listeners), beside the
    session's Triton; the pipeline's topics made through it."""
    with broker_beside(stack_settings, tmp_path_factory.mktemp("sasl") / "state", PASSWORD_ENV, PASSWORD,
                       kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
                       kafka_sasl_username="pipeline") as s:
        kafka.up(s)
        kafka.create_topics(s, Topics.from_settings(s).all())
        yield s


def _broker_log(s: Settings) -> str:
    return (s.state_dir / "kafka" / "kafka.log").read_text(errors="replace")


@pytest.mark.kafka
def test_only_the_user_with_its_password_gets_in(sasl_stack, monkeypatch, tmp_path):
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    from mediafm.bus import Tail, producer

    s = sasl_stack
    topic = Topics.from_settings(s).models
    assert round_trip(s, topic, b"let in") == [b"let in"]
    assert (s.state_dir / "kafka" / "server.properties").stat().st_mode & 0o777 == 0o600  # it holds the password

    monkeypatch.setenv("MEDIAFM_TEST_WRONG_PASSWORD", "not-" + PASSWORD)
    wrong = replace(s, kafka_sasl_password_env="MEDIAFM_TEST_WRONG_PASSWORD")
    for name, kwargs in {"wrong password": client_security(wrong), "no SASL": {}}.items():
        with pytest.raises(KafkaTimeoutError):
            KafkaProducer(bootstrap_servers=s.kafka_bootstrap, bootstrap_timeout_ms=5_000, max_block_ms=5_000,
                          **kwargs).send(topic, value=name.encode()).get(timeout=10)
    log = _broker_log(s)
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in log  # refused for the password, not lost
    assert PASSWORD not in log

    # a worker with the wrong password stops (a setting to fix, not a fault to wait out), saying why in one
    # line (it was a traceback 34 s later: the tools' client retried the refused login until its bootstrap timed out)
    with pytest.raises(ConfigError, match="refused the login of user 'pipeline' with SCRAM-SHA-512: check the "
                                          "password in \\$MEDIAFM_TEST_WRONG_PASSWORD"):
        check_login(wrong)
    assert check_login(s) is True
    # a client with no login at all is told what the listener wants (it asked ApiVersions, then metadata, which
    # the broker hangs up on before a login), not left to wait for 30 s as for a broker that is down
    with pytest.raises(ConfigError, match="answers only after a SASL login, and kafka_security_protocol=PLAINTEXT: "
                                          "set it to SASL_PLAINTEXT"):
        check_login(replace(s, kafka_security_protocol="PLAINTEXT"))
    for tool in (lambda: producer(wrong), lambda: Tail(wrong, topic), lambda: kafka.create_topics(wrong, [topic])):
        with pytest.raises(ConfigError, match="refused the login"):
            tool()
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", "topics"], env=settings_env(wrong), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("mediafm topics: error: Kafka at"), r.stderr[-2000:]
    code, said = worker_that_stops(wrong, tmp_path / "worker.log")
    assert code == 2 and "mediafm worker: error: Kafka at" in said and "refused the login" in said, said[-2000:]
    assert "Traceback" not in said and PASSWORD not in said and "not-" + PASSWORD not in said

    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ConfigError, match=PASSWORD_ENV):  # says which variable to set, before any connection
        client_security(s)


@pytest.mark.kafka
@pytest.mark.triton
def test_a_worker_with_the_password_gives_every_shot_its_final(sasl_stack, offline_model, tmp_path):
    s = replace(sasl_stack, worker_web_port=free_port(), state_dir=tmp_path / "state", window_shots=512,
                window_stride=256, held_shots_mb=0)  # 0: the title is read back from the fused topic by offset
    n = 700  # two windows of the served plan (64/32 on the tiny model)
    finals = finals_of_a_fused_title(s, n, tmp_path / "worker.log")
    assert sorted(finals) == list(range(n)) and set(finals.values()) == {1}
    assert PASSWORD not in (tmp_path / "worker.log").read_text()
