"""Production encoders' loading code on tiny random-initialised checkpoints saved to tmp dirs,
and the OpenAI embeddings client against a real local OpenAI-compatible HTTP server (stdlib)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from mediafm.errors import EncoderError, EncoderUnavailable
from mediafm.media.encoders import ClipVideo, OpenAIText, Wav2Vec2Audio
from tests.mediafm.media.tiny_checkpoints import embeddings_json, send_json


def test_clip_vision_from_local_dir(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=24)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "clip")
    enc = ClipVideo(tmp_path / "clip")
    assert (enc.dim, enc.frame_size) == (24, 32)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 2, 48, 48, 3), dtype=np.uint8)
    out = enc.encode(frames)
    assert out.shape == (3, 24) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    # the pooled shot embedding is the mean of its frames' embeddings
    single = enc.encode(frames[:1, :1])
    assert not np.allclose(single[0], out[0])
    with pytest.raises(EncoderError, match="clip_dir is not set"):
        ClipVideo("")
    with pytest.raises(EncoderError, match="no config.json"):
        ClipVideo(tmp_path)


def test_wav2vec2_from_local_dir_respects_lengths(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                         conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_feat_extract_layers=2,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         feat_extract_norm="layer", do_stable_layer_norm=True)  # as wav2vec2-large: masks padding
    Wav2Vec2Model(cfg).save_pretrained(tmp_path / "w2v")
    enc = Wav2Vec2Audio(tmp_path / "w2v")
    assert enc.dim == 32 and enc.sample_rate == 16000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16000)).astype(np.float32)
    padded = x.copy()
    padded[1, 8000:] = 0
    out = enc.encode(padded, np.array([16000, 8000]))
    alone = enc.encode(x[1:, :8000], np.array([8000]))
    assert out.shape == (2, 32)
    # padding beyond LENGTH barely changes the embedding
    assert float(out[1] @ alone[0]) > 0.99


def test_wav2vec2_group_norm_embeds_a_shot_the_same_whatever_its_batch(tmp_path):
    """A group-norm feature extractor (wav2vec2-base) normalises each conv channel over the whole input, padding
    included: before, a short shot padded beside a long one in a pass got another embedding than alone (on this
    tiny random model: cosine 0.996, components off by up to 0.035; not measured on the real checkpoint), so a
    shot's embedding depended on which shots Triton batched it with. Now such a checkpoint takes its shots one per
    pass, each cut to its own length."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                         conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_feat_extract_layers=2,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         feat_extract_norm="group", do_stable_layer_norm=False)  # as wav2vec2-base
    Wav2Vec2Model(cfg).save_pretrained(tmp_path / "w2v")
    enc = Wav2Vec2Audio(tmp_path / "w2v")
    rng = np.random.default_rng(0)
    long, short = rng.standard_normal(32000).astype(np.float32), rng.standard_normal(4000).astype(np.float32)
    batch = np.zeros((3, 32000), np.float32)
    batch[0], batch[1, :4000], batch[2, :4000] = long, short, short
    out = enc.encode(batch, np.array([32000, 4000, 4000]))
    alone = enc.encode(short[None], np.array([4000]))
    np.testing.assert_allclose(out[1], alone[0], atol=1e-5)
    np.testing.assert_allclose(out[2], alone[0], atol=1e-5)
    np.testing.assert_allclose(out[0], enc.encode(long[None], np.array([32000]))[0], atol=1e-5)


class _Handler(BaseHTTPRequestHandler):
    calls: list = []
    fail_first = 0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append((self.path, self.headers.get("Authorization"), body))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "rate limited"}}')
            return
        send_json(self, 200, embeddings_json(  # reversed: the client must order by `index`
            body, lambda t, dim: 3 * np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(dim),
            default_dim=8, reverse=True))

    def log_message(self, *a):
        pass


@pytest.fixture
def openai_server():
    _Handler.calls, _Handler.fail_first = [], 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_openai_client_batches_orders_retries(openai_server, monkeypatch):
    monkeypatch.setenv("TEST_EMB_KEY", "sk-test-secret")
    enc = OpenAIText(base_url=openai_server, api_key_env="TEST_EMB_KEY", batch_size=3, dimensions=768)
    _Handler.fail_first = 1  # one 429: the client retries
    texts = [f"line {i}" for i in range(7)]
    out = enc.encode(texts)
    assert out.shape == (7, 768) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    ok = [c for c in _Handler.calls]
    assert len(ok) == 1 + 3  # the refused request + ceil(7/3) batches
    assert all(p == "/v1/embeddings" and auth == "Bearer sk-test-secret" for p, auth, _ in ok)
    assert [len(b["input"]) for _, _, b in ok[1:]] == [3, 3, 1]
    assert all(b["model"] == "text-embedding-3-large" and b["dimensions"] == 768 for _, _, b in ok)
    # rows come back in input order although the server answered them reversed
    again = enc.encode(["line 4"])
    assert np.allclose(again[0], out[4], atol=1e-6)
    assert "sk-test-secret" not in enc.name


def test_openai_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(EncoderError, match=r"\$NO_SUCH_KEY_VAR is not set"):
        OpenAIText(api_key_env="NO_SUCH_KEY_VAR")


def test_openai_unreachable_gives_up(monkeypatch):
    monkeypatch.setenv("K", "x")
    enc = OpenAIText(base_url="http://127.0.0.1:9/v1", api_key_env="K", max_retries=0, timeout_s=2)
    with pytest.raises(EncoderUnavailable, match="APIConnectionError"):
        enc.encode(["hello"])
