"""Encoder throughput on a real Triton: dynamic batching vs batch size 1 (shots/s).

Starts a private Triton (free loopback ports, temp state, a temp copy of the encoders'
configs) serving the offline encoders, then for each encoder sends N single-shot
requests (a) one after another (batch 1) and (b) all at once from concurrent clients,
which Triton's dynamic batcher groups into batches. Both modes run in every round,
alternating, against the same server; medians over the rounds; the ratio is (b)/(a).

Beside each mode, where the time went, from Triton's own statistics (/v2/models/<m>/stats,
medians of the rounds): wall time per shot; time per shot the model spent in execute()
(tensors in, encoder, tensors out); how much of the wall time the model was not computing
(HTTP, this client, the queue delay); the mean wait in Triton's queue; the CPU the model's
process used (its CPU seconds / wall seconds: 2.0 = both cores of a 2-core machine); the batch
sizes formed.

    .venv/bin/python bench/encoders.py [--shots 32] [--rounds 3] [--models video_efficientnet,...]
        [--instances N] [--threads N] [--passes N|auto] [--per-pass N] [--delay-us N] [--transport http|shm]

--instances / --threads / --passes / --per-pass / --delay-us override the configs' instance count,
torch threads per pass, parallel passes per instance, items per forward pass (frames, aiSFX
blocks, wav2vec2 shots, sentences; 256 = one pass per batch, as before 2026-11-30) and max queue
delay (defaults: what model_repository/ and mediafm/media/encoders.py say). --transport shm sends the inputs through system shared memory
registered with Triton (no tensor bytes in the HTTP body; text always goes by HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mediafm.config import Settings, private_ports  # noqa: E402
from mediafm.stack import triton  # noqa: E402
from mediafm.stack.process import cpu_seconds, interrupt_on_sigterm  # noqa: E402
from mediafm.triton_client import TritonClient  # noqa: E402

MODELS = ("video_efficientnet", "audio_aisfx", "text_minilm")
REPO = Path(__file__).resolve().parents[1] / "model_repository"


def inputs(model: str, rng) -> dict[str, np.ndarray]:
    if model.startswith("video"):
        return {"FRAMES": rng.integers(0, 255, (1, 8, 224, 224, 3), dtype=np.uint8)}
    if model == "audio_aisfx":
        return {"AUDIO": rng.standard_normal((1, 44100 * 5)).astype(np.float32) * 0.1,
                "LENGTH": np.array([[44100 * 5]], np.int64)}
    if model.startswith("audio"):
        return {"AUDIO": rng.standard_normal((1, 16000 * 5)).astype(np.float32) * 0.1,
                "LENGTH": np.array([[16000 * 5]], np.int64)}
    return {"TEXT": np.array([b"Where is the train station? It leaves at noon."], dtype=object).reshape(1, 1)}


def _set_param(text: str, key: str, value) -> str:
    text = re.sub(rf'parameters \{{ key: "{key}".*\n', "", text)
    return text + f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


def model_repository(dst: Path, models, *, instances: int | None = None, threads: int | None = None,
                     passes: str | None = None, per_pass: int | None = None, delay_us: int | None = None) -> Path:
    """A copy of the encoders' configs and shells, with the overrides applied."""
    for m in models:
        shutil.copytree(REPO / m, dst / m, ignore=shutil.ignore_patterns("__pycache__"))
        cfg = dst / m / "config.pbtxt"
        text = cfg.read_text()
        if instances is not None:
            text = re.sub(r"count: \d+", f"count: {instances}", text)
        if delay_us is not None:
            text = re.sub(r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {delay_us}", text)
        if threads is not None:
            text = _set_param(text, "torch_threads", threads)
        if passes is not None:
            text = _set_param(text, "parallel_passes", passes)
        if per_pass is not None:
            text = _set_param(text, "per_pass", per_pass)
        cfg.write_text(text)
    return dst


def stats(settings: Settings, model: str) -> dict:
    """Triton's cumulative counters for `model`: requests, queue ns, and per batch size its executions and ns."""
    with urllib.request.urlopen(f"http://{settings.triton_http_url}/v2/models/{model}/stats", timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]
    inf = s["inference_stats"]
    return {"requests": inf["success"]["count"], "queue": inf["queue"]["ns"] / 1e9,
            "batches": {b["batch_size"]: (b["compute_infer"]["count"],
                                          sum(b[k]["ns"] for k in ("compute_input", "compute_infer",
                                                                   "compute_output")) / 1e9)
                        for b in s.get("batch_stats", [])}}


def config_param(config: str, key: str, default: str) -> str:
    """A `parameters { key: ... value: { string_value: ... } }` of a config.pbtxt's text, or `default`."""
    m = re.search(rf'"{key}" value: {{ string_value: "(\w+)"', config)
    return m.group(1) if m else default


def stub_cpu_s(settings: Settings, model: str) -> float:
    """CPU seconds (user + system, all threads) of `model`'s python-backend stub processes so far."""
    total, marker = 0.0, f"{settings.model_repository / model}/"
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if marker not in (d / "cmdline").read_bytes().decode(errors="replace"):
                continue
        except OSError:
            continue
        total += cpu_seconds(int(d.name))
    return total


async def settled(settings: Settings, model: str, before: dict, n: int, timeout_s: float = 5.0) -> dict:
    """The stats once all `n` requests since `before` are counted (Triton updates them after answering)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = stats(settings, model)
        done = sum(b * (c - before["batches"].get(b, (0, 0.0))[0]) for b, (c, _) in now["batches"].items())
        if (now["requests"] - before["requests"] >= n and done >= n) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.05)


class ShmInputs:
    """One request's inputs in a system shared-memory region registered with Triton."""

    def __init__(self, client, name: str, tensors: dict[str, np.ndarray], control: dict[str, str]) -> None:
        import tritonclient.utils.shared_memory as shm

        # registering shared memory is one of the APIs `stack up` restricts to its control key (stack/triton.py)
        self.shm, self.client, self.name, self.control = shm, client, name, control
        self.tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        self.size = sum(v.nbytes for v in self.tensors.values())
        self.handle = shm.create_shared_memory_region(name, f"/{name}", self.size)
        self.offsets, off = {}, 0
        for k, v in self.tensors.items():
            shm.set_shared_memory_region(self.handle, [v], offset=off)
            self.offsets[k] = off
            off += v.nbytes
        client.register_system_shared_memory(name, f"/{name}", self.size, headers=control)

    def infer_inputs(self, mod):
        from mediafm.triton_client import _DTYPES

        out = []
        for k, v in self.tensors.items():
            i = mod.InferInput(k, list(v.shape), _DTYPES[v.dtype])
            i.set_shared_memory(self.name, v.nbytes, offset=self.offsets[k])
            out.append(i)
        return out

    def close(self) -> None:
        self.client.unregister_system_shared_memory(self.name, headers=self.control)
        self.shm.destroy_shared_memory_region(self.handle)


async def run(call, reqs: list, concurrent: bool) -> float:
    t = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(call(r) for r in reqs))
    else:
        for r in reqs:
            await call(r)
    return time.perf_counter() - t


