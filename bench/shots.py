"""Decode + shot detection speed and accuracy, every detector on the same files in one run.

Films: generated (mediafm.media.synthfilm: the same films on every run), 480x270 at
25 fps by default, shots of 1-6 s, about 40% of the cuts 6-24 frame dissolves, the rest hard cuts. Prints, for decoding and scaling alone (48x27 + thumbnail, as the TransNetV2 detectors are fed) and
per detector, the median over rounds
(detectors alternate within each round, their order rotating) of frames/s and x real time for
`detect_shots` (decode, scaling and detection; the model loaded beforehand) on the first --films films,
the CPU seconds it used per second of film, and F1 over all the transitions of --f1-films films (the
timed ones and more, each run once more: detection is deterministic): a hard cut counts as found by a
cut within +-1 frame of it, a dissolve by a cut within +-1 frame of its blended frames; one cut per
transition.

    .venv/bin/python bench/shots.py [--rounds 3] [--films 3] [--f1-films 8] [--seconds 40]
                                    [--detectors transnetv2,transnetv2-fast,content]

Machines shared with other work time noisily: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mediafm.media.shots import detect_shots, detector_frames, transnetv2_cpu, transnetv2_model  # noqa: E402
from mediafm.media.synthfilm import Film, make_film  # noqa: E402


def match(found: list[int], spans: list[tuple[int, int]], tol: int = 1) -> int:
    """True positives: each found cut takes the first transition not yet taken whose frames
    [first - tol, end + tol] hold it (a hard cut's span is empty: within tol of the cut)."""
    left, tp = list(spans), 0
    for c in found:
        hit = next((s for s in left if s[0] - tol <= c <= s[1] + tol), None)
        if hit is not None:
            left.remove(hit)
            tp += 1
    return tp


def f1(tp: int, n_found: int, n_true: int) -> float:
    p, r = tp / max(n_found, 1), tp / max(n_true, 1)
    return 0.0 if tp == 0 else 2 * p * r / (p + r)


def films(d: Path, n: int, seconds: float, fps: float, size: tuple[int, int], shot_s: tuple[float, float],
          dissolve_frac: float, seed: int) -> list[Film]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        total = round(seconds * fps)
        shots: list[int] = []
        while total - sum(shots) > shot_s[1] * fps:
            shots.append(int(rng.integers(round(shot_s[0] * fps), round(shot_s[1] * fps) + 1)))
        shots.append(total - sum(shots))
        if shots[-1] < shot_s[0] * fps and len(shots) > 1:  # no stub at the end
            shots[-2] += shots.pop()
        dissolves = [int(rng.integers(6, 25)) if rng.random() < dissolve_frac else 0 for _ in shots[:-1]]
        out.append(make_film(d / f"film{k}.mp4", shots=shots, fps=fps, size=size, first_source=k * 3,
                             dissolves=dissolves))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--films", type=int, default=3, help="films timed")
    ap.add_argument("--f1-films", type=int, default=8, help="films scored (the timed ones first)")
    ap.add_argument("--seconds", type=float, default=40.0, help="length of each film")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--size", default="480x270")
    ap.add_argument("--shot-s", default="1,6", help="min,max shot length in seconds")
    ap.add_argument("--dissolves", type=float, default=0.4, help="fraction of cuts that are dissolves")
    ap.add_argument("--detectors", default="transnetv2,transnetv2-fast,content")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    dets = args.detectors.split(",")
    size = tuple(int(x) for x in args.size.split("x"))
    shot_s = tuple(float(x) for x in args.shot_s.split(","))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as d:
        all_fs = films(Path(d), max(args.films, args.f1_films), args.seconds, args.fps, size, shot_s,
                       args.dissolves, args.seed)
        fs = all_fs[: args.films]
        transnetv2_model()  # load once, outside the timings
        transnetv2_cpu()
        n = sum(f.n_frames for f in fs)
        secs = n / args.fps
        print(f"speed: {len(fs)} films, {n} frames, {secs:.0f} s, {size[0]}x{size[1]} @ {args.fps:g} fps, shots "
              f"{shot_s[0]:g}-{shot_s[1]:g} s; median of {args.rounds} rounds")
        wall: dict[str, list[float]] = {k: [] for k in ["decode+scale", *dets]}
        cpu: dict[str, list[float]] = {k: [] for k in wall}
        found: dict[str, list[list[int]]] = {}
        for r in range(args.rounds):
            order = ["decode+scale", *dets[r % len(dets):], *dets[: r % len(dets)]]
            for name in order:
                w, c = time.perf_counter(), time.process_time()
                if name == "decode+scale":
                    for f in fs:
                        for _ in detector_frames(f.path):  # what the TransNetV2 detectors are fed
                            pass
                else:
                    res = [[s.start_frame for s in detect_shots(f.path, detector=name)[1:]] for f in fs]
                    if found.setdefault(name, res) != res:
                        raise SystemExit(f"{name} found different cuts in round {r}: not deterministic")
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
        for name in dets:  # the films only scored
            found[name] += [[s.start_frame for s in detect_shots(f.path, detector=name)[1:]]
                            for f in all_fs[len(fs):]]
        n_true = sum(len(f.cuts) for f in all_fs)
        hard = [[s for s, x in zip(f.spans, f.dissolves, strict=True) if not x] for f in all_fs]
        soft = [[s for s, x in zip(f.spans, f.dissolves, strict=True) if x] for f in all_fs]
        n_hard, n_soft = sum(map(len, hard)), sum(map(len, soft))
        print(f"accuracy: {len(all_fs)} films, {sum(f.n_frames for f in all_fs) / args.fps:.0f} s, {n_true} "
              f"transitions ({n_hard} hard cuts, {n_soft} dissolves of 6-24 frames)")
        print(f"  {'':16s} {'frames/s':>9s} {'x real time':>12s} {'CPU s per s':>12s} {'F1 (+-1)':>9s} "
              f"{'recall hard':>12s} {'recall dissolve':>16s} {'precision':>10s}")
        for name in wall:
            m = statistics.median(wall[name])
            row = f"  {name:16s} {n / m:9.1f} {secs / m:11.2f}x {statistics.median(cpu[name]) / secs:12.3f}"
            if name in found:
                tp = sum(match(c, f.spans) for c, f in zip(found[name], all_fs, strict=True))
                n_found = sum(len(c) for c in found[name])
                tp_h = sum(match(c, h) for c, h in zip(found[name], hard, strict=True))
                tp_s = sum(match(c, s) for c, s in zip(found[name], soft, strict=True))
                row += (f" {f1(tp, n_found, n_true):9.3f} {tp_h / max(n_hard, 1):12.3f} "
                        f"{tp_s / max(n_soft, 1):16.3f} {tp / max(n_found, 1):10.3f}")
            print(row)
        if "transnetv2" in found and "transnetv2-fast" in found:
            same = sum(a == b for a, b in zip(found["transnetv2"], found["transnetv2-fast"], strict=True))
            print(f"  transnetv2-fast found the same cuts as transnetv2 on {same} of {len(all_fs)} films")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
