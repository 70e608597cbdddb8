"""Triton side of the encoders: one python-backend model class for every encoder.

Each model_repository/<name>/1/model.py is::

    from mediafm.media.serving import EncoderModel as TritonPythonModel

and its config.pbtxt names the encoder in ``parameters { key: "encoder" }``:
efficientnet_lite0, aisfx, minilm (the offline profile), clip, wav2vec2 (production,
checkpoints from the clip_dir / wav2vec2_dir settings, read with Settings.load() in
the server's environment). Inputs: FRAMES (uint8, (F, H, W, 3) per shot), or AUDIO
(float32 samples) + LENGTH (int64, real samples), or TEXT (bytes). Output EMBEDDING.

Dynamic batching hands `execute` several requests: they are stacked and encoded in
one forward pass (audio zero-padded to the longest; LENGTH keeps the real length),
then split back. A malformed request gets its own INVALID_ARG error.
"""

from __future__ import annotations

import json

import numpy as np


def build_encoder(name: str, settings=None):
    from mediafm.media import encoders as enc

    if name == "efficientnet_lite0":
        return enc.EfficientNetLite0Video()
    if name == "aisfx":
        return enc.AisfxAudio()
    if name == "minilm":
        return enc.MiniLMText()
    if settings is None:
        from mediafm.config import Settings

        settings = Settings.load()
    if name == "clip":
        return enc.ClipVideo(settings.clip_dir)
    if name == "wav2vec2":
        return enc.Wav2Vec2Audio(settings.wav2vec2_dir)
    raise ValueError(f"unknown encoder {name!r}; known: efficientnet_lite0, aisfx, minilm, clip, wav2vec2")


def encode_requests(encoder, kind: str, inputs: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Encode several requests' inputs in one pass; returns one (n_i, dim) array per request."""
    sizes = []
    if kind == "video":
        sizes = [len(x["FRAMES"]) for x in inputs]
        out = encoder.encode(np.concatenate([x["FRAMES"] for x in inputs]))
    elif kind == "audio":
        longest = max(x["AUDIO"].shape[1] for x in inputs)
        audio = np.concatenate([np.pad(x["AUDIO"], ((0, 0), (0, longest - x["AUDIO"].shape[1]))) for x in inputs])
        lengths = np.concatenate([x["LENGTH"].reshape(-1) for x in inputs])
        sizes = [len(x["AUDIO"]) for x in inputs]
        out = encoder.encode(audio.astype(np.float32), lengths)
    else:
        texts = [[t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)
                  for t in x["TEXT"].reshape(-1)] for x in inputs]
        sizes = [len(t) for t in texts]
        out = encoder.encode([t for ts in texts for t in ts])
    return np.split(out, np.cumsum(sizes)[:-1])


class EncoderModel:
    """TritonPythonModel for every encoder (see the module docstring)."""

    INPUTS = {"video": ("FRAMES",), "audio": ("AUDIO", "LENGTH"), "text": ("TEXT",)}

    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = config["parameters"]["encoder"]["string_value"]
        self.kind = {"efficientnet_lite0": "video", "clip": "video", "aisfx": "audio", "wav2vec2": "audio",
                     "minilm": "text"}[name]
        self.encoder = build_encoder(name)

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        good, inputs, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                x = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.INPUTS[self.kind]}
                if self.kind == "video" and (x["FRAMES"].ndim != 5 or x["FRAMES"].shape[-1] != 3):
                    raise ValueError(f"FRAMES must be (N, F, H, W, 3) uint8, got {x['FRAMES'].shape}")
                if self.kind == "audio" and (x["AUDIO"].ndim != 2 or len(x["LENGTH"].reshape(-1)) != len(x["AUDIO"])):
                    raise ValueError(f"AUDIO (N, S) and LENGTH (N, 1) disagree: {x['AUDIO'].shape}, {x['LENGTH'].shape}")
                good.append(i)
                inputs.append(x)
            except Exception as e:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.kind} encoder: {e}", pb_utils.TritonError.INVALID_ARG))
        if good:
            groups: dict[tuple, list[int]] = {}
            for j, x in enumerate(inputs):  # frames of different sizes cannot share a forward pass
                key = x["FRAMES"].shape[1:] if self.kind == "video" else ()
                groups.setdefault(key, []).append(j)
            for js in groups.values():
                try:
                    outs = encode_requests(self.encoder, self.kind, [inputs[j] for j in js])
                    for j, y in zip(js, outs, strict=True):
                        responses[good[j]] = pb_utils.InferenceResponse(
                            output_tensors=[pb_utils.Tensor("EMBEDDING", y.astype(np.float32))])
                except Exception as e:
                    for j in js:
                        responses[good[j]] = pb_utils.InferenceResponse(
                            error=pb_utils.TritonError(f"{self.kind} encoder: {e}", pb_utils.TritonError.INVALID_ARG))
        return responses
