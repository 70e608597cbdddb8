"""Export a trained run's encoder as the next version of its Triton model (`mediafm`; `mediafm_offline`
for runs on the offline encoder profile's dims).

    mediafm export --run runs/small [--checkpoint PATH] [--no-load]

1. load the run's latest checkpoint and keep the encoder (the MSM head stays behind);
2. reject it if any weight or a test forward pass is not finite;
3. write weights + lineage into a staging directory next to the versions, fsync
   it, then rename it to `<N+1>/` in one step: a half-written version is never
   visible, not even after a power cut;
4. ask the running Triton to load the model (explicit model control). Triton
   brings the new version up while the old keeps answering; if the new one
   fails to load (refused, no answer in time, or never ready), its directory is
   moved aside, config.pbtxt restored, and the old keeps serving.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import torch

from mediafm.config import Settings
from mediafm.errors import ModelError, StackError
from mediafm.profiles import mediafm_model_for
from mediafm.served_mediafm import LINEAGE, MAX_SHOTS_PARAM, MODEL_PY, WEIGHTS, check_encoder
from mediafm.stack import triton
from trainer.train import fsync_dir, latest_checkpoint, load_checkpoint


def record_max_shots(config: Path, max_shots: int) -> None:
    """Set the served model config's max_shots parameter (replaced in place, written atomically).

    Triton reads it with the config when it loads the new version; the python backend warns of a version whose
    weights disagree (mediafm/served_mediafm.py), and the workers cut their windows to what it answers.
    """
    text = config.read_text()
    line = f'parameters {{ key: "{MAX_SHOTS_PARAM}" value: {{ string_value: "{max_shots}" }} }}'
    pattern = re.compile(r'^parameters \{ key: "' + MAX_SHOTS_PARAM + r'" .*$', re.M)
    text = pattern.sub(line, text) if pattern.search(text) else text.rstrip("\n") + "\n" + line + "\n"
    tmp = config.with_name(f".{config.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, config)


def versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def export(run: str | Path, *, settings: Settings, checkpoint: str | Path | None = None, load: bool = True,
           timeout_s: float = 300.0, model: str | None = None) -> tuple[int, Path, bool]:
    """Returns (version, directory, loaded): loaded is False when no Triton was running
    (the version is then served from the next `mediafm stack up`)."""
    run, target = Path(run), model  # `model`: the Triton model's name (the checkpoint's model is loaded below)
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run)
    if checkpoint and not ckpt.is_file():
        raise ModelError(f"--checkpoint {ckpt}: no such checkpoint file (the run's are in {run / 'checkpoints'})")
    if ckpt is None or not ckpt.exists():
        raise ModelError(f"no checkpoint in {run / 'checkpoints'}; train first (`mediafm train --out {run}`)")
    model, state = load_checkpoint(ckpt)
    encoder, cfg = model.encoder, model.cfg
    check_encoder(encoder)

    name = target or mediafm_model_for(cfg.fused_dim, cfg.title_dim)  # one Triton model per encoder profile
    if name is None:
        from mediafm.profiles import PROFILES

        known = ", ".join(f"{p.name} {p.layout.fused_dim}/{p.layout.title}" for p in PROFILES.values())
        raise ModelError(f"{run} takes fused_dim={cfg.fused_dim}, title_dim={cfg.title_dim}, which no encoder profile "
                         f"feeds ({known}): the pipeline could not serve it. Train on a dataset of a profile, or "
                         "name the Triton model to export it to (--model NAME, a folder of the model repository)")
    model_dir = settings.model_repository / name
    if not (model_dir / "config.pbtxt").exists():
        raise ModelError(f"{model_dir / 'config.pbtxt'} is missing; is MEDIAFM_MODEL_REPOSITORY right?")
    if cfg.max_shots <= settings.live_right_context:
        raise ModelError(f"{run} was trained on windows of {cfg.max_shots} shots; live events need more than "
                         f"live_right_context={settings.live_right_context} shots in a window. Train with a "
                         "larger --max_shots, or lower live_right_context")
    previous = versions(model_dir)
    version = (previous[-1] if previous else 0) + 1
    staging = model_dir / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    torch.save({"config": cfg.to_dict(), "encoder": encoder.state_dict()}, staging / WEIGHTS)
    (staging / "model.py").write_text(MODEL_PY)
    (staging / LINEAGE).write_text(json.dumps({
        "version": version, "run": str(run.resolve()), "checkpoint": ckpt.name, "step": state["step"],
        "dataset": state.get("dataset"), "metrics": state.get("metrics", {}), "model_config": cfg.to_dict(),
        "train_config": state.get("train_config"), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2))
    final = model_dir / str(version)
    _sync(staging)  # on disk before it takes its name: a power cut never leaves a version of empty files
    try:
        os.rename(staging, final)  # atomic on one filesystem; fails if <version> appeared meanwhile
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelError(f"{final} appeared while this export wrote it ({e.strerror}): another export took version "
                         f"{version}; run this one again") from None
    fsync_dir(model_dir)
    config_before = (model_dir / "config.pbtxt").read_text()
    record_max_shots(model_dir / "config.pbtxt", cfg.max_shots)  # the workers' window plan follows it

    def roll_back(why: str) -> ModelError:
        """Move the new version aside and serve the old set again (config.pbtxt as it was)."""
        rejected = model_dir / f".rejected-{version}-{int(time.time())}"
        os.rename(final, rejected)
        tmp = model_dir / f".config.pbtxt.{os.getpid()}"
        tmp.write_text(config_before)  # the old version's max_shots again, replaced whole
        os.replace(tmp, model_dir / "config.pbtxt")
        if previous:  # make Triton settle on the old version set again
            try:
                triton.load_model(settings, name)
            except (StackError, OSError):
                pass
        return ModelError(f"{why}; moved it to {rejected}, version {previous[-1] if previous else 'none'} keeps "
                          "serving")

    loaded = load and triton.live(settings)
    if loaded:
        try:
            triton.load_model(settings, name)
        except StackError as e:
            raise roll_back(f"Triton refused version {version} ({e})") from None
        except OSError as e:  # no answer in time, or Triton gone (URLError, TimeoutError): before 2026-12-07 the
            # new version and its max_shots were left in place, half served
            raise roll_back(f"Triton did not answer the load of version {version} ({type(e).__name__}: {e})") from None
        deadline = time.monotonic() + timeout_s
        while not triton.model_ready(settings, name, str(version)):
            if time.monotonic() > deadline:
                raise roll_back(f"version {version} was loaded but is not ready after {timeout_s:.0f}s")
            time.sleep(0.5)
    return version, final, loaded


def _sync(folder: Path) -> None:
    """fsync every file of `folder`, then the folder itself."""
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(folder)
