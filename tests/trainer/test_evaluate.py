"""The evaluation: metrics against hand-computed cases, title-level splits, the whole command."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from mediafm.dataset import Dataset
from mediafm.errors import DatasetError, ModelError
from mediafm.fusion import Layout
from mediafm.representations import REPRESENTATIONS, context_plus_input, published, uses_input
from mediafm.synth import write_corpus
from trainer.evaluate import MOVING_AVERAGES, clip_features, evaluate
from trainer.probes import TASKS, kendall_within_titles, macro_ap_present, score, title_folds
from trainer.train import TrainConfig, train

LAYOUT = Layout("test", video=32, audio=32, text=32, title=32)
TASK = {t.name: t for t in TASKS}


def test_kendall_is_computed_within_each_title_then_averaged():
    y = np.array([1, 2, 3, 1, 2, 3, 5.0])
    s = np.array([1, 2, 3, 3, 2, 1, 0.0])
    titles = np.array(["a", "a", "a", "b", "b", "b", "c"])  # c has one clip: no ranking, left out
    assert kendall_within_titles(y, s, titles) == pytest.approx(0.0)  # (+1 + -1) / 2
    assert kendall_within_titles(y[:3], s[:3], titles[:3]) == pytest.approx(1.0)


def test_average_precision_cases():
    # binary: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2
    assert score(TASK["retrieval"], np.array([1, 0, 1, 0.0]), np.array([.9, .8, .7, .1]), np.zeros(4)) == pytest.approx(5 / 6)
    # micro AP over all (clip, tone) pairs: a perfect ranking scores 1
    y = np.array([[1, 0], [0, 1.0]])
    assert score(TASK["tone"], y, np.array([[.9, .1], [.2, .8]]), np.zeros(2)) == pytest.approx(1.0)
    # macro over classes present: class 1 has no positive in this fold and is left out, not scored 0
    y = np.array([[1, 0], [0, 0], [1, 0.0]])
    s = np.array([[.9, .5], [.1, .9], [.8, .1]])
    ap, n = macro_ap_present(y, s)
    assert (ap, n) == (pytest.approx(1.0), 1)


def test_folds_split_by_title_and_never_leak():
    titles = np.repeat([f"t{i}" for i in range(23)], 7)
    folds = title_folds(titles, 10, seed=0)
    seen = []
    for train_idx, test_idx in folds:
        assert set(titles[train_idx]).isdisjoint(titles[test_idx])
        assert len(train_idx) + len(test_idx) == len(titles)
        seen.extend(set(titles[test_idx]))
    assert sorted(seen) == sorted(set(titles)), "each title is tested exactly once"
    assert [t.tolist() for _, t in title_folds(titles, 10, seed=1)] != [t.tolist() for _, t in folds]
    with pytest.raises(ValueError, match="3 evaluation titles cannot make 10 folds"):
        title_folds(np.array(["a", "b", "c"]), 10, seed=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("eval") / "data", n_titles=100, layout=LAYOUT, seed=0, shots=(40, 160),
                        val_fraction=0.05, test_fraction=0.2)


@pytest.mark.slow
def test_trained_model_evaluates_better_than_a_random_one(corpus, tmp_path):
    tc = dict(config="tiny", batch_size=8, eval_every=1000, ckpt_every=1000, lr_adamw=3e-3, val_batches=1)
    train(corpus, tmp_path / "random", TrainConfig(**tc, max_steps=1), quiet=True)
    train(corpus, tmp_path / "trained", TrainConfig(**tc, max_steps=400), quiet=True)
    res = evaluate(corpus, [tmp_path / "random", tmp_path / "trained"], tmp_path / "report", seeds=1, folds=4,
                   progress=False)

    def mean_over_tasks(rep):
        return np.mean([v["mean"] for v in res[rep].values()])

    # What the pipeline publishes (output, the default). With the copy head an untrained model's
    # output is about the mean of its window, itself a moving average: training has to pick the right shots to
    # beat it. (The hidden states route the copy; they are not the shot's content and are not compared.)
    assert mean_over_tasks("trained:context-output") > mean_over_tasks("random:context-output"), json.dumps(res, indent=1)


def test_evaluate_command_end_to_end(corpus, tmp_path):
    train(corpus, tmp_path / "run", TrainConfig(config="tiny", max_steps=3, batch_size=4, eval_every=3, ckpt_every=3,
                                                val_batches=1), quiet=True)
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", "evaluate", "--data", str(corpus), "--run",
                        str(tmp_path / "run"), "--out", str(out), "--seeds", "2", "--folds", "3"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]) == {"video", "audio", "text", "concat", "avg-k3", "avg-k8", "clip+next12", "run:clip",
                                   "run:context", "run:context-output", "run:context+input", "run:sharp+input"}
    for row in res["results"].values():
        assert set(row) == {t.name for t in TASKS}
        assert all(len(v["seeds"]) == 2 and np.isfinite(v["mean"]) for v in row.values())
    ds = Dataset(corpus)
    test_titles = {t.title_id for t in ds.split("test")}
    assert res["n_titles"] == len(test_titles), "only evaluation titles are probed"
    report = (out / "report.md").read_text()
    assert "| run:context |" in report and "±" in report
    for baseline in ("avg-k3", "avg-k8", "clip+next12"):
        assert f"| {baseline} |" in report, f"baseline row {baseline} missing from report.md"
    for png in ("probes.png", "similarity.png", "training-run.png"):
        assert (out / png).stat().st_size > 10_000


@pytest.mark.parametrize("folds, seeds", [(0, 3), (1, 3), (10, 0)])
def test_folds_and_seeds_that_cannot_make_a_probe_are_refused_before_any_work(tmp_path, folds, seeds):
    """--folds 0 was a ZeroDivisionError, --folds 1 a scaler's "0 sample(s)" and --seeds 0 a table of n/a, each
    after every clip was embedded (hours on a catalog). Refused before the dataset is opened (it is not there)."""
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", "evaluate", "--data", str(tmp_path / "nothing"),
                        "--run", str(tmp_path / "run"), "--out", str(tmp_path / "report"), "--folds", str(folds),
                        "--seeds", str(seeds)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"--folds {folds} --seeds {seeds}: a probe needs at least 2 folds" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "report").exists()


@pytest.mark.parametrize("column, value, match", [
    ("tones", [100], r"clip '.*' column 'tones' has classes \[100\] outside 0..99"),
    ("genres", [-1], r"column 'genres' has classes \[-1\] outside 0..10"),
    ("last_shot", 10_000, r"columns 'first_shot'/'last_shot' = \d+..10000 are outside title"),
])
def test_malformed_labels_are_named(corpus, tmp_path, column, value, match):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(corpus, bad)
    t = pq.read_table(bad / "clips.parquet")
    rows = t.to_pylist()
    rows[0][column] = value
    pq.write_table(type(t).from_pylist(rows, schema=t.schema), bad / "clips.parquet")
    with pytest.raises(DatasetError, match=match):
        Dataset(bad).clips()


def test_moving_average_baselines_are_the_mean_of_the_clip_and_its_neighbours(tmp_path):
    """avg-k3 / avg-k8 / clip+next12 against hand-computed means, cut at the title's ends."""
    from mediafm.dataset import DatasetWriter, Meta

    n, D = 20, LAYOUT.fused_dim
    fused = np.zeros((n, D), np.float32)
    fused[:, 0] = np.arange(n)  # shot i carries the value i: a window's mean is the mean of its indices
    fused[:, 1] = 1.0
    w = DatasetWriter(tmp_path / "d", Meta.from_layout(LAYOUT))
    w.add_title(title_id="a", title_embedding=np.ones(LAYOUT.title, np.float32), fused=fused,
                start_s=np.arange(n, dtype=float), end_s=np.arange(n, dtype=float) + 1, split="test", genres=[0])
    w.add_clips([{"clip_id": f"a-{k}", "title_id": "a", "first_shot": f, "last_shot": last, "ad_labels": [0],
                  "popularity": 0.0, "tones": [0], "genres": [0], "clip_worthy": None}
                 for k, (f, last) in enumerate([(5, 7), (1, 2), (15, 18)])])
    ds = Dataset(w.close())
    feats, _ = clip_features(ds, ds.clips(), {}, progress=False)
    assert MOVING_AVERAGES == {"avg-k3": (3, 3), "avg-k8": (8, 8), "clip+next12": (0, 12)}
    expect = {  # clip 5..7, clip 1..2 (cut at shot 0), clip 15..18 (cut at shot 19)
        "concat": [np.mean([5, 6, 7]), 1.5, np.mean([15, 16, 17, 18])],
        "avg-k3": [np.mean(range(2, 11)), np.mean(range(0, 6)), np.mean(range(12, 20))],
        "avg-k8": [np.mean(range(0, 16)), np.mean(range(0, 11)), np.mean(range(7, 20))],
        "clip+next12": [np.mean(range(5, 20)), np.mean(range(1, 15)), np.mean(range(15, 20))],
    }
    for name, values in expect.items():
        assert feats[name][:, 0] == pytest.approx(values), name
        assert feats[name][:, 1] == pytest.approx(1.0), name


