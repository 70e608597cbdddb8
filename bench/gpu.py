"""One prepared script for a GPU machine: encoders, MediaFM training and `mediafm embed` on the GPU.

    python bench/gpu.py                 # on a CUDA machine (the lent H200: well under 10 minutes)
    python bench/gpu.py --dry-run       # anywhere: CPU, tiny sizes; checks that every part imports and runs

Three parts, each printed as it finishes (--parts encoders,train,embed picks some):

1. encoders: a private Triton serving every encoder. Their configs say KIND_AUTO, so on a GPU
   machine Triton gives each a GPU instance and mediafm/media/served_encoders.py puts the encoder
   on that GPU (GPU-sized forward passes); shots/s at batch 1 (sequential single-shot requests) vs
   dynamic batching (concurrent ones), from bench/encoders.py. Offline encoders with their shipped
   weights; production ones (video_clip, audio_wav2vec2) on random-initialised checkpoints of the
   real architectures, full size (ViT-B/16 with a 768-d projection; wav2vec2-base) unless --dry-run
   (tiny): the speed is the architecture's, the embeddings mean nothing.
2. train: MediaFM `base`, bf16 autocast, --shots 512 per window, Muon + AdamW as trainer/train.py:
   median step time, shots/s, model FLOP/s and MFU against --peak-tflops (989: H100/H200 dense
   bf16), FLOPs as bench/train_gpu.py counts them (model_flops).
3. embed: a generated --minutes film at 1280x720 (bench/media.py; needs ffmpeg and espeak-ng)
   through `mediafm embed` (offline profile, the same Triton): shots/s, x real time, stage shares.

Needs the project installed with a CUDA build of torch (`pip install -e '.[triton]'`), numpy < 2
for Triton's python backend (see ../shared/ENVIRONMENT.md). MediaFM itself is not served on the GPU
by this script: model_repository/mediafm*/config.pbtxt still say KIND_CPU (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import torch  # noqa: E402

from mediafm.config import Settings, private_ports  # noqa: E402
from mediafm.stack import triton  # noqa: E402
from mediafm.stack.process import interrupt_on_sigterm  # noqa: E402

OFFLINE = ("video_efficientnet", "audio_aisfx", "text_minilm")
PRODUCTION = ("video_clip", "audio_wav2vec2")


def _load(name: str, path: Path):
    """A sibling bench script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def production_checkpoints(d: Path, *, tiny: bool) -> tuple[Path, Path]:
    """Random-initialised CLIP vision (ViT-B/16, 768-d projection) and wav2vec2-base, or tiny ones."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    if tiny:
        clip = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                image_size=64, patch_size=16, projection_dim=768)
        w2v = Wav2Vec2Config(hidden_size=768, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                             conv_dim=(16, 16, 16), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8),
                             num_feat_extract_layers=3, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    else:
        clip = CLIPVisionConfig(image_size=224, patch_size=16, projection_dim=768)  # ViT-B/16 tower
        w2v = Wav2Vec2Config()  # wav2vec2-base
    CLIPVisionModelWithProjection(clip).save_pretrained(d / "clip")
    Wav2Vec2Model(w2v).save_pretrained(d / "wav2vec2")
    return d / "clip", d / "wav2vec2"


def encoders_part(settings: Settings, models, shots: int, rounds: int) -> None:
    import json
    import urllib.request

    enc = _load("bench_encoders", BENCH / "encoders.py")
    for m in models:  # where Triton put each instance (KIND_AUTO resolved)
        with urllib.request.urlopen(f"http://{settings.triton_http_url}/v2/models/{m}/config", timeout=10) as r:
            groups = json.loads(r.read()).get("instance_group", [])
        print(f"[encoders] {m}: " + ", ".join(f"{g.get('count')} x {g.get('kind')} {g.get('gpus', '')}".strip()
                                             for g in groups), flush=True)
    print(f"[encoders] {shots} single-shot requests per run, median of {rounds} rounds "
          f"(video: 8 frames 224x224; audio: 5 s; text: one sentence)", flush=True)
    asyncio.run(enc.bench(settings, list(models), shots, rounds, "http"))


def train_part(*, dry_run: bool, batch: int, shots: int, steps: int, peak_tflops: float) -> None:
    from mediafm.model import CONFIGS, MaskedShotModel, MediaFMConfig, mask_positions
    from trainer.train import TrainConfig, setup_optimizers

    train_gpu = _load("bench_train_gpu", BENCH / "train_gpu.py")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = "tiny" if dry_run else "base"
    cfg = MediaFMConfig(**{**CONFIGS[name], "max_shots": shots})
    model = MaskedShotModel(cfg).to(dev)
    opts = setup_optimizers(model, TrainConfig(config=name, optimizer="muon"))
    x = torch.nn.functional.normalize(torch.randn(batch, shots, cfg.fused_dim, device=dev), dim=-1)
    title = torch.randn(batch, cfg.title_dim, device=dev)
    lengths = torch.full((batch,), shots, device=dev)
    amp = dev.type == "cuda"  # bf16 autocast on the GPU; float32 on a CPU dry run

    def step():
        mask = mask_positions(lengths, shots, cfg.mask_rate)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            _, loss = model(x, title, lengths, mask)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2 if dry_run else 5):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    flops = train_gpu.model_flops(cfg, batch, shots)
    where = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU (dry run)"
    mem = f", max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if dev.type == "cuda" else ""
    print(f"[train] {where}: {name} config, {'bf16' if amp else 'fp32'}, batch {batch} x {shots} shots, muon: "
          f"median step {med * 1000:.1f} ms, {batch * shots / med:,.0f} shots/s, {flops / med / 1e12:.2f} TFLOP/s "
          f"model, MFU {flops / med / (peak_tflops * 1e12):.1%} of {peak_tflops:.0f}{mem}", flush=True)


def embed_part(settings: Settings, tmp: Path, *, minutes: float, size: tuple[int, int], cache: Path) -> None:
    missing = [t for t in ("ffmpeg", "espeak-ng") if shutil.which(t) is None]
    if missing:
        print(f"[embed] skipped: {', '.join(missing)} not installed (apt-get install ffmpeg espeak-ng)")
        return
    media = _load("bench_media", BENCH / "media.py")
    cache.mkdir(parents=True, exist_ok=True)
    path, made = media.film(cache, minutes, size)
    how = f"made in {made:.0f} s" if made else "cached"
    print(f"[embed] {size[0]}x{size[1]} @ 25 fps, {minutes:g} min film ({how}), offline profile, "
          f"{settings.shot_detector} shots:", flush=True)
    media.run(settings, path, minutes * 60, settings.shot_detector, tmp / "embed-out")


def main() -> None:
    interrupt_on_sigterm()  # a kill unwinds as Ctrl-C does: the finally blocks stop what this bench started
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check that every part runs")
    ap.add_argument("--parts", default="encoders,train,embed")
    ap.add_argument("--shots", type=int, default=None, help="encoders: requests per run (default 64; dry run 4)")
    ap.add_argument("--rounds", type=int, default=None, help="encoders: rounds (default 3; dry run 1)")
    ap.add_argument("--batch", type=int, default=None, help="train: windows per step (default 32; dry run 2)")
    ap.add_argument("--window", type=int, default=None, help="train: shots per window (default 512; dry run 64)")
    ap.add_argument("--steps", type=int, default=None, help="train: timed steps (default 20; dry run 2)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    ap.add_argument("--minutes", type=float, default=None, help="embed: film length (default 2; dry run 0.2)")
    ap.add_argument("--size", default=None, help="embed: WxH (default 1280x720; dry run 320x180)")
    ap.add_argument("--detector", choices=("transnetv2", "content"), default="transnetv2")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mediafm" / "bench-films")
    args = ap.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU; run it with --dry-run to check it on a CPU")
    parts = set(args.parts.split(","))
    shots, rounds = args.shots or (4 if dry else 64), args.rounds or (1 if dry else 3)
    size = tuple(int(v) for v in (args.size or ("320x180" if dry else "1280x720")).split("x"))
    print(f"bench/gpu.py{' --dry-run' if dry else ''}: torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
          f"{len(os.sched_getaffinity(0))} CPU cores", flush=True)
    t_all = time.perf_counter()
    if "train" in parts:
        train_part(dry_run=dry, batch=args.batch or (2 if dry else 32), shots=args.window or (64 if dry else 512),
                   steps=args.steps or (2 if dry else 20), peak_tflops=args.peak_tflops)
    if parts & {"encoders", "embed"}:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            models = list(OFFLINE)
            extra = {}
            if "encoders" in parts:
                t0 = time.perf_counter()
                clip, w2v = production_checkpoints(tmp / "ckpt", tiny=dry)
                print(f"[encoders] production checkpoints ({'tiny' if dry else 'full size'}, random weights) "
                      f"in {time.perf_counter() - t0:.0f} s", flush=True)
                models += PRODUCTION
                extra = {"clip_dir": str(clip), "wav2vec2_dir": str(w2v)}
            s = Settings(state_dir=tmp / "state", **private_ports(),
                         triton_models=tuple(models), encoder_profile="offline", shot_detector=args.detector,
                         **extra)
            t0 = time.perf_counter()
            triton.up(s, tied=True)  # stopped below; by the kernel if this script is killed
            print(f"Triton up with {models} in {time.perf_counter() - t0:.0f} s", flush=True)
            try:
                if "encoders" in parts:
                    encoders_part(s, models, shots, rounds)
                if "embed" in parts:
                    embed_part(s, tmp, minutes=args.minutes or (0.2 if dry else 2.0), size=size, cache=args.cache)
            finally:
                triton.down(s)
    print(f"done in {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
