"""bench/floor.py, the noise floor of masked-shot loss per world: it scores the corpus the grid trains on, and its
oracle is what it says (no loss without noise, a floor under the context-free predictors with it)."""

import numpy as np

from mediafm.dataset import Dataset
from mediafm.fusion import Layout
from mediafm.synth import World, write_corpus

LAYOUT = Layout("floor-16", video=16, audio=16, text=16, title=16)


def test_draws_are_the_titles_of_the_corpus_the_grid_writes(tmp_path, bench_script):
    """The floor is only about the grid's corpora if it draws the same titles: write_corpus with a world's knobs,
    read back, equals floor.draw at the same seed and noise, title by title; the noise-free draw has the same
    scenes and modalities and differs only by the noise."""
    floor = bench_script("floor")
    knobs = {"scene_shots": [2, 6], "dialogue_rate": 0.4}
    write_corpus(tmp_path / "d", n_titles=8, layout=LAYOUT, seed=2, shots=(20, 60), noise=1.5, world=knobs)
    written = {t.info.title_id: t.fused for t in Dataset(tmp_path / "d").iter_titles()}
    noisy = floor.draw(World(LAYOUT, seed=2, **knobs), 8, (20, 60), 2, 1.5)
    clean = floor.draw(World(LAYOUT, seed=2, **knobs), 8, (20, 60), 2, 0.0)
    assert len(written) == 8
    for i, (t, c) in enumerate(zip(noisy, clean, strict=True)):
        np.testing.assert_allclose(t.fused, written[f"synth-2-{i:06d}"], atol=1e-6)
        assert (t.scene == c.scene).all() and (t.present == c.present).all()
        assert not np.allclose(t.fused, c.fused)


def test_the_oracle_is_exact_without_noise_and_a_floor_with_it(bench_script):
    """No noise: the oracle predicts every masked shot. With noise: it is below the context-free predictors and
    the copies (which average noisy shots), and the copies below the title mean (they average the right ones)."""
    floor = bench_script("floor")
    slices = list(LAYOUT.slices.values())
    clean = floor.draw(World(LAYOUT, seed=1), 30, (40, 80), 1, 0.0)
    assert floor.losses(clean, clean, slices, seed=1)["oracle"] < 1e-3

    floors = {}
    for noise in (0.5, 3.0):
        got = floor.losses(floor.draw(World(LAYOUT, seed=1), 30, (40, 80), 1, noise), clean, slices, seed=1)
        assert got["oracle"] < got["copies"] < got["title_mean"] and got["oracle"] < got["neighbours"], got
        floors[noise] = got["oracle"] / got["title_mean"]
    assert floors[0.5] < floors[3.0], floors  # more noise of its own: less of a shot is predictable
