"""Shared fixtures. The real Kafka broker and Triton server start once per test
session (on free loopback ports, state in a temp dir) and stop at its end.

Layers run alone with markers:
    pytest -m "not kafka and not triton"     unit tests only, no services
    pytest -m triton                          Triton-backed tests
    pytest -m kafka                           broker-backed tests
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mediafm.config import Settings, free_ports, private_ports

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    """A session stopped by SIGTERM (a CI timeout, `kill`) tears its fixtures down as on Ctrl-C: the session's
    broker and Triton, and each test's workers, are stopped, not left running."""
    from mediafm.stack.process import interrupt_on_sigterm

    interrupt_on_sigterm()


_GIVEN: set[int] = set()


def _given(port: int) -> int:
    _GIVEN.add(port)
    return port


def free_port() -> int:
    """A loopback port nobody listens on and that this session has not handed out
    before (a worker given a port waits for it while it starts, and the kernel may
    offer that port again meanwhile)."""
    while True:
        (port,) = free_ports(1)
        if port not in _GIVEN:
            return _given(port)


def _stack_settings(tmp: Path) -> Settings:
    # A private copy of model_repository/ (configs and code, no exported versions),
    # so tests can export versions without touching the working tree.
    repo = tmp / "model_repository"
    if not repo.exists():
        shutil.copytree(REPO / "model_repository", repo,
                        ignore=lambda d, names: [n for n in names if n.isdigit() or n.startswith(".")
                                                 or n == "__pycache__"] if Path(d).name.startswith("mediafm") else
                        [n for n in names if n == "__pycache__"])
    return Settings(
        state_dir=tmp / "state", model_repository=repo,
        cache_dir=Path(os.environ.get("MEDIAFM_CACHE_DIR", Path.home() / ".cache" / "mediafm")),
        **{name: _given(port) for name, port in private_ports().items()},
        partitions=2, topic_prefix="test",
        kafka_group_join_delay_ms=0,  # workers start one at a time here; a 3 s wait at each first join adds up
        window_shots=64, window_stride=32,  # the tiny test model's max_shots; titles span several windows
        frames_per_shot=4, live_right_context=2,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process (a worker, the CLI) use `settings`."""
    env = {**os.environ, **settings.to_env()}
    env.pop("MEDIAFM_CONFIG", None)
    return env


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory) -> Settings:
    return _stack_settings(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def kafka_stack(stack_settings):
    """A real broker with the pipeline topics; stopped at the end of the session."""
    from mediafm.stack import kafka
    from mediafm.topics import Topics

    try:  # finally: a broker that started but failed later in setup is stopped too
        kafka.up(stack_settings)
        kafka.create_topics(stack_settings, Topics.from_settings(stack_settings).all())
        yield stack_settings
    finally:
        kafka.down(stack_settings)


@pytest.fixture(scope="session")
def triton_stack(stack_settings):
    """A real Triton server over model_repository/; stopped at the end of the session."""
    from mediafm.stack import triton

    try:
        triton.up(stack_settings)
        yield stack_settings
    finally:
        triton.down(stack_settings)


def newest_version(settings: Settings, model: str) -> str:
    """The version Triton answers requests without a version number with: the newest ready one."""
    from mediafm.stack import triton

    return max(triton.ready_versions(settings)[model], key=int)


def rest_of_output(settings: Settings, tail, sources: str | list[str], *, timeout_s: float = 180):
    """The records a pipeline will still publish to `tail`'s topic for what is now in `sources`.

    Waits until the pipeline's consumer group has committed all of each source topic, in data-path order
    (Faust commits an offset only after what its event produced is flushed), then reads `tail` to its end
    offsets: a condition, not a sleep.
    """
    from mediafm.bus import caught_up

    deadline = time.monotonic() + timeout_s
    for source in [sources] if isinstance(sources, str) else sources:
        while not caught_up(settings, settings.topic_prefix, source):
            assert time.monotonic() < deadline, f"the workers did not commit {source} within {timeout_s:.0f}s"
            time.sleep(0.5)
    yield from tail.to_end(timeout_s=timeout_s)


def take_output(settings: Settings, tail, worker: subprocess.Popen, log: Path, source: str | list[str], take, done, *,
                timeout_s: float) -> None:
    """Every record `tail` gets to `take`: until `done()` or the worker exits, then the rest of what it will
    publish for what is in `source` (rest_of_output); fails with the end of `log` if the worker died."""
    for rec in tail.poll(timeout_s=timeout_s, stop=lambda: done() or worker.poll() is not None):
        take(rec)
    for rec in rest_of_output(settings, tail, source, timeout_s=120):
        take(rec)
    assert worker.poll() is None, log.read_text()[-3000:]


def start_worker(settings: Settings, log: Path) -> subprocess.Popen:
    """A `mediafm worker` process with `settings`, its output appended to `log`."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mediafm.cli", "worker", "--loglevel", "info"],
                                env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    time.sleep(1.0)
    if proc.poll() is not None:
        pytest.fail(f"worker exited at start:\n{log.read_text()[-3000:]}")
    return proc


