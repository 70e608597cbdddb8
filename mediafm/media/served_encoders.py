"""The encoders' served models: one Triton python-backend class for every encoder.

Each model_repository/<name>/1/model.py is::

    from mediafm.media.served_encoders import EncoderModel as TritonPythonModel

and its config.pbtxt names the encoder in ``parameters { key: "encoder" }``:
efficientnet_lite0, aisfx, minilm (the offline profile), clip, wav2vec2 (production,
checkpoints from the clip_dir / wav2vec2_dir settings, read with Settings.load() in
the server's environment). Inputs: FRAMES (uint8, (F, H, W, 3) per shot), or AUDIO
(float32 samples) + LENGTH (int64, real samples), or TEXT (bytes). Output EMBEDDING.

Dynamic batching hands `execute` several requests: they are stacked and encoded in
one call (audio zero-padded to the longest; LENGTH keeps the real length), then split
back. The encoder cuts the batch into cache-sized forward passes and, on the CPU, runs
`parallel_passes` of them at once (config parameters, see `configure_torch`); on a GPU
(a KIND_GPU instance, which the configs' KIND_AUTO gives where Triton sees one) it runs
on that GPU.

Failures (`triton_error`): what the input caused (a ValueError / TypeError from
checking or encoding it: wrong shapes, no frames, too few samples, NaN audio)
answers INVALID_ARG, HTTP 400, which mediafm/triton_client.py raises as BadRequest
at once (the shot is dead-lettered); out of memory answers UNAVAILABLE, HTTP 503,
and any other failure INTERNAL, HTTP 500: the client retries both with backoff.
Tests make a model fail on purpose with two config parameters, ``fail_first``
(how many forward passes fail) and ``fail_with`` (oom, cpu_oom, memory, runtime or
value; a comma-separated list is taken in turn).
"""

from __future__ import annotations

import json
import os

import numpy as np

from mediafm.profiles import ENCODERS


def build_encoder(name: str, settings=None, device: str | None = None):
    """The encoder `name` on `device` (None: the GPU if torch sees one, else the CPU)."""
    from mediafm.media import encoders as enc

    if name == "efficientnet_lite0":
        return enc.EfficientNetLite0Video(device=device)
    if name == "aisfx":
        return enc.AisfxAudio(device=device)
    if name == "minilm":
        return enc.MiniLMText(device=device)
    if settings is None:
        from mediafm.config import Settings

        settings = Settings.load()
    if name == "clip":
        return enc.ClipVideo(settings.clip_dir, device=device)
    if name == "wav2vec2":
        return enc.Wav2Vec2Audio(settings.wav2vec2_dir, device=device)
    raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}")


def encode_requests(encoder, kind: str, inputs: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Encode several requests' inputs in one pass; returns one (n_i, dim) array per request."""
    sizes = []
    if kind == "video":
        sizes = [len(x["FRAMES"]) for x in inputs]
        frames = inputs[0]["FRAMES"] if len(inputs) == 1 else np.concatenate([x["FRAMES"] for x in inputs])
        out = encoder.encode(frames)
    elif kind == "audio":
        sizes = [len(x["AUDIO"]) for x in inputs]
        longest = max(x["AUDIO"].shape[1] for x in inputs)
        audio = np.zeros((sum(sizes), longest), np.float32)  # one copy, zero-padded to the longest
        for x, at in zip(inputs, np.cumsum([0, *sizes[:-1]]), strict=True):
            audio[at:at + len(x["AUDIO"]), : x["AUDIO"].shape[1]] = x["AUDIO"]
        lengths = np.concatenate([x["LENGTH"].reshape(-1) for x in inputs])
        out = encoder.encode(audio, lengths)
    else:
        texts = [[t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)
                  for t in x["TEXT"].reshape(-1)] for x in inputs]
        sizes = [len(t) for t in texts]
        out = encoder.encode([t for ts in texts for t in ts])
    return np.split(out, np.cumsum(sizes)[:-1])


