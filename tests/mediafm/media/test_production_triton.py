"""The production profile through a real Triton: tiny random-initialised CLIP-vision and wav2vec2
checkpoints of the real architectures (saved with transformers, at the profile's 768-d widths) served
as `video_clip` and `audio_wav2vec2`, text from a local OpenAI-compatible server.

A Triton of its own (free ports): the served encoders read clip_dir / wav2vec2_dir with
Settings.load() inside the server, from the MEDIAFM_* environment `mediafm.stack.triton.up` gives
it, so the checkpoints are settings of the server, not of one model load.

Checked: the served encoders equal the same encoders in process (atol 1e-4), on raw tensors and on
a generated film's shots through `encode_shots` (the agents' encode path); `embed_title` (`mediafm
embed`) writes 2304-d unit fused vectors and a 768-d title embedding; and the whole pipeline (the
session's Kafka broker, a `mediafm worker` on the production profile, this Triton with `fusion` and a
tiny MediaFM exported for the production widths) gives every shot a final 2304-d embedding, its
fused vectors (`mediafm sink`) equal to `mediafm embed`'s.
"""

from __future__ import annotations

import shutil
import time
import uuid

import numpy as np
import pytest

from mediafm.config import Settings, private_ports
from mediafm.dataset import Dataset
from mediafm.media.embed import MIN_AUDIO_S, embed_title, encode_shots_sync, fuse_encoded, iter_shot_media
from mediafm.media.shots import Shot
from mediafm.media.synthfilm import Cue, make_film
from mediafm.profiles import PRODUCTION
from mediafm.schema import TitleMeta
from mediafm.triton_client import infer_sync
from tests.conftest import REPO, free_port
from tests.mediafm.media.tiny_checkpoints import EmbeddingsServer, save_tiny_clip, save_tiny_wav2vec2

pytestmark = [pytest.mark.triton, pytest.mark.slow]

FPS = 24
SHOTS = [36, 30, 42, 30, 36]
AUDIO = ["speech:where is the station", "tone:440", "noise", "speech:the train leaves at noon", "silence"]
CUES = [Cue(0.2, 1.3, "Hello, where is the station?"), Cue(3.0, 4.3, "The train leaves at noon.")]
MODELS = ("video_clip", "audio_wav2vec2")  # loaded at start; the pipeline test loads fusion and exports mediafm
SERVED = (*MODELS, "fusion", "mediafm")


def truth_shots(frames: list[int]) -> list[Shot]:
    edges = np.cumsum([0, *frames])
    return [Shot(i, a / FPS, b / FPS, int(a), int(b)) for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))]


@pytest.fixture(scope="module")
def openai_url():
    with EmbeddingsServer() as url:
        yield url


@pytest.fixture(scope="module")
def production(tmp_path_factory, openai_url):
    """Settings of the production profile, and a Triton serving video_clip + audio_wav2vec2 with them."""
    from mediafm.stack import triton

    d = tmp_path_factory.mktemp("production")
    clip = save_tiny_clip(d / "clip", projection_dim=PRODUCTION.layout.video, image_size=64, patch_size=16)
    w2v = save_tiny_wav2vec2(d / "w2v", hidden_size=PRODUCTION.layout.audio)
    repo = d / "model_repository"
    for m in SERVED:  # configs and shells; no MediaFM versions (exported by the test that needs one)
        skip = (lambda _d, names: [n for n in names if n.isdigit()]) if m == "mediafm" else None
        shutil.copytree(REPO / "model_repository" / m, repo / m, ignore=skip)
    settings = Settings(state_dir=d / "state", model_repository=repo, **private_ports(), triton_models=MODELS, encoder_profile="production",
                        clip_dir=str(clip), wav2vec2_dir=str(w2v), openai_base_url=openai_url,
                        openai_api_key_env="MEDIAFM_TEST_NO_KEY", frames_per_shot=4, audio_window_s=1.0,
                        shot_detector="content")
    try:
        triton.up(settings)
        yield settings
    finally:
        triton.down(settings)


