"""trainer data at catalog scale: the loader's reader thread (same batches, same order, same resume, errors
surface), validation windows read by their rows and kept in memory (same loss, no read the second time), reads
of the row groups a range needs only, and the preflight of every shard before step 1 (once a run)."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mediafm.dataset import Dataset, DatasetWriter, Meta
from mediafm.errors import ConfigError, DatasetError
from mediafm.fusion import Layout
from mediafm.model import CONFIGS, MaskedShotModel, MediaFMConfig
from trainer.data import EvalWindows, WindowLoader, window_batches
from trainer.train import PREFLIGHT, TrainConfig, parse_overrides, train, validate

LAYOUT = Layout("test", video=16, audio=16, text=16, title=16)
D = LAYOUT.fused_dim


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def write(path, lengths, *, shard_shots=40, val=(), seed=0, row_group=None):
    """Titles t<i> of lengths[i] shots, unit fused vectors, in files of shard_shots rows with titles continued
    over files (DatasetWriter split_titles); titles in `val` in split val. row_group: rewrite each file with
    pyarrow in row groups of that many rows (pyarrow's own default is one group a file)."""
    rng = np.random.default_rng(seed)
    w = DatasetWriter(path, Meta.from_layout(LAYOUT), shard_shots=shard_shots, split_titles=True)
    for i, n in enumerate(lengths):
        w.add_title(title_id=f"t{i}", title_embedding=rng.normal(size=LAYOUT.title).astype(np.float32),
                    fused=_unit(rng.normal(size=(n, D))), start_s=np.arange(n) * 2.0, end_s=np.arange(n) * 2.0 + 1.5,
                    split="val" if i in val else "train")
    w.close()
    if row_group:
        for f in sorted((path / "shots").glob("*.parquet")):
            pq.write_table(pq.read_table(f), f, row_group_size=row_group)
    return path


def spoil(path, row, value=np.nan):
    """Rewrite one shard file with pyarrow, `value` in the fused row `row` (the file's row count unchanged)."""
    t = pq.read_table(path)
    x = t.column("fused").combine_chunks().values.to_numpy().reshape(-1, D).copy()
    x[row, 3] = value
    i = t.column_names.index("fused")
    pq.write_table(t.set_column(i, "fused", pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D)), path)


