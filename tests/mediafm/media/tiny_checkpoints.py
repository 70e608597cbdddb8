"""Test helpers for the production profile: tiny random-initialised checkpoints of the real
architectures (transformers save_pretrained layout, what clip_dir / wav2vec2_dir point at) and a
local OpenAI-compatible embeddings server (stdlib HTTP, deterministic vectors per text).

    clip = save_tiny_clip(tmp / "clip", projection_dim=768)
    w2v = save_tiny_wav2vec2(tmp / "w2v", hidden_size=768)
    with EmbeddingsServer() as url:      # http://127.0.0.1:<port>/v1
        OpenAIText(base_url=url).encode(["hello"])
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np


def save_tiny_clip(path: Path, *, projection_dim: int = 24, image_size: int = 32, patch_size: int = 8,
                   hidden_size: int = 32, seed: int = 0) -> Path:
    """CLIPVisionModelWithProjection, 2 layers, random weights, saved to `path`; image_embeds are projection_dim wide."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=patch_size, projection_dim=projection_dim)
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return Path(path)


def save_tiny_wav2vec2(path: Path, *, hidden_size: int = 32, seed: int = 0) -> Path:
    """Wav2Vec2Model, 2 transformer layers, random weights, saved to `path`.

    Layer-norm feature extractor with stable layer norm (as wav2vec2-large: it masks padding); three conv
    layers striding 5 x 8 x 8 = 320 samples, as the real models' 20 ms frames at 16 kHz.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                         conv_dim=(16, 16, 16), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8),
                         num_feat_extract_layers=3, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         feat_extract_norm="layer", do_stable_layer_norm=True)
    Wav2Vec2Model(cfg).save_pretrained(path)
    return Path(path)


def text_vector(text: str, dim: int) -> np.ndarray:
    """The stand-in's (unnormalised) embedding of `text`: the same in every process."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return 3 * np.random.default_rng(seed).standard_normal(dim)


def embeddings_json(body: dict, vector, *, default_dim: int, reverse: bool = False) -> bytes:
    """What an OpenAI-compatible /v1/embeddings answers to `body`: vector(text, dim) for each input. With
    reverse, the data comes back in reverse order (the API's `index` field, not the order, says which)."""
    dim = body.get("dimensions") or default_dim
    data = [{"object": "embedding", "index": i, "embedding": np.asarray(vector(t, dim)).tolist()}
            for i, t in enumerate(body["input"])]
    return json.dumps({"object": "list", "data": data[::-1] if reverse else data, "model": body["model"],
                       "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()


def send_json(handler: BaseHTTPRequestHandler, status: int, out: bytes, headers: dict | None = None) -> None:
    handler.send_response(status)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(out)))
    handler.end_headers()
    handler.wfile.write(out)


class _Embeddings(BaseHTTPRequestHandler):
    calls: list  # set per server

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls.append((self.path, body))
        if self.path.rstrip("/") != "/v1/embeddings":
            self.send_response(404)
            self.end_headers()
            return
        send_json(self, 200, embeddings_json(body, text_vector, default_dim=3072))

    def log_message(self, *a):
        pass


class EmbeddingsServer:
    """A local OpenAI-compatible /v1/embeddings (real HTTP on a free loopback port), as a context manager."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Embeddings)
        self.server.calls = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def calls(self) -> list:
        return self.server.calls

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
