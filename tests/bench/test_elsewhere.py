"""bench/elsewhere.py, the grid's second generator: its files are a v1 dataset the project reads as written."""

import numpy as np
import pyarrow.parquet as pq

from mediafm.dataset import Dataset


def test_a_corpus_written_apart_reads_back_as_written(tmp_path, bench_script):
    """Written with pyarrow alone (none of mediafm's writer), 700-row shards so titles continue into the next
    file: the reader gives every title whole, every row as written, and takes the clips."""
    elsewhere = bench_script("elsewhere")
    out = elsewhere.write_corpus(tmp_path / "d", n_titles=12, dims=16, seed=3, shots=(40, 300), shard_shots=700,
                                 test_fraction=0.3)
    files = sorted((out / "shots").glob("part-*.parquet"))
    written = {}
    continued = 0
    for f in files:
        t = pq.read_table(f).to_pydict()
        first = t["title_id"][0] if t["title_id"] else None
        continued += first is not None and first in written
        for tid, i, v in zip(t["title_id"], t["shot_index"], t["fused"], strict=True):
            written.setdefault(tid, []).append((i, np.asarray(v, np.float32)))
    assert len(files) >= 3 and continued >= 1, "no title continued into the next shard file: the test tests nothing"

    ds = Dataset(out)
    titles = {t.info.title_id: t for t in ds.iter_titles()}
    assert set(titles) == set(written) and len(titles) == 12
    for tid, shots in written.items():
        got = titles[tid].fused
        assert [i for i, _ in shots] == list(range(len(shots))) == list(range(len(got)))
        np.testing.assert_array_equal(got, np.stack([v for _, v in shots]))
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    clips = ds.clips()
    assert clips is not None and clips.num_rows >= 12 * 6
    assert {s.split for s in (t.info for t in titles.values())} >= {"train", "test"}


def test_the_same_seed_draws_the_same_corpus_and_another_seed_another(tmp_path, bench_script):
    elsewhere = bench_script("elsewhere")
    a, b, c = (elsewhere.write_corpus(tmp_path / n, n_titles=4, dims=8, seed=s, shots=(20, 40))
               for n, s in (("a", 1), ("b", 1), ("c", 2)))
    fa, fb, fc = (Dataset(p).iter_titles() for p in (a, b, c))
    va, vb, vc = (np.concatenate([t.fused for t in f]) for f in (fa, fb, fc))
    np.testing.assert_array_equal(va, vb)
    assert va.shape != vc.shape or not np.allclose(va, vc)