@contextlib.contextmanager
def broker_beside(base: Settings, state_dir: Path, password_env: str, password: str, **security):
    """Settings for a broker of its own (the local stack's, with the `security` settings, on free ports, state in
    `state_dir`) beside the session's Triton, its password in `password_env` while the block runs; the broker, if
    the block starts it, is stopped at its end."""
    import uuid

    from mediafm.config import replace
    from mediafm.stack import kafka

    s = replace(base, state_dir=state_dir, kafka_port=free_port(), kafka_controller_port=free_port(),
                kafka_sasl_password_env=password_env, topic_prefix=f"sec{uuid.uuid4().hex[:6]}", **security)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(password_env, password)
        try:
            yield s
        finally:
            kafka.down(s)


def round_trip(settings: Settings, topic: str, value: bytes) -> list[bytes]:
    """Send `value` to `topic` with the tools' producer, then read the topic from its beginning with their
    consumer: what came back."""
    from mediafm.bus import Tail, producer

    p = producer(settings)
    p.send(topic, key=b"k", value=value).get(timeout=30)
    p.close()
    tail = Tail(settings, topic, from_beginning=True)
    try:
        return [m.value for m in tail.to_end(timeout_s=30)]
    finally:
        tail.close()


def worker_that_stops(settings: Settings, log: Path) -> tuple[int, str]:
    """Run `mediafm worker` with settings it must refuse; its exit status and output (also in `log`)."""
    env = {**settings_env(settings), "MEDIAFM_WORKER_WEB_PORT": str(free_port())}
    with open(log, "wb") as out:
        code = subprocess.run([sys.executable, "-m", "mediafm.cli", "worker"], env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=180).returncode
    return code, log.read_text()


def self_signed(folder: Path, name: str, *, subject: str = "", password: str = "") -> tuple[str, str]:
    """A self-signed certificate `<name>.pem` and its key `<name>.key` (PEM, one day) made by openssl in `folder`;
    the subject in openssl's form (default /CN=<name>), the key encrypted with `password` if one is given."""
    folder.mkdir(parents=True, exist_ok=True)
    pem, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", subject or f"/CN={name}",
                    *(["-passout", f"pass:{password}"] if password else ["-nodes"]), "-keyout", str(key), "-out",
                    str(pem)], check=True, capture_output=True)
    return str(pem), str(key)


def publish_fused_title(settings: Settings, n: int, *, seed: int = 0) -> str:
    """One title of `n` random fused shots (the offline profile) on the fused topic; its title id."""
    import uuid

    import numpy as np

    from mediafm.bus import producer
    from mediafm.profiles import OFFLINE
    from mediafm.schema import FusedShot, FusedShots, shot_records, vec_to_bytes
    from mediafm.topics import Topics

    tid = f"fused-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(seed)
    fused = rng.normal(size=(n, OFFLINE.layout.fused_dim)).astype(np.float32)
    title = vec_to_bytes(rng.normal(size=OFFLINE.layout.title).astype(np.float32))
    p = producer(settings)
    shots = [FusedShot(title_id=tid, request_id=tid, shot_index=i, start_s=float(i), end_s=i + 1.0, profile="offline",
                       fused=vec_to_bytes(fused[i]), present=[True, True, True], n_shots=n,
                       title_embedding=title).to_bytes() for i in range(n)]
    for record in shot_records(FusedShots, shots, tid, request_id=tid):
        p.send(Topics.from_settings(settings).fused, key=tid.encode(), value=record)
    p.flush()
    p.close()
    return tid


def finals_of_a_fused_title(settings: Settings, n: int, log: Path, *, seed: int = 0,
                            worker: subprocess.Popen | None = None) -> dict[int, int]:
    """Publish one title of `n` random fused shots (the offline profile) to the fused topic, run a worker on it
    (or let `worker`, writing to `log`, take it; it is left running), and count the finals it publishes per shot
    index (read by take_output, so a dead worker fails the test)."""
    from mediafm.bus import Tail
    from mediafm.schema import ContextualEmbedding, decode
    from mediafm.topics import Topics

    names = Topics.from_settings(settings)
    tail = Tail(settings, names.embeddings, from_beginning=True)
    w = start_worker(settings, log) if worker is None else worker
    tid = publish_fused_title(settings, n, seed=seed)
    finals: dict[int, int] = {}

    def take(rec):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.final and m.title_id == tid:
            finals[m.shot_index] = finals.get(m.shot_index, 0) + 1

    try:
        take_output(settings, tail, w, log, names.fused, take, lambda: len(finals) >= n, timeout_s=300)
    finally:
        if worker is None:
            stop_worker(w)
        tail.close()
    return finals


