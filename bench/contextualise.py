"""The fuse and contextualise stages through Kafka + Faust vs the same Triton calls made directly.

    .venv/bin/python bench/contextualise.py [--titles 6] [--shots 150] [--rounds 3]

Needs the local stack (`mediafm stack up`; started here if it is not running);
trains and exports a tiny MediaFM for the configured profile first if none is
served (as `mediafm demo` does).

In one run, on the same synthetic titles (encoded shots in EncodedShots records
of a run of shots, as the encoding stage publishes them), alternating rounds,
medians:
- direct: per title, the fusion model and one MediaFM pass on Triton, called
  from this process;
- stages: the encoded shots published to a fresh topic prefix, one `mediafm
  worker`, timed from the first publish to the last final embedding. This is
  what the streaming costs on top of the models: Kafka round trips, Faust
  tables (every table write in its changelog before the event is acknowledged)
  and messages; the span also holds this process's publishing and its reading
  of the embeddings, on the same cores (bench/catalog.py times the worker's
  share alone).
Prints shots/s of each and stages / direct.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from pipeline import alternate, bench_worker, publish_encoded, wait_finals

from mediafm.bus import Tail
from mediafm.config import Settings
from mediafm.profiles import get_layout, get_profile
from mediafm.stack.process import interrupt_on_sigterm
from mediafm.synth import World, generate_title
from mediafm.triton_client import TritonClient


async def direct(settings: Settings, titles: list) -> int:
    client = TritonClient(settings.triton_http_url)
    try:
        for t in titles:
            fused = (await client.infer("fusion", {"VIDEO": t.video, "AUDIO": t.audio, "TEXT": t.text,
                                                   "PRESENT": t.present}, ["FUSED"]))["FUSED"]
            await client.infer(get_profile(t.layout.name).mediafm_model, {
                "SHOTS": fused[None], "TITLE": t.title_embedding[None].astype(np.float32),
                "LENGTH": np.array([[len(fused)]], np.int64)}, ["HIDDEN"])
    finally:
        await client.close()
    return sum(len(t.start_s) for t in titles)


def stages(s: Settings, tail: Tail, titles: list) -> tuple[int, float]:
    t0 = time.perf_counter()
    ids = publish_encoded(s, titles, f"-{uuid.uuid4().hex[:6]}")  # in runs, as the encode stage sends them
    wait_finals(tail, ids, timeout_s=900)
    return sum(ids.values()), time.perf_counter() - t0


def main() -> None:
    interrupt_on_sigterm()  # a kill unwinds as Ctrl-C does: the finally blocks stop what this bench started
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--titles", type=int, default=6, help="titles per round")
    ap.add_argument("--shots", type=int, default=150, help="shots per title (at most window_shots: one pass)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    base = Settings.load()
    if args.shots > base.window_shots:
        ap.error(f"--shots {args.shots} is more than window_shots={base.window_shots}; the direct path makes one pass")
    world = World(get_layout(base.encoder_profile), seed=0)
    with bench_worker(base, Path(tempfile.mkdtemp(prefix="mediafm-bench-"))) as (s, tail, _):
        warm = [generate_title(world, "warm", 20, np.random.default_rng(99))]
        stages(s, tail, warm)
        asyncio.run(direct(s, warm))

        def titles(r: int) -> list:
            rng = np.random.default_rng(r)
            return [generate_title(world, f"r{r}t{i}", args.shots, rng) for i in range(args.titles)]

        d, st = alternate(args.rounds, titles, lambda ts: asyncio.run(direct(s, ts)),
                          lambda ts: stages(s, tail, ts), "stages")
        print(f"stages / direct x{st / d:.2f}")


if __name__ == "__main__":
    main()
