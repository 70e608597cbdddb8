"""mediafm.windows: plans cover every shot and give each one central context."""

import numpy as np
import pytest

from mediafm.windows import centred, plan


@pytest.mark.parametrize("n", [1, 5, 512, 513, 700, 1999])
def test_plan_covers_every_shot_from_a_window_that_contains_it(n):
    windows, owner = plan(n, size=512, stride=256)
    assert windows[0].start == 0 and windows[-1].end == n
    for i in range(n):
        w = windows[owner[i]]
        assert w.start <= i < w.end
    assert all(w.end - w.start == min(n, 512) for w in windows)


def test_each_shot_gets_context_on_both_sides_where_the_title_allows():
    n, size, stride = 2000, 512, 256
    windows, owner = plan(n, size=size, stride=stride)
    left = np.array([i - windows[owner[i]].start for i in range(n)])
    right = np.array([windows[owner[i]].end - 1 - i for i in range(n)])
    inner = slice(size // 2, n - size // 2)  # shots far from the title's edges
    assert min(left[inner].min(), right[inner].min()) >= (size - stride) // 2 - 1
    assert len(windows) == int(np.ceil((n - size) / stride)) + 1  # about n / stride passes, not n


def test_reference_is_centred_and_clipped():
    ref = centred(1000, size=512)
    assert len(ref) == 1000
    assert (ref[500].start, ref[500].end) == (244, 756)
    assert (ref[0].start, ref[999].end) == (0, 1000)


def test_bad_arguments():
    with pytest.raises(ValueError, match="stride=0"):
        plan(10, size=4, stride=0)
    with pytest.raises(ValueError, match="at least one shot"):
        plan(0, size=4, stride=2)
