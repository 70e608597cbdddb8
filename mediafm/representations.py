"""What is published per shot: one definition, used by the pipeline (streams/runtime.py), the evaluation
(trainer/evaluate.py) and the tests that compare the two.

    hidden          MediaFM's last hidden state of the shot in its window (with the copy head, the state that
                    routes the copy: little of the shot itself)
    output          the model's output for the shot, back in fused space (the fused width); with the copy head
                    and copy_wide (every named size), the mean of its sharp copy within sharp_span shots and its
                    wide copy within copy_span shots (mediafm/model.py). The default: what bench/worlds.py's
                    grid of worlds supports (issue 17, README "Evaluation").
    context+input   per shot, (unit(output) + unit(fused input)) / 2: the shot in context beside the shot as it
                    is, at the fused width (the default before the wide copy had a span).
"""

from __future__ import annotations

import numpy as np

from mediafm.fusion import unit

REPRESENTATIONS = ("context+input", "output", "hidden")
DEFAULT = "output"


def served_output(representation: str) -> str:
    """The served MediaFM model's output tensor a representation is made from."""
    check(representation)
    return "HIDDEN" if representation == "hidden" else "OUTPUT"


def check(representation: str) -> str:
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation {representation!r}; choose one of {', '.join(REPRESENTATIONS)}")
    return representation


def context_plus_input(output: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """(unit(output) + unit(fused)) / 2 per shot (rows): the shot in context and as it is, at the fused width."""
    return ((unit(output.astype(np.float32)) + unit(fused.astype(np.float32))) / 2).astype(np.float32)


def uses_input(representation: str) -> bool:
    """Whether the published vectors are made from the shots' fused input vectors too, not the served output alone."""
    return check(representation) == "context+input"


def published(representation: str, served: np.ndarray, fused: np.ndarray | None) -> np.ndarray:
    """The published vectors of shots (rows) from what the served model returned for them
    (served_output(representation)) and their fused input vectors (None where not uses_input(representation))."""
    if uses_input(representation):
        if fused is None:
            raise ValueError(f"representation {representation!r} is made from the fused input vectors too")
        return context_plus_input(served, fused)
    return served
