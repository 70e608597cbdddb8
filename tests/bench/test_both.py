"""bench/both.py: the no-learning rows that carry a clip's own shots and its neighbourhood, scored as the grid's."""

import numpy as np

from mediafm.dataset import Dataset
from mediafm.fusion import Layout, unit
from mediafm.synth import write_corpus
from trainer.evaluate import clip_features, evaluation_clips
from trainer.probes import TASKS

LAYOUT = Layout("test", video=16, audio=16, text=16, title=16)


def test_both_rows_are_the_clip_and_its_neighbourhood_untouched_side_by_side_and_as_unit_vectors_halved(
        bench_script, tmp_path):
    both = bench_script("both")
    own, around = np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[0.0, 2.0], [0.0, -5.0]])
    np.save(tmp_path / "concat.npy", own)
    np.save(tmp_path / "avg-k8.npy", around)
    rows = both.both_features(tmp_path)
    assert rows["both:side-by-side"].tolist() == [[3, 4, 0, 2], [1, 0, 0, -5]]
    assert np.allclose(rows["both:unit-mean"], [[0.3, 0.9], [0.5, -0.5]])
    assert np.allclose(rows["both:unit-mean"], (unit(own) + unit(around)) / 2)


def test_a_run_is_scored_on_its_test_clips_with_the_grids_probes_and_a_stale_feature_store_is_refused(
        bench_script, tmp_path):
    both = bench_script("both")
    work = tmp_path / "w" / "seed1"
    data = write_corpus(work / "data", n_titles=40, layout=LAYOUT, seed=1, shots=(30, 60), test_fraction=0.5)
    ds = Dataset(data)
    clips = evaluation_clips(ds)
    clip_features(ds, clips, {}, store=work / "report" / "features", progress=False)  # as mediafm evaluate stores them

    scores = both.score_run(work, folds=3, seeds=1)
    assert set(scores) == set(both.ROWS)
    for row in both.ROWS:  # every task scored, each a real number in its metric's range
        assert set(scores[row]) == {t.name for t in TASKS}, scores[row]
        assert all(-1 <= v <= 1 and np.isfinite(v) for v in scores[row].values()), scores[row]

    np.save(work / "report" / "features" / "concat.npy", np.zeros((clips.num_rows - 1, 48), np.float32))
    try:
        both.score_run(work, folds=3, seeds=1)
    except SystemExit as e:
        assert "stored clip features" in str(e) and "evaluate the run again" in str(e)
    else:
        raise AssertionError("a feature store that does not match the test clips was scored")


def test_the_grid_summary_counts_extra_rows_as_it_counts_a_variants(bench_script):
    worlds = bench_script("worlds")
    tasks = ("ad_relevancy", "popularity", "tone", "genre", "retrieval")
    base = {"concat": {t: 0.5 for t in tasks}, "avg-k3": {t: 0.4 for t in tasks}, "avg-k8": {t: 0.4 for t in tasks},
            "clip+next12": {t: 0.4 for t in tasks}}
    seeds = [{"probes": {**base, "both:side-by-side": {t: 0.6 - 0.01 * s for t in tasks},
                         "m:context-output": {t: 0.6 - 0.01 * s for t in tasks}}, "losses": {}} for s in range(3)]
    lines = worlds.grid_summary({"w": seeds}, ["m"], extra=("both:side-by-side",))
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[2:]}
    assert set(rows) == {"avg-k3", "avg-k8", "clip+next12", "m:context-output", "both:side-by-side"}
    assert rows["both:side-by-side"].split(" | ")[1:] == rows["m:context-output"].split(" | ")[1:]
    cells = [c.strip() for c in rows["both:side-by-side"].strip("|").split("|")]
    assert cells[1:6] == ["5", "5", "0", "5", "5"]  # 5 cells, all above concat and every baseline on the mean
    assert cells[-1] == "5 / 0"  # and clearly above all four in each, by the paired test over 3 seeds
    # rows no run has are left out, not counted as clearly below nothing (a false point at the plot's corner)
    assert worlds.summary_rows({"w": seeds}, ["m", "gone"], ("both:side-by-side", "both:unit-mean")) == [
        "avg-k3", "avg-k8", "clip+next12", "m:context-output", "both:side-by-side"]


def test_the_trade_off_counts_each_rows_cells_clearly_below_concat_and_avg_k8_and_draws_them(bench_script, tmp_path):
    both = bench_script("both")
    tasks = ("ad_relevancy", "popularity", "tone", "genre", "retrieval")
    base = {"concat": {t: 0.5 for t in tasks}, "avg-k3": {t: 0.4 for t in tasks},
            "avg-k8": {**{t: 0.4 for t in tasks}, "genre": 0.7}, "clip+next12": {t: 0.4 for t in tasks}}
    # 'own' keeps the clip's detail but not its scenes': tone steadily below concat (still above avg-k8), genre
    # steadily below avg-k8; 'around' is above both in every cell; avg-k8 is below concat on all but genre
    seeds = [{"probes": {**base,
                         "own": {**{t: 0.6 for t in tasks}, "tone": 0.45 - 0.01 * s, "genre": 0.6 - 0.01 * s},
                         "around": {**{t: 0.6 for t in tasks}, "genre": 0.71 + 0.01 * s}}} for s in range(3)]
    counts = both.trade_off({"w": seeds}, ["own", "around", "avg-k8"])
    assert counts == {"own": (1, 1), "around": (0, 0), "avg-k8": (4, 0)}
    both.plot_trade_off(counts, 5, tmp_path / "t.png", "test")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
