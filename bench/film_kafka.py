"""One long generated film from media through the Kafka path, to a final embedding per shot.

The film of bench/media.py (--minutes, --size; made once and kept in --cache) is published with
mediafm.publish.publish_title (`mediafm publish title`) to one `mediafm worker` on the local stack, in a fresh
topic prefix (bench/pipeline.py's bench_worker). Printed each minute: shots per stage (the worker's
mediafm_shots_total), the finals read back, the worker's RSS; at the end, the seconds from publish to the last
final, x real time, whether every shot index 0..n_shots-1 has one, and the worker's peak RSS (VmHWM).

    OMP_NUM_THREADS=1 .venv/bin/python bench/film_kafka.py [--minutes 150] [--size 640x360] [--detector transnetv2-fast]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from media import film
from pipeline import bench_worker, memory_mib, worker_metrics

from mediafm.config import SHOT_DETECTORS, Settings
from mediafm.publish import publish_title
from mediafm.schema import ContextualEmbedding, decode
from mediafm.stack.process import interrupt_on_sigterm


def shots_by_stage(port: int) -> dict[str, float]:
    return {smp.labels["stage"]: smp.value for fam in worker_metrics(port) if fam.name == "mediafm_shots"
            for smp in fam.samples if smp.name == "mediafm_shots_total"}


def main() -> None:
    interrupt_on_sigterm()  # a kill unwinds as Ctrl-C does: the finally blocks stop what this bench started
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=150.0, help="film length (default 150: about 3,000 shots)")
    ap.add_argument("--size", default="640x360", help="WxH (default 640x360)")
    ap.add_argument("--detector", choices=SHOT_DETECTORS, default="transnetv2-fast")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mediafm" / "bench-films",
                    help="where the generated films are kept between runs")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="give up after this many seconds")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    path, made = film(args.cache, args.minutes, tuple(int(v) for v in args.size.split("x")))
    print(f"film {path}" + (f" (made in {made:.0f} s)" if made else " (cached)"), flush=True)
    title_id = f"long-film-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as d, \
            bench_worker(Settings.load(), Path(d), shot_detector=args.detector) as (s, tail, worker):
        t0 = time.monotonic()
        publish_title(s, path, title_id=title_id)
        finals: set[int] = set()
        n_shots, last = None, t0
        while time.monotonic() - t0 < args.timeout and (n_shots is None or len(finals) < n_shots):
            for rec in tail.poll(timeout_s=1.0):
                e = decode(rec.value, expect=ContextualEmbedding)
                if e.title_id == title_id and e.final:
                    finals.add(e.shot_index)
                    n_shots = e.n_shots
            if time.monotonic() - last > 60:
                last = time.monotonic()
                rss = memory_mib(worker.pid).get("VmRSS")
                if rss is None:
                    raise SystemExit(f"the worker exited: see {Path(d) / 'worker.log'}")
                print(f"+{last - t0:6.0f} s  shots by stage {shots_by_stage(s.worker_web_port)}  "
                      f"finals {len(finals)}  worker RSS {rss:.0f} MiB", flush=True)
        wall = time.monotonic() - t0
        print(f"{len(finals)} finals of {n_shots} shots, {wall:.0f} s from publish, x{args.minutes * 60 / wall:.2f} "
              f"real time; every index has one: {n_shots is not None and finals == set(range(n_shots))}; "
              f"worker peak RSS {memory_mib(worker.pid).get('VmHWM', float('nan')):.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
