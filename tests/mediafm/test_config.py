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
    # "no limit" said as inf (or nan) passed the > 0 check and broke every decode (math.ceil(inf * fps))
    ({"MEDIAFM_MAX_MEDIA_DURATION_S": "inf"}, "max_media_duration_s=inf must be a finite number"),
    ({"MEDIAFM_AUDIO_WINDOW_S": "nan"}, "audio_window_s=nan must be a finite number"),
    # ACLs grant '<prefix>.': a dotted prefix would share another pipeline's ('mediafm' and 'mediafm.eu')
    ({"MEDIAFM_TOPIC_PREFIX": "mediafm.eu"}, r"topic_prefix='mediafm.eu': use letters, digits, '_' and '-' \(no '.'"),
    ({"MEDIAFM_TOPIC_PREFIX": ""}, "topic_prefix='': use letters"),
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


def test_toml_numbers_that_are_not_whole_are_refused_for_whole_settings(tmp_path):
    """int(9092.9) and int(True) cut a TOML value to 9092 and 1 without a word; the environment refused "9092.9"."""
    cfg = tmp_path / "m.toml"
    for text, match in (("kafka_port = 9092.9", r"kafka_port=9092.9 is not a valid int: a whole number"),
                        ("partitions = true", r"partitions=True is not a valid int: a whole number")):
        cfg.write_text(text + "\n")
        with pytest.raises(ConfigError, match=match):
            Settings.load(cfg)
    cfg.write_text("partitions = 4.0\n")
    assert Settings.load(cfg).partitions == 4


def test_paths_expand_the_home_directory(tmp_path, monkeypatch):
    """`publish` staged media under a literal ./~/ (and the worker refused it) and `~/ca.pem` was "not a readable CA
    bundle": media_roots and the TLS files were taken as written, where state_dir and the others expanded `~`."""
    monkeypatch.setenv("HOME", str(tmp_path))
    s = Settings(media_roots=("~/media", "/srv/media"), kafka_security_protocol="SSL", kafka_ssl_cafile="~/ca.pem",
                 kafka_ssl_certfile="~/me.pem", kafka_ssl_keyfile="~/me.key")
    assert s.media_roots == (str(tmp_path / "media"), "/srv/media") == s.worker_media_roots
    assert (s.kafka_ssl_cafile, s.kafka_ssl_certfile, s.kafka_ssl_keyfile) == \
        (str(tmp_path / "ca.pem"), str(tmp_path / "me.pem"), str(tmp_path / "me.key"))


def test_the_local_broker_refuses_a_wildcard_bind_host_naming_the_fix(tmp_path):
    """bind_host=0.0.0.0 (what a worker in a container binds its web port to) made the local broker advertise
    0.0.0.0, which Kafka refuses at start: `stack up` failed with "kafka exited while starting"."""
    from mediafm.stack import kafka

    s = Settings(state_dir=tmp_path, bind_host="0.0.0.0")
    with pytest.raises(ConfigError, match=r"bind_host='0.0.0.0': the local broker tells its clients this address"):
        kafka._write_config(s, "java")
    assert not (tmp_path / "kafka").exists()


@pytest.mark.parametrize("host", ["::1", "[::1]", "::", ""])
def test_an_ipv6_literal_bind_host_is_refused_naming_what_works(host):
    """bind_host=::1 made every port read as taken (an IPv4 socket cannot bind an IPv6 address), and the
    addresses the stack writes (host:port, the Triton URL) cannot hold an IPv6 literal unbracketed."""
    with pytest.raises(ConfigError, match="give an IPv4 address or a host name"):
        Settings(bind_host=host)
    assert Settings(bind_host="localhost").kafka_bootstrap == "localhost:9092"


def test_every_setting_is_in_the_readmes_table():
    """A setting the README does not list is one a user cannot find (four were missing before 2026-12-08)."""
    import dataclasses
    import re

    from conftest import REPO

    text = (REPO / "README.md").read_text()
    table = text[text.index("\n## Settings\n"):]
    table = table[:table.index("\n## ", 1)]
    named = {k for row in table.splitlines() if row.startswith("| `") for k in re.findall(r"`([a-z0-9_]+)`",
                                                                                          row.split("|")[1])}
    missing = [f.name for f in dataclasses.fields(Settings) if f.name not in named]
    assert not missing, f"settings not in README's table: {missing}"
