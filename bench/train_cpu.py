"""CPU training throughput and peak memory: our MediaFM vs transformers' BertModel.

    .venv/bin/python bench/train_cpu.py [--config small] [--batch 4] [--shots 512] [--steps 8] [--rounds 3]

Both encoders have the same size (hidden, layers, heads, MLP width, positions)
and do the same masked-shot training step (input projection, [CLS]/[GLOBAL],
output projection, cosine loss on 20% masked shots). Each variant runs in its
own process (peak RSS is per process), rounds alternate A/B/A/B to share the
machine's noise, and the summary prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(variant: str, cfg):
    import torch
    from torch import nn

    from mediafm.model import MaskedShotModel, msm_loss

    if variant.startswith("mediafm"):
        return MaskedShotModel(cfg)

    from transformers import BertConfig, BertModel

    class BertMSM(nn.Module):
        """The same model around transformers' BertModel(inputs_embeds=...)."""

        def __init__(self) -> None:
            super().__init__()
            bc = BertConfig(vocab_size=2, hidden_size=cfg.hidden, num_hidden_layers=cfg.n_layers,
                            num_attention_heads=cfg.n_heads, intermediate_size=cfg.mlp_ratio * cfg.hidden,
                            max_position_embeddings=cfg.max_shots + 2, hidden_dropout_prob=cfg.dropout,
                            attention_probs_dropout_prob=cfg.dropout, type_vocab_size=1)
            bc._attn_implementation = "sdpa"
            self.bert = BertModel(bc, add_pooling_layer=False)
            self.in_proj = nn.Linear(cfg.fused_dim, cfg.hidden)
            self.title_proj = nn.Linear(cfg.title_dim, cfg.hidden)
            self.cls = nn.Parameter(torch.zeros(cfg.hidden))
            self.mask_token = nn.Parameter(torch.zeros(cfg.fused_dim))
            self.out_proj = nn.Linear(cfg.hidden, cfg.fused_dim)

        def forward(self, shots, title, lengths, mask):
            B, T, _ = shots.shape
            x = torch.where(mask[..., None], self.mask_token, shots)
            emb = torch.cat([self.cls.expand(B, 1, -1), self.title_proj(title)[:, None], self.in_proj(x)], dim=1)
            att = (torch.arange(T + 2)[None] < (lengths[:, None] + 2)).long()
            h = self.bert(inputs_embeds=emb, attention_mask=att).last_hidden_state[:, 2:]
            pred = self.out_proj(h)
            return pred, msm_loss(pred, shots, mask)

    return BertMSM()


def child(args) -> None:
    import torch

    from mediafm.model import CONFIGS, MediaFMConfig, mask_positions
    from trainer.train import TrainConfig, setup_optimizers

    torch.manual_seed(0)
    # the projection head on both sides: the same training step as BertMSM's out_proj (the copy head adds
    # a (T, T) attention and the mix of the window's shots)
    cfg = MediaFMConfig(**{**CONFIGS[args.config], "max_shots": args.shots, "head": "projection"})
    model = build(args.variant, cfg).train()
    if args.variant.startswith("mediafm"):
        opts = setup_optimizers(model, TrainConfig(config=args.config, optimizer=args.variant.split("-")[1]))
    else:
        opts = [torch.optim.AdamW(model.parameters(), lr=1e-3)]
    shots = torch.nn.functional.normalize(torch.randn(args.batch, args.shots, cfg.fused_dim), dim=-1)
    title = torch.randn(args.batch, cfg.title_dim)
    lengths = torch.full((args.batch,), args.shots)
    gen = torch.Generator().manual_seed(0)

    def step():
        mask = mask_positions(lengths, args.shots, 0.2, generator=gen)
        _, loss = model(shots, title, lengths, mask)
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()

    step()  # warm-up: allocator, kernels
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = time.perf_counter() - t0
    print(json.dumps({"variant": args.variant, "shots_per_s": args.steps * args.batch * args.shots / dt,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--shots", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        return child(args)
    variants = ["mediafm-adamw", "bert-adamw", "mediafm-muon"]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            out = subprocess.run([sys.executable, __file__, "--variant", v, "--config", args.config, "--batch",
                                  str(args.batch), "--shots", str(args.shots), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[v].append(res)
            print(f"round {r + 1}/{args.rounds} {v:14s} {res['shots_per_s']:8.0f} shots/s  "
                  f"peak RSS {res['peak_rss_mb']:6.0f} MB", flush=True)
    med = {v: (statistics.median(x["shots_per_s"] for x in rs), statistics.median(x["peak_rss_mb"] for x in rs))
           for v, rs in results.items()}
    print(f"\n{args.config} config, batch {args.batch} x {args.shots} shots, {args.steps} steps, "
          f"median of {args.rounds} rounds")
    print(f"{'variant':16s} {'shots/s':>9s} {'peak RSS MB':>12s}")
    for v, (tput, mem) in med.items():
        print(f"{v:16s} {tput:9.0f} {mem:12.0f}")
    (a_t, a_m), (b_t, b_m) = med["mediafm-adamw"], med["bert-adamw"]
    print(f"\nMediaFM / BertModel (same optimizer): throughput x{a_t / b_t:.2f}, peak memory x{a_m / b_m:.2f}")
    print(f"Muon+AdamW / AdamW-only (MediaFM): throughput x{med['mediafm-muon'][0] / a_t:.2f}")


if __name__ == "__main__":
    main()
