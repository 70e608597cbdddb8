"""mediafm.fusion: the one definition of fusion."""

import numpy as np
import pytest

from mediafm.fusion import Layout, fuse
from mediafm.profiles import PRODUCTION


def _parts(n, layout=PRODUCTION.layout, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, d)).astype(np.float32) for d in (layout.video, layout.audio, layout.text)]


def test_production_layout_is_the_sources_2304():
    assert PRODUCTION.layout.fused_dim == 2304
    assert PRODUCTION.layout.slices == {"video": (0, 768), "audio": (768, 1536), "text": (1536, 2304)}


def test_fuse_is_concatenation_then_unit_norm():
    v, a, t = _parts(4)
    out = fuse(v, a, t, np.ones((4, 3), bool), layout=PRODUCTION.layout)
    cat = np.concatenate([v, a, t], axis=1)
    np.testing.assert_allclose(out, cat / np.linalg.norm(cat, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_absent_modality_is_zeros_whatever_its_input():
    v, a, t = _parts(3)
    t[:] = 1e6  # garbage in an absent slice must not leak
    present = np.array([[1, 1, 0]] * 3, bool)
    out = fuse(v, a, t, present, layout=PRODUCTION.layout)
    assert np.all(out[:, 1536:] == 0)
    cat = np.concatenate([v, a], axis=1)
    np.testing.assert_allclose(out[:, :1536], cat / np.linalg.norm(cat, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    ("shape", r"video embeddings have shape \(2, 5\), expected \(2, 768\)"),
    ("nan", "audio embeddings contain NaN"),
    ("empty", r"shots \[1\] have no modality present"),
])
def test_bad_input_is_named(bad, match):
    v, a, t = _parts(2)
    present = np.ones((2, 3), bool)
    if bad == "shape":
        v = v[:, :5]
    elif bad == "nan":
        a[0, 0] = np.nan
    else:
        present[1] = False
    with pytest.raises(ValueError, match=match):
        fuse(v, a, t, present, layout=PRODUCTION.layout)


@pytest.mark.parametrize("scale", [1e-23, 1e20, 3e38])
def test_a_row_of_tiny_or_huge_values_is_still_a_unit_vector(scale):
    """Its length was taken in float32: squares underflow to 0 near 1e-23 and overflow past 1e19, and the row
    came out all zeros, with no error, where a unit vector was promised."""
    v, a, t = _parts(2)
    v[0] = np.sign(v[0]) * scale
    present = np.array([[1, 0, 0], [1, 1, 1]], bool)
    out = fuse(v, a, t, present, layout=PRODUCTION.layout)
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[0, :768], np.sign(v[0]) / np.sqrt(768), rtol=1e-5)


def test_a_present_modality_of_zeros_alone_is_named():
    """A shot whose only present modality is all zeros has no direction to publish (a producer that sends zeros
    for a modality it lacks): a ValueError (a 400 from Triton, dead-lettered), not a row of zeros."""
    v, a, t = _parts(3)
    v[1] = 0
    present = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0]], bool)
    with pytest.raises(ValueError, match=r"shots \[1\]: every modality marked present is all zeros"):
        fuse(v, a, t, present, layout=PRODUCTION.layout)
    v[2] = 0  # zeros beside another present modality: the row has a direction
    assert np.linalg.norm(fuse(v, a, t, np.array([[1, 0, 0], [1, 1, 0], [1, 1, 0]], bool),
                               layout=PRODUCTION.layout)[2]) == pytest.approx(1.0, rel=1e-5)


def test_other_layouts_tile_their_slices():
    lay = Layout("small", video=3, audio=5, text=2, title=4)
    assert lay.fused_dim == 10 and lay.slices["text"] == (8, 10)
    out = fuse(*_parts(2, lay), np.ones((2, 3), bool), layout=lay)
    assert out.shape == (2, 10)
