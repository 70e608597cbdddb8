"""The Faust app: settings -> tables -> App -> topics -> dead letters -> /metrics.

Every agent module (one per pipeline stage) imports `app` and `topics` from
here, and the two contextualising stages (titles, live) share `run_windows`,
the MediaFM pass on Triton. Topics carry raw bytes: each agent decodes with mediafm.schema inside a
per-message try, so a malformed message reaches the dead-letter topic with its
reason instead of being dropped by a serializer before any agent sees it.
Agents that keep state iterate `events(stream)`: an event is acknowledged only
once its table writes are in their changelogs.
"""

from __future__ import annotations

import asyncio
import logging
import os

import faust
import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mediafm.config import Settings
from mediafm.inference import Triton
from mediafm.schema import MAX_MESSAGE_BYTES, DeadLetter, FusedShot, bytes_to_vec
from mediafm.serving import model_name
from mediafm.topics import Topics
from streams import metrics

log = logging.getLogger(__name__)

settings = Settings.load()
names = Topics.from_settings(settings)
# Tables' RocksDB stores, one directory per app: faust names the files after the tables only, so two
# pipelines (topic prefixes) sharing a directory would read each other's changelog offsets.
datadir = settings.state_dir / "faust" / settings.topic_prefix
datadir.mkdir(parents=True, exist_ok=True)


class Table(faust.Table):
    """faust.Table whose changelog writes can be waited for: `changelog_sent()`, `events()`."""

    def send_changelog(self, *args, **kwargs):
        fut = super().send_changelog(*args, **kwargs)
        _unsent.add(fut)
        fut.add_done_callback(_unsent.discard)
        return fut


_unsent: set[asyncio.Future] = set()  # table writes handed to the producer, not yet acknowledged by the broker


async def changelog_sent() -> None:
    """Wait until every table write made so far is in its changelog topic.

    A write the producer could not deliver (after its own retries) stops the worker at once, without
    committing: the events since the last commit are then redelivered to whichever worker takes over,
    which is what kill -9 does too, whereas going on would acknowledge an event whose state is lost.
    """
    while _unsent:
        try:
            await asyncio.gather(*list(_unsent))
        except Exception as e:
            log.critical("a table write did not reach its changelog (%s: %s); stopping this worker now so "
                         "that the events it came from are processed again", type(e).__name__, e)
            logging.shutdown()
            os._exit(75)  # EX_TEMPFAIL: a supervisor (compose `restart:`) starts it again


async def events(stream):
    """`stream.events()`, each event acknowledged only once its table writes are in their changelogs.

    Faust acknowledges an event when the agent asks for the next one and later commits acknowledged
    offsets after `producer.flush()`. In faust-streaming 0.15 that flush stops waiting on the send buffer
    after 0.1 s without progress (ProducerBuffer.flush_atmost), so under load an offset could be committed
    while its event's table writes were still buffered, and a crash then would lose them with nothing to
    redeliver the event (read from Faust's code; not seen in a test run). It also says when a partition's offsets jump within one consumer generation: messages
    that never reached the agent (the loss `_hold_streams_until_seek` closes), logged and counted.
    """
    last: dict = {}  # TP -> (consumer generation, offset) of the last event from it
    async for event in stream.events():
        msg = event.message
        gen, prev = last.get(msg.tp, (None, None))
        if gen == msg.generation_id and msg.offset > prev + 1:
            metrics.offsets_skipped.labels(msg.topic).inc(msg.offset - prev - 1)
            log.error("offsets %d..%d of %s[%d] never reached this agent: those messages were not processed "
                      "(expected only if a transactional producer writes to this topic)",
                      prev + 1, msg.offset - 1, msg.topic, msg.partition)
        last[msg.tp] = (msg.generation_id, msg.offset)
        yield event
        await changelog_sent()


app = faust.App(
    # The app id names the consumer group and the changelog topics: one pipeline per topic prefix.
    settings.topic_prefix,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store="rocksdb://",
    datadir=str(datadir),
    # Pipeline topics are created by `mediafm stack up` with this same count
    # (faust refuses to start when the two disagree: PartitionsMismatch);
    # faust declares only its own internal topics (changelogs, leader).
    topic_partitions=settings.partitions,
    # A dead worker's partitions move to the others after 15 s without heartbeats
    # (kill -9, a lost machine), not after faust's default minute.
    broker_session_timeout=15.0,
    broker_heartbeat_interval=3.0,
    producer_max_request_size=MAX_MESSAGE_BYTES + 64 * 1024,
    consumer_max_fetch_size=MAX_MESSAGE_BYTES + 64 * 1024,
    web_bind=settings.bind_host,
    web_host=settings.bind_host,
    web_port=settings.worker_web_port,
    # keys are title ids, so one title's shots stay ordered in one partition
    key_serializer="raw",
    value_serializer="raw",
    Table=Table,  # app.Table(...) makes the class above
)