def breakdown(before: dict, after: dict, wall: float) -> dict:
    """Per shot: wall time, time the model spent in execute() (compute), the mean wait in Triton's queue,
    the share of the wall time the model was not computing (transport, client, queue delay), batch sizes."""
    n = after["requests"] - before["requests"]
    sizes, busy = {}, 0.0
    for b, (count, ns) in after["batches"].items():
        c0, ns0 = before["batches"].get(b, (0, 0.0))
        if count > c0:
            sizes[b] = count - c0
            busy += ns - ns0
    return {"wall": wall / n, "compute": busy / n, "queue": (after["queue"] - before["queue"]) / n,
            "idle": max(0.0, 1 - busy / wall), "batches": sizes}


def fmt(d: dict) -> str:
    sizes = ", ".join(f"{c}x{b}" for b, c in sorted(d["batches"].items()))
    return (f"{1000 * d['wall']:7.1f} ms/shot wall, {1000 * d['compute']:7.1f} ms/shot in execute(), "
            f"server idle {100 * d['idle']:3.0f}%, queue wait {1000 * d['queue']:7.1f} ms/request, model process used "
            f"{d['cores']:.2f} cores; batches {sizes}")


async def bench(settings: Settings, models, shots: int, rounds: int, transport: str) -> None:
    import tritonclient.http as httpclient
    import tritonclient.http.aio as aioclient

    rng = np.random.default_rng(0)
    client = TritonClient(settings.triton_http_url, give_up_after_s=60)
    aio = aioclient.InferenceServerClient(settings.triton_http_url)
    sync = httpclient.InferenceServerClient(settings.triton_http_url)
    try:
        for model in models:
            reqs = [inputs(model, rng) for _ in range(shots)]
            regions = []
            if transport == "shm" and not model.startswith("text"):  # BYTES tensors cannot live in shm
                key = triton.control_key(settings)
                control = {triton.CONTROL_HEADER: key} if key else {}
                regions = [ShmInputs(sync, f"bench_{model}_{i}", r, control) for i, r in enumerate(reqs)]
                reqs = regions

                async def call(r, model=model):
                    res = await aio.infer(model, r.infer_inputs(aioclient),
                                          outputs=[aioclient.InferRequestedOutput("EMBEDDING")])
                    return res.as_numpy("EMBEDDING")
            else:
                async def call(r, model=model):
                    return await client.infer(model, r, ["EMBEDDING"])
            try:
                await run(call, reqs[:2], False)  # warm up
                await run(call, reqs[:4], True)
                one, dyn, b_one, b_dyn = [], [], [], []
                for _ in range(rounds):
                    for concurrent, walls, parts in ((False, one, b_one), (True, dyn, b_dyn)):
                        s0, c0 = stats(settings, model), stub_cpu_s(settings, model)
                        wall = await run(call, reqs, concurrent)
                        walls.append(wall)
                        parts.append(breakdown(s0, await settled(settings, model, s0, len(reqs)), wall))
                        parts[-1]["cores"] = (stub_cpu_s(settings, model) - c0) / wall
            finally:
                for r in regions:
                    r.close()
            a, b = shots / statistics.median(one), shots / statistics.median(dyn)
            med = [{**{k: statistics.median(p[k] for p in parts) for k in ("wall", "compute", "queue", "idle", "cores")},
                    "batches": parts[len(parts) // 2]["batches"]} for parts in (b_one, b_dyn)]
            print(f"  {model:20s} batch 1: {a:7.2f} shots/s   dynamic batching: {b:7.2f} shots/s   x{b / a:.2f}   "
                  f"(rounds: batch 1 {' '.join(f'{shots / w:.2f}' for w in one)}; "
                  f"dynamic {' '.join(f'{shots / w:.2f}' for w in dyn)})")
            print(f"  {'':20s}   batch 1: {fmt(med[0])}")
            print(f"  {'':20s}   dynamic: {fmt(med[1])}", flush=True)
    finally:
        await client.close()
        await aio.close()
        sync.close()


def main() -> None:
    interrupt_on_sigterm()  # a kill unwinds as Ctrl-C does: the finally blocks stop what this bench started
    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--instances", type=int, default=None, help="instances per model (default: the config's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per instance (default: the config's)")
    ap.add_argument("--passes", default=None, help="parallel forward passes per instance, N or auto")
    ap.add_argument("--per-pass", type=int, default=None, help="items per forward pass (default: the encoder's)")
    ap.add_argument("--delay-us", type=int, default=None, help="max_queue_delay_microseconds (default: the config's)")
    ap.add_argument("--transport", choices=("http", "shm"), default="http")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory() as d:
        repo = model_repository(Path(d) / "model_repository", models, instances=args.instances,
                                threads=args.threads, passes=args.passes, per_pass=args.per_pass,
                                delay_us=args.delay_us)
        s = Settings(state_dir=Path(d) / "state", model_repository=repo, **private_ports(), triton_models=tuple(models))
        triton.up(s, tied=True)  # stopped below; by the kernel if this script is killed
        try:
            cfgs = {m: (repo / m / "config.pbtxt").read_text() for m in models}
            desc = {m: (re.search(r"count: (\d+)", c).group(1), config_param(c, "parallel_passes", "1"),
                        config_param(c, "per_pass", "default"), config_param(c, "torch_threads", "env"),
                        re.search(r"max_queue_delay_microseconds: (\d+)", c).group(1))
                    for m, c in cfgs.items()}
            print(f"{args.shots} single-shot requests per run (video: 8 frames 224x224 uint8; audio: 5 s; text: one "
                  f"sentence), transport {args.transport}, median of {args.rounds} alternating rounds, "
                  f"{len(os.sched_getaffinity(0))} cores; "
                  + "; ".join(f"{m}: {i} instance(s) x {p} parallel passes of {k} items x {t} torch thread(s), "
                              f"queue delay {q} us" for m, (i, p, k, t, q) in desc.items()))
            print("load average before: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), flush=True)
            asyncio.run(bench(s, models, args.shots, args.rounds, args.transport))
            print("load average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
        finally:
            triton.down(s)


if __name__ == "__main__":
    main()
