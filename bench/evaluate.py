"""Wall time and peak memory of `mediafm evaluate`, per 1,000 clips, at two corpus sizes.

    .venv/bin/python bench/evaluate.py [--titles 40 80] [--seeds 3]

For each size: a synthetic corpus (production dims, 2304-d fused), a `tiny`
MediaFM trained for a few steps on its train titles, then `mediafm evaluate`
in its own process (peak RSS is that process's). The last line is the ratio
of the per-clip costs between the two sizes: near 1 means evaluation scales
linearly with the number of clips.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(n_titles: int, seeds: int, work: Path) -> dict:
    from mediafm.profiles import PRODUCTION
    from mediafm.synth import write_corpus
    from trainer.train import TrainConfig, train

    data = write_corpus(work / f"data-{n_titles}", n_titles=n_titles, layout=PRODUCTION.layout, seed=0, shots=(40, 300),
                        val_fraction=0.05, test_fraction=0.5)
    run = work / f"run-{n_titles}"
    train(data, run, TrainConfig(config="tiny", max_steps=5, batch_size=4, eval_every=5, ckpt_every=5,
                                 val_batches=1), {"max_shots": 512}, quiet=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mediafm.cli", "evaluate", "--data", str(data), "--run", str(run),
                    "--out", str(work / f"report-{n_titles}"), "--seeds", str(seeds)],
                   check=True, cwd=ROOT, capture_output=True)
    wall = time.perf_counter() - t0
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    res = json.loads((work / f"report-{n_titles}" / "results.json").read_text())
    return {"titles": res["n_titles"], "clips": res["n_clips"], "wall_s": wall, "peak_rss_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--titles", type=int, nargs=2, default=[40, 80], help="corpus sizes (half are evaluation titles)")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.titles:
            r = one(n, args.seeds, Path(tmp))
            rows.append(r)
            print(f"{r['titles']:4d} eval titles, {r['clips']:5d} clips: {r['wall_s']:7.1f} s "
                  f"({1000 * r['wall_s'] / r['clips']:.1f} s per 1,000 clips), peak RSS {r['peak_rss_mb']:.0f} MB",
                  flush=True)
    a, b = rows
    print(f"\nper-clip time ratio, {b['clips']} vs {a['clips']} clips: "
          f"x{(b['wall_s'] / b['clips']) / (a['wall_s'] / a['clips']):.2f}; "
          f"peak memory ratio x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
