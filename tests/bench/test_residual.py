"""bench/residual.py: a context plus the clip's own residual in the residuals' strong directions, no learning."""

import numpy as np

from mediafm.dataset import Dataset
from mediafm.fusion import Layout
from mediafm.synth import write_corpus
from trainer.evaluate import window_mean

LAYOUT = Layout("test", video=16, audio=16, text=16, title=16)


def test_the_threshold_keeps_strong_directions_and_drops_white_noise(bench_script):
    residual = bench_script("residual")
    rng = np.random.default_rng(0)
    n, d = 3000, 64
    noise = rng.normal(size=(n, d))
    signal = rng.normal(size=(n, 3)) @ rng.normal(size=(3, d)) * 0.6  # 3 directions, each well above the noise
    for x, rank in ((noise, 0), (noise + signal, 3)):
        s = np.linalg.svd(x, compute_uv=False)
        assert residual.gavish_donoho_rank(s, x.shape) == rank
    # a direction far below the noise is not kept: the threshold is a noise level, not a share of the variance
    weak = rng.normal(size=(n, 1)) @ rng.normal(size=(1, d)) * 0.05
    assert residual.gavish_donoho_rank(np.linalg.svd(noise + signal + weak, compute_uv=False), (n, d)) == 3


def test_residuals_are_each_shot_less_the_mean_of_avg_k8s_window(bench_script):
    residual = bench_script("residual")
    fused = np.random.default_rng(1).normal(size=(23, 5)).astype(np.float32)
    got = residual.neighbourhood_residuals(fused)
    want = np.stack([fused[i] - window_mean(fused, i, i, 8, 8) for i in range(len(fused))])
    assert np.allclose(got, want, atol=1e-5)


def test_denoised_is_the_context_with_nothing_kept_and_the_clip_with_everything(bench_script):
    residual = bench_script("residual")
    own, around = np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[0.0, 2.0], [0.0, -5.0]])
    assert np.allclose(residual.denoised(own, around, np.zeros((2, 2))), around)
    assert np.allclose(residual.denoised(own, around, np.eye(2)), own)
    assert np.allclose(residual.denoised(own, around, np.diag([1.0, 0.0])), [[3, 2], [1, -5]])


def test_a_corpus_is_fitted_on_its_training_titles_and_scored_with_the_grids_probes(bench_script, tmp_path):
    residual = bench_script("residual")
    # little noise: on 920 training shots the default noise (1.5) leaves no direction above the threshold
    data = write_corpus(tmp_path / "data", n_titles=40, layout=LAYOUT, seed=1, shots=(30, 60), test_fraction=0.5,
                        noise=0.1)
    ds = Dataset(data)
    projection, k = residual.fit_projection(ds)
    assert 0 < k < ds.meta.fused_dim  # scenes and cast recur in a few directions; the noise is spread over all
    assert np.allclose(projection, projection.T, atol=1e-8) and np.allclose(projection @ projection, projection, atol=1e-8)
    assert round(float(np.trace(projection))) == k
    # only the training titles: the evaluation titles' residuals give another projection
    assert not np.allclose(residual.fit_projection(ds, "test")[0], projection)

    scores, kept = residual.score_run(data, folds=3, seeds=1)
    assert kept == k
    assert set(scores) == {"concat", "avg-k3", "avg-k8", "clip+next12", residual.ROW}
    for row, tasks in scores.items():  # every task scored, each a real number in its metric's range
        assert len(tasks) == 5 and all(-1 <= v <= 1 and np.isfinite(v) for v in tasks.values()), (row, tasks)
