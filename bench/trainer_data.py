"""The trainer's data path at catalog shape: what the reader thread, the validation cache and the preflight buy.

    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer_data.py [--titles 300] [--shots 300 1200] [--width 2176]
        [--shard-rows 20000] [--row-group ROWS] [--step-ms 300] [--step sleep|matmul] [--batches 16]
        [--prefetch 2] [--rounds 3] [--data DIR] [--keep]

Writes a dataset the way a foreign catalog would (pyarrow alone, no mediafm code): --titles titles of
--shots MIN MAX shots (uniform) at --width (default 2,176, the audit's catalog: 1280 video + 512 audio + 384
text), unit random fused vectors, 10% of the titles in split val, in files of exactly --shard-rows rows (so
titles continue at the top of the next file, as the format allows) and, unless --row-group is given, one row
group a file (pyarrow's default, what the audit's 174 MB shards had). The audit's catalog: 3,000 titles, 1.68 M
shots, 84 files of 20,000 rows; the default here is a tenth of it (300 titles, ~11 files), ~2 GB on disk.
--data DIR reuses a dataset this script wrote there (--keep keeps the one it writes; otherwise a temp dir).

Measured in one run, --rounds times, old and new alternating within each round; medians are printed:
- loader, batches/s of trainer/data.py WindowLoader (batch 16, 512-shot windows: the `small` config), --batches
  batches from the start of epoch 0: prefetch 0 (the old synchronous loader: reads on the training thread) vs
  --prefetch N (a reader thread), first with no step (the raw read rate), then with a simulated training step
  after each batch: --step sleep (default) sleeps --step-ms, a GPU step, during which the CPU is free;
  --step matmul multiplies float32 matrices for about --step-ms on the training thread (a CPU step, which
  competes with the reader for the cores).
- validation, the data side of one validation (val_batches 16 x batch 16 windows of the first 512 shots of
  each val title; the model's forward is the same in both and left out): old = whole titles through
  Dataset.iter_titles, every shard holding a val title read whole (the code before this change); new =
  trainer/data.py EvalWindows, its first pass (only the rows of the windows, from the row groups that hold
  them) and a later one (from memory). The windows are checked equal, tensor for tensor.
- preflight (trainer/train.py `preflight`): every shard's fused rows checked at the first start of a run
  (its default threads, and 1 thread), and at a resume (nothing changed: nothing read).

The files were just written, so they are read from the page cache: the times are decoding and copying, not
disk. A catalog larger than memory adds the disk's time to the old paths' reads (every shard, each
validation) and to the preflight (one pass over the data). On a machine whose cores are busy with other work,
the reader thread's gain shrinks: it needs a core while the step runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTHS = {"video": 1280, "audio": 512, "text": 384}  # the audit's catalog: 2,176 (the offline profile)
TITLE_DIM = 384
BATCH, MAX_SHOTS, VAL_BATCHES = 16, 512, 16  # TrainConfig's batch_size and val_batches, `small`'s max_shots


def write_catalog(out: Path, *, titles: int, shots: tuple[int, int], width: int, shard_rows: int,
                  row_group: int | None, seed: int = 0) -> dict:
    """A v1 dataset written with pyarrow alone (DATASET_FORMAT.md), titles continued over files of exactly
    shard_rows rows. Returns its size."""
    rng = np.random.default_rng(seed)
    if out.exists():
        shutil.rmtree(out)
    (out / "shots").mkdir(parents=True)
    mods, at = {}, 0
    for name, w in WIDTHS.items():  # the widths scaled to --width, the last taking the rest
        n = width - at if name == "text" else round(w * width / sum(WIDTHS.values()))
        mods[name], at = [at, at + n], at + n
    (out / "meta.json").write_text(json.dumps({"format": "mediafm-shots", "version": 1, "fused_dim": width,
                                               "modalities": mods, "title_dim": TITLE_DIM,
                                               "encoders": {m: "random (bench/trainer_data.py)" for m in mods}}))
    lengths = rng.integers(shots[0], shots[1] + 1, size=titles)
    split = np.where(rng.random(titles) < 0.1, "val", "train")
    emb = rng.standard_normal((titles, TITLE_DIM), dtype=np.float32)
    pq.write_table(pa.table({
        "title_id": [f"cat-{i:05d}" for i in range(titles)],
        "title_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), TITLE_DIM),
        "kind": ["title"] * titles, "split": split.tolist()}), out / "titles.parquet")

    buf: dict[str, list] = {"title_id": [], "shot_index": [], "start_s": [], "end_s": [], "fused": []}
    files, rows, nbytes = 0, 0, 0

    def flush(n: int) -> None:
        nonlocal files, rows, nbytes
        cols = {k: np.concatenate(v) for k, v in buf.items()}
        keep = {k: v[n:] for k, v in cols.items()}
        table = pa.table({
            "title_id": pa.array(cols["title_id"][:n], pa.string()),
            "shot_index": pa.array(cols["shot_index"][:n].astype(np.int32)),
            "start_s": cols["start_s"][:n], "end_s": cols["end_s"][:n],
            "fused": pa.FixedSizeListArray.from_arrays(pa.array(cols["fused"][:n].reshape(-1)), width)})
        path = out / "shots" / f"part-{files:05d}.parquet"
        pq.write_table(table, path, **({"row_group_size": row_group} if row_group else {}))
        files, rows, nbytes = files + 1, rows + n, nbytes + path.stat().st_size
        for k, v in keep.items():
            buf[k] = [v]

    pending = 0
    for i, n in enumerate(lengths.tolist()):
        x = rng.standard_normal((n, width), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        start = np.cumsum(rng.uniform(0.5, 6.0, n))
        buf["title_id"].append(np.array([f"cat-{i:05d}"] * n, dtype=object))
        buf["shot_index"].append(np.arange(n))
        buf["start_s"].append(start)
        buf["end_s"].append(start + 0.4)
        buf["fused"].append(x)
        pending += n
        while pending >= shard_rows:  # a full file; the rest of the title opens the next one
            flush(shard_rows)
            pending -= shard_rows
    if pending:
        flush(pending)
    return {"titles": titles, "shots": rows, "files": files, "bytes": nbytes,
            "val": int((split == "val").sum())}


def step_fn(kind: str, ms: float):
    """The simulated training step: a sleep (a GPU step: the CPU is free) or float32 matmuls for about ms."""
    if kind == "sleep" or ms <= 0:
        return lambda: time.sleep(ms / 1000) if ms > 0 else None
    import torch

    a = torch.randn(512, 512)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.5:
        a @ a
        n += 1
    reps = max(1, round(n * ms / 1000 / (time.perf_counter() - t0)))

    def matmul() -> None:
        for _ in range(reps):
            a @ a
    return matmul


def loader_rate(ds, *, prefetch: int, batches: int, step) -> float:
    from trainer.data import WindowLoader

    loader = WindowLoader(ds, ds.split("train"), batch_size=BATCH, max_shots=MAX_SHOTS, seed=0, prefetch=prefetch)
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
        step()
    rate = batches / (time.perf_counter() - t0)
    it.close()
    loader.close()
    return rate


def old_validation(ds, val):
    """The validation windows as the code before this change read them (whole shards through iter_titles)."""
    from trainer.data import collate

    chunk, done, out = [], 0, []
    for title in ds.iter_titles(val):
        chunk.append((title, 0, min(title.info.n_shots, MAX_SHOTS)))
        if len(chunk) == BATCH:
            out.append(collate(chunk))
            chunk, done = [], done + 1
            if done >= VAL_BATCHES:
                return out
    return out + ([collate(chunk)] if chunk else [])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--titles", type=int, default=300, help="titles in the catalog (default 300; the audit's: 3000)")
    p.add_argument("--shots", type=int, nargs=2, default=[300, 1200], metavar=("MIN", "MAX"),
                   help="shots a title, uniform (default 300 1200: ~560 on average at the audit)")
    p.add_argument("--width", type=int, default=2176, help="fused width (default 2176, the offline profile's)")
    p.add_argument("--shard-rows", type=int, default=20000, help="rows a file (default 20000: 174 MB at 2176)")
    p.add_argument("--row-group", type=int, help="rows a row group (default: pyarrow's, one group a file)")
    p.add_argument("--step", choices=["sleep", "matmul"], default="sleep",
                   help="simulated training step: sleep (a GPU step) or matmul (a CPU step on this thread)")
    p.add_argument("--step-ms", type=float, default=300, help="simulated step time in ms (default 300)")
    p.add_argument("--batches", type=int, default=16, help="loader batches timed a measurement (default 16)")
    p.add_argument("--prefetch", type=int, default=2, help="the new loader's shards read ahead (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, old and new alternating (default 3)")
    p.add_argument("--data", type=Path, help="dataset dir to write (or reuse, if this script wrote it there)")
    p.add_argument("--keep", action="store_true", help="keep the dataset written (default: deleted at the end)")
    args = p.parse_args()

    import torch

    from mediafm.dataset import Dataset
    from trainer.data import EvalWindows
    from trainer.train import PREFLIGHT, io_threads, preflight

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="trainer-data-"))
    data = args.data or tmp / "catalog"
    try:
        stamp = data / "bench.json"
        want = {k: getattr(args, k) for k in ("titles", "shots", "width", "shard_rows", "row_group")}
        if stamp.exists() and json.loads(stamp.read_text())["args"] == want:
            shape = json.loads(stamp.read_text())["shape"]
            print(f"reusing {data}")
        else:
            t, shape = timed(lambda: write_catalog(data, titles=args.titles, shots=tuple(args.shots),
                                                   width=args.width, shard_rows=args.shard_rows,
                                                   row_group=args.row_group))
            stamp.write_text(json.dumps({"args": want, "shape": shape}))
            print(f"wrote {data} in {t:.0f} s")
        ds = Dataset(data)
        val = ds.split("val")
        groups = pq.ParquetFile(ds.shards[0]).metadata.num_row_groups
        print(f"{shape['titles']} titles ({shape['val']} val), {shape['shots']:,} shots at width {args.width}, "
              f"{shape['files']} files of {args.shard_rows:,} rows ({shape['bytes'] / shape['files'] / 1e6:.0f} MB, "
              f"{groups} row group{'s' if groups > 1 else ''} each), {shape['bytes'] / 1e9:.2f} GB; "
              f"{sum(len(i.pieces) > 1 for i in ds.titles.values())} titles continue over files")
        step = step_fn(args.step, args.step_ms)
        cores = len(os.sched_getaffinity(0))
        print(f"{cores} cores, load average {os.getloadavg()[0]:.1f}; batch {BATCH}, windows of {MAX_SHOTS} shots, "
              f"{args.batches} batches a loader measurement, {args.rounds} rounds\n", flush=True)

        res: dict[str, list[float]] = {}

        def put(key: str, value: float) -> None:
            res.setdefault(key, []).append(value)

        for r in range(args.rounds):
            put("load0_old", loader_rate(ds, prefetch=0, batches=args.batches, step=lambda: None))
            put("load0_new", loader_rate(ds, prefetch=args.prefetch, batches=args.batches, step=lambda: None))
            put("load_old", loader_rate(ds, prefetch=0, batches=args.batches, step=step))
            put("load_new", loader_rate(ds, prefetch=args.prefetch, batches=args.batches, step=step))
            t_old1, old = timed(lambda: old_validation(ds, val))
            t_old2, _ = timed(lambda: old_validation(ds, val))
            windows = EvalWindows(ds, val, batch_size=BATCH, max_shots=MAX_SHOTS, max_batches=VAL_BATCHES)
            t_new1, new = timed(lambda w=windows: list(w))
            t_new2, again = timed(lambda w=windows: list(w))
            same = len(old) == len(new) == len(again) and all(
                a.title_ids == b.title_ids == c.title_ids and torch.equal(a.shots, b.shots)
                and torch.equal(b.shots, c.shots) and torch.equal(a.lengths, b.lengths) and torch.equal(a.title, b.title)
                for a, b, c in zip(old, new, again, strict=True))
            if not same:
                raise SystemExit("the new validation windows differ from the old ones")
            for k, v in (("val1_old", t_old1), ("val2_old", t_old2), ("val1_new", t_new1), ("val2_new", t_new2)):
                put(k, v)
            del old, new, again, windows
            run = tmp / f"run-{r}"
            put("pre", preflight(ds, run, quiet=True)["seconds"])
            put("pre_resume", preflight(ds, run, quiet=True)["seconds"])
            shutil.rmtree(run / PREFLIGHT)
            put("pre_1", preflight(ds, run, quiet=True, threads=1)["seconds"])
            print(f"round {r + 1}: loader {res['load_old'][-1]:.2f} -> {res['load_new'][-1]:.2f} batches/s with the "
                  f"step, validation {t_old1:.1f} -> {t_new1:.1f} s first, {t_old2:.1f} -> {t_new2:.3f} s later, "
                  f"preflight {res['pre'][-1]:.1f} s", flush=True)

        med = {k: statistics.median(v) for k, v in res.items()}
        threads = io_threads()
        gb = shape["bytes"] / 1e9
        step_name = f"{args.step} {args.step_ms:.0f} ms" if args.step_ms > 0 else "none"
        rows = [
            ("loader, no step (batches/s)", med["load0_old"], med["load0_new"], med["load0_new"] / med["load0_old"]),
            (f"loader, step {step_name} (batches/s)", med["load_old"], med["load_new"], med["load_new"] / med["load_old"]),
            ("first validation, data (s)", med["val1_old"], med["val1_new"], med["val1_old"] / med["val1_new"]),
            ("later validation, data (s)", med["val2_old"], med["val2_new"], med["val2_old"] / max(med["val2_new"], 1e-9)),
        ]
        print(f"\nmedians of {args.rounds} rounds. old: the code before (loader prefetch 0; validation through "
              f"iter_titles, whole shards); new: loader prefetch {args.prefetch}, validation EvalWindows")
        print(f"{'':40s} {'old':>10s} {'new':>10s}   new vs old")
        for name, a, b, gain in rows[:2]:
            print(f"{name:40s} {a:10.2f} {b:10.2f}   x{gain:.2f}")
        for name, a, b, gain in rows[2:]:
            print(f"{name:40s} {a:10.2f} {b:10.3f}   " + (f"{gain:.2f}x faster" if b >= 0.01 else "no file read"))
        print(f"\npreflight, {shape['files']} files, {gb:.2f} GB (new; the old code had none)")
        print(f"  first start, {threads} thread{'s' if threads > 1 else ''}: {med['pre']:7.2f} s  "
              f"({gb / med['pre']:.2f} GB/s; {med['pre'] / shape['files']:.2f} s a file)")
        print(f"  first start, 1 thread:  {med['pre_1']:7.2f} s  ({gb / med['pre_1']:.2f} GB/s)")
        print(f"  resume, files unchanged: {med['pre_resume']:7.3f} s")
        print(f"  at the audit's catalog (84 files, 14.6 GB), by this rate: ~{14.6 / (gb / med['pre']):.0f} s with "
              f"{threads} thread{'s' if threads > 1 else ''}, ~{14.6 / (gb / med['pre_1']):.0f} s with 1, from the "
              "page cache")
        print("\nvalidation windows: the same tensors in old and new, every round")
    finally:
        if args.keep and not args.data:
            print(f"kept {data}")
        else:  # the runs' preflight records, and the dataset unless it is --data's
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
