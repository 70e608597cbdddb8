"""The pipeline stages end to end: real broker, real Triton, a real `mediafm worker`."""

import time

import msgpack
import numpy as np
import pytest
from conftest import rest_of_output

from mediafm.bus import Tail, producer
from mediafm.fusion import fuse
from mediafm.profiles import PRODUCTION
from mediafm.representations import published, served_output
from mediafm.schema import (
    ContextualEmbedding,
    DeadLetter,
    FusedShot,
    FusedShots,
    ShotsRefused,
    bytes_to_vec,
    decode,
    record_shots,
    vec_to_bytes,
)
from mediafm.served_mediafm import load_encoder
from mediafm.synth import World, encoded_shots, generate_title, write_corpus
from mediafm.topics import Topics
from mediafm.windows import plan
from trainer.evaluate import contextual
from trainer.export import export
from trainer.train import TrainConfig, train

pytestmark = [pytest.mark.kafka, pytest.mark.triton]


def test_titles_are_fused_and_bad_messages_dead_lettered(kafka_stack, worker):
    names = Topics.from_settings(kafka_stack)
    world = World(PRODUCTION.layout, seed=1)
    titles = [generate_title(world, f"t{i}-{time.time_ns()}", 20 + 7 * i, np.random.default_rng(i)) for i in range(2)]
    good = encoded_shots(titles[0])
    bad_version = msgpack.unpackb(encoded_shots(titles[1])[0].to_bytes())
    bad_version["v"] = 7
    no_modality = encoded_shots(titles[1])[0]
    no_modality.video = no_modality.audio = no_modality.text = None
    wrong_dim = encoded_shots(titles[1])[0]
    wrong_dim.audio = vec_to_bytes(np.zeros(10))
    bad = {b"garbage": "not msgpack", msgpack.packb(bad_version, use_bin_type=True): "version 7 is not supported",
           no_modality.to_bytes(): "has no modality", wrong_dim.to_bytes(): "audio has 40 bytes, expected 3072"}

    fused_tail, dead_tail = Tail(kafka_stack, names.fused), Tail(kafka_stack, names.deadletter)
    p = producer(kafka_stack)
    for i, msg in enumerate(good):
        p.send(names.encoded, key=msg.title_id.encode(), value=msg.to_bytes())
        if i == 5:  # bad messages in the middle of a title must not stop it
            for raw in bad:
                p.send(names.encoded, key=b"bad", value=raw)
    for msg in encoded_shots(titles[1]):
        p.send(names.encoded, key=msg.title_id.encode(), value=msg.to_bytes())
    p.flush()
    p.close()

    want = {t.title_id: len(t.start_s) for t in titles}
    got: dict[str, dict[int, FusedShot]] = {t: {} for t in want}
    refusals = []  # in place of the bad copies the fuse stage could read as shots (no modality, a wrong width)
    for rec in fused_tail.poll(timeout_s=120, stop=lambda: all(len(got[t]) == n for t, n in want.items())
                               and len(refusals) == 2):
        shots = record_shots(FusedShots, rec.value, refusals=True)
        if isinstance(shots, ShotsRefused):
            if shots.title_id in got:
                refusals.append((shots.title_id, shots.request_id, shots.first, shots.last, shots.stage, shots.kind,
                                 rec.key))
            continue
        for m in shots:  # the fuse stage sends a batch's shots of one title in one record
            if m.title_id in got:
                assert m.shot_index not in got[m.title_id], "duplicate fused shot"
                got[m.title_id][m.shot_index] = m
                assert rec.key == m.title_id.encode()
    letters = []
    for rec in dead_tail.poll(timeout_s=60, stop=lambda: len(letters) >= len(bad)):
        letter = decode(rec.value, expect=DeadLetter)
        if letter.stage == "fuse":  # later stages may reject these titles for their own reasons
            letters.append(letter)
    fused_tail.close()
    dead_tail.close()

    for t in titles:
        assert sorted(got[t.title_id]) == list(range(len(t.start_s)))
        ours = np.stack([bytes_to_vec(got[t.title_id][i].fused, 2304) for i in range(len(t.start_s))])
        np.testing.assert_allclose(ours, fuse(t.video, t.audio, t.text, t.present, layout=t.layout), atol=1e-6)
        assert [m.present for m in got[t.title_id].values()] == t.present.tolist()
    assert len(letters) == len(bad)
    tid = titles[1].title_id  # the contextualise stage takes the good copy of shot 0 all the same (test_stage_logic)
    assert refusals == [(tid, "", 0, 0, "fuse", "title", tid.encode())] * 2, refusals
    for letter in letters:
        assert letter.stage == "fuse" and letter.topic == names.encoded
        assert bad[letter.payload] in letter.reason, letter.reason
    assert worker.poll() is None, "the worker must survive bad input"


