"""Window plans: how a title longer than one window is covered by MediaFM passes.

The reference is a window centred on every shot (one pass per shot: n passes).
A plan with stride s covers the title with windows starting every s shots and
takes each shot's output from the window in which it sits most centrally, so
every shot keeps at least (size - s) / 2 shots of context on each side where
the title allows. Cost: about n / s passes instead of n.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start: int
    end: int  # exclusive


def plan(n: int, *, size: int, stride: int) -> tuple[list[Window], np.ndarray]:
    """Windows covering shots [0, n) and, per shot, the index of the window its output comes from."""
    if n <= 0:
        raise ValueError(f"a title needs at least one shot, got n={n}")
    if not 0 < stride <= size:
        raise ValueError(f"stride={stride} must be in (0, size={size}]")
    if n <= size:
        return [Window(0, n)], np.zeros(n, dtype=np.int64)
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)  # the last window ends exactly at the title's end
    windows = [Window(s, s + size) for s in starts]
    shots = np.arange(n)[:, None]
    centre = np.array([(w.start + w.end - 1) / 2 for w in windows])[None, :]
    inside = (shots >= np.array(starts)[None, :]) & (shots < np.array(starts)[None, :] + size)
    dist = np.where(inside, np.abs(shots - centre), np.inf)
    return windows, dist.argmin(axis=1)


def centred(n: int, *, size: int) -> list[Window]:
    """The reference plan: for shot i, the window of `size` shots centred on i (clipped to the title)."""
    if n <= size:
        return [Window(0, n)] * n
    out = []
    for i in range(n):
        start = min(max(0, i - size // 2), n - size)
        out.append(Window(start, start + size))
    return out
