"""The streaming pipeline end to end vs the same code called directly, and live latency.

    .venv/bin/python bench/pipeline.py [--titles 4] [--shots 8] [--live-shots 24]

Needs the local stack (`mediafm stack up`; started here if it is not running)
with the offline encoders; trains and exports a tiny MediaFM for the offline
profile first if none is served (as `mediafm demo` does).

1. Throughput, in one run on the same generated films (ffmpeg, 320x180, speech,
   tones, noise), alternating rounds, medians:
   - direct: per film, shot detection + mediafm.media.embed.encode_shots (Triton
     encoders) + fusion + one MediaFM pass on Triton, called from this process;
   - pipeline: the films published as title requests to a fresh topic prefix,
     one `mediafm worker`, timed from the first publish to the last final
     embedding (Kafka + Faust + the same Triton models).
   Prints shots/s of each and pipeline / direct (target >= 0.7).
2. Live latency: a film published as a live event in real time (1 s segments);
   for every shot, seconds from its segment's publication to its provisional and
   to its final embedding (live_right_context for this run: --right-context).
   Prints p50 / p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from kafka import TopicPartition

from mediafm import stack
from mediafm.bus import Tail, consumer, producer
from mediafm.config import Settings, free_ports, replace
from mediafm.demo import ensure_model
from mediafm.media.embed import encode_shots, fuse_encoded
from mediafm.media.shots import detect_shots
from mediafm.media.synthfilm import make_film
from mediafm.profiles import get_profile
from mediafm.publish import publish_live, publish_title
from mediafm.schema import ContextualEmbedding, EncodedShots, TitleMeta, decode, shot_records
from mediafm.stack import kafka
from mediafm.stack.process import interrupt_on_sigterm, tied_to_this_process
from mediafm.synth import encoded_shots
from mediafm.topics import Topics
from mediafm.triton_client import TritonClient

AUDIO = ["speech:hello there", "tone:440", "noise", "speech:the train leaves at noon", "tone:330", "noise"]


def films(d: Path, n: int, shots: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [make_film(d / f"f{seed}-{i}.mp4", shots=[int(x) for x in rng.integers(24, 60, size=shots)], fps=24,
                      size=(320, 180), first_source=i, audio=[AUDIO[(i + j) % len(AUDIO)] for j in range(shots)])
            for i in range(n)]


async def direct(settings: Settings, fs: list) -> int:
    """The pipeline's work, called directly: detect, encode on Triton, fuse, MediaFM on Triton."""
    profile = get_profile(settings.encoder_profile)
    client = TritonClient(settings.triton_http_url)
    n = 0
    try:
        for f in fs:
            shots = await asyncio.to_thread(detect_shots, f.path, detector=settings.shot_detector)
            msgs = await encode_shots(client, f.path, shots, [], TitleMeta(f.path.stem), profile, settings=settings)
            fused, _ = fuse_encoded(msgs, profile.layout)
            title = np.frombuffer(msgs[0].title_embedding, "<f4")
            await client.infer(profile.mediafm_model, {
                "SHOTS": fused[None], "TITLE": title[None].copy(), "LENGTH": np.array([[len(fused)]], np.int64)},
                ["HIDDEN"])
            n += len(shots)
    finally:
        await client.close()
    return n


def wait_finals(tail: Tail, want: dict[str, int], timeout_s: float) -> dict[str, list[ContextualEmbedding]]:
    got: dict[str, list[ContextualEmbedding]] = {k: [] for k in want}

    def done():
        return all(len({m.shot_index for m in got[k] if m.final}) >= n for k, n in want.items())

    for rec in tail.poll(timeout_s=timeout_s, stop=done):
        m = decode(rec.value, expect=ContextualEmbedding)
        if m.title_id in got:
            got[m.title_id].append(m)
    if not done():
        raise SystemExit(f"timed out waiting for {want}: got { {k: len(v) for k, v in got.items()} }")
    return got


def publish_encoded(s: Settings, titles: list, suffix: str = "") -> dict[str, int]:
    """Synthetic titles (mediafm.synth.generate_title) published to the pipeline's encoded topic in runs of shots,
    as the encode stage sends them (EncodedShots), each title id with `suffix` added: the work of the fuse and
    contextualise stages alone. Returns {title id: shots}."""
    names, ids = Topics.from_settings(s), {}
    p = producer(s)
    try:
        for t in titles:
            tid = f"{t.title_id}{suffix}"
            ids[tid] = len(t.start_s)
            shots = encoded_shots(t)
            for m in shots:
                m.title_id = tid
            for record in shot_records(EncodedShots, [m.to_bytes() for m in shots], tid, shots[0].request_id):
                p.send(names.encoded, key=tid.encode(), value=record)
        p.flush()
    finally:
        p.close()
    return ids


