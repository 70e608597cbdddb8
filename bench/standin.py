"""The public stand-in benchmark, end to end: corpus, `small` MediaFM on CPU, the ablation table.

    .venv/bin/python bench/standin.py [--work bench-out/standin] [--titles 700] [--steps 1100] [--seeds 3]

Runs the three commands a user would run, printing each one first:

    mediafm synth corpus --out WORK/data --titles 700 --shots 40,128 --test-fraction 0.3
    mediafm train --data WORK/data --out WORK/run --config small --max_shots 128 ...
    mediafm evaluate --data WORK/data --run WORK/run --out WORK/report --seeds 3

then prints, per task, MediaFM in context (its output, the published vector,
and context+input) and the moving averages against the concatenated inputs (the
model's own input, no context) as ratios, and the wall time of each step.
The corpus is synthetic (mediafm/synth.py documents its latent structure): it
shows whether a model uses context; it does not predict scores on a catalog.

Training recipe (why these flags): 128-shot windows instead of 512, because
on two CPU cores a 512-shot `small` model stays at the title-mean plateau
for the whole budget, while 128-shot windows (batch 16) get past it within a
few hundred steps; no dropout and AdamW lr 3e-3 for the same reason (a short
budget). Evaluation uses the same window length over whole titles.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FLAGS = ["--config", "small", "--max_shots", "128", "--batch_size", "16", "--dropout", "0",
               "--lr_adamw", "3e-3", "--warmup_steps", "30", "--eval_every", "100"]


def step(name: str, cmd: list[str]) -> float:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", *cmd], cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"standin: `mediafm {cmd[0]}` failed with exit {r.returncode}")
    dt = time.perf_counter() - t0
    print(f"[{name}: {dt / 60:.1f} min]", flush=True)
    return dt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="bench-out/standin", help="directory for the corpus, the run and the report")
    p.add_argument("--titles", type=int, default=700)
    p.add_argument("--steps", type=int, default=1100, help="training steps: the CPU time budget (1100: ~20 min on 2 cores)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="corpus and training seed")
    args = p.parse_args(argv)
    work = Path(args.work).resolve()
    data, run, report = work / "data", work / "run", work / "report"
    times = {}
    if not (data / "meta.json").exists():
        times["corpus"] = step("corpus", ["synth", "corpus", "--out", str(data), "--titles", str(args.titles),
                                          "--shots", "40,128", "--test-fraction", "0.3", "--seed", str(args.seed)])
    times["train"] = step("train", ["train", "--data", str(data), "--out", str(run), "--max_steps", str(args.steps),
                                    "--ckpt_every", str(args.steps), "--seed", str(args.seed), *TRAIN_FLAGS])
    times["evaluate"] = step("evaluate", ["evaluate", "--data", str(data), "--run", str(run), "--out", str(report),
                                          "--seeds", str(args.seeds)])
    summary(json.loads((report / "results.json").read_text())["results"], run.name, times)
    return 0


def summary(res: dict, run_name: str, times: dict[str, float]) -> None:
    """Per task: concat, the moving averages, and MediaFM's output (published) and context+input, as ratios to
    concat."""
    base = res["concat"]
    rows = {"avg-k3": "avg-k3", "avg-k8": "avg-k8", "output": f"{run_name}:context-output",
            "context+input": f"{run_name}:context+input"}
    print("\nMediaFM in context (output, the published vector; context+input) and the moving averages vs the "
          "concatenated inputs (no context), ratio to concat:")
    print(f"{'task':14s} {'concat':>15s}" + "".join(f" {k:>14s}" for k in rows))
    wins = dict.fromkeys(("output", "context+input"), 0)
    for task, b in base.items():
        line = f"{task:14s} {b['mean']:8.3f} ± {b['std']:.3f}"
        for k, rep in rows.items():
            c = res[rep][task]
            line += f" {c['mean']:7.3f} x{c['mean'] / b['mean']:5.3f}"
            if k in wins:
                wins[k] += c["mean"] > max(b["mean"], res["avg-k3"][task]["mean"], res["avg-k8"][task]["mean"])
        print(line)
    print(f"above concat and both moving averages on {wins['output']} (output) / {wins['context+input']} "
          f"(context+input) of {len(base)} tasks; " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))


if __name__ == "__main__":
    sys.exit(main())
