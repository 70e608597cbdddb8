"""Titles of any length are contextualised: windows cut to what the served model takes, requests to its batch.

The worker runs with the default plan (512-shot windows, stride 256); the served model is the session's tiny
MediaFM, trained on 64-shot windows, whose max_shots `mediafm export` recorded in its config. The worker must
plan 64/32 windows from that, send them in requests of at most max_batch_size (8), and give every shot of
titles of 1 to 10,000 shots exactly one final, equal to an in-process pass over the same plan.
The worker holds at most 32 MiB of fused shots in memory (held_shots_mb), so the 10,000-shot title (87 MB of
fused vectors) is contextualised from both: what was held, and the rest read back from the fused topic.
It publishes context+input, the representation that is not the default, so both go through the real stack.
"""

from __future__ import annotations

import re
import uuid

import numpy as np
import pytest
from conftest import free_port, newest_version, start_worker, stop_worker, take_output

from mediafm.bus import Tail, producer
from mediafm.config import replace
from mediafm.profiles import OFFLINE
from mediafm.representations import published, served_output
from mediafm.schema import ContextualEmbedding, FusedShot, decode, vec_to_bytes
from mediafm.served_mediafm import load_encoder
from mediafm.stack import kafka
from mediafm.topics import Topics
from mediafm.windows import plan
from trainer.evaluate import contextual

pytestmark = [pytest.mark.kafka, pytest.mark.triton, pytest.mark.slow]

LENGTHS = (1, 511, 512, 513, 2305, 10000)


def _title(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fused = rng.normal(size=(n, OFFLINE.layout.fused_dim)).astype(np.float32)
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    title = rng.normal(size=OFFLINE.layout.title).astype(np.float32)
    return fused, title


def test_titles_of_any_length_get_one_final_per_shot_on_the_served_plan(kafka_stack, offline_model, tmp_path):
    s = replace(kafka_stack, topic_prefix=f"len{uuid.uuid4().hex[:6]}", state_dir=tmp_path / "state",
                worker_web_port=free_port(), window_shots=512, window_stride=256, held_shots_mb=32,
                embedding_representation="context+input")  # the default (output) goes through test_streams
    names = Topics.from_settings(s)
    kafka.create_topics(s, names.all())
    run = uuid.uuid4().hex[:6]
    titles = {f"len{n}-{run}": _title(n, seed=n) for n in LENGTHS}

    tail = Tail(s, names.embeddings, from_beginning=True)
    w = start_worker(s, tmp_path / "worker.log")
    p = producer(s)
    for tid, (fused, title) in titles.items():
        for i, v in enumerate(fused):
            p.send(names.fused, key=tid.encode(), value=FusedShot(
                title_id=tid, shot_index=i, start_s=float(i), end_s=i + 1.0, profile="offline",
                fused=vec_to_bytes(v), present=[True, True, True], n_shots=len(fused),
                title_embedding=vec_to_bytes(title)).to_bytes())
    p.flush()
    p.close()

    finals: dict[str, list[ContextualEmbedding]] = {tid: [] for tid in titles}
    want = sum(len(f) for f, _ in titles.values())
    count = lambda: sum(len(v) for v in finals.values())  # noqa: E731

    def take(rec):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.final and m.title_id in finals:
            finals[m.title_id].append(m)

    try:
        take_output(s, tail, w, tmp_path / "worker.log", names.fused, take, lambda: count() >= want, timeout_s=900)
    finally:
        stop_worker(w)
        tail.close()
    log = (tmp_path / "worker.log").read_text()
    assert "accepts 8 windows a request, max_shots 64" in log, log[-3000:]
    back = re.search(rf"len10000-{run}#: (\d+) of 10000 shots read back", log)
    assert back and 0 < int(back.group(1)) < 10000, "the long title was not read back in part"

    dead = Tail(s, names.deadletter, from_beginning=True)
    letters = list(dead.to_end(timeout_s=30))
    dead.close()
    assert not letters, [decode(r.value).reason for r in letters[:3]]

    served = newest_version(kafka_stack, "mediafm_offline")  # other tests may have exported since offline_model
    enc = load_encoder(kafka_stack.model_repository / "mediafm_offline" / served)
    for tid, (fused, title) in titles.items():
        n, msgs = len(fused), finals[tid]
        assert sorted(m.shot_index for m in msgs) == list(range(n)), f"{tid}: not exactly one final per shot"
        assert {m.model_version for m in msgs} == {served}
        windows, owner = plan(n, size=64, stride=32)  # the served model's max_shots, stride scaled with it
        hidden, output, _ = contextual(enc, fused, title, size=64, stride=32)
        rep = s.embedding_representation
        expected = published(rep, {"HIDDEN": hidden, "OUTPUT": output}[served_output(rep)], fused)
        got = np.stack([m.vector() for m in sorted(msgs, key=lambda m: m.shot_index)])
        for m in msgs:
            assert (m.window_start, m.window_end) == (windows[owner[m.shot_index]].start,
                                                      windows[owner[m.shot_index]].end)
        np.testing.assert_allclose(got, expected, atol=1e-4)
