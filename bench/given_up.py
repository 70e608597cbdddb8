"""Titles given up at real size: refused shots in 3,000-shot titles through two workers.

    .venv/bin/python bench/given_up.py [--titles 4] [--shots 3000] [--workers 2]

Needs the local stack (started here if it is not running). Pre-encoded titles go to a fresh pipeline of 4
partitions; in every second one, shot shots/2 has a NaN in its video, so the fuse stage refuses its record
(dead-lettered) and sends a ShotsRefused in its place. Prints each title's finals (all for the good ones, none
for the others), the dead letters by stage with the contextualise stage's words, each worker's titles given up,
held shot bytes left (0 once it let go) and memory, and the time from the first publish to the last of them.
"""
import argparse
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from catalog import titles
from pipeline import bench_workers, counter, memory_mib, worker_metrics

from mediafm.bus import Tail, producer
from mediafm.config import Settings
from mediafm.profiles import get_layout
from mediafm.schema import ContextualEmbedding, DeadLetter, EncodedShots, decode, shot_records, vec_to_bytes
from mediafm.synth import World, encoded_shots
from mediafm.topics import Topics

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--titles", type=int, default=4)
ap.add_argument("--shots", type=int, default=3000)
ap.add_argument("--workers", type=int, default=2)
args = ap.parse_args()
base = Settings()
world = World(get_layout(base.encoder_profile), seed=0)
with tempfile.TemporaryDirectory() as tmp, bench_workers(base, Path(tmp), args.workers, partitions=4) as (s, tail, workers):
    names = Topics.from_settings(s)
    dead = Tail(s, names.deadletter)
    p = producer(s)
    ids, bad = {}, set()
    t0 = time.time()
    for k, title in enumerate(titles(world, args.titles, args.shots, seed=7)):
        tid = f"{title.title_id}-{uuid.uuid4().hex[:6]}"
        msgs = encoded_shots(title)
        for m in msgs:
            m.title_id = tid
        if k % 2:
            v = np.frombuffer(msgs[args.shots // 2].video, np.float32).copy()
            v[0] = np.nan
            msgs[args.shots // 2].video = vec_to_bytes(v)
            bad.add(tid)
        ids[tid] = len(msgs)
        for r in shot_records(EncodedShots, [m.to_bytes() for m in msgs], tid, ""):
            p.send(names.encoded, key=tid.encode(), value=r)
    p.flush()
    p.close()
    finals, letters = Counter(), []
    good = {t: n for t, n in ids.items() if t not in bad}
    deadline = time.time() + 900
    while time.time() < deadline and not (all(finals[t] >= n for t, n in good.items())
                                          and sum(1 for x in letters if x.stage == "contextualise") >= len(bad)):
        for rec in tail.poll(timeout_s=1):
            e = decode(rec.value, expect=ContextualEmbedding)
            if e.final and e.title_id in ids:
                finals[e.title_id] += 1
        for rec in dead.poll(timeout_s=0.5):
            letters.append(decode(rec.value, expect=DeadLetter))
    took = time.time() - t0
    print(f"{took:.1f} s from the first publish to the last final / dead letter")
    for t in ids:
        print(t, "bad" if t in bad else "good", "finals", finals[t])
    print(Counter((x.stage) for x in letters))
    for x in letters:
        if x.stage == "contextualise":
            print("  ", x.reason[:220])
    for w in workers:
        held = [smp.value for fam in worker_metrics(w.port) if fam.name == "mediafm_held_shots_bytes"
                for smp in fam.samples]
        print(f"worker {w.pid}: given up {counter(w.port, 'mediafm_titles_given_up')}, held shots bytes {held}, "
              f"memory {memory_mib(w.pid)}")
    dead.close()
