"""mediafm.dataset: the v1 format, written, read back, and bad files named."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mediafm.dataset import Dataset, DatasetWriter, Meta
from mediafm.errors import DatasetError
from mediafm.fusion import Layout

LAYOUT = Layout("t", video=4, audio=4, text=4, title=3)


def _write(path, titles=3, shots=5, shard_shots=7):
    rng = np.random.default_rng(0)
    w = DatasetWriter(path, Meta.from_layout(LAYOUT, {"video": "v"}), shard_shots=shard_shots)
    data = {}
    for i in range(titles):
        fused = rng.normal(size=(shots + i, 12)).astype(np.float32)
        data[f"t{i}"] = fused
        w.add_title(title_id=f"t{i}", title_embedding=rng.normal(size=3), fused=fused,
                    start_s=np.arange(shots + i), end_s=np.arange(shots + i) + 1.0, split=["train", "val", "test"][i % 3],
                    genres=[i])
    w.close()
    return data


def test_roundtrip(tmp_path):
    data = _write(tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["modalities"]["text"] == [8, 12]
    assert len(ds.shards) >= 2, "shards split at shard_shots"
    assert [t.title_id for t in ds.split("val")] == ["t1"]
    for title in ds.iter_titles():
        np.testing.assert_array_equal(title.fused, data[title.info.title_id])
    assert not (tmp_path / "ds.partial").exists()


def _shard(path):
    return sorted((path / "shots").glob("*.parquet"))[0]


def test_wrong_dim_named(tmp_path):
    _write(tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    meta["fused_dim"] = 16
    meta["modalities"]["text"] = [8, 16]
    (tmp_path / "ds" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"part-00000.parquet: column 'fused' has dim 12, meta.json says fused_dim=16"):
        Dataset(tmp_path / "ds")


def _rewrite(path, fn):
    t = pq.read_table(path)
    pq.write_table(fn(t), path)


def test_nan_named(tmp_path):
    _write(tmp_path / "ds")
    shard = _shard(tmp_path / "ds")

    def poison(t):
        x = t.column("fused").combine_chunks().values.to_numpy().copy()
        x[5] = np.nan
        return t.set_column(t.column_names.index("fused"), "fused", pa.FixedSizeListArray.from_arrays(pa.array(x), 12))

    _rewrite(shard, poison)
    ds = Dataset(tmp_path / "ds")  # opening reads only ids; the vectors are checked when read
    with pytest.raises(DatasetError, match=r"part-00000.parquet: column 'fused' has NaN/inf in 1 rows \(first at row 0\)"):
        list(ds.iter_titles())


def test_unsorted_shots_named(tmp_path):
    _write(tmp_path / "ds")
    shard = _shard(tmp_path / "ds")

    def swap(t):
        idx = t.column("shot_index").to_numpy().copy()
        idx[[0, 1]] = idx[[1, 0]]
        return t.set_column(t.column_names.index("shot_index"), "shot_index", pa.array(idx))

    _rewrite(shard, swap)
    with pytest.raises(DatasetError, match=r"part-00000.parquet: column 'shot_index' of title 't0' is not 0..4 in order"):
        Dataset(tmp_path / "ds")


def test_missing_column_named(tmp_path):
    _write(tmp_path / "ds")
    shard = _shard(tmp_path / "ds")
    _rewrite(shard, lambda t: t.drop(["end_s"]))
    with pytest.raises(DatasetError, match=r"part-00000.parquet: missing column 'end_s'"):
        Dataset(tmp_path / "ds")


def test_unknown_title_and_missing_meta(tmp_path):
    _write(tmp_path / "ds")
    _rewrite(tmp_path / "ds" / "titles.parquet", lambda t: t.slice(1))
    with pytest.raises(DatasetError, match="column 'title_id' has 't0', absent from titles.parquet"):
        Dataset(tmp_path / "ds")
    (tmp_path / "ds" / "meta.json").unlink()
    with pytest.raises(DatasetError, match="meta.json: missing"):
        Dataset(tmp_path / "ds")


# --- titles continued across shard files (DATASET_FORMAT.md: "a title may continue into the next shard file")


def _write_split(path, lengths=(5, 6, 7, 20, 3), shard_shots=7):
    rng = np.random.default_rng(1)
    w = DatasetWriter(path, Meta.from_layout(LAYOUT), shard_shots=shard_shots, split_titles=True)
    data = {}
    for i, n in enumerate(lengths):
        data[f"t{i}"] = rng.normal(size=(n, 12)).astype(np.float32)
        w.add_title(title_id=f"t{i}", title_embedding=rng.normal(size=3), fused=data[f"t{i}"],
                    start_s=np.arange(n) * 2.0, end_s=np.arange(n) * 2.0 + 1.5)
    w.close()
    return data


def test_titles_split_over_shards_read_whole(tmp_path):
    data = _write_split(tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")
    assert len(ds.shards) == 6  # 41 rows, 7 per file
    for s in ds.shards[:-1]:
        assert pq.read_metadata(s).num_rows == 7
    # t1 starts in part 0 and ends in part 1; t3 (20 shots) spans parts 2..5
    assert ds.titles["t1"].pieces == [(0, 5, 2), (1, 0, 4)]
    assert [p[0] for p in ds.titles["t3"].pieces] == [2, 3, 4, 5]
    assert {t: i.n_shots for t, i in ds.titles.items()} == {t: len(x) for t, x in data.items()}
    got = {t.info.title_id: t for t in ds.iter_titles()}
    assert sorted(got) == sorted(data)
    for tid, title in got.items():
        np.testing.assert_array_equal(title.fused, data[tid])
        np.testing.assert_array_equal(title.start_s, np.arange(len(data[tid])) * 2.0)
        np.testing.assert_array_equal(title.end_s, np.arange(len(data[tid])) * 2.0 + 1.5)
    # a title belongs to the shard it starts in, assembled whole; the next shard does not yield it again
    assert sorted(ds.read_shard(0)) == ["t0", "t1"]
    assert sorted(ds.read_shard(1)) == ["t2"]
    assert sorted(ds.read_shard(5)) == ["t4"]
    assert [t.info.title_id for t in ds.iter_titles([ds.titles["t3"]])] == ["t3"]


def test_split_titles_feed_training_whole(tmp_path):
    from trainer.data import WindowLoader, eval_batches

    data = _write_split(tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")
    infos = list(ds.titles.values())
    (batch,) = list(eval_batches(ds, infos, batch_size=len(infos), max_shots=64))
    for i, tid in enumerate(batch.title_ids):
        assert int(batch.lengths[i]) == len(data[tid])
        np.testing.assert_array_equal(batch.shots[i, : len(data[tid])].numpy(), data[tid])
    loader = WindowLoader(ds, infos, batch_size=1, max_shots=64, seed=0)
    seen = {}
    for _, b in zip(range(len(infos)), loader, strict=False):
        seen[b.title_ids[0]] = b.shots[0, : int(b.lengths[0])].numpy()
    assert sorted(seen) == sorted(data)
    for tid, x in seen.items():
        np.testing.assert_array_equal(x, data[tid])


def _hand_made(path, files):
    """A dataset whose shard k holds the (title_id, shot_index) rows of files[k]."""
    path.mkdir()
    (path / "shots").mkdir()
    (path / "meta.json").write_text(json.dumps(Meta.from_layout(LAYOUT).to_json()))
    tids = sorted({t for rows in files for t, _ in rows})
    pq.write_table(pa.table({
        "title_id": pa.array(tids, pa.string()),
        "title_embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(3 * len(tids), np.float32)), 3),
        "kind": pa.array(["title"] * len(tids), pa.string()),
    }), path / "titles.parquet")
    for k, rows in enumerate(files):
        n = len(rows)
        pq.write_table(pa.table({
            "title_id": pa.array([t for t, _ in rows], pa.string()),
            "shot_index": pa.array([i for _, i in rows], pa.int32()),
            "start_s": pa.array(np.arange(n, dtype=np.float64)),
            "end_s": pa.array(np.arange(n, dtype=np.float64) + 1),
            "fused": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(12 * n, np.float32)), 12),
        }), path / "shots" / f"part-{k:05d}.parquet")
    return path


def _rows(tid, a, b):
    return [(tid, i) for i in range(a, b)]


def test_continuation_accepted_across_an_empty_file(tmp_path):
    ds = Dataset(_hand_made(tmp_path / "ds", [_rows("a", 0, 3), [], _rows("a", 3, 5) + _rows("b", 0, 2)]))
    assert ds.titles["a"].pieces == [(0, 0, 3), (2, 0, 2)] and ds.titles["a"].n_shots == 5
    (a,) = [t for t in ds.iter_titles() if t.info.title_id == "a"]
    assert len(a.fused) == 5


@pytest.mark.parametrize("files, message", [
    # one title's rows split by another's inside one file
    ([_rows("a", 0, 2) + _rows("b", 0, 1) + _rows("a", 2, 3)],
     r"part-00000.parquet: rows of title 'a' are not contiguous \(column 'title_id'\): part-00000.parquet rows "
     r"0..1 and part-00000.parquet rows 3..3, but rows 2..2 between them hold other titles"),
    # continued further down the next file, not at its top
    ([_rows("a", 0, 2), _rows("b", 0, 1) + _rows("a", 2, 4)],
     r"part-00001.parquet: rows of title 'a' are not contiguous .*it resumes at row 1 of part-00001.parquet"),
    # the previous file does not end with it
    ([_rows("a", 0, 2) + _rows("b", 0, 1), _rows("a", 2, 4)],
     r"part-00001.parquet: rows of title 'a' are not contiguous .*other titles' rows follow it "
     r"\(the file before part-00001.parquet ends with 'b'\)"),
    # resumed two files later, another title in between
    ([_rows("a", 0, 2), _rows("b", 0, 2), _rows("a", 2, 3)],
     r"part-00002.parquet: rows of title 'a' are not contiguous .*ends with 'b'"),
    # a gap across the files
    ([_rows("a", 0, 3), _rows("a", 4, 6)],
     r"part-00001.parquet: column 'shot_index' of title 'a' is not 3..4 in order \(its rows 0..1 here continue "
     r"part-00000.parquet rows 0..2, shots 0..2\): row 0 has 4, expected 3 \(skips shot_index 3..3\)"),
    # a shot repeated across the files
    ([_rows("a", 0, 3), _rows("a", 2, 5)],
     r"part-00001.parquet: column 'shot_index' of title 'a' is not 3..5 in order \(.*\): row 0 has 2, expected 3 "
     r"\(repeats or goes back to shot_index 2\)"),
    # out of order inside the second piece
    ([_rows("a", 0, 3), [("a", 3), ("a", 5), ("a", 4)]],
     r"part-00001.parquet: column 'shot_index' of title 'a' is not 3..5 in order \(.*\): row 1 has 5, expected 4"),
    # a title's first rows do not start at shot 0
    ([_rows("a", 1, 3)],
     r"part-00000.parquet: column 'shot_index' of title 'a' is not 0..1 in order: row 0 has 1, expected 0"),
])
def test_bad_continuations_named(tmp_path, files, message):
    with pytest.raises(DatasetError, match=message):
        Dataset(_hand_made(tmp_path / "ds", files))


def test_nan_in_continued_rows_named(tmp_path):
    _write_split(tmp_path / "ds")
    shard = sorted((tmp_path / "ds" / "shots").glob("*.parquet"))[1]  # starts with t1's shots 2..5

    def poison(t):
        x = t.column("fused").combine_chunks().values.to_numpy().copy()
        x[12 * 2] = np.inf  # row 2: t1's shot 4
        return t.set_column(t.column_names.index("fused"), "fused", pa.FixedSizeListArray.from_arrays(pa.array(x), 12))

    _rewrite(shard, poison)
    ds = Dataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"part-00001.parquet: column 'fused' has NaN/inf in 1 rows \(first at row 2\)"):
        ds.read_shard(0)


def _set_meta(path, **changes):
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("changes, message", [
    ({"modalities": {"video": [0], "audio": [4, 8], "text": [8, 12]}},
     r"modalities\['video'\] is \[0\]; give \[start, end\) as two whole numbers"),
    ({"modalities": {"video": [0.0, 4.0], "audio": [4, 8], "text": [8, 12]}}, r"modalities\['video'\] is \[0.0, 4.0\]"),
    ({"modalities": {}}, r"'modalities' is \{\}; give an object of modality"),
    ({"modalities": [[0, 4], [4, 8], [8, 12]]}, r"'modalities' is \[\[0, 4\]"),
    ({"fused_dim": "12"}, r"'fused_dim' is '12'; give a whole number >= 1"),
    ({"title_dim": None}, r"'title_dim' is None; give a whole number >= 1"),
    ({"encoders": "v"}, r"'encoders' is 'v'; give an object"),
])
def test_meta_json_of_the_wrong_shape_named(tmp_path, changes, message):
    """Before: tracebacks (IndexError, AttributeError, TypeError) from train, evaluate and publish, or float
    slices accepted until evaluate sliced with them."""
    _write(tmp_path / "ds")
    _set_meta(tmp_path / "ds", **changes)
    with pytest.raises(DatasetError, match=r"meta.json: " + message):
        Dataset(tmp_path / "ds")


def test_meta_json_that_is_not_an_object_named(tmp_path):
    _write(tmp_path / "ds")
    (tmp_path / "ds" / "meta.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"meta.json: holds a JSON list; meta.json is one object"):
        Dataset(tmp_path / "ds")


def _column(name, values, typ=None):
    return lambda t: t.set_column(t.column_names.index(name), name, pa.array(values, typ))


IDX = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]  # shard 0: t0's 5 shots, then t1's 6
START = [float(i) for i in IDX]


def _with(values, at, value):
    out = list(values)
    out[at] = value
    return out


@pytest.mark.parametrize("column, values, typ, message", [
    ("shot_index", _with(IDX, 2, None), pa.int32(), r"column 'shot_index' is null in row 2"),
    ("shot_index", [str(i) for i in IDX], None, r"column 'shot_index' is string; DATASET_FORMAT.md has int32"),
    ("start_s", _with(START, 1, None), pa.float64(), r"column 'start_s' is null in row 1"),
    ("start_s", _with(START, 3, 30.0), pa.float64(),
     r"row 3 \(title 't0'\) has span start_s=30.0, end_s=4.0; a shot's span is finite seconds with end_s >= start_s"),
    ("end_s", _with([x + 1 for x in START], 2, float("inf")), pa.float64(), r"row 2 \(title 't0'\) has span"),
    ("title_id", [1] * 5 + [2] * 6, None, r"column 'title_id' is int64; DATASET_FORMAT.md has string"),
])
def test_shot_rows_of_the_wrong_kind_named_at_open(tmp_path, column, values, typ, message):
    """A shot's id, index and span are checked when the dataset opens (before: a null shot_index was 'cannot
    convert float NaN to integer', a string one 'row 0 has 0, expected 0', a backwards span was sent by
    `mediafm publish dataset` and refused by every worker)."""
    _write(tmp_path / "ds")
    shard = _shard(tmp_path / "ds")
    assert pq.read_table(shard).column('shot_index').to_pylist() == IDX
    _rewrite(shard, _column(column, values, typ))
    with pytest.raises(DatasetError, match=r"part-00000.parquet: " + message):
        Dataset(tmp_path / "ds")


@pytest.mark.parametrize("column, values, typ, message", [
    ("kind", ["title", "movie", "title"], None, r"column 'kind' has 'movie' for 't1'; use 'title' or 'live'"),
    ("genres", [[0], [11], [2]], pa.list_(pa.int32()), r"column 'genres' of 't1' has \[11\]: indices into the 11 "
     r"genres"),
    ("genres", [[0], [None], [2]], pa.list_(pa.int32()), r"column 'genres' of 't1' has \[None\]"),
    ("title_id", ["t0", None, "t2"], pa.string(), r"column 'title_id' is null in row 1"),
])
def test_titles_of_the_wrong_kind_named(tmp_path, column, values, typ, message):
    _write(tmp_path / "ds")
    _rewrite(tmp_path / "ds" / "titles.parquet", _column(column, values, typ))
    with pytest.raises(DatasetError, match=r"titles.parquet: " + message):
        Dataset(tmp_path / "ds")


def test_a_file_pyarrow_cannot_read_is_named(tmp_path):
    """A null row in a fixed_size_list column makes a file pyarrow refuses to read; before, its error named
    neither the file nor the column, and for a shard it came in the middle of training."""
    _write(tmp_path / "ds")
    path = tmp_path / "ds" / "titles.parquet"
    t = pq.read_table(path)
    emb = pa.array([[0.1, 0.2, 0.3], None, [0.4, 0.5, 0.6]], pa.list_(pa.float32(), 3))
    pq.write_table(t.set_column(t.column_names.index("title_embedding"), "title_embedding", emb), path)
    with pytest.raises(DatasetError, match=r"titles.parquet: (pyarrow cannot read it|column 'title_embedding' has "
                                           r"1 null rows)"):
        Dataset(tmp_path / "ds")


def test_fused_rows_of_zeros_refused_and_off_unit_rows_told(tmp_path, caplog):
    data = _write(tmp_path / "ds")
    with caplog.at_level("WARNING", logger="mediafm.dataset"):
        list(Dataset(tmp_path / "ds").iter_titles())  # _write's rows are not normalised
    assert "are not of unit norm" in caplog.text and "divided by its L2 norm" in caplog.text
    shard = _shard(tmp_path / "ds")

    def zero(t):
        x = t.column("fused").combine_chunks().values.to_numpy().copy().reshape(-1, 12)
        x[3] = 0
        return t.set_column(t.column_names.index("fused"), "fused",
                            pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 12))

    _rewrite(shard, zero)
    assert len(data["t0"]) == 5
    with pytest.raises(DatasetError, match=r"column 'fused' has 1 rows of zeros \(first at row 3\): a shot needs at "
                                           r"least one modality"):
        list(Dataset(tmp_path / "ds").iter_titles())


def _clip(**kw):
    row = {"clip_id": "c0", "title_id": "t0", "first_shot": 0, "last_shot": 2, "ad_labels": [1], "popularity": 0.5,
           "tones": [3], "genres": [0], "clip_worthy": True}
    return row | kw


@pytest.mark.parametrize("table, message", [
    (pa.table({"clip_id": ["c0"], "title_id": ["t0"], "first_shot": pa.array([None], pa.int32()),
               "last_shot": [2]}), r"column 'first_shot' is null in row 0; every clip needs its id, title and shots"),
    (pa.table({"clip_id": ["c0"], "title_id": ["t0"], "first_shot": ["0"], "last_shot": [2]}),
     r"column 'first_shot' is string; DATASET_FORMAT.md has int32"),
    (pa.Table.from_pylist([_clip(popularity=float("nan"))]),
     r"column 'popularity' is nan in row 0; give a finite number, or null for a clip not labelled"),
    (pa.Table.from_pylist([_clip(tones=[1, None])]), r"clip 'c0' column 'tones' has a null class in \[1, None\]"),
    (pa.Table.from_pylist([_clip(genres=4)]), r"column 'genres' is int64; DATASET_FORMAT.md has list<int32>"),
    (pa.Table.from_pylist([_clip(first_shot=2, last_shot=1)]), r"clip 'c0' has first_shot 2 after last_shot 1"),
])
def test_clips_of_the_wrong_kind_named(tmp_path, table, message):
    """Before: TypeErrors from the checks, or (NaN popularity) every clip embedded, then a scikit-learn
    traceback from the probe."""
    _write(tmp_path / "ds")
    pq.write_table(table, tmp_path / "ds" / "clips.parquet")
    with pytest.raises(DatasetError, match=r"clips.parquet: " + message):
        Dataset(tmp_path / "ds").clips()


def test_null_popularity_is_an_unlabelled_clip(tmp_path):
    _write(tmp_path / "ds")
    pq.write_table(pa.Table.from_pylist([_clip(), _clip(clip_id="c1", popularity=None)]),
                   tmp_path / "ds" / "clips.parquet")
    assert Dataset(tmp_path / "ds").clips().column("popularity").null_count == 1


def test_an_optional_column_null_throughout_is_read_as_unlabelled(tmp_path):
    """pandas writes a column of None with arrow's null type: for the columns whose cells may be null it means
    the same as null cells (split: train; a clip label: not labelled)."""
    _write(tmp_path / "ds")
    _rewrite(tmp_path / "ds" / "titles.parquet", _column("split", [None] * 3, pa.null()))
    pq.write_table(pa.Table.from_pylist([_clip(popularity=None, clip_worthy=None)]), tmp_path / "ds" / "clips.parquet")
    ds = Dataset(tmp_path / "ds")
    assert pq.read_table(tmp_path / "ds" / "clips.parquet").schema.field("popularity").type == pa.null()
    assert {i.split for i in ds.titles.values()} == {"train"}
    assert ds.clips().column("popularity").null_count == 1


def test_modalities_listed_out_of_order_are_read_in_feature_order(tmp_path):
    """meta.json may list the modalities in any order (an object): every reader of slices gets them by start, so
    modality dropout, partial views and a copy per modality act on the named features."""
    _write(tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    meta["modalities"] = {"text": [8, 12], "video": [0, 4], "audio": [4, 8]}
    (tmp_path / "ds" / "meta.json").write_text(json.dumps(meta))
    mods = Dataset(tmp_path / "ds").meta.modalities
    assert list(mods.items()) == [("video", (0, 4)), ("audio", (4, 8)), ("text", (8, 12))]


def test_a_repeated_title_id_is_named_with_its_rows(tmp_path):
    _write(tmp_path / "ds")
    _rewrite(tmp_path / "ds" / "titles.parquet",
             lambda t: t.set_column(0, "title_id", pa.array(["t0", "t1", "t0"])))
    with pytest.raises(DatasetError, match=r"column 'title_id' has 't0' twice, rows 0 and 2"):
        Dataset(tmp_path / "ds")


def test_a_variable_length_fused_column_is_refused_with_the_fix(tmp_path):
    """pandas writes a column of arrays as list<double>; the format wants fixed_size_list<float32>[fused_dim]."""
    _write(tmp_path / "ds")
    shard = _shard(tmp_path / "ds")
    _rewrite(shard, lambda t: t.set_column(t.column_names.index("fused"), "fused",
                                           pa.array(t.column("fused").to_pylist(), pa.list_(pa.float64()))))
    with pytest.raises(DatasetError, match=r"column 'fused' has dim list<.*write it as a fixed-size list \(pyarrow: "
                                           r"pa.list_\(pa.float32\(\), 12\)"):
        Dataset(tmp_path / "ds")


@pytest.mark.parametrize("change, match", [
    ({"fused": np.zeros((0, 12), np.float32), "start_s": [], "end_s": []}, "'b' has no shots"),
    ({"title_id": "a"}, "'a' was added twice"),
    ({"split": "validation"}, "DatasetWriter: column 'split' has 'validation' for 'b'; use train/val/test"),
    ({"kind": "clip"}, "column 'kind' has 'clip' for 'b'; use 'title' or 'live'"),
    ({"genres": [3, 11]}, r"column 'genres' of 'b' has \[11\]: indices into the 11 genres"),
    ({"start_s": [0.0]}, r"start_s \(1,\) and end_s \(2,\), expected one time per shot \(2,\)"),
    ({"title_embedding": np.zeros(4)}, r"title_embedding has shape \(4,\), expected \(3,\)"),
])
def test_the_writer_refuses_a_title_the_reader_would_refuse_and_keeps_the_dataset_there(tmp_path, change, match):
    """Before (2026-12-07), a title of no shots, one added twice, an unknown split or kind, or genres out of
    range were written, the dataset already at the path replaced, and the new one refused by every reader; times
    or a title embedding of the wrong length failed in pyarrow naming nothing. Now add_title refuses it, naming the
    title, and the dataset there is left as it was; so is it when no title is added at all."""
    path = tmp_path / "ds"
    _write(path)
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    w = DatasetWriter(path, Meta.from_layout(LAYOUT))
    good = dict(title_id="a", title_embedding=np.zeros(3), fused=np.ones((2, 12)), start_s=[0.0, 1.0],
                end_s=[1.0, 2.0])
    w.add_title(**good)
    with pytest.raises(DatasetError, match=match):
        w.add_title(**{**good, "title_id": "b", **change})
    with pytest.raises(DatasetError, match="no title was added"):
        DatasetWriter(path, Meta.from_layout(LAYOUT)).close()
    assert {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    assert not path.with_name(path.name + ".partial").exists()


def test_split_for_is_a_stable_share_drawn_from_the_title_id():
    from mediafm.dataset import split_for

    ids = [f"title-{i}" for i in range(20_000)]
    got = [split_for(t, 0.1, 0.2) for t in ids]
    share = {k: got.count(k) / len(ids) for k in ("train", "val", "test")}
    assert abs(share["val"] - 0.1) < 0.01 and abs(share["test"] - 0.2) < 0.01 and abs(share["train"] - 0.7) < 0.01
    # a title's split does not depend on the other titles, nor on the run: the catalog grows, test stays test
    assert [split_for(t, 0.1, 0.2) for t in reversed(ids)] == got[::-1]
    # a larger test share only moves titles into test: none of the old test titles is trained on
    more = [split_for(t, 0.1, 0.3) for t in ids]
    assert all(m == "test" for g, m in zip(got, more, strict=True) if g == "test")
    assert {split_for(t, 0.0, 0.0) for t in ids[:500]} == {"train"}
    assert {split_for(t, 0.5, 0.5) for t in ids[:500]} == {"val", "test"}
    for bad in [(-0.1, 0.1), (0.6, 0.5), (0.1, float("nan"))]:
        with pytest.raises(DatasetError, match="each must be in"):
            split_for("t", *bad)


_READ_PEAK = """
import sys, pyarrow as pa
from mediafm.dataset import Dataset
ds = Dataset(sys.argv[1])
got = ds.read_shard(0)
print(sum(len(t.fused) for t in got.values()), pa.default_memory_pool().max_memory())
"""


def test_a_shard_is_read_without_the_columns_a_producer_added(tmp_path):
    """Anyone may produce the format, and a shard may carry columns of its own beside the ones it defines (here
    200 KB of thumbnail a row, 40 MB a file, against 38 KB of vectors). Before 2026-12-08 read_shard read the whole
    file, 52 MB of arrow memory at its peak; now the three columns it uses, a block at a time. Measured in a fresh
    process: arrow's peak is that process's alone."""
    import subprocess
    import sys

    layout = Layout("t", video=16, audio=16, text=16, title=8)
    w = DatasetWriter(tmp_path / "ds", Meta.from_layout(layout, {"video": "v"}))
    rng = np.random.default_rng(0)
    for i in range(4):
        f = rng.normal(size=(50, 48)).astype(np.float32)
        w.add_title(title_id=f"t{i}", title_embedding=np.zeros(8), fused=f / np.linalg.norm(f, axis=1, keepdims=True),
                    start_s=np.arange(50.0), end_s=np.arange(50.0) + 1)
    w.close()
    (path,) = sorted((tmp_path / "ds" / "shots").glob("*.parquet"))
    t = pq.read_table(path)
    pq.write_table(t.append_column("thumbnail", pa.array([b"x" * 200_000] * t.num_rows, pa.binary())), path)

    r = subprocess.run([sys.executable, "-c", _READ_PEAK, str(tmp_path / "ds")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    rows, peak = (int(x) for x in r.stdout.split())
    assert rows == 200
    assert peak < 8 * 2**20, f"arrow's peak {peak / 2**20:.1f} MiB reading 38 KB of vectors: the thumbnails were read"
