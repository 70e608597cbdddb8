"""A broker behind TLS with SASL (SASL_SSL), as managed brokers are: the clients verify its certificate and host
name, then log in.

A third real broker (the local stack's, kafka_security_protocol = SASL_SSL, SCRAM-SHA-256) serves a self-signed
certificate that `mediafm stack up` makes for bind_host. A worker trusting that certificate takes a title from the
fused topic to one final per shot through Faust, the fused-topic reader and the tools' clients, and a live event
from its segments to a provisional and a final per shot, all over TLS. A
client that trusts only the system's CAs, or speaks no TLS, gets nothing; each wrong setting is named in one line
before any client waits on it, and so is a TLS client at the session's plain broker.

A fourth (SSL, no login) asks each client for a certificate instead (mutual TLS): a worker showing the one `stack
up` made gets every shot its final; a client with none, or with one the broker does not trust, gets nothing and is
told which, at once.
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
    self_signed,
    worker_that_stops,
)

from mediafm.config import replace
from mediafm.errors import ConfigError
from mediafm.kafka_security import check_login, client_security
from mediafm.stack import kafka
from mediafm.topics import Topics

PASSWORD_ENV = "MEDIAFM_TEST_KAFKA_TLS_PASSWORD"
PASSWORD = "pw-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def tls_stack(stack_settings, tmp_path_factory):
    """SASL_SSL on every listener of a second broker beside the session's Triton; the pipeline's topics made
    through it. `stack up` without kafka_ssl_cafile is refused first, naming the certificate to trust."""
    with broker_beside(stack_settings, tmp_path_factory.mktemp("tls") / "state", PASSWORD_ENV, PASSWORD,
                       kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
                       kafka_sasl_username="pipeline") as s:
        with pytest.raises(ConfigError, match=f"set kafka_ssl_cafile={kafka.certificate(s)}"):
            kafka.up(s)
        assert not kafka.service(s).alive()
        s = replace(s, kafka_ssl_cafile=str(kafka.certificate(s)))
        kafka.up(s)
        kafka.create_topics(s, Topics.from_settings(s).all())
        yield s


@pytest.mark.kafka
def test_only_clients_that_verify_the_broker_and_log_in_get_through(tls_stack, monkeypatch, tmp_path):
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    s = tls_stack
    topic = Topics.from_settings(s).models
    assert round_trip(s, topic, b"over tls") == [b"over tls"]
    assert check_login(s) is True
    state = s.state_dir / "kafka"
    assert (state / "server.properties").stat().st_mode & 0o777 == 0o600  # the password and the store's
    assert (state / "tls" / "store.pass").stat().st_mode & 0o777 == 0o600

    # each wrong setting is named at once, before a client retries it for 30 s
    monkeypatch.setenv("MEDIAFM_TEST_WRONG_PASSWORD", "not-" + PASSWORD)
    system_cas = replace(s, kafka_ssl_cafile="")
    wrong = {
        "does not verify against the system CAs": system_cas,
        "refused the login of user 'pipeline' with SCRAM-SHA-256": replace(
            s, kafka_sasl_password_env="MEDIAFM_TEST_WRONG_PASSWORD"),
        "does not take the login of user 'pipeline' with SCRAM-SHA-512": replace(
            s, kafka_sasl_mechanism="SCRAM-SHA-512"),
        "speaks TLS, and kafka_security_protocol=SASL_PLAINTEXT: set it to SASL_SSL": replace(
            s, kafka_security_protocol="SASL_PLAINTEXT"),
        "speaks TLS, and kafka_security_protocol=PLAINTEXT: set it to SSL or SASL_SSL": replace(
            s, kafka_security_protocol="PLAINTEXT"),
    }
    for message, settings in wrong.items():
        with pytest.raises(ConfigError, match=message):
            check_login(settings)
    # clients that do not verify the certificate, or speak no TLS, get nothing
    for name, kwargs in {"system CAs": client_security(system_cas),
                         "no TLS": client_security(replace(s, kafka_security_protocol="SASL_PLAINTEXT"))}.items():
        with pytest.raises(KafkaTimeoutError):
            KafkaProducer(bootstrap_servers=s.kafka_bootstrap, bootstrap_timeout_ms=5_000, max_block_ms=5_000,
                          **kwargs).send(topic, value=name.encode()).get(timeout=10)
    assert PASSWORD not in (state / "kafka.log").read_text(errors="replace")

    # a worker that cannot verify the broker stops in one line (no traceback, no 30 s of retries)
    code, said = worker_that_stops(system_cas, tmp_path / "worker.log")
    assert code == 2 and "mediafm worker: error: the TLS certificate of Kafka at" in said, said[-2000:]
    assert "Traceback" not in said and PASSWORD not in said


@pytest.mark.kafka
def test_a_client_with_tls_at_a_plain_listener_is_told_so(kafka_stack, monkeypatch):
    """The session's PLAINTEXT broker hangs up on a TLS handshake, which the clients retry as if it were down:
    check_login names the setting at once. A listener that answers neither (nobody there) is still waited for."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    for protocol, fix in {"SSL": "PLAINTEXT", "SASL_SSL": "SASL_PLAINTEXT"}.items():
        s = replace(kafka_stack, kafka_security_protocol=protocol, kafka_sasl_username="pipeline",
                    kafka_sasl_password_env=PASSWORD_ENV)
        with pytest.raises(ConfigError, match=f"speaks no TLS .*kafka_security_protocol={protocol}: set it to {fix} "):
            check_login(s)
        assert check_login(replace(s, kafka_servers=f"127.0.0.1:{free_port()}"), timeout_s=2) is False
    assert check_login(kafka_stack) is True  # the plain client at the plain listener: asked metadata, answered


