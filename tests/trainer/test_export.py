"""mediafm export -> a real Triton serves the new version; the old one answers until then."""

import json
import threading
import time

import numpy as np
import pytest
import torch

from mediafm.errors import BadRequest, ModelError
from mediafm.fusion import Layout
from mediafm.served_mediafm import load_encoder
from mediafm.stack import triton
from mediafm.synth import write_corpus
from mediafm.triton_client import infer_sync
from trainer import export as export_mod
from trainer.export import export
from trainer.train import TrainConfig, train

pytestmark = pytest.mark.triton
LAYOUT = Layout("test", video=32, audio=32, text=32, title=32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    data = write_corpus(d / "data", n_titles=30, layout=LAYOUT, seed=0, shots=(10, 40))
    tc = TrainConfig(config="tiny", max_steps=5, batch_size=4, eval_every=5, ckpt_every=5, val_batches=1)
    train(data, d / "run", tc, quiet=True)
    return d / "run"


def _window(T=30, seed=0):
    rng = np.random.default_rng(seed)
    return {"SHOTS": rng.normal(size=(2, T, 96)).astype(np.float32), "TITLE": rng.normal(size=(2, 32)).astype(np.float32),
            "LENGTH": np.array([[T], [T // 2]], np.int64)}


def _served_version(settings) -> str:
    """The version requests without a version number get: the newest ready (two are kept loaded)."""
    ready = triton.ready_versions(settings).get("mediafm", [])
    assert 1 <= len(ready) <= 2, ready
    return str(max(int(v) for v in ready))


def test_export_serves_and_matches_in_process(triton_stack, run):
    version, path, loaded = export(run, settings=triton_stack, model="mediafm")
    assert loaded
    assert _served_version(triton_stack) == str(version)
    lineage = json.loads((path / "lineage.json").read_text())
    assert lineage["step"] == 5 and lineage["dataset"] and "val_loss" in lineage["metrics"]
    x = _window()
    out = infer_sync(triton_stack.triton_http_url, "mediafm", x, ["HIDDEN", "OUTPUT"])
    enc = load_encoder(path)
    with torch.no_grad():
        h, o = enc(torch.from_numpy(x["SHOTS"]), torch.from_numpy(x["TITLE"]), torch.from_numpy(x["LENGTH"].ravel()))
    # same code, same weights, same CPU kernels: agreement to float32 rounding
    np.testing.assert_allclose(out["HIDDEN"], h.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["OUTPUT"], o.numpy(), atol=1e-5)


def test_new_version_loads_while_the_old_keeps_answering(triton_stack, run):
    before, _, _ = export(run, settings=triton_stack, model="mediafm")
    errors, answered, stop = [], [], threading.Event()

    def client():
        import tritonclient.http as http

        c = http.InferenceServerClient(triton_stack.triton_http_url)
        while not stop.is_set():
            x = _window(12)
            inputs = []
            for name, arr in x.items():
                i = http.InferInput(name, list(arr.shape), "INT64" if arr.dtype == np.int64 else "FP32")
                i.set_data_from_numpy(arr)
                inputs.append(i)
            try:
                res = c.infer("mediafm", inputs)
                answered.append(int(res.get_response()["model_version"]))
            except Exception as e:  # any failed request during the swap is a failure of the test
                errors.append(repr(e))
        c.close()

    def wait_for(cond, what: str) -> None:
        deadline = time.monotonic() + 60
        while not cond():
            assert time.monotonic() < deadline and not errors, f"{what}: {errors[:3]}"
            time.sleep(0.05)

    t = threading.Thread(target=client)
    t.start()
    try:
        wait_for(lambda: answered, "the old version answers before the export")
        version, _, _ = export(run, settings=triton_stack, model="mediafm")
        seen = len(answered)
        wait_for(lambda: len(answered) > seen + 2, "requests after the export")  # the new one answers them
    finally:
        stop.set()
        t.join()
    assert version == before + 1 and _served_version(triton_stack) == str(version)
    assert not errors, errors[:3]
    # the old version answered until the swap, the new one after it; never a mix afterwards
    assert answered[0] == before and answered[-1] == version
    assert answered == sorted(answered), answered


def test_non_finite_weights_are_rejected_before_anything_is_written(triton_stack, run, tmp_path):
    ckpt = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(ckpt, weights_only=False)
    state["model"]["encoder.in_proj.weight"][0, 0] = float("nan")
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    repo = triton_stack.model_repository / "mediafm"
    before = sorted(p.name for p in repo.iterdir())
    with pytest.raises(ModelError, match="NaN/inf in 1 tensors"):
        export(run, settings=triton_stack, model="mediafm", checkpoint=bad)
    assert sorted(p.name for p in repo.iterdir()) == before


def test_version_triton_refuses_is_moved_aside_and_old_keeps_serving(triton_stack, run, monkeypatch):
    export(run, settings=triton_stack, model="mediafm")  # this module's 96-d model, whatever other tests served
    old = _served_version(triton_stack)
    monkeypatch.setattr(export_mod, "MODEL_PY", "raise RuntimeError('broken on purpose')\n")
    with pytest.raises(ModelError, match=rf"Triton refused version {int(old) + 1}.*version {old} keeps serving"):
        export(run, settings=triton_stack, model="mediafm")
    assert _served_version(triton_stack) == old
    assert not (triton_stack.model_repository / "mediafm" / str(int(old) + 1)).exists()
    assert list((triton_stack.model_repository / "mediafm").glob(f".rejected-{int(old) + 1}-*"))
    assert infer_sync(triton_stack.triton_http_url, "mediafm", _window(), ["HIDDEN"])["HIDDEN"].shape == (2, 30, 64)


def test_bad_window_is_an_error_response(triton_stack, run):
    export(run, settings=triton_stack, model="mediafm")
    x = _window()
    x["SHOTS"] = x["SHOTS"][:, :, :50]
    with pytest.raises(BadRequest, match="SHOTS has dim 50, this model takes fused_dim=96"):
        infer_sync(triton_stack.triton_http_url, "mediafm", x, ["HIDDEN"])


def test_the_cli_names_the_model_it_exported_to(tmp_path, monkeypatch, capsys):
    """`mediafm export` said 'as mediafm version N' whatever model the run's widths chose (mediafm_offline for
    the offline profile's), and its --help named model_repository/mediafm/ only."""
    from mediafm.cli import main
    from mediafm.config import REPO_ROOT
    from mediafm.profiles import OFFLINE

    data = write_corpus(tmp_path / "data", n_titles=6, layout=OFFLINE.layout, seed=0, shots=(20, 40))
    run = tmp_path / "run"
    train(data, run, TrainConfig(config="tiny", max_steps=2, batch_size=2, eval_every=2, ckpt_every=2,
                                 val_batches=1), quiet=True)

    for config in (REPO_ROOT / "model_repository").glob("mediafm*/config.pbtxt"):  # the models, no versions
        (tmp_path / "repo" / config.parent.name).mkdir(parents=True)
        (tmp_path / "repo" / config.parent.name / "config.pbtxt").write_bytes(config.read_bytes())
    monkeypatch.setenv("MEDIAFM_MODEL_REPOSITORY", str(tmp_path / "repo"))
    monkeypatch.setenv("MEDIAFM_STATE_DIR", str(tmp_path / "state"))
    assert main(["export", "--run", str(run), "--no-load"]) == 0
    (model,) = [p.parent.name for p in (tmp_path / "repo").glob("*/1")]
    assert model == "mediafm_offline"
    assert f"as {model} version 1 ({tmp_path / 'repo' / model / '1'})" in capsys.readouterr().out


def test_a_checkpoint_path_that_is_not_there_is_named(tmp_path, run):
    """A mistyped --checkpoint was answered "no checkpoint in RUN/checkpoints; train first", though the run had
    good ones."""
    from pathlib import Path

    from mediafm.config import Settings

    missing = Path(run) / "checkpoints" / "step-9999999.pt"
    with pytest.raises(ModelError, match=r"--checkpoint .*step-9999999\.pt: no such checkpoint file \(the run's are"):
        export(run, settings=Settings(state_dir=tmp_path), checkpoint=missing, load=False)


def test_a_run_no_profile_feeds_is_not_exported_into_the_production_model(tmp_path, run):
    """A 96/32 run (a synthetic layout) went to `mediafm`, the production model, whenever no profile matched: Triton
    loaded it (its dims are -1) and then refused every production window ("SHOTS has dim 2304") until the next
    export. Now it is refused, naming the profiles' widths, unless --model names where it goes."""
    from mediafm.config import Settings

    repo = tmp_path / "repo"
    with pytest.raises(ModelError, match=r"takes fused_dim=96, title_dim=32, which no encoder profile feeds "
                                         r"\(production 2304/768, offline 2176/384\).*--model NAME"):
        export(run, settings=Settings(state_dir=tmp_path, model_repository=repo), load=False)
    assert not repo.exists()


def test_a_model_of_windows_under_8_shots_is_checked_and_exported(tmp_path):
    """check_encoder ran an 8-shot window whatever the model took: a run with --max_shots 4 failed its export with
    an AssertionError (a traceback), though live_right_context 2 serves it."""
    from mediafm.config import REPO_ROOT, Settings

    data = write_corpus(tmp_path / "data", n_titles=6, layout=LAYOUT, seed=0, shots=(10, 20))
    train(data, tmp_path / "run", TrainConfig(config="tiny", max_steps=1, batch_size=2, eval_every=1, ckpt_every=1,
                                              val_batches=1), {"max_shots": 4}, quiet=True)
    (tmp_path / "repo" / "mediafm").mkdir(parents=True)
    (tmp_path / "repo" / "mediafm" / "config.pbtxt").write_bytes(
        (REPO_ROOT / "model_repository" / "mediafm" / "config.pbtxt").read_bytes())
    version, path, loaded = export(tmp_path / "run", settings=Settings(state_dir=tmp_path, live_right_context=2,
                                                                        model_repository=tmp_path / "repo"),
                                   load=False, model="mediafm")
    assert (version, loaded) == (1, False) and path == tmp_path / "repo" / "mediafm" / "1"


def _repo(tmp_path):
    from mediafm.config import REPO_ROOT, Settings

    (tmp_path / "repo" / "mediafm").mkdir(parents=True)
    (tmp_path / "repo" / "mediafm" / "config.pbtxt").write_bytes(
        (REPO_ROOT / "model_repository" / "mediafm" / "config.pbtxt").read_bytes())
    return Settings(state_dir=tmp_path / "state", model_repository=tmp_path / "repo")


@pytest.mark.parametrize("fault", ["load times out", "never ready"])
def test_a_load_triton_does_not_answer_or_finish_is_rolled_back(tmp_path, run, monkeypatch, fault):
    """Only a load Triton answered with an HTTP error was rolled back. A load that timed out (or a Triton gone
    between `live` and the load: URLError) and a version never ready left the new version and its max_shots in
    config.pbtxt in place. Now each is moved aside and config.pbtxt restored, as for a refusal."""
    settings = _repo(tmp_path)
    model_dir = settings.model_repository / "mediafm"
    export(run, settings=settings, model="mediafm", load=False)  # version 1, served before
    config = (model_dir / "config.pbtxt").read_text()
    loads = []

    def load_model(s, name):
        loads.append(name)
        if fault == "load times out" and len(loads) == 1:
            raise TimeoutError("timed out")

    monkeypatch.setattr(triton, "live", lambda s: True)
    monkeypatch.setattr(triton, "load_model", load_model)
    monkeypatch.setattr(triton, "model_ready", lambda s, name, version: False)
    match = "did not answer the load of version 2" if fault == "load times out" else "not ready after 0s"
    with pytest.raises(ModelError, match=rf"{match}.*; moved it to .*\.rejected-2-.*version 1 keeps serving"):
        export(run, settings=settings, model="mediafm", timeout_s=0.0)
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".rejected")) == ["1", "config.pbtxt"]
    assert (model_dir / "config.pbtxt").read_text() == config
    assert loads == ["mediafm", "mediafm"], "the old version set loaded again"


def test_a_version_is_on_disk_before_it_takes_its_name_and_a_race_for_it_is_named(tmp_path, run, monkeypatch):
    """Its files and folder are fsynced before the rename, and the model folder after it (before, a power cut
    soon after an export could leave an empty model.pt under a valid version, and Triton then unloaded the whole
    set). A second export that took the same version number meanwhile: a ModelError saying so, its staging gone
    (before, a bare OSError and a .staging folder left behind)."""
    import os

    settings = _repo(tmp_path)
    model_dir = settings.model_repository / "mediafm"
    synced, renamed = [], []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rename(a, b):
        renamed.append((str(a), len(synced)))
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    export(run, settings=settings, model="mediafm", load=False)
    (staging, before), = renamed
    assert {f"{staging}/model.pt", f"{staging}/model.py", staging} <= set(synced[:before])
    assert str(model_dir) in synced[before:]

    monkeypatch.setattr(export_mod, "versions", lambda d: [])  # another export wrote version 1 meanwhile
    with pytest.raises(ModelError, match=r"mediafm/1 appeared while this export wrote it .*another export took "
                                         r"version 1; run this one again"):
        export(run, settings=settings, model="mediafm", load=False)
    assert not list(model_dir.glob(".staging-*"))
