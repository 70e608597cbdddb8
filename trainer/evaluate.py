"""`mediafm evaluate`: linear probes on frozen clip embeddings, the ablation table.

    mediafm evaluate --data DATASET --run runs/small [--run runs/other ...] --out report/
    mediafm evaluate --data DATASET --run runs/small --run runs/small@copy_span=8 --out report/

A run named RUN@KEY=VALUE[,KEY=VALUE] is the same trained run with settings that
act at inference only changed (SERVED: copy_wide, copy_span, sharp_span), as an export of
it with those values would serve it: its rows are named `small@copy_span=8:...`.

For every clip of the evaluation titles (split `test`; never seen in
pretraining) and every representation below, a ridge probe per task is
trained on some titles and scored on others (10 folds over titles, three
seeds), giving the rows of the ablation table:

    video | audio | text      one modality alone: its slice of the fused vectors, mean over the clip
    concat                    the fused vectors (the model's input, no context), mean over the clip
    avg-k3 | avg-k8           context without learning: the fused vectors of the clip and k shots on either side
                              (cut at the title's ends), mean
    clip+next12               the fused vectors of the clip and the 12 shots after it, mean
    <run>:clip                MediaFM run on the clip's shots alone, hidden states, mean
    <run>:context             MediaFM over the whole title (window plan), the clip's hidden states, mean
    <run>:context-output      the model's output for the clip's shots (copy head or output projection; fused space):
                              what the pipeline publishes by default (mediafm/representations.py)
    <run>:context+input       per shot, the unit output plus the unit fused input, halved: the other published
                              vector of the fused width, the shot's own detail beside its context, mean
    <run>:sharp+input         (a copy head with copy_wide) the same with the sharp copy alone, as trained (over
                              the whole window): what the wide copy and sharp_span add

Writes report.md (mean +- std over seeds), results.json, PNG plots and the
clip features (features/<representation>.npy, memory-mapped while written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import get_type_hints

import numpy as np
import torch
from tqdm import tqdm

from mediafm.dataset import Dataset, Title
from mediafm.errors import DatasetError, MediaFMError, ModelError
from mediafm.model import INFERENCE_ONLY, MediaFMConfig, MediaFMEncoder
from mediafm.representations import context_plus_input
from mediafm.windows import plan
from trainer.probes import TASKS, Task, evaluate_task, multilabel_targets
from trainer.train import latest_checkpoint, load_checkpoint, read_log

SERVED = {name: get_type_hints(MediaFMConfig)[name] for name in INFERENCE_ONLY}
"""MediaFMConfig fields used at inference only, and their types: a trained run can be evaluated with other
values of them."""


def parse_run(spec: str | Path) -> tuple[str, Path, dict]:
    """A --run: 'DIR' or 'DIR@KEY=VALUE[,KEY=VALUE]' (KEY in SERVED) -> (row name, run dir, overrides)."""
    path, at, tail = str(spec).rpartition("@")
    if not at or not tail or "=" not in tail or "/" in tail:  # a directory whose name holds an '@'
        return Path(spec).name, Path(spec), {}
    served = {}
    for item in tail.split(","):
        key, _, value = item.partition("=")
        if key not in SERVED or not value:
            raise ValueError(f"--run {spec}: {item!r}; after '@' give KEY=VALUE pairs, KEY one of {', '.join(SERVED)} "
                             "(settings used at inference only), e.g. runs/small@copy_span=8")
        try:
            served[key] = SERVED[key](value)
        except ValueError:
            raise ValueError(f"--run {spec}: {key}={value!r} is not a number") from None
    return f"{Path(path).name}@{tail}", Path(path), served


def _trained_modalities(run: Path) -> dict | None:
    """The modality slices of the dataset the run was trained on (its config.json's dataset_meta); None where the
    run does not say."""
    try:
        meta = json.loads((run / "config.json").read_text()).get("dataset_meta") or {}
    except (OSError, ValueError):
        return None
    mods = meta.get("modalities")
    return {k: list(v) for k, v in mods.items()} if isinstance(mods, dict) else None


def load_run_encoder(run: Path, served: dict | None = None) -> MediaFMEncoder:
    """The encoder of a run's latest checkpoint, with `served` (SERVED fields) in place of its own values."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise ModelError(f"no checkpoint in {run / 'checkpoints'}; train first or pass another --run")
    enc = load_checkpoint(ckpt)[0].encoder
    if served:
        enc.cfg = dataclasses.replace(enc.cfg, **served)  # validated again (__post_init__)
    return enc


@torch.no_grad()
def contextual(enc: MediaFMEncoder, fused: np.ndarray, title: np.ndarray, *, size: int | None = None,
               stride: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Hidden, output (as served) and (for a copy head with copy_wide) the sharp copy alone, as trained
    (over the whole window), per shot, from passes over the whole title, in process; None for the sharp
    copy of other models.

    The same window plan as the contextualise stage (streams/contextualise.py):
    windows of `size` shots (default the model's max_shots) every `stride`
    (default size / 2, the pipeline's default), each shot from its most central window.
    """
    size = size or enc.cfg.max_shots
    windows, owner = plan(len(fused), size=size, stride=stride or max(1, size // 2))
    wide = enc.cfg.widens
    hid = np.zeros((len(fused), enc.cfg.hidden), np.float32)
    out = np.zeros_like(fused)
    sharp = np.zeros_like(fused) if wide else None
    t = torch.tensor(title)[None]  # pyarrow hands out read-only arrays
    for k, w in enumerate(windows):
        x = torch.from_numpy(fused[w.start : w.end])[None]
        h, o = enc(x, t, None, wide=False)  # the sharp copy as trained, and the served output from the same pass
        mine = np.flatnonzero(owner == k)
        hid[mine] = h[0, mine - w.start].numpy()
        if wide:
            sharp[mine] = o[0, mine - w.start].numpy()
        if enc.cfg.head == "copy":
            o = enc.served_copy(h, x, trained=o)
        out[mine] = o[0, mine - w.start].numpy()
    return hid, out, sharp


# Context without learning (issue 17): name -> (shots before the clip, shots after it), averaged with the clip.
# A learned model in context should beat these; they show how much a plain moving average already gets.
MOVING_AVERAGES: dict[str, tuple[int, int]] = {"avg-k3": (3, 3), "avg-k8": (8, 8), "clip+next12": (0, 12)}


def feature_file(name: str) -> str:
    """The .npy file of a representation's clip features: its name with ':' as '.' and anything a file name
    should not hold (a '/' in a modality's name, which the dataset format allows) as '_'."""
    return re.sub(r"[^\w.+@=,-]", "_", name.replace(":", ".")) + ".npy"


def window_mean(fused: np.ndarray, first: int, last: int, before: int, after: int) -> np.ndarray:
    """Mean of fused[first - before : last + after + 1], cut at the title's ends."""
    return fused[max(0, first - before) : min(len(fused), last + after + 1)].mean(0)


def clip_features(ds: Dataset, clips, runs: dict[str, MediaFMEncoder], *, store: Path | None = None,
                  progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Title]]:
    """Representation name -> (n_clips, dim) features, in clips' row order.

    Titles stream shard by shard; with `store`, features go to memory-mapped
    .npy files there (one per representation), so a catalog-sized evaluation
    does not hold them in RAM, and they stay behind for other probes.
    """
    taken = {"concat", *MOVING_AVERAGES} | {f"{r}:{what}" for r in runs for what in
                                            ("clip", "context", "context-output", "context+input", "sharp+input")}
    for m in ds.meta.modalities:  # a row each: one of the same name would be overwritten by the other's features
        if m in taken or m in runs:
            raise DatasetError(f"{ds.root / 'meta.json'}: modality {m!r} has the name of another row of the report "
                               f"({sorted(taken | set(runs))}); rename it in meta.json's modalities")
    by_title: dict[str, list[int]] = {}
    for i, tid in enumerate(clips.column("title_id").to_pylist()):
        by_title.setdefault(tid, []).append(i)
    first = clips.column("first_shot").to_numpy()
    last = clips.column("last_shot").to_numpy()
    n = clips.num_rows
    feats: dict[str, np.ndarray] = {}
    kept: dict[str, Title] = {}

    def put(name: str, i: int, v: np.ndarray) -> None:
        if name not in feats:
            if store is None:
                feats[name] = np.zeros((n, v.shape[-1]), np.float32)
            else:
                store.mkdir(parents=True, exist_ok=True)
                feats[name] = np.lib.format.open_memmap(store / feature_file(name), mode="w+",
                                                        dtype=np.float32, shape=(n, v.shape[-1]))
        feats[name][i] = v

    infos = [ds.titles[t] for t in by_title]
    bar = tqdm(total=len(infos), unit="title", desc="embedding clips", disable=not progress)
    for title in ds.iter_titles(infos):
        tid = title.info.title_id
        if len(kept) < 1:
            kept[tid] = title
        ctx = {name: contextual(enc, title.fused, title.info.title_embedding) for name, enc in runs.items()}
        for i in by_title[tid]:
            sl = slice(int(first[i]), int(last[i]) + 1)
            for m, (lo, hi) in ds.meta.modalities.items():
                put(m, i, title.fused[sl, lo:hi].mean(0))
            put("concat", i, title.fused[sl].mean(0))
            for name, (before, after) in MOVING_AVERAGES.items():
                put(name, i, window_mean(title.fused, int(first[i]), int(last[i]), before, after))
            for name, enc in runs.items():  # the clip alone, in windows as a title (a clip may outgrow one)
                put(f"{name}:clip", i, contextual(enc, title.fused[sl], title.info.title_embedding)[0].mean(0))
                put(f"{name}:context", i, ctx[name][0][sl].mean(0))
                put(f"{name}:context-output", i, ctx[name][1][sl].mean(0))
                put(f"{name}:context+input", i, context_plus_input(ctx[name][1][sl], title.fused[sl]).mean(0))
                if ctx[name][2] is not None:  # what the wide copy adds
                    put(f"{name}:sharp+input", i, context_plus_input(ctx[name][2][sl], title.fused[sl]).mean(0))
        bar.update(1)
    bar.close()
    return feats, kept


def targets(task: Task, clips) -> tuple[np.ndarray, np.ndarray]:
    """(y, labelled mask) for one task; null cells are unlabelled clips."""
    if task.column not in clips.column_names:
        return np.zeros(clips.num_rows), np.zeros(clips.num_rows, bool)
    col = clips.column(task.column).to_pylist()
    mask = np.array([v is not None for v in col], dtype=bool)
    if task.kind == "multilabel":
        n_classes = task.n_classes or 1 + max((max(v) for v in col if v), default=0)
        return multilabel_targets([v or [] for v in col], n_classes), mask
    return np.array([float(v) if v is not None else 0.0 for v in col]), mask


def run_probes(feats: dict[str, np.ndarray], clips, *, seeds: int, folds: int, progress: bool = True) -> dict:
    titles = np.array(clips.column("title_id").to_pylist())
    results: dict[str, dict[str, dict]] = {}
    jobs = [(rep, task) for rep in feats for task in TASKS]
    for rep, task in tqdm(jobs, desc="probes", disable=not progress):
        y, labelled = targets(task, clips)
        n_titles = len(np.unique(titles[labelled]))
        if n_titles < 2:  # no held-out title to score a probe on; markdown() says so
            continue
        k = min(task.folds, folds, n_titles)  # fewer labelled titles than folds: one title a fold
        vals = [evaluate_task(task, feats[rep][labelled], y[labelled], titles[labelled], n_folds=k, seed=s)
                for s in range(seeds)]
        with warnings.catch_warnings():  # a task undefined on every fold (all NaN) is reported as n/a
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = float(np.nanmean(vals)), float(np.nanstd(vals))
        results.setdefault(rep, {})[task.name] = {"mean": mean, "std": std, "seeds": vals,
                                                  "n_clips": int(labelled.sum()), "n_titles": n_titles, "folds": k}
    return results


def labelled_titles(clips) -> dict[str, int]:
    """Task name -> how many titles have a labelled clip for it."""
    titles = np.array(clips.column("title_id").to_pylist(), dtype=object)
    return {task.name: len(set(titles[targets(task, clips)[1]])) for task in TASKS}


def strict_json(x):
    """x with every NaN or infinite float as None: results.json stays JSON any parser reads (no bare NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [strict_json(v) for v in x]
    return x


UNDEFINED = {
    "multilabel": "no positive label in any test fold",
    "binary": "every test fold holds one class only (all positives or all negatives)",
    "ranking": "no title with 2 or more labelled clips in a test fold (Kendall's tau is within a title)",
}
"""Why a task's metric can be undefined on every fold (the report's n/a), by kind."""


def markdown(results: dict, *, seeds: int, folds: int, labelled: dict[str, int] | None = None) -> str:
    tasks = [t for t in TASKS if any(t.name in r for r in results.values())]
    lines = [f"| representation | {' | '.join(t.name for t in tasks)} |",
             "| --- |" + " --- |" * len(tasks),
             f"| *metric* | {' | '.join(t.metric for t in tasks)} |"]

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        return "n/a" if not math.isfinite(r["mean"]) else f"{r['mean']:.3f} ± {r['std']:.3f}"

    for rep, row in results.items():
        lines.append(f"| {rep} | {' | '.join(cell(row.get(t.name)) for t in tasks)} |")
    first = {t.name: next(r[t.name] for r in results.values() if t.name in r) for t in tasks}
    k = ", ".join(f"{t.name} {first[t.name].get('folds', min(t.folds, folds))}" for t in tasks)
    note = ""
    if any(name in results for name in MOVING_AVERAGES):
        note = ("\n\nContext without learning: avg-k3 / avg-k8 = mean of the fused vectors of the clip and k shots on "
                "either side; clip+next12 = the clip and the 12 shots after it (cut at the title's ends).\n")
    undefined = sorted({t.name for t in tasks for row in results.values()
                        if t.name in row and not math.isfinite(row[t.name]["mean"])})
    for name in undefined:
        task = next(t for t in TASKS if t.name == name)
        note += f"\n{name}: n/a where its metric is undefined on every fold: {UNDEFINED[task.kind]}.\n"
    for name, n in (labelled or {}).items():
        if name not in first:
            note += (f"\n{name}: not probed: {'no clip is' if n == 0 else 'only 1 title is'} labelled for it "
                     "(a probe is scored on held-out titles).\n")
        elif first[name].get("folds", folds) < min(next(t for t in TASKS if t.name == name).folds, folds):
            note += (f"\n{name}: {first[name]['folds']} folds, one a title: only {n} titles are labelled for it.\n")
    return "\n".join(lines) + (f"\n\nmean ± std over {seeds} seeds of k-fold cross-validation over titles "
                               f"(folds: {k}); ridge probes, alpha by 3-fold inner CV over training titles.\n") + note


SIMILARITY_SHOTS = 512
"""similarity.png shows at most this many shots of its title (a pass over them alone)."""


def plots(out: Path, results: dict, kept: dict[str, Title], runs: dict[str, MediaFMEncoder],
          run_dirs: dict[str, Path]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    tasks = [t for t in TASKS if any(t.name in r for r in results.values())]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 4.5), squeeze=False)
    reps = list(results)
    for ax, task in zip(axes[0], tasks, strict=True):
        m = [results[r].get(task.name, {}).get("mean", np.nan) for r in reps]
        e = [results[r].get(task.name, {}).get("std", 0) for r in reps]
        ax.barh(range(len(reps)), m, xerr=e, color=["#999" if ":" not in r else "#2a6" for r in reps])
        ax.set_yticks(range(len(reps)), reps if ax is axes[0][0] else [""] * len(reps))
        ax.set_title(f"{task.name}\n({task.metric})", fontsize=9)
        ax.invert_yaxis()
    fig.suptitle("Linear probes on frozen clip embeddings (green: MediaFM)")
    fig.tight_layout()
    fig.savefig(out / "probes.png", dpi=110)
    plt.close(fig)
    made.append(out / "probes.png")

    curves = {}  # one training curve a run dir, though it may be evaluated with several inference settings
    for name, run in run_dirs.items():
        curves.setdefault(run.resolve(), name.split("@")[0])
    for run, name in curves.items():
        log = run / "log.jsonl"
        if log.exists():
            rows = read_log(log)
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot([r["step"] for r in rows if "train_loss" in r], [r["train_loss"] for r in rows if "train_loss" in r],
                    alpha=0.5, label="train")
            va = [r for r in rows if "val_loss" in r]
            ax.plot([r["step"] for r in va], [r["val_loss"] for r in va], "o-", label="val")
            if va and "title_mean" in va[-1]:
                ax.axhline(va[-1]["title_mean"], ls="--", c="gray", label="title-mean baseline")
                ax.axhline(va[-1]["neighbours"], ls=":", c="gray", label="neighbours baseline")
            ax.set_xlabel("step")
            ax.set_ylabel("masked-shot cosine distance")
            ax.set_title(f"training curve: {name}")
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out / f"training-{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            made.append(path)

    if kept and runs:
        title = next(iter(kept.values()))
        name, enc = next(iter(runs.items()))
        shown = min(len(title.fused), SIMILARITY_SHOTS)  # an n x n matrix: a 30,000-shot title would need GBs
        fused = title.fused[:shown]
        hid, _, _ = contextual(enc, fused, title.info.title_embedding)

        def cos(x: np.ndarray) -> np.ndarray:
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            return x @ x.T

        fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
        for ax, mat, label in ((axes[0], cos(fused), "fused shots (no context)"),
                               (axes[1], cos(hid), f"MediaFM in context ({name})")):
            im = ax.imshow(mat, cmap="viridis", vmin=-0.2, vmax=1)
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("shot")
        axes[0].set_ylabel("shot")
        fig.colorbar(im, ax=axes, shrink=0.8, label="cosine similarity")
        first = f", its first {shown} of {len(title.fused)} shots" if shown < len(title.fused) else ""
        fig.suptitle(f"shot-by-shot similarity, title {title.info.title_id}{first}: scenes emerge as blocks")
        path = out / "similarity.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def evaluation_clips(ds: Dataset, split: str = "test"):
    """The labelled clips of the split's titles (a pyarrow table, clips.parquet's rows in order): what every
    representation is probed on. Pretraining never sees these titles: the trainer reads split "train" only."""
    clips = ds.clips()
    if clips is None:
        raise DatasetError(f"{ds.root / 'clips.parquet'}: missing; evaluation needs labelled clips")
    eval_titles = {t.title_id for t in ds.split(split)}
    if not eval_titles:
        raise DatasetError(f"{ds.root / 'titles.parquet'}: no titles with split={split!r} to evaluate on (column "
                           "'split'; a title without one, or a null cell, is train); mark the titles to evaluate on, "
                           "which training never reads, or pass --split")
    return clips.filter(np.array([t in eval_titles for t in clips.column("title_id").to_pylist()], dtype=bool))


def evaluate(data: str | Path, runs: list[str | Path], out: str | Path, *, seeds: int = 3, folds: int = 10,
             split: str = "test", progress: bool = True, plot: bool = True) -> dict:
    t0 = time.perf_counter()
    if folds < 2 or seeds < 1:  # before the feature pass, which can take hours on a catalog
        raise ValueError(f"--folds {folds} --seeds {seeds}: a probe needs at least 2 folds (one to fit, one to "
                         "score) and 1 seed; the defaults are --folds 10 --seeds 3")
    ds = Dataset(data)
    clips = evaluation_clips(ds, split)
    specs = [parse_run(r) for r in runs]
    if len({name for name, _, _ in specs}) < len(specs):
        raise ValueError(f"runs {[str(r) for r in runs]}: two have the same name; their rows would mix")
    run_dirs = {name: path for name, path, _ in specs}
    encoders = {name: load_run_encoder(path, served) for name, path, served in specs}
    for name, enc in encoders.items():
        if (enc.cfg.fused_dim, enc.cfg.title_dim) != (ds.meta.fused_dim, ds.meta.title_dim):
            raise ModelError(f"--run {run_dirs[name]}: the model takes fused_dim={enc.cfg.fused_dim}, "
                             f"title_dim={enc.cfg.title_dim}; {ds.root / 'meta.json'} says fused_dim="
                             f"{ds.meta.fused_dim}, title_dim={ds.meta.title_dim}: evaluate it on a dataset of its "
                             "layout, or train a run on this one")
        trained = _trained_modalities(run_dirs[name])
        here = {k: list(v) for k, v in ds.meta.modalities.items()}
        if trained is not None and trained != here:  # the same widths in another order: inputs shuffled, silently
            raise ModelError(f"--run {run_dirs[name]} was trained on modality slices {trained}; "
                             f"{ds.root / 'meta.json'} has {here}: the same width, another layout, so the model "
                             "would read one modality as another. Evaluate it on a dataset of its layout (or "
                             "reorder this one's fused columns), or train a run on this one")
    labelled = labelled_titles(clips)
    if max(labelled.values()) < 2:
        raise DatasetError(f"{ds.root / 'clips.parquet'}: nothing to probe: {clips.num_rows} clips of the "
                           f"{len(ds.split(split))} {split!r} titles, and no task has labelled clips on 2 or more of "
                           f"them (titles with a labelled clip: {labelled}); a probe is scored on held-out titles. "
                           "Label clips of more titles (a null cell is unlabelled), or evaluate another --split")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    feats, kept = clip_features(ds, clips, encoders, store=out / "features", progress=progress)
    results = run_probes(feats, clips, seeds=seeds, folds=folds, progress=progress)
    table = markdown(results, seeds=seeds, folds=folds, labelled=labelled)
    elapsed = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(strict_json({
        "data": str(Path(data).resolve()), "runs": {k: str(v.resolve()) for k, v in run_dirs.items()},
        "served": {name: served for name, _, served in specs if served},
        "split": split, "seeds": seeds, "folds": folds, "n_clips": clips.num_rows,
        "n_titles": len(set(clips.column("title_id").to_pylist())), "seconds": elapsed, "results": results}),
        indent=2, allow_nan=False))
    (out / "report.md").write_text(f"# MediaFM linear-probe evaluation\n\ndata: `{data}`, {clips.num_rows} clips of "
                                   f"{len(ds.split(split))} `{split}` titles\n\n{table}")
    made = plots(out, results, kept, encoders, run_dirs) if plot else []
    if progress:
        print(table)
        print(f"wrote {out / 'report.md'}, {out / 'results.json'}, " + ", ".join(p.name for p in made)
              + f" in {elapsed:.0f}s")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mediafm evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="v1 dataset with clips.parquet")
    p.add_argument("--run", action="append", default=[],
                   help="a trained run dir (repeat to compare runs); DIR@copy_span=8 (or copy_wide=2, sharp_span=8, "
                   "several comma separated): the same run with that inference setting, beside it")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=10, help="most outer folds over titles (popularity 10, others 5)")
    p.add_argument("--split", default="test", help="titles to evaluate on (default test)")
    args = p.parse_args(argv)
    try:
        evaluate(args.data, args.run, args.out, seeds=args.seeds, folds=args.folds, split=args.split)
    except (MediaFMError, ValueError) as e:
        print(f"mediafm evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
