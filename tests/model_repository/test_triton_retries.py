"""Transient faults of a served encoder are retried; what the input caused is a BadRequest at once.

A real encoder (audio_aisfx's code and weights) served by the session's real Triton under another
name, configured to fail its first forward passes on purpose (served_encoders' test-only
`fail_first` / `fail_with` parameters): CUDA and CPU out-of-memory, MemoryError, then an
unexpected RuntimeError. The first two kinds must answer 503 and the last 500, so that
TritonClient waits and retries them (counted in mediafm_retries_total{service="triton"}),
while inputs the encoder cannot take still answer 400 and raise BadRequest without a retry.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time

import numpy as np
import pytest

from mediafm.errors import BadRequest
from mediafm.media.served_encoders import is_out_of_memory, triton_error
from mediafm.retry_metrics import retry_count

KINDS = ["oom", "cpu_oom", "memory", "runtime"]
STATUS = {"oom": "503", "cpu_oom": "503", "memory": "503", "runtime": "500"}


@pytest.fixture(scope="module")
def flaky_model(triton_stack):
    """audio_aisfx copied as `audio_aisfx_flaky`, whose first 2 x len(KINDS) forward passes fail."""
    from mediafm.stack import triton

    name = "audio_aisfx_flaky"
    src, dst = triton_stack.model_repository / "audio_aisfx", triton_stack.model_repository / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    config = (src / "config.pbtxt").read_text()
    config = re.sub(r'name: "audio_aisfx"', f'name: "{name}"', config)
    config += (f'parameters {{ key: "fail_first" value: {{ string_value: "{2 * len(KINDS)}" }} }}\n'
               f'parameters {{ key: "fail_with" value: {{ string_value: "{",".join(KINDS)}" }} }}\n')
    (dst / "config.pbtxt").write_text(config)
    triton.load_model(triton_stack, name)
    try:
        yield name
    finally:
        triton.unload_model(triton_stack, name)
        shutil.rmtree(dst, ignore_errors=True)


def _audio(n: int = 3 * 44100, *, seed: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((1, n)).astype(np.float32) * 0.1
    return {"AUDIO": x, "LENGTH": np.array([[n]], np.int64)}


@pytest.mark.triton
def test_out_of_memory_is_retried_and_bad_input_is_not(triton_stack, flaky_model):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from mediafm.triton_client import TritonClient, _inputs

    # 1. the HTTP status of each injected failure, seen by a plain client without retries
    raw = httpclient.InferenceServerClient(triton_stack.triton_http_url)
    try:
        for kind in KINDS:
            with pytest.raises(InferenceServerException) as err:
                raw.infer(flaky_model, _inputs(httpclient, _audio()),
                          outputs=[httpclient.InferRequestedOutput("EMBEDDING")])
            assert str(err.value.status()) == STATUS[kind], (kind, err.value.status(), err.value.message())
            assert ("out of memory" in err.value.message()) == (STATUS[kind] == "503"), err.value.message()
    finally:
        raw.close()

    async def run():
        client = TritonClient(triton_stack.triton_http_url, backoff_s=(0.05, 0.2))
        try:
            # 2. the same failures again through TritonClient: waited out, nothing raised
            before = retry_count("triton")
            out = (await client.infer(flaky_model, _audio(), ["EMBEDDING"]))["EMBEDDING"]
            assert out.shape == (1, 512) and np.isfinite(out).all()
            assert retry_count("triton") - before == len(KINDS)

            # 3. inputs the encoder cannot take: BadRequest at once, no retry
            before, t0 = retry_count("triton"), time.monotonic()
            with pytest.raises(BadRequest, match="needs at least 2048"):
                await client.infer(flaky_model, _audio(100), ["EMBEDDING"])
            nan = _audio()
            nan["AUDIO"][0, 10] = np.nan
            with pytest.raises(BadRequest, match="NaN or inf"):
                await client.infer(flaky_model, nan, ["EMBEDDING"])
            assert retry_count("triton") == before and time.monotonic() - t0 < 5
            # and the model still answers good input
            again = (await client.infer(flaky_model, _audio(), ["EMBEDDING"]))["EMBEDDING"]
            np.testing.assert_allclose(again, out, atol=1e-5)
        finally:
            await client.close()

    asyncio.run(run())


class _PB:
    """The little of triton_python_backend_utils that triton_error uses."""

    class TritonError:
        INVALID_ARG, UNAVAILABLE, INTERNAL = "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

        def __init__(self, message: str, code: str) -> None:
            self.message, self.code = message, code


def test_error_mapping_blames_the_input_only_for_what_it_caused():
    import torch

    cases = [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "UNAVAILABLE"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes"), "UNAVAILABLE"),
        (MemoryError(), "UNAVAILABLE"),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), "INTERNAL"),
        (KeyError("x"), "INTERNAL"),
        (ValueError("FRAMES must be (N, F, H, W, 3)"), "INVALID_ARG"),
        (TypeError("expected uint8"), "INVALID_ARG"),
    ]
    for e, code in cases:
        assert triton_error(_PB, "video encoder", e).code == code, (e, code)
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(ValueError("out of memory"))
    # MediaFM's forward pass runs on inputs its _check accepted: no failure there is the input's
    assert triton_error(_PB, "mediafm", ValueError("shape"), input_errors=()).code == "INTERNAL"


def test_mediafm_forward_failures_answer_5xx_and_bad_windows_400():
    """MediaFM's served model (mediafm/served_mediafm.py) with a stand-in for pb_utils: a window its _check
    refuses is INVALID_ARG for that request alone; a forward pass out of memory is UNAVAILABLE for every request
    in it (retried by the client), never INVALID_ARG."""
    from types import SimpleNamespace

    import torch

    from mediafm.served_mediafm import TritonPythonModel

    class PB(_PB):
        class InferenceResponse:
            def __init__(self, output_tensors=None, error=None):
                self.output_tensors, self.error = output_tensors, error

        class Tensor:
            def __init__(self, name, array):
                self.name, self.array = name, array

        @staticmethod
        def get_input_tensor_by_name(request, name):
            return SimpleNamespace(as_numpy=lambda: request[name])

    def request(T=4, D=8, length=4):
        return {"SHOTS": np.ones((1, T, D), np.float32), "TITLE": np.ones((1, 3), np.float32),
                "LENGTH": np.array([[length]], np.int64)}

    model = TritonPythonModel()
    model.pb, model.device, model.cfg = PB, "cpu", SimpleNamespace(fused_dim=8, max_shots=16, title_dim=3)
    model.encoder = lambda shots, title, length: (torch.zeros(*shots.shape[:2], 5), torch.zeros(*shots.shape))
    ok, bad = model.execute([request(), request(length=9)])
    assert ok.error is None and ok.output_tensors[0].array.shape == (1, 4, 5)
    assert bad.error.code == "INVALID_ARG" and "LENGTH must be in [1, 4]" in bad.error.message

    def oom(*a):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    model.encoder = oom
    first, second, refused = model.execute([request(), request(T=2, length=2), request(D=7)])
    assert first.error.code == second.error.code == "UNAVAILABLE" and "out of memory" in first.error.message
    assert refused.error.code == "INVALID_ARG"

    def bug(*a):
        raise ValueError("a bug in the model, not in the input")

    model.encoder = bug
    (only,) = model.execute([request()])
    assert only.error.code == "INTERNAL"


def test_the_fusion_backend_blames_the_input_only_for_what_it_caused(monkeypatch):
    """The fusion backend answered INVALID_ARG (400) for every failure, so a server out of memory had good shots
    dead-lettered. Now, as the encoders: a request its input spoils (widths of no profile, NaN) is INVALID_ARG for
    itself alone, out of memory UNAVAILABLE and anything else INTERNAL (both retried by the client), and the other
    requests of the batch are fused."""
    import importlib.util
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from mediafm.fusion import fuse
    from mediafm.profiles import OFFLINE

    class PB(_PB):
        Tensor = staticmethod(lambda name, array: (name, array))
        InferenceResponse = staticmethod(lambda output_tensors=None, error=None: SimpleNamespace(
            outputs=output_tensors, error=error))
        get_output_config_by_name = staticmethod(lambda config, name: {"data_type": "TYPE_FP32"})
        triton_string_to_numpy = staticmethod(lambda s: np.float32)
        get_input_tensor_by_name = staticmethod(lambda request, name: SimpleNamespace(
            as_numpy=lambda: request[name]))

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", PB)
    path = Path(__file__).resolve().parents[2] / "model_repository" / "fusion" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("fusion_backend_under_test", path)
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    model = backend.TritonPythonModel()
    model.initialize({"model_config": "{}"})
    lay = OFFLINE.layout
    rng = np.random.default_rng(0)

    def request(video_width=lay.dims["video"], marker=0.0):
        v = rng.standard_normal((2, video_width)).astype(np.float32)
        v[:, 0] = marker
        return {"VIDEO": v, "AUDIO": rng.standard_normal((2, lay.dims["audio"])).astype(np.float32),
                "TEXT": rng.standard_normal((2, lay.dims["text"])).astype(np.float32),
                "PRESENT": np.ones((2, 3), bool)}

    def failing(v, a, t, p, *, layout):  # what a server under memory pressure or with a bug raises
        if v[0, 0] == 7.0:
            raise MemoryError()
        if v[0, 0] == 8.0:
            raise KeyError("a bug")
        return fuse(v, a, t, p, layout=layout)

    monkeypatch.setattr(backend, "fuse", failing)
    good, nan = request(), request()
    nan["AUDIO"][0, 0] = np.nan
    out = model.execute([good, request(video_width=5), nan, request(marker=7.0), request(marker=8.0)])
    assert [r.error.code if r.error else None for r in out] == [None, "INVALID_ARG", "INVALID_ARG", "UNAVAILABLE",
                                                                "INTERNAL"]
    np.testing.assert_allclose(out[0].outputs[0][1], fuse(good["VIDEO"], good["AUDIO"], good["TEXT"],
                                                          good["PRESENT"], layout=lay))
