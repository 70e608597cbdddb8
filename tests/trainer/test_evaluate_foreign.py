"""`mediafm evaluate` on datasets made elsewhere: what the format allows is evaluated, what cannot be probed is
said in words (a report's n/a and notes, or one error naming the file and the fix), never a traceback."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mediafm.dataset import Dataset
from mediafm.errors import DatasetError, ModelError
from mediafm.fusion import Layout
from mediafm.synth import write_corpus
from trainer.evaluate import clip_features, contextual, evaluate, evaluation_clips, feature_file, load_run_encoder
from trainer.train import TrainConfig, train

LAYOUT = Layout("test", video=32, audio=32, text=32, title=32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("foreign") / "data", n_titles=40, layout=LAYOUT, seed=1,
                        shots=(70, 130), val_fraction=0.05, test_fraction=0.4)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(corpus, out, TrainConfig(config="tiny", max_steps=2, batch_size=4, eval_every=2, ckpt_every=2,
                                   val_batches=1), quiet=True)
    return out


def _with_clips(corpus, tmp_path, edit):
    """A copy of the corpus whose clips.parquet rows went through edit(rows, test_titles) -> rows."""
    ds = tmp_path / "ds"
    shutil.copytree(corpus, ds)
    t = pq.read_table(ds / "clips.parquet")
    test = [t.title_id for t in Dataset(corpus).split("test")]
    pq.write_table(pa.Table.from_pylist(edit(t.to_pylist(), test), schema=t.schema), ds / "clips.parquet")
    return ds


def test_a_clip_longer_than_the_models_window_is_embedded_in_windows(corpus, run, tmp_path):
    """The format allows a clip as long as its title; the model takes 64 shots a pass (`tiny`)."""
    enc = load_run_encoder(run)
    long = next(t for t in Dataset(corpus).split("test") if t.n_shots > enc.cfg.max_shots + 10)

    def add_whole_title(rows, test):
        return [*rows, {**rows[0], "clip_id": "whole", "title_id": long.title_id, "first_shot": 0,
                        "last_shot": long.n_shots - 1}]

    data = Dataset(_with_clips(corpus, tmp_path, add_whole_title))
    clips = evaluation_clips(data)
    feats, _ = clip_features(data, clips, {"run": enc}, progress=False)
    ids = clips.column("clip_id").to_pylist()
    fused = next(data.iter_titles([long])).fused
    expect = contextual(enc, fused, long.title_embedding)[0].mean(0)
    np.testing.assert_allclose(feats["run:clip"][ids.index("whole")], expect, rtol=1e-5, atol=1e-6)
    short = ids.index(next(r["clip_id"] for r in clips.to_pylist() if r["title_id"] == long.title_id))
    first, last = clips.column("first_shot")[short].as_py(), clips.column("last_shot")[short].as_py()
    with torch.no_grad():  # a clip within one window: one pass over it, as before
        h, _ = enc(torch.from_numpy(fused[first : last + 1])[None], torch.tensor(long.title_embedding)[None], None)
    np.testing.assert_allclose(feats["run:clip"][short], h[0].numpy().mean(0), rtol=1e-5, atol=1e-6)


def test_a_run_of_another_width_is_refused_naming_both(run, tmp_path):
    other = write_corpus(tmp_path / "other", n_titles=12, layout=Layout("o", video=16, audio=16, text=16, title=8),
                         seed=0, shots=(20, 30), test_fraction=0.5)
    with pytest.raises(ModelError, match=r"the model takes fused_dim=96, title_dim=32; .*meta.json says "
                                         r"fused_dim=48, title_dim=8"):
        evaluate(other, [run], tmp_path / "report", seeds=1, folds=3, progress=False)
    assert not (tmp_path / "report").exists(), "refused before any work"


def test_nothing_to_probe_is_one_error_before_any_work(corpus, run, tmp_path):
    tasks = ("ad_labels", "popularity", "tones", "genres", "clip_worthy")
    data = _with_clips(corpus, tmp_path, lambda rows, test: [{**r, **dict.fromkeys(tasks)} for r in rows])
    with pytest.raises(DatasetError, match=r"clips.parquet: nothing to probe: .* no task has labelled clips on 2 "
                                           r"or more of them"):
        evaluate(data, [run], tmp_path / "report", seeds=1, folds=3, progress=False)
    assert not (tmp_path / "report").exists()


def test_tasks_labelled_on_few_titles_are_probed_as_far_as_they_can_be(corpus, run, tmp_path):
    """Popularity on one title cannot be scored on a held-out title: skipped, with a note; ads on 3 titles: 3
    folds, one a title, with a note; every clip clip-worthy: AP undefined, n/a with the reason; results.json stays
    strict JSON (no bare NaN)."""

    def edit(rows, test):
        out = []
        for r in rows:
            r = dict(r)
            if r["title_id"] != test[0]:
                r["popularity"] = None
            if r["title_id"] not in test[:3]:
                r["ad_labels"] = None
            r["clip_worthy"] = True
            out.append(r)
        return out

    data = _with_clips(corpus, tmp_path, edit)
    res = evaluate(data, [run], tmp_path / "report", seeds=1, folds=5, progress=False)
    assert "popularity" not in res["concat"]
    assert res["concat"]["ad_relevancy"]["folds"] == 3 and np.isfinite(res["concat"]["ad_relevancy"]["mean"])
    assert np.isnan(res["concat"]["retrieval"]["mean"])
    assert np.isfinite(res["run:context-output"]["tone"]["mean"]), "the other tasks as always"
    report = (tmp_path / "report" / "report.md").read_text()
    assert "popularity: not probed: only 1 title is labelled for it" in report
    assert "ad_relevancy: 3 folds, one a title: only 3 titles are labelled for it" in report
    assert "| n/a |" in report and "retrieval: n/a where its metric is undefined on every fold: every test fold " \
                                  "holds one class only" in report

    def refuse(token):
        raise AssertionError(f"results.json holds {token}")

    saved = json.loads((tmp_path / "report" / "results.json").read_text(), parse_constant=refuse)
    assert saved["results"]["concat"]["retrieval"]["mean"] is None


def test_feature_files_are_plain_file_names():
    """A modality may be named anything the format allows, a '/' included; its features stay in features/."""
    assert feature_file("run@copy_span=8:context+input") == "run@copy_span=8.context+input.npy"
    assert feature_file("video/clip") == "video_clip.npy"
    assert "/" not in feature_file("../../etc") and feature_file("../../etc").endswith(".npy")
