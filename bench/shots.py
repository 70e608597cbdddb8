"""Decode + shot detection speed and accuracy: TransNetV2 vs PySceneDetect content, same files, one run.

Prints, per detector, median over alternating rounds of frames/s and x real time (decode
included), and F1 at +-1 frame on generated films with hard cuts at known frames.

    .venv/bin/python bench/shots.py [--rounds 2] [--shots 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mediafm.media.decode import iter_frames  # noqa: E402
from mediafm.media.shots import detect_shots, transnetv2_model  # noqa: E402
from mediafm.media.synthfilm import make_film  # noqa: E402


def f1(found, truth, tol=1):
    left, tp = list(truth), 0
    for c in found:
        hit = next((t for t in left if abs(t - c) <= tol), None)
        if hit is not None:
            left.remove(hit)
            tp += 1
    p, r = tp / max(len(found), 1), tp / max(len(truth), 1)
    return 0.0 if tp == 0 else 2 * p * r / (p + r)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shots", type=int, default=16)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        films = [make_film(Path(d) / f"film{k}.mp4", shots=rng.integers(12, 60, args.shots).tolist(), fps=24,
                           size=(320, 180), first_source=k * 3) for k in range(2)]
        transnetv2_model()  # load once, outside the timings
        n = films[0].n_frames
        print(f"speed on {films[0].path.name}: {n} frames, {n / 24:.1f} s, 320x180 @ 24 fps, "
              f"median of {args.rounds} alternating rounds")
        times = {"decode only": [], "transnetv2": [], "content": []}
        for _ in range(args.rounds):
            t = time.perf_counter()
            for _f in iter_frames(films[0].path, size=(48, 27)):
                pass
            times["decode only"].append(time.perf_counter() - t)
            for det in ("transnetv2", "content"):
                t = time.perf_counter()
                detect_shots(films[0].path, detector=det)
                times[det].append(time.perf_counter() - t)
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"  {name:12s} {n / m:8.1f} frames/s  {n / 24 / m:6.2f}x real time")
        for det in ("transnetv2", "content"):
            scores = [f1([s.start_frame for s in detect_shots(f.path, detector=det)[1:]], f.cuts) for f in films]
            print(f"  {det:12s} F1 (+-1 frame) on {len(films)} generated films: "
                  + ", ".join(f"{s:.3f}" for s in scores))


if __name__ == "__main__":
    main()
