"""The worker app is built from the Settings it is given, and the streams package has no import circle."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mediafm.config import Settings, replace
from mediafm.errors import ConfigError
from streams.app import STAGES, create_runtime


def test_app_is_built_from_the_settings_it_is_given(tmp_path):
    s = Settings(state_dir=tmp_path / "state", topic_prefix="cfgtest", partitions=3, worker_web_port=16066,
                 kafka_servers="10.9.8.7:1234", triton_url="127.0.0.1:18000")
    rt = create_runtime(s)
    assert rt.app.conf.id == "cfgtest"  # consumer group and changelog topics
    assert str(rt.app.conf.broker[0]) == "kafka://10.9.8.7:1234"
    assert rt.app.conf.web_port == 16066 and rt.app.conf.topic_partitions == 3
    assert str(rt.app.conf.datadir) == str(tmp_path / "state" / "faust" / "cfgtest" / "worker-16066")
    assert rt.topics.fused.get_topic_name() == "cfgtest.shots.fused"
    assert rt.triton.url == "127.0.0.1:18000"
    assert {a.split(".")[-1] for a in rt.app.agents} == {"segment_titles", "segment_live", "encode", "fuse_shots",
                                                         "contextualise"}
    assert set(rt.app.tables) == {"segment-live", "contextualise-titles", "live-shots",
                                  "live-events"}
    assert [m.__name__ for m in STAGES] == ["streams.segment", "streams.encode", "streams.fuse",
                                            "streams.contextualise"]


def test_two_apps_in_one_process_do_not_share_state(tmp_path):
    a = create_runtime(Settings(state_dir=tmp_path / "a", topic_prefix="a"))
    b = create_runtime(Settings(state_dir=tmp_path / "b", topic_prefix="b"))
    assert a.app is not b.app and a.topics.titles.get_topic_name() == "a.titles"
    assert b.topics.titles.get_topic_name() == "b.titles"
    assert a.app.tables["contextualise-titles"] is not b.app.tables["contextualise-titles"]


def test_workers_of_one_machine_never_share_table_state(tmp_path):
    s = Settings(state_dir=tmp_path, topic_prefix="p", worker_web_port=16067)
    a = create_runtime(s)
    b = create_runtime(replace(s, worker_web_port=16068))
    assert a.app.conf.datadir != b.app.conf.datadir
    with pytest.raises(ConfigError, match=r"another worker of pipeline 'p' on this machine holds .*worker-16067.*"
                                          r"give each worker its own --web-port"):
        create_runtime(s)


def test_static_group_membership_is_per_worker_and_off_when_unset(tmp_path):
    import socket

    s = Settings(state_dir=tmp_path, topic_prefix="m", worker_web_port=16069)
    assert create_runtime(replace(s, worker_instance_id="")).app.conf.consumer_group_instance_id is None
    assert create_runtime(replace(s, worker_instance_id="auto", worker_web_port=16070)).app.conf \
        .consumer_group_instance_id == f"{socket.gethostname()}-16070"  # the port locks the state dir: one a machine
    assert create_runtime(replace(s, worker_instance_id="ingest-7", worker_web_port=16071)).app.conf \
        .consumer_group_instance_id == "ingest-7"


@pytest.mark.parametrize("module", ["streams.segment", "streams.encode", "streams.fuse", "streams.contextualise",
                                    "streams.live", "streams.runtime", "streams.app"])
def test_each_stage_imports_first_without_building_an_app(module, tmp_path):
    # importing must read no settings and create nothing (state dirs, apps): settings are handed in
    code = f"import {module}, sys; assert 'streams.app' not in sys.modules or {module!r} == 'streams.app'"
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "XDG_STATE_HOME": str(tmp_path / "xdg")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert not (tmp_path / "xdg").exists(), "importing created the state directory"
