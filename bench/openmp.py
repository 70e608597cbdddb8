"""The served MediaFM pass with libgomp's default wait policy and with OMP_WAIT_POLICY=PASSIVE (CPU s, wall s).

Triton's `mediafm_*` model runs torch with `torch_threads` (model_repository/mediafm_offline/config.pbtxt: 2)
OpenMP threads. libgomp's default lets a thread whose share of a parallel region is done spin for the next
one before it sleeps; PASSIVE sleeps at once. On cores of their own spinning costs nothing that anyone
needs; on cores shared with the broker and the workers (`mediafm stack up` on one machine) it takes theirs.
mediafm/stack/triton.py OPENMP sets PASSIVE for the served models; this measures why, side by side:

    .venv/bin/python bench/openmp.py [--config tiny] [--windows 5] [--passes 8] [--rounds 3] [--busy 0 1]

For each --busy count (processes spinning in pure Python beside the pass: 0 = a quiet machine, 1 = one core
taken, as the pipeline takes some) and each round, one fresh process per policy (alternating which goes
first) builds the encoder of --config at the offline profile's widths with 512-shot windows (random weights:
the cost does not depend on them) and times --passes forward passes over --windows windows (5: a
1,500-shot title at the 512/256 plan), as the python backend makes them (no grad, the widened output).
Prints, per condition, the median CPU seconds and wall seconds per pass of each policy and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from encoders import config_param  # bench/encoders.py: the same config.pbtxt reading

from mediafm.stack.process import interrupt_on_sigterm, tied_to_this_process
from mediafm.stack.triton import OPENMP

REPO = Path(__file__).resolve().parents[1]
POLICIES = {"default": None, "PASSIVE": OPENMP["OMP_WAIT_POLICY"]}


def served_threads() -> int:
    """torch_threads of the served offline MediaFM (what the python backend sets)."""
    return int(config_param((REPO / "model_repository" / "mediafm_offline" / "config.pbtxt").read_text(),
                            "torch_threads", "1"))


def child(args) -> None:
    import torch

    from mediafm.model import CONFIGS, MediaFMConfig, MediaFMEncoder
    from mediafm.profiles import get_layout

    torch.set_num_threads(args.threads)
    layout = get_layout("offline")
    cfg = MediaFMConfig(**{**CONFIGS[args.config], "max_shots": 512, "dropout": 0.0},
                        fused_dim=layout.fused_dim, title_dim=layout.title)
    enc = MediaFMEncoder(cfg).eval()
    g = torch.Generator().manual_seed(0)
    shots = torch.nn.functional.normalize(torch.randn(args.windows, 512, cfg.fused_dim, generator=g), dim=-1)
    title, lengths = torch.randn(args.windows, cfg.title_dim, generator=g), torch.full((args.windows,), 512)
    cpu, wall = [], []
    with torch.no_grad():
        enc(shots, title, lengths)  # warm-up: allocations, the thread team
        for _ in range(args.passes):
            c, w = time.process_time(), time.perf_counter()
            enc(shots, title, lengths)
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
    print(json.dumps({"cpu": statistics.median(cpu), "wall": statistics.median(wall)}))


def measure(policy: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if POLICIES[policy]:
        env["OMP_WAIT_POLICY"] = POLICIES[policy]
    env["OMP_NUM_THREADS"] = OPENMP["OMP_NUM_THREADS"]  # as served; torch.set_num_threads sets the team
    cmd = [sys.executable, __file__, "--child", "--config", args.config, "--windows", str(args.windows),
           "--passes", str(args.passes), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    interrupt_on_sigterm()  # a kill unwinds as Ctrl-C does: the finally blocks stop what this bench started
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="named MediaFM size (default tiny: what `make demo` and "
                   "bench/catalog.py serve)")
    p.add_argument("--windows", type=int, default=5, help="512-shot windows per pass (default 5)")
    p.add_argument("--passes", type=int, default=8, help="timed passes per process (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="processes per policy and condition (default 3)")
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1],
                   help="busy processes beside the pass, one condition each (default 0 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the served torch_threads)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.threads = args.threads or served_threads()
    if args.child:
        child(args)
        return 0
    print(f"MediaFM {args.config}, {args.windows} windows of 512 shots a pass, {args.threads} torch threads, "
          f"{os.cpu_count()} cores; medians of {args.passes} passes x {args.rounds} processes per cell")
    print("| beside | policy | CPU s / pass | wall s / pass |\n| --- | --- | --- | --- |")
    summary = []
    for busy in args.busy:
        spinners = [subprocess.Popen(tied_to_this_process([sys.executable, "-c", "while True: pass"]))
                    for _ in range(busy)]
        try:
            got: dict[str, list[dict]] = {name: [] for name in POLICIES}
            for r in range(args.rounds):
                for name in (list(POLICIES) if r % 2 == 0 else list(POLICIES)[::-1]):
                    got[name].append(measure(name, args))
        finally:
            for s in spinners:
                s.kill()
                s.wait()
        med = {name: {k: statistics.median(x[k] for x in runs) for k in ("cpu", "wall")} for name, runs in got.items()}
        for name, m in med.items():
            print(f"| {busy} busy | {name} | {m['cpu']:.3f} | {m['wall']:.3f} |")
        summary.append(f"{busy} busy: PASSIVE / default = x{med['PASSIVE']['cpu'] / med['default']['cpu']:.2f} "
                       f"CPU, x{med['PASSIVE']['wall'] / med['default']['wall']:.2f} wall")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
