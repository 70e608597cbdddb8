"""One long generated film from media through the Kafka path, to a final embedding per shot.

The film of bench/media.py (--minutes, --size; made once and kept in --cache) is published with
`mediafm publish title` to one `mediafm worker` on a fresh local stack (its own state directory: the
default stack is left alone; free loopback ports). Printed each minute: shots per stage (the worker's mediafm_shots_total), the
finals read back, the worker's RSS; at the end, the seconds from publish to the last final and whether every
shot index 0..n_shots-1 has one. The stack is stopped and wiped afterwards.

    OMP_NUM_THREADS=1 .venv/bin/python bench/film_kafka.py [--minutes 150] [--size 640x360] [--detector transnetv2-fast]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.media import film  # noqa: E402
from mediafm import bus  # noqa: E402
from mediafm.config import SHOT_DETECTORS, Settings, private_ports  # noqa: E402
from mediafm.schema import ContextualEmbedding, decode  # noqa: E402
from mediafm.topics import Topics  # noqa: E402

MEDIAFM = str(Path(sys.executable).with_name("mediafm"))


def stage_shots(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {m[1]: float(m[2]) for m in re.finditer(r'mediafm_shots_total\{stage="(\w+)"\} (\S+)', text)}


def rss_mb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) // 1024


def main() -> None:
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
    with tempfile.TemporaryDirectory() as d:
        ports = private_ports()
        env = {**os.environ, "MEDIAFM_STATE_DIR": str(Path(d) / "state"), "MEDIAFM_SHOT_DETECTOR": args.detector,
               **{f"MEDIAFM_{k.upper()}": str(v) for k, v in ports.items()}}
        os.environ.update(env)
        s = Settings.load()
        subprocess.run([MEDIAFM, "stack", "up"], env=env, check=True)
        with open(Path(d) / "worker.log", "w") as log:
            worker = subprocess.Popen([MEDIAFM, "worker", "--web-port", str(ports["worker_web_port"])], env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            subprocess.run([MEDIAFM, "publish", "title", str(path), "--id", "long-film"], env=env, check=True)
            finals, n_shots, last = set(), None, 0.0
            tail = bus.Tail(s, Topics.from_settings(s).embeddings, from_beginning=True)
            while time.monotonic() - t0 < args.timeout and (n_shots is None or len(finals) < n_shots):
                for rec in tail.poll(timeout_s=1.0):
                    e = decode(rec.value, expect=ContextualEmbedding)
                    if e.title_id == "long-film" and e.final:
                        finals.add(e.shot_index)
                        n_shots = e.n_shots
                if time.monotonic() - last > 60:
                    last = time.monotonic()
                    by_stage = stage_shots(ports["worker_web_port"])
                    print(f"+{last - t0:6.0f} s  shots by stage {by_stage}  finals {len(finals)}  "
                          f"worker RSS {rss_mb(worker.pid)} MB", flush=True)
                    if worker.poll() is not None:
                        sys.exit(f"the worker exited ({worker.returncode}): {Path(d) / 'worker.log'}")
            tail.close()
            print(f"{len(finals)} finals of {n_shots} shots, {time.monotonic() - t0:.0f} s from publish; every "
                  f"index has one: {n_shots is not None and finals == set(range(n_shots))}; "
                  f"{args.minutes * 60 / (time.monotonic() - t0):.2f}x real time", flush=True)
        finally:
            worker.terminate()
            worker.wait(60)
            subprocess.run([MEDIAFM, "stack", "down", "--wipe"], env=env)


if __name__ == "__main__":
    main()
