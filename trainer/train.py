"""Train MediaFM by Masked Shot Modeling on a v1 shot-embedding dataset.

    mediafm train --data DATASET --config small --out runs/small [--key value ...]
    torchrun --nproc-per-node 8 -m trainer.train --data ... (DDP, no code change)

Reads top to bottom: config -> data -> model -> optimizers -> schedule ->
resume -> one loop doing step, eval, checkpoint, log, in that order.
Re-running the same command on the same --out resumes from its last
checkpoint and continues exactly (model, optimizers, schedule, every rank's
RNG streams, data), under the same number of processes (a resume under another
is refused). A step whose gradients are not finite stops the run before it is
applied, so no checkpoint holds a diverged model.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import math
import os
import pickle
import sys
import time
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from mediafm.dataset import Dataset, TitleInfo
from mediafm.errors import ConfigError, MediaFMError, ModelError
from mediafm.model import CONFIGS, INFERENCE_ONLY, MaskedShotModel, MediaFMConfig, mask_positions, msm_loss
from trainer.data import PREFETCH, Batch, EvalWindows, WindowLoader, eval_batches, shot_moments

log = logging.getLogger(__name__)
LOSSES = ("cosine", "per_modality", "contrastive", "whitened")  # TrainConfig.loss
CONTRASTIVE_TEMPERATURE = 0.1  # wav2vec 2.0's (Baevski et al. 2020, section 3.3)
WHITEN_SHRINK = 0.1  # loss=whitened: (C + lam I)^-1/2 with lam this fraction of the mean variance (fixed before any run)
WHITEN_SHOTS = 100_000  # loss=whitened: at most this many training shots, evenly spaced, estimate the covariance


@dataclass
class TrainConfig:
    config: str = "small"
    """Named model size: tiny (tests), small (CPU demo), base (GPU)."""
    batch_size: int = 16
    max_steps: int = 2000
    optimizer: str = "muon"
    """muon: Muon for the blocks' 2-D matrices + AdamW for the rest (the source's choice);
    adamw: AdamW for everything (the ablation)."""
    lr_muon: float = 0.02
    """Muon lr for the blocks' 2-D matrices (default 'original' lr adjustment; see ENVIRONMENT.md)."""
    lr_adamw: float = 1e-3
    """AdamW lr for embeddings, projections, norms, biases and special tokens."""
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    """Cosine decay ends at this fraction of the peak lr."""
    grad_clip: float = 1.0
    eval_every: int = 100
    val_batches: int = 16
    ckpt_every: int = 200
    seed: int = 0
    device: str = "auto"
    """auto = cuda if available, else cpu."""
    compile: bool = False
    """torch.compile the model (GPU runs; slow to start on CPU)."""
    prefetch: int = PREFETCH
    """Shards the loader reads ahead in a background thread while the step runs (trainer/data.py WindowLoader):
    the same batches in the same order; 0 reads on the training thread, between steps."""
    preflight: bool = True
    """Before step 1, check every shard's fused rows (finite, not all zeros), so that a bad row stops the run now,
    not when training reaches its shard; shards an earlier start of the run checked, unchanged since
    (RUN/preflight/), are not read again. 0 skips it (a bad row then stops the run when its shard is read)."""
    val_cache_mb: int = 2048
    """MiB of validation windows kept in memory after the first validation, which every later one then reads
    from (trainer/data.py EvalWindows); batches past the budget are read again at each validation; 0 keeps none."""
    loss: str = "cosine"
    """cosine: 1 - cos over the whole fused vector (the source's, the recipe); per_modality: 1 - cos on each
    modality's slice, averaged over the slices present (a shot without timed text is not scored on text), so
    video, audio and text each count, whatever their norms; contrastive: InfoNCE as in wav2vec 2.0, each
    masked shot's prediction told apart from the batch's other masked shots; whitened: 1 - cos after centring
    the vectors and whitening them with the training shots' covariance, shrunk toward the identity
    (`whitening`), so directions where shots vary little (a scene's tone) count as much as those where they vary
    most (cast, sets): an issue 17 ablation, not the recipe (bench/WORLDS.md: on the grid, 5 seeds, 2 cells
    clearly better than the recipe and 1 worse; at the issue's size, tone lower). The validation loss is the cosine
    one whatever the training loss, so runs and the context-free predictors compare."""
    visible_loss_weight: float = 0.0
    """Weight of the same loss on the visible (unmasked) shots: the model must also give back each
    shot's own input, keeping its detail in the output (issue 17 ablation; 0 = the source)."""
    modality_dropout: float = 0.0
    """Probability of zeroing each modality of each visible input shot in training (targets keep it),
    so the model learns to fill a modality from context (issue 17 ablation; 0 = the source)."""
    contrastive_weight: float = 0.0
    """Weight of InfoNCE over the batch's masked shots (as `loss=contrastive`) added to the training loss (the
    cosine one by default), so the copy is paid both for coming close to its shot and for telling it apart from
    the others (issue 17 ablation; 0 = the source). 0.1 gives the two the same pull on a prediction's cosine to
    its own shot at the start: InfoNCE's gradient there is up to 1 / temperature = 10 a unit. loss.png draws
    the sum on an axis of its own."""
    mask_span: int = 1
    """Longest span of contiguous shots masked together in training: lengths ~ Geometric(0.2) clipped to it,
    as SpanBERT masks words (10 there: mean 3.8), so a masked shot's neighbours are often hidden too and the
    model has to find it further off (issue 17 ablation; 1 = the source, single shots). The rate is the
    model's mask_rate either way, and validation keeps single-shot masks, so runs compare."""
    mask_view: float = 0.0
    """Of the shots masked in training, the fraction that keeps one modality slice of its own (one of the slices
    the shot has, at random; the rest of it [MASK]), as MultiMAE masks by modality: the copy's query then sees
    part of the shot it copies for and learns to choose the neighbours that match it, as it must when served,
    where every shot is visible. The loss is unchanged (the whole shot); validation keeps whole masks, so runs
    compare (issue 17 ablation; 0 = the source). Tried on the grid (2026-12-05, 5 seeds, 0.5 and 1): a cell fewer
    clearly below `concat`, 2-6 more clearly below a baseline, as the view is copied into its own prediction; not
    the recipe (bench/WORLDS.md)."""
    view_copied: bool = True
    """With mask_view: True, a partial view is also what the copy mixes at its own position, so the shot can copy its
    own slice into its prediction; False, the transformer sees the view but the copy mixes [MASK] there, as for a
    whole mask, so the view only steers the choice of neighbours (issue 17 ablation; on the grid, 2026-12-05, 5
    seeds with mask_view 0.5: 1 cell better than the recipe and 4 worse, 55 not told apart)."""

    visible_noise: float = 0.0
    """With visible_loss_weight and a copy head: at visible shots, what the copy mixes is each of the window's
    inputs plus Gaussian noise of this many times its energy (over the modality slices it has; [MASK] stays
    [MASK]), and the target is the shot as it is. Copying itself then costs the noise and copying neighbours costs
    how much they differ from it, so the copy learns per shot how much of the shot's own input to keep (the
    weight a served copy puts on its own shot, never trained by masked shots). The transformer sees the shots as
    they are; the masked loss and validation are unchanged (issue 17 ablation; 0 = none: without noise the
    visible loss of a copy head is met by copying the shot itself). Tried on the grid (2026-12-05, 5 seeds, 0.5 and 1):
    3-4 cells clearly below `concat` (the recipe: 3), 10-11 below a baseline against 5; it learns to keep a shot
    most where shots are noisiest, as nothing tells a shot's noise from its own detail; not the recipe
    (bench/WORLDS.md)."""

    def __post_init__(self) -> None:
        if self.config not in CONFIGS:
            raise ConfigError(f"config={self.config!r} is not a named model config; choose from {sorted(CONFIGS)}")
        for name in ("batch_size", "max_steps", "eval_every", "ckpt_every", "val_batches"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0")
        if self.prefetch < 0:
            raise ConfigError(f"prefetch={self.prefetch} must be >= 0 (0: read the shards on the training thread)")
        if self.val_cache_mb < 0:
            raise ConfigError(f"val_cache_mb={self.val_cache_mb} must be >= 0 (0: keep no validation windows in memory)")
        if self.optimizer not in ("muon", "adamw"):
            raise ConfigError(f"optimizer={self.optimizer!r}; choose muon or adamw")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"warmup_steps={self.warmup_steps} / min_lr_ratio={self.min_lr_ratio} out of range")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss={self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.visible_loss_weight < 0:
            raise ConfigError(f"visible_loss_weight={self.visible_loss_weight} must be >= 0")
        if not 0 <= self.modality_dropout < 1:
            raise ConfigError(f"modality_dropout={self.modality_dropout} must be in [0, 1)")
        if self.contrastive_weight < 0 or (self.contrastive_weight and self.loss == "contrastive"):
            raise ConfigError(f"contrastive_weight={self.contrastive_weight} must be >= 0, and 0 with "
                              "loss=contrastive (which is InfoNCE alone)")
        if self.mask_span < 1:
            raise ConfigError(f"mask_span={self.mask_span} must be >= 1 (1: single shots, the source)")
        if not 0 <= self.mask_view <= 1:
            raise ConfigError(f"mask_view={self.mask_view} must be in [0, 1] (0: whole masks, the source)")
        if self.visible_noise < 0 or (self.visible_noise and not self.visible_loss_weight):
            raise ConfigError(f"visible_noise={self.visible_noise} must be >= 0, and needs visible_loss_weight > 0 "
                              "(it is the noise of the visible loss's copy)")
        if not self.view_copied and not self.mask_view:
            raise ConfigError("view_copied=0 says what the copy mixes for a partial view; it needs mask_view > 0")

    @property
    def source_objective(self) -> bool:
        """True when training is the source's masked-shot cosine loss, untouched."""
        return (self.loss == "cosine" and self.visible_loss_weight == 0 and self.modality_dropout == 0
                and self.contrastive_weight == 0)


# What may differ when resuming a run (everything else must match the checkpoint).
RESUMABLE_CHANGES = {"max_steps", "eval_every", "ckpt_every", "val_batches", "device", "compile", "prefetch",
                     "preflight", "val_cache_mb"}  # the last three change how the data is read, not what

# Model fields a user may override; fused_dim, title_dim and modalities come from the dataset.
MODEL_KEYS = {f.name for f in fields(MediaFMConfig)} - {"fused_dim", "title_dim", "modalities"}


def parse_overrides(pairs: list[str]) -> tuple[dict, dict]:
    """['--lr_muon', '0.01', '--hidden', '128'] -> (train overrides, model overrides). Unknown keys fail."""
    train_types = {f.name: f.type for f in fields(TrainConfig)}
    model_types = {f.name: f.type for f in fields(MediaFMConfig) if f.name in MODEL_KEYS}
    if len(pairs) % 2:
        raise ConfigError(f"overrides come in pairs --key value, got {pairs}")
    train, model = {}, {}
    for key, raw in zip(pairs[::2], pairs[1::2], strict=True):
        if not key.startswith("--"):
            raise ConfigError(f"override {key!r} must look like --key value")
        k = key[2:].replace("-", "_")
        typ = train_types.get(k) or model_types.get(k)
        if typ is None:
            raise ConfigError(f"unknown key {key}; training keys: {sorted(train_types)}, "
                              f"model keys: {sorted(model_types)}")
        typ = str(typ)
        try:
            value = {"int": int, "float": float, "bool": lambda s: s.lower() in ("1", "true", "yes")}.get(typ, str)(raw)
        except ValueError:
            raise ConfigError(f"{key} {raw!r} is not a valid {typ}") from None
        (train if k in train_types else model)[k] = value
    return train, model


def _newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                        eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation, in float32 instead of bf16.

    Same iteration and coefficients as torch.optim._muon._zeropower_via_newtonschulz
    (Keller Jordan's Muon); only the dtype differs. On CPUs without bf16 matrix
    units a bf16 matmul is ~40x slower than float32 here, which made a Muon step
    of the `small` config ~8x slower than an AdamW step (bench/train_cpu.py).
    """
    a, b, c = ns_coefficients
    x = grad.to(dtype=torch.float32, copy=True)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(grad.dtype)


def use_fp32_newton_schulz_on_cpu() -> bool:
    """Route torch's Muon orthogonalisation through float32 for CPU tensors. Returns True if patched."""
    from torch.optim import _muon

    original = getattr(_muon, "_zeropower_via_newtonschulz", None)
    if original is None or getattr(original, "_mediafm_fp32", False):
        return original is not None  # a torch without this hook keeps its own behaviour

    def dispatch(grad, ns_coefficients, ns_steps, eps):
        if grad.device.type == "cpu":
            return _newton_schulz_fp32(grad, ns_coefficients, ns_steps, eps)
        return original(grad, ns_coefficients, ns_steps, eps)  # GPUs: bf16 as designed

    dispatch._mediafm_fp32 = True  # type: ignore[attr-defined]
    _muon._zeropower_via_newtonschulz = dispatch
    return True


def setup_optimizers(model: MaskedShotModel, tc: TrainConfig) -> list[torch.optim.Optimizer]:
    """Muon for the 2-D weight matrices of the transformer blocks; AdamW for everything else."""
    muon, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if name.startswith("encoder.blocks.") and p.ndim == 2:
            muon.append(p)  # attention qkv / proj, MLP fc / proj
        elif p.ndim == 2 and name in ("encoder.in_proj.weight", "encoder.title_proj.weight", "encoder.out_proj.weight",
                                     "encoder.copy_q.weight", "encoder.copy_k.weight",
                                     "encoder.copy_gate.weight"):
            decay.append(p)  # the projections in and out of fused space, and the copy head's query, key and gate
        else:
            no_decay.append(p)  # biases, norms, positions, [CLS], [MASK]
    n_total = len(list(model.parameters()))
    assert len(muon) + len(decay) + len(no_decay) == n_total, (
        f"optimizer groups cover {len(muon) + len(decay) + len(no_decay)} of {n_total} parameters")
    assert len({id(p) for p in muon + decay + no_decay}) == n_total, "a parameter is in two optimizer groups"
    if tc.optimizer == "adamw":  # ablation: the block matrices join AdamW's decayed group
        decay, muon = decay + muon, []
    adamw = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr_adamw, betas=(0.9, 0.95))
    if muon and muon[0].device.type == "cpu":
        use_fp32_newton_schulz_on_cpu()
    return [torch.optim.Muon(muon, lr=tc.lr_muon, weight_decay=tc.weight_decay), adamw] if muon else [adamw]


def lr_factor(step: int, tc: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio at max_steps."""
    if step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps))
    return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def per_modality_loss(pred: torch.Tensor, target: torch.Tensor, where: torch.Tensor,
                      slices: list[tuple[int, int]]) -> torch.Tensor:
    """Mean of 1 - cos over (shot, modality) pairs at `where` (B, T), skipping absent (all-zero) slices."""
    p, t = pred[where].float(), target[where].float()  # (N, fused_dim)
    total, count = p.new_zeros(()), p.new_zeros(())
    present = present_slices(t, slices)  # (N, M)
    for m, (lo, hi) in enumerate(slices):
        cos = torch.nn.functional.cosine_similarity(p[:, lo:hi], t[:, lo:hi], dim=-1)
        total = total + ((1.0 - cos) * present[:, m]).sum()
        count = count + present[:, m].sum()
    return total / count.clamp(min=1)


def contrastive_loss(pred: torch.Tensor, target: torch.Tensor, where: torch.Tensor,
                     temperature: float = CONTRASTIVE_TEMPERATURE) -> torch.Tensor:
    """InfoNCE over the shots at `where` (B, T): each one's prediction scored by cosine / temperature against
    every such shot of the batch, cross-entropy to its own. The others are the distractors (wav2vec 2.0 draws
    them from the masked steps of the same utterance; here every masked shot of the batch is one): a
    prediction is paid for what tells its shot apart from the rest, not for what all of them share. Under
    torchrun each rank's distractors are its own batch's masked shots (no all-gather): the loss, and so the
    model, depends on the per-rank batch size, not on the global one."""
    p = F.normalize(pred[where].float(), dim=-1)  # (N, D)
    t = F.normalize(target[where].float(), dim=-1)
    logits = p @ t.T / temperature  # (N, N)
    return F.cross_entropy(logits, torch.arange(len(p), device=p.device))


def whitening(ds: Dataset, titles: list[TitleInfo], *, shrink: float = WHITEN_SHRINK,
              max_shots: int = WHITEN_SHOTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), W (D, D)) of the titles' fused shots (`shot_moments`: at most max_shots, every k-th of each
    title), W = (C + lam I)^-1/2 with C their covariance and lam = shrink x its mean eigenvalue (trace / D): a
    direction far weaker than the average is lifted to about 1 / sqrt(lam), not to the inverse of its own spread,
    so noise that hardly varies is not blown up."""
    if not sum(i.n_shots for i in titles):
        raise ConfigError("loss=whitened needs training shots to estimate their covariance; the train split is empty")
    mean, cov = shot_moments(ds, titles, max_shots=max_shots)
    lam = shrink * float(cov.trace()) / cov.shape[0] or 1.0
    vals, vecs = torch.linalg.eigh(cov)
    w = vecs @ torch.diag((vals.clamp(min=0) + lam).rsqrt()) @ vecs.T
    return mean.float(), w.float()


def whitened_loss(pred: torch.Tensor, target: torch.Tensor, where: torch.Tensor,
                  whiten: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean of 1 - cos over the shots at `where` (B, T), both sides centred and whitened (`whitening`)."""
    mean, w = whiten
    p, t = (pred[where].float() - mean) @ w, (target[where].float() - mean) @ w
    return (1.0 - F.cosine_similarity(p, t, dim=-1)).mean()


def objective(pred: torch.Tensor, shots: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor, tc: TrainConfig,
              slices: list[tuple[int, int]], whiten: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The training loss of the issue-17 ablations (`loss`, `visible_loss_weight`, `contrastive_weight`); targets
    are the real shots. whiten: `whitening`'s (mean, W), for loss=whitened."""

    def one(where: torch.Tensor) -> torch.Tensor:
        if tc.loss == "per_modality":
            return per_modality_loss(pred, shots, where, slices)
        if tc.loss == "contrastive":
            return contrastive_loss(pred, shots, where)
        if tc.loss == "whitened":
            return whitened_loss(pred, shots, where, whiten)
        return msm_loss(pred, shots, where)

    loss = one(mask)
    if tc.contrastive_weight:
        loss = loss + tc.contrastive_weight * contrastive_loss(pred, shots, mask)
    if tc.visible_loss_weight:
        visible = (torch.arange(shots.shape[1], device=shots.device)[None, :] < lengths[:, None]) & ~mask
        if visible.any():
            loss = loss + tc.visible_loss_weight * one(visible)
    return loss


def present_slices(x: torch.Tensor, slices: list[tuple[int, int]]) -> torch.Tensor:
    """(..., M) bool: which modality slices of each vector in x (..., fused_dim) it has (any nonzero value); an
    absent modality is all zeros in a fused shot (mediafm/fusion.py)."""
    return torch.stack([(x[..., lo:hi] != 0).any(-1) for lo, hi in slices], -1)


def spread_slices(per_slice: torch.Tensor, slices: list[tuple[int, int]]) -> torch.Tensor:
    """(..., M) -> (..., fused_dim): each slice's value over its features. The slices tile [0, fused_dim) in
    order (the dataset's meta.json checks it)."""
    widths = torch.tensor([hi - lo for lo, hi in slices], device=per_slice.device)
    return per_slice.repeat_interleave(widths, dim=-1)


def drop_modalities(shots: torch.Tensor, mask: torch.Tensor, slices: list[tuple[int, int]], p: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Zero each modality slice of each visible shot with probability p (masked shots become [MASK] anyway)."""
    B, T, _ = shots.shape
    drop = (torch.rand(B, T, len(slices), generator=generator) < p).to(shots.device) & ~mask[..., None]  # (B, T, M)
    return shots * spread_slices(~drop, slices).to(shots.dtype)


def partial_views(shots: torch.Tensor, mask: torch.Tensor, slices: list[tuple[int, int]], p: float,
                  generator: torch.Generator) -> torch.Tensor:
    """(B, T, fused_dim) bool: the features of masked shots left visible (`TrainConfig.mask_view`). Each masked
    shot, with probability p, keeps one of its modality slices, drawn uniformly among those it has (a nonzero
    slice: a shot without timed text never shows its empty text); a shot with none keeps nothing. The draws come
    from `generator` (CPU, so that a checkpoint resumes them); the rest runs where the shots are."""
    B, T, _ = shots.shape
    has = present_slices(shots, slices)  # (B, T, M)
    u = torch.rand(B, T, len(slices) + 1, generator=generator).to(shots.device)
    chosen = (u[..., 0] < p) & mask & has.any(-1)  # (B, T): masked shots that keep a slice
    pick = torch.where(has, u[..., 1:], -1.0).argmax(-1)  # (B, T): a random slice among those the shot has
    kept = chosen[..., None] & (torch.arange(len(slices), device=shots.device) == pick[..., None])  # (B, T, M)
    return spread_slices(kept, slices)


def value_noise(shots: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, slices: list[tuple[int, int]],
                scale: float, generator: torch.Generator) -> torch.Tensor:
    """(B, T, fused_dim): Gaussian noise for the visible shots' copy (`TrainConfig.visible_noise`), over the
    modality slices each real visible shot has, of exactly `scale` times the shot's energy; zero at masked shots,
    padding and absent slices. One seed comes from `generator` (CPU, so that a checkpoint resumes it); the noise is
    drawn where the shots are."""
    B, T, _ = shots.shape
    seed = int(torch.randint(2**62, (1,), generator=generator))
    g = torch.Generator(device=shots.device).manual_seed(seed)
    z = torch.randn(shots.shape, generator=g, device=shots.device, dtype=torch.float32)
    real = torch.arange(T, device=shots.device)[None, :] < lengths[:, None]
    z = z * spread_slices(present_slices(shots, slices), slices) * (real & ~mask)[..., None]
    energy = shots.float().pow(2).sum(-1, keepdim=True)
    z = z * (scale * energy / z.pow(2).sum(-1, keepdim=True).clamp(min=1e-12)).sqrt()
    return z.to(shots.dtype)


def baseline_losses(batch: Batch, mask: torch.Tensor) -> dict[str, float]:
    """Two context-free predictors of a masked shot, scored like the model.

    title_mean: the mean of the window's visible shots.
    neighbours: the mean of the visible shots at i-1 and i+1 (title_mean if neither is visible).
    """
    x, L = batch.shots, batch.lengths
    T = x.shape[1]
    real = torch.arange(T)[None, :] < L[:, None]
    visible = (real & ~mask).float()[..., None]  # (B, T, 1)
    title_mean = (x * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True).clamp(min=1)
    left = torch.nn.functional.pad(x * visible, (0, 0, 1, 0))[:, :T]
    right = torch.nn.functional.pad(x * visible, (0, 0, 0, 1))[:, 1:]
    nvis = torch.nn.functional.pad(visible, (0, 0, 1, 0))[:, :T] + torch.nn.functional.pad(visible, (0, 0, 0, 1))[:, 1:]
    neigh = torch.where(nvis > 0, (left + right) / nvis.clamp(min=1), title_mean.expand_as(x))
    return {"title_mean": msm_loss(title_mean.expand_as(x), x, mask).item(),
            "neighbours": msm_loss(neigh, x, mask).item()}


@torch.no_grad()
def validate(model: MaskedShotModel, ds: Dataset, tc: TrainConfig, cfg: MediaFMConfig, device: torch.device,
             *, with_baselines: bool = False, windows: Iterable[Batch] | None = None) -> dict[str, float]:
    """Validation loss on fixed windows with fixed masks (comparable across steps and runs). windows: the
    run's EvalWindows (read once, then from memory); none reads them (eval_batches)."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    sums: dict[str, float] = {}
    n = 0
    for batch in windows if windows is not None else eval_batches(
            ds, ds.split("val"), batch_size=tc.batch_size, max_shots=cfg.max_shots, max_batches=tc.val_batches):
        mask = mask_positions(batch.lengths, batch.shots.shape[1], cfg.mask_rate, generator=gen)
        _, loss = model(batch.shots.to(device), batch.title.to(device), batch.lengths.to(device), mask.to(device))
        parts = {"val_loss": loss.item()} | (baseline_losses(batch, mask) if with_baselines else {})
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
    model.train()
    return {k: v / max(n, 1) for k, v in sums.items()}


PREFLIGHT = "preflight"
"""RUN/preflight/rank-R.json: the shards rank R found whole, {path: {size, mtime_ns}} (`preflight`)."""


def io_threads() -> int:
    """Shards the preflight reads at once: this process's cores, shared with the other ranks on the machine
    (torchrun's LOCAL_WORLD_SIZE), at most 4 (reads past that contend for memory and disk more than they gain)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def preflight(ds: Dataset, run: Path, *, rank: int = 0, world: int = 1, quiet: bool = False,
              threads: int | None = None) -> dict[str, float]:
    """Check every shard's fused rows (`Dataset.check_shard`: finite, not all zeros) before step 1, so that a
    bad row stops the run at once, with the DatasetError naming its file and row that reading its shard in
    training would raise hours later. Under torchrun each rank checks every world-th shard, so the ranks share
    the reading. Each shard found whole is recorded in RUN/preflight/rank-R.json with its size and mtime; a
    later start of the run (a resume, under any world) reads again only the shards no rank recorded, or
    changed since. `threads` shards are read at once (pyarrow's decoding and numpy's checks release the GIL;
    default `io_threads`). Returns this rank's {"shards": its share, "checked": read now, "seconds": taken}."""
    t0 = time.perf_counter()
    folder = run / PREFLIGHT
    recorded: dict[str, dict] = {}
    for f in sorted(folder.glob("rank-*.json")):
        try:
            recorded |= json.loads(f.read_text())
        except (OSError, ValueError, TypeError):  # a record cut short (or not ours): its shards are read again
            log.warning("%s: unreadable; the shards it recorded are checked again", f)
    mine = {str(ds.shards[s].resolve()): s for s in range(len(ds.shards)) if s % world == rank}
    now = {p: _stat_key(ds.shards[s]) for p, s in mine.items()}
    done = {p: k for p, k in now.items() if recorded.get(p) == k}
    todo = [s for p, s in mine.items() if p not in done]
    threads = io_threads() if threads is None else threads
    pool = ThreadPoolExecutor(max(1, min(threads, len(todo))), thread_name_prefix="preflight")
    bar = tqdm(total=len(todo), disable=quiet or not todo, unit="shard", desc="preflight: checking the shards",
               dynamic_ncols=True)
    try:
        for s, _ in zip(todo, pool.map(ds.check_shard, todo), strict=True):  # in order: the first bad shard
            path = str(ds.shards[s].resolve())
            done[path] = now[path]
            bar.update(1)
    finally:  # what passed is recorded, also when a shard fails (the next start reads only the rest)
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"rank-{rank}.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(done, indent=1))
        os.replace(tmp, folder / f"rank-{rank}.json")
    return {"shards": len(mine), "checked": len(todo), "seconds": time.perf_counter() - t0}


def fsync_dir(path: Path) -> None:
    """fsync a folder: the names in it (a file renamed into it) are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run: Path, state: dict, *, keep: int = 2) -> Path:
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    path = ckdir / f"step-{state['step']:07d}.pt"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # whose it is, should two writers ever meet
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before it takes the name: a power cut never leaves a truncated step-N.pt
    os.replace(tmp, path)  # a crash mid-save never leaves a truncated checkpoint behind
    fsync_dir(ckdir)
    (ckdir / "latest.json").write_text(json.dumps(
        {"path": path.name, "step": state["step"], "metrics": state.get("metrics", {})}, indent=2))
    for old in sorted(ckdir.glob("step-*.pt"))[:-keep]:
        old.unlink()
    return path


def _intact(path: Path) -> str | None:
    """None if `path` reads as a whole torch checkpoint (a zip archive whose members all match their CRC),
    else what is wrong with it."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return f"member {bad} does not match its CRC" if bad else None


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint of the run that reads whole (None if it has none). A newer one that does not (cut
    short by a full disk or a copy) is skipped with a warning naming it; if none is whole, ModelError."""
    ckpts = sorted((run / "checkpoints").glob("step-*.pt"))
    bad = []
    for path in reversed(ckpts):
        why = _intact(path)
        if why is None:
            for b, w in bad:
                log.warning("%s is unreadable (%s); using the older %s. Delete or move it aside", b, w, path.name)
            return path
        bad.append((path, why))
    if bad:
        raise ModelError(f"{bad[0][0]} is unreadable ({bad[0][1]}), and so is every older checkpoint in "
                         f"{run / 'checkpoints'} ({', '.join(p.name for p, _ in bad[1:]) or 'none'}); retrain, or "
                         "restore a checkpoint from a copy")
    return None


def read_checkpoint(path: Path, *, device: str | torch.device = "cpu") -> dict:
    """A checkpoint's raw state; one torch cannot read is a ModelError naming the file."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise ModelError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         "delete it to use the one before, or pass another") from None


def load_checkpoint(path: Path, *, device: str | torch.device = "cpu") -> tuple[MaskedShotModel, dict]:
    """A checkpoint as (model in eval mode, raw state); the encoder is `model.encoder`."""
    state = read_checkpoint(path, device=device)
    if not isinstance(state, dict) or not {"model_config", "model"} <= set(state):
        raise ModelError(f"{path}: not a training checkpoint (it has no model_config and model: an exported "
                         "model.pt, or another file?); pass a run's checkpoints/step-*.pt, or the run directory")
    try:
        model = MaskedShotModel(MediaFMConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as e:  # a field this code does not know, shapes that disagree
        raise ModelError(f"{path}: its model does not load into this version's MediaFM ({type(e).__name__}: "
                         f"{str(e).splitlines()[0]}); use the version of mediafm that trained it") from None
    return model.eval(), state


def lock_run(run: Path):
    """Hold `run/.lock` for this process (an exclusive flock, non-blocking; the OS drops it when the process
    ends, kill -9 included), with our PID written in it; ConfigError naming the holder's PID if another
    process holds it. Returns the open file: the lock lasts until it is closed."""
    run.mkdir(parents=True, exist_ok=True)
    f = open(run / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise ConfigError(f"{run} is in use by another trainer (PID {pid} holds {run / '.lock'}); wait for it to "
                          f"end or stop it (a torchrun worker left behind by a killed launcher holds it too: kill "
                          f"{pid}), or pass another --out") from None
    except OSError as e:  # a file system without flock (some NFS): run unguarded rather than not at all
        log.warning("%s: cannot lock it (%s); make sure no other trainer writes to this --out", run / ".lock", e)
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def read_log(path: Path) -> list[dict]:
    """The rows of a run's log.jsonl, one a step, the last written for each step: a resumed run logs again the
    steps after its checkpoint. A line cut short (a full disk, a kill mid-write) is passed over, with a warning."""
    rows: dict[int, dict] = {}
    bad = 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            rows[int(row["step"])] = row
        except (ValueError, KeyError, TypeError):
            bad += 1
    if bad:
        print(f"{path}: {bad} line(s) cut short or not JSON, passed over", file=sys.stderr)
    return [rows[k] for k in sorted(rows)]


def plot_losses(run: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(run / "log.jsonl")
    fig, ax = plt.subplots(figsize=(7, 4))
    tr = [r for r in rows if "train_loss" in r]
    config = run / "config.json"
    trained = json.loads(config.read_text())["train"] if config.exists() else {}
    trained_on, weight = trained.get("loss", "cosine"), trained.get("contrastive_weight", 0)
    if trained_on in ("contrastive", "whitened") or weight:  # another quantity: its own axis, the cosine curves keep theirs
        what = {"contrastive": "InfoNCE", "whitened": "whitened cosine"}.get(trained_on) if not weight \
            else f"{trained_on} + {weight:g} x InfoNCE"
        ax.twinx().plot([r["step"] for r in tr], [r["train_loss"] for r in tr], color="tab:green", alpha=0.4)
        ax.plot([], [], color="tab:green", alpha=0.4, label=f"train ({what}, right axis)")
    else:
        ax.plot([r["step"] for r in tr], [r["train_loss"] for r in tr], label="train", alpha=0.5)
    va = [r for r in rows if "val_loss" in r]
    ax.plot([r["step"] for r in va], [r["val_loss"] for r in va], "o-", label="val (MediaFM)")
    for key, style in (("title_mean", "--"), ("neighbours", ":")):
        vals = [r[key] for r in va if key in r]
        if vals:
            ax.axhline(vals[-1], linestyle=style, color="gray", label=f"val baseline: {key.replace('_', ' ')}")
    ax.set_xlabel("step")
    ax.set_ylabel("masked-shot cosine distance")
    ax.set_title(f"MediaFM masked shot modeling - {run.name}")
    ax.legend()
    fig.tight_layout()
    out = run / "loss.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def train(data: str | Path, out: str | Path, tc: TrainConfig, model_overrides: dict | None = None,
          *, quiet: bool = False, until_step: int | None = None) -> dict:
    """Train (or resume) the run in `out`. until_step stops early after that step
    and a checkpoint, as a preempted job would; rerunning continues the schedule.
    Rank 0 holds `out/.lock` for the whole run (`lock_run`): a second trainer on the same
    --out stops with ConfigError instead of writing the same log and checkpoints."""
    lock = lock_run(Path(out)) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        for stale in (Path(out) / "checkpoints").glob("step-*.tmp") if lock is not None else ():
            stale.unlink(missing_ok=True)  # left by a trainer killed mid-save (named by its PID); none writes now
        return _train(data, out, tc, model_overrides, quiet=quiet, until_step=until_step)
    finally:
        if lock is not None:
            lock.close()


def _train(data: str | Path, out: str | Path, tc: TrainConfig, model_overrides: dict | None,
           *, quiet: bool, until_step: int | None) -> dict:
    # --- distributed (torchrun sets these; a plain run is world 1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    master = rank == 0
    if tc.device == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(tc.device)
        if device.type == "cuda" and device.index is None and world > 1:  # each rank its own GPU, as auto does
            device = torch.device("cuda", local)
    if device.type == "cuda":  # NCCL's collectives (all_gather_object too) use the current device: this rank's
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():  # the backend for the device: gloo for --device cpu on a GPU host
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    # --- data
    ds = Dataset(data)
    over = {**CONFIGS[tc.config], **(model_overrides or {})}
    cfg = MediaFMConfig(**over, fused_dim=ds.meta.fused_dim, title_dim=ds.meta.title_dim,  # slices: only where used
                        modalities=[list(v) for v in ds.meta.modalities.values()] if over.get("copy_per_modality")
                        else [])
    if tc.visible_noise and cfg.head != "copy":
        raise ConfigError(f"visible_noise={tc.visible_noise} is the noise of what a copy head mixes; head={cfg.head!r} "
                          "has none (drop --head projection, or the setting)")
    train_titles = ds.split("train")
    loader = WindowLoader(ds, train_titles, batch_size=tc.batch_size, max_shots=cfg.max_shots, seed=tc.seed,
                          rank=rank, world=world, prefetch=tc.prefetch)

    # --- model, optimizers, schedule
    torch.manual_seed(tc.seed)
    model = MaskedShotModel(cfg).to(device)
    optimizers = setup_optimizers(model, tc)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, tc)) for o in optimizers]
    # each rank its own streams (rank 0's as a single process's): ranks with the same seed masked the same
    # positions of their windows and dropped the same modalities at every step
    mask_gen = torch.Generator().manual_seed(tc.seed + 1 + 7919 * rank)
    drop_gen = torch.Generator().manual_seed(tc.seed + 2 + 7919 * rank)  # modality dropout, views and noise only
    slices = [tuple(v) for v in ds.meta.modalities.values()]
    whiten = tuple(v.to(device) for v in whitening(ds, train_titles)) if tc.loss == "whitened" else None
    step = 0

    # --- resume
    data_print = ds.fingerprint()
    run = Path(out)
    ckpt = latest_checkpoint(run)
    if ckpt is not None:
        state = read_checkpoint(ckpt, device=device)
        was = state.get("world_size")
        if was is None and (run / "config.json").exists():  # checkpoints from before it was saved in them
            was = json.loads((run / "config.json").read_text()).get("world_size")
        if was is not None and was != world:
            raise ConfigError(f"{run} was trained by {was} process(es), and this run has {world}: batch_size is per "
                              f"process, so the global batch (and the data each rank resumes at) would change "
                              f"under the same schedule. Resume it with `torchrun --nproc-per-node {was}` (or a "
                              f"plain run for 1), or pass a new --out")
        saved_data, data_now = state.get("dataset_fingerprint"), data_print
        if saved_data is not None and saved_data != data_now:  # checkpoints from before it (2026-12-08): unchecked
            diff = {k: (saved_data.get(k), data_now.get(k)) for k in sorted(saved_data.keys() | data_now.keys())
                    if k != "digest" and saved_data.get(k) != data_now.get(k)}
            what = diff or "the same counts, other titles or lengths"
            raise ConfigError(f"{run} was trained on another dataset than {data} ({what}; saved, now): its data "
                              "order and position would be another "
                              f"dataset's. Resume it on the dataset it was trained on ({state.get('dataset')}), or "
                              "pass a new --out to train on this one")
        defaults = {f.name: f.default for f in fields(TrainConfig)}  # keys added since the checkpoint was written
        saved = {k: v for k, v in {**defaults, **state["train_config"]}.items() if k not in RESUMABLE_CHANGES}
        now = {k: v for k, v in asdict(tc).items() if k not in RESUMABLE_CHANGES}
        saved_model = MediaFMConfig(**state["model_config"]).to_dict()  # fields added since: their defaults
        changed = {k: (saved_model[k], v) for k, v in cfg.to_dict().items() if saved_model[k] != v}
        served = {k: changed.pop(k) for k in INFERENCE_ONLY if k in changed}  # served as set now
        if changed or saved != now:
            diff = {k: (saved.get(k), now.get(k)) for k in now if saved.get(k) != now.get(k)} | changed
            raise ConfigError(f"{run} holds a run with another config {diff} (saved, now); "
                              "pass a new --out, or the same settings to resume")
        if served and master:  # recorded now, so that an export serves them even if no step is left to run
            state["model_config"] = cfg.to_dict()
            save_checkpoint(run, state)
            changes = ", ".join(f"{k}={v} (was {was})" for k, (was, v) in served.items())
            print(f"{run}: served from now on with {changes}; inference only, training is unchanged", file=sys.stderr)
        model.load_state_dict(state["model"])
        for o, s in zip(optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)
        for sch, s in zip(schedulers, state["schedulers"], strict=True):
            sch.load_state_dict(s)
        loader.load_state_dict(state["data"])
        # RNG states are CPU byte tensors; map_location=device put them on the GPU, where set_state refuses them.
        # Each rank's own (rng_ranks); checkpoints from before it hold rank 0's only, which every rank took.
        rng = (state.get("rng_ranks") or [state["rng"]] * world)[rank]
        torch.set_rng_state(rng["torch"].cpu())
        mask_gen.set_state(rng["mask"].cpu())
        if "drop" in rng:  # checkpoints from before the modality-dropout ablation have none
            drop_gen.set_state(rng["drop"].cpu())
        if "cuda" in rng and device.type == "cuda":  # dropout on the GPU
            torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
        step = state["step"]
        if master and not quiet:
            print(f"resuming {run} from {ckpt.name} (step {step})")
    run.mkdir(parents=True, exist_ok=True)
    if master:
        (run / "config.json").write_text(json.dumps(
            {"train": asdict(tc), "model": cfg.to_dict(), "data": str(Path(data).resolve()),
             "dataset_meta": ds.meta.to_json(), "world_size": world}, indent=2))
    if tc.preflight:  # before step 1: a bad row stops the run now, with no checkpoint written
        pre = preflight(ds, run, rank=rank, world=world, quiet=quiet or not master)
        if master and not quiet:
            print(f"preflight: {pre['checked']} of {pre['shards']} shards checked in {pre['seconds']:.1f} s"
                  + (f" (rank 0's share; world {world})" if world > 1 else "")
                  + (f", {pre['shards'] - pre['checked']} found whole by an earlier start of this run"
                     if pre['checked'] < pre['shards'] else ""))
    val_windows = EvalWindows(ds, ds.split("val"), batch_size=tc.batch_size, max_shots=cfg.max_shots,
                              max_batches=tc.val_batches, budget_bytes=tc.val_cache_mb << 20) if master else None

    net = DDP(model) if world > 1 else model
    fwd = torch.compile(net) if tc.compile else net
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    log = open(run / "log.jsonl", "a") if master else None
    n_params = sum(p.numel() for p in model.encoder.parameters())
    if master and not quiet:
        print(f"MediaFM {tc.config}: {n_params / 1e6:.2f}M encoder params, {len(train_titles)} train / "
              f"{len(ds.split('val'))} val titles, device {device}, world {world}")

    # --- the loop: step, eval, checkpoint, log
    # a resumed run starts from its checkpoint's last validation: a run already at max_steps (`make demo` again,
    # a bench that finds its run done) returns it rather than nothing (before: val loss "nan", "does not beat both").
    # The baselines are measured again at the first validation: --val_batches may have changed since.
    metrics: dict[str, float] = dict(state.get("metrics") or {}) if ckpt is not None else {}
    baselines: dict[str, float] = {}
    bar = tqdm(total=tc.max_steps, initial=step, disable=not master or quiet, unit="step", dynamic_ncols=True)
    batches = iter(loader)
    t0, shots_seen = time.perf_counter(), 0
    stop = min(tc.max_steps, until_step or tc.max_steps)
    while step < stop:
        batch = next(batches)
        mask = mask_positions(batch.lengths, batch.shots.shape[1], cfg.mask_rate, generator=mask_gen,
                              max_span=tc.mask_span)
        shots, lengths, mask = batch.shots.to(device), batch.lengths.to(device), mask.to(device)
        inputs = drop_modalities(shots, mask, slices, tc.modality_dropout, drop_gen) if tc.modality_dropout else shots
        view = partial_views(shots, mask, slices, tc.mask_view, drop_gen) if tc.mask_view else None
        noise = value_noise(shots, mask, lengths, slices, tc.visible_noise, drop_gen) if tc.visible_noise else None
        with amp:
            pred, loss = fwd(inputs, batch.title.to(device), lengths, mask, view, view_copied=tc.view_copied,
                             noise=noise)
            if not tc.source_objective:  # the ablations score against the real shots, not the dropped inputs
                loss = objective(pred, shots, lengths, mask, tc, slices, whiten)
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        if not torch.isfinite(gnorm):  # (all-reduced: every rank sees the same, and stops here alike)
            if log is not None:
                log.close()
            raise ModelError(
                f"{run}: training diverged at step {step + 1}: loss {loss.item()}, gradient norm {float(gnorm)}. "
                f"Nothing of this step was applied or saved; the last checkpoint ({getattr(latest_checkpoint(run), 'name', 'none yet')}) is as it was. "
                "Train again into a new --out with a lower learning rate (--lr_muon, --lr_adamw) or a longer "
                "--warmup_steps (before 2026-12-07, the run went on and its next checkpoints, NaN, replaced the good "
                "ones)")
        for o, sch in zip(optimizers, schedulers, strict=True):
            o.step()
            sch.step()
        step += 1
        shots_seen += int(batch.lengths.sum())
        row = {"step": step, "train_loss": loss.item(), "grad_norm": float(gnorm),
               "lr": [s.get_last_lr()[0] for s in schedulers]}

        if master and (step % tc.eval_every == 0 or step == tc.max_steps) and ds.split("val"):
            metrics = validate(model, ds, tc, cfg, device, with_baselines=not baselines, windows=val_windows)
            baselines = baselines or {k: metrics[k] for k in ("title_mean", "neighbours")}
            metrics |= baselines
            row |= metrics
            if not quiet:
                bar.write(f"step {step:6d}  val {metrics['val_loss']:.4f}  |  baselines: title mean "
                          f"{baselines['title_mean']:.4f}, neighbours {baselines['neighbours']:.4f}")
        if step % tc.ckpt_every == 0 or step in (tc.max_steps, stop):
            rng = {"torch": torch.get_rng_state(), "mask": mask_gen.get_state(), "drop": drop_gen.get_state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            ranks = [rng]
            if world > 1:  # every rank's streams into rank 0's checkpoint (every rank is at this step)
                ranks = [None] * world
                dist.all_gather_object(ranks, rng)
            if master:
                save_checkpoint(run, {
                    "step": step, "model": model.state_dict(), "model_config": cfg.to_dict(),
                    "train_config": asdict(tc), "optimizers": [o.state_dict() for o in optimizers],
                    "schedulers": [s.state_dict() for s in schedulers], "data": loader.state_dict(),
                    "rng": rng, "rng_ranks": ranks, "world_size": world,
                    "metrics": metrics, "dataset": str(Path(data).resolve()), "dataset_fingerprint": data_print})
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()
        bar.set_postfix(loss=f"{row['train_loss']:.4f}")
        bar.update(1)
    bar.close()
    loader.close()  # its reader thread (an exception above ends it when the iterator is dropped)
    elapsed = time.perf_counter() - t0
    if log is not None:
        log.close()
    if master:
        plot_losses(run)
    if world > 1:  # every rank here before any tears down: rank 0 still validates and saves after its last step
        dist.barrier()
        dist.destroy_process_group()
    return {"step": step, "shots_per_s": shots_seen * world / max(elapsed, 1e-9), **metrics}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mediafm train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train MediaFM by masked shot modeling (20% of each window's shots replaced by a learned "
        "[MASK]; loss = cosine distance on masked shots). Rerun the same command to resume.",
        epilog="overrides: any --key value of the training config or the model config, e.g.\n"
        "  --max_steps 500 --lr_muon 0.01 --hidden 128 --n_layers 2\n"
        "  --head projection   the source's output head instead of the copy head every named size uses\n"
        "  --copy_per_modality 1   a copy per modality slice (video, audio, text), each with its own scores\n"
        "  --copy_mix 4   four sets of copy scores mixed per shot by a learnt gate (scene, face, voice: added, not\n"
        "                 multiplied as one softmax does)\n"
        "  --loss per_modality | contrastive | whitened   the loss per modality slice, InfoNCE over the masked\n"
        "                 shots, or the cosine after whitening with the training shots' covariance\n"
        "  --contrastive_weight 0.1   add InfoNCE over the masked shots to the cosine loss, at that weight\n"
        "  --mask_span 10   mask runs of shots (SpanBERT's lengths, mean 3.8) instead of single shots\n"
        "  --copy_norm entmax15   sparse copy weights (1.5-entmax) instead of the softmax: exact zeros\n"
        "  --mask_view 0.5   half the masked shots keep one modality slice of their own (MultiMAE-like)\n"
        "  --view_copied 0   ... seen by the transformer only: the copy mixes [MASK] there, the view steers it\n"
        "  --visible_loss_weight 1 --visible_noise 0.5   also fit the copy at visible shots, mixing noisy copies of\n"
        "                 the window: it learns how much of a shot's own input to keep\n"
        "  --prefetch 4   shards the loader reads ahead in a background thread (default 2; 0: on the training thread)\n"
        "  --val_cache_mb 4096   MiB of validation windows kept in memory after the first validation (default 2048)\n"
        "  --preflight 0   skip the check of every shard's rows before step 1 (done once a run: RUN/preflight/)\n"
        "training keys: " + ", ".join(f.name for f in fields(TrainConfig) if f.name != "config") + "\n"
        "model keys: " + ", ".join(sorted(MODEL_KEYS)) + "\n\n"
        "multi-GPU: torchrun --nproc-per-node N -m trainer.train --data ... --out ...")
    p.add_argument("--data", required=True, help="v1 dataset directory (meta.json, titles.parquet, shots/)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, log.jsonl, loss.png")
    p.add_argument("--config", default="small", choices=sorted(CONFIGS), help="named model size")
    return p


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    try:
        train_over, model_over = parse_overrides(rest)
        tc = TrainConfig(config=args.config, **train_over)
        result = train(args.data, args.out, tc, model_over)
    except (MediaFMError, ValueError) as e:
        print(f"mediafm train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

