"""A broker that asks who is calling: SASL/SCRAM-SHA-512, as managed and shared brokers do.

The pipeline ran only against brokers that let anyone in. Here a second real broker (the local stack's, with
kafka_security_protocol = SASL_PLAINTEXT) knows one user; a worker with that user's password, given through
the variable kafka_sasl_password_env names, takes a title from the fused topic to one final per shot, through
Faust's consumer, producer and changelogs, the fused-topic reader and the tools' kafka-python clients. A client
with a wrong password or none gets nothing, and the broker's log says why; a worker with a wrong password stops
at once with one line saying why. The password is in no log of ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from conftest import free_port, settings_env, start_worker, stop_worker, take_output

from mediafm.config import Settings, replace
from mediafm.errors import ConfigError
from mediafm.kafka_security import check_login, client_security
from mediafm.profiles import OFFLINE
from mediafm.schema import ContextualEmbedding, FusedShot, FusedShots, decode, shot_records, vec_to_bytes
from mediafm.stack import kafka
from mediafm.topics import Topics

PASSWORD_ENV = "MEDIAFM_TEST_KAFKA_PASSWORD"
PASSWORD = "pw-" + uuid.uuid4().hex  # not a string any log of ours may hold


@pytest.fixture(scope="module")
def sasl_stack(stack_settings, tmp_path_factory):
    """A second broker, SASL only (SCRAM-SHA-512 for clients, PLAIN between its own listeners), beside the
    session's Triton; the pipeline's topics made through it."""
    before = os.environ.get(PASSWORD_ENV)
    os.environ[PASSWORD_ENV] = PASSWORD
    s = replace(stack_settings, state_dir=tmp_path_factory.mktemp("sasl") / "state", kafka_port=free_port(),
                kafka_controller_port=free_port(), kafka_security_protocol="SASL_PLAINTEXT",
                kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="pipeline",
                kafka_sasl_password_env=PASSWORD_ENV, topic_prefix=f"sasl{uuid.uuid4().hex[:6]}")
    try:
        kafka.up(s)
        kafka.create_topics(s, Topics.from_settings(s).all())
        yield s
    finally:
        kafka.down(s)
        if before is None:
            os.environ.pop(PASSWORD_ENV, None)
        else:
            os.environ[PASSWORD_ENV] = before


def _broker_log(s: Settings) -> str:
    return (s.state_dir / "kafka" / "kafka.log").read_text(errors="replace")


@pytest.mark.kafka
def test_only_the_user_with_its_password_gets_in(sasl_stack, monkeypatch, tmp_path):
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    from mediafm.bus import Tail, producer

    s = sasl_stack
    topic = Topics.from_settings(s).models
    p = producer(s)
    p.send(topic, key=b"k", value=b"let in").get(timeout=30)
    p.close()
    tail = Tail(s, topic, from_beginning=True)
    assert [m.value for m in tail.to_end(timeout_s=30)] == [b"let in"]
    tail.close()
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
    check_login(s)
    for tool in (lambda: producer(wrong), lambda: Tail(wrong, topic), lambda: kafka.create_topics(wrong, [topic])):
        with pytest.raises(ConfigError, match="refused the login"):
            tool()
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", "topics"], env=settings_env(wrong), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("mediafm topics: error: Kafka at"), r.stderr[-2000:]
    env = {**settings_env(wrong), "MEDIAFM_WORKER_WEB_PORT": str(free_port())}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        code = subprocess.run([sys.executable, "-m", "mediafm.cli", "worker"], env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=180).returncode
    said = log.read_text()
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
    names = Topics.from_settings(s)
    from mediafm.bus import Tail, producer

    tid, n = f"sasl-{uuid.uuid4().hex[:6]}", 700  # two windows of the served plan (64/32 on the tiny model)
    rng = np.random.default_rng(0)
    fused = rng.normal(size=(n, OFFLINE.layout.fused_dim)).astype(np.float32)
    title = vec_to_bytes(rng.normal(size=OFFLINE.layout.title).astype(np.float32))
    tail = Tail(s, names.embeddings, from_beginning=True)
    w = start_worker(s, tmp_path / "worker.log")
    p = producer(s)
    shots = [FusedShot(title_id=tid, request_id="sasl", shot_index=i, start_s=float(i), end_s=i + 1.0, profile="offline",
                       fused=vec_to_bytes(fused[i]), present=[True, True, True], n_shots=n,
                       title_embedding=title).to_bytes() for i in range(n)]
    for record in shot_records(FusedShots, shots, tid, request_id="sasl"):
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
