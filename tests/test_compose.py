"""docker-compose.yml parses with a real compose parser and agrees with the native stack."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, self_signed

from mediafm.config import Settings
from mediafm.schema import MAX_MESSAGE_BYTES

CONTROL_KEY = "a-key-of-the-operator-s-own"


def _config(pwd: Path | None = REPO, control_key: str | None = CONTROL_KEY,
            exported: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`docker-compose config` as a shell in `pwd` runs it (None: a shell that sets no PWD), with the README's
    MEDIAFM_TRITON_CONTROL_KEY exported (None: not), and the variables `exported`."""
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose (Debian's, parses without an engine) is installed by scripts/bootstrap.sh"
    env = {k: v for k, v in os.environ.items() if k != "PWD" and not k.startswith("MEDIAFM_")}
    env.update(exported or {})
    if pwd is not None:
        env["PWD"] = str(pwd)
    if control_key is not None:
        env["MEDIAFM_TRITON_CONTROL_KEY"] = control_key
    return subprocess.run([exe, "-f", str(REPO / "docker-compose.yml"), "--project-directory", str(REPO), "config"],
                          capture_output=True, text=True, cwd=pwd or REPO, env=env, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict:
    r = _config()
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def _mounts(service: dict) -> dict[str, tuple[str, str]]:
    """container path -> (host path or volume name, mode)"""
    out = {}
    for v in service.get("volumes", []):
        src, target, *mode = v.split(":")
        out[target] = (src, mode[0] if mode else "rw")
    return out


def _worker_settings(env: dict, monkeypatch, tmp_path) -> Settings:
    """The settings `mediafm worker` loads from the container's environment (no TOML file, no host variables)."""
    for k in [k for k in os.environ if k.startswith("MEDIAFM_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.chdir(tmp_path)
    return Settings.load()


def _host_ports(service: dict) -> dict[int, tuple[str, int]]:
    """container port -> (host ip, host port)"""
    out = {}
    for p in service.get("ports", []):
        host, rest = p.rsplit(":", 1)[0], p.rsplit(":", 1)[1]
        ip, hport = host.rsplit(":", 1)
        out[int(rest.split("/")[0])] = (ip, int(hport))
    return out


def test_services_present(compose):
    assert {"kafka", "triton", "worker", "prometheus", "topics"} <= set(compose["services"])


def test_ports_match_native_defaults_and_stay_on_loopback(compose):
    s = Settings()
    svc = compose["services"]
    assert _host_ports(svc["kafka"]) == {9092: (s.bind_host, s.kafka_port)}
    assert _host_ports(svc["triton"]) == {8000: (s.bind_host, s.triton_http_port), 8001: (s.bind_host, s.triton_grpc_port),
                                          8002: (s.bind_host, s.triton_metrics_port)}
    assert _host_ports(svc["worker"]) == {6066: (s.bind_host, s.worker_web_port)}
    for name, service in svc.items():
        for ip, _ in _host_ports(service).values():
            assert ip == "127.0.0.1", f"{name} publishes a port beyond loopback"


def _triton_argv(compose: dict, models: Path) -> list[str]:
    """The arguments Triton's container starts tritonserver with, its command run by a real shell against the
    model repository `models` (for /models), with a tritonserver that prints them."""
    cmd = compose["services"]["triton"]["command"]
    assert cmd[:2] == ["/bin/sh", "-c"]
    script = cmd[2].replace("$$", "$").replace("/models", str(models))  # `config` prints compose's $$ escapes
    fake = models.parent / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "tritonserver").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (fake / "tritonserver").chmod(0o755)
    env = {k: str(v).replace("$$", "$") for k, v in compose["services"]["triton"].get("environment", {}).items()}
    r = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30,
                       env={**env, "PATH": f"{fake}:/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_triton_serves_our_repository_with_explicit_control(compose, tmp_path):
    t = compose["services"]["triton"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in t["volumes"]}
    assert mounts["/models"] == str(REPO / "model_repository")
    # Like `stack up`: load at start the configured models that have a version in the repository: the committed
    # ones, and MediaFM's once `mediafm export` made one (before 2026-12-08 never, so a Triton restarted after an
    # export served no MediaFM until the next export)
    committed = subprocess.run(["git", "ls-files", "model_repository"], capture_output=True, text=True, cwd=REPO).stdout
    repo = tmp_path / "models"
    for line in committed.splitlines():
        (repo / Path(line).relative_to("model_repository")).parent.mkdir(parents=True, exist_ok=True)
    with_version = {m for m in Settings().triton_models if any(p.name.isdigit() for p in (repo / m).glob("*"))}
    assert {"fusion", "video_efficientnet", "audio_aisfx", "text_minilm"} == with_version, "no MediaFM is committed"
    argv = _triton_argv(compose, repo)
    assert f"--model-repository={repo}" in argv and "--model-control-mode=explicit" in argv
    assert sorted(a.split("=", 1)[1] for a in argv if a.startswith("--load-model=")) == sorted(with_version)
    (repo / "mediafm_offline" / "3").mkdir(parents=True)  # what `mediafm export --profile offline` writes
    (repo / "mediafm" / "config.pbtxt").parent.mkdir(exist_ok=True)
    argv = _triton_argv(compose, repo)
    assert sorted(a.split("=", 1)[1] for a in argv if a.startswith("--load-model=")) == sorted(
        with_version | {"mediafm_offline"})


def test_the_services_that_stop_are_started_again(compose):
    """A worker stops itself with exit 75 where only a restart helps (README, "Faults"): before 2026-12-08 only the
    one-shot topics service had a restart policy, and under compose the pipeline stayed stopped."""
    svc = compose["services"]
    assert svc["worker"].get("restart") in ("on-failure", "unless-stopped", "always")
    assert svc["kafka"].get("restart") == svc["triton"].get("restart") == "unless-stopped"


def test_triton_s_control_apis_answer_only_with_the_operator_s_key_as_under_stack_up(compose, tmp_path):
    from mediafm.stack.triton import CONTROL_HEADER, RESTRICTED

    (tmp_path / "models").mkdir()
    argv = _triton_argv(compose, tmp_path / "models")
    want = f"{RESTRICTED}:{CONTROL_HEADER}={CONTROL_KEY}"
    assert f"--http-restricted-api={want}" in argv and f"--grpc-restricted-protocol={want}" in argv
    # a key with what a shell reads as syntax reaches Triton as it is (before 2026-12-08's quoting, a ';' in it ended
    # the command there and started Triton with no restriction on its gRPC control API)
    odd = "k y;e$x`t'\"z"
    r = _config(control_key=odd)
    assert r.returncode == 0, r.stderr
    argv = _triton_argv(yaml.safe_load(r.stdout), tmp_path / "models")
    want = f"{RESTRICTED}:{CONTROL_HEADER}={odd}"
    assert f"--http-restricted-api={want}" in argv and f"--grpc-restricted-protocol={want}" in argv, argv
    r = _config(control_key=None)  # no key: compose stops before starting anything, saying what to set
    assert r.returncode != 0 and "export MEDIAFM_TRITON_CONTROL_KEY" in (r.stderr + r.stdout)


def test_triton_runs_its_models_with_the_native_stack_s_openmp_settings(compose):
    from mediafm.stack.triton import OPENMP

    env = compose["services"]["triton"].get("environment", {})
    assert {k: str(env.get(k)) for k in OPENMP} == OPENMP


def test_kafka_agrees_with_native_broker_settings(compose):
    env = compose["services"]["kafka"]["environment"]
    s = Settings()
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{s.kafka_version}"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert int(env["KAFKA_NUM_PARTITIONS"]) == s.partitions
    assert int(env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"]) == s.kafka_group_join_delay_ms  # scaled workers share
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == MAX_MESSAGE_BYTES + 64 * 1024
    worker_env = compose["services"]["worker"]["environment"]
    assert int(worker_env["MEDIAFM_PARTITIONS"]) == s.partitions
    # the broker's log in its volume: apache/kafka's configureDefaults puts it in /tmp/kraft-combined-logs when
    # KAFKA_LOG_DIRS is unset, so `docker compose down && up` lost every topic and kept the workers' tables
    data = [v.split(":")[1] for v in compose["services"]["kafka"]["volumes"] if v.startswith("kafka-data:")]
    assert data == [env["KAFKA_LOG_DIRS"]], (data, env.get("KAFKA_LOG_DIRS"))
    assert worker_env["MEDIAFM_KAFKA_SERVERS"] == "kafka:19092" and "DOCKER://kafka:19092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_worker_settings_load_from_its_environment(compose, monkeypatch, tmp_path):
    # the worker's settings must load (the same loader and validation as the native stack)
    w = _worker_settings(compose["services"]["worker"]["environment"], monkeypatch, tmp_path)
    assert (w.kafka_bootstrap, w.triton_http_url, w.partitions) == ("kafka:19092", "triton:8000", Settings().partitions)
    assert w.worker_media_roots == (str(REPO / "media"),)


def test_the_workers_take_a_managed_broker_and_its_login_from_the_host(compose, monkeypatch, tmp_path):
    """By default the compose broker, PLAINTEXT; with the host's MEDIAFM_KAFKA_* exported (README), the workers
    and the topic tool log in to the broker named there, the password passed through from the host's variable."""
    from mediafm.kafka_security import client_security

    for name in ("worker", "topics"):
        env = compose["services"][name]["environment"]
        assert env.get("MEDIAFM_KAFKA_PASSWORD") is None  # not set on the host: none in the container either
        w = _worker_settings({k: v for k, v in env.items() if v is not None}, monkeypatch, tmp_path)
        assert (w.kafka_bootstrap, client_security(w)) == ("kafka:19092", {})
    host = {"MEDIAFM_KAFKA_SERVERS": "broker-1.example.net:9096", "MEDIAFM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "MEDIAFM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "MEDIAFM_KAFKA_SASL_USERNAME": "pipeline",
            "MEDIAFM_KAFKA_PASSWORD": "the-host-s-secret"}
    r = _config(exported=host)
    assert r.returncode == 0, r.stderr
    assert "the-host-s-secret" not in (REPO / "docker-compose.yml").read_text()
    for name in ("worker", "topics"):
        env = yaml.safe_load(r.stdout)["services"][name]["environment"]
        w = _worker_settings(env, monkeypatch, tmp_path)
        assert w.kafka_bootstrap == "broker-1.example.net:9096"
        sec = client_security(w)
        assert (sec["security_protocol"], sec["sasl_mechanism"], sec["sasl_plain_username"],
                sec["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-256", "pipeline", "the-host-s-secret")
        assert sec["ssl_context"].check_hostname  # the system's CAs: a managed broker's public certificate


def test_the_workers_see_the_hosts_kafka_tls_files_at_the_paths_it_names(compose, monkeypatch, tmp_path):
    """Mutual TLS from compose: the host's MEDIAFM_KAFKA_TLS_DIR is mounted read-only at the same path in the
    workers and the topic tool, so the CA, the client certificate and its key are found by the paths the host's
    MEDIAFM_KAFKA_SSL_* name, and the key's password is passed through, never written in the file. By default
    an empty directory of the repository's is mounted and no file is named."""

    from mediafm.kafka_security import client_security

    for name in ("worker", "topics"):
        mounts = _mounts(compose["services"][name])
        assert mounts["/run/mediafm/kafka-tls"] == (str(REPO / "docker" / "kafka-tls"), "ro"), mounts
    tls = tmp_path / "kafka-tls"
    pem, key = (Path(f) for f in self_signed(tls, "client", subject="/CN=pipeline", password="the-key-s-secret"))
    host = {"MEDIAFM_KAFKA_SERVERS": "broker-1.example.net:9094", "MEDIAFM_KAFKA_SECURITY_PROTOCOL": "SSL",
            "MEDIAFM_KAFKA_TLS_DIR": str(tls), "MEDIAFM_KAFKA_SSL_CAFILE": str(pem),
            "MEDIAFM_KAFKA_SSL_CERTFILE": str(pem), "MEDIAFM_KAFKA_SSL_KEYFILE": str(key),
            "MEDIAFM_KAFKA_KEY_PASSWORD": "the-key-s-secret"}
    r = _config(exported=host)
    assert r.returncode == 0, r.stderr
    assert "the-key-s-secret" not in (REPO / "docker-compose.yml").read_text()
    for name in ("worker", "topics"):
        service = yaml.safe_load(r.stdout)["services"][name]
        assert _mounts(service)[str(tls)] == (str(tls), "ro")
        w = _worker_settings(service["environment"], monkeypatch, tmp_path)
        assert all(Path(f).parent == tls for f in (w.kafka_ssl_cafile, w.kafka_ssl_certfile, w.kafka_ssl_keyfile))
        assert client_security(w)["ssl_context"].verify_mode.name == "CERT_REQUIRED"  # the key opened


def test_worker_reads_media_where_a_host_publish_stages_it(monkeypatch, tmp_path):
    """Title requests carry host paths: the worker must see the host's media directory at the same path,
    read-only, and have it as its only media root; a host `publish` with the README's MEDIAFM_MEDIA_ROOTS
    stages into it, so the container's own checks (check_uri) accept what the host published."""
    from mediafm.media.decode import check_uri, under_roots
    from mediafm.publish import stage_media

    project = tmp_path / "checkout"  # where an engineer runs `docker compose up` (PWD)
    project.mkdir()
    r = _config(project)
    assert r.returncode == 0, r.stderr
    worker = yaml.safe_load(r.stdout)["services"]["worker"]
    mounts = _mounts(worker)
    media = str(project / "media")
    assert mounts[media] == (media, "ro"), mounts  # same absolute path inside as outside, read-only
    assert mounts["/state"][0] == "worker-state"  # tables and logs stay in the named volume
    w = _worker_settings(worker["environment"], monkeypatch, tmp_path)
    assert w.worker_media_roots == (media,)
    assert all(under_roots(root, [media]) for root in w.worker_media_roots), "every media root is mounted"

    # the host side, as the README says: MEDIAFM_MEDIA_ROOTS=$PWD/media, then `mediafm publish title film.mp4`
    (project / "media").mkdir()
    film = tmp_path / "elsewhere" / "film.mp4"
    film.parent.mkdir()
    film.write_bytes(b"\x00" * 1024)
    host = Settings(media_roots=(media,), state_dir=tmp_path / "host-state")
    staged = stage_media(host, film, "tt01")
    assert under_roots(staged, [media]) and staged.read_bytes() == film.read_bytes()
    # the path in the TitleRequest is the same path inside the container: the worker's checks accept it
    assert check_uri(str(staged), w) == staged
    # and nothing outside the mount is a media root of the worker
    with pytest.raises(Exception, match="outside the allowed media_roots"):
        check_uri(str(film), w)


def test_compose_refuses_to_guess_the_media_path_without_pwd():
    r = _config(None)
    assert r.returncode != 0 and "run docker compose from the repository root" in (r.stderr + r.stdout)


def test_prometheus_scrapes_workers_and_triton():
    cfg = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    targets = {t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    s = Settings()
    assert targets == {f"worker:{s.worker_web_port}", f"triton:{s.triton_metrics_port}"}
