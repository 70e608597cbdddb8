"""`mediafm demo`: the main job on the embedded default, end to end, narrated.

Starts the stack, starts a worker, publishes one generated title (synthetic
modality embeddings, see mediafm/synth.py), waits until every shot comes out
of the pipeline and reports what it saw.
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
from mediafm.schema import EncodedShot, FusedShot, bytes_to_vec, decode, vec_to_bytes
from mediafm.synth import World, generate_title
from mediafm.topics import Topics


def run_demo(settings: Settings, *, shots: int, timeout_s: float) -> int:
    t0 = time.monotonic()
    print("== 1/4 stack")
    stack.up(settings)
    names = Topics.from_settings(settings)

    print("== 2/4 worker")
    log = settings.state_dir / "demo-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "mediafm.cli", "worker", "--loglevel", "warning"],
                                  stdout=out, stderr=subprocess.STDOUT)
    print(f"worker pid {worker.pid}, log {log}")
    try:
        fused_tail = Tail(settings, names.fused)
        title = generate_title(World(PRODUCTION, seed=0), f"demo-{int(time.time())}", shots,
                               np.random.default_rng(int(time.time())))
        print(f"== 3/4 publish: title {title.title_id!r}, {shots} shots, "
              f"{int((~title.present[:, 2]).sum())} without timed text -> {names.encoded}")
        prod = producer(settings)
        for i in range(shots):
            msg = EncodedShot(
                title_id=title.title_id, shot_index=i, start_s=float(title.start_s[i]), end_s=float(title.end_s[i]),
                profile=PRODUCTION.name, video=vec_to_bytes(title.video[i]), audio=vec_to_bytes(title.audio[i]),
                text=vec_to_bytes(title.text[i]) if title.present[i, 2] else None, n_shots=shots,
                title_embedding=vec_to_bytes(title.title_embedding))
            prod.send(names.encoded, key=title.title_id.encode(), value=msg.to_bytes())
        prod.flush()
        prod.close()
        published = time.monotonic()

        print(f"== 4/4 wait for {names.fused} (up to {timeout_s:.0f}s)")
        got: dict[int, np.ndarray] = {}
        for rec in fused_tail.poll(timeout_s=timeout_s, stop=lambda: worker.poll() is not None):
            m = decode(rec.value, expect=FusedShot)
            if m.title_id == title.title_id:
                got[m.shot_index] = bytes_to_vec(m.fused, PRODUCTION.fused_dim)
            if len(got) == shots:
                break
        fused_tail.close()
        if worker.poll() is not None:
            print(f"worker exited with code {worker.returncode}; last lines of {log}:")
            print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        elapsed = time.monotonic() - published
        if len(got) < shots:
            print(f"FAILED: {len(got)}/{shots} fused shots arrived in {timeout_s:.0f}s; see {log}")
            return 1
        ours = np.stack([got[i] for i in range(shots)])
        ref = fuse(title.video, title.audio, title.text, title.present)
        norms = np.linalg.norm(ours, axis=1)
        sim = ours @ ours.T
        same = title.scene[:, None] == title.scene[None, :]
        off = ~np.eye(shots, dtype=bool)
        print(f"fused {shots}/{shots} shots in {elapsed:.2f}s after publishing "
              f"({shots / elapsed:.0f} shots/s incl. worker start-up)")
        print(f"  vector dim {ours.shape[1]}, norms {norms.min():.4f}..{norms.max():.4f}, "
              f"max |pipeline - in-process fuse| = {np.abs(ours - ref).max():.2e}")
        print(f"  mean cosine within a scene {sim[same & off].mean():.3f} vs across scenes {sim[~same].mean():.3f}")
        print(f"done in {time.monotonic() - t0:.1f}s. The stack keeps running: `mediafm stack status`, "
              "`mediafm stack down`.")
        return 0
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