@pytest.fixture(scope="module")
def encoders(production):
    from mediafm.media.encoders import ClipVideo, OpenAIText, Wav2Vec2Audio

    return (ClipVideo(production.clip_dir), Wav2Vec2Audio(production.wav2vec2_dir),
            OpenAIText(base_url=production.openai_base_url, api_key_env=production.openai_api_key_env))


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    d = tmp_path_factory.mktemp("production-film")
    return make_film(d / "film.mp4", shots=SHOTS, fps=FPS, size=(320, 180), audio=AUDIO, cues=CUES,
                     subtitle_codec="mov_text")


def test_served_production_encoders_equal_in_process(production, encoders):
    clip, w2v, _ = encoders
    url = production.triton_http_url
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 4, 224, 224, 3), dtype=np.uint8)
    got = infer_sync(url, "video_clip", {"FRAMES": frames}, ["EMBEDDING"])["EMBEDDING"]
    assert got.shape == (3, 768)
    np.testing.assert_allclose(got, clip.encode(frames), atol=1e-4)
    audio = rng.standard_normal((3, 16000)).astype(np.float32) * 0.1
    audio[1, 9000:] = 0
    lengths = np.array([[16000], [9000], [16000]], np.int64)
    got = infer_sync(url, "audio_wav2vec2", {"AUDIO": audio, "LENGTH": lengths}, ["EMBEDDING"])["EMBEDDING"]
    assert got.shape == (3, 768)
    np.testing.assert_allclose(got, w2v.encode(audio, lengths), atol=1e-4)


def test_film_through_production_triton_equals_in_process(production, encoders, film):
    clip, w2v, text = encoders
    shots = truth_shots(SHOTS)
    meta = TitleMeta("tt-prod", synopsis="Two travellers ask for the train station.", tags=["travel"])
    msgs = encode_shots_sync(production.triton_http_url, film.path, shots, None, meta, "production",
                             settings=production)
    assert [m.shot_index for m in msgs] == list(range(len(SHOTS))) and all(m.profile == "production" for m in msgs)
    fused, present = fuse_encoded(msgs, PRODUCTION.layout)
    assert fused.shape == (len(SHOTS), 2304)
    assert np.allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-5)
    assert present[:, 0].all() and present[:, 2].tolist() == [True, False, True, False, False]

    # the same shots' media encoded in this process by the same encoders
    items = list(iter_shot_media(film.path, shots, frames_per_shot=production.frames_per_shot,
                                 frame_size=PRODUCTION.frame_size, audio_rate=PRODUCTION.audio_rate,
                                 audio_window_s=production.audio_window_s))
    video = clip.encode(np.stack([m.frames for m in items]))
    np.testing.assert_allclose(np.stack([np.frombuffer(m.video, "<f4") for m in msgs]), video, atol=1e-4)
    # audio: as encode_aligned sends it, the shots with audio zero-padded to the longest of the batch
    with_audio = [i for i, m in enumerate(items) if m.audio is not None and len(m.audio) >= MIN_AUDIO_S * 16000]
    assert with_audio == list(range(len(SHOTS)))  # "silence" is an audio stream too
    longest = max(len(items[i].audio) for i in with_audio)
    padded = np.zeros((len(with_audio), longest), np.float32)
    for k, i in enumerate(with_audio):
        padded[k, : len(items[i].audio)] = items[i].audio
    audio = w2v.encode(padded, np.array([len(items[i].audio) for i in with_audio]))
    np.testing.assert_allclose(np.stack([np.frombuffer(msgs[i].audio, "<f4") for i in with_audio]), audio, atol=1e-4)
    # timed text and the title through the embeddings API stand-in
    lines = text.encode([CUES[0].text, CUES[1].text])
    np.testing.assert_allclose(np.frombuffer(msgs[0].text, "<f4"), lines[0], atol=1e-6)
    np.testing.assert_allclose(np.frombuffer(msgs[2].text, "<f4"), lines[1], atol=1e-6)
    title = np.frombuffer(msgs[0].title_embedding, "<f4")
    assert title.shape == (768,)
    np.testing.assert_allclose(title, text.encode([meta.text()])[0], atol=1e-6)
    # fused = the modality slices, each unit, concatenated and scaled to unit norm (mediafm.fusion)
    v = np.frombuffer(msgs[1].video, "<f4")
    assert np.allclose(fused[1, :768] / np.linalg.norm(fused[1, :768]), v, atol=1e-5)


