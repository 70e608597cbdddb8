"""`mediafm embed` on a long generated film: wall time as x real time, and each stage's share.

A film of --minutes (default 10) at 25 fps per --sizes (default 1280x720 and 1920x1080): shots of
1.2-4.8 s (~200 in 10 minutes) joined by hard cuts, audio in every shot (every third spoken by
espeak-ng, the others tones, noise, silence) and a soft subtitle cue over every spoken shot
(mediafm/media/synthfilm.py make_long_film; kept in --cache, made once per length and size).
Each film goes through mediafm.media.embed.embed_title (what `mediafm embed` runs) on the offline
profile, against a private Triton (free loopback ports, temp state) serving the offline encoders.

Printed per film: wall time and x real time (film seconds / wall seconds), and the stages
(embed_title's timings; seconds and share of the wall time):
  open      checks, probe, subtitles
  shots     decode + shot detection (--detector); "decode" beside it is a separate decode-only
            pass over the same file (no pixel conversion), measured after; with --split, a second
            detection pass timed in two: decode + pixel conversions, and the detector itself
  sample    the second decode: frames sampled per shot, scaled to 224x224; audio decoded and resampled
  encode    waiting for the encoders on Triton (video, audio and text run at the same time), and the
            seconds each encoder spent in execute() (Triton's statistics): they overlap each other
  title     the title embedding
  fusion    mediafm.fusion.fuse over all shots
  write     the v1 dataset

    .venv/bin/python bench/media.py [--minutes 10] [--sizes 1280x720,1920x1080] [--detector transnetv2|transnetv2-fast|content]
        [--split]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mediafm.config import SHOT_DETECTORS, Settings, private_ports  # noqa: E402
from mediafm.media.decode import iter_video_frames  # noqa: E402
from mediafm.media.embed import embed_title  # noqa: E402
from mediafm.media.synthfilm import make_long_film  # noqa: E402
from mediafm.profiles import OFFLINE  # noqa: E402
from mediafm.stack import triton  # noqa: E402
from mediafm.stack.process import interrupt_on_sigterm  # noqa: E402

ENCODERS = (OFFLINE.video_model, OFFLINE.audio_model, OFFLINE.text_model)
STAGES = ("open", "shots", "sample", "encode", "title", "fusion", "write")


def busy_s(settings: Settings, model: str) -> float:
    """Seconds `model` has spent in execute() (input, infer, output) since it was loaded."""
    with urllib.request.urlopen(f"http://{settings.triton_http_url}/v2/models/{model}/stats", timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]
    return sum(b[k]["ns"] for b in s.get("batch_stats", [])
               for k in ("compute_input", "compute_infer", "compute_output")) / 1e9


def film(cache: Path, minutes: float, size: tuple[int, int], seed: int = 0) -> tuple[Path, float]:
    """The long film of `minutes` at `size` (make_long_film with `seed`), made once into `cache`: (its path, the
    seconds making it took; 0 when it was there)."""
    path = cache / f"long-{minutes:g}min-{size[0]}x{size[1]}-25fps{f'-seed{seed}' if seed else ''}.mp4"
    if path.exists():
        return path, 0.0
    t = time.perf_counter()
    make_long_film(path.with_suffix(".tmp.mp4"), duration_s=minutes * 60, fps=25, size=size, seed=seed)
    path.with_suffix(".tmp.mp4").rename(path)
    return path, time.perf_counter() - t


def split_shots(path: Path, detector: str) -> tuple[float, float]:
    """A second shot-detection pass, split: (decode + pixel conversions, the detector's own work) seconds."""
    from mediafm.media.shots import ShotDetector

    det = ShotDetector(detector)
    push, inside = det.push_frame, [0.0]

    def timed(*a):
        t0 = time.perf_counter()
        try:
            return push(*a)
        finally:
            inside[0] += time.perf_counter() - t0

    det.push_frame = timed
    t = time.perf_counter()
    det.push_segment(path)
    t_flush = time.perf_counter()
    det.flush()
    inside[0] += time.perf_counter() - t_flush
    return time.perf_counter() - t - inside[0], inside[0]


def decode_only_s(path: Path) -> float:
    t = time.perf_counter()
    for _ in iter_video_frames(path):
        pass
    return time.perf_counter() - t


def run(settings: Settings, path: Path, duration_s: float, detector: str, out: Path, split: bool = False) -> None:
    before = {m: busy_s(settings, m) for m in ENCODERS}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    info = embed_title(path, out=out, settings=settings, detector=detector, timings=timings)
    wall = time.perf_counter() - t
    enc = {m: busy_s(settings, m) - before[m] for m in ENCODERS}
    dec = decode_only_s(path)
    conv_detect = split_shots(path, detector) if split else None
    print(f"  {info['shots']} shots (present: {info['present']}); wall {wall:.1f} s for {duration_s:.0f} s of film: "
          f"x{duration_s / wall:.2f} real time", flush=True)
    for stage in STAGES:
        s = timings.get(stage, 0.0)
        extra = ""
        if stage == "shots":
            extra = f"   (decode-only pass {dec:.1f} s = {100 * dec / wall:.0f}%; detection + conversions the rest"
            if conv_detect:
                extra += (f"; a second pass, split: decode + pixel conversions {conv_detect[0]:.1f} s, "
                          f"{detector} {conv_detect[1]:.1f} s")
            extra += ")"
        if stage == "encode":
            extra = "   (in execute(): " + ", ".join(f"{m} {v:.1f} s" for m, v in enc.items()) + ")"
        print(f"    {stage:7s} {s:7.1f} s  {100 * s / wall:5.1f}%{extra}")
    rest = wall - sum(timings.get(s, 0.0) for s in STAGES)
    print(f"    {'other':7s} {rest:7.1f} s  {100 * rest / wall:5.1f}%", flush=True)


def main() -> None:
    interrupt_on_sigterm()  # a kill unwinds as Ctrl-C does: the finally blocks stop what this bench started
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0, help="film length (default 10)")
    ap.add_argument("--sizes", default="1280x720,1920x1080", help="comma-separated WxH (default 1280x720,1920x1080)")
    ap.add_argument("--detector", choices=SHOT_DETECTORS, default="transnetv2")
    ap.add_argument("--split", action="store_true",
                    help="time a second shot-detection pass split into decode + conversions and the detector")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mediafm" / "bench-films",
                    help="where the generated films are kept between runs")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        s = Settings(state_dir=Path(d) / "state", **private_ports(),
                     triton_models=ENCODERS, encoder_profile="offline", shot_detector=args.detector)
        print(f"mediafm embed, offline profile, {args.detector} shots, {s.frames_per_shot} frames a shot, "
              f"{s.audio_window_s:g} s of audio a shot; private Triton; {len(os.sched_getaffinity(0))} cores; "
              "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), flush=True)
        films = []
        for size in sizes:
            path, made = film(args.cache, args.minutes, size)
            films.append((size, path))
            print(f"film {size[0]}x{size[1]}, {args.minutes:g} min: {path}"
                  + (f" (made in {made:.0f} s)" if made else " (cached)"), flush=True)
        triton.up(s, tied=True)  # stopped below; by the kernel if this script is killed
        try:
            for size, path in films:
                print(f"{size[0]}x{size[1]} @ 25 fps, {args.minutes:g} min:", flush=True)
                run(s, path, args.minutes * 60, args.detector, Path(d) / f"out-{size[0]}", split=args.split)
        finally:
            triton.down(s)
        print("load average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
