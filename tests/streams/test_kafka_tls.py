"""A broker behind TLS with SASL (SASL_SSL), as managed brokers are: the clients verify its certificate and host
name, then log in.

A third real broker (the local stack's, kafka_security_protocol = SASL_SSL, SCRAM-SHA-256) serves a self-signed
certificate that `mediafm stack up` makes for bind_host. A worker trusting that certificate takes a title from the
fused topic to one final per shot through Faust, the fused-topic reader and the tools' clients, all over TLS. A
client that trusts only the system's CAs, or speaks no TLS, gets nothing; each wrong setting is named in one line
before any client waits on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from conftest import free_port, settings_env, start_worker, stop_worker, take_output

from mediafm.config import replace
from mediafm.errors import ConfigError
from mediafm.kafka_security import check_login, client_security
from mediafm.profiles import OFFLINE
from mediafm.schema import ContextualEmbedding, FusedShot, FusedShots, decode, shot_records, vec_to_bytes
from mediafm.stack import kafka
from mediafm.topics import Topics

PASSWORD_ENV = "MEDIAFM_TEST_KAFKA_TLS_PASSWORD"
PASSWORD = "pw-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def tls_stack(stack_settings, tmp_path_factory):
    """SASL_SSL on every listener of a second broker beside the session's Triton; the pipeline's topics made
    through it. `stack up` without kafka_ssl_cafile is refused first, naming the certificate to trust."""
    before = os.environ.get(PASSWORD_ENV)
    os.environ[PASSWORD_ENV] = PASSWORD
    s = replace(stack_settings, state_dir=tmp_path_factory.mktemp("tls") / "state", kafka_port=free_port(),
                kafka_controller_port=free_port(), kafka_security_protocol="SASL_SSL",
                kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="pipeline",
                kafka_sasl_password_env=PASSWORD_ENV, topic_prefix=f"tls{uuid.uuid4().hex[:6]}")
    try:
        with pytest.raises(ConfigError, match=f"set kafka_ssl_cafile={kafka.certificate(s)}"):
            kafka.up(s)
        assert not kafka.service(s).alive()
        s = replace(s, kafka_ssl_cafile=str(kafka.certificate(s)))
        kafka.up(s)
        kafka.create_topics(s, Topics.from_settings(s).all())
        yield s
    finally:
        kafka.down(s)
        if before is None:
            os.environ.pop(PASSWORD_ENV, None)
        else:
            os.environ[PASSWORD_ENV] = before


@pytest.mark.kafka
def test_only_clients_that_verify_the_broker_and_log_in_get_through(tls_stack, monkeypatch, tmp_path):
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    from mediafm.bus import Tail, producer

    s = tls_stack
    topic = Topics.from_settings(s).models
    p = producer(s)
    p.send(topic, key=b"k", value=b"over tls").get(timeout=30)
    p.close()
    tail = Tail(s, topic, from_beginning=True)
    assert [m.value for m in tail.to_end(timeout_s=30)] == [b"over tls"]
    tail.close()
    check_login(s)
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
    env = {**settings_env(system_cas), "MEDIAFM_WORKER_WEB_PORT": str(free_port())}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        code = subprocess.run([sys.executable, "-m", "mediafm.cli", "worker"], env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=180).returncode
    said = log.read_text()
    assert code == 2 and "mediafm worker: error: the TLS certificate of Kafka at" in said, said[-2000:]
    assert "Traceback" not in said and PASSWORD not in said


@pytest.mark.kafka
@pytest.mark.triton
def test_a_worker_over_tls_gives_every_shot_its_final(tls_stack, offline_model, tmp_path):
    s = replace(tls_stack, worker_web_port=free_port(), state_dir=tmp_path / "state", held_shots_mb=0)
    names = Topics.from_settings(s)  # held_shots_mb=0: the title is read back from the fused topic, over TLS
    from mediafm.bus import Tail, producer

    tid, n = f"tls-{uuid.uuid4().hex[:6]}", 300
    rng = np.random.default_rng(1)
    fused = rng.normal(size=(n, OFFLINE.layout.fused_dim)).astype(np.float32)
    title = vec_to_bytes(rng.normal(size=OFFLINE.layout.title).astype(np.float32))
    tail = Tail(s, names.embeddings, from_beginning=True)
    w = start_worker(s, tmp_path / "worker.log")
    p = producer(s)
    shots = [FusedShot(title_id=tid, request_id="tls", shot_index=i, start_s=float(i), end_s=i + 1.0, profile="offline",
                       fused=vec_to_bytes(fused[i]), present=[True, True, True], n_shots=n,
                       title_embedding=title).to_bytes() for i in range(n)]
    for record in shot_records(FusedShots, shots, tid, request_id="tls"):
        p.send(names.fused, key=tid.encode(), value=record)
    p.flush()
    p.close()
    finals: dict[int, int] = {}

    def take(rec):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.final and m.title_id == tid:
            finals[m.shot_index] = finals.get(m.shot_index, 0) + 1

    try:
        take_output(s, tail, w, tmp_path / "worker.log", names.fused, take, lambda: len(finals) >= n, timeout_s=300)
    finally:
        stop_worker(w)
        tail.close()
    assert sorted(finals) == list(range(n)) and set(finals.values()) == {1}
    assert PASSWORD not in (tmp_path / "worker.log").read_text()
