"""trainer: optimizer groups, schedule, exact resume, learning, baselines, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from mediafm.errors import ConfigError
from mediafm.fusion import Layout
from mediafm.model import CONFIGS, MaskedShotModel, MediaFMConfig
from mediafm.synth import write_corpus
from trainer.train import TrainConfig, latest_checkpoint, lr_factor, parse_overrides, setup_optimizers, train

LAYOUT = Layout("test", video=32, audio=32, text=32, title=32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A structured synthetic corpus (scenes, shot/reverse-shot, dialogue): 160 titles, less noisy than the
    benchmark default so that a tiny model learns it in a few hundred steps."""
    return write_corpus(tmp_path_factory.mktemp("data") / "synth", n_titles=160, layout=LAYOUT, seed=0,
                        shots=(20, 80), val_fraction=0.1, test_fraction=0.0, noise=0.5)


def test_optimizer_groups_cover_every_parameter_once():
    model = MaskedShotModel(MediaFMConfig(**{**CONFIGS["tiny"], "fused_dim": 96, "title_dim": 32}))
    muon, adamw = setup_optimizers(model, TrainConfig(config="tiny"))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    adamw_ids = {id(p) for g in adamw.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert muon_ids.isdisjoint(adamw_ids) and muon_ids | adamw_ids == set(names)
    assert sorted(names[i].split(".", 3)[-1] for i in muon_ids) == sorted(
        ["attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight"] * 2)
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert "mask_token" in {names[i] for i in adamw_ids} and "encoder.cls" in {names[i] for i in adamw_ids}
    (only,) = setup_optimizers(model, TrainConfig(config="tiny", optimizer="adamw"))  # the ablation
    assert {id(p) for g in only.param_groups for p in g["params"]} == set(names)
    mixed = MaskedShotModel(MediaFMConfig(**{**CONFIGS["tiny"], "fused_dim": 96, "title_dim": 32, "copy_mix": 4}))
    _, adamw = setup_optimizers(mixed, TrainConfig(config="tiny", weight_decay=0.1))
    decayed = {id(p) for g in adamw.param_groups if g["weight_decay"] for p in g["params"]}
    assert id(mixed.encoder.copy_gate.weight) in decayed and id(mixed.encoder.copy_gate.bias) not in decayed


def test_schedule_warms_up_then_decays_to_the_floor():
    tc = TrainConfig(config="tiny", max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(s, tc) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[100] == pytest.approx(0.1)


def test_overrides_are_typed_and_unknown_keys_rejected():
    train_over, model_over = parse_overrides(["--lr_muon", "0.01", "--hidden", "128", "--compile", "true"])
    assert train_over == {"lr_muon": 0.01, "compile": True} and model_over == {"hidden": 128}
    with pytest.raises(ConfigError, match="unknown key --hiden"):
        parse_overrides(["--hiden", "128"])
    with pytest.raises(ConfigError, match="--max_steps 'many' is not a valid int"):
        parse_overrides(["--max_steps", "many"])


def _cfg(**kw):
    return TrainConfig(**{"config": "tiny", "batch_size": 8, "eval_every": 1000, "ckpt_every": 3, "warmup_steps": 2,
                          "val_batches": 2, **kw})


def test_resume_continues_exactly(corpus, tmp_path):
    """6 steps in one go == 4 steps, stop, resume for 2 more: same weights, bit for bit."""
    over = {"dropout": 0.1}  # dropout makes the RNG state matter
    train(corpus, tmp_path / "a", _cfg(max_steps=6), over, quiet=True)
    train(corpus, tmp_path / "b", _cfg(max_steps=6), over, quiet=True, until_step=4)  # preempted at step 4
    train(corpus, tmp_path / "b", _cfg(max_steps=6), over, quiet=True)
    a = torch.load(tmp_path / "a" / "checkpoints" / "step-0000006.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoints" / "step-0000006.pt", weights_only=False)
    assert a["data"] == b["data"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert len(list((tmp_path / "b" / "checkpoints").glob("step-*.pt"))) == 2, "keeps the last two"


def test_a_finished_run_trained_again_returns_its_last_validation(corpus, tmp_path):
    """`make demo` or a bench that finds its run already at max_steps: no step is left to run, and the result still
    carries the run's validation (it came back without one, printed as val loss nan, "does not beat both")."""
    first = train(corpus, tmp_path / "r", _cfg(max_steps=3), quiet=True)
    assert {"val_loss", "title_mean", "neighbours"} <= first.keys()
    again = train(corpus, tmp_path / "r", _cfg(max_steps=3), quiet=True)
    assert again["step"] == 3
    assert {k: again[k] for k in ("val_loss", "title_mean", "neighbours")} == \
        {k: first[k] for k in ("val_loss", "title_mean", "neighbours")}
    assert len(list((tmp_path / "r" / "checkpoints").glob("step-*.pt"))) == 1, "nothing trained or saved again"


def test_a_resumed_run_measures_its_baselines_again(corpus, tmp_path):
    """--val_batches may change on resume: the baselines are then measured on the new windows, as val_loss is,
    not carried from the checkpoint's validation."""
    train(corpus, tmp_path / "r", _cfg(max_steps=3, val_batches=1), quiet=True)
    resumed = train(corpus, tmp_path / "r", _cfg(max_steps=6, val_batches=3), quiet=True)
    fresh = train(corpus, tmp_path / "f", _cfg(max_steps=6, val_batches=3), quiet=True)
    assert resumed["title_mean"] == pytest.approx(fresh["title_mean"])
    assert resumed["neighbours"] == pytest.approx(fresh["neighbours"])
    three = torch.load(tmp_path / "r" / "checkpoints" / "step-0000003.pt", weights_only=False)["metrics"]
    assert three["title_mean"] != pytest.approx(resumed["title_mean"]), "1 batch against 3: other windows"


class _OnTheGpu:
    """An RNG state as `torch.load(map_location="cuda")` gives it: set_state refuses it (TypeError: RNG state must
    be a torch.ByteTensor) until `.cpu()`. The stand-in for a GPU this machine does not have."""

    def __init__(self, t: torch.Tensor):
        self.t = t

    def cpu(self) -> torch.Tensor:
        return self.t


def test_a_run_resumes_from_a_checkpoint_mapped_to_the_gpu(corpus, tmp_path, monkeypatch):
    """On a GPU the checkpoint is read with map_location=device, which moves the saved RNG states there too; every
    resume of a GPU run raised TypeError before they were brought back to the CPU."""
    import trainer.train as train_mod

    real = train_mod.read_checkpoint

    def on_the_gpu(path, *, device="cpu"):
        state = real(path, device=device)
        state["rng"] = {k: _OnTheGpu(v) for k, v in state["rng"].items()}
        return state

    train(corpus, tmp_path / "a", _cfg(max_steps=4), quiet=True)
    train(corpus, tmp_path / "b", _cfg(max_steps=4), quiet=True, until_step=2)
    monkeypatch.setattr(train_mod, "read_checkpoint", on_the_gpu)
    train(corpus, tmp_path / "b", _cfg(max_steps=4), quiet=True)
    a, b = (torch.load(latest_checkpoint(tmp_path / r), weights_only=False)["model"] for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed exactly, from the states brought back to the CPU"


def test_the_log_passes_over_a_line_cut_short_and_keeps_a_steps_last_row(tmp_path):
    """A full disk or a kill mid-write leaves part of a row; a resumed run logs again the steps after its
    checkpoint. The plot (at the end of every run, and in `mediafm evaluate`) used to fail on the first for good."""
    from trainer.train import plot_losses, read_log

    rows = [{"step": 1, "train_loss": 0.9}, {"step": 2, "train_loss": 0.8}, {"step": 3, "train_loss": 0.7}]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 4, "train_lo'  # cut short mid-row
                   + json.dumps({"step": 3, "train_loss": 0.6, "val_loss": 0.5}) + "\n")  # the resume, on its tail
    assert read_log(log) == rows, "the glued line passed over, the rows before it kept"
    log.write_text(log.read_text() + json.dumps({"step": 3, "train_loss": 0.65, "val_loss": 0.55}) + "\n")
    assert read_log(log)[-1] == {"step": 3, "train_loss": 0.65, "val_loss": 0.55}, "the step's last row"
    assert plot_losses(tmp_path).exists()


def test_resume_refuses_another_config(corpus, tmp_path):
    train(corpus, tmp_path / "r", _cfg(max_steps=3), quiet=True)
    with pytest.raises(ConfigError, match="holds a run with another config"):
        train(corpus, tmp_path / "r", _cfg(max_steps=6, lr_muon=0.5), quiet=True)


def test_resume_refuses_another_dataset_and_takes_the_same_one_moved(corpus, tmp_path):
    """Before 2026-12-08 a run resumed on whatever --data said: a dataset of other titles (a later sink, another
    corpus) continued the saved epoch and position over another title order, and nothing said so."""
    import shutil

    train(corpus, tmp_path / "r", _cfg(max_steps=2), quiet=True)
    other = write_corpus(tmp_path / "other", n_titles=150, layout=LAYOUT, seed=0, noise=0.8)
    with pytest.raises(ConfigError, match=r"trained on another dataset .*'train_titles': \(\d+, \d+\).*pass a new --out"):
        train(other, tmp_path / "r", _cfg(max_steps=4), quiet=True)
    moved = shutil.copytree(corpus, tmp_path / "moved")  # the same dataset elsewhere: resumed
    train(moved, tmp_path / "r", _cfg(max_steps=4), quiet=True)
    assert torch.load(latest_checkpoint(tmp_path / "r"), weights_only=False)["step"] == 4


def test_a_run_resumes_whatever_its_inference_only_settings_say(corpus, tmp_path, capsys):
    """copy_wide, copy_span, sharp_span act at inference only: a run trained with other values (or from before
    a key existed) resumes exactly as if they had never changed, says what it now serves, and its checkpoint
    records the new values at once, also when no step is left to run (an export reads them from there)."""
    train(corpus, tmp_path / "a", _cfg(max_steps=6), quiet=True)
    train(corpus, tmp_path / "r", _cfg(max_steps=6), {"sharp_span": 0, "copy_span": 4, "copy_wide": 0.0}, quiet=True,
          until_step=3)  # preempted at step 3
    ckpt = latest_checkpoint(tmp_path / "r")
    state = torch.load(ckpt, weights_only=False)
    del state["model_config"]["sharp_span"]  # as checkpoints were written before the field existed
    torch.save(state, ckpt)
    assert train(corpus, tmp_path / "r", _cfg(max_steps=6), quiet=True)["step"] == 6
    assert "copy_span=16 (was 4)" in capsys.readouterr().err
    a, r = (torch.load(latest_checkpoint(tmp_path / x), weights_only=False) for x in ("a", "r"))
    for k in a["model"]:  # the same weights as a run that never had other inference-only values
        assert torch.equal(a["model"][k], r["model"][k]), k
    tiny = CONFIGS["tiny"]
    assert {k: r["model_config"][k] for k in ("copy_wide", "copy_span", "sharp_span")} == {
        k: tiny[k] for k in ("copy_wide", "copy_span", "sharp_span")}
    train(corpus, tmp_path / "r", _cfg(max_steps=6), {"sharp_span": 0}, quiet=True)  # finished: no step to run
    assert torch.load(latest_checkpoint(tmp_path / "r"), weights_only=False)["model_config"]["sharp_span"] == 0
    with pytest.raises(ConfigError, match=r"'dropout': \(0.0, 0.2\)"):  # a setting training reads still refuses
        train(corpus, tmp_path / "r", _cfg(max_steps=9), {"dropout": 0.2}, quiet=True)


def test_a_run_from_before_the_head_setting_resumes_as_projection(corpus, tmp_path):
    train(corpus, tmp_path / "r", _cfg(max_steps=3), {"head": "projection"}, quiet=True)
    ckpt = latest_checkpoint(tmp_path / "r")
    state = torch.load(ckpt, weights_only=False)
    del state["model_config"]["head"]  # as checkpoints were written before the field existed
    torch.save(state, ckpt)
    with pytest.raises(ConfigError, match=r"'head': \('projection', 'copy'\)"):  # the default is now copy
        train(corpus, tmp_path / "r", _cfg(max_steps=6), quiet=True)
    assert train(corpus, tmp_path / "r", _cfg(max_steps=6), {"head": "projection"}, quiet=True)["step"] == 6


def test_tiny_model_overfits_a_small_dataset(tmp_path):
    data = write_corpus(tmp_path / "small", n_titles=4, layout=LAYOUT, seed=3, shots=(20, 30), val_fraction=0,
                        test_fraction=0)
    result = train(data, tmp_path / "run", _cfg(max_steps=300, batch_size=4, lr_adamw=3e-3, ckpt_every=1000),
                   {"n_layers": 2, "head": "projection"}, quiet=True)  # the copy head cannot memorise
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first, last = sum(r["train_loss"] for r in rows[:10]) / 10, sum(r["train_loss"] for r in rows[-10:]) / 10
    assert last < 0.45 and last < first / 2, (first, last)
    assert result["step"] == 300


@pytest.mark.slow
def test_trained_model_beats_both_baselines_on_held_out_titles(corpus, tmp_path):
    result = train(corpus, tmp_path / "run", _cfg(max_steps=600, eval_every=600, lr_adamw=3e-3, val_batches=8),
                   quiet=True)
    assert result["val_loss"] < result["title_mean"] and result["val_loss"] < result["neighbours"], result


def test_cli_writes_log_plot_and_checkpoints(corpus, tmp_path):
    run = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", "train", "--data", str(corpus), "--out", str(run),
                        "--config", "tiny", "--max_steps", "4", "--eval_every", "2", "--batch_size", "4"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["step"] == 4 and {"val_loss", "title_mean", "neighbours"} <= set(out)
    assert (run / "loss.png").stat().st_size > 10_000
    assert (run / "checkpoints" / "latest.json").exists()
    assert "baselines: title mean" in r.stdout  # printed beside the validation loss
    bad = subprocess.run([sys.executable, "-m", "mediafm.cli", "train", "--data", str(corpus), "--out", str(run),
                          "--config", "tiny", "--bogus", "1"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "unknown key --bogus" in bad.stderr


@pytest.mark.slow
def test_torchrun_ddp_runs_without_code_changes(corpus, tmp_path):
    """Two processes, gloo on CPU: the same entry point as a multi-GPU run."""
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "trainer.train",
                        "--data", str(corpus), "--out", str(run), "--config", "tiny", "--max_steps", "4",
                        "--eval_every", "4", "--batch_size", "4", "--val_batches", "1"],
                       capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    ckpt = torch.load(run / "checkpoints" / "step-0000004.pt", weights_only=False)
    # rank 0 took batches 0, 2, 4, 6 of the plan (rank 1 took the odd ones): its position is 7
    assert ckpt["step"] == 4 and ckpt["data"]["batch"] == 7
    # each rank's own mask stream, saved for its resume (before: one seed, the same masks on every rank)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert not torch.equal(ckpt["rng_ranks"][0]["mask"], ckpt["rng_ranks"][1]["mask"])
    assert torch.equal(ckpt["rng_ranks"][0]["mask"], ckpt["rng"]["mask"])
    again = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "trainer.train",
                            "--data", str(corpus), "--out", str(run), "--config", "tiny", "--max_steps", "6",
                            "--eval_every", "4", "--batch_size", "4", "--val_batches", "1"],
                           capture_output=True, text=True, cwd=REPO, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and "resuming" in again.stdout, again.stderr[-3000:]


def test_muon_on_cpu_orthogonalises_in_float32_like_torch_does_in_bf16():
    from torch.optim import _muon

    from trainer.train import _newton_schulz_fp32, use_fp32_newton_schulz_on_cpu

    g = torch.randn(300, 96, generator=torch.Generator().manual_seed(0))
    coeffs = (3.4445, -4.775, 2.0315)
    ours = _newton_schulz_fp32(g, coeffs, 5, 1e-7)
    assert ours.dtype == torch.float32 and ours.shape == g.shape
    assert use_fp32_newton_schulz_on_cpu()
    routed = _muon._zeropower_via_newtonschulz(g, coeffs, 5, 1e-7)
    assert torch.equal(routed, ours), "CPU tensors take the float32 path"
    # the same iteration as torch's bf16 one: singular values pushed into ~[0.5, 1.5]
    s = torch.linalg.svdvals(ours)
    assert 0.3 < s.min() and s.max() < 1.6, s


def test_per_modality_loss_scores_each_present_slice_once():
    from trainer.train import per_modality_loss

    slices = [(0, 2), (2, 4), (4, 6)]  # video | audio | text
    target = torch.tensor([[[1.0, 0, 1, 0, 0, 0]]])  # text absent (zeros): not scored
    pred = torch.tensor([[[2.0, 0, 0, 1, 9, 9]]])  # video right (cos 1), audio orthogonal (cos 0)
    where = torch.tensor([[True]])
    assert per_modality_loss(pred, target, where, slices).item() == pytest.approx(0.5)  # (0 + 1) / 2


def test_contrastive_loss_pays_for_telling_a_shot_from_the_other_masked_shots():
    from trainer.train import contrastive_loss

    target = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]])  # two look-alikes and one apart
    where = torch.tensor([[True, True, True]])
    exact = contrastive_loss(target, target, where)
    shared = target.mean(1, keepdim=True).expand_as(target)  # what the three share: the cosine loss's compromise
    chance = torch.log(torch.tensor(3.0)).item()  # one prediction for all three is at best chance (Jensen)
    assert exact.item() < chance <= contrastive_loss(shared, target, where).item() + 1e-6
    # the two look-alikes are told apart by their small difference: a prediction of each as the other costs more
    swapped = target[:, [1, 0, 2]]
    assert contrastive_loss(swapped, target, where).item() > exact.item()
    # by hand: the batch's cosine matrix over the temperature 0.1, cross-entropy to the diagonal
    cos = torch.nn.functional.normalize(target[0], dim=-1) @ torch.nn.functional.normalize(target[0], dim=-1).T
    expected = torch.nn.functional.cross_entropy(cos / 0.1, torch.arange(3))
    assert exact.item() == pytest.approx(expected.item(), rel=1e-5)


