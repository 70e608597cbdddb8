"""Stage: fused shots of a live event -> provisional, then final, contextual embeddings.

    shots.fused (kind=live) ──► contextualise agent ──► on_shot ──(Triton: mediafm)──► embeddings
                                   │  tables: live-shots "<event>/<index>" -> FusedShot bytes
                                   │          live-events "<event>" -> progress
                                   └── malformed, out of order ──► deadletter
(streams/contextualise.py's agent reads the fused topic once and hands live shots here.)

Shot i of an event arrives; one MediaFM pass over the window that ends at i
(at most window_shots shots of left context) gives
- shot i's *provisional* embedding (final=False): its left context only, out
  as soon as the shot is fused;
- shot i-R's *final* embedding (final=True), R = live_right_context: by then
  it has R shots of right context.
When the event's last shot arrives (it carries n_shots), the shots still
without a final one get it from a pass over the event's last window. A final
is always published after its provisional, into the same partition (key =
event id), so a consumer reading in order sees provisional then final.

Shots arrive in order (one partition per event, each stage keeps order); a
redelivered shot is recognised and skipped. Only the last window_shots fused
vectors of an event are kept.
"""

from __future__ import annotations

import logging
import time

import msgpack
import numpy as np

from mediafm.errors import SchemaError
from mediafm.fusion import get_layout
from mediafm.schema import ContextualEmbedding, FusedShot, bytes_to_vec, decode, vec_to_bytes
from mediafm.windows import Window
from streams import metrics
from streams.app import app, changelog_sent, run_windows, settings, title_vector, topics

log = logging.getLogger(__name__)
STAGE = "live"

shots_table = app.Table("live-shots", key_type=bytes, value_type=bytes, partitions=settings.partitions)
events_table = app.Table("live-events", key_type=bytes, value_type=bytes, partitions=settings.partitions)


def _key(event_id: str, index: int) -> bytes:
    return f"{event_id}/{index:07d}".encode()


async def publish_window(event_id: str, window: Window, provisional: list[int], final: list[int],
                         n_shots: int | None) -> None:
    """One MediaFM pass over `window`; publish the provisional and final embeddings it yields, in index order."""
    shots = [decode(shots_table[_key(event_id, i)], expect=FusedShot) for i in range(window.start, window.end)]
    layout = get_layout(shots[0].profile)
    fused = np.stack([bytes_to_vec(s.fused, layout.fused_dim) for s in shots])
    hidden, version = await run_windows(fused, title_vector(shots, layout.title), [window], layout.name)
    outs = sorted([(i, False) for i in provisional] + [(i, True) for i in final])
    for i, is_final in outs:
        s = shots[i - window.start]
        emb = hidden[0, i - window.start]
        msg = ContextualEmbedding(
            title_id=event_id, shot_index=i, start_s=s.start_s, end_s=s.end_s,
            embedding=vec_to_bytes(emb, settings.embedding_dtype), dtype=settings.embedding_dtype,
            dim=int(emb.shape[0]), model_version=version, profile=s.profile, window_start=window.start,
            window_end=window.end, final=is_final, n_shots=n_shots, kind="live", published_at=s.published_at)
        await topics.embeddings.send(key=event_id.encode(), value=msg.to_bytes())
        metrics.e2e_seconds.labels("live", "final" if is_final else "provisional").observe(
            max(0.0, time.time() - s.published_at))
    metrics.shots.labels(STAGE).inc(len(outs))


async def on_shot(shot: FusedShot) -> None:
    """One fused shot of a live event, already decoded and checked. Raises SchemaError / BadRequest."""
    metrics.messages.labels(STAGE).inc()
    eid = shot.title_id
    ekey = eid.encode()
    st = msgpack.unpackb(events_table[ekey]) if ekey in events_table else {"next": 0, "final": 0, "n": None}
    if shot.shot_index < st["next"] or (st["n"] is not None and st["final"] >= st["n"]):
        metrics.duplicates.labels(STAGE).inc()
        return
    if shot.shot_index > st["next"]:
        raise SchemaError(f"event {eid!r}: shot {shot.shot_index} arrived before shot {st['next']}; "
                          "a live event's shots must arrive in order (one partition, keyed by event id)")
    shots_table[_key(eid, shot.shot_index)] = shot.to_bytes()
    if shot.n_shots is not None:
        st["n"] = shot.n_shots
    i = shot.shot_index
    size, R = settings.window_shots, settings.live_right_context
    window = Window(max(0, i + 1 - size), i + 1)
    final = [i - R] if i - R >= st["final"] else []
    await publish_window(eid, window, [i], final, st["n"])
    st["next"] = i + 1
    st["final"] += len(final)
    if st["n"] is not None and st["next"] == st["n"]:  # the event is over: finalise the rest
        rest = list(range(st["final"], st["n"]))
        if rest:
            await publish_window(eid, Window(max(0, st["n"] - size), st["n"]), [], rest, st["n"])
        st["final"] = st["n"]
        unused = range(max(0, st["n"] - size), st["n"])
        log.info("live event %s finished: %d shots", eid, st["n"])
    else:
        unused = range(max(0, i - size), i + 1 - size)  # no longer inside any future window
    # Each write is in its changelog before the next one is made, so a kill -9 anywhere in between leaves
    # state this shot's redelivery can carry on from: the shot held before the progress that counts it,
    # and that progress before the shots it makes unused are deleted.
    await changelog_sent()
    events_table[ekey] = msgpack.packb(st)
    await changelog_sent()
    for j in unused:
        shots_table.pop(_key(eid, j), None)