LENGTHS = [int(n) for n in np.random.default_rng(5).integers(5, 31, size=40)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 titles of 5-30 shots over ~17 files of 40 rows, titles continued over files; 10 val titles."""
    return write(tmp_path_factory.mktemp("data") / "ds", LENGTHS, val=set(range(0, 40, 4)))


def _batch_key(b):
    return b.title_ids, b.starts, b.shots, b.title, b.lengths


def _same(a, b):
    return a[0] == b[0] and a[1] == b[1] and all(torch.equal(x, y) for x, y in zip(a[2:], b[2:], strict=True))


def _take(loader, n):
    """n batches, each with the loader's state_dict right after it (what a checkpoint then would save)."""
    it = iter(loader)
    out = [(_batch_key(next(it)), loader.state_dict()) for _ in range(n)]
    it.close()
    return out


def _readers(before=frozenset()):
    """The loader reader threads alive, but those in `before` (another test's, not yet collected)."""
    return {t for t in threading.enumerate() if t.name == "WindowLoader-reader" and t.is_alive()} - before


def _gone(before=frozenset(), deadline=20.0):
    t0 = time.monotonic()
    while _readers(before) and time.monotonic() - t0 < deadline:
        time.sleep(0.05)
    return not _readers(before)


@pytest.mark.parametrize("world", [1, 2])
def test_prefetch_gives_the_synchronous_batches_positions_and_resume(data, world):
    """The reader thread makes exactly the batches of the synchronous loader, in order, over several epochs (~30
    train windows at batch 3: 10 batches an epoch), under world 1 and 2, and the loader's position after each
    batch is the same, so a checkpoint saves the same state; a loader resumed mid-epoch from that state with
    prefetch continues exactly as the synchronous one did."""
    before = _readers()
    ds = Dataset(data)
    train_titles = ds.split("train")
    assert len(ds.shards) > 10 and sum(len(i.pieces) > 1 for i in ds.titles.values()) > 5

    def loader(rank, prefetch):
        return WindowLoader(ds, train_titles, batch_size=3, max_shots=8, seed=7, rank=rank, world=world,
                            prefetch=prefetch)

    n = 25  # 2.5 epochs of this rank's batches at world 2, 2.5 of 10 at world 1
    for rank in range(world):
        sync = _take(loader(rank, 0), n)
        assert len({s["epoch"] for _, s in sync}) >= 3
        for prefetch in (1, 2):
            got = _take(loader(rank, prefetch), n)
            for step, ((g, gs), (w, ws)) in enumerate(zip(got, sync, strict=True)):
                assert _same(g, w), f"rank {rank} prefetch {prefetch}: batch {step + 1} differs ({g[0]} vs {w[0]})"
                assert gs == ws, f"rank {rank} prefetch {prefetch}: position after batch {step + 1} {gs} != {ws}"
        for k in (3, 7, 11):  # resume mid-epoch from what rank 0 saved after k steps (the trainer's checkpoint)
            state = _take(loader(0, 0), k)[-1][1]
            resumed = loader(rank, 2)
            resumed.load_state_dict(state)
            again = loader(rank, 0)
            again.load_state_dict(state)
            for step, ((g, _), (w, _)) in enumerate(zip(_take(resumed, 8), _take(again, 8), strict=True)):
                assert _same(g, w), f"rank {rank} resumed after {k}: batch {step + 1} differs"
    assert _gone(before), "a reader thread outlived its closed iterator"


def test_an_error_reading_a_shard_in_the_reader_thread_reaches_the_caller(tmp_path):
    """A shard with a NaN row, read by the reader thread: the caller gets the batches before it, then the
    DatasetError with its message (file and row), where the synchronous loader raises it; it does not hang,
    and the thread is gone."""
    before = _readers()
    path = write(tmp_path / "ds", LENGTHS)
    ds = Dataset(path)
    titles = ds.split("train")
    plan = WindowLoader(ds, titles, batch_size=3, max_shots=8, seed=1, prefetch=0).plan(0)
    bad = int(plan[len(plan) // 2][0].shard)  # a shard halfway into the epoch
    spoil(ds.shards[bad], 0)
    with pytest.raises(DatasetError) as sync_error:
        ds.read_shard(bad)

    def run(prefetch, out):
        n = 0
        try:
            for _ in WindowLoader(ds, titles, batch_size=3, max_shots=8, seed=1, prefetch=prefetch):
                n += 1
                if n > 100:
                    break
        except DatasetError as e:
            out["error"] = str(e)
        out["batches"] = n

    got: dict[int, dict] = {0: {}, 2: {}}
    for prefetch in (0, 2):
        t = threading.Thread(target=run, args=(prefetch, got[prefetch]), daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), f"prefetch {prefetch}: the loader hangs on a shard that fails to read"
    assert got[2]["error"] == got[0]["error"] == str(sync_error.value)
    assert f"{ds.shards[bad]}: column 'fused' has NaN/inf in 1 rows (first at row 0)" in got[2]["error"]
    assert got[2]["batches"] == got[0]["batches"] > 0
    assert _gone(before)


def test_the_reader_thread_stops_when_its_iterator_is_dropped_or_the_loader_closed(data):
    before = _readers()
    ds = Dataset(data)
    loader = WindowLoader(ds, ds.split("train"), batch_size=3, max_shots=8, seed=0, prefetch=2)
    it = iter(loader)
    next(it)
    assert _readers(before)
    del it
    gc.collect()
    assert _gone(before), "the reader thread outlived its iterator"
    it = iter(loader)
    next(it)
    assert _readers(before)
    loader.close()
    assert not _readers(before), "close() returned with the reader thread still running"
    with pytest.raises(ValueError, match="prefetch=-1"):
        WindowLoader(ds, ds.split("train"), batch_size=3, max_shots=8, seed=0, prefetch=-1)


def test_prefetch_and_the_other_data_keys_are_resumable_config(tmp_path):
    assert parse_overrides(["--prefetch", "0", "--preflight", "0", "--val_cache_mb", "64"])[0] == {
        "prefetch": 0, "preflight": False, "val_cache_mb": 64}
    for key in ("prefetch", "val_cache_mb"):
        with pytest.raises(ConfigError, match=f"{key}=-1 must be >= 0"):
            TrainConfig(config="tiny", **{key: -1})


class _Reads:
    """Counts pyarrow reads of parquet files under `root` (a spy: the real calls run)."""

    def __init__(self, monkeypatch, root):
        self.files: list[str] = []
        self.groups: list[tuple[str, object]] = []
        root = str(root)
        real_init, real_iter, real_table = pq.ParquetFile.__init__, pq.ParquetFile.iter_batches, pq.read_table
        spy = self

        def init(pf, source, *a, **kw):
            if str(source).startswith(root):
                spy.files.append(os.path.basename(str(source)))
            pf._spied = str(source)
            return real_init(pf, source, *a, **kw)

        def iter_batches(pf, *a, **kw):
            spy.groups.append((os.path.basename(getattr(pf, "_spied", "?")), kw.get("row_groups")))
            return real_iter(pf, *a, **kw)

        def read_table(source, *a, **kw):
            if str(source).startswith(root):
                spy.files.append(os.path.basename(str(source)))
            return real_table(source, *a, **kw)

        monkeypatch.setattr(pq.ParquetFile, "__init__", init)
        monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
        monkeypatch.setattr(pq, "read_table", read_table)

    def clear(self):
        self.files.clear()
        self.groups.clear()


def _old_eval_batches(ds, titles, *, batch_size, max_shots, max_batches=None):
    """The validation windows as the code before this change read them: whole titles through iter_titles
    (every shard holding one read whole), the first max_shots shots of each."""
    return window_batches(ds.iter_titles(titles), batch_size=batch_size, max_shots=max_shots,
                          max_batches=max_batches)


def test_validation_windows_from_memory_give_the_same_loss_and_read_nothing(data, monkeypatch, caplog):
    """Validation on the windows kept in memory gives the loss of reading them (bit for bit, and the loss of the
    old path that read whole shards), and the second validation opens no parquet file. Heads that span files
    (a val title starting near a file's end) are included. A budget for 2 of the 3 batches keeps 2, says so,
    and reads only what the third needs each time."""
    ds = Dataset(data)
    val = ds.split("val")
    assert any(len(i.pieces) > 1 and i.pieces[0][2] < 8 for i in val), "no val title whose first 8 shots span files"
    tc = TrainConfig(config="tiny", batch_size=4, val_batches=3)
    cfg = MediaFMConfig(**{**CONFIGS["tiny"], "max_shots": 8}, fused_dim=D, title_dim=LAYOUT.title)
    torch.manual_seed(0)
    model = MaskedShotModel(cfg)
    device = torch.device("cpu")
    old = list(_old_eval_batches(ds, val, batch_size=4, max_shots=8, max_batches=3))
    assert len(old) == 3 and sum(len(b.title_ids) for b in old) == 10  # two batches of 4, one of 2
    want = validate(model, ds, tc, cfg, device, with_baselines=True, windows=old)

    reads = _Reads(monkeypatch, data)
    windows = EvalWindows(ds, val, batch_size=4, max_shots=8, max_batches=3)
    first = validate(model, ds, tc, cfg, device, with_baselines=True, windows=windows)
    assert reads.files, "the spy saw no read: it does not count the real ones"
    assert set(reads.files) <= {p.name for p in ds.shards} and all(g is not None for _, g in reads.groups)
    reads.clear()
    second = validate(model, ds, tc, cfg, device, with_baselines=True, windows=windows)
    assert reads.files == [] and reads.groups == [], f"the second validation read {reads.files}"
    assert first == second == want  # floats, bit for bit
    assert validate(model, ds, tc, cfg, device, with_baselines=True) == want  # no cache: eval_batches reads heads
    for a, b in zip(windows, old, strict=True):
        assert _same(_batch_key(a), _batch_key(b))

    caplog.set_level(logging.WARNING)
    budget = sum(4 * 8 * D * 4 + 4 * (4 * LAYOUT.title + 8) for _ in range(2))  # two full batches of 8-shot windows
    part = EvalWindows(ds, val, batch_size=4, max_shots=8, max_batches=3, budget_bytes=budget)
    assert part.keep == 2 and "2 of 3 batches" in caplog.text and "read again at every validation" in caplog.text
    reads.clear()
    assert validate(model, ds, tc, cfg, device, with_baselines=True, windows=part) == want
    third = {t for b in old[2:] for t in b.title_ids}
    files = {ds.shards[s].name for t in third for s, _, _ in ds.titles[t].pieces}
    reads.clear()
    assert validate(model, ds, tc, cfg, device, with_baselines=True, windows=part) == want
    assert reads.files and set(reads.files) <= files, f"read {reads.files}; the third batch needs only {files}"
    none = EvalWindows(ds, val, batch_size=4, max_shots=8, max_batches=3, budget_bytes=0)
    assert none.keep == 0 and validate(model, ds, tc, cfg, device, with_baselines=True, windows=none) == want


def test_a_range_is_read_from_the_row_groups_that_hold_it_only(tmp_path, monkeypatch):
    """Files in row groups of 5 rows: rows 23..29 come from groups 4 and 5 only (the old code decoded the file
    from its top), equal to the rows of a whole read; a NaN in them is refused naming its row in the file; the
    heads of titles (validation) read only the groups holding them, and equal the titles' first shots."""
    path = write(tmp_path / "ds", LENGTHS, shard_shots=40, row_group=5)
    ds = Dataset(path)
    assert pq.ParquetFile(ds.shards[1]).metadata.num_row_groups == 8
    whole = pq.read_table(ds.shards[1])
    fused = whole.column("fused").combine_chunks().values.to_numpy().reshape(-1, D)
    reads = _Reads(monkeypatch, path)
    x, start, end = ds._read_rows(1, 23, 7)
    assert reads.groups == [(ds.shards[1].name, [4]), (ds.shards[1].name, [5])]
    assert np.array_equal(x, fused[23:30]) and np.array_equal(start, whole.column("start_s").to_numpy()[23:30])
    assert np.array_equal(end, whole.column("end_s").to_numpy()[23:30]) and x.flags.writeable

    heads = {t.info.title_id: t for t in ds.iter_heads(list(ds.titles.values()), 6)}
    head_groups = reads.groups[2:]
    full = {t.info.title_id: t for t in ds.iter_titles()}
    assert list(heads) == list(full)  # iter_titles' order
    for tid, t in heads.items():
        assert np.array_equal(t.fused, full[tid].fused[:6]) and np.array_equal(t.start_s, full[tid].start_s[:6])
    # every head is in the first 6 rows of each title: groups holding no title's first 6 shots are not read
    starts = {(s, r // 5) for i in ds.titles.values() for s, r0, n in i.pieces[:1] for r in range(r0, r0 + min(n, 6))}
    spans = {(s, r // 5) for i in ds.titles.values() if i.pieces[0][2] < 6
             for s, r0, n in i.pieces[1:2] for r in range(r0, r0 + min(n, 6 - i.pieces[0][2]))}
    read = {(next(k for k, p in enumerate(ds.shards) if p.name == f), g[0]) for f, g in head_groups}
    assert read == starts | spans

    spoil(ds.shards[1], 27)
    ds = Dataset(path)
    with pytest.raises(DatasetError, match=rf"{ds.shards[1].name}: column 'fused' has NaN/inf in 1 rows \(first at row 27\)"):
        ds._read_rows(1, 23, 7)
    assert len(ds._read_rows(1, 30, 10)[0]) == 10  # the rows after it are fine


def _cfg(**kw):
    return TrainConfig(**{"config": "tiny", "batch_size": 4, "eval_every": 1000, "ckpt_every": 1, "warmup_steps": 1,
                          "val_batches": 1, **kw})


def test_preflight_refuses_a_nan_row_in_a_late_shard_before_step_1(tmp_path):
    """A NaN in the shard training reaches last: without the preflight step 1 trains and checkpoints; with it,
    the run stops before step 1 with the message reading that shard gives (file and row), nothing written."""
    path = write(tmp_path / "ds", LENGTHS * 2, val={1, 2})
    ds = Dataset(path)
    plan = WindowLoader(ds, ds.split("train"), batch_size=4, max_shots=64, seed=0, prefetch=0).plan(0)
    last = plan[-1][0]  # the title of the epoch's last window: its first row is read only with its shard
    late, row = last.shard, last.row
    assert late not in {s for i, _, _ in plan[:4] for s, _, _ in i.pieces}  # step 1 does not read it
    spoil(ds.shards[late], row)
    with pytest.raises(DatasetError) as reading:
        Dataset(path).read_shard(late)

    assert train(path, tmp_path / "unchecked", _cfg(max_steps=1, preflight=False, prefetch=0), quiet=True)["step"] == 1
    run = tmp_path / "run"
    with pytest.raises(DatasetError) as e:
        train(path, run, _cfg(max_steps=3), quiet=True)
    assert str(e.value) == str(reading.value)
    assert f"{ds.shards[late]}: column 'fused' has NaN/inf in 1 rows (first at row {row})" == str(e.value)
    assert not (run / "checkpoints").exists() and not (run / "log.jsonl").exists()


def test_a_resume_does_not_check_again_the_shards_it_checked(tmp_path, monkeypatch):
    """Every shard is checked at the first start; a resume checks none; a shard rewritten since is checked
    again (and its bad row stops the resume); --preflight 0 checks nothing."""
    path = write(tmp_path / "ds", LENGTHS, val={1, 2})
    checked: list[str] = []
    real = Dataset.check_shard
    monkeypatch.setattr(Dataset, "check_shard", lambda self, s: (checked.append(self.shards[s].name), real(self, s))[1])
    n = len(Dataset(path).shards)
    run = tmp_path / "run"
    train(path, run, _cfg(max_steps=6), quiet=True, until_step=2)
    assert sorted(checked) == sorted(p.name for p in Dataset(path).shards) and len(checked) == n
    assert (run / PREFLIGHT / "rank-0.json").exists()
    checked.clear()
    train(path, run, _cfg(max_steps=6), quiet=True, until_step=3)
    assert checked == [], f"the resume checked again {checked}"
    train(path, run, _cfg(max_steps=6, preflight=False), quiet=True, until_step=4)
    assert checked == []
    shard = Dataset(path).shards[n - 2]
    spoil(shard, 2)  # rewritten: another mtime
    with pytest.raises(DatasetError, match=rf"{shard.name}: column 'fused' has NaN/inf in 1 rows \(first at row 2\)"):
        train(path, run, _cfg(max_steps=6), quiet=True)
    assert checked == [shard.name]
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*.pt")) == ["step-0000003.pt", "step-0000004.pt"]