def test_contrastive_weight_adds_infonce_over_the_masked_shots_to_the_cosine_loss():
    from trainer.train import contrastive_loss, msm_loss, objective

    g = torch.Generator().manual_seed(0)
    shots, pred = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    mask = torch.tensor([[True, False, True, False, False], [False, True, False, False, True]])
    lengths = torch.tensor([5, 5])
    cosine = objective(pred, shots, lengths, mask, TrainConfig(config="tiny"), [])
    both = objective(pred, shots, lengths, mask, TrainConfig(config="tiny", contrastive_weight=0.1), [])
    assert cosine.item() == pytest.approx(msm_loss(pred, shots, mask).item())
    assert both.item() == pytest.approx(cosine.item() + 0.1 * contrastive_loss(pred, shots, mask).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="0 with loss=contrastive"):  # InfoNCE twice over is not a recipe
        TrainConfig(config="tiny", loss="contrastive", contrastive_weight=0.1)


def test_whitening_lifts_the_directions_where_shots_vary_least(corpus):
    """`--loss whitened`: W = (C + lam I)^-1/2 from the training shots, lam = 0.1 x the mean variance; an error
    along a direction where shots hardly vary costs more than the same error along the strongest one, where the
    raw cosine makes them cost nearly the same; past max_shots it reads every k-th shot of each title."""
    from mediafm.dataset import Dataset
    from mediafm.model import msm_loss
    from trainer.train import whitened_loss, whitening

    ds = Dataset(corpus)
    titles = ds.split("train")
    mean, w = whitening(ds, titles)
    x = torch.from_numpy(np.concatenate([t.fused for t in ds.iter_titles(titles)])).double()
    cov = torch.cov((x - x.mean(0)).T)
    lam = 0.1 * float(cov.trace()) / cov.shape[0]
    eye = torch.eye(cov.shape[0], dtype=torch.float64)
    assert torch.allclose(mean.double(), x.mean(0), atol=1e-5)
    assert torch.allclose(w.double() @ (cov + lam * eye) @ w.double(), eye, atol=1e-3)  # every shot read (< 100k)
    vals, vecs = torch.linalg.eigh(cov)
    weak, strong = vecs[:, 0].float(), vecs[:, -1].float()  # the least and the most varied direction
    assert vals[-1] > 4 * vals[0].clamp(min=0)
    target = x[:4].float()[None]  # (1, 4, D)
    where = torch.ones(1, 4, dtype=torch.bool)
    off_weak, off_strong = target + 0.1 * weak, target + 0.1 * strong
    raw = [msm_loss(p, target, where).item() for p in (off_weak, off_strong)]
    white = [whitened_loss(p, target, where, (mean, w)).item() for p in (off_weak, off_strong)]
    assert white[0] > 3 * white[1], white  # the weak direction lifted ...
    assert raw[0] < 1.5 * raw[1] + 1e-4, raw  # ... where the raw cosine barely tells them apart
    assert whitened_loss(target, target, where, (mean, w)).item() == pytest.approx(0.0, abs=1e-5)
    every = -(-len(x) // (len(x) // 3))  # a cap of a third of the shots: every 3rd or 4th shot
    sub = torch.from_numpy(np.concatenate([t.fused[::every] for t in ds.iter_titles(titles)])).double()
    sub_mean, sub_w = whitening(ds, titles, max_shots=len(x) // 3)
    assert len(sub) <= len(x) // 3 + len(titles) and torch.allclose(sub_mean.double(), sub.mean(0), atol=1e-5)
    assert not torch.allclose(sub_mean, mean, atol=1e-7)
    sub_cov = torch.cov((sub - sub.mean(0)).T)  # ... and its covariance is theirs too, not all the shots'
    sub_eye = sub_w.double() @ (sub_cov + 0.1 * float(sub_cov.trace()) / len(sub_cov) * eye) @ sub_w.double()
    assert torch.allclose(sub_eye, eye, atol=1e-3)


def test_visible_loss_adds_the_weighted_loss_on_unmasked_shots():
    from trainer.train import objective

    shots = torch.tensor([[[1.0, 0], [0, 1.0], [1.0, 1.0], [0, 0]]])  # last position is padding
    lengths = torch.tensor([3])
    mask = torch.tensor([[True, False, False, False]])
    pred = torch.stack([torch.tensor([0, 1.0]), -shots[0, 1], -shots[0, 2], torch.tensor([5.0, 5.0])])[None]
    slices = [(0, 1), (1, 2)]
    base = objective(pred, shots, lengths, mask, TrainConfig(config="tiny"), slices)
    assert base.item() == pytest.approx(1.0)  # masked shot orthogonal to its prediction
    weighted = objective(pred, shots, lengths, mask, TrainConfig(config="tiny", visible_loss_weight=0.5), slices)
    assert weighted.item() == pytest.approx(1.0 + 0.5 * 2.0)  # visible shots predicted as their opposites: 1 - (-1)


def test_modality_dropout_zeroes_whole_slices_of_visible_shots_only():
    from trainer.train import drop_modalities

    torch.manual_seed(0)
    shots = torch.rand(4, 10, 6) + 0.1
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, ::3] = True
    slices = [(0, 2), (2, 4), (4, 6)]
    out = drop_modalities(shots, mask, slices, 0.5, torch.Generator().manual_seed(0))
    dropped = 0
    for lo, hi in slices:
        part, orig = out[..., lo:hi], shots[..., lo:hi]
        zero = (part == 0).all(-1)
        assert torch.equal(part[~zero], orig[~zero]), "a slice is kept whole or zeroed whole"
        assert not zero[mask].any(), "masked shots are left to [MASK]"
        dropped += int(zero.sum())
    assert 0.3 < dropped / (3 * int((~mask).sum())) < 0.7, dropped


def test_partial_views_keep_one_slice_the_shot_has_of_masked_shots_only():
    from trainer.train import partial_views

    torch.manual_seed(0)
    shots = torch.rand(8, 20, 6) + 0.1
    shots[:, 1::2, 4:6] = 0  # every other shot has no timed text
    mask = torch.zeros(8, 20, dtype=torch.bool)
    mask[:, ::2] = mask[:, 1::4] = True
    slices = [(0, 2), (2, 4), (4, 6)]
    view = partial_views(shots, mask, slices, 0.5, torch.Generator().manual_seed(0))
    assert view.shape == shots.shape and not view[~mask].any(), "visible shots are not views"
    kept = torch.stack([view[..., lo:hi].all(-1) for lo, hi in slices], -1)  # (B, T, 3)
    for lo, hi in slices:
        part = view[..., lo:hi]
        assert torch.equal(part.all(-1), part.any(-1)), "a slice is kept whole or not at all"
    assert kept.sum(-1).max() == 1, "a view keeps one slice"
    assert not kept[:, 1::2, 2].any(), "a shot never shows a slice it does not have"
    share = kept.any(-1)[mask].float().mean().item()
    assert 0.35 < share < 0.65, share
    assert kept[:, ::2].any((0, 1)).all(), "every slice is drawn"
    whole = partial_views(shots, mask, slices, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(whole.any(-1), mask), "p = 1: every masked shot keeps a slice"
    assert not partial_views(shots, mask, slices, 0.0, torch.Generator().manual_seed(0)).any()


def test_a_partial_view_reaches_the_model_and_the_loss_still_scores_the_whole_shot():
    torch.manual_seed(0)
    cfg = MediaFMConfig(**{**CONFIGS["tiny"], "fused_dim": 6, "title_dim": 4, "dropout": 0.0})
    model = MaskedShotModel(cfg).eval()
    shots, title, lengths = torch.randn(1, 5, 6), torch.randn(1, 4), torch.tensor([5])
    mask = torch.tensor([[False, True, False, False, False]])
    view = torch.zeros(1, 5, 6, dtype=torch.bool)
    view[0, 1, 0:2] = True
    seen = []
    hook = model.encoder.in_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    _, whole = model(shots, title, lengths, mask)
    _, part = model(shots, title, lengths, mask, view)
    hook.remove()
    token = model.mask_token.detach()
    assert torch.equal(seen[0][0, 1], token), "a whole mask is the token"
    assert torch.equal(seen[1][0, 1, 0:2], shots[0, 1, 0:2]) and torch.equal(seen[1][0, 1, 2:], token[2:])
    assert torch.equal(seen[1][0, [0, 2, 3, 4]], shots[0, [0, 2, 3, 4]]), "visible shots are untouched"
    assert whole.item() != part.item()
    pred, _ = model(shots, title, lengths, mask, view)
    cos = torch.nn.functional.cosine_similarity(pred[0, 1], shots[0, 1], dim=0)
    assert part.item() == pytest.approx(1 - cos.item(), abs=1e-6), "scored against the whole shot"

    # view_copied=False: the transformer sees the view, the copy mixes [MASK] at its position
    seen.clear()
    hook = model.encoder.in_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    steered, _ = model(shots, title, lengths, mask, view, view_copied=False)
    hook.remove()
    assert torch.equal(seen[0][0, 1, 0:2], shots[0, 1, 0:2]), "the transformer sees the view"
    masked = torch.where(mask[..., None], token, shots)
    _, expect = model.encoder(seen[0], title, lengths, wide=False, values=masked)
    assert torch.allclose(steered, expect), "the copy mixes the whole-masked shots"
    _, copied = model.encoder(seen[0], title, lengths, wide=False)
    assert not torch.allclose(steered, copied), "not the view itself"
    assert torch.allclose(model.encoder(shots, title, lengths, wide=False, values=torch.zeros_like(shots))[1],
                          torch.zeros_like(shots)), "values are what the copy mixes"


def test_value_noise_has_the_asked_energy_over_the_slices_visible_shots_have():
    from trainer.train import value_noise

    torch.manual_seed(0)
    shots = torch.nn.functional.normalize(torch.rand(4, 12, 6) + 0.1, dim=-1)
    shots[:, 1::2, 4:6] = 0  # every other shot has no timed text
    lengths = torch.tensor([12, 9, 12, 5])
    mask = torch.zeros(4, 12, dtype=torch.bool)
    mask[:, ::4] = True
    slices = [(0, 2), (2, 4), (4, 6)]
    z = value_noise(shots, mask, lengths, slices, 0.5, torch.Generator().manual_seed(0))
    real = torch.arange(12)[None, :] < lengths[:, None]
    noisy = real & ~mask
    assert not z[~noisy].any(), "no noise at masked shots or padding"
    assert not z[:, 1::2, 4:6].any(), "none in a slice the shot lacks"
    energy = z.pow(2).sum(-1)
    assert torch.allclose(energy[noisy], 0.5 * shots.pow(2).sum(-1)[noisy], rtol=1e-5), "0.5 of each shot's energy"
    assert (z[noisy][:, :4] != 0).all(), "over every slice the shot has"
    again = value_noise(shots, mask, lengths, slices, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(z, again), "the generator decides the draw (a checkpoint resumes it)"
    assert not torch.equal(z, value_noise(shots, mask, lengths, slices, 0.5, torch.Generator().manual_seed(1)))


def test_visible_noise_reaches_the_copy_at_visible_shots_only():
    torch.manual_seed(0)
    cfg = MediaFMConfig(**{**CONFIGS["tiny"], "fused_dim": 6, "title_dim": 4, "dropout": 0.0})
    model = MaskedShotModel(cfg).eval()
    shots, title, lengths = torch.randn(1, 6, 6), torch.randn(1, 4), torch.tensor([5])  # the last is padding
    mask = torch.tensor([[False, True, False, False, False, False]])
    noise = torch.randn(1, 6, 6)
    noise[0, 1] = noise[0, 5] = 0
    clean, loss = model(shots, title, lengths, mask)
    noisy, noisy_loss = model(shots, title, lengths, mask, noise=noise)
    assert torch.equal(noisy[0, 1], clean[0, 1]) and noisy_loss.item() == loss.item(), "masked shots: unchanged"
    hidden, _ = model.encoder(torch.where(mask[..., None], model.mask_token, shots), title, lengths, wide=False)
    masked = torch.where(mask[..., None], model.mask_token, shots)
    real = torch.arange(6)[None, :] < lengths[:, None]
    expect = model.encoder._copy(hidden, masked + noise, real, 1.0)
    assert torch.allclose(noisy[0, [0, 2, 3, 4]], expect[0, [0, 2, 3, 4]]), "visible: the same scores, noisy inputs"
    assert not torch.allclose(noisy[0, [0, 2, 3, 4]], clean[0, [0, 2, 3, 4]])


@pytest.mark.parametrize("key, value, match", [("loss", "l2", "loss='l2'"),
                                               ("loss", "infonce", "choose one of cosine, per_modality, contrastive"),
                                               ("visible_loss_weight", -1.0, "visible_loss_weight=-1.0"),
                                               ("modality_dropout", 1.0, "modality_dropout=1.0"),
                                               ("mask_span", 0, "mask_span=0"),
                                               ("mask_view", 1.5, "mask_view=1.5"),
                                               ("view_copied", False, "needs mask_view > 0"),
                                               ("visible_noise", -0.5, "visible_noise=-0.5"),
                                               ("visible_noise", 0.5, "needs visible_loss_weight > 0"),
                                               ("contrastive_weight", -0.1, "contrastive_weight=-0.1")])
def test_ablation_settings_are_validated(key, value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(config="tiny", **{key: value})
    assert TrainConfig(config="tiny").source_objective, "the defaults are the source's objective"


def test_ablations_train_and_resume_exactly(corpus, tmp_path):
    """Each ablation changes training (weights differ from the source's), and modality dropout's RNG resumes; the
    whitened loss resumes exactly too (its whitening is a function of the data, made again on resume)."""
    ablation = dict(loss="per_modality", visible_loss_weight=0.3, visible_noise=0.5, modality_dropout=0.2,
                    mask_span=10, contrastive_weight=0.1, mask_view=0.5, view_copied=False)
    train(corpus, tmp_path / "src", _cfg(max_steps=4), quiet=True)
    train(corpus, tmp_path / "a", _cfg(max_steps=4, **ablation), quiet=True)
    train(corpus, tmp_path / "b", _cfg(max_steps=4, **ablation), quiet=True, until_step=3)
    train(corpus, tmp_path / "b", _cfg(max_steps=4, **ablation), quiet=True)
    src, a, b = (torch.load(tmp_path / r / "checkpoints" / "step-0000004.pt", weights_only=False)
                 for r in ("src", "a", "b"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert any(not torch.equal(a["model"][k], src["model"][k]) for k in a["model"])
    train(corpus, tmp_path / "src2", _cfg(max_steps=2), quiet=True)
    src2 = torch.load(tmp_path / "src2" / "checkpoints" / "step-0000002.pt", weights_only=False)["model"]
    runs = {}
    for key, value in [*ablation.items(), ("loss", "contrastive"), ("loss", "whitened")]:  # each alone trains, and differently
        needs = {"view_copied": {"mask_view": 0.5}, "visible_noise": {"visible_loss_weight": 0.3}}
        over = {key: value} | needs.get(key, {})  # against views that are copied, a visible loss without noise
        r = train(corpus, tmp_path / f"{key}-{value}", _cfg(max_steps=2, **over), quiet=True)
        assert r["step"] == 2 and 0 < r["val_loss"] < 2, r  # validated with the cosine loss whatever it trains on
        runs[key] = torch.load(tmp_path / f"{key}-{value}" / "checkpoints" / "step-0000002.pt", weights_only=False)
        ref = runs[next(iter(needs[key]))]["model"] if key in needs else src2
        assert any(not torch.equal(runs[key]["model"][k], ref[k]) for k in ref), f"{key}={value} changed nothing"
    with pytest.raises(ConfigError, match="head='projection' has none"):
        train(corpus, tmp_path / "p", _cfg(max_steps=1, visible_loss_weight=0.3, visible_noise=0.5),
              {"head": "projection"}, quiet=True)
    train(corpus, tmp_path / "w", _cfg(max_steps=2, loss="whitened"), quiet=True, until_step=1)
    train(corpus, tmp_path / "w", _cfg(max_steps=2, loss="whitened"), quiet=True)
    resumed = torch.load(tmp_path / "w" / "checkpoints" / "step-0000002.pt", weights_only=False)["model"]
    whole = torch.load(tmp_path / "loss-whitened" / "checkpoints" / "step-0000002.pt", weights_only=False)["model"]
    for k in whole:
        assert torch.equal(resumed[k], whole[k]), k


def test_copy_per_modality_takes_the_slices_from_the_dataset_and_resumes_exactly(corpus, tmp_path):
    """`mediafm train --copy_per_modality 1`: the model copies each of the dataset's modality slices with its own
    scores (meta.json's slices recorded in the checkpoint), trains and resumes exactly; without it nothing changes."""
    from mediafm.dataset import Dataset

    over = parse_overrides(["--copy_per_modality", "1"])[1]
    assert over == {"copy_per_modality": True}
    train(corpus, tmp_path / "a", _cfg(max_steps=4), over, quiet=True)
    train(corpus, tmp_path / "b", _cfg(max_steps=4), over, quiet=True, until_step=2)
    train(corpus, tmp_path / "b", _cfg(max_steps=4), over, quiet=True)
    a, b = (torch.load(tmp_path / r / "checkpoints" / "step-0000004.pt", weights_only=False) for r in ("a", "b"))
    slices = [list(v) for v in Dataset(corpus).meta.modalities.values()]
    assert a["model_config"]["modalities"] == slices and len(slices) == 3
    assert a["model"]["encoder.copy_q.weight"].shape[0] == 3 * a["model_config"]["hidden"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    train(corpus, tmp_path / "whole", _cfg(max_steps=2), quiet=True)
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "step-0000002.pt", weights_only=False)
    assert whole["model_config"]["modalities"] == [] and not whole["model_config"]["copy_per_modality"]


def test_the_demos_own_run_made_under_other_settings_names_the_folder_to_remove(tmp_path):
    """The demo keeps its tiny run in the state dir; one made with another window_shots refused to resume with
    train's advice, "pass a new --out", which `mediafm demo` has no way to take."""
    from mediafm.config import Settings
    from mediafm.demo import train_demo_model

    data = write_corpus(tmp_path / "data", n_titles=12, layout=LAYOUT, seed=0, shots=(20, 40))
    train_demo_model(Settings(state_dir=tmp_path, window_shots=64, window_stride=32), data, tmp_path / "run", until_step=1)
    with pytest.raises(ConfigError, match=r"another config .*max_shots.* remove it \(`rm -r .*run`\) and run again"):
        train_demo_model(Settings(state_dir=tmp_path, window_shots=128, window_stride=64), data, tmp_path / "run", until_step=1)