def test_context_plus_input_halves_the_sum_of_unit_vectors():
    out = np.array([[3.0, 0, 0], [0, 0, 2.0]])
    fused = np.array([[0, 4.0, 0], [0, 0, 5.0]])
    got = context_plus_input(out, fused)
    assert got == pytest.approx(np.array([[0.5, 0.5, 0], [0, 0, 1.0]]))
    assert got.shape == fused.shape, "the published vector keeps the fused width"


def test_only_context_plus_input_needs_the_fused_inputs_and_says_so_without_them():
    """The worker gathers a title's fused input rows only where the published representation uses them
    (streams/runtime.py: a 10,000-shot title's copy of them is 90 MB)."""
    out, fused = np.array([[3.0, 0, 0]]), np.array([[0, 4.0, 0]])
    assert {r for r in REPRESENTATIONS if uses_input(r)} == {"context+input"}
    for rep in ("output", "hidden"):
        assert published(rep, out, None) is out
    assert published("context+input", out, fused) == pytest.approx(context_plus_input(out, fused))
    with pytest.raises(ValueError, match="made from the fused input vectors too"):
        published("context+input", out, None)


def test_a_run_is_evaluated_with_other_inference_settings_beside_itself(corpus, tmp_path):
    """`--run DIR@copy_span=1`: the same trained weights, served with another span (or temperature), as rows of
    their own in the same report; what the span changes changes, and settings that act in training are refused."""
    train(corpus, tmp_path / "run", TrainConfig(config="tiny", max_steps=3, batch_size=4, eval_every=3, ckpt_every=3,
                                                val_batches=1), quiet=True)
    run = tmp_path / "run"
    out = tmp_path / "report"
    res = evaluate(corpus, [run, f"{run}@copy_span=1", f"{run}@copy_wide=0", f"{run}@sharp_span=1"], out, seeds=1,
                   folds=3, progress=False)
    assert {"run:context-output", "run@copy_span=1:context-output", "run@copy_wide=0:context-output",
            "run@sharp_span=1:context-output"} <= set(res)
    assert "run:sharp+input" in res and "run@copy_wide=0:sharp+input" not in res, "copy_wide=0 serves the sharp copy"
    feats = {name: np.load(out / "features" / f"{name}.context-output.npy")
             for name in ("run", "run@copy_span=1", "run@copy_wide=0", "run@sharp_span=1")}
    assert not np.allclose(feats["run"], feats["run@copy_span=1"]), "a span of 1 must change the wide copy"
    assert not np.allclose(feats["run"], feats["run@sharp_span=1"]), "a span of 1 must change the sharp copy"
    assert not np.allclose(feats["run"], feats["run@copy_wide=0"])
    assert sorted(p.name for p in out.glob("training-*.png")) == ["training-run.png"], "one curve a trained run"
    saved = json.loads((out / "results.json").read_text())
    assert saved["served"] == {"run@copy_span=1": {"copy_span": 1}, "run@copy_wide=0": {"copy_wide": 0.0},
                               "run@sharp_span=1": {"sharp_span": 1}}
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", "evaluate", "--data", str(corpus), "--run",
                        f"{run}@mask_rate=0.5", "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                       cwd=REPO, timeout=600)
    assert r.returncode == 2 and "KEY one of copy_wide, copy_span, sharp_span" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("name", ["concat", "avg-k8"])
