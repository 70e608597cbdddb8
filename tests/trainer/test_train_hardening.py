"""trainer hardening: exact resume of every DDP rank, validation titles that do not pin their shards, one trainer
per --out, and a truncated latest checkpoint that falls back to the one before."""

import fcntl
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mediafm.dataset import Dataset
from mediafm.errors import ConfigError, ModelError
from mediafm.fusion import Layout
from mediafm.synth import write_corpus
from trainer.data import WindowLoader, eval_batches
from trainer.evaluate import load_run_encoder
from trainer.train import TrainConfig, latest_checkpoint, load_checkpoint, main, train

LAYOUT = Layout("test", video=16, audio=16, text=16, title=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """23 titles in one shard: 19 train, 4 val."""
    return write_corpus(tmp_path_factory.mktemp("data") / "synth", n_titles=23, layout=LAYOUT, seed=0,
                        shots=(6, 20), val_fraction=0.15, test_fraction=0.0)


def _loaders(ds, world, **kw):
    return [WindowLoader(ds, ds.split("train"), batch_size=2, max_shots=8, seed=3, rank=r, world=world, **kw)
            for r in range(world)]


def _key(batch):
    return batch.title_ids, batch.starts, batch.shots


def _same(a, b):
    return a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_every_rank_resumes_where_it_stopped_from_rank_0s_state(corpus):
    """Under torchrun only rank 0 saves the data position; every rank resumes from it. Rank 1 must not take again
    the batch it trained just before the checkpoint (old: rank 0's counter 2k - 1 put rank 1 one batch back), and
    the ranks stay in the same epoch across epoch ends (19 train titles, batch 2: 9 batches a plan, an odd number:
    old, rank 0 took 5 of an epoch and rank 1 4, so rank 0's position said nothing of rank 1's)."""
    ds = Dataset(corpus)
    world, total = 2, 14  # 14 steps: past three epoch ends
    whole = [[_key(b) for b, _ in zip(loader, range(total), strict=False)] for loader in _loaders(ds, world)]
    assert all(len(w) == total for w in whole)
    for k in (1, 2, 3, 4, 5, 7):
        ranks = _loaders(ds, world)
        its = [iter(r) for r in ranks]
        for _ in range(k):  # k steps, in lockstep as DDP takes them
            for it in its:
                next(it)
        state = ranks[0].state_dict()  # what rank 0 writes into the checkpoint
        for r, resumed in enumerate(_loaders(ds, world)):
            resumed.load_state_dict(state)
            got = [_key(b) for b, _ in zip(resumed, range(total - k), strict=False)]
            for step, (g, w) in enumerate(zip(got, whole[r][k:], strict=True)):
                assert _same(g, w), f"rank {r} resumed after step {k}: step {k + step + 1} differs " \
                                    f"({g[0]} vs {w[0]})"


def test_a_rank_of_a_set_smaller_than_the_world_still_gets_batches(corpus):
    """3 train titles, batch 2, world 2: one full batch a plan; rank 1 still trains, on the rest of the plan."""
    ds = Dataset(corpus)
    few = ds.split("train")[:3]
    got: dict[int, list] = {}

    def take(rank):  # in a thread: the old loader spun forever on rank 1, yielding nothing
        it = iter(WindowLoader(ds, few, batch_size=2, max_shots=8, seed=0, rank=rank, world=2))
        got[rank] = [next(it) for _ in range(3)]

    for rank in (0, 1):
        t = threading.Thread(target=take, args=(rank,), daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), f"rank {rank} of world 2 yields no batch from 3 titles at batch size 2"
    assert all(b.title_ids for b in got[0] + got[1]) and got[0][0].title_ids != got[1][0].title_ids


def _pins_a_shard(x):
    """True when x is a view into a larger array (a whole shard's)."""
    return x.base is not None and x.base.nbytes > x.nbytes


def test_titles_read_without_the_rest_of_their_shard_do_not_keep_it_in_memory(corpus):
    """Validation keeps a batch of titles from many shards; each must hold its own rows, not its whole shard
    (old: a view of the shard's array, so batch 32 held 32 shards)."""
    ds = Dataset(corpus)
    val = ds.split("val")
    assert len(ds.shards) == 1 and 0 < len(val) < len(ds.titles)
    one = val[0].title_id
    full = ds.read_shard(0)
    (title,) = ds.read_shard(0, {one}).values()
    assert not _pins_a_shard(title.fused) and not _pins_a_shard(title.start_s) and not _pins_a_shard(title.end_s)
    assert np.array_equal(title.fused, full[one].fused) and np.array_equal(title.start_s, full[one].start_s)
    for t in ds.iter_titles(val):  # the validation path
        assert not _pins_a_shard(t.fused)
    (batch,) = eval_batches(ds, val, batch_size=len(val), max_shots=8)
    assert batch.title_ids == [i.title_id for i in val]


def _cfg(**kw):
    return TrainConfig(**{"config": "tiny", "batch_size": 4, "eval_every": 1000, "ckpt_every": 2, "warmup_steps": 1,
                          "val_batches": 1, **kw})


def test_a_second_trainer_on_the_same_out_stops_naming_the_pid_that_holds_it(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "w") as held:  # another trainer's lock (here: this process's own, on another fd)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}\n")
        held.flush()
        with pytest.raises(ConfigError, match=rf"{run} is in use by another trainer \(PID {os.getpid()} holds"):
            train(corpus, run, _cfg(max_steps=1), quiet=True)
        assert main(["--data", str(corpus), "--out", str(run), "--config", "tiny", "--max_steps", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mediafm train: error:") and f"kill {os.getpid()}" in err and "\n" not in err
        assert not (run / "log.jsonl").exists() and not (run / "checkpoints").exists()  # wrote nothing
    (run / "checkpoints").mkdir()
    stale = run / "checkpoints" / "step-0000001.4242.tmp"  # a save cut short by kill -9 (temp files carry the PID)
    stale.write_bytes(b"half")
    train(corpus, run, _cfg(max_steps=1), quiet=True)  # free again: it trains, and lets go when done
    assert not stale.exists() and (run / "checkpoints" / "step-0000001.pt").exists()
    with open(run / ".lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(corpus, tmp_path, caplog):
    run = tmp_path / "run"
    train(corpus, run, _cfg(max_steps=6), quiet=True, until_step=4)  # preempted at step 4
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.glob("step-*.pt")) == ["step-0000002.pt", "step-0000004.pt"]
    assert not list(ck.glob("*.tmp"))
    bad = ck / "step-0000004.pt"
    ref = torch.load(bad, weights_only=False)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # cut in half, as a full disk or a copy leaves it

    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(run) == ck / "step-0000002.pt"  # what export and evaluate load
        load_run_encoder(run)  # evaluate's loader
    assert "step-0000004.pt" in caplog.text and "step-0000002.pt" in caplog.text
    model, state = load_checkpoint(latest_checkpoint(run))
    assert state["step"] == 2

    assert train(corpus, run, _cfg(max_steps=6), quiet=True)["step"] == 6  # resumes from step 2
    assert torch.load(ck / "step-0000006.pt", weights_only=False)["step"] == 6
    again = torch.load(ck / "step-0000004.pt", weights_only=False)  # written again, whole, and the same
    assert again["data"] == ref["data"] and all(torch.equal(again["model"][k], ref["model"][k]) for k in ref["model"])

    for p in ck.glob("step-*.pt"):
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ModelError, match="step-0000006.pt is unreadable"):
        latest_checkpoint(run)
    assert main(["--data", str(corpus), "--out", str(run), "--config", "tiny", "--max_steps", "8"]) == 2


def test_a_checkpoint_is_written_under_a_temp_name_with_the_writers_pid(tmp_path, monkeypatch):
    import trainer.train as tt

    moved, replace = [], os.replace
    monkeypatch.setattr(tt.os, "replace", lambda a, b: (moved.append((Path(a).name, Path(b).name)), replace(a, b)))
    path = tt.save_checkpoint(tmp_path, {"step": 3})
    monkeypatch.undo()
    assert moved == [(f"step-0000003.{os.getpid()}.tmp", "step-0000003.pt")] and path.name == "step-0000003.pt"
    assert torch.load(path, weights_only=False) == {"step": 3} and latest_checkpoint(tmp_path) == path


def test_a_step_whose_gradients_are_not_finite_stops_the_run_and_keeps_the_good_checkpoints(corpus, tmp_path,
                                                                                            monkeypatch):
    """Gradients turned NaN at step 3 (as a learning rate too high or an overflow makes them). Before, nothing
    checked: the optimizers stepped, and the next checkpoints, NaN, replaced the good ones (two are kept). Now
    the run stops before the step is applied, naming it, and the step-2 checkpoint stays the newest, finite."""
    original, calls = torch.nn.utils.clip_grad_norm_, []

    def diverging(params, max_norm, *a, **kw):
        params = list(params)
        calls.append(1)
        if len(calls) == 3:
            for p in params:
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
        return original(params, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", diverging)
    run = tmp_path / "run"
    with pytest.raises(ModelError, match=r"training diverged at step 3: .*gradient norm nan.*the last checkpoint "
                                         r"\(step-0000002.pt\) is as it was"):
        train(corpus, run, _cfg(max_steps=8), quiet=True)
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert ckpts == ["step-0000002.pt"]
    state = torch.load(run / "checkpoints" / ckpts[-1], weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_validation_with_bert_keep_and_replace_is_the_same_every_time_and_hides_every_masked_shot():
    """mask_keep / mask_random (BERT's rule) applied in eval too, from the global RNG: the validation loss of the
    same model, batch and mask changed call to call (0.911, 0.903, 0.897 on a tiny copy-head model), and shots
    left visible let a copy head copy the answer. In eval every masked shot is now hidden, as the baselines do."""
    from mediafm.model import MaskedShotModel, MediaFMConfig, mask_positions

    torch.manual_seed(0)
    cfg = MediaFMConfig(**{**__import__("mediafm.model", fromlist=["CONFIGS"]).CONFIGS["tiny"], "mask_keep": 0.5},
                        fused_dim=48, title_dim=16)
    plain = MaskedShotModel(MediaFMConfig(**{**cfg.to_dict(), "mask_keep": 0.0})).eval()
    model = MaskedShotModel(cfg).eval()
    model.load_state_dict(plain.state_dict())
    shots, title = torch.randn(4, 32, 48), torch.randn(4, 16)
    lengths = torch.full((4,), 32)
    mask = mask_positions(lengths, 32, 0.2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        losses = {model(shots, title, lengths, mask)[1].item() for _ in range(3)}
        assert losses == {plain(shots, title, lengths, mask)[1].item()}


def test_a_run_resumed_under_another_number_of_processes_is_refused_naming_it(corpus, tmp_path):
    """batch_size is per process: resumed under another world size, a run went on with another global batch under
    the same schedule, and each rank at a data position that was not its own. Now refused, saying how to resume."""
    run = tmp_path / "run"
    train(corpus, run, _cfg(max_steps=4), quiet=True, until_step=2)
    path = run / "checkpoints" / "step-0000002.pt"
    state = torch.load(path, weights_only=False)
    assert state["world_size"] == 1 and len(state["rng_ranks"]) == 1
    state["world_size"] = 2  # as a torchrun --nproc-per-node 2 run writes it
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"trained by 2 process\(es\), and this run has 1.*torchrun "
                                          r"--nproc-per-node 2"):
        train(corpus, run, _cfg(max_steps=4), quiet=True)


def test_a_file_that_is_not_a_training_checkpoint_is_named_not_a_key_error(corpus, tmp_path):
    """`mediafm export --checkpoint .../mediafm/N/model.pt` (an exported model, not a training checkpoint) raised a
    bare KeyError: 'model_config', and a checkpoint whose model config holds a field this version does not know a
    bare TypeError; the CLI, which reports MediaFMError, showed a traceback. Both are ModelError now, saying what
    the file is and what to pass."""
    run = tmp_path / "run"
    train(corpus, run, _cfg(max_steps=2), quiet=True)
    exported = tmp_path / "model.pt"
    torch.save({"encoder": {}}, exported)
    with pytest.raises(ModelError, match="not a training checkpoint"):
        load_checkpoint(exported)
    state = torch.load(run / "checkpoints" / "step-0000002.pt", weights_only=False)
    state["model_config"]["a_field_from_the_future"] = 1
    future = tmp_path / "future.pt"
    torch.save(state, future)
    with pytest.raises(ModelError, match="does not load into this version's MediaFM"):
        load_checkpoint(future)
