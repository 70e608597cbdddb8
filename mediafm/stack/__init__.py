"""The local stack: a real Kafka broker and a real Triton server, without Docker.

    mediafm stack up       start both (idempotent), create the pipeline topics
    mediafm stack status   what runs, where, and whether it answers
    mediafm stack down     stop both; data kept unless --wipe
"""

from __future__ import annotations

from mediafm.config import Settings
from mediafm.stack import kafka, triton
from mediafm.topics import Topics


def up(settings: Settings, *, echo=print) -> None:
    echo(kafka.up(settings))
    created = kafka.create_topics(settings, Topics.from_settings(settings).all())
    echo(f"topics: {len(Topics.from_settings(settings).all())} with {settings.partitions} partitions"
         + (f" (created {len(created)})" if created else " (all present)"))
    echo(triton.up(settings))


def down(settings: Settings, *, wipe: bool = False, echo=print) -> None:
    from mediafm.stack import process

    if wipe:  # Faust's table state must go with the broker's data, or recovery breaks: both, or neither
        process.wipeable(settings.state_dir / "faust")
        process.wipeable(kafka.data_dir(settings))
    echo(triton.down(settings))
    echo(kafka.down(settings, wipe=wipe))
    if wipe:
        process.wipe(settings.state_dir / "faust")
        echo("worker state wiped")


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