def kinds_of_a_live_event(settings: Settings, tmp_path: Path) -> tuple[dict[int, list[bool]], int]:
    """Publish a 5-shot film as a live event in 1-s segments (`publish_live`), run a worker on it (its log in
    tmp_path/worker.log) until every shot has a final, and return what it published per shot, in order (False:
    provisional, True: final), and the film's shot count. Every stage of the live path runs: segments, shots,
    encoded, fused, embeddings, and the live tables' changelogs."""
    import uuid

    from mediafm.bus import Tail
    from mediafm.media.synthfilm import make_film
    from mediafm.publish import publish_live
    from mediafm.schema import ContextualEmbedding, decode
    from mediafm.topics import Topics

    film = make_film(tmp_path / "live.mp4", shots=[30, 36, 24, 40, 30], fps=24, size=(160, 96), first_source=1,
                     audio=["tone:330", "noise", "tone:660", "noise", "tone:220"])
    n, event = len(film.shot_frames), f"event-{uuid.uuid4().hex[:6]}"
    names = Topics.from_settings(settings)
    tail = Tail(settings, names.embeddings, from_beginning=True)
    log = tmp_path / "worker.log"
    w = start_worker(settings, log)
    got: dict[int, list[bool]] = {}

    def take(rec) -> None:
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.title_id == event:
            assert m.kind == "live" and (m.final or m.window_end == m.shot_index + 1), m
            got.setdefault(m.shot_index, []).append(m.final)

    try:
        segments = publish_live(settings, film.path, event_id=event, segment_s=1.0)
        assert len(segments) >= 5 and segments[-1].last
        take_output(settings, tail, w, log, [names.live_segments, names.shots, names.encoded, names.fused], take,
                    lambda: sum(kinds.count(True) for kinds in got.values()) >= n, timeout_s=300)
    finally:
        stop_worker(w)
        tail.close()
    return got, n


def consumer_group(admin, group: str) -> tuple[str, list[dict]]:
    """Consumer group `group`'s state and its members (member_id, group_instance_id, ...) as the broker has them
    now (DescribeGroups with `admin`, a KafkaAdminClient); asked again while the group's coordinator is not loaded
    yet (a broker just started)."""
    from kafka.errors import KafkaError

    while True:
        try:
            g = admin.describe_groups([group])[group]
            return g.get("group_state", ""), list(g.get("members", ()))
        except KafkaError as e:
            if not e.retriable:
                raise
            time.sleep(0.2)


def wait_for_group(admin, group: str, until, what: str, *, timeout_s: float = 120) -> tuple[str, list[dict]]:
    """consumer_group(admin, group) once `until(state, members)` holds (a condition read from the broker, not a
    sleep); fails naming `what` and the last state seen after `timeout_s`."""
    deadline, seen = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        seen = consumer_group(admin, group)
        if until(*seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"group {group}: {what} not seen within {timeout_s:.0f} s; last {seen}")


def stop_worker(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def worker(kafka_stack, triton_stack):
    """One `mediafm worker` process against the session's broker and Triton."""
    proc = start_worker(kafka_stack, kafka_stack.state_dir / "worker.log")
    yield proc
    stop_worker(proc)


@pytest.fixture(scope="session")
def offline_model(kafka_stack, triton_stack, tmp_path_factory):
    """A tiny MediaFM on the offline profile's dims, served as `mediafm_offline`."""
    from mediafm.profiles import OFFLINE
    from mediafm.synth import write_corpus
    from trainer.export import export
    from trainer.train import TrainConfig, train

    d = tmp_path_factory.mktemp("offline-model")
    data = write_corpus(d / "data", n_titles=6, layout=OFFLINE.layout, seed=0, shots=(20, 40))
    train(data, d / "run", TrainConfig(config="tiny", max_steps=2, batch_size=2, eval_every=2, ckpt_every=2,
                                       val_batches=1), quiet=True)
    version, vdir, loaded = export(d / "run", settings=kafka_stack)
    assert loaded and vdir.parent.name == "mediafm_offline"
    return str(version)


async def until(cond, what: str, timeout_s: float = 30.0) -> None:
    """Wait (in an event loop) until cond() holds; fail with `what` after timeout_s."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


@pytest.fixture
def worker_exits(monkeypatch) -> list[int]:
    """streams.runtime's os._exit made to record its code and raise SystemExit: the codes, in order."""
    import streams.runtime as runtime

    codes: list[int] = []

    def exit_(code):
        codes.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(runtime.os, "_exit", exit_)
    monkeypatch.setattr(runtime.logging, "shutdown", lambda: None)
    return codes


@pytest.fixture
def bench_script():
    """bench_script("floor") -> the module bench/floor.py, loaded from its file (the bench scripts are not a
    package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # importlib's recipe: a dataclass looks its module up there
        spec.loader.exec_module(mod)
        return mod

    return load
