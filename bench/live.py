"""Live latency at broadcast pace: a generated event published in real time, latency per minute of event.

    .venv/bin/python bench/live.py [--minutes 10] [--segment-s 2] [--detector transnetv2] [--right-context 16]
                                   [--malloc-arena-max 16] [--kill-at M [M ...]] [--kill-triton-at M [M ...]]
                                   [--kill-broker-at M [M ...]]
                                   [--titles N] [--title-shots S] [--titles-at M]

Needs the local stack (`mediafm stack up`; started here if it is not running) with the offline encoders;
trains and exports a tiny MediaFM for the offline profile first if none is served.

A film of --minutes (25 fps, 480x270, hard cuts every 2-8 s, tones and speech) is cut into --segment-s
segments and published with `publish_live(realtime=True)`: each segment when its last frame would have
happened. One `mediafm worker` on a fresh pipeline. For every shot: seconds from the publication of the
segment that closed it to its provisional and to its final embedding (ContextualEmbedding.produced_at -
published_at; the worker exports the same as mediafm_e2e_latency_seconds{kind="live"}). Prints p50 / p99
per minute of the event (per 10 minutes when it is longer than 20) and overall, and the targets: provisional
p99 <= 2 s, final p99 <= provisional p99 + right context (seconds of the shots it waits for) + 2 s, the last
block's p99 within 20% of the first's.
Also the worker's memory over the event (VmRSS every 3 s: median and largest, overall and in each block of
the table; VmHWM at the end), and each table
changelog's records: offsets written against records still in the log once the event has ended. The broker
compacts a changelog's closed log segments only, and a segment closes after an hour
(streams/runtime.py CHANGELOG_SEGMENT_MS), so an event shorter than that shows none compacted.
`--malloc-arena-max N` runs the worker with MALLOC_ARENA_MAX=N (16 is glibc's default on 2 cores: 8 a core)
instead of the 2 arenas `mediafm worker` sets itself (mediafm/cli.py `_two_malloc_arenas`).
`--kill-at M [M ...]` kills the worker with SIGKILL at each minute M of the event and starts a fresh one at
once, as a supervisor would: it rejoins, recovers its tables from their changelogs and carries on with the
event. `--kill-triton-at M [M ...]` kills the stack's Triton with SIGKILL at minute M and starts it again at
once (`mediafm stack up`'s start, ready when its models are): the worker waits it out and retries.
`--kill-broker-at M [M ...]` does the same to the stack's Kafka broker (ready when it answers metadata again):
the publisher's sends, the worker's consumers and producer and this bench's own reader wait for it. Throughout,
this bench is the worker's supervisor, as compose's `restart: on-failure` is: a worker that exits (75,
EX_TEMPFAIL, when a record it sent was not taken) is started again at once, and said so. A fault
comes right after the first segment that starts at or past its minute is published. Printed for each fault:
seconds from it to the restart and to the first embedding after it, the shots whose last frame happened while
the worker could not serve them with their provisional latency (from the publication of the segment that closed
each, and from its last frame on the event's clock, which also counts a publisher held up by the broker), how
late the publisher got segments out, and each minute around it; and once, every shot's provisionals
and finals (a shot may be published again, with the same values: ContextualEmbedding's docstring) and
whether the event's spans still tile it. A changelog's first log segment closes an hour after its first
record (the warm-up event's, written before the film is cut into segments), so a worker killed past minute
60 comes back after the first compaction, and one killed before it has the whole event's changelog to replay.
`--titles N` publishes N synthetic titles of --title-shots shots each (mediafm.synth, as the encode stage
sends them, so that only the fuse and contextualise stages work on them) right after the first segment at or past
minute --titles-at: the same worker fuses them and runs their MediaFM passes beside the event (the contextualise
agent reads titles' and live events' fused shots alike). Printed: when each title's last final came, and the live
shots' latency before the titles came, while they were worked on, and after.
Every run also counts the pipeline's dead letters (none expected).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from pipeline import (
    AUDIO,
    bench_worker,
    memory_mib,
    offsets_written,
    publish_encoded,
    records_in_log,
    wait_finals,
    worker_metrics,
)

from mediafm.bus import consumer
from mediafm.config import Settings
from mediafm.media.synthfilm import join_films, make_film
from mediafm.profiles import get_layout
from mediafm.publish import publish_live
from mediafm.schema import ContextualEmbedding, LiveSegment
from mediafm.stack import kafka, triton
from mediafm.stack.process import interrupt_on_sigterm
from mediafm.synth import World, generate_title
from mediafm.topics import Topics


def p(x, q) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def latencies(ms: list[ContextualEmbedding], final: bool) -> list[float]:
    """Seconds from each segment's publication to its shot's provisional (or final) embedding."""
    return [m.produced_at - m.published_at for m in ms if m.final == final]


LATENCY_HEADER = f"{'provisional p50':>16s} {'p99':>7s} {'final p50':>10s} {'p99':>7s}"


def latency_cells(ms: list[ContextualEmbedding]) -> str:
    """One row of a latency table under LATENCY_HEADER: p50 and p99 of the provisionals, then of the finals."""
    pv, fv = latencies(ms, final=False), latencies(ms, final=True)
    return f"{p(pv, 50):16.2f} {p(pv, 99):7.2f} {p(fv, 50):10.2f} {p(fv, 99):7.2f}"


def stage_buckets(port: int, kind: str = "live") -> dict[str, dict[float, float]]:
    """{stage: {le: cumulative count}} of the worker's mediafm_stage_latency_seconds for `kind`."""
    out: dict[str, dict[float, float]] = {}
    for fam in worker_metrics(port):
        if fam.name == "mediafm_stage_latency_seconds":
            for smp in fam.samples:
                if smp.name.endswith("_bucket") and smp.labels.get("kind") == kind:
                    out.setdefault(smp.labels["stage"], {})[float(smp.labels["le"])] = smp.value
    return out