@pytest.mark.kafka
@pytest.mark.triton
def test_a_worker_over_tls_gives_every_shot_its_final(tls_stack, offline_model, tmp_path):
    s = replace(tls_stack, worker_web_port=free_port(), state_dir=tmp_path / "state", held_shots_mb=0)
    n = 300  # held_shots_mb=0: the title is read back from the fused topic, over TLS
    finals = finals_of_a_fused_title(s, n, tmp_path / "worker.log", seed=1)
    assert sorted(finals) == list(range(n)) and set(finals.values()) == {1}
    assert PASSWORD not in (tmp_path / "worker.log").read_text()


@pytest.mark.kafka
@pytest.mark.triton
def test_a_live_event_over_tls_gives_every_shot_a_provisional_then_a_final(tls_stack, offline_model, tmp_path):
    """The live path over TLS with SCRAM: segments published by `publish_live`, cut, encoded and contextualised by
    a worker whose every client logs in, each shot a provisional (left context only) and then its final."""
    s = replace(tls_stack, worker_web_port=free_port(), state_dir=tmp_path / "state")
    got, n = kinds_of_a_live_event(s, tmp_path)
    assert got == {i: [False, True] for i in range(n)}, got
    assert PASSWORD not in (tmp_path / "worker.log").read_text()


@pytest.fixture(scope="module")
def mtls_stack(stack_settings, tmp_path_factory):
    """SSL with no login on every listener of a broker beside the session's Triton: the broker asks each client
    for a certificate (mutual TLS). `stack up` without kafka_ssl_cafile and kafka_ssl_certfile is refused first,
    naming the broker's certificate to trust and the client certificate it made."""
    with broker_beside(stack_settings, tmp_path_factory.mktemp("mtls") / "state", PASSWORD_ENV, PASSWORD,
                       kafka_security_protocol="SSL") as s:
        pem, key = kafka.client_certificate(s)
        with pytest.raises(ConfigError, match=f"set kafka_ssl_cafile={kafka.certificate(s)} .*"
                                              f"set kafka_ssl_certfile={pem} and kafka_ssl_keyfile={key} "):
            kafka.up(s)
        assert not kafka.service(s).alive() and key.stat().st_mode & 0o777 == 0o600
        s = replace(s, kafka_ssl_cafile=str(kafka.certificate(s)), kafka_ssl_certfile=str(pem),
                    kafka_ssl_keyfile=str(key))
        kafka.up(s)
        kafka.create_topics(s, Topics.from_settings(s).all())
        yield s


@pytest.mark.kafka
def test_only_clients_with_a_certificate_the_broker_trusts_get_through(mtls_stack, tmp_path):
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    s = mtls_stack
    topic = Topics.from_settings(s).models
    assert round_trip(s, topic, b"mutual tls") == [b"mutual tls"]
    assert check_login(s) is True
    stranger = self_signed(tmp_path, "stranger")
    no_certificate = replace(s, kafka_ssl_certfile="", kafka_ssl_keyfile="")
    wrong = {
        "asks for a client certificate .*kafka_ssl_certfile is empty": no_certificate,
        f"does not accept the client certificate in kafka_ssl_certfile='{stranger[0]}'": replace(
            s, kafka_ssl_certfile=stranger[0], kafka_ssl_keyfile=stranger[1]),
        "the private key is not the one of that certificate": replace(s, kafka_ssl_keyfile=stranger[1]),
    }
    for message, settings in wrong.items():  # at once: the clients would retry these as a broker that is down
        with pytest.raises(ConfigError, match=message):
            check_login(settings)
    with pytest.raises(KafkaTimeoutError):  # a client with no certificate gets nothing (no bootstrap, no send)
        stranger = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, bootstrap_timeout_ms=5_000, max_block_ms=5_000,
                                 **client_security(no_certificate))
        try:
            stranger.send(topic, value=b"no certificate").get(timeout=10)
        finally:
            stranger.close(timeout=5)
    assert round_trip(s, topic, b"still") == [b"mutual tls", b"still"]  # and nothing it sent arrived

    code, said = worker_that_stops(no_certificate, tmp_path / "worker.log")
    assert code == 2 and "mediafm worker: error: Kafka at" in said and "asks for a client certificate" in said, \
        said[-2000:]
    assert "Traceback" not in said


@pytest.mark.kafka
@pytest.mark.triton
def test_a_worker_with_a_client_certificate_gives_every_shot_its_final(mtls_stack, offline_model, tmp_path):
    s = replace(mtls_stack, worker_web_port=free_port(), state_dir=tmp_path / "state", held_shots_mb=0)
    n = 300  # held_shots_mb=0: the title is read back from the fused topic, over mutual TLS
    finals = finals_of_a_fused_title(s, n, tmp_path / "worker.log", seed=2)
    assert sorted(finals) == list(range(n)) and set(finals.values()) == {1}
