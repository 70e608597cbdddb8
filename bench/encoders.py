"""Encoder throughput on a real Triton: dynamic batching vs batch size 1 (shots/s).

Starts a private Triton (free loopback ports, temp state) serving the offline encoders,
then for each encoder sends N single-shot requests (a) one after another (batch 1) and
(b) all at once from concurrent clients, which Triton's dynamic batcher groups into
batches. Medians over alternating rounds; the ratio is (b)/(a).

    .venv/bin/python bench/encoders.py [--shots 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mediafm.config import Settings  # noqa: E402
from mediafm.inference import Triton  # noqa: E402
from mediafm.stack import triton  # noqa: E402


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inputs(model: str, rng) -> dict[str, np.ndarray]:
    if model == "video_efficientnet":
        return {"FRAMES": rng.integers(0, 255, (1, 8, 224, 224, 3), dtype=np.uint8)}
    if model == "audio_aisfx":
        return {"AUDIO": rng.standard_normal((1, 44100 * 5)).astype(np.float32) * 0.1,
                "LENGTH": np.array([[44100 * 5]], np.int64)}
    return {"TEXT": np.array([b"Where is the train station? It leaves at noon."], dtype=object).reshape(1, 1)}


async def run(client: Triton, model: str, reqs: list, concurrent: bool) -> float:
    t = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(client.infer(model, r, ["EMBEDDING"]) for r in reqs))
    else:
        for r in reqs:
            await client.infer(model, r, ["EMBEDDING"])
    return time.perf_counter() - t


async def bench(settings: Settings, shots: int, rounds: int) -> None:
    rng = np.random.default_rng(0)
    client = Triton(settings.triton_http_url, give_up_after_s=60)
    try:
        for model in ("video_efficientnet", "audio_aisfx", "text_minilm"):
            reqs = [inputs(model, rng) for _ in range(shots)]
            await run(client, model, reqs[:2], False)  # warm up
            one, dyn = [], []
            for _ in range(rounds):
                one.append(await run(client, model, reqs, False))
                dyn.append(await run(client, model, reqs, True))
            a, b = shots / statistics.median(one), shots / statistics.median(dyn)
            print(f"  {model:20s} batch 1: {a:7.1f} shots/s   dynamic batching: {b:7.1f} shots/s   x{b / a:.2f}")
    finally:
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        s = Settings(state_dir=Path(d), triton_http_port=port(), triton_grpc_port=port(), triton_metrics_port=port(),
                     kafka_port=port(), kafka_controller_port=port(),
                     triton_models=("video_efficientnet", "audio_aisfx", "text_minilm"))
        triton.up(s)
        try:
            print(f"{args.shots} single-shot requests per run (video: 8 frames 224x224; audio: 5 s at 44.1 kHz; "
                  f"text: one sentence), one instance per model, OMP_NUM_THREADS=1, median of {args.rounds} rounds")
            asyncio.run(bench(s, args.shots, args.rounds))
        finally:
            triton.down(s)


if __name__ == "__main__":
    main()
