"""A catalog through the fuse + contextualise stages: 1 and 2 workers vs the same Triton calls made directly.

    .venv/bin/python bench/catalog.py [--titles 200] [--shots 1500] [--workers 1 2] [--partitions 4] [--pin]
                                      [--rounds 1] [--records runs|shots]

Needs the local stack (`mediafm stack up`; started here if it is not running);
trains and exports a tiny MediaFM for the configured profile first if none is
served (as `mediafm demo` does).

Pre-encoded titles (synthetic, the configured profile's widths; by default in
EncodedShots records of a run of a title's shots, as the encode stage sends
its runs and an ingestion system may; --records shots: one shot per record)
go, in one run and on the same titles:
- direct: per title, the fusion model in the fuse stage's batches (streams/fuse.py BATCH) and MediaFM over
  the worker's window plan in requests of the served max_batch_size, called
  from this process;
- through N workers (`mediafm worker` processes of one fresh pipeline with
  --partitions partitions). The catalog is published first (this process's
  kafka-python producer took as much of 2 cores as a worker when it published
  during the timed run), then the workers start; timed from the first fused
  shot to the last embedding, by the record timestamps their producers set,
  so neither publishing, nor the group's join, nor this process's reading
  counts. Then every shot's final is checked; each worker's peak RSS (VmHWM)
  is read from /proc and its counters from /metrics.
Prints shots/s of each, stages / direct, N workers / 1 worker, peak RSS, and
the CPU time each process spent per 1,000 shots (Triton with its model
processes, the broker, the workers or this process), read from /proc: on a
machine whose cores are all busy, that, not the wall time, says what bounds it.

--rounds measures direct and each worker count that many times, alternating,
the workers each time in a fresh pipeline; with more than one round the medians
(and the median worker rate over the median direct rate) are printed last; a
round's own line compares it with that round's direct.

--pin gives serving and the pipeline separate cores, as a machine with the
cores for both would: Triton's processes on the last core (or last half of the
cores), the broker, the workers and this process (direct's client) on the rest,
in every configuration alike; both are set back to every core at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from kafka import TopicPartition
from pipeline import BenchWorker, counter, memory_mib, offsets_written, stop, wait_finals

from mediafm import stack
from mediafm.bus import Tail, consumer, kafka_python_options, producer
from mediafm.config import Settings, free_ports, replace
from mediafm.demo import ensure_model
from mediafm.profiles import get_layout, get_profile
from mediafm.representations import published, served_output
from mediafm.schema import EncodedShots, shot_records
from mediafm.stack import kafka
from mediafm.stack.process import cpu_seconds, descendants, interrupt_on_sigterm
from mediafm.synth import World, encoded_shots, generate_title
from mediafm.topics import Topics
from mediafm.triton_client import TritonClient
from mediafm.windows import plan
from streams.fuse import BATCH as B  # the fuse stage's batch: the same fusion requests as the workers make


def titles(world: World, n: int, shots: int, seed: int):
    """The catalog, one title at a time (a whole catalog of vectors would not fit in memory)."""
    for i in range(n):
        yield generate_title(world, f"c{seed}-{i}", shots, np.random.default_rng(seed * 100_000 + i))


async def direct(s: Settings, world: World, args) -> tuple[int, float]:
    client = TritonClient(s.triton_http_url)
    model = get_profile(world.layout.name).mediafm_model
    served = await client.model_config(model)
    batch = int(served.get("max_batch_size", 1))
    size = int(served.get("parameters", {}).get("max_shots", {}).get("string_value", s.window_shots))
    size = min(size, s.window_shots)
    stride = max(1, round(s.window_stride * size / s.window_shots))
    n, t = 0, 0.0
    try:
        for title in titles(world, args.titles, args.shots, seed=1):
            t0 = time.perf_counter()
            fused = np.concatenate([(await client.infer("fusion", {
                "VIDEO": title.video[k:k + B], "AUDIO": title.audio[k:k + B], "TEXT": title.text[k:k + B],
                "PRESENT": title.present[k:k + B]}, ["FUSED"]))["FUSED"] for k in range(0, len(title.video), B)])
            windows, _ = plan(len(fused), size=size, stride=stride)
            for k in range(0, len(windows), batch):
                chunk = windows[k:k + batch]
                shots = np.zeros((len(chunk), size, fused.shape[1]), np.float32)
                for j, w in enumerate(chunk):
                    shots[j, : w.end - w.start] = fused[w.start:w.end]
                rep = served_output(s.embedding_representation)
                out = (await client.infer(model, {
                    "SHOTS": shots, "TITLE": np.repeat(title.title_embedding[None], len(chunk), 0).astype(np.float32),
                    "LENGTH": np.array([[w.end - w.start] for w in chunk], np.int64)}, [rep]))[rep]
                for j, w in enumerate(chunk):  # what the worker publishes per shot
                    published(s.embedding_representation, out[j, : w.end - w.start], fused[w.start:w.end])
            t += time.perf_counter() - t0
            n += len(fused)
    finally:
        await client.close()
    return n, t


def pipeline_settings(base: Settings, partitions: int) -> Settings:
    """A fresh pipeline (topic prefix) with its topics created."""
    s = replace(base, topic_prefix=f"cat{uuid.uuid4().hex[:6]}", partitions=partitions)
    kafka.create_topics(s, Topics.from_settings(s).all())
    return s


@contextmanager
def workers(s: Settings, tmp: Path, k: int):
    """k `mediafm worker` processes of pipeline `s`; yields (tail from the beginning, [pipeline.BenchWorker])."""
    env = {**os.environ, **s.to_env()}
    procs = [BenchWorker(env, tmp / f"{s.topic_prefix}-worker{i}.log", port)
             for i, port in enumerate(free_ports(k))]  # chosen together: workers bind theirs only once started
    tail = Tail(s, Topics.from_settings(s).embeddings, from_beginning=True)
    try:
        yield tail, procs
    finally:
        tail.close()
        stop(procs)


def drop_pipeline(s: Settings) -> None:
    """Delete a measured pipeline's topics (its own and Faust's changelogs): each configuration writes about a
    GB a 40 titles, and benchmark runs once filled the disk with them."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka_python_options(s))
    try:
        mine = [t for t in admin.list_topics() if t.startswith((f"{s.topic_prefix}.", f"{s.topic_prefix}-"))]
        if mine:
            admin.delete_topics(mine, timeout_ms=60_000)
    finally:
        admin.close()


