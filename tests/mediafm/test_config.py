"""mediafm.config: defaults < TOML file < environment, validated."""

import socket

import pytest

from mediafm.config import PORT_FIELDS, Settings, private_ports
from mediafm.errors import ConfigError


def test_layers_later_wins(tmp_path, monkeypatch):
    cfg = tmp_path / "m.toml"
    cfg.write_text('kafka_port = 19999\ntriton_http_port = 18888\n')
    monkeypatch.setenv("MEDIAFM_TRITON_HTTP_PORT", "17777")
    s = Settings.load(cfg)
    assert (s.kafka_port, s.triton_http_port) == (19999, 17777)
    sources = {k: src for k, _, src in Settings.explain(cfg)}
    assert sources["kafka_port"] == str(cfg) and sources["triton_http_port"] == "$MEDIAFM_TRITON_HTTP_PORT"
    assert sources["partitions"] == "default"


def test_loopback_by_default():
    assert Settings().bind_host == "127.0.0.1"


@pytest.mark.parametrize("env, match", [
    ({"MEDIAFM_KAFKA_PORT": "abc"}, "kafka_port='abc' is not a valid int"),
    ({"MEDIAFM_KAFKA_PORT": "70000"}, "kafka_port=70000 is not a TCP port"),
    ({"MEDIAFM_TRITON_HTTP_PORT": "9092"}, "two services share a port"),
    ({"MEDIAFM_KAFKA_HEAP": "lots"}, "kafka_heap='lots' is not a JVM size"),
    ({"MEDIAFM_KAFKA_GROUP_JOIN_DELAY_MS": "-1"}, "kafka_group_join_delay_ms=-1 must be >= 0"),
    ({"MEDIAFM_LIVE_SHOT_DETECTOR": "fast"}, "live_shot_detector='fast'; choose one of transnetv2, "),
    ({"MEDIAFM_LIVE_DECODED_MB": "-1"}, "live_decoded_mb=-1 must be >= 0"),
    ({"MEDIAFM_TABLE_MEMORY_MB": "4"}, "table_memory_mb=4 must be >= 8"),
    ({"MEDIAFM_HELD_SHOTS_MB": "-1"}, "held_shots_mb=-1 must be >= 0"),
])
def test_bad_values_are_named(env, match, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=match):
        Settings.load()


def test_unknown_keys_in_file_are_rejected(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text("kafka_prot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['kafka_prot'\]"):
        Settings.load(cfg)


def test_private_ports_are_distinct_and_free(tmp_path):
    # Many draws: ports chosen one at a time once gave Triton's HTTP and gRPC the same one.
    for _ in range(200):
        ports = private_ports()
        assert set(ports) == set(PORT_FIELDS) and len(set(ports.values())) == len(PORT_FIELDS)
    Settings(state_dir=tmp_path, **ports)  # validates
    for port in ports.values():  # nothing listens there: each can be bound
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