def test_a_modality_named_as_another_row_of_the_report_is_refused(tmp_path, name):
    """The format allows any modality names: one named as a baseline row had its features overwritten by the
    baseline's (or the other way), and the report scored one under the other's name, without a word (before
    2026-12-08)."""
    from mediafm.dataset import DatasetWriter, Meta

    meta = Meta.from_layout(LAYOUT)
    meta.modalities = {(name if k == 0 else m): v for k, (m, v) in enumerate(meta.modalities.items())}
    w = DatasetWriter(tmp_path / "d", meta)
    fused = np.full((4, LAYOUT.fused_dim), 1 / np.sqrt(LAYOUT.fused_dim), np.float32)
    w.add_title(title_id="a", title_embedding=np.ones(LAYOUT.title, np.float32), fused=fused,
                start_s=np.arange(4, dtype=float), end_s=np.arange(4, dtype=float) + 1, split="test", genres=[0])
    w.add_clips([{"clip_id": "a-0", "title_id": "a", "first_shot": 0, "last_shot": 1, "ad_labels": [0],
                  "popularity": 0.0, "tones": [0], "genres": [0], "clip_worthy": None}])
    ds = Dataset(w.close())
    assert name in ds.meta.modalities
    with pytest.raises(DatasetError, match=f"modality '{name}' has the name of another row of the report"):
        clip_features(ds, ds.clips(), {}, progress=False)