def publish(s: Settings, world: World, n: int, shots: int, seed: int, packing: str) -> dict[str, int]:
    """The catalog into the pipeline's encoded-shots topic; {title: shots}. packing="runs": each title in
    EncodedShots records as full as RECORD_BYTES allows (mediafm.schema.shot_records, as the encode stage sends
    its runs); "shots": an EncodedShot per record."""
    names = Topics.from_settings(s)
    ids = {}
    p = producer(s)
    for title in titles(world, n, shots, seed):
        tid = f"{title.title_id}-{uuid.uuid4().hex[:6]}"
        ids[tid] = len(title.start_s)
        msgs = encoded_shots(title)
        for m in msgs:
            m.title_id = tid
        raw = [m.to_bytes() for m in msgs]
        futures = [p.send(names.encoded, key=tid.encode(), value=r)
                   for r in (raw if packing == "shots" else shot_records(EncodedShots, raw, tid, ""))]
        p.flush()
        for f in futures:  # a send the broker did not take fails its future only: without this, a silent hole
            f.get(timeout=60)
    p.close()
    return ids


def stage_span_s(s: Settings) -> float:
    """Seconds from the first fused shot to the last embedding, by the record timestamps the workers set."""
    names = Topics.from_settings(s)
    c = consumer(s, consumer_timeout_ms=5000)

    def stamps(topic: str, last: bool) -> list[int]:
        out = []
        for p in sorted(c.partitions_for_topic(topic) or ()):
            tp = TopicPartition(topic, p)
            end = c.end_offsets([tp])[tp]
            if end == 0:
                continue
            c.assign([tp])
            c.seek(tp, end - 1 if last else c.beginning_offsets([tp])[tp])
            out.append(next(iter(c)).timestamp)
        return out

    first, last = min(stamps(names.fused, last=False)), max(stamps(names.embeddings, last=True))
    c.close()
    return (last - first) / 1000


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes have spent so far (all their threads)."""
    return sum(cpu_seconds(pid) for pid in pids)


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of the processes onto `cpus` (threads started later inherit it from theirs)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except (OSError, ValueError):
                continue  # the thread ended meanwhile


class Cpu:
    """CPU seconds per 1,000 shots of serving (Triton's tree), the broker and the pipeline's own processes."""

    def __init__(self, s: Settings) -> None:
        self.serving = descendants(stack.triton.service(s).pid())
        self.broker = [stack.kafka.service(s).pid()]

    def start(self, own: list[int], name: str) -> None:
        self.own, self.name = own, name
        self.t0 = [cpu_s(self.serving), cpu_s(self.broker), cpu_s(own)]

    def per_1k(self, n: int) -> str:
        used = [b - a for a, b in zip(self.t0, (cpu_s(self.serving), cpu_s(self.broker), cpu_s(self.own)), strict=True)]
        names = ("Triton", "broker", self.name)
        return "CPU s / 1,000 shots: " + ", ".join(f"{k} {1000 * u / n:.2f}" for k, u in zip(names, used, strict=True))


def main() -> None:
    interrupt_on_sigterm()  # a kill unwinds as Ctrl-C does: the finally blocks stop what this bench started
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--titles", type=int, default=200)
    ap.add_argument("--shots", type=int, default=1500, help="shots per title")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--pin", action="store_true", help="serving and the pipeline on separate cores (see above)")
    ap.add_argument("--rounds", type=int, default=1, help="times each configuration is measured, alternating")
    ap.add_argument("--records", choices=("runs", "shots"), default="runs",
                    help="how the encoded titles are published: runs of a title's shots in EncodedShots records of "
                         "up to 448 KiB, as the encode stage sends its runs (default), or one EncodedShot per record")
    args = ap.parse_args()

    base = Settings.load()
    stack.up(base)
    print(ensure_model(base))
    world = World(get_layout(base.encoder_profile), seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="mediafm-catalog-"))
    total = args.titles * args.shots
    cpu = Cpu(base)
    every = os.sched_getaffinity(0)
    if args.pin:
        serving_cpus = set(sorted(every)[len(every) // 2:])
        pin(cpu.serving, serving_cpus)
        pin(cpu.broker + [os.getpid()], every - serving_cpus)  # workers started later inherit this process's
        print(f"pinned: Triton on CPUs {sorted(serving_cpus)}; broker, workers, this process on "
              f"{sorted(every - serving_cpus)}")
    try:
        run(base, world, args, cpu, tmp, total)
    finally:
        if args.pin:
            pin(cpu.serving + cpu.broker + [os.getpid()], every)


def run(base: Settings, world: World, args, cpu: Cpu, tmp: Path, total: int) -> None:
    rates: dict[int | str, list[float]] = {}
    for k in [k for _ in range(args.rounds) for k in ["direct", *args.workers]]:
        if k == "direct":
            cpu.start([os.getpid()], "this process, generating the titles too")
            n, t = asyncio.run(direct(base, world, args))
            rate_direct = n / t
            rates.setdefault(k, []).append(rate_direct)
            print(f"direct: {n} shots in {t:.1f}s, {rate_direct:.4g} shots/s; {cpu.per_1k(n)}")
            continue
        s = pipeline_settings(base, args.partitions)
        t0 = time.perf_counter()
        ids = publish(s, world, args.titles, args.shots, seed=1, packing=args.records)
        n = sum(ids.values())
        print(f"published {n} encoded shots ({offsets_written(s, Topics.from_settings(s).encoded)} records) in "
              f"{time.perf_counter() - t0:.1f}s (this process, kafka-python)")
        with workers(s, tmp, k) as (tail, procs):
            cpu.start([w.pid for w in procs], "workers")  # their start-up and the group's join count too
            embeddings = Topics.from_settings(s).embeddings
            while offsets_written(s, embeddings) < n and all(w.alive for w in procs):
                time.sleep(0.5)  # the end offsets, not the records: reading them would take the workers' CPU
            used = cpu.per_1k(n)
            wait_finals(tail, ids, timeout_s=600)  # every shot has its final (raises if not)
            t = stage_span_s(s)
            rss = [memory_mib(w.pid).get("VmHWM", float("nan")) for w in procs]
            dead = [w.pid for w in procs if not w.alive]
            # redeliveries: acknowledgements not committed across rebalances, and the repeats the stages saw
            dropped = sum(counter(w.port, "mediafm_acks_dropped") for w in procs if w.alive)
            dups = sum(counter(w.port, "mediafm_duplicates") for w in procs if w.alive)
        drop_pipeline(s)
        rates.setdefault(k, []).append(n / t)
        print(f"{k} worker(s), {args.partitions} partitions: {n} shots in {t:.1f}s, {n / t:.4g} "
              f"shots/s, x{n / t / rate_direct:.2f} of direct; peak RSS per worker "
              + ", ".join(f"{r:.0f} MiB" for r in rss) + (f"; exited early: {dead}" if dead else "")
              + f"; acknowledgements dropped across rebalances {dropped:.0f}, redeliveries recognised {dups:.0f}"
              + f"; {used}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    if args.rounds > 1:
        for k, r in med.items():
            print(f"median of {args.rounds}: {k}{'' if k == 'direct' else ' worker(s)'}: {r:.4g} shots/s"
                  + ("" if k == "direct" else f", x{r / med['direct']:.2f} of direct"))
    if 1 in med:
        for k, r in med.items():
            if k not in (1, "direct"):
                print(f"{k} workers / 1 worker: x{r / med[1]:.2f} (on {os.cpu_count()} cores)")
    print(f"catalog: {args.titles} titles x {args.shots} shots = {total} shots per configuration")


if __name__ == "__main__":
    main()