def test_embed_title_on_production_profile(production, film, tmp_path, capsys):
    out = tmp_path / "ds"
    info = embed_title(film.path, out=out, settings=production, progress=True)
    assert info["profile"] == "production" and info["shots"] >= 3
    bars = capsys.readouterr().err  # `mediafm embed`: the seconds cut into shots, then the shots encoded
    assert f"{info['shots']} shots" in bars and f"{info['shots']}/{info['shots']}" in bars, bars
    ds = Dataset(out)
    assert ds.meta.fused_dim == 2304 and ds.meta.title_dim == 768
    (title,) = list(ds.iter_titles())
    assert title.fused.shape == (info["shots"], 2304)
    assert np.allclose(np.linalg.norm(title.fused, axis=1), 1, atol=1e-5)
    assert info["present"]["video"] == info["shots"] and info["present"]["text"] >= 1


@pytest.mark.kafka
def test_title_through_the_pipeline_on_production_profile(production, kafka_stack, film, tmp_path_factory,
                                                          tmp_path):
    from mediafm.bus import Tail
    from mediafm.config import replace
    from mediafm.publish import publish_title, sink
    from mediafm.schema import ContextualEmbedding, decode
    from mediafm.stack import kafka, triton
    from mediafm.synth import write_corpus
    from mediafm.topics import Topics
    from tests.conftest import start_worker, stop_worker
    from trainer.export import export
    from trainer.train import TrainConfig, train

    run = uuid.uuid4().hex[:6]
    pipe = replace(production, kafka_port=kafka_stack.kafka_port, kafka_controller_port=kafka_stack.kafka_controller_port,
                   partitions=kafka_stack.partitions, topic_prefix=f"prod{run}", worker_web_port=free_port(),
                   window_shots=kafka_stack.window_shots, window_stride=kafka_stack.window_stride)
    d = tmp_path_factory.mktemp("production-mediafm")
    data = write_corpus(d / "data", n_titles=6, layout=PRODUCTION.layout, seed=0, shots=(20, 40))
    train(data, d / "run", TrainConfig(config="tiny", max_steps=2, batch_size=2, eval_every=2, ckpt_every=2,
                                       val_batches=1), quiet=True)
    triton.load_model(pipe, "fusion")
    version, vdir, loaded = export(d / "run", settings=pipe)
    assert loaded and vdir.parent.name == PRODUCTION.mediafm_model
    names = Topics.from_settings(pipe)
    kafka.create_topics(pipe, names.all())
    # the reference: `mediafm embed` on the same file, same detector, same served encoders
    local = embed_title(film.path, out=tmp_path / "embed", settings=pipe, meta=None)
    ref = Dataset(local["out"])
    want_fused = next(ref.iter_titles(list(ref.titles.values()))).fused
    n = local["shots"]

    tid = f"prod-{run}"
    worker = start_worker(pipe, tmp_path / "worker.log")
    try:
        tail = Tail(pipe, names.embeddings)
        publish_title(pipe, film.path, title_id=tid)
        finals: dict[int, ContextualEmbedding] = {}
        deadline = time.monotonic() + 240
        for rec in tail.poll(timeout_s=240, stop=lambda: len(finals) >= n or time.monotonic() > deadline):
            m = decode(rec.value, expect=ContextualEmbedding)
            if m.title_id == tid and m.final:
                finals[m.shot_index] = m
        tail.close()
        assert sorted(finals) == list(range(n)), (sorted(finals), (tmp_path / "worker.log").read_text()[-3000:])
        assert {(m.profile, m.model, m.model_version) for m in finals.values()} == \
            {("production", PRODUCTION.mediafm_model, str(version))}
        for m in finals.values():
            v = m.vector()
            assert m.dim == 2304 and v.shape == (2304,) and np.isfinite(v).all() and np.linalg.norm(v) > 0
        out = sink(pipe, tmp_path / "sink", idle_s=3)
        ds = Dataset(out["out"])
        assert ds.meta.fused_dim == 2304 and ds.meta.title_dim == 768
        (sunk,) = list(ds.iter_titles([ds.titles[tid]]))
        assert sunk.fused.shape == (n, 2304)
        np.testing.assert_allclose(sunk.fused, want_fused, atol=1e-4)
        assert worker.poll() is None
    finally:
        stop_worker(worker)
