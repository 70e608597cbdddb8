"""`mediafm demo`: the main job on the embedded default, end to end, narrated.

1. start the stack (Kafka + Triton, the offline encoders) if it is not running;
2. if Triton serves no MediaFM for the offline profile yet: generate a
   synthetic corpus in its dims, train a tiny MediaFM and export it (the
   trainer -> Triton refresh path; it shows the path, not quality);
3. start a worker; make two films with ffmpeg (hard cuts, espeak-ng speech,
   tones, a subtitle file) and publish one as a title and the other as a live
   event cut into 1-second segments;
4. wait until every shot of both has its final contextual embedding (the live
   one a provisional first) and report what came out.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import numpy as np

from mediafm import stack
from mediafm.bus import Tail
from mediafm.config import Settings
from mediafm.errors import ConfigError
from mediafm.profiles import get_layout, get_profile
from mediafm.schema import ContextualEmbedding, decode
from mediafm.stack import triton
from mediafm.synth import write_corpus
from mediafm.topics import Topics


def ensure_model(settings: Settings) -> str:
    """The served MediaFM version; trains and exports a tiny one first if there is none."""
    name = get_profile(settings.encoder_profile).mediafm_model
    served = triton.ready_versions(settings).get(name)
    if served:
        return f"serving {name} version {max(served, key=int)}"
    from trainer.export import export

    data = settings.state_dir / "demo" / f"synth-corpus-{settings.encoder_profile}"
    run = settings.state_dir / "demo" / f"run-tiny-{settings.encoder_profile}"
    print(f"   no MediaFM served yet: synthetic corpus -> {data}")
    write_corpus(data, n_titles=120, layout=get_layout(settings.encoder_profile), seed=0, shots=(40, 200),
                 progress=True)
    print(f"   training a tiny MediaFM (CPU, about two minutes) -> {run}")
    result = train_demo_model(settings, data, run)
    version, _, _ = export(run, settings=settings)
    val, base = result.get("val_loss", float("nan")), {k: result.get(k, float("nan")) for k in ("title_mean", "neighbours")}
    verdict = ("not validated: the corpus has no validation titles" if math.isnan(val) else "beats both"
               if val < min(base.values()) else
               "does not beat both: a demo-sized model, not a trained one (README, Evaluation)")
    return (f"exported and serving {name} version {version} (masked-shot val loss {val:.3f}; context-free "
            f"predictors: title mean {base['title_mean']:.3f}, neighbours {base['neighbours']:.3f}; {verdict})")


def train_demo_model(settings: Settings, data, run, *, until_step: int | None = None) -> dict:
    """The demo's tiny MediaFM (300 steps), trained into `run` or resumed there; train()'s result."""
    from trainer.train import TrainConfig, train

    tc = TrainConfig(config="tiny", max_steps=300, batch_size=8, eval_every=300, ckpt_every=300, lr_adamw=3e-3,
                     warmup_steps=20)
    try:
        return train(data, run, tc, {"max_shots": settings.window_shots}, until_step=until_step)
    except ConfigError as e:  # train's advice (--out) is not the demo's to take: name the folder to remove
        raise ConfigError(f"{e}. It is the demo's own tiny run, made under other settings (window_shots, or "
                          f"a version of mediafm before this one): remove it (`rm -r {run}`) and run again") from None


def _films(d) -> tuple:
    from mediafm.media.synthfilm import Cue, make_film, write_srt

    d.mkdir(parents=True, exist_ok=True)
    title = make_film(d / "station.mp4", shots=[48, 36, 60, 40, 52, 44], fps=24, size=(320, 180),
                      audio=["speech:where is the station", "tone:440", "noise", "speech:the train leaves at noon",
                             "tone:330", "speech:goodbye"])
    srt = write_srt(d / "station.srt", [Cue(0.3, 1.8, "Where is the station?"), Cue(6.2, 7.5, "The train leaves at noon."),
                                        Cue(11.5, 12.3, "Goodbye.")])
    live = make_film(d / "match.mp4", shots=[40, 30, 50, 36, 44, 30, 40], fps=24, size=(320, 180), first_source=3,
                     audio=["noise", "tone:660", "noise", "speech:what a goal", "noise", "tone:880", "noise"])
    return title, srt, live


def run_demo(settings: Settings, *, timeout_s: float) -> int:
    from mediafm.publish import publish_live, publish_title

    t0 = time.monotonic()
    print("== 1/5 stack")
    stack.up(settings)
    names = Topics.from_settings(settings)

    print("== 2/5 model")
    print("   " + ensure_model(settings))

    print("== 3/5 worker")
    log = settings.state_dir / "demo-worker.log"
    with open(log, "ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "mediafm.cli", "worker", "--loglevel", "warning"],
                                  stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, **settings.to_env()})  # these settings, --config included
    print(f"   worker pid {worker.pid}, log {log}")
    try:
        film, srt, match = _films(settings.state_dir / "demo" / "films")
        tail = Tail(settings, names.embeddings)
        stamp = int(time.time())
        tid, eid = f"station-{stamp}", f"match-{stamp}"
        print(f"== 4/5 publish title {tid!r} ({len(film.shot_frames)} shots, {film.n_frames / film.fps:.1f}s, "
              f"speech + subtitles) and live event {eid!r} ({len(match.shot_frames)} shots, 1 s segments)")
        publish_title(settings, film.path, title_id=tid, subtitles=srt,
                      meta={"title": "Station", "synopsis": "Two strangers wait for the noon train.", "tags": ["drama"]})
        segs = publish_live(settings, match.path, event_id=eid, segment_s=1.0, realtime=False)
        print(f"   {len(segs)} live segments published to {names.live_segments}")

        want = {tid: len(film.shot_frames), eid: len(match.shot_frames)}
        print(f"== 5/5 wait for {names.embeddings} (up to {timeout_s:.0f}s)")
        got: dict[str, list[ContextualEmbedding]] = {k: [] for k in want}
        dead = lambda: worker.poll() is not None  # noqa: E731

        def done() -> bool:
            return dead() or all(len({m.shot_index for m in got[k] if m.final}) >= n for k, n in want.items())

        for rec in tail.poll(timeout_s=timeout_s, stop=done):
            m = decode(rec.value, expect=ContextualEmbedding)
            if m.title_id in got:
                got[m.title_id].append(m)
                print(f"   {m.kind:5s} {m.title_id} shot {m.shot_index} [{m.start_s:5.2f}, {m.end_s:5.2f}) "
                      f"{'final' if m.final else 'provisional'} ({m.produced_at - m.published_at:.1f}s after publish)")
        tail.close()
        if dead():
            print(f"worker exited with code {worker.returncode}; last lines of {log}:")
            print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
            return 1
        for k, n in want.items():
            finals = {m.shot_index for m in got[k] if m.final}
            if len(finals) < n:
                print(f"FAILED: {len(finals)}/{n} final embeddings of {k} arrived; see {log} and "
                      f"`mediafm follow --from-beginning`")
                return 1
        for k in want:
            msgs = got[k]
            finals = [m for m in msgs if m.final]
            C = np.stack([m.vector() for m in sorted(finals, key=lambda m: m.shot_index)])
            Cn = C / np.linalg.norm(C, axis=1, keepdims=True)
            print(f"{k}: {len(finals)} shots, final embeddings dim {C.shape[1]}, "
                  f"{sum(not m.final for m in msgs)} provisional, model {sorted({m.model_version for m in msgs})}, "
                  f"mean cosine between shots {float((Cn @ Cn.T)[~np.eye(len(C), dtype=bool)].mean()):.3f}")
        print(f"done in {time.monotonic() - t0:.0f}s. The stack keeps running: `mediafm follow --from-beginning`, "
              "`mediafm sink --out DIR`, `mediafm stack down`.")
        return 0
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
