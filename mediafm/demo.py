"""`mediafm demo`: the main job on the embedded default, end to end, narrated.

1. start the stack (Kafka + Triton) if it is not running;
2. if Triton serves no MediaFM yet: generate a synthetic corpus, train a tiny
   MediaFM on it and export it (the trainer -> Triton refresh path);
3. start a worker, publish one generated title (synthetic modality embeddings
   with scene structure, see mediafm/synth.py) shot by shot;
4. wait until every shot has come out fused and then contextualised, check
   the fused vectors against in-process fusion and report what it saw.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from mediafm import stack
from mediafm.bus import Tail, producer
from mediafm.config import Settings
from mediafm.fusion import PRODUCTION, fuse
from mediafm.schema import ContextualEmbedding, FusedShot, bytes_to_vec, decode
from mediafm.stack import triton
from mediafm.synth import World, encoded_shots, generate_title, write_corpus
from mediafm.topics import Topics


def _ensure_model(settings: Settings) -> str:
    """The served MediaFM version; trains and exports a tiny one first if there is none."""
    served = triton.ready_versions(settings).get("mediafm")
    if served:
        return f"serving mediafm version {served[0]}"
    from trainer.export import export
    from trainer.train import TrainConfig, train

    data = settings.state_dir / "demo" / "synth-corpus"
    run = settings.state_dir / "demo" / "run-tiny"
    print(f"   no MediaFM served yet: synthetic corpus -> {data}")
    write_corpus(data, n_titles=120, layout=PRODUCTION, seed=0, shots=(40, 200), progress=True)
    print(f"   training a tiny MediaFM (CPU, about two minutes) -> {run}")
    tc = TrainConfig(config="tiny", max_steps=300, batch_size=8, eval_every=300, ckpt_every=300, lr_adamw=3e-3,
                     warmup_steps=20)
    result = train(data, run, tc, {"max_shots": settings.window_shots})
    version, _, _ = export(run, settings=settings)
    return (f"exported and serving mediafm version {version} (val loss {result.get('val_loss', float('nan')):.3f} vs "
            f"title-mean baseline {result.get('title_mean', float('nan')):.3f})")


def run_demo(settings: Settings, *, shots: int, timeout_s: float) -> int:
    t0 = time.monotonic()
    print("== 1/5 stack")
    stack.up(settings)
    names = Topics.from_settings(settings)

    print("== 2/5 model")
    print("   " + _ensure_model(settings))

    print("== 3/5 worker")
    log = settings.state_dir / "demo-worker.log"
    with open(log, "ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "mediafm.cli", "worker", "--loglevel", "warning"],
                                  stdout=out, stderr=subprocess.STDOUT)
    print(f"   worker pid {worker.pid}, log {log}")
    try:
        fused_tail, ctx_tail = Tail(settings, names.fused), Tail(settings, names.embeddings)
        title = generate_title(World(PRODUCTION, seed=0), f"demo-{int(time.time())}", shots,
                               np.random.default_rng(int(time.time())))
        print(f"== 4/5 publish title {title.title_id!r}: {shots} shots in {int(title.scene.max()) + 1} scenes, "
              f"{int((~title.present[:, 2]).sum())} without timed text -> {names.encoded}")
        prod = producer(settings)
        for msg in encoded_shots(title):
            prod.send(names.encoded, key=title.title_id.encode(), value=msg.to_bytes())
        prod.flush()
        prod.close()
        published = time.monotonic()

        print(f"== 5/5 wait for {names.fused} and {names.embeddings} (up to {timeout_s:.0f}s)")
        fused: dict[int, np.ndarray] = {}
        ctx: dict[int, ContextualEmbedding] = {}
        dead = lambda: worker.poll() is not None  # noqa: E731
        for rec in fused_tail.poll(timeout_s=timeout_s, stop=lambda: len(fused) == shots or dead()):
            m = decode(rec.value, expect=FusedShot)
            if m.title_id == title.title_id:
                fused[m.shot_index] = bytes_to_vec(m.fused, PRODUCTION.fused_dim)
        t_fused = time.monotonic() - published
        remaining = max(1.0, timeout_s - t_fused)
        for rec in ctx_tail.poll(timeout_s=remaining, stop=lambda: len(ctx) == shots or dead()):
            m = decode(rec.value, expect=ContextualEmbedding)
            if m.title_id == title.title_id:
                ctx[m.shot_index] = m
        t_ctx = time.monotonic() - published
        fused_tail.close()
        ctx_tail.close()
        if dead():
            print(f"worker exited with code {worker.returncode}; last lines of {log}:")
            print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
            return 1
        if len(fused) < shots or len(ctx) < shots:
            print(f"FAILED: {len(fused)}/{shots} fused and {len(ctx)}/{shots} contextual embeddings arrived; see {log}")
            return 1

        F = np.stack([fused[i] for i in range(shots)])
        ref = fuse(title.video, title.audio, title.text, title.present)
        C = np.stack([bytes_to_vec(ctx[i].embedding, ctx[i].dim) for i in range(shots)])
        Cn = C / np.linalg.norm(C, axis=1, keepdims=True)
        same = title.scene[:, None] == title.scene[None, :]
        off = ~np.eye(shots, dtype=bool)

        def contrast(x: np.ndarray) -> str:
            s = x @ x.T
            return f"{s[same & off].mean():.3f} within a scene vs {s[~same].mean():.3f} across"

        windows = sorted({(m.window_start, m.window_end) for m in ctx.values()})
        print(f"fused:      {shots}/{shots} shots after {t_fused:.1f}s, dim {F.shape[1]}, "
              f"max |pipeline - in-process fusion| {np.abs(F - ref).max():.1e}")
        print(f"contextual: {shots}/{shots} shots after {t_ctx:.1f}s, dim {C.shape[1]}, mediafm version "
              f"{sorted({m.model_version for m in ctx.values()})}, windows {windows}")
        print(f"cosine, fused shots:      {contrast(F)}")
        print(f"cosine, contextual shots: {contrast(Cn)}")
        print(f"done in {time.monotonic() - t0:.0f}s. The stack keeps running: `mediafm stack status`, "
              "`mediafm stack down`.")
        return 0
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
