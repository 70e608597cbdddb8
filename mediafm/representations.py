"""Representations of a shot in context beyond what the served model returns: one definition, used by the
evaluation (trainer/evaluate.py) and its tests.

    context+input   per shot, (unit(output) + unit(fused input)) / 2: the shot in context beside the shot as it
                    is, at the fused width. In a grid of 9 stand-in worlds (issue 17) the only MediaFM row above
                    `concat` on average (35 of 45 cells, `output` 31). The pipeline does not publish it yet: it
                    publishes `output` or `hidden` (the embedding_representation setting).
"""

from __future__ import annotations

import numpy as np

from mediafm.fusion import unit


def context_plus_input(output: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """(unit(output) + unit(fused)) / 2 per shot (rows): the shot in context and as it is, at the fused width."""
    return ((unit(output.astype(np.float32)) + unit(fused.astype(np.float32))) / 2).astype(np.float32)
