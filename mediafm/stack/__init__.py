"""The local stack: a real Kafka broker and a real Triton server, without Docker.

    mediafm stack up       start both (idempotent), create the pipeline topics
    mediafm stack status   what runs, where, and whether it answers
    mediafm stack down     stop both; data kept unless --wipe
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from mediafm.config import Settings
from mediafm.stack import kafka, triton
from mediafm.topics import Topics

LOOPBACK = {"127.0.0.1", "localhost"}


def check_points_here(settings: Settings) -> None:
    """ConfigError when kafka_servers or triton_url name other servers than the ones `up` starts: the stack would
    check readiness there, and make its topics and grant its ACLs on another broker (or wait 90 s for one that
    does not answer, then stop the broker it started, whose log looked healthy)."""
    from mediafm.errors import ConfigError

    def here(address: str, port: int) -> bool:
        host, _, p = address.strip().rpartition(":")
        return p == str(port) and (host == settings.bind_host or {host, settings.bind_host} <= LOOPBACK)

    for name, given, port in (("kafka_servers", settings.kafka_servers, settings.kafka_port),
                              ("triton_url", settings.triton_url, settings.triton_http_port)):
        if given and not any(here(a, port) for a in given.split(",")):
            raise ConfigError(f"{name}={given!r} (MEDIAFM_{name.upper()}) names another server than the one `mediafm "
                              f"stack up` starts on {settings.bind_host}:{port}: unset it to use the local stack (a "
                              "server of your own needs no `stack up`)")


@contextmanager
def locked(settings: Settings, *, timeout_s: float = 600.0, echo=print):
    """One `up` or `down` at a time per state dir (an flock on <state_dir>/stack.lock, let go when the process
    ends, however it ends). Two at once (`mediafm demo` beside `stack up` in a shell) both formatted the broker's
    log and started a broker, the second's pid file over the first's: the first broker ran on untracked, and the
    next `up` found its port taken."""
    import fcntl

    from mediafm.errors import StackError

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.state_dir / "stack.lock", "a") as f:
        deadline, said = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StackError(f"another `mediafm stack up/down` has held {settings.state_dir} for "
                                     f"{timeout_s:g} s; let it finish (or stop it), then run this again") from None
                if not said:
                    echo(f"waiting for another `mediafm stack up/down` on {settings.state_dir} to finish")
                    said = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def up(settings: Settings, *, echo=print) -> None:
    check_points_here(settings)
    with locked(settings, echo=echo):
        echo(kafka.up(settings))
        created = kafka.create_topics(settings, Topics.from_settings(settings).all())
        echo(f"topics: {len(Topics.from_settings(settings).all())} with {settings.partitions} partitions"
             + (f" (created {len(created)})" if created else " (all present)"))
        echo(triton.up(settings))


def down(settings: Settings, *, wipe: bool = False, echo=print) -> None:
    from mediafm.stack import process

    if wipe:  # a link where either should be is refused before anything is stopped or deleted
        process.wipeable(settings.state_dir / "faust")
        process.wipeable(kafka.data_dir(settings))
    def tables() -> None:  # first: tables outliving the log break recovery; a log outliving them rebuilds them
        process.wipe(settings.state_dir / "faust")
        echo("worker state wiped")

    with locked(settings, echo=echo):
        echo(triton.down(settings))
        echo(kafka.down(settings, wipe=wipe, before_wipe=tables))


def status(settings: Settings) -> list[tuple[str, str, str]]:
    """(service, state, detail) rows."""
    rows = []
    k = kafka.service(settings)
    kp = k.pid()
    rows.append(("kafka", "ready" if kp and kafka.ready(settings) else ("starting" if kp else "stopped"),
                 f"pid {kp} {settings.kafka_bootstrap}" if kp else f"log {k.log_file}"))
    t = triton.service(settings)
    tp = t.pid()
    if tp and triton.ready(settings):
        models = [f"{name}:{v}" for name, vs in triton.ready_versions(settings).items() for v in vs]
        rows.append(("triton", "ready", f"pid {tp} http://{settings.triton_http_url} models {models}"))
    else:
        rows.append(("triton", "starting" if tp else "stopped", f"pid {tp}" if tp else f"log {t.log_file}"))
    return rows
