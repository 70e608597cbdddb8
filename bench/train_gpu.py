"""GPU training step of the `base` config in bf16 at 512 shots: throughput and MFU.

    python bench/train_gpu.py [--batch 32] [--steps 30] [--compile] [--peak-tflops 989]

For the lent H200 (about 989 dense bf16 TFLOP/s, the H100 SXM figure; the
H200 has the same compute and more memory). Runs well under 5 minutes.
Model FLOPs per step (PaLM appendix B convention, no recomputation):
    6 * N_params_matmul * tokens  +  12 * n_layers * T^2 * hidden * batch
where tokens = batch * (T + 2) and N counts the weights of matrix multiplies.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mediafm.model import CONFIGS, MaskedShotModel, MediaFMConfig, mask_positions  # noqa: E402
from trainer.train import TrainConfig, setup_optimizers  # noqa: E402


def model_flops(cfg: MediaFMConfig, batch: int, T: int) -> float:
    model = MaskedShotModel(cfg)
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and not n.endswith("pos.weight"))
    tokens = batch * (T + 2)
    copy = 6 * T**2 * (cfg.hidden + cfg.fused_dim) * batch if cfg.head == "copy" else 0  # scores, then the mix
    return 6 * matmul * tokens + 12 * cfg.n_layers * (T + 2) ** 2 * cfg.hidden * batch + copy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--shots", type=int, default=512)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--optimizer", default="muon", choices=["muon", "adamw"])
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/train_gpu.py needs a CUDA GPU; use bench/train_cpu.py here")
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = MediaFMConfig(**{**CONFIGS["base"], "max_shots": args.shots})
    model = MaskedShotModel(cfg).to(dev)
    opts = setup_optimizers(model, TrainConfig(config="base", optimizer=args.optimizer))
    fwd = torch.compile(model) if args.compile else model
    shots = torch.nn.functional.normalize(torch.randn(args.batch, args.shots, cfg.fused_dim, device=dev), dim=-1)
    title = torch.randn(args.batch, cfg.title_dim, device=dev)
    lengths = torch.full((args.batch,), args.shots, device=dev)

    def step():
        mask = mask_positions(lengths, args.shots, cfg.mask_rate)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = fwd(shots, title, lengths, mask)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    flops = model_flops(cfg, args.batch, args.shots)
    print(f"{torch.cuda.get_device_name()}: base config, bf16, batch {args.batch} x {args.shots} shots, "
          f"{args.optimizer}, compile={args.compile}")
    print(f"median step {med * 1000:.1f} ms, {args.batch * args.shots / med:,.0f} shots/s, "
          f"{flops / med / 1e12:.0f} TFLOP/s model, MFU {flops / med / (args.peak_tflops * 1e12):.1%} "
          f"(peak {args.peak_tflops:.0f}), max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