def test_a_run_on_a_dataset_of_its_widths_but_another_modality_order_is_refused(corpus, tmp_path):
    """A dataset from another tool with the same widths but its modalities in another order (say text first):
    before, only fused_dim and title_dim were compared, so the model read one modality as another and the probes
    scored it without a word. Now the run's training layout (its config.json) is compared too. And a clips.parquet
    of no rows is "nothing to probe", not a pyarrow error about a float filter."""
    import shutil

    train(corpus, tmp_path / "run", TrainConfig(config="tiny", max_steps=1, batch_size=4, eval_every=1, ckpt_every=1,
                                                val_batches=1), quiet=True)
    other = tmp_path / "other"
    shutil.copytree(corpus, other)
    meta = json.loads((other / "meta.json").read_text())
    (a, sa), (b, sb), *rest = meta["modalities"].items()
    assert sa[1] - sa[0] == sb[1] - sb[0]  # (LAYOUT: 32 each)
    meta["modalities"] = {b: sa, a: sb, **dict(rest)}  # the second modality first
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"was trained on modality slices .* the same width, another layout"):
        evaluate(other, [tmp_path / "run"], tmp_path / "report", seeds=1, folds=2, progress=False, plot=False)

    empty = tmp_path / "empty"
    shutil.copytree(corpus, empty)
    t = pq.read_table(empty / "clips.parquet")
    pq.write_table(t.slice(0, 0), empty / "clips.parquet")
    with pytest.raises(DatasetError, match="nothing to probe"):
        evaluate(empty, [tmp_path / "run"], tmp_path / "report2", seeds=1, folds=2, progress=False, plot=False)