_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(e: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (a RuntimeError: "CUDA out of memory"), MemoryError, or torch's CPU allocator
    failing ("DefaultCPUAllocator: can't allocate memory")."""
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _OOM_TEXT))


def triton_error(pb_utils, what: str, e: BaseException, *, input_errors: tuple = (ValueError, TypeError)):
    """The TritonError for a failure: INVALID_ARG (400, dead-lettered) only when the input caused it (`input_errors`);
    UNAVAILABLE (503) for out of memory, INTERNAL (500) for anything else; the client retries both
    (mediafm/triton_client.py)."""
    if is_out_of_memory(e):
        try:  # give the cached blocks back before the retry comes
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: S110 - best effort only
            pass
        return pb_utils.TritonError(f"{what}: out of memory ({type(e).__name__}: {str(e)[:300]}); retry later",
                                    pb_utils.TritonError.UNAVAILABLE)
    if input_errors and isinstance(e, input_errors):
        return pb_utils.TritonError(f"{what}: {e}", pb_utils.TritonError.INVALID_ARG)
    return pb_utils.TritonError(f"{what}: {type(e).__name__}: {str(e)[:500]}", pb_utils.TritonError.INTERNAL)


_FAILURES = {
    "oom": lambda: _cuda_oom("CUDA out of memory. Tried to allocate 2.00 GiB (injected by fail_first)"),
    "cpu_oom": lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes "
                                    "(injected by fail_first)"),
    "memory": lambda: MemoryError("injected by fail_first"),
    "runtime": lambda: RuntimeError("injected by fail_first"),
    "value": lambda: ValueError("injected by fail_first"),
}


def _cuda_oom(text: str) -> BaseException:
    import torch

    return torch.cuda.OutOfMemoryError(text)


# Minimum samples a request's AUDIO must hold for each audio encoder (one STFT frame, one conv window).
_MIN_SAMPLES = {"aisfx": 2048, "wav2vec2": 400}


def _param(params: dict, key: str, default: str = "") -> str:
    return params.get(key, {}).get("string_value", default) or default


def configure_torch(params: dict, args: dict) -> str | None:
    """Threads and device of this instance, from its config; returns the device for build_encoder.

    - `torch_threads`: torch's intra-op threads (unset: OMP_NUM_THREADS, which mediafm/stack/triton.py sets to 1);
    - `per_pass` (read by EncoderModel): items per forward pass on the CPU, unset = the encoder's `per_pass`;
    - `parallel_passes`: forward passes of one dynamic batch run at once on threads of their own
      (mediafm.media.encoders.set_parallel_passes; CPU only). On a 2-core CPU, 2 passes x 1 thread each
      beat 1 pass x 2 intra-op threads, whose OpenMP barriers collapse when the cores are shared;
    - device: a KIND_GPU instance runs on its GPU (model_instance_device_id), a KIND_CPU one on the CPU,
      anything else (KIND_AUTO / KIND_MODEL) on the GPU when torch sees one.
    """
    import torch

    from mediafm.media.encoders import set_parallel_passes

    threads = int(_param(params, "torch_threads", "0"))
    if threads:
        torch.set_num_threads(threads)
    kind = str(args.get("model_instance_kind", "")).upper()
    if kind == "GPU" and torch.cuda.is_available():
        device = f"cuda:{int(args.get('model_instance_device_id', 0) or 0)}"
    elif kind == "CPU":
        device = "cpu"
    else:
        device = None
    on_gpu = device.startswith("cuda") if device else torch.cuda.is_available()
    if not on_gpu:
        passes = _param(params, "parallel_passes", "1")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        set_parallel_passes(max(1, cores // torch.get_num_threads()) if passes == "auto" else int(passes),
                            torch.get_num_threads())
    return device


class EncoderModel:
    """TritonPythonModel for every encoder (see the module docstring)."""

    INPUTS = {"video": ("FRAMES",), "audio": ("AUDIO", "LENGTH"), "text": ("TEXT",)}

    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = config["parameters"]["encoder"]["string_value"]
        self.kind = ENCODERS[name]
        params = config["parameters"]
        self.encoder = build_encoder(name, device=configure_torch(params, args))
        if _param(params, "per_pass"):  # items per forward pass on the CPU (frames, blocks, shots, sentences)
            self.encoder.per_pass = int(_param(params, "per_pass"))
        self.min_samples = _MIN_SAMPLES.get(name, 1)
        # tests only: the first `fail_first` forward passes raise `fail_with` (see _FAILURES)
        self.fail_left = int(params.get("fail_first", {}).get("string_value", "0") or 0)
        self.fail_with = params.get("fail_with", {}).get("string_value", "oom").split(",")  # taken in turn
        if self.fail_left and set(self.fail_with) - set(_FAILURES):
            raise ValueError(f"fail_with={self.fail_with!r}; known: {sorted(_FAILURES)}")

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
                self._check(x)
                good.append(i)
                inputs.append(x)
            except Exception as e:
                responses[i] = pb_utils.InferenceResponse(error=triton_error(pb_utils, f"{self.kind} encoder", e))
        if good:
            groups: dict[tuple, list[int]] = {}
            for j, x in enumerate(inputs):  # frames of different sizes cannot share a forward pass
                key = x["FRAMES"].shape[1:] if self.kind == "video" else ()
                groups.setdefault(key, []).append(j)
            for js in groups.values():
                try:
                    self._inject_failure()
                    outs = encode_requests(self.encoder, self.kind, [inputs[j] for j in js])
                    for j, y in zip(js, outs, strict=True):
                        responses[good[j]] = pb_utils.InferenceResponse(
                            output_tensors=[pb_utils.Tensor("EMBEDDING", y.astype(np.float32))])
                except Exception as e:
                    for j in js:
                        responses[good[j]] = pb_utils.InferenceResponse(
                            error=triton_error(pb_utils, f"{self.kind} encoder", e))
        return responses

    def _check(self, x: dict[str, np.ndarray]) -> None:
        """ValueError (INVALID_ARG) for inputs no encoder can take: no frames, too few or non-finite samples."""
        if self.kind == "video" and (x["FRAMES"].shape[1] == 0 or 0 in x["FRAMES"].shape[2:4]):
            raise ValueError(f"FRAMES has no frames or no pixels: {x['FRAMES'].shape}; send at least one frame")
        if self.kind == "audio":
            if x["AUDIO"].shape[1] < self.min_samples:
                raise ValueError(f"AUDIO has {x['AUDIO'].shape[1]} samples, this encoder needs at least "
                                 f"{self.min_samples}; send a longer window or no audio")
            if not np.isfinite(x["AUDIO"]).all():
                raise ValueError("AUDIO contains NaN or inf samples")

    def _inject_failure(self) -> None:
        if getattr(self, "fail_left", 0) > 0:  # tests only (config parameters fail_first, fail_with)
            self.fail_left -= 1
            kind = self.fail_with.pop(0)
            self.fail_with.append(kind)
            raise _FAILURES[kind]()
