"""Fusion: three modality embeddings of a shot -> one unit-norm fused vector.

The one definition of fusion. The Triton `fusion` model, the agents and the
dataset writer all call :func:`fuse`; nobody re-implements it.

As in the source: concatenate video | audio | text in that order, a missing
modality contributing zeros to its slice, then L2-normalise the whole vector.
Balancing the modalities' scales is the encoders' job (each one returns unit
vectors), so fusion stays exactly the source's rule. The layouts of the encoder
profiles are in mediafm/profiles.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODALITIES: tuple[str, ...] = ("video", "audio", "text")


@dataclass(frozen=True)
class Layout:
    """Where each modality sits inside the fused vector, for one encoder profile."""

    name: str
    video: int
    audio: int
    text: int
    title: int
    """Dimension of the title (metadata) embedding, the [GLOBAL] input."""

    def __post_init__(self) -> None:
        for m in (*MODALITIES, "title"):
            if getattr(self, m) <= 0:
                raise ValueError(f"Layout {self.name!r}: {m} dim must be > 0, got {getattr(self, m)}")

    @property
    def dims(self) -> dict[str, int]:
        return {m: getattr(self, m) for m in MODALITIES}

    @property
    def fused_dim(self) -> int:
        return self.video + self.audio + self.text

    @property
    def slices(self) -> dict[str, tuple[int, int]]:
        """[start, end) of each modality, the `modalities` entry of meta.json."""
        out, start = {}, 0
        for m, d in self.dims.items():
            out[m] = (start, start + d)
            start += d
        return out


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def fuse(
    video: np.ndarray,
    audio: np.ndarray,
    text: np.ndarray,
    present: np.ndarray,
    *,
    layout: Layout,
) -> np.ndarray:
    """Fuse a batch of shots.

    video (N, layout.video), audio (N, layout.audio), text (N, layout.text):
    float embeddings; rows of an absent modality may hold anything.
    present (N, 3) bool: which of video/audio/text each shot really has.
    Returns (N, fused_dim) float32, each row of unit L2 norm.
    Raises ValueError naming the input when shapes disagree, values are not
    finite, or a shot has no modality at all (there is nothing to embed).
    """
    parts = {"video": video, "audio": audio, "text": text}
    present = np.asarray(present, dtype=bool)
    n = present.shape[0] if present.ndim == 2 else -1
    if present.ndim != 2 or present.shape[1] != len(MODALITIES):
        raise ValueError(f"present must be (N, 3) bool, got shape {present.shape}")
    out = np.zeros((n, layout.fused_dim), dtype=np.float32)
    for i, (m, (lo, hi)) in enumerate(layout.slices.items()):
        x = np.asarray(parts[m], dtype=np.float32)
        if x.shape != (n, hi - lo):
            raise ValueError(
                f"{m} embeddings have shape {x.shape}, expected ({n}, {hi - lo}) "
                f"for profile {layout.name!r}"
            )
        keep = present[:, i]
        if not np.isfinite(x[keep]).all():
            raise ValueError(f"{m} embeddings contain NaN or inf for present shots")
        out[keep, lo:hi] = x[keep]
    empty = ~present.any(axis=1)
    if empty.any():
        raise ValueError(
            f"shots {np.flatnonzero(empty).tolist()[:10]} have no modality present; "
            "a shot needs at least one of video/audio/text"
        )
    # the length in float64: float32 squares underflow to 0 near 1e-23 and overflow past 1e19, which made a row
    # of zeros (no error) where a unit vector was promised
    norm = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)
    zero = np.flatnonzero(norm[:, 0] == 0)
    if zero.size:
        raise ValueError(
            f"shots {zero.tolist()[:10]}: every modality marked present is all zeros; mark a modality the shot "
            "lacks absent (present=False) rather than sending zeros"
        )
    return (out / norm).astype(np.float32)
