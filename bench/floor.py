"""How far below the context-free predictors masked-shot loss can go in each stand-in world (issue 17, item 4).

    .venv/bin/python bench/floor.py [--worlds standin noisy-shots] [--titles 150] [--seeds 3]

The trainer compares its validation loss with two predictors that learn nothing
(the mean of the window's visible shots, and the two neighbours). How much lower
a model can go depends on the world: a masked shot is its scene's content plus
noise of its own, and no predictor can know that noise. This script asks the
generator (mediafm/synth.py) for each shot's noise-free content, by drawing the
same titles again with the noise scaled to zero (the same random draws, so the
same scenes, cast, settings and tones), and scores a predictor that knows it: per
modality, the noise-free direction times the mean projection of the noisy shots
on it (the expected shot given its content, up to how that projection varies from
shot to shot). That predictor is the floor's estimate: a model has to infer the
content from the visible shots, so it stays above it. A second predictor, the
copies, is the mean of the window's visible shots with the same noise-free
content (same scene, same side of its shot / reverse shot): what a copy head
(MediaFM's output is a weighted mean of its window's shots) reaches if it picks
exactly the right shots and weighs them alike.

Printed per world (mean ± sd over corpus seeds; titles, shot counts, widths and
64-shot windows as bench/worlds.py trains with, masks at the model's rate 0.2):
masked-shot cosine distance of the title mean, the neighbours, the copies and the
oracle, and the copies and the oracle over the title mean (the oracle's: the
lowest ratio any model can reach there), to read beside the validation ratios
bench/worlds.py prints. Worlds of the second generator (bench/elsewhere.py) are
skipped: it does not draw its noise apart. Seconds per world on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WINDOW = 64
"""Shots a window: the `tiny` model's max_shots, what bench/worlds.py trains."""


def draw(world, n_titles: int, shots: tuple[int, int], seed: int, noise: float) -> list:
    """The corpus' titles as write_corpus draws them (mediafm.synth.corpus_titles), at this noise."""
    from mediafm.synth import corpus_titles

    return [t for t, _, _ in corpus_titles(world, n_titles, seed=seed, shots=shots, noise=noise)]


def oracle(noisy: np.ndarray, clean: np.ndarray, present: np.ndarray, slices: list[tuple[int, int]]) -> np.ndarray:
    """Per shot, the noise-free direction of each present modality scaled by the mean projection of the fused
    noisy shots on it (over every shot where the modality is present)."""
    pred = np.zeros_like(noisy)
    for m, (lo, hi) in enumerate(slices):
        keep = present[:, m]
        u = clean[keep, lo:hi]
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        a = float(np.mean(np.sum(noisy[keep, lo:hi] * u, axis=1)))
        pred[keep, lo:hi] = a * u
    return pred


def losses(titles_noisy: list, titles_clean: list, slices: list[tuple[int, int]], seed: int) -> dict[str, float]:
    """Masked-shot cosine distance of the title mean, the neighbours (trainer.train.baseline_losses), the oracle
    and the copies (the module's docstring), over 64-shot windows of every title, one mask of rate 0.2 a window."""
    import torch

    from mediafm.model import mask_positions, msm_loss
    from trainer.data import Batch
    from trainer.train import baseline_losses

    x = np.concatenate([t.fused for t in titles_noisy])
    pred = oracle(x, np.concatenate([t.fused for t in titles_clean]),
                  np.concatenate([t.present for t in titles_noisy]), slices)
    rows_x, rows_p, rows_g, lengths, start = [], [], [], [], 0
    for t in titles_noisy:
        n = len(t.fused)
        group = content_groups(t.scene)
        for lo in range(0, n, WINDOW):
            k = min(WINDOW, n - lo)
            rows_x.append(np.pad(x[start + lo:start + lo + k], ((0, WINDOW - k), (0, 0))))
            rows_p.append(np.pad(pred[start + lo:start + lo + k], ((0, WINDOW - k), (0, 0))))
            rows_g.append(np.pad(group[lo:lo + k], (0, WINDOW - k), constant_values=-1))
            lengths.append(k)
        start += n
    shots, lengths_t = torch.from_numpy(np.stack(rows_x)), torch.tensor(lengths)
    mask = mask_positions(lengths_t, WINDOW, 0.2, generator=torch.Generator().manual_seed(seed))

    batch = Batch(shots, torch.zeros(len(lengths), 1), lengths_t, title_ids=[], starts=[])  # no title input used
    out = baseline_losses(batch, mask)
    out["oracle"] = msm_loss(torch.from_numpy(np.stack(rows_p)), shots, mask).item()
    g = torch.from_numpy(np.stack(rows_g))
    visible = ((g >= 0) & ~mask).float()
    same = (g[:, :, None] == g[:, None, :]).float() * visible[:, None, :]  # (B, T, T): visible shots, same content
    fallback = (shots * visible[..., None]).sum(1, keepdim=True) / visible.sum(1)[:, None, None].clamp(min=1)
    count = same.sum(2, keepdim=True)
    copies = torch.where(count > 0, (same @ shots) / count.clamp(min=1), fallback.expand_as(shots))
    out["copies"] = msm_loss(copies, shots, mask).item()
    return out


