"""A catalog into the pipeline and back out: `mediafm publish dataset` and `mediafm sink` at catalog size.

    .venv/bin/python bench/publish.py [--titles 40] [--shots 1500] [--rounds 2]

Needs the local stack (`mediafm stack up`; started here if it is not running). Writes a synthetic
v1 dataset (`--titles` x `--shots`, the configured profile's widths), then, alternating, in fresh
pipelines (topic prefixes):
- publish: `publish_dataset` (what `mediafm publish dataset` runs) into shots.fused, timed;
- sink: `mediafm sink` in a child process over that pipeline's topics (the fused shots just published,
  and as many final embeddings as there are shots, published beforehand), timed without its closing
  idle wait; its peak RSS from the kernel.
Each in two configurations of the tools' kafka-python client, side by side:
- now: what mediafm/bus.py sets (512 KiB batches) with the `crc32c` package installed;
- before: kafka-python's 16 KiB default batches and its pure-Python CRC-32C (what ran before both).
Prints shots/s and MB/s of each (medians over rounds), now / before, and the sink's peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from mediafm import bus, stack
from mediafm.config import Settings, replace
from mediafm.kafka_security import client_security
from mediafm.profiles import get_layout
from mediafm.publish import publish_dataset
from mediafm.schema import ContextualEmbedding, vec_to_bytes
from mediafm.stack import kafka
from mediafm.synth import write_corpus
from mediafm.topics import Topics

SINK_IDLE_S = 2.0


@contextlib.contextmanager
def configuration(name: str):
    """The tools' kafka-python client as it is now, or as it was before (16 KiB batches, pure-Python CRC)."""
    if name == "now":
        yield
        return
    import kafka.record.default_records as records
    from kafka.record._crc32c import crc as crc32c_py

    import mediafm.publish

    make, checksum = bus.producer, records.calc_crc32c
    records.calc_crc32c = lambda view: crc32c_py(view)  # what kafka-python uses when `crc32c` is missing
    mediafm.publish.producer = bus.producer = lambda s: bus.KafkaProducer(
        bootstrap_servers=s.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
        max_request_size=bus.MAX_MESSAGE_BYTES + 64 * 1024, **client_security(s))
    try:
        yield
    finally:
        mediafm.publish.producer = bus.producer = make
        records.calc_crc32c = checksum


def finals(s: Settings, sent: list[tuple[str, str, int]], dim: int) -> None:
    """One final ContextualEmbedding per shot published (random vectors of the fused width), for the sink."""
    p = bus.producer(s)
    rng = np.random.default_rng(0)
    topic = Topics.from_settings(s).embeddings
    for tid, _, n in sent:
        vecs = rng.standard_normal((n, dim), dtype=np.float32)
        for i in range(n):
            m = ContextualEmbedding(title_id=tid, shot_index=i, start_s=float(i), end_s=i + 1.0,
                                    embedding=vec_to_bytes(vecs[i]), dim=dim, model_version="1", profile="offline",
                                    window_start=0, window_end=n, final=True, n_shots=n)
            p.send(topic, key=tid.encode(), value=m.to_bytes())
    p.flush()
    p.close()


def run_sink(s: Settings, out: Path, config: str) -> tuple[float, float]:
    """`mediafm sink` in a child process; (seconds without the idle wait, peak RSS MiB)."""
    env = {**os.environ, **s.to_env()}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, "--sink-child", config, str(out)], env=env, check=True,
                       stdout=subprocess.PIPE, text=True)
    t = time.perf_counter() - t0 - 2 * SINK_IDLE_S  # it reads two topics, each until SINK_IDLE_S without news
    return t, float(r.stdout.split()[-1])


def sink_child(config: str, out: str) -> None:
    from mediafm.publish import sink

    with configuration(config):
        r = sink(Settings.load(), out, idle_s=SINK_IDLE_S, timeout_s=3600)
    assert r["contextual"] == r["shots"], r  # every final read back
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # peak RSS, MiB: the parent reads it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--titles", type=int, default=40)
    ap.add_argument("--shots", type=int, default=1500, help="shots per title")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of now / before")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--sink-child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink_child:
        return sink_child(*args.sink_child)

    base = Settings.load()
    stack.up(base)
    layout = get_layout(base.encoder_profile)
    tmp = Path(tempfile.mkdtemp(prefix="mediafm-publish-"))
    t0 = time.perf_counter()
    corpus = write_corpus(tmp / "corpus", n_titles=args.titles, layout=layout, shots=(args.shots, args.shots),
                          progress=True)
    n = args.titles * args.shots
    mb = sum(f.stat().st_size for f in Path(corpus).rglob("*.parquet")) / 1e6
    print(f"dataset: {args.titles} titles x {args.shots} shots, {mb:.0f} MB on disk ({time.perf_counter() - t0:.0f}s)")
    rates: dict[str, dict[str, list[float]]] = {c: {"publish": [], "sink": []} for c in ("now", "before")}
    rss: dict[str, list[float]] = {"now": [], "before": []}
    for r in range(args.rounds):
        for config in ("now", "before") if r % 2 == 0 else ("before", "now"):
            s = replace(base, topic_prefix=f"pub{uuid.uuid4().hex[:6]}", partitions=args.partitions)
            kafka.create_topics(s, Topics.from_settings(s).all())
            with configuration(config):
                t0 = time.perf_counter()
                sent = publish_dataset(s, corpus, progress=False)
                t = time.perf_counter() - t0
            assert sum(k for _, _, k in sent) == n
            rates[config]["publish"].append(n / t)
            finals(s, sent, layout.fused_dim)
            t, peak = run_sink(s, tmp / f"sink-{r}-{config}", config)
            rates[config]["sink"].append(n / t)
            rss[config].append(peak)
            print(f"round {r + 1} {config:6s} ({s.topic_prefix}): publish {n / rates[config]['publish'][-1]:.1f}s, "
                  f"sink {t:.1f}s, sink peak RSS {peak:.0f} MiB", flush=True)
    msg_mb = mb / n  # fused bytes per shot on disk ~ per message
    for what in ("publish", "sink"):
        now, before = (statistics.median(rates[c][what]) for c in ("now", "before"))
        print(f"{what:8s} now {now:8.0f} shots/s  before {before:8.0f} shots/s  now/before x{now / before:.1f}")
    print(f"sink peak RSS (median): now {statistics.median(rss['now']):.0f} MiB, before "
          f"{statistics.median(rss['before']):.0f} MiB, for {n} shots (~{msg_mb * 1e3:.1f} KB a fused shot on disk)")


if __name__ == "__main__":
    main()
