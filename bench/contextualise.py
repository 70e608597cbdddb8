"""The fuse and contextualise stages through Kafka + Faust vs the same Triton calls made directly.

    .venv/bin/python bench/contextualise.py [--titles 6] [--shots 150] [--rounds 3]

Needs the local stack (`mediafm stack up`; started here if it is not running);
trains and exports a tiny MediaFM for the configured profile first if none is
served (as `mediafm demo` does).

In one run, on the same synthetic titles (encoded shots, as the encoding stage
publishes them), alternating rounds, medians:
- direct: per title, the fusion model and one MediaFM pass on Triton, called
  from this process;
- stages: the encoded shots published to a fresh topic prefix, one `mediafm
  worker`, timed from the first publish to the last final embedding. This is
  what the streaming costs on top of the models: Kafka round trips, Faust
  tables (every table write in its changelog before the event is acknowledged)
  and per-shot messages.
Prints shots/s of each and stages / direct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from pipeline import free_port, wait_finals

from mediafm import stack
from mediafm.bus import Tail, producer
from mediafm.config import Settings, replace
from mediafm.demo import ensure_model
from mediafm.fusion import get_layout
from mediafm.inference import Triton
from mediafm.serving import model_name
from mediafm.stack import kafka
from mediafm.synth import World, encoded_shots, generate_title
from mediafm.topics import Topics


async def direct(settings: Settings, titles: list) -> int:
    client = Triton(settings.triton_http_url)
    try:
        for t in titles:
            present = t.present.copy()
            text = np.where(present[:, 2:3], t.text, 0).astype(np.float32)
            fused = (await client.infer("fusion", {"VIDEO": t.video.astype(np.float32),
                                                   "AUDIO": t.audio.astype(np.float32), "TEXT": text,
                                                   "PRESENT": present}, ["FUSED"]))["FUSED"]
            await client.infer(model_name(t.layout.name), {
                "SHOTS": fused[None], "TITLE": t.title_embedding[None].astype(np.float32),
                "LENGTH": np.array([[len(fused)]], np.int64)}, ["HIDDEN"])
    finally:
        await client.close()
    return sum(len(t.start_s) for t in titles)


def stages(s: Settings, tail: Tail, titles: list) -> tuple[int, float]:
    names = Topics.from_settings(s)
    ids = {}
    p = producer(s)
    t0 = time.perf_counter()
    for t in titles:
        tid = f"{t.title_id}-{uuid.uuid4().hex[:6]}"
        ids[tid] = len(t.start_s)
        for m in encoded_shots(t):
            m.title_id = tid
            p.send(names.encoded, key=tid.encode(), value=m.to_bytes())
    p.flush()
    p.close()
    wait_finals(tail, ids, timeout_s=900)
    return sum(ids.values()), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--titles", type=int, default=6, help="titles per round")
    ap.add_argument("--shots", type=int, default=150, help="shots per title (at most window_shots: one pass)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    base = Settings.load()
    if args.shots > base.window_shots:
        ap.error(f"--shots {args.shots} is more than window_shots={base.window_shots}; the direct path makes one pass")
    stack.up(base)
    print(ensure_model(base))
    s = replace(base, topic_prefix=f"benchctx{uuid.uuid4().hex[:6]}")
    kafka.create_topics(s, Topics.from_settings(s).all())
    world = World(get_layout(s.encoder_profile), seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="mediafm-bench-"))
    env = {**os.environ, "MEDIAFM_TOPIC_PREFIX": s.topic_prefix, "MEDIAFM_WORKER_WEB_PORT": str(free_port())}
    log = tmp / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "mediafm.cli", "worker", "--loglevel", "warning"], env=env,
                              stdout=log.open("ab"), stderr=subprocess.STDOUT)
    tail = Tail(s, Topics.from_settings(s).embeddings)
    try:
        print(f"worker pid {worker.pid} (log {log}); warming up (first title: group joins, tables recover)")
        warm = [generate_title(world, "warm", 20, np.random.default_rng(99))]
        stages(s, tail, warm)
        asyncio.run(direct(s, warm))
        rows = []
        for r in range(args.rounds):  # alternate, so drift hits both alike
            rng = np.random.default_rng(r)
            titles = [generate_title(world, f"r{r}t{i}", args.shots, rng) for i in range(args.titles)]
            t0 = time.perf_counter()
            n_direct = asyncio.run(direct(s, titles))
            t_direct = time.perf_counter() - t0
            n_stages, t_stages = stages(s, tail, titles)
            rows.append((n_direct / t_direct, n_stages / t_stages))
            print(f"round {r}: direct {n_direct} shots in {t_direct:.2f}s ({rows[-1][0]:.0f} shots/s), "
                  f"stages {n_stages} shots in {t_stages:.2f}s ({rows[-1][1]:.0f} shots/s)")
        d, st = statistics.median(x for x, _ in rows), statistics.median(y for _, y in rows)
        print(f"median of {args.rounds}: direct {d:.0f} shots/s, stages {st:.0f} shots/s, stages / direct x{st / d:.2f}")
    finally:
        tail.close()
        worker.terminate()
        worker.wait(timeout=30)


if __name__ == "__main__":
    main()