def content_groups(scene: np.ndarray) -> np.ndarray:
    """Shots of the same noise-free content: the same scene and the same side of its shot / reverse shot
    (mediafm/synth.py alternates the scene's two speakers), as one id per shot."""
    first = np.searchsorted(scene, scene)  # scenes are numbered in order: a scene's first shot
    return 2 * scene + (np.arange(len(scene)) - first) % 2


def world_losses(spec: dict, *, titles: int, shots: tuple[int, int], dims: int, seed: int) -> dict[str, float]:
    """One world (a worlds.toml table) and corpus seed: the four losses."""
    from mediafm.fusion import Layout
    from mediafm.synth import World

    layout = Layout(f"worlds-{dims}", video=dims, audio=dims, text=dims, title=dims)
    knobs = {k: v for k, v in spec.items() if k not in ("about", "noise", "generator")}
    noise = float(spec.get("noise", 1.5))
    noisy = draw(World(layout, seed=seed, **knobs), titles, shots, seed, noise)
    clean = draw(World(layout, seed=seed, **knobs), titles, shots, seed, 0.0)
    return losses(noisy, clean, list(layout.slices.values()), seed)


def main(argv: list[str] | None = None) -> int:
    import time

    from worlds import load_worlds  # bench/worlds.py

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", nargs="+", help="worlds of bench/worlds.toml (default: every mediafm.synth one)")
    p.add_argument("--titles", type=int, default=150, help="titles per corpus (default 150, as bench/worlds.py)")
    p.add_argument("--shots", default="40,120", help="MIN,MAX shots per title (default 40,120, as bench/worlds.py)")
    p.add_argument("--dims", type=int, default=64, help="width of each modality (default 64, as bench/worlds.py)")
    p.add_argument("--seeds", type=int, default=3, help="corpus seeds 1..N (default 3)")
    args = p.parse_args(argv)
    lo, hi = (int(v) for v in args.shots.split(","))
    worlds = load_worlds(ROOT / "bench" / "worlds.toml", args.worlds)
    print("| world | title mean | neighbours | copies | oracle | copies / title mean | oracle / title mean | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, spec in worlds.items():
        if spec.get("generator", "synth") != "synth":
            print(f"| {name} | skipped: generator {spec['generator']} | | | | | | |")
            continue
        t0 = time.perf_counter()
        runs = [world_losses(spec, titles=args.titles, shots=(lo, hi), dims=args.dims, seed=s)
                for s in range(1, args.seeds + 1)]

        def cell(key: str, over: bool = False, runs=runs) -> str:
            v = [r[key] / r["title_mean"] if over else r[key] for r in runs]
            return f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}"

        print(f"| {name} | {cell('title_mean')} | {cell('neighbours')} | {cell('copies')} | {cell('oracle')} | "
              f"{cell('copies', True)} | {cell('oracle', True)} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