def quantile(cum: dict[float, float], f: float) -> float:
    """The f-quantile of a histogram's cumulative bucket counts, interpolated within its bucket (as
    Prometheus' histogram_quantile does)."""
    rank, lo, below = f * max(cum.values(), default=0.0), 0.0, 0.0
    for le in sorted(cum):
        if cum[le] >= rank and cum[le] > below:
            return lo if le == float("inf") else lo + (le - lo) * (rank - below) / (cum[le] - below)
        lo, below = le, cum[le]
    return float("nan")


class RssSampler(threading.Thread):
    """VmRSS of the process `pid()` names every `every_s` seconds until stopped: `samples` in MiB, `times` when
    each was read (time.time())."""

    def __init__(self, pid: Callable[[], int], every_s: float = 3.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.done = pid, every_s, threading.Event()
        self.samples: list[float] = []
        self.times: list[float] = []

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            if rss := memory_mib(self.pid()).get("VmRSS"):
                self.samples.append(rss)
                self.times.append(time.time())

    def cells(self, t0: float, start_s: float, end_s: float) -> str:
        """Median and largest VmRSS read in [start_s, end_s) of the event's clock (t0: its start)."""
        got = [r for r, t in zip(self.samples, self.times, strict=True) if start_s <= t - t0 < end_s]
        return f"{statistics.median(got):9.0f} {max(got):7.0f}" if got else f"{'-':>9s} {'-':>7s}"


def event_film(path: Path, shots: list[int], fps: int, part_shots: int = 100) -> Path:
    """The event's film: make_film `part_shots` shots at a time (the sources and audio of one call; hues restart
    each part), joined by synthfilm.join_films. One call for a 90-minute event (1,066 shots) passed the kernel's
    limit on one argument with its filter graph (E2BIG); up to `part_shots` shots, one call."""
    audio = [AUDIO[j % len(AUDIO)] for j in range(len(shots))]
    if len(shots) <= part_shots:
        return make_film(path, shots=shots, fps=fps, size=(480, 270), audio=audio).path
    parts = []
    for k in range(0, len(shots), part_shots):
        part = path.with_name(f"{path.stem}.part{k // part_shots:03d}.mp4")
        make_film(part, shots=shots[k:k + part_shots], fps=fps, size=(480, 270), audio=audio[k:k + part_shots],
                  first_source=k)
        parts.append(part)
    join_films(parts, path)
    for q in parts:
        q.unlink()
    return path


def changelogs(s: Settings) -> list[tuple[str, int, int]]:
    """(topic, offsets written, records in the log now) of each table changelog of the pipeline `s` names (the
    topics faust declares as `<topic_prefix>-<table>-changelog`)."""
    c = consumer(s)
    try:
        names = sorted(t for t in c.topics() if t.startswith(f"{s.topic_prefix}-") and t.endswith("-changelog"))
    finally:
        c.close()
    return [(name, offsets_written(s, name), records_in_log(s, name)) for name in names]


@dataclass
class Fault:
    """One fault of the event: the process killed ("worker", "Triton" or "broker") at the minute asked for; once
    it has come, the event minute it came at, and time.time() of the kill and of the process being back."""

    what: str
    minute: float
    event_minute: float = float("nan")
    at: float = float("nan")
    back: float = float("nan")

    @property
    def name(self) -> str:
        return {"worker": "the worker", "Triton": "Triton", "broker": "the broker"}[self.what]


# The stack's services a fault can kill: the module that starts them, and whether the killed one is still there
# (Triton: it answers HTTP; the broker: its process).
SERVICES = {"Triton": (triton, triton.live), "broker": (kafka, lambda s: kafka.service(s).alive())}


def kill_service(s: Settings, what: str) -> None:
    """SIGKILL the stack's Triton or broker and wait until it is gone."""
    module, up = SERVICES[what]
    os.kill(module.service(s).pid(), signal.SIGKILL)
    while up(s):
        time.sleep(0.1)


def restart_service(s: Settings, f: Fault) -> None:
    """Start the service again as `mediafm stack up` does, and note when it is ready (Triton: its models loaded;
    the broker: it answers a metadata request)."""
    SERVICES[f.what][0].up(s)
    f.back = time.time()


class Supervisor(threading.Thread):
    """Starts the worker again whenever it has exited, as compose's `restart: on-failure` does, and keeps
    (time.time(), exit status) of each exit."""

    def __init__(self, worker) -> None:
        super().__init__(daemon=True)
        self.worker, self.exits, self.done = worker, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            if (rc := self.worker.restart_if_exited()) is not None:
                self.exits.append((time.time(), rc))
                print(f"the worker exited with status {rc}{' (EX_TEMPFAIL)' if rc == 75 else ''}; started again "
                      f"(pid {self.worker.pid})", flush=True)


def event_clock(sent: list[LiveSegment], segment_s: float) -> tuple[float, list[float]]:
    """When the event started (time.time()) and how late each segment was published. publish_live sends segment k
    once its last frame has happened (its end: the next segment's start) and stamps it just before; a send held up
    (a broker away) makes the segments after it late. The start is the earliest publication less its segment's
    end, which a timely segment gives to within a sleep's overshoot."""
    ends = [b.start_s for b in sent[1:]] + [sent[-1].start_s + segment_s]
    t0 = min(seg.published_at - end for seg, end in zip(sent, ends, strict=True))
    return t0, [seg.published_at - t0 - end for seg, end in zip(sent, ends, strict=True)]


def after_fault(got: list[ContextualEmbedding], f: Fault, sent: list[LiveSegment], segment_s: float) -> None:
    """What one fault did: the outage, the shots whose last frame happened during it, how late the publisher
    got, the minutes around it."""
    later = [m.produced_at for m in got if m.produced_at > f.at]
    first = min(later) if later else float("nan")
    print(f"{f.name} killed at minute {f.event_minute:.2f} of the event: back (a fresh process "
          f"{'started' if f.what == 'worker' else 'ready'}) {f.back - f.at:.2f} s after the kill; the first embedding "
          f"after it {first - f.at:.1f} s after the kill")
    t0, late = event_clock(sent, segment_s)
    down = [m for m in got if not m.final and f.at <= t0 + m.end_s < max(first, f.back)]
    if down:
        lat = latencies(down, final=False)
        since = [m.produced_at - t0 - m.end_s for m in down]
        print(f"  {len(down)} shots whose last frame happened before it was back and served: provisional latency "
              f"{min(lat):.1f}-{max(lat):.1f} s from the segment's publication, {min(since):.1f}-{max(since):.1f} s "
              f"from the shot's last frame")
    held = [(x, seg) for x, seg in zip(late, sent, strict=True) if f.at <= seg.published_at < f.at + 120 and x > 1.0]
    if held:
        print(f"  the publisher was behind the event's clock for {len(held)} segments after it, by up to "
              f"{max(x for x, _ in held):.1f} s (segment {max(held, key=lambda h: h[0])[1].segment_index})")
    print(f"  {'minute':>6s} {'shots':>5s} {LATENCY_HEADER}")
    for minute in range(max(0, int(f.event_minute) - 1), int(f.event_minute) + 5):
        ms = [m for m in got if int(m.start_s // 60) == minute]
        if ms:
            print(f"  {minute:>6d} {len({m.shot_index for m in ms}):>5d} {latency_cells(ms)}")


def every_shot(got: list[ContextualEmbedding], n_film: int) -> None:
    """Each shot's outputs and the spans, after faults."""
    r = per_shot(got)
    print(f"every shot of {r['shots']}: a final {not r['no_final']}, a provisional {not r['no_provisional']}; "
          f"finals published more than once: {len(r['finals_twice'])} shots ({len(r['finals_differ'])} of them with "
          f"different values); provisionals more than once: {r['provisionals_twice']} shots")
    print(f"shots cut: {r['shots']} (the film has {n_film}); the finals' spans tile the event: {not r['gaps']}"
          + (f" (gaps or overlaps after shots {r['gaps'][:5]})" if r["gaps"] else ""))


def per_shot(got: list[ContextualEmbedding]) -> dict:
    """One event's outputs, shot by shot: how many shots (the highest index + 1); the indices with no final and
    with no provisional; those whose final came more than once, and of them those whose copies differ; how many
    shots had more than one provisional; and (shot index, seconds) where a final's span does not end where the
    next one's starts."""
    by: dict[int, dict[bool, list[ContextualEmbedding]]] = {}
    for m in got:
        by.setdefault(m.shot_index, {False: [], True: []})[m.final].append(m)
    n = max(by, default=-1) + 1
    twice = {i: v[True] for i, v in by.items() if len(v[True]) > 1}
    finals = [by[i][True][0] for i in range(n) if i in by and by[i][True]]
    return {
        "shots": n,
        "no_final": [i for i in range(n) if i not in by or not by[i][True]],
        "no_provisional": [i for i in range(n) if i not in by or not by[i][False]],
        "finals_twice": sorted(twice),
        "finals_differ": sorted(i for i, fs in twice.items() if any(f.embedding != fs[0].embedding for f in fs[1:])),
        "provisionals_twice": sum(len(v[False]) > 1 for v in by.values()),
        "gaps": [(a.shot_index, round(b.start_s - a.end_s, 3)) for a, b in pairwise(finals)
                 if b.shot_index != a.shot_index + 1 or abs(b.start_s - a.end_s) > 1e-3],
    }


class TitlesBeside(threading.Thread):
    """--titles: synthetic titles published to the encoded topic at `minute` of the event (start() from the
    publisher's segment callback; the titles are drawn before the event starts)."""

    def __init__(self, s: Settings, n: int, n_shots: int, minute: float) -> None:
        super().__init__(daemon=True)
        self.s, self.minute, self.at = s, minute, None
        world, rng = World(get_layout(s.encoder_profile), seed=0), np.random.default_rng(7)
        self.titles = [generate_title(world, f"beside{i}", n_shots, rng) for i in range(n)]
        self.ids: dict[str, int] = {}
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.ids = publish_encoded(self.s, self.titles, f"-{uuid.uuid4().hex[:6]}")
        except Exception as e:  # said by join(), not lost in the thread
            self.error = e
            return
        print(f"published {len(self.ids)} titles of {len(self.titles[0].start_s)} shots at minute {self.minute:g} in "
              f"{time.time() - self.at:.1f} s", flush=True)

    def start(self) -> None:
        self.at = time.time()  # (before the thread's first step: one start however many segments follow)
        super().start()

    def join(self) -> dict[str, int]:
        """{title id: shots}, once published (the event may end first)."""
        if self.at is None:
            raise SystemExit(f"the event ended before minute {self.minute:g}: no titles published")
        super().join()
        if self.error is not None:
            raise SystemExit(f"publishing the titles failed: {type(self.error).__name__}: {self.error}")
        return self.ids

    def report(self, got: dict[str, list[ContextualEmbedding]], live: list[ContextualEmbedding]) -> None:
        """When each title's last final came; the live shots' latency before, during and after the titles."""
        done = {tid: max(m.produced_at for m in ms if m.final) for tid, ms in got.items()}
        for tid, t in sorted(done.items(), key=lambda kv: kv[1]):
            print(f"title {tid} ({self.ids[tid]} shots): its last final {t - self.at:.1f} s after it was published")
        end = max(done.values())
        print(f"live shots by when their segment was published (titles from {0:.0f} to {end - self.at:.0f} s):")
        print(f"  {'':24s} {'shots':>5s} {LATENCY_HEADER}")
        for label, lo, hi in (("before the titles", -np.inf, self.at), ("while they were worked on", self.at, end),
                              ("after", end, np.inf)):
            ms = [m for m in live if lo <= m.published_at < hi]
            print(f"  {label:24s} {len({m.shot_index for m in ms}):>5d} {latency_cells(ms) if ms else ''}")


def main() -> None:
    interrupt_on_sigterm()  # a kill unwinds as Ctrl-C does: the finally blocks stop what this bench started
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--segment-s", type=float, default=2.0)
    ap.add_argument("--detector", default=None, help="live_shot_detector of the worker (default: the setting)")
    ap.add_argument("--right-context", type=int, default=16, help="live_right_context of the worker")
    ap.add_argument("--malloc-arena-max", type=int, default=None,
                    help="MALLOC_ARENA_MAX of the worker (default: unset, so the worker sets 2 arenas itself)")
    ap.add_argument("--kill-at", type=float, nargs="+", default=[], metavar="M",
                    help="SIGKILL the worker at each minute M of the event and start a fresh one at once")
    ap.add_argument("--kill-triton-at", type=float, nargs="+", default=[], metavar="M",
                    help="SIGKILL Triton at each minute M of the event and start it again at once")
    ap.add_argument("--kill-broker-at", type=float, nargs="+", default=[], metavar="M",
                    help="SIGKILL the Kafka broker at each minute M of the event and start it again at once")
    ap.add_argument("--titles", type=int, default=0, help="synthetic titles published beside the event")
    ap.add_argument("--title-shots", type=int, default=3000, help="shots of each title of --titles")
    ap.add_argument("--titles-at", type=float, default=None, metavar="M",
                    help="the minute of the event the titles are published at (default: a third of the way)")
    args = ap.parse_args()
    titles_at = args.minutes / 3 if args.titles_at is None else args.titles_at
    if args.titles and not 0 <= titles_at * 60 <= args.minutes * 60 - args.segment_s:
        ap.error(f"--titles-at {titles_at:g} is not within the event's {args.minutes:g} minutes (its last segment "
                 f"starts {args.segment_s:g} s before the end)")
    faults = sorted([Fault("worker", m) for m in args.kill_at] + [Fault("Triton", m) for m in args.kill_triton_at]
                    + [Fault("broker", m) for m in args.kill_broker_at], key=lambda f: f.minute)
    for f in faults:
        if not 0 < f.minute < args.minutes:
            ap.error(f"a {f.what} kill at minute {f.minute:g} is not within the event's {args.minutes:g} minutes")

    tmp = Path(tempfile.mkdtemp(prefix="mediafm-live-"))  # the worker's log: kept
    media = Path(tempfile.mkdtemp(prefix="mediafm-live-media-"))  # the films: 1.4 GB for 69 minutes, removed
    atexit.register(shutil.rmtree, media, ignore_errors=True)  # also after Ctrl-C or SIGTERM (not SIGKILL)
    rng = np.random.default_rng(0)
    fps, frames, shots = 25, int(args.minutes * 60 * 25), []
    while sum(shots) < frames:
        shots.append(int(rng.integers(2 * fps, 8 * fps)))
    shots[-1] -= sum(shots) - frames
    print(f"making a {args.minutes:g}-minute film: {len(shots)} shots, 480x270 at {fps} fps")
    film = event_film(media / "event.mp4", shots, fps)
    overrides = {"live_right_context": args.right_context}
    if args.detector:
        overrides["live_shot_detector"] = args.detector
    s0 = Settings.load()
    env = {"MALLOC_ARENA_MAX": str(args.malloc_arena_max)} if args.malloc_arena_max else None
    with bench_worker(s0, tmp, env=env, **overrides) as (s, tail, worker):
        warm = make_film(media / "warm.mp4", shots=[30, 30, 30], fps=fps, size=(480, 270))
        wid = f"warm-{uuid.uuid4().hex[:6]}"
        publish_live(s, warm.path, event_id=wid, segment_s=args.segment_s)
        wait_finals(tail, {wid: 3}, timeout_s=600)
        before = stage_buckets(s.worker_web_port)
        eid = f"live-{uuid.uuid4().hex[:6]}"
        print(f"live event {eid}: {len(shots)} shots, {frames / fps:.0f}s, {args.segment_s:g} s segments in real time, "
              f"detector {s.live_shot_detector}, right context {args.right_context}")
        sampler, supervisor = RssSampler(lambda: worker.pid), Supervisor(worker)
        sampler.start()
        supervisor.start()
        pending, restarts = list(faults), []
        beside = TitlesBeside(s, args.titles, args.title_shots, titles_at) if args.titles else None

        def inject(seg: LiveSegment) -> None:
            """Right after the first segment that starts at or past a fault's minute is published (publish_live
            first cuts the whole film into segments, minutes for an hour, then starts the event's clock); the
            titles of --titles likewise."""
            if beside is not None and beside.at is None and seg.start_s >= beside.minute * 60:
                beside.start()
            while pending and seg.start_s >= pending[0].minute * 60:
                f = pending.pop(0)
                f.at, f.event_minute = time.time(), seg.start_s / 60
                if f.what == "worker":
                    worker.kill9_and_restart()
                    f.back = time.time()
                else:  # Triton and the broker take seconds to start: started beside the event's clock
                    kill_service(s, f.what)
                    restarts.append(threading.Thread(target=restart_service, args=(s, f), daemon=True))
                    restarts[-1].start()
                print(f"killed {f.name} with SIGKILL at minute {f.event_minute:.2f} of the event (segment "
                      f"{seg.segment_index} published)" + (f"; new worker pid {worker.pid}" if f.what == "worker"
                                                            else ""), flush=True)

        sent = publish_live(s, film, event_id=eid, segment_s=args.segment_s, realtime=True, on_segment=inject)
        want = {eid: len(shots), **(beside.join() if beside is not None else {})}
        everything = wait_finals(tail, want, timeout_s=max(3600.0, args.minutes * 60 + 900))
        got = everything.pop(eid)
        sampler.done.set()
        supervisor.done.set()
        supervisor.join()
        for r in restarts:
            r.join()
        hwm = memory_mib(worker.pid).get("VmHWM", float("nan"))
        killed = any(f.what == "worker" for f in faults) or bool(supervisor.exits)
        if killed:
            before = {}  # the restarted worker's metrics start at zero: its shots only
        after = stage_buckets(s.worker_web_port)  # less the warm-up event's shots
        held = {smp.labels["result"]: smp.value for fam in worker_metrics(s.worker_web_port)
                if fam.name == "mediafm_live_decoded_segments" for smp in fam.samples if smp.name.endswith("_total")}
        stages = {k: {le: n - before.get(k, {}).get(le, 0.0) for le, n in v.items()} for k, v in after.items()}
        logs = changelogs(s)
        dead = records_in_log(s, Topics.from_settings(s).deadletter)

    print("where a live shot's time goes: seconds from the segment's publication to each stage's output "
          "(the worker's mediafm_stage_latency_seconds, p50 / p99 within histogram buckets"
          + ("; the last restarted worker's shots only)" if killed else ")"))
    for stage in ("segment", "encode", "fuse"):
        cum = stages.get(stage, {})
        print(f"  {stage:8s} p50 {quantile(cum, 0.5):6.2f}  p99 {quantile(cum, 0.99):6.2f}  "
              f"({max(cum.values(), default=0):.0f} shots)")
    print(f"dead letters in the pipeline's topic: {dead}")
    for f in faults:
        after_fault(got, f, sent, args.segment_s)
    if faults:
        every_shot(got, len(shots))
    if beside is not None:
        beside.report(everything, got)
    rss = sampler.samples or [float("nan")]
    arenas = args.malloc_arena_max or "unset: 2 arenas, set by the worker"
    print(f"worker memory over the event (MALLOC_ARENA_MAX {arenas}): VmRSS median {statistics.median(rss):.0f} MiB, "
          f"largest {max(rss):.0f} MiB ({len(rss)} samples every 3 s); peak VmHWM {hwm:.0f} MiB"
          + (" (the last restarted worker's)" if killed else ""))
    print(f"segments the encode stage found decoded in memory: {held.get('hit', 0):.0f}, decoded again: "
          f"{held.get('miss', 0):.0f} (live_decoded_mb, mediafm/media/segment_cache.py)")
    block = 1 if args.minutes <= 20 else 10  # minutes of event a row of the table covers
    blocks = int(np.ceil(args.minutes / block))
    in_block = [[m for m in got if int(m.start_s // (60 * block)) == b] for b in range(blocks)]  # by start time
    t0, _ = event_clock(sent, args.segment_s)  # the worker's memory in each block, by when it was read
    print(f"{'minute':>7s} {LATENCY_HEADER} {'VmRSS p50':>9s} {'largest':>7s}  (MiB)")
    for b in range(blocks):
        label = f"{b * block}" if block == 1 else f"{b * block}-{min((b + 1) * block, args.minutes):g}"
        print(f"{label:>7s} {latency_cells(in_block[b])} {sampler.cells(t0, b * block * 60, (b + 1) * block * 60)}")
    print(f"{'all':>7s} {latency_cells(got)} {sampler.cells(t0, -np.inf, np.inf)}")
    print("table changelogs once the event ended: offsets written, records still in the log (compacted away)")
    for name, written, held in logs:
        gone = f"{1 - held / written:.0%} compacted away" if written else "nothing written"
        print(f"  {name}: {written:,} written, {held:,} in the log ({gone})")
    # A final waits for its right context to be filmed: the event time from the end of shot i to the end of
    # shot i + R (the event's last shot at most). What is left is the pipeline's own delay.
    ends = {m.shot_index: m.end_s for m in got}
    n = max(ends) + 1

    def beyond_right_context(ms: list[ContextualEmbedding]) -> np.ndarray:  # the finals' own delay
        return np.array([m.produced_at - m.published_at - (ends[min(m.shot_index + args.right_context, n - 1)]
                                                           - ends[m.shot_index]) for m in ms if m.final])

    extra = beyond_right_context(got)
    print(f"final less its right context's event time: p50 {p(extra, 50):.2f} s, p99 {p(extra, 99):.2f} s "
          f"(right context of {args.right_context} shots: {np.median([ends[min(i + args.right_context, n - 1)] - ends[i] for i in range(n)]):.1f} s median)")
    pl = latencies(got, final=False)

    def growth(final: bool) -> float:  # the last block's p99 over the first's
        if final:  # less the right context's event time: the event's last shots wait for less of it (their
            # finals come with the last shot), so their raw latency would hide any growth
            return p(beyond_right_context(in_block[-1]), 99) / p(beyond_right_context(in_block[0]), 99)
        return p(latencies(in_block[-1], final), 99) / p(latencies(in_block[0], final), 99)

    print(f"targets: provisional p99 {p(pl, 99):.2f} s (<= 2); final p99 less its right context {p(extra, 99):.2f} s "
          f"(<= provisional p99 + 2 = {p(pl, 99) + 2:.2f}); last {block} min p99 / first {block} min p99: provisional "
          f"x{growth(False):.2f}, final less its right context x{growth(True):.2f} "
          f"(<= 1.2; about {12 * block} shots a block, so a one-minute block's p99 is its slowest shot)")


if __name__ == "__main__":
    main()
