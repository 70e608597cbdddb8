"""Infrastructure faults mid-title on a stack of the test's own: the broker restarted, Triton killed -9.

After each: every shot of the title has exactly one final (a final published again is the same vector),
nothing was dead-lettered (nothing here is bad input), and the worker is still running, or it stopped
with EX_TEMPFAIL (75) and, restarted as its supervisor (compose `restart: on-failure`) would, finished.
The session's broker and Triton are not touched: this module starts and kills its own.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import defaultdict

import numpy as np
import pytest
from conftest import _stack_settings, rest_of_output, start_worker, stop_worker

from mediafm.bus import Tail, producer
from mediafm.config import replace
from mediafm.profiles import OFFLINE
from mediafm.schema import ContextualEmbedding, FusedShots, decode, record_shots
from mediafm.stack import kafka, triton
from mediafm.synth import World, encoded_shots, generate_title, write_corpus
from mediafm.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory):
    from trainer.export import export
    from trainer.train import TrainConfig, train

    d = tmp_path_factory.mktemp("faults")
    s = replace(_stack_settings(d), topic_prefix="faults", triton_models=("fusion", "mediafm_offline"))
    try:
        kafka.up(s)
        kafka.create_topics(s, Topics.from_settings(s).all())
        triton.up(s)
        data = write_corpus(d / "data", n_titles=6, layout=OFFLINE.layout, seed=0, shots=(20, 40))
        train(data, d / "run", TrainConfig(config="tiny", max_steps=2, batch_size=2, eval_every=2, ckpt_every=2,
                                           val_batches=1), quiet=True)
        export(d / "run", settings=s)
        yield s
    finally:
        triton.down(s)
        kafka.down(s)


def _run_title_through_a_fault(s, tmp_path, fault, recover):
    names = Topics.from_settings(s)
    t = generate_title(World(OFFLINE.layout, seed=9), f"f-{uuid.uuid4().hex[:6]}", 300, np.random.default_rng(1))
    msgs = encoded_shots(t)
    want = {(t.title_id, i) for i in range(len(msgs))}
    finals: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    fused_seen: set[int] = set()  # shot indices fused (the fuse stage sends several to a record)

    def take(rec):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.final and m.title_id == t.title_id:
            finals[(m.title_id, m.shot_index)].append(m.vector())

    log = tmp_path / "worker.log"
    tail, fused = Tail(s, names.embeddings), Tail(s, names.fused)
    w = start_worker(s, log)
    restarts = []
    try:
        p = producer(s)
        for m in msgs[:200]:
            p.send(names.encoded, key=t.title_id.encode(), value=m.to_bytes())
        p.flush()
        for rec in fused.poll(timeout_s=300, stop=lambda: len(fused_seen) >= 60):
            fused_seen.update(f.shot_index for f in record_shots(FusedShots, rec.value) if f.title_id == t.title_id)
        assert len(fused_seen) >= 60, log.read_text()[-3000:]
        fault()  # mid-title: some shots fused, most not, the title not yet contextualised
        recover()
        for m in msgs[200:]:
            p.send(names.encoded, key=t.title_id.encode(), value=m.to_bytes())
        p.flush()
        p.close()
        deadline = time.monotonic() + 600
        while set(finals) < want:
            assert time.monotonic() < deadline, f"{len(want - set(finals))} shots without a final\n" \
                                                f"{log.read_text()[-3000:]}"
            for rec in tail.poll(timeout_s=2):
                take(rec)
            if w.poll() is not None:  # a supervisor starts it again, if it asked for it
                assert w.returncode == 75, f"worker crashed with {w.returncode}:\n{log.read_text()[-3000:]}"
                restarts.append(w.returncode)
                w = start_worker(s, log)
        for rec in rest_of_output(s, tail, [names.encoded, names.fused]):
            take(rec)
    finally:
        if w.poll() is None:
            stop_worker(w)
        tail.close()
        fused.close()
    assert set(finals) == want
    for key, vecs in finals.items():
        for v in vecs[1:]:
            np.testing.assert_allclose(v, vecs[0], atol=1e-5, err_msg=str(key))
    dead = Tail(s, names.deadletter, from_beginning=True)
    letters = [decode(r.value).reason for r in dead.to_end(timeout_s=30)]
    dead.close()
    assert not letters, letters[:3]
    return restarts


def test_broker_stopped_and_restarted_mid_title(own_stack, tmp_path):
    s = own_stack

    def stop():
        kafka.down(s)
        assert not kafka.ready(s)

    _run_title_through_a_fault(s, tmp_path, stop, lambda: kafka.up(s))


def test_triton_killed_mid_title_and_restarted(own_stack, tmp_path):
    s = own_stack

    def kill():
        pid = triton.service(s).pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while triton.live(s):
            assert time.monotonic() < deadline, "Triton still answers after SIGKILL"
            time.sleep(0.2)

    _run_title_through_a_fault(s, tmp_path, kill, lambda: triton.up(s))


def test_publish_live_waits_out_a_broker_away_for_longer_than_30_s(own_stack, tmp_path):
    """`mediafm publish live` is an event's source: a broker restarted mid-event must not stop it. Each send used
    to give up after 30 s (KafkaTimeoutError, the event's publisher gone); now it waits as long as the producer's
    delivery timeout (2 minutes), and the event's segments reach the topic once each, in order."""
    import threading

    from mediafm.media.synthfilm import make_film
    from mediafm.publish import publish_live
    from mediafm.schema import LiveSegment

    s = own_stack
    film = make_film(tmp_path / "live.mp4", shots=[24, 24, 24, 24], fps=24, size=(160, 96), first_source=1)
    event = f"away-{uuid.uuid4().hex[:6]}"
    times: dict[str, float] = {}
    back = threading.Thread(target=lambda: (time.sleep(32), kafka.up(s)), daemon=True)  # away 32 s: the fault

    def broker_away(seg):
        if seg.segment_index == 0:  # the next segment's send finds no broker
            kafka.down(s)
            times["down"] = time.monotonic()
            back.start()

    sent = publish_live(s, film.path, event_id=event, segment_s=1.0, on_segment=broker_away)
    returned = time.monotonic()
    back.join()  # kafka.up returns once its probe sees the broker, which may be after the producer did
    # the old per-send wait gave up (KafkaTimeoutError) 30 s into the outage
    assert "down" in times and returned - times["down"] > 30
    tail = Tail(s, Topics.from_settings(s).live_segments, from_beginning=True)
    got = [m for m in (decode(r.value, expect=LiveSegment) for r in tail.to_end(timeout_s=60)) if m.event_id == event]
    tail.close()
    assert len(sent) >= 4
    assert [m.segment_index for m in got] == list(range(len(sent)))
