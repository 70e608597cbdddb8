"""Window plans: model cost per shot vs the centred-window reference, and how far their outputs are from it.

    .venv/bin/python bench/windows.py [--run RUN_DIR] [--shots 1500] [--titles 1]

The reference gives every shot its own pass, a window of `size` shots centred on
it (n passes per title). A plan with stride s runs about n / s passes and takes
each shot from the window where it sits most centrally (mediafm/windows.py, what
the contextualise stage does). Printed per stride: passes per shot, model FLOPs
per shot (2 x encoder parameters per token + attention) and their ratio to the
reference, and the cosine of each shot's hidden state to its reference one
(median and 1st percentile over shots).

Without --run a `small` MediaFM with random weights is used (its attention
still mixes the window, so the numbers show the plan's effect; a trained run
is the honest measure).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mediafm.model import CONFIGS, MediaFMConfig, MediaFMEncoder
from mediafm.profiles import PRODUCTION
from mediafm.synth import World, generate_title
from mediafm.windows import centred, plan


def flops_per_pass(cfg: MediaFMConfig, T: int) -> float:
    params = sum(p.numel() for n, p in MediaFMEncoder(cfg).named_parameters() if not n.startswith("pos"))
    return 2.0 * params * (T + 2) + 4.0 * cfg.n_layers * (T + 2) ** 2 * cfg.hidden


@torch.no_grad()
def hidden_for(enc: MediaFMEncoder, fused: np.ndarray, title: np.ndarray, windows, owner) -> np.ndarray:
    out = np.zeros((len(fused), enc.cfg.hidden), np.float32)
    t = torch.from_numpy(title)[None]
    cache: dict = {}
    for i in range(len(fused)):
        w = windows[owner[i]]
        if (w.start, w.end) not in cache:
            cache = {(w.start, w.end): enc(torch.from_numpy(fused[w.start : w.end])[None], t, None)[0][0].numpy()}
        out[i] = cache[(w.start, w.end)][i - w.start]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="trained run dir (default: random-init small)")
    ap.add_argument("--shots", type=int, default=1500)
    ap.add_argument("--titles", type=int, default=1)
    ap.add_argument("--strides", help="comma-separated (default: the window, 3/4, 1/2 and 1/4 of it)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.run:
        from trainer.train import latest_checkpoint, load_checkpoint

        model, _ = load_checkpoint(latest_checkpoint(Path(args.run)))
        enc = model.encoder.eval()
    else:
        torch.manual_seed(0)
        enc = MediaFMEncoder(MediaFMConfig(**{**CONFIGS["small"], "dropout": 0.0}, fused_dim=PRODUCTION.layout.fused_dim,
                                           title_dim=PRODUCTION.layout.title)).eval()
    size = enc.cfg.max_shots
    world = World(PRODUCTION.layout, seed=0)
    titles = [generate_title(world, f"w{i}", args.shots, np.random.default_rng(i)) for i in range(args.titles)]
    per_pass = flops_per_pass(enc.cfg, size)

    refs, t0 = [], time.perf_counter()
    for t in titles:
        ws = centred(args.shots, size=size)
        refs.append(hidden_for(enc, t.fused, t.title_embedding, ws, np.arange(args.shots)))
    ref_s = time.perf_counter() - t0
    print(f"MediaFM {args.run or 'small (random init)'}: window {size} shots, {args.titles} titles x {args.shots} shots")
    print(f"{'plan':>14s} {'passes/shot':>12s} {'GFLOP/shot':>11s} {'cost vs ref':>12s} {'cos median':>11s} "
          f"{'cos p1':>8s} {'wall s':>7s}")
    print(f"{'centred (ref)':>14s} {1.0:12.4f} {per_pass / 1e9:11.3f} {'x1.000':>12s} {1.0:11.4f} {1.0:8.4f} "
          f"{ref_s:7.1f}")
    strides = [int(s) for s in args.strides.split(",")] if args.strides else [size, 3 * size // 4, size // 2, size // 4]
    for stride in strides:
        cos, passes, t0 = [], 0, time.perf_counter()
        for t, ref in zip(titles, refs, strict=True):
            windows, owner = plan(args.shots, size=size, stride=stride)
            passes += len(windows)
            h = hidden_for(enc, t.fused, t.title_embedding, windows, owner)
            cos.append((h * ref).sum(1) / (np.linalg.norm(h, axis=1) * np.linalg.norm(ref, axis=1)))
        wall = time.perf_counter() - t0
        c = np.concatenate(cos)
        pps = passes / (args.titles * args.shots)
        print(f"{f'stride {stride}':>14s} {pps:12.4f} {pps * per_pass / 1e9:11.3f} {f'x{pps:.3f}':>12s} "
              f"{np.median(c):11.4f} {np.percentile(c, 1):8.4f} {wall:7.1f}")


if __name__ == "__main__":
    main()
