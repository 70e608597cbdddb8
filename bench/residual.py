"""Does a context plus the shot's own residual, denoised by its spectrum, escape the trade-off? (issue 17)

    .venv/bin/python bench/residual.py --seeds 5 --out bench-out/residual
    .venv/bin/python bench/residual.py --worlds short-scenes noisy-shots --seeds 3 --out OUT

Every variant of bench/WORLDS.md moves along one line: more of the shot's own input (fewer cells below `concat`) or
more of its context (fewer below the moving averages). Per shot, nothing self-supervised tells a shot's noise from
its own detail. Across a corpus something may: noise drawn for each shot alone spreads over every direction, what
a shot's scene, tone or cast adds to its neighbourhood lies in fewer. This script asks it without learning, with
`avg-k8` (the clip and 8 shots either side) as the context:

  denoised   avg-k8 + P (concat - avg-k8), per clip

P = V_k V_k^T projects onto the strong directions of the residuals of the shots of the corpus's training titles
(each shot's fused input minus the mean of the shots within 8 either side, itself included: avg-k8's window):
the right singular vectors whose singular values pass Gavish and Donoho's hard threshold for a matrix with noise
of unknown level (2014), omega(beta) times the median singular value. Evaluation titles are never fitted on.

Per (world, seed) it draws the corpus bench/worlds.py draws (the same code and arguments, so the same titles; kept
under OUT/<world>/seed<s>/data), probes the four baselines and `denoised` with trainer/evaluate.py's probes, and
prints bench/worlds.py's summary over the grid (each cell called by the paired t-test over the seeds) and the
directions kept per world. No model is trained. The rule it is judged by: bench/WORLDS.md, "The shot's own
residual, denoised by its spectrum".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ROW = "denoised"


def gavish_donoho_rank(singular_values: np.ndarray, shape: tuple[int, int]) -> int:
    """How many singular values of an n x m matrix pass Gavish and Donoho's optimal hard threshold for white noise
    of unknown level: omega(beta) * median singular value, beta = min/max of the shape (their eq. for omega,
    the cubic fit, within 0.02 of the exact value)."""
    beta = min(shape) / max(shape)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    return int((singular_values > omega * np.median(singular_values)).sum())


def neighbourhood_residuals(fused: np.ndarray) -> np.ndarray:
    """Each shot (row) less the mean of avg-k8's window around it: the shots within 8 either side, itself included,
    cut at the title's ends (trainer/evaluate.py's window_mean and MOVING_AVERAGES, for a one-shot clip)."""
    from trainer.evaluate import MOVING_AVERAGES, window_mean

    before, after = MOVING_AVERAGES["avg-k8"]
    x = fused.astype(np.float64)  # as the fit's SVD
    return np.stack([x[i] - window_mean(x, i, i, before, after) for i in range(len(x))])


def fit_projection(ds, split: str = "train") -> tuple[np.ndarray, int]:
    """(P, k): the projection onto the k strong directions of the split's shot residuals, and k."""
    residuals = np.vstack([neighbourhood_residuals(t.fused) for t in ds.iter_titles(ds.split(split))])
    _, s, vt = np.linalg.svd(residuals, full_matrices=False)
    k = gavish_donoho_rank(s, residuals.shape)
    return vt[:k].T @ vt[:k], k


def denoised(own: np.ndarray, around: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """The context plus the part of the clip's own residual in the strong directions: around + P (own - around)."""
    return (around + (own - around) @ projection).astype(np.float32)


def score_run(data: Path, *, folds: int, seeds: int) -> tuple[dict[str, dict[str, float]], int]:
    """Probe scores (row -> task -> mean over fold seeds) of the four baselines and `denoised` on one corpus's test
    clips, and the number of directions kept."""
    import worlds as grid

    from mediafm.dataset import Dataset
    from trainer.evaluate import clip_features, evaluation_clips, run_probes

    ds = Dataset(data)
    clips = evaluation_clips(ds)
    feats, _ = clip_features(ds, clips, {}, progress=False)
    projection, k = fit_projection(ds)
    rows = {name: feats[name] for name in grid.BASE_ROWS}
    rows[ROW] = denoised(feats["concat"], feats["avg-k8"], projection)
    results = run_probes(rows, clips, seeds=seeds, folds=folds, progress=False)
    return {row: {task: v["mean"] for task, v in tasks.items()} for row, tasks in results.items()}, k


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="work dir: the corpora (OUT/<world>/seed<s>/data; a bench/worlds.py "
                   "work dir's are used as they are)")
    p.add_argument("--worlds-file", default=str(ROOT / "bench" / "worlds.toml"), help="the grid (default bench/worlds.toml)")
    p.add_argument("--worlds", nargs="+", metavar="NAME", help="only these worlds (default: the grid's 12, every "
                   "world but the two with ad_scenes, which are another's corpus with other ad labels)")
    p.add_argument("--seeds", type=int, default=5, help="corpus seeds 1..N per world (default 5)")
    p.add_argument("--titles", type=int, default=150, help="titles per corpus, as bench/worlds.py (default 150)")
    p.add_argument("--shots", default="40,120", help="MIN,MAX shots per title, as bench/worlds.py (default 40,120)")
    p.add_argument("--dims", type=int, default=64, help="width of each modality, as bench/worlds.py (default 64)")
    p.add_argument("--folds", type=int, default=5, help="outer folds over evaluation titles (default 5)")
    p.add_argument("--eval-seeds", type=int, default=1, help="fold shuffles per evaluation (default 1)")
    args = p.parse_args(argv)
    import worlds as grid  # bench/worlds.py: its corpora, summary and paired test
    from tqdm import tqdm

    specs = grid.load_worlds(Path(args.worlds_file), args.worlds)
    if not args.worlds:
        specs = {w: spec for w, spec in specs.items() if "ad_scenes" not in spec}
    out = Path(args.out)
    results: dict[str, list[dict]] = {}
    kept: dict[str, list[int]] = {}
    jobs = [(w, s) for w in specs for s in range(1, args.seeds + 1)]
    for world, seed in tqdm(jobs, unit="run", desc="corpora and probes", dynamic_ncols=True):
        data = grid.world_corpus(specs[world], seed, args, out / world / f"seed{seed}" / "data")
        probes, k = score_run(data, folds=args.folds, seeds=args.eval_seeds)
        results.setdefault(world, []).append({"probes": probes})
        kept.setdefault(world, []).append(k)
    print(f"{len(jobs)} corpora of {len(specs)} worlds ({out}); folds {args.folds}, fold seeds {args.eval_seeds}; "
          "no model trained\n")
    print("\n".join(grid.grid_summary(results, [], extra=(ROW,))))
    print("\ndirections kept (of the fused width), per seed:")
    for world, ks in kept.items():
        print(f"  {world:28s} {' '.join(str(k) for k in ks)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
