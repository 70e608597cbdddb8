"""Can one vector carry a clip's own shots and its neighbourhood, for the grid's probes? (issue 17, items 1 and 3)

    .venv/bin/python bench/both.py --out bench-out/worlds          # a finished bench/worlds.py grid
    .venv/bin/python bench/both.py --out OUT --worlds elsewhere short-scenes

Items 1 and 3 of issue 17 ask one published vector to be at or above `concat` (the clip's own shots) in every
cell and above every moving average (`avg-k8`: the clip and 8 shots either side) too. Where a label is set by the
clip's own shots, `concat` wins; where it is set by the scenes around, `avg-k8` does. This script asks what the
grid's ridge probes make of a vector that has both, with no learning at all:

  both:side-by-side   [concat, avg-k8]: both, untouched, at twice the fused width
  both:unit-mean      (unit(concat) + unit(avg-k8)) / 2: both at the fused width, as `context+input` is made

It reads the clip features `mediafm evaluate` stored in each (world, seed) run of a finished grid
(OUT/<world>/seed<s>/report/features), scores them with the same probes (trainer/evaluate.py run_probes, the
grid's folds and fold seed) and prints bench/worlds.py's summary over the grid for them beside the grid's
published output and `context+input`: each cell called by the paired t-test over the seeds against `concat` and
the three moving averages. If carrying both were enough, these rows would be clearly below no baseline. Nothing
is written into OUT; --plot PNG draws the trade-off (each row's cells clearly below `concat` against those clearly
below `avg-k8`). On the 12 worlds x 5 seeds of 2026-12-05 these rows were clearly below a baseline in 16 and 19
cells, the published output in 5 (bench/WORLDS.md, "Is one vector that carries both enough?").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ROWS = ("both:side-by-side", "both:unit-mean")


def both_features(features: Path, n_clips: int | None = None) -> dict[str, np.ndarray]:
    """The two no-learning rows from a run's stored clip features (concat.npy, avg-k8.npy); with n_clips, a store
    of another number of clips (features of an older evaluation) is refused."""
    from mediafm.fusion import unit

    own, around = (np.load(features / f"{name}.npy") for name in ("concat", "avg-k8"))
    expected = len(own) if n_clips is None else n_clips
    for name, x in (("concat", own), ("avg-k8", around)):
        if len(x) != expected:
            raise SystemExit(f"{features / name}.npy: {len(x)} stored clip features for {expected} clips; "
                             "evaluate the run again (bench/worlds.py --out ...)")
    return {"both:side-by-side": np.concatenate([own, around], axis=1), "both:unit-mean": (unit(own) + unit(around)) / 2}


def score_run(work: Path, *, folds: int, seeds: int) -> dict[str, dict[str, float]]:
    """Probe scores (row -> task -> mean over fold seeds) of both rows on one (world, seed) run's test clips."""
    from mediafm.dataset import Dataset
    from trainer.evaluate import evaluation_clips, run_probes

    clips = evaluation_clips(Dataset(work / "data"))
    feats = both_features(work / "report" / "features", clips.num_rows)
    results = run_probes(feats, clips, seeds=seeds, folds=folds, progress=False)
    return {row: {task: v["mean"] for task, v in tasks.items()} for row, tasks in results.items()}


def trade_off(results: dict, reps: list[str]) -> dict[str, tuple[int, int]]:
    """Per representation, over the grid's cells: (cells clearly below concat, cells clearly below avg-k8), each by
    bench/worlds.py's paired t-test over the seeds (clear_counts). Item 1 of issue 17 asks for the first to be 0,
    item 3 for both."""
    import worlds as grid

    counts = {rep: grid.clear_counts(results, rep) for rep in reps}
    return {rep: (c["concat"][1], c["avg-k8"][1]) for rep, c in counts.items()}


def plot_trade_off(counts: dict[str, tuple[int, int]], cells: int, path: Path, title: str) -> None:
    """One point a representation: cells clearly below concat (x) against cells clearly below avg-k8 (y). The
    issue's targets are the corner at (0, 0). Green: MediaFM's rows; grey: rows that learn nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 5.5))
    key = []  # points carry numbers, the key beside the plot names them: labels of near points would overlap
    for n, (rep, (x, y)) in enumerate(sorted(counts.items(), key=lambda kv: kv[1]), start=1):
        learnt = ":" in rep and not rep.startswith("both:")
        ax.scatter(x, y, s=60, color="#2a6" if learnt else "#888", zorder=3)
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(5, 3), fontsize=8)
        key.append(f"{n:>2}  {rep}  ({x}, {y})")
    ax.text(1.02, 1.0, "\n".join(key), transform=ax.transAxes, va="top", fontsize=8, family="monospace")
    ax.scatter([0], [0], marker="*", s=200, color="#c33", zorder=4)
    ax.annotate("issue 17's targets", (0, 0), textcoords="offset points", xytext=(8, -12), fontsize=8, color="#c33")
    ax.set_xlabel(f"cells clearly below concat (of {cells}; paired t-test over seeds)")
    ax.set_ylabel(f"cells clearly below avg-k8 (of {cells})")
    ax.set_xlim(-1, max(x for x, _ in counts.values()) + 2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts of cells
    ax.set_ylim(-2, max(y for _, y in counts.values()) + 4)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a bench/worlds.py work dir with finished runs (its worlds.json)")
    p.add_argument("--worlds", nargs="+", metavar="NAME", help="only these worlds (default: all the grid has)")
    p.add_argument("--plot", metavar="PNG", help="also draw the trade-off: each row's cells clearly below concat "
                   "against those clearly below avg-k8 (issue 17's targets are the corner at 0, 0)")
    args = p.parse_args(argv)
    import worlds as grid  # bench/worlds.py: its summary and paired test
    from tqdm import tqdm

    out = Path(args.out)
    stored = json.loads((out / "worlds.json").read_text())
    folds, seeds, variants = stored["args"]["folds"], stored["args"]["eval_seeds"], stored["variants"]
    unknown = sorted(set(args.worlds or ()) - set(stored["worlds"]))
    if unknown:
        raise SystemExit(f"--worlds {unknown}: not in this grid ({out / 'worlds.json'}); it has {list(stored['worlds'])}")
    runs = {}  # (world, seed dir) -> the grid's record of it, read back from its files as --collect does
    for world in args.worlds or stored["worlds"]:
        for work in sorted((out / world).glob("seed*"), key=lambda d: int(d.name.removeprefix("seed"))):
            if (record := grid.collect(work, variants)) is not None:
                runs[world, work] = record
    if not runs:
        raise SystemExit(f"{out}: no finished (world, seed) run of {args.worlds or list(stored['worlds'])}")
    results: dict[str, list[dict]] = {}
    for (world, work), record in tqdm(runs.items(), unit="run", desc="probes on both", dynamic_ncols=True):
        record["probes"].update(score_run(work, folds=folds, seeds=seeds))
        results.setdefault(world, []).append(record)
    names = grid.run_names(results, list(variants))
    print(f"{len(runs)} runs of {len(results)} worlds ({out}); folds {folds}, fold seeds {seeds}\n")
    print("\n".join(grid.grid_summary(results, names, extra=ROWS)))
    if args.plot:
        seeds_run = "-".join(str(n) for n in sorted({len(v) for v in results.values()}))
        plot_trade_off(trade_off(results, grid.summary_rows(results, names, ROWS)), len(results) * len(grid.TASK_ORDER),
                       Path(args.plot), f"{len(results)} worlds, {seeds_run} seeds: one point a row (green: MediaFM)")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