def offsets_written(s: Settings, topic: str) -> int:
    """How many records were ever written to `topic`: its end offsets, summed over partitions."""
    c = consumer(s)
    try:
        return sum(c.end_offsets([TopicPartition(topic, q) for q in sorted(c.partitions_for_topic(topic) or ())])
                   .values())
    finally:
        c.close()


def records_in_log(s: Settings, topic: str) -> int:
    """How many records `topic` holds now, read to its end: what compaction left (end offsets count all written)."""
    tail = Tail(s, topic, from_beginning=True)
    try:
        return sum(1 for _ in tail.to_end(timeout_s=600))
    finally:
        tail.close()


def pipeline(s: Settings, tail: Tail, fs: list) -> tuple[int, float]:
    ids = {f"{f.path.stem}-{uuid.uuid4().hex[:6]}": len(f.shot_frames) for f in fs}
    t0 = time.perf_counter()
    for (tid, _), f in zip(ids.items(), fs, strict=True):
        publish_title(s, f.path, title_id=tid)
    wait_finals(tail, ids, timeout_s=900)
    return sum(ids.values()), time.perf_counter() - t0


class BenchWorker:
    """One `mediafm worker` process of a bench, tied to this process (it dies with it), serving /metrics on
    `port`, log appended to `log`. `kill9_and_restart()` does what a supervisor sees after a crash: SIGKILL, then a
    fresh process with the same settings, which rejoins the group and recovers its tables from their changelogs."""

    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        self.env, self.log, self.port = {**env, "MEDIAFM_WORKER_WEB_PORT": str(port)}, log, port
        self._lock = threading.Lock()  # a kill and a supervisor's restart never both start a process
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        with self.log.open("ab") as out:
            return subprocess.Popen(tied_to_this_process([sys.executable, "-m", "mediafm.cli", "worker",
                                                          "--loglevel", "warning"]),
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9_and_restart(self) -> None:
        with self._lock:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = self._start()

    def restart_if_exited(self) -> int | None:
        """What compose's `restart: on-failure` does: if the process has exited, start a fresh one and return the
        exit status it ended with (75, EX_TEMPFAIL, when it stopped itself over a record the broker did not take);
        None while it runs."""
        with self._lock:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = self._start()
            return rc


def stop(workers: list[BenchWorker]) -> None:
    """SIGTERM every worker, then wait for each: they shut down (commit, close their stores) side by side."""
    for w in workers:
        w.proc.terminate()
    for w in workers:
        w.proc.wait(timeout=60)


@contextmanager
def bench_workers(base: Settings, tmp: Path, k: int = 1, *, env: dict[str, str] | None = None,
                  **overrides) -> Iterator[tuple[Settings, Tail, list[BenchWorker]]]:
    """The local stack (started if needed, a MediaFM served), a fresh topic prefix with its topics, `k`
    `mediafm worker` processes on it (settings `overrides` passed as MEDIAFM_* variables, `env` added to their
    environment, logs in `tmp`, each its own /metrics port) and a tail of its embeddings topic. Yields (settings,
    tail, the workers); settings.worker_web_port is the first worker's."""
    stack.up(base)
    print(ensure_model(base))
    ports = free_ports(k)  # chosen together: workers bind theirs only once started
    s = replace(base, topic_prefix=f"bench{uuid.uuid4().hex[:6]}", worker_web_port=ports[0], **overrides)
    kafka.create_topics(s, Topics.from_settings(s).all())
    common = {**os.environ, "MEDIAFM_TOPIC_PREFIX": s.topic_prefix,
              **{f"MEDIAFM_{name.upper()}": str(v) for name, v in overrides.items()}, **(env or {})}
    workers = [BenchWorker(common, tmp / ("worker.log" if k == 1 else f"worker{i}.log"), port)
               for i, port in enumerate(ports)]
    tail = Tail(s, Topics.from_settings(s).embeddings)
    for w in workers:
        print(f"worker pid {w.pid} (log {w.log}, metrics on port {w.port})")
    print("warming up (group joins, models load, tables recover)")
    try:
        yield s, tail, workers
    finally:
        tail.close()
        stop(workers)


@contextmanager
def bench_worker(base: Settings, tmp: Path, *, env: dict[str, str] | None = None,
                 **overrides) -> Iterator[tuple[Settings, Tail, BenchWorker]]:
    """bench_workers with one worker: yields (settings, tail, the worker)."""
    with bench_workers(base, tmp, 1, env=env, **overrides) as (s, tail, workers):
        yield s, tail, workers[0]


def alternate(rounds: int, inputs: Callable, direct_run: Callable, streamed_run: Callable,
              streamed: str) -> tuple[float, float]:
    """Rounds of (direct, streamed) on the same inputs, alternating so drift hits both alike.

    direct_run(x) -> shots; streamed_run(x) -> (shots, seconds). Prints each round and the medians;
    returns the median shots/s (direct, streamed)."""
    rows = []
    for r in range(rounds):
        x = inputs(r)
        t0 = time.perf_counter()
        n_direct = direct_run(x)
        t_direct = time.perf_counter() - t0
        n_streamed, t_streamed = streamed_run(x)
        rows.append((n_direct / t_direct, n_streamed / t_streamed))
        print(f"round {r}: direct {n_direct} shots in {t_direct:.2f}s ({rows[-1][0]:.4g} shots/s), "
              f"{streamed} {n_streamed} shots in {t_streamed:.2f}s ({rows[-1][1]:.4g} shots/s)")
    d, st = statistics.median(x for x, _ in rows), statistics.median(y for _, y in rows)
    print(f"median of {rounds}: direct {d:.4g} shots/s, {streamed} {st:.4g} shots/s")
    return d, st


def main() -> None:
    interrupt_on_sigterm()  # a kill unwinds as Ctrl-C does: the finally blocks stop what this bench started
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--titles", type=int, default=4, help="films per round")
    ap.add_argument("--shots", type=int, default=8, help="shots per film")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--live-shots", type=int, default=24)
    ap.add_argument("--right-context", type=int, default=4, help="live_right_context of the benchmark's worker")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mediafm-bench-"))
    with bench_worker(Settings.load(), tmp, live_right_context=args.right_context) as (s, tail, _):
        pipeline(s, tail, films(tmp, 1, 3, seed=99))
        asyncio.run(direct(s, films(tmp, 1, 3, seed=98)))
        d, p = alternate(args.rounds, lambda r: films(tmp, args.titles, args.shots, seed=r),
                         lambda fs: asyncio.run(direct(s, fs)), lambda fs: pipeline(s, tail, fs), "pipeline")
        print(f"pipeline / direct x{p / d:.2f} (target >= 0.7)")

        live = make_film(tmp / "live.mp4", shots=[int(x) for x in np.random.default_rng(7).integers(24, 60, args.live_shots)],
                         fps=24, size=(320, 180), audio=[AUDIO[j % len(AUDIO)] for j in range(args.live_shots)])
        eid = f"live-{uuid.uuid4().hex[:6]}"
        print(f"live event {eid}: {args.live_shots} shots, {live.n_frames / live.fps:.0f}s, published in real time "
              f"(1 s segments), live_right_context {args.right_context}")
        publish_live(s, live.path, event_id=eid, segment_s=1.0, realtime=True)
        got = wait_finals(tail, {eid: args.live_shots}, timeout_s=600)
        for final in (False, True):
            lat = np.array([m.produced_at - m.published_at for m in got[eid] if m.final == final])
            name = "final" if final else "provisional"
            print(f"live {name:11s}: p50 {np.percentile(lat, 50):6.2f}s  p99 {np.percentile(lat, 99):6.2f}s  "
                  f"({len(lat)} shots; from the publication of the segment that closed the shot)")


def worker_metrics(port: int) -> list:
    """A worker's Prometheus metric families, from its /metrics page (the worker_web_port setting)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return list(text_string_to_metric_families(r.read().decode()))


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, MiB; {} once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) / 1024 for k, v in (ln.split(":", 1) for ln in lines) if k in ("VmRSS", "VmHWM")}


def counter(port: int, name: str) -> float:
    """The sum over labels of a worker's Prometheus counter `name` (without _total)."""
    return sum(smp.value for fam in worker_metrics(port) if fam.name == name
               for smp in fam.samples if smp.name == f"{name}_total")


if __name__ == "__main__":
    main()