def test_worker_serves_prometheus_metrics(kafka_stack, worker):
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{kafka_stack.worker_web_port}/metrics", timeout=5).read()
            break
        except urllib.error.HTTPError:
            raise  # the server answered: an error status is a failure, not "not up yet"
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    # the test above sent this worker encoded shots and bad messages: counted, timed, dead-lettered
    assert samples[("mediafm_messages_total", (("stage", "fuse"),))] > 0
    assert samples[("mediafm_shots_total", (("stage", "fuse"),))] > 0
    assert samples[("mediafm_dead_letters_total", (("stage", "fuse"),))] > 0
    assert samples[("mediafm_triton_seconds_count", (("model", "fusion"),))] > 0


def test_titles_are_contextualised_over_windows_once_per_shot(kafka_stack, worker, tmp_path):
    """Fused shots -> MediaFM on Triton over the window plan -> one embedding per shot, equal to in-process."""
    data = write_corpus(tmp_path / "data", n_titles=6, layout=PRODUCTION.layout, seed=0, shots=(20, 40))
    train(data, tmp_path / "run", TrainConfig(config="tiny", max_steps=2, batch_size=2, eval_every=2, ckpt_every=2,
                                                val_batches=1), quiet=True)
    version, vdir, loaded = export(tmp_path / "run", settings=kafka_stack)
    assert loaded
    names = Topics.from_settings(kafka_stack)
    world = World(PRODUCTION.layout, seed=2)
    titles = [generate_title(world, f"ctx{i}-{time.time_ns()}", n, np.random.default_rng(10 + i))
              for i, n in enumerate((150, 23))]
    tail = Tail(kafka_stack, names.embeddings)
    p = producer(kafka_stack)
    for t in titles:
        msgs = encoded_shots(t)
        order = list(np.random.default_rng(0).permutation(len(msgs))) + [3, 7]  # out of order, and two duplicates
        for j in order:
            p.send(names.encoded, key=t.title_id.encode(), value=msgs[j].to_bytes())
    p.flush()
    p.close()

    want = {t.title_id: len(t.start_s) for t in titles}
    got: dict[str, list[ContextualEmbedding]] = {t: [] for t in want}
    for rec in tail.poll(timeout_s=180, stop=lambda: all(len(got[t]) >= n for t, n in want.items())):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.title_id in got:
            got[m.title_id].append(m)
    for rec in rest_of_output(kafka_stack, tail, [names.encoded, names.fused]):  # anything more: a duplicate
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.title_id in got:
            got[m.title_id].append(m)
    tail.close()

    enc = load_encoder(vdir)
    for t in titles:
        n = len(t.start_s)
        msgs = got[t.title_id]
        assert sorted(m.shot_index for m in msgs) == list(range(n)), "exactly one embedding per shot"
        assert {m.model_version for m in msgs} == {str(version)} and all(m.final for m in msgs)
        windows, owner = plan(n, size=kafka_stack.window_shots, stride=kafka_stack.window_stride)
        fused = fuse(t.video, t.audio, t.text, t.present, layout=t.layout)
        hidden, output, _ = contextual(enc, fused, t.title_embedding, size=kafka_stack.window_shots,
                                    stride=kafka_stack.window_stride)
        rep = kafka_stack.embedding_representation
        assert {(m.model, m.representation) for m in msgs} == {("mediafm", rep)}
        expected = published(rep, {"HIDDEN": hidden, "OUTPUT": output}[served_output(rep)], fused)
        for m in msgs:
            w = windows[owner[m.shot_index]]
            assert (m.window_start, m.window_end) == (w.start, w.end)
            np.testing.assert_allclose(m.vector(), expected[m.shot_index], atol=1e-4)
        assert len(windows) > 1 or n <= kafka_stack.window_shots
    assert worker.poll() is None
