"""Long generated films from media through the Kafka path, to a final embedding per shot.

The films of bench/media.py (--minutes, --size; --films of them, each its own seed, made once and kept in
--cache) are published together with mediafm.publish.publish_title (`mediafm publish title`) to --workers
`mediafm worker` processes on the local stack, in a fresh topic prefix (bench/pipeline.py's bench_workers).
A title is one key, so one worker cuts it; which worker gets which is the group's partition assignment.
Printed each minute: shots per stage of each worker (its mediafm_shots_total), the finals read back per film,
each worker's RSS; at the end, per film the seconds from publish to its last final and whether every shot index
0..n_shots-1 has one; the minutes of film per minute of wall time over all films; each worker's peak RSS
(VmHWM); the pipeline's dead letters.

    OMP_NUM_THREADS=1 .venv/bin/python bench/film_kafka.py [--minutes 150] [--size 640x360] [--detector transnetv2-fast]
                                                           [--films 1] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from media import film
from pipeline import bench_workers, memory_mib, records_in_log, worker_metrics

from mediafm.config import SHOT_DETECTORS, Settings
from mediafm.publish import publish_title
from mediafm.schema import ContextualEmbedding, decode
from mediafm.stack.process import interrupt_on_sigterm
from mediafm.topics import Topics


def shots_by_stage(port: int) -> dict[str, float]:
    return {smp.labels["stage"]: smp.value for fam in worker_metrics(port) if fam.name == "mediafm_shots"
            for smp in fam.samples if smp.name == "mediafm_shots_total"}


def main() -> None:
    interrupt_on_sigterm()  # a kill unwinds as Ctrl-C does: the finally blocks stop what this bench started
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=150.0, help="film length (default 150: about 3,000 shots)")
    ap.add_argument("--size", default="640x360", help="WxH (default 640x360)")
    ap.add_argument("--detector", choices=SHOT_DETECTORS, default="transnetv2-fast")
    ap.add_argument("--films", type=int, default=1, help="films published together (seeds 0..N-1; default 1)")
    ap.add_argument("--workers", type=int, default=1, help="mediafm worker processes (default 1)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mediafm" / "bench-films",
                    help="where the generated films are kept between runs")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="give up after this many seconds")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in args.size.split("x"))
    with ThreadPoolExecutor(min(args.films, os.cpu_count() or 1)) as pool:  # ffmpeg does the work
        made = list(pool.map(lambda seed: film(args.cache, args.minutes, size, seed=seed), range(args.films)))
    for path, secs in made:
        print(f"film {path}" + (f" (made in {secs:.0f} s)" if secs else " (cached)"), flush=True)
    ids = {f"long-film{i}-{uuid.uuid4().hex[:6]}": path for i, (path, _) in enumerate(made)}
    logs = Path(tempfile.mkdtemp(prefix="mediafm-film-kafka-"))  # the workers' logs: kept
    with bench_workers(Settings.load(), logs, args.workers, shot_detector=args.detector) as (s, tail, workers):
        t0 = time.monotonic()
        for title_id, path in ids.items():
            publish_title(s, path, title_id=title_id)
        finals: dict[str, set[int]] = {t: set() for t in ids}
        n_shots: dict[str, int] = {}
        done_at: dict[str, float] = {}
        last = t0
        while time.monotonic() - t0 < args.timeout and len(done_at) < len(ids):
            for rec in tail.poll(timeout_s=1.0):
                e = decode(rec.value, expect=ContextualEmbedding)
                if e.title_id in finals and e.final:
                    finals[e.title_id].add(e.shot_index)
                    n_shots[e.title_id] = e.n_shots
                    if len(finals[e.title_id]) == e.n_shots:
                        done_at.setdefault(e.title_id, time.monotonic() - t0)
            if time.monotonic() - last > 60:
                last = time.monotonic()
                rss = [memory_mib(w.pid).get("VmRSS") for w in workers]
                if None in rss:
                    raise SystemExit(f"a worker exited: see its log in {logs}")
                print(f"+{last - t0:6.0f} s  shots by stage {[shots_by_stage(w.port) for w in workers]}  "
                      f"finals {[len(f) for f in finals.values()]}  worker RSS "
                      f"{', '.join(f'{r:.0f}' for r in rss)} MiB", flush=True)
        wall = time.monotonic() - t0
        hwm = [memory_mib(w.pid).get("VmHWM", float("nan")) for w in workers]
        by_worker = [shots_by_stage(w.port).get("contextualise", 0) for w in workers]
        dead = records_in_log(s, Topics.from_settings(s).deadletter)
    for title_id in ids:
        n = n_shots.get(title_id)
        when = f"the last {done_at[title_id]:.0f} s after the first publish" if title_id in done_at else \
            f"NOT COMPLETE after --timeout {args.timeout:g} s"
        print(f"{title_id}: {len(finals[title_id])} finals of {n} shots, {when}; "
              f"every index has one: {n is not None and finals[title_id] == set(range(n))}")
    if len(done_at) < len(ids):
        raise SystemExit(f"{len(ids) - len(done_at)} film(s) without every final after --timeout {args.timeout:g} s: "
                         f"no time to the last final to report (dead letters {dead}; the workers' logs in {logs})")
    print(f"{args.films} film(s) of {args.minutes:g} min, {args.workers} worker(s): {wall:.0f} s to the last final, "
          f"x{args.films * args.minutes * 60 / wall:.2f} real time (minutes of film per minute); shots each worker "
          f"contextualised {[int(x) for x in by_worker]}; peak RSS (VmHWM) {', '.join(f'{h:.0f}' for h in hwm)} MiB; "
          f"dead letters {dead}", flush=True)


if __name__ == "__main__":
    main()
