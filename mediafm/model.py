"""MediaFM: a BERT-like encoder over a title's sequence of fused shot vectors.

    shots (B, T, fused_dim) ──in_proj──► (B, T, H)
    [CLS] (learned) , [GLOBAL] = title_proj(title embedding)   prepended ─► (B, T+2, H)
    + learned positions ─► Block x n_layers ─► final norm ─► hidden (B, T+2, H)
    head ─► output (B, T, fused_dim), back in fused-embedding space:
      copy        softmax(q(hidden) k(hidden)^T) @ shots: a learnt weighted mean of the window's shots
                  (the named sizes; what bench/worlds.py's grid chose); served within sharp_span shots of the
                  shot and, with copy_wide, as the mean of that sharp copy and a wide one,
                  softmax(scores / copy_wide) @ shots over the shots within copy_span, both unit length
                  (copy_per_modality: one such copy per modality slice of the fused vector, each with its
                  own scores, as attention heads are: video copied from the shots whose video fits, and so on;
                  copy_mix: several sets of scores over the whole vector, mixed per shot by a learnt gate;
                  copy_norm="entmax15": sparse weights instead of the softmax)
      projection  out_proj(hidden), the source's: a linear map of each hidden state

The copy head keeps the output a mixture of real shots, so the masked-shot loss
can only be lowered by choosing which shots a masked one resembles (its scene,
its reverse shot), not by memorising training titles in the weights; what every
shot carries, such as its scene's tone, survives. The source's projection head
kept what predicts a masked neighbour and dropped the rest (README, Evaluation).

`MediaFMEncoder` is what Triton serves. `MaskedShotModel` wraps it for
training by Masked Shot Modeling, as in BERT: `BertForMaskedLM` = `BertModel`
+ head. Source: ../shared/MEDIAFM.md (Netflix's MediaFM blog post).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

N_SPECIAL = 2  # [CLS], [GLOBAL]
HEADS = ("projection", "copy")
COPY_NORMS = ("softmax", "entmax15")
INFERENCE_ONLY = ("copy_wide", "copy_span", "sharp_span")
"""MediaFMConfig fields read at inference only: training and its validation loss never see them, so a trained
run can be served and evaluated with other values (trainer/evaluate.py) and resumes whatever they say."""


@dataclass
class MediaFMConfig:
    fused_dim: int = 2304
    """Width of a fused shot vector (video | audio | text); 2304 in production."""
    title_dim: int = 768
    """Width of the title (metadata) embedding that becomes [GLOBAL]."""
    hidden: int = 768
    n_layers: int = 12
    n_heads: int = 12
    mlp_ratio: int = 4
    max_shots: int = 512
    """Longest shot sequence (window); positions cover max_shots + 2 tokens."""
    dropout: float = 0.1
    norm_first: bool = True
    """Pre-norm (GPT-2 style, stabler with large lr) or post-norm (original BERT)."""
    mask_rate: float = 0.2
    """Fraction of real shots chosen for prediction in training (the source's 20%)."""
    mask_keep: float = 0.0
    """Of the chosen shots, the fraction left as they are (BERT: 0.1; the source: 0, all [MASK])."""
    mask_random: float = 0.0
    """Of the chosen shots, the fraction replaced by another shot of the batch (BERT: 0.1)."""
    head: str = "projection"
    """How the output returns to fused space: "projection" (the source's: a linear map of each hidden
    state) or "copy" (each shot's output is a learnt attention-weighted mean of the window's input shots)."""
    copy_wide: float = 0.0
    """Copy head only: > 0 makes the served output the mean of two unit copies with the same learnt scores,
    the sharp one the loss trains (the shots a masked one resembles: its scene, its reverse shot) and a wide
    one, its softmax at this temperature (the same choice spread over the window: the scenes around, the
    title). 0: the sharp copy alone. Used at inference only; training fits the sharp copy. The projection
    head has no copy and ignores it."""
    copy_span: int = 0
    """With copy_wide: the wide copy reaches at most this many shots either side of the shot; 0 = the whole
    window. A temperature flattens a softmax over every shot it sees, so without a span the wide copy of a
    512-shot window spreads over 8x the shots of a 64-shot one; with it, its reach is the same whatever the
    window plan. Used at inference only, like copy_wide."""
    copy_per_modality: bool = False
    """Copy head only: each modality slice of the fused vector (`modalities`) is copied with scores of its
    own, as attention heads are (video from the shots whose video a masked one shares, audio from those whose
    sound it shares); False: one set of scores for the whole vector. Tried on the grid (2026-12-03): a lower
    validation loss in 9 of 12 worlds, the probes no better; not the recipe (bench/WORLDS.md)."""
    copy_mix: int = 1
    """Copy head only: > 1 copies with this many sets of scores, each a softmax over the window, mixed per shot by
    a learnt gate (a softmax over the sets, from the shot's hidden state): one set can pick the shot's scene,
    another the shots with its face or voice anywhere in the window, and the mix weighs them as the shot needs.
    One softmax multiplies what its scores add, so it favours shots alike in every respect; a mix adds them.
    1: one set of scores. Not with copy_per_modality. Tried on the grid (2026-12-04, 4 sets): the same
    validation loss within 0.015, the probes no better (fewer cells above the moving averages); not the recipe
    (bench/WORLDS.md)."""
    copy_norm: str = "softmax"
    """Copy head only: how the copy's scores become weights. "softmax": every shot of the window gets some
    weight. "entmax15": 1.5-entmax (Peters, Niculae & Martins 2019; the `entmax` package), which gives exact
    zeros, so a copy can keep a few shots (its scene, its look-alikes) without a tail over the rest of the
    window; the wide copy is the same map at temperature copy_wide. Both in training and served. Tried on the
    grid (2026-12-04, 5 seeds): 2 cells clearly better than the softmax and 2 worse, and the trained copy stayed
    about as spread; not the recipe (bench/WORLDS.md)."""
    modalities: list = field(default_factory=list)
    """The fused vector's modality slices, [start, end) each, tiling [0, fused_dim): from the dataset
    (`mediafm train` fills it), used by copy_per_modality."""
    sharp_span: int = 0
    """Copy head only: the served sharp copy reaches at most this many shots either side; 0 = the whole
    window. Training fits the sharp copy over the whole window (the loss, the validation loss); served, the
    same scores are cut to this band, so a shot's own copy stays with the shots around it instead of a
    look-alike scene further off. Used at inference only, like copy_span."""

    @property
    def widens(self) -> bool:
        """The served output is the sharp copy widened (MediaFMEncoder.served_copy): a copy head with copy_wide."""
        return self.head == "copy" and self.copy_wide > 0

    def __post_init__(self) -> None:
        for name in ("fused_dim", "title_dim", "hidden", "n_layers", "n_heads", "mlp_ratio", "max_shots"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MediaFMConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.hidden % self.n_heads:
            raise ValueError(f"MediaFMConfig.hidden={self.hidden} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MediaFMConfig.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"MediaFMConfig.mask_rate must be in (0, 1), got {self.mask_rate}")
        if self.head not in HEADS:
            raise ValueError(f"MediaFMConfig.head={self.head!r}; choose one of {', '.join(HEADS)}")
        if self.copy_wide < 0.0:
            raise ValueError(f"MediaFMConfig.copy_wide={self.copy_wide}: a temperature > 0, or 0 for none")
        for name in ("copy_span", "sharp_span"):
            if getattr(self, name) < 0:
                raise ValueError(f"MediaFMConfig.{name}={getattr(self, name)}: shots either side (> 0), or 0 for "
                                 "the whole window")
        self.modalities = [[int(lo), int(hi)] for lo, hi in self.modalities]
        if self.copy_mix < 1:
            raise ValueError(f"MediaFMConfig.copy_mix={self.copy_mix}: the number of score sets the copy mixes (>= 1)")
        if self.copy_mix > 1 and (self.head != "copy" or self.copy_per_modality):
            raise ValueError(f"MediaFMConfig.copy_mix={self.copy_mix} needs head='copy' without copy_per_modality "
                             f"(got head={self.head!r}, copy_per_modality={self.copy_per_modality})")
        if self.copy_norm not in COPY_NORMS:
            raise ValueError(f"MediaFMConfig.copy_norm={self.copy_norm!r}; choose one of {', '.join(COPY_NORMS)}")
        if self.copy_norm != "softmax" and self.head != "copy":
            raise ValueError(f"MediaFMConfig.copy_norm={self.copy_norm!r} needs head='copy', got head={self.head!r}")
        if self.copy_per_modality:
            if self.head != "copy":
                raise ValueError(f"MediaFMConfig.copy_per_modality needs head='copy', got head={self.head!r}")
            starts, ends = [lo for lo, _ in self.modalities], [hi for _, hi in self.modalities]
            if not starts or starts != [0, *ends[:-1]] or ends[-1] != self.fused_dim or any(
                    lo >= hi for lo, hi in self.modalities):
                raise ValueError(f"MediaFMConfig.modalities={self.modalities} must tile [0, fused_dim="
                                 f"{self.fused_dim}) in order for copy_per_modality; the dataset's meta.json has them")
        if not (0.0 <= self.mask_keep and 0.0 <= self.mask_random and self.mask_keep + self.mask_random < 1.0):
            raise ValueError(f"MediaFMConfig.mask_keep={self.mask_keep} and mask_random={self.mask_random} must be "
                             ">= 0 with a sum below 1")

    def to_dict(self) -> dict:
        return asdict(self)


# Named sizes. `base` is BERT-base (the source does not publish its sizes).
# Every named size uses the copy head, served as its sharp copy within 8 shots either side beside a wide copy at
# temperature 4 within 16, what bench/worlds.py's grid chose (README, "A grid of worlds", and bench/WORLDS.md;
# `tiny` on all 9 worlds x 3 seeds, `small` on all 9, 1-2 seeds); `--head projection` trains the source's,
# `--copy_wide 0` publishes the sharp copy alone, `--copy_span 0` / `--sharp_span 0` let the wide / sharp copy
# reach over the whole window (`--copy_wide 0 --sharp_span 0`: what models exported before 2026-12-01 serve).
COPY_HEAD = dict(head="copy", copy_wide=4.0, copy_span=16, sharp_span=8)
CONFIGS: dict[str, dict] = {
    "tiny": dict(hidden=64, n_layers=2, n_heads=4, max_shots=64, dropout=0.0, **COPY_HEAD),
    "small": dict(hidden=256, n_layers=4, n_heads=4, max_shots=512, dropout=0.1, **COPY_HEAD),
    "base": dict(hidden=768, n_layers=12, n_heads=12, max_shots=512, dropout=0.1, **COPY_HEAD),
}


class SelfAttention(nn.Module):
    def __init__(self, cfg: MediaFMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=-1)
        # (B, T, H) -> (B, heads, T, H/heads)
        q, k, v = (t.view(B, T, self.n_heads, H // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # attn_mask None lets SDPA pick the flash kernel (full windows, the common case).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: MediaFMConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.hidden, cfg.mlp_ratio * cfg.hidden)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: MediaFMConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop(self.attn(self.ln1(x), attn_mask))
            return x + self.drop(self.mlp(self.ln2(x)))
        x = self.ln1(x + self.drop(self.attn(x, attn_mask)))
        return self.ln2(x + self.drop(self.mlp(x)))


def copy_weights(norm: str):
    """The map from a copy's scores to its weights over the last axis (MediaFMConfig.copy_norm), chosen once per
    model: a missing `entmax` package is an error when a model that needs it is built, not at its first pass."""
    if norm == "entmax15":
        from entmax import entmax15

        return partial(entmax15, dim=-1)
    return partial(torch.softmax, dim=-1)


class MediaFMEncoder(nn.Module):
    """The contextual shot encoder. Served by Triton; wrapped by MaskedShotModel."""

    def __init__(self, cfg: MediaFMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.copy_weights = copy_weights(cfg.copy_norm)
        self.in_proj = nn.Linear(cfg.fused_dim, cfg.hidden)
        self.title_proj = nn.Linear(cfg.title_dim, cfg.hidden)
        self.cls = nn.Parameter(torch.zeros(cfg.hidden))
        self.pos = nn.Embedding(cfg.max_shots + N_SPECIAL, cfg.hidden)
        self.emb_norm = nn.LayerNorm(cfg.hidden)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden) if cfg.norm_first else nn.Identity()
        if cfg.head == "copy":  # one (query, key) per copied slice: the whole vector, or each modality
            self.copy_slices = cfg.modalities if cfg.copy_per_modality else [[0, cfg.fused_dim]]
            n_scores = len(self.copy_slices) * cfg.copy_mix
            self.copy_q = nn.Linear(cfg.hidden, cfg.hidden * n_scores)
            self.copy_k = nn.Linear(cfg.hidden, cfg.hidden * n_scores)
            if cfg.copy_mix > 1:  # zero at start: an even mix of the score sets
                self.copy_gate = nn.Linear(cfg.hidden, cfg.copy_mix)
        else:
            self.out_proj = nn.Linear(cfg.hidden, cfg.fused_dim)
        self.apply(self._init)
        if cfg.head == "copy" and cfg.copy_mix > 1:
            nn.init.zeros_(self.copy_gate.weight)
        # Learned positions, initialised sinusoidally (Vaswani et al. 2017) at the scale of the
        # other embeddings: a [MASK] token's query is the same at every position, so only its
        # position tells it which scene it is in; random positions leave the model stuck at the
        # global mean for hundreds of steps, sinusoidal ones give locality from step one.
        with torch.no_grad():
            self.pos.weight.copy_(0.02 * math.sqrt(2) * sinusoidal(cfg.max_shots + N_SPECIAL, cfg.hidden))
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layers) so depth does not blow up the stream.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") and ".blocks." in f".{name}":
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(
        self, shots: torch.Tensor, title: torch.Tensor, lengths: torch.Tensor | None = None, *, wide: bool = True,
        values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """shots (B, T, fused_dim), title (B, title_dim), lengths (B,) real shots per row.

        Returns (hidden (B, T, H), output (B, T, fused_dim)) for the T shot
        positions; [CLS] and [GLOBAL] are dropped (they are inputs, not shots).
        Padding positions (>= length) hold values that mean nothing.
        wide=False: the copy head's sharp copy alone over the whole window, as trained, even with copy_wide
        or sharp_span set.
        values (B, T, fused_dim): what the copy head mixes, if not the shots the transformer sees (training with
        partial views that are not copied: MaskedShotModel.forward).
        """
        B, T, D = shots.shape
        assert D == self.cfg.fused_dim, f"shots have dim {D}, model expects fused_dim={self.cfg.fused_dim}"
        assert T <= self.cfg.max_shots, f"{T} shots > max_shots={self.cfg.max_shots}; cut into windows"
        x = self.in_proj(shots)  # (B, T, H)
        special = torch.stack([self.cls.expand(B, -1), self.title_proj(title)], dim=1)  # (B, 2, H)
        x = torch.cat([special.to(x.dtype), x], dim=1)  # (B, T+2, H)
        x = x + self.pos.weight[: T + N_SPECIAL]
        x = self.emb_drop(self.emb_norm(x))
        attn_mask = real = None
        if lengths is not None and bool((lengths < T).any()):
            real = torch.arange(T, device=shots.device)[None, :] < lengths[:, None]  # (B, T)
            keep = F.pad(real, (N_SPECIAL, 0), value=True)  # specials always attended
            attn_mask = keep[:, None, None, :]  # (B, 1, 1, T+2): keys a query may look at
        for block in self.blocks:
            x = block(x, attn_mask)
        hidden = self.final_norm(x)[:, N_SPECIAL:]  # (B, T, H)
        if self.cfg.head == "projection":
            return hidden, self.out_proj(hidden)
        # copy head: each shot's output is a mean of the window's input shots, weighted by a learnt
        # attention over them; it cannot leave fused space, so what the shots carry survives.
        copied = shots if values is None else values
        if not wide:
            return hidden, self._copy(hidden, copied, real, 1.0)
        return hidden, self.served_copy(hidden, copied, real)

    def served_copy(self, hidden: torch.Tensor, shots: torch.Tensor, real: torch.Tensor | None = None, *,
                    trained: torch.Tensor | None = None) -> torch.Tensor:
        """The served output of a copy head from a pass's hidden states: its sharp copy within sharp_span
        (or the window); with copy_wide, the mean of that unit sharp copy and the unit copy at temperature
        copy_wide (the same scores, flatter: what the sharp copy picks, spread over the shots within
        copy_span, or the window). real (B, T): real shots, as forward's lengths. trained: the same pass's
        sharp copy over the whole window (forward with wide=False), if the caller has it: not made again
        where it is the served one (sharp_span 0)."""
        if trained is not None and not self.cfg.sharp_span:
            sharp = trained
        else:
            sharp = self._copy(hidden, shots, real, 1.0, span=self.cfg.sharp_span)
        if not self.cfg.widens:
            return sharp
        broad = self._copy(hidden, shots, real, self.cfg.copy_wide, span=self.cfg.copy_span)
        return (F.normalize(sharp, dim=-1) + F.normalize(broad, dim=-1)) / 2

    def _copy(self, hidden: torch.Tensor, shots: torch.Tensor, real: torch.Tensor | None,
              temperature: float, *, span: int = 0) -> torch.Tensor:
        B, T, H = hidden.shape
        M = len(self.copy_slices) * self.cfg.copy_mix  # (B, M, T, H): one query and key per copied slice or score set
        q = self.copy_q(hidden).float().view(B, T, M, H).transpose(1, 2)  # float32 scores under autocast too
        k = self.copy_k(hidden).float().view(B, T, M, H).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / (math.sqrt(H) * temperature)  # (B, M, T, T)
        if span:  # shots farther than span: out of reach (finite, so a padding row that sees none stays a number)
            pos = torch.arange(T, device=scores.device)
            scores = scores.masked_fill((pos[:, None] - pos[None, :]).abs() > span, -1e9)
        if real is not None:
            scores = scores.masked_fill(~real[:, None, None, :], float("-inf"))
        weights = self.copy_weights(scores)
        if self.cfg.copy_mix > 1:  # (B, M, T, T) -> (B, 1, T, T): each shot's gate mixes its M distributions
            gate = torch.softmax(self.copy_gate(hidden).float(), dim=-1)  # (B, T, M)
            weights = (weights * gate.transpose(1, 2)[..., None]).sum(1, keepdim=True)
            M = 1
        weights = weights.to(shots.dtype)
        if M == 1:
            return weights[:, 0] @ shots
        return torch.cat([weights[:, m] @ shots[..., lo:hi] for m, (lo, hi) in enumerate(self.copy_slices)], dim=-1)


def sinusoidal(n: int, dim: int) -> torch.Tensor:
    """(n, dim) sin/cos position table of the original Transformer."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


def mask_positions(lengths: torch.Tensor, T: int, rate: float, generator: torch.Generator | None = None, *,
                   max_span: int = 1) -> torch.Tensor:
    """Choose which shots to mask: (B, T) bool.

    Per row, k = max(1, floor(rate * length + 0.5)) real shots (round half up,
    at least one). max_span 1 (the source): chosen uniformly without
    replacement. max_span > 1: contiguous spans as in SpanBERT (Joshi et al.
    2020, section 3.1), lengths ~ Geometric(SPAN_P) clipped to max_span
    (mean 3.8 at 10), each at a uniform start, until k shots are masked (the
    last span cut to the budget; spans may touch or overlap). Padding is never
    masked; [CLS]/[GLOBAL] are not in this tensor at all.
    """
    B = lengths.shape[0]
    k = torch.clamp(torch.floor(rate * lengths.float() + 0.5), min=1).long()  # (B,)
    k = torch.minimum(k, lengths)
    if max_span > 1:
        return _mask_spans(lengths, T, k, max_span, generator)
    scores = torch.rand(B, T, generator=generator, device=lengths.device)
    pad = torch.arange(T, device=lengths.device)[None, :] >= lengths[:, None]
    scores = scores.masked_fill(pad, 2.0)  # padding sorts last
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < k[:, None]


SPAN_P = 0.2  # SpanBERT's geometric parameter for span lengths


def _mask_spans(lengths: torch.Tensor, T: int, k: torch.Tensor, max_span: int,
                generator: torch.Generator | None) -> torch.Tensor:
    """mask_positions with max_span > 1: k[b] shots of row b in spans. Per span one draw of two uniforms (its
    length, its start); the row is a bytearray so that a span costs no tensor op (a training step draws ~27 per
    512-shot window)."""
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    log_q = math.log(1 - SPAN_P)
    for b, (n, need) in enumerate(zip(lengths.tolist(), k.tolist(), strict=True)):
        row = bytearray(n)
        while need > 0:
            u_len, u_start = torch.rand(2, generator=generator).tolist()
            span = min(max_span, n, 1 + int(math.log(max(u_len, 1e-12)) / log_q))
            start = min(int(u_start * (n - span + 1)), n - span)
            for i in range(start, start + span):
                if need and not row[i]:
                    row[i], need = 1, need - 1
        mask[b, :n] = torch.frombuffer(row, dtype=torch.bool) if n else False
    return mask.to(lengths.device)


class MaskedShotModel(nn.Module):
    """Masked Shot Modeling: replace 20% of shots by [MASK], predict the originals."""

    def __init__(self, cfg: MediaFMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = MediaFMEncoder(cfg)
        # [MASK] lives in input (fused) space: a masked shot is a learned vector
        # the encoder sees like any other shot.
        self.mask_token = nn.Parameter(torch.randn(cfg.fused_dim) * 0.02)

    def forward(
        self,
        shots: torch.Tensor,
        title: torch.Tensor,
        lengths: torch.Tensor,
        mask: torch.Tensor | None = None,
        view: torch.Tensor | None = None,
        *,
        view_copied: bool = True,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (prediction (B, T, fused_dim), loss).

        mask (B, T) bool selects the shots to hide; None means no masking and no
        loss (inference). loss = mean over masked shots of 1 - cos(pred, shot).
        view (B, T, fused_dim) bool: features of masked shots left as they are
        (a partial view: trainer/train.py partial_views); the loss still scores
        the whole shot. view_copied=False: the transformer sees the views, but
        a copy head mixes [MASK] at their positions, as for a whole mask, so a
        view steers the copy and is never copied into its own prediction.
        noise (B, T, fused_dim), a copy head only (trainer/train.py value_noise): the
        prediction at visible shots is the copy, with the same scores, of what it
        mixes plus noise; masked shots' predictions and the loss are unchanged.
        """
        if mask is None:
            return self.encoder(shots, title, lengths)[1], None
        x = shots
        keep, rand = self.cfg.mask_keep, self.cfg.mask_random
        if (keep or rand) and self.training:  # BERT's rule: some chosen shots stay visible or turn into another
            # shot. In training only: a validation loss with shots left visible was random (the global RNG) and
            # let a copy head copy the answer, so it was not comparable with the baselines, which hide them all
            u = torch.rand(mask.shape, device=shots.device)
            real = (torch.arange(shots.shape[1], device=shots.device)[None, :] < lengths[:, None]).flatten()
            pool = shots.flatten(0, 1)[real]  # every real shot of the batch
            other = pool[torch.randint(len(pool), mask.shape, device=shots.device)]
            x = torch.where((mask & (u >= 1 - keep - rand) & (u < 1 - keep))[..., None], other, x)
            mask_with_token = mask & (u < 1 - keep - rand)
        else:
            mask_with_token = mask
        masked = torch.where(mask_with_token[..., None], self.mask_token.to(shots.dtype), x)
        seen, values = masked, None
        if view is not None:  # a partial view: those features as they are (view holds masked shots' only)
            seen = torch.where(view, x, masked)
            values = None if view_copied else masked
        hidden, pred = self.encoder(seen, title, lengths, wide=False, values=values)  # the loss fits the sharp copy
        if noise is not None:  # visible shots: the same scores over noisy inputs, so copying itself is not free
            assert self.cfg.head == "copy", "noise is what a copy head mixes; a projection head has none"
            real = torch.arange(shots.shape[1], device=shots.device)[None, :] < lengths[:, None]
            mixed = (seen if values is None else values) + noise.to(shots.dtype)
            pred = torch.where(mask[..., None], pred, self.encoder._copy(hidden, mixed, real, 1.0))
        loss = msm_loss(pred, shots, mask)
        return pred, loss


def msm_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cosine distance on masked positions only: mean(1 - cos) over mask."""
    cos = F.cosine_similarity(pred[mask].float(), target[mask].float(), dim=-1)
    return (1.0 - cos).mean()
