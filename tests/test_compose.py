"""docker-compose.yml parses with a real compose parser and agrees with the native stack."""

import shutil
import subprocess

import pytest
import yaml
from conftest import REPO

from mediafm.config import Settings
from mediafm.schema import MAX_MESSAGE_BYTES


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose (Debian's, parses without an engine) is installed by scripts/bootstrap.sh"
    r = subprocess.run([exe, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


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


def test_triton_serves_our_repository_with_explicit_control(compose):
    t = compose["services"]["triton"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in t["volumes"]}
    assert mounts["/models"] == str(REPO / "model_repository")
    cmd = t["command"]
    assert "--model-repository=/models" in cmd and "--model-control-mode=explicit" in cmd
    # Like `stack up`: load at start the configured models that have a version in the repository
    # (committed ones; MediaFM versions arrive later through `mediafm export` and the load API).
    committed = subprocess.run(["git", "ls-files", "model_repository"], capture_output=True, text=True, cwd=REPO).stdout
    with_version = {m for m in Settings().triton_models if any(
        line.split("/")[1] == m and line.split("/")[2].isdigit() for line in committed.splitlines() if line.count("/") >= 3)}
    assert {"fusion", "video_efficientnet", "audio_aisfx", "text_minilm"} <= with_version
    assert sorted(c.split("=", 1)[1] for c in cmd if c.startswith("--load-model=")) == sorted(with_version)


def test_kafka_agrees_with_native_broker_settings(compose):
    env = compose["services"]["kafka"]["environment"]
    s = Settings()
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{s.kafka_version}"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert int(env["KAFKA_NUM_PARTITIONS"]) == s.partitions
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == MAX_MESSAGE_BYTES + 64 * 1024
    worker_env = compose["services"]["worker"]["environment"]
    assert int(worker_env["MEDIAFM_PARTITIONS"]) == s.partitions
    assert worker_env["MEDIAFM_KAFKA_SERVERS"] == "kafka:19092" and "DOCKER://kafka:19092" in env["KAFKA_ADVERTISED_LISTENERS"]
    # the worker's settings must load (the same validation as the native stack)
    Settings(**{k[len("MEDIAFM_"):].lower(): v for k, v in worker_env.items()
                if k not in ("MEDIAFM_PARTITIONS",)}, partitions=int(worker_env["MEDIAFM_PARTITIONS"]))


def test_prometheus_scrapes_workers_and_triton():
    cfg = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    targets = {t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    s = Settings()
    assert targets == {f"worker:{s.worker_web_port}", f"triton:{s.triton_metrics_port}"}
