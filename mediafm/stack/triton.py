"""A real Triton Inference Server, from the binary inside the nvidia-pytriton wheel.

The wheel ships `tritonserver` 2.51, its shared libraries and the python
backend with one stub per Python version. We assemble a backend directory
(the wheel's python backend + the stub for *our* Python), put our venv's
`bin` first on PATH (the stub's embedded interpreter finds its environment
through the `python3` on PATH and ignores PYTHONPATH) and start the server in
explicit model-control mode, so new model versions load without a restart.

The APIs that change the server (model load/unload and the repository index, shared memory, log and trace
settings, which can name files the server then writes) answer only requests carrying a key
(`CONTROL_HEADER`): `up` makes one, readable by its user alone, and `mediafm export` and the stack commands
send it. Inference, health, metadata and statistics stay open to loopback clients, as the workers need.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

from mediafm.config import Settings
from mediafm.errors import MissingToolError, StackError
from mediafm.stack.process import Service, require_free_ports, start_and_wait, wait_until

OPENMP = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
"""OpenMP in the served models' processes (libgomp, torch's CPU threads), also the Triton service of
docker-compose.yml. OMP_NUM_THREADS=1: one OpenMP thread per torch thread; the encoders run their forward
passes on threads of their own (parallel_passes), teams on top would oversubscribe the cores.
OMP_WAIT_POLICY=PASSIVE: a thread whose share of a parallel region is done sleeps until the next one instead
of spinning for it (libgomp's default spins first). MediaFM runs torch_threads=2 teams; on cores shared with
the broker and the workers their spinning took the CPU the others needed (README, Real-size work: two workers
x1.17 the shots/s). On a quiet machine spinning is faster (`bench/openmp.py`: the pass x1.40 the wall time
with PASSIVE): a Triton host that serves no one else can be started with OMP_WAIT_POLICY=ACTIVE, since an
operator's own values are kept."""


CONTROL_HEADER = "mediafm-control-key"
"""The header Triton checks on its restricted APIs (`--http-restricted-api`, `--grpc-restricted-protocol`)."""
RESTRICTED = "model-repository,shared-memory,logging,trace"
"""Triton's API groups that answer only with the control key: loading and unloading models (what a local
process could otherwise swap the served MediaFM with), registering shared memory, and the logging and trace
settings (both take a file path the server writes to). None of them is on the workers' path."""
CONTROL_KEY_ENV = "MEDIAFM_TRITON_CONTROL_KEY"
"""A key of the operator's own (docker-compose's Triton, a server started elsewhere); `up` uses it too."""


def _wheel() -> Path:
    try:
        import pytriton
    except ImportError:
        raise MissingToolError(
            "triton: the nvidia-pytriton wheel is not installed; `pip install -e '.[triton]'` "
            "(Linux x86_64), or run Triton's official image with docker-compose"
        ) from None
    return Path(pytriton.__file__).parent / "tritonserver"


def _dir(settings: Settings) -> Path:
    return settings.state_dir / "triton"


def service(settings: Settings) -> Service:
    d = _dir(settings)
    # The marker is our backend dir: only our instance has it on its command line.
    return Service("triton", d / "triton.pid", d / "triton.log", marker=str(d / "backends"))


def control_key_file(settings: Settings) -> Path:
    return _dir(settings) / "control.key"


def control_key(settings: Settings) -> str | None:
    """The key of the restricted APIs: $MEDIAFM_TRITON_CONTROL_KEY, else the one `up` wrote for this state dir
    (None when neither exists: a server started without restrictions answers anyway)."""
    if os.environ.get(CONTROL_KEY_ENV):
        return os.environ[CONTROL_KEY_ENV]
    try:
        return control_key_file(settings).read_text().strip() or None
    except FileNotFoundError:
        return None


def _new_control_key(settings: Settings) -> str:
    """$MEDIAFM_TRITON_CONTROL_KEY, or a fresh random key; written to control.key, mode 0600.

    What it keeps out: whatever reaches the loopback port without the key, such as a web page in the
    operator's browser (a page may POST to 127.0.0.1 without reading the answer, but may not add a header
    without a CORS preflight Triton does not grant) or a service made to fetch a URL. What it does not:
    another local user, since the key is on the server's command line (/proc/PID/cmdline), unless /proc
    hides other users' processes (`hidepid=2`)."""
    key, path = os.environ.get(CONTROL_KEY_ENV) or secrets.token_urlsafe(32), control_key_file(settings)
    # the key the server runs with, also when it came from the environment: a key an earlier `up` wrote there
    # would otherwise answer for this server in a shell without the variable (stack status, export: refused)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file left by an older stack keeps its mode through O_CREAT
        os.write(fd, key.encode())
    finally:
        os.close(fd)
    return key


def _backend_dir(settings: Settings) -> Path:
    """backends/python = the wheel's python backend + the stub for this Python."""
    wheel = _wheel()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise MissingToolError(f"triton: the wheel has no python backend stub for Python {ver} ({stub})")
    dst = _dir(settings) / "backends" / "python"
    dst.mkdir(parents=True, exist_ok=True)
    for src in [*(wheel / "backends" / "python").iterdir(), stub]:
        if src.name == "__pycache__":
            continue
        target = dst / src.name
        if not target.exists() or target.stat().st_mtime < src.stat().st_mtime:
            shutil.copy2(src, target)
    return dst.parent


def _env(settings: Settings) -> dict[str, str]:
    # MEDIAFM_* of these settings: the served models read their settings with Settings.load() in the
    # server's environment (the production encoders' clip_dir / wav2vec2_dir), so they see the same
    # ones that started the stack, whether they came from a TOML file, --config or the environment.
    env = {**os.environ, **settings.to_env()}
    env.pop("MEDIAFM_CONFIG", None)  # every setting is in the environment now
    wheel = _wheel()
    libs = [str(wheel.parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).strip(":")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # Models import `mediafm` (one definition of fusion and the model); make it importable
    # even when the package is not installed in editable mode.
    env["PYTHONPATH"] = ":".join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    for name, value in OPENMP.items():  # an operator's own value wins
        env.setdefault(name, value)
    return env


def _get(settings: Settings, path: str, *, timeout_s: float = 2.0) -> tuple[int, bytes]:
    url = f"http://{settings.triton_http_url}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def _post(settings: Settings, path: str, body: dict | None = None, *, timeout_s: float = 300.0) -> tuple[int, bytes]:
    url = f"http://{settings.triton_http_url}{path}"
    headers = {"Content-Type": "application/json"}
    key = control_key(settings)
    if key:
        headers[CONTROL_HEADER] = key
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def ready(settings: Settings) -> bool:
    """Server up and every loaded model ready (strict readiness)."""
    return _get(settings, "/v2/health/ready")[0] == 200


def live(settings: Settings) -> bool:
    """Server up, whatever its models are doing (a model may be loading)."""
    return _get(settings, "/v2/health/live")[0] == 200


def model_ready(settings: Settings, model: str, version: str = "") -> bool:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
    return _get(settings, path)[0] == 200


def repository_index(settings: Settings) -> list[dict]:
    status, body = _post(settings, "/v2/repository/index", {}, timeout_s=10)
    if status != 200:
        raise StackError(f"triton: repository index failed ({status}): {body[:300]!r}")
    return json.loads(body)


def ready_versions(settings: Settings) -> dict[str, list[str]]:
    """Model name -> versions Triton reports READY (from the repository index)."""
    out: dict[str, list[str]] = {}
    for m in repository_index(settings):
        if m.get("state") == "READY":
            out.setdefault(m["name"], []).append(str(m.get("version", "?")))
    return out


def load_model(settings: Settings, model: str) -> None:
    """Ask the running server to (re)load `model` from the repository.

    With explicit model control Triton loads the new version set first and
    keeps serving the old one until the new is ready; a failed load leaves the
    old version serving and is reported here.
    """
    status, body = _post(settings, f"/v2/repository/models/{model}/load")
    if status != 200:
        try:
            msg = json.loads(body).get("error", body.decode(errors="replace"))
        except (ValueError, AttributeError):
            msg = body.decode(errors="replace")
        # Triton appends the Python traceback; the first line names the cause, the log has the rest.
        first = msg.strip().splitlines()[0] if msg.strip() else f"HTTP {status}"
        raise StackError(f"triton: loading model {model!r} failed: {first} (see {service(settings).log_file})")


def unload_model(settings: Settings, model: str) -> None:
    """Ask the running server to stop serving `model` (requests for it then wait and retry)."""
    status, body = _post(settings, f"/v2/repository/models/{model}/unload")
    if status != 200:
        raise StackError(f"triton: unloading model {model!r} failed: HTTP {status} {body[:200]!r}")


def _has_version(model_dir: Path) -> bool:
    return model_dir.is_dir() and any(p.is_dir() and p.name.isdigit() for p in model_dir.iterdir())


def up(settings: Settings, *, tied: bool = False) -> str:
    """Start Triton unless ours already runs (then wait for it to be ready). `tied`: it gets SIGTERM when this
    process ends, however it ends (for a script's private server: process.tied_to_this_process)."""
    svc = service(settings)
    if svc.alive():
        try:
            wait_until(lambda: ready(settings), timeout_s=settings.start_timeout_s, what="/v2/health/ready", service=svc)
            return f"triton already running (pid {svc.pid()}) on http://{settings.triton_http_url}"
        except StackError:
            svc.stop()  # half-started or wedged: replace it
    if not settings.model_repository.is_dir():
        raise StackError(f"triton: model repository {settings.model_repository} does not exist; "
                         "set MEDIAFM_MODEL_REPOSITORY")
    binary = _wheel() / "bin" / "tritonserver"
    backends = _backend_dir(settings)
    require_free_ports("triton", settings.bind_host, {
        "triton_http_port": settings.triton_http_port, "triton_grpc_port": settings.triton_grpc_port,
        "triton_metrics_port": settings.triton_metrics_port})
    # A model with no version yet (mediafm before the first export) cannot load;
    # at startup that would stop the server, so it is left for `mediafm export`.
    models = [m for m in settings.triton_models if _has_version(settings.model_repository / m)]
    h, key = settings.bind_host, _new_control_key(settings)
    argv = [
        str(binary),
        f"--model-repository={settings.model_repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        f"--http-restricted-api={RESTRICTED}:{CONTROL_HEADER}={key}",
        f"--grpc-restricted-protocol={RESTRICTED}:{CONTROL_HEADER}={key}",
        *(f"--load-model={m}" for m in models),
        f"--http-address={h}", f"--http-port={settings.triton_http_port}",
        f"--grpc-address={h}", f"--grpc-port={settings.triton_grpc_port}",
        f"--metrics-address={h}", f"--metrics-port={settings.triton_metrics_port}",
        "--allow-gpu-metrics=false",
        "--strict-readiness=true",
        "--exit-timeout-secs=10",
        "--log-info=true",
    ]
    pid = svc.start(argv, env=_env(settings), tied=tied)
    start_and_wait(svc, lambda: ready(settings), timeout_s=settings.start_timeout_s, what="/v2/health/ready")
    return f"triton started (pid {pid}) on http://{settings.triton_http_url}, models {models}"


def down(settings: Settings) -> str:
    return "triton stopped" if service(settings).stop() else "triton was not running"
