"""The worker: a Faust app built from Settings, with every stage of the data path registered on it.

    titles, live.segments ─► segment ─► shots ─► encode ─► shots.encoded ─► fuse ─► shots.fused
        ─► contextualise (titles; live events via streams/live.py) ─► embeddings
    every stage ─► deadletter, with the reason

    app = create_app(Settings.load("mediafm.toml"))   # what `mediafm worker` runs
    app.main()

Each stage module has a `register(runtime)` that declares its tables and
agents on the app; the shared machinery (events that wait for their table
writes, dead letters, the MediaFM pass, publishing) is streams/runtime.py,
which imports no stage.
"""

from __future__ import annotations

import faust

from mediafm.config import Settings
from streams import contextualise, encode, fuse, segment
from streams.runtime import Runtime

STAGES = (segment, encode, fuse, contextualise)
"""The pipeline, in data-path order (contextualise also runs the live stage, streams/live.py)."""


def create_app(settings: Settings) -> faust.App:
    """A worker's Faust app for `settings`, every stage registered."""
    return create_runtime(settings).app


def create_runtime(settings: Settings) -> Runtime:
    rt = Runtime(settings)
    for stage in STAGES:
        stage.register(rt)
    return rt