@app.on_rebalance_complete.connect
async def _hold_streams_until_seek(sender, **kwargs) -> None:
    """Fetch nothing for the agents until Faust has sought their partitions to the committed offsets.

    After a rebalance Faust (0.15, Recovery.on_recovery_completed) resumes the source partitions, then
    seeks them to the committed offsets, then resumes flow, which empties the agents' queues. Whatever
    was fetched in between was thrown away with the queues while the fetch position had moved past it,
    and the consumer took the hole for acknowledged offsets: a restarted worker skipped a few messages
    of each partition (tests/test_recovery.py saw titles wait for ever for shots it never delivered).
    Stopping the consumer's flow here (Faust resumes it right after the seek) leaves nothing to lose.
    """
    app.consumer.stop_flow()


def topic(name: str) -> faust.TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes, partitions=settings.partitions)


class topics:  # noqa: N801 - a namespace, read as `topics.fused`
    titles = topic(names.titles)
    live_segments = topic(names.live_segments)
    shots = topic(names.shots)
    encoded = topic(names.encoded)
    fused = topic(names.fused)
    embeddings = topic(names.embeddings)
    deadletter = topic(names.deadletter)


triton = Triton(settings.triton_http_url, on_latency=lambda m, s: metrics.triton_seconds.labels(m).observe(s))


async def dead_letter(stage: str, event: faust.EventT, reason: str) -> None:
    """Send the raw message and the reason to the dead-letter topic. Never raises on the reason."""
    msg = event.message
    log.warning("dead letter from %s (%s[%d]@%d): %s", stage, msg.topic, msg.partition, msg.offset, reason)
    metrics.dead_letters.labels(stage).inc()
    value = msg.value if isinstance(msg.value, bytes) else bytes(str(msg.value), "utf-8")
    letter = DeadLetter(stage=stage, topic=msg.topic, partition=msg.partition, offset=msg.offset,
                        key=msg.key if isinstance(msg.key, bytes | None) else str(msg.key).encode(),
                        reason=reason[:2000], payload=value[: 1024 * 1024])
    await topics.deadletter.send(key=letter.key, value=letter.to_bytes())


async def run_windows(fused: np.ndarray, title: np.ndarray, windows: list, profile: str) -> tuple[np.ndarray, str]:
    """MediaFM on Triton over windows [(start, end)] of one title; (hidden (W, T, H), model version)."""
    meta: dict = {}
    T = max(w.end - w.start for w in windows)
    shots = np.zeros((len(windows), T, fused.shape[1]), np.float32)
    for k, w in enumerate(windows):
        shots[k, : w.end - w.start] = fused[w.start : w.end]
    out = await triton.infer(model_name(profile), {
        "SHOTS": shots,  # (W, T, fused_dim), zero padding past each window's LENGTH
        "TITLE": np.repeat(title[None], len(windows), axis=0),
        "LENGTH": np.array([[w.end - w.start] for w in windows], np.int64),
    }, ["HIDDEN"], meta=meta)
    return out["HIDDEN"], meta.get("model_version", "")


def title_vector(shots: list[FusedShot], dim: int) -> np.ndarray:
    src = next((s.title_embedding for s in shots if s.title_embedding is not None), None)
    return bytes_to_vec(src, dim) if src else np.zeros(dim, np.float32)


@app.page("/metrics")
async def prometheus_metrics(web, request):
    # aiohttp refuses a charset inside content_type; pass the full header instead
    return web.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@app.timer(interval=5.0)
async def report_consumer_lag():
    """Per assigned partition: end offset - committed offset, from faust's monitor."""
    mon = app.monitor
    committed = mon.tp_committed_offsets or {}
    for tp, end in (mon.tp_end_offsets or {}).items():
        if committed.get(tp) is not None:
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - committed[tp]))


@app.on_after_configured.connect
def _configure(app, **kwargs):  # pragma: no cover - faust signal
    log.info("mediafm worker: broker %s, triton %s, %d partitions",
             settings.kafka_bootstrap, settings.triton_http_url, settings.partitions)


# Agents register themselves on import; this list *is* the pipeline.
from streams import contextualise, encode, fuse, live, segment  # noqa: E402,F401
