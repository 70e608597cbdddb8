"""MediaFM's served model: the on-disk form of an exported encoder, and its Triton python backend.

An exported version directory (`model_repository/mediafm/<N>/`) holds

    model.pt       {"config": MediaFMConfig dict, "encoder": state_dict}
    lineage.json   run, checkpoint, dataset, step, metrics, time
    model.py       one line importing TritonPythonModel from here (versions exported before this
                   module's rename import it from mediafm.serving, a shim kept for them)

so the model's code has one definition (mediafm/model.py) and the version
directory holds only weights and lineage.

Triton contract (model_repository/mediafm/config.pbtxt), per batch item:
    SHOTS  FP32 [T, fused_dim]   a window of fused shot vectors (T <= max_shots)
    TITLE  FP32 [title_dim]      the title embedding ([GLOBAL])
    LENGTH INT64 [1]             real shots in the window (the rest is padding)
 -> HIDDEN FP32 [T, hidden]      contextual embeddings (last hidden states)
    OUTPUT FP32 [T, fused_dim]   back in fused space: the copy head's weighted mean of the window's
                                 shots, or (projection head) HIDDEN through out_proj
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mediafm.errors import ModelError
from mediafm.model import MediaFMConfig, MediaFMEncoder

WEIGHTS, LINEAGE = "model.pt", "lineage.json"
MAX_SHOTS_PARAM = "max_shots"
"""The served model config's parameter holding the window length the served version was trained on:
written by `mediafm export`, checked against the weights on load, read by the workers to plan windows."""

MODEL_PY = '"""Exported by `mediafm export`; the code lives in mediafm/served_mediafm.py."""\n' \
           "from mediafm.served_mediafm import TritonPythonModel  # noqa: F401\n"


def load_encoder(version_dir: str | Path, *, device: str = "cpu") -> MediaFMEncoder:
    path = Path(version_dir) / WEIGHTS
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        cfg = MediaFMConfig(**blob["config"])
        enc = MediaFMEncoder(cfg)
        enc.load_state_dict(blob["encoder"])
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; an exported version holds {WEIGHTS}") from None
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise ModelError(f"{path}: not a MediaFM export ({type(e).__name__}: {str(e)[:300]})") from None
    return enc.to(device).eval()


def check_encoder(enc: MediaFMEncoder) -> None:
    """Reject an encoder with non-finite weights or outputs before anyone serves it."""
    bad = [n for n, p in enc.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ModelError(f"encoder has NaN/inf in {len(bad)} tensors (first: {bad[0]}); not exporting it")
    cfg = enc.cfg
    g = torch.Generator().manual_seed(0)
    t = min(8, cfg.max_shots)  # a model of windows under 8 shots is checked on its own length (was: an assert)
    shots = torch.nn.functional.normalize(torch.randn(2, t, cfg.fused_dim, generator=g), dim=-1)
    with torch.no_grad():
        hidden, out = enc(shots, torch.randn(2, cfg.title_dim, generator=g), torch.tensor([t, max(1, t // 2)]))
    if not (torch.isfinite(hidden).all() and torch.isfinite(out).all()):
        raise ModelError("encoder produces NaN/inf on a test window; not exporting it")


class TritonPythonModel:
    """Triton python backend for `mediafm`. One forward per execute() over all requests."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        torch.set_num_threads(int(params.get("torch_threads", {}).get("string_value", "1")))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        # KIND_AUTO in config.pbtxt: a GPU instance where Triton sees one (bf16 stays a training choice;
        # served outputs are float32), else the CPU
        gpu = str(args.get("model_instance_kind", "")).upper() == "GPU" and torch.cuda.is_available()
        self.device = f"cuda:{int(args.get('model_instance_device_id', 0) or 0)}" if gpu else "cpu"
        self.encoder = load_encoder(version_dir, device=self.device)
        self.cfg = self.encoder.cfg
        recorded = params.get(MAX_SHOTS_PARAM, {}).get("string_value")
        if recorded and int(recorded) != self.cfg.max_shots:
            # The parameter is the newest version's (`mediafm export` writes it); an older version still
            # served beside it may differ. Its requests then fail with "more than max_shots=N", and the
            # workers plan that request's windows again at N (streams/runtime.py): nothing is lost.
            print(f"mediafm: {config['name']} version {args['model_version']} takes windows of "
                  f"{self.cfg.max_shots} shots; config.pbtxt records the newest version's {recorded}", flush=True)

    def _check(self, shots: np.ndarray, title: np.ndarray, length: np.ndarray) -> None:
        B, T, D = shots.shape
        if D != self.cfg.fused_dim:
            raise ValueError(f"SHOTS has dim {D}, this model takes fused_dim={self.cfg.fused_dim}")
        if T > self.cfg.max_shots:
            raise ValueError(f"SHOTS has {T} shots, more than max_shots={self.cfg.max_shots}; send windows")
        if title.shape != (B, self.cfg.title_dim):
            raise ValueError(f"TITLE has shape {title.shape[1:]}, expected [{self.cfg.title_dim}]")
        if length.min() < 1 or length.max() > T:
            raise ValueError(f"LENGTH must be in [1, {T}], got {length.ravel().tolist()}")
        if not (np.isfinite(shots).all() and np.isfinite(title).all()):
            raise ValueError("SHOTS or TITLE contain NaN/inf")

    def execute(self, requests):
        pb = self.pb
        ok, errors = [], {}
        for i, request in enumerate(requests):
            shots = pb.get_input_tensor_by_name(request, "SHOTS").as_numpy()
            title = pb.get_input_tensor_by_name(request, "TITLE").as_numpy()
            length = pb.get_input_tensor_by_name(request, "LENGTH").as_numpy().reshape(-1)
            try:
                self._check(shots, title, length)
                ok.append((i, shots, title, length))
            except ValueError as e:  # this request only; the others still run
                errors[i] = pb.TritonError(f"mediafm: {e}", pb.TritonError.INVALID_ARG)
        outputs = {}
        if ok:
            # Requests may differ in window length: pad to the longest, mask by LENGTH.
            T = max(s.shape[1] for _, s, _, _ in ok)
            shots = np.concatenate([np.pad(s, ((0, 0), (0, T - s.shape[1]), (0, 0))) for _, s, _, _ in ok])
            title = np.concatenate([t for _, _, t, _ in ok])
            length = np.concatenate([n for _, _, _, n in ok]).astype(np.int64)
            try:
                with torch.inference_mode():
                    hidden, out = (x.float().cpu() for x in self.encoder(
                        torch.from_numpy(shots).to(self.device), torch.from_numpy(title).to(self.device),
                        torch.from_numpy(length).to(self.device)))
            except Exception as e:  # out of memory: 503, anything else 500: the client retries (served_encoders)
                from mediafm.media.served_encoders import triton_error

                hidden = out = None
                for i, *_ in ok:  # the inputs passed _check: no failure of the forward pass is theirs
                    errors[i] = triton_error(pb, "mediafm", e, input_errors=())
            row = 0
            for i, s, _, _ in ok if hidden is not None else ():
                B, t = s.shape[0], s.shape[1]
                outputs[i] = (hidden[row : row + B, :t].numpy(), out[row : row + B, :t].numpy())
                row += B
        responses = []
        for i in range(len(requests)):
            if i in errors:
                responses.append(pb.InferenceResponse(error=errors[i]))
            else:
                h, o = outputs[i]
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor("HIDDEN", np.ascontiguousarray(h)),
                                                                      pb.Tensor("OUTPUT", np.ascontiguousarray(o))]))
        return responses
