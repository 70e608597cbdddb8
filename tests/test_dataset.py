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
