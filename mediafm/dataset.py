"""Shot-embedding datasets, interchange format v1 (../shared/DATASET_FORMAT.md).

    DATASET/meta.json  titles.parquet  shots/part-*.parquet  [clips.parquet]

The trainer, the evaluation and the pipeline's sink all go through this
module: :class:`DatasetWriter` writes, :class:`Dataset` opens, validates and
streams titles shard by shard (never the whole dataset in memory).
Every format problem raises :class:`DatasetError` naming the file and column.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mediafm.errors import DatasetError
from mediafm.fusion import Layout

log = logging.getLogger(__name__)
FORMAT, VERSION = "mediafm-shots", 1
N_GENRES = 11
"""Genres of MEDIAFM.md (Action ... Thriller): titles.parquet's and clips.parquet's genre indices are below it."""
SHARD_SHOTS = 16384
"""Shots per shard when writing: 16k x 2304 float32 = 151 MB before compression."""
READ_ROWS = 2048
"""Rows a block when a file is read in part (`Dataset._read_ranges`) or checked block by block
(`Dataset.check_shard`): a read stops within a block of the last row it needs (at width 2,304, 19 MB a block)."""


@dataclass
class Meta:
    fused_dim: int
    modalities: dict[str, tuple[int, int]]
    title_dim: int
    encoders: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_layout(cls, layout: Layout, encoders: dict[str, str] | None = None) -> Meta:
        return cls(layout.fused_dim, dict(layout.slices), layout.title, dict(encoders or {}))

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "fused_dim": self.fused_dim,
                "modalities": {k: list(v) for k, v in self.modalities.items()},
                "title_dim": self.title_dim, "encoders": self.encoders}

    @classmethod
    def load(cls, path: Path) -> Meta:
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise DatasetError(f"{path}: missing; a v1 dataset needs meta.json (see DATASET_FORMAT.md)") from None
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise DatasetError(f"{path}: holds a JSON {type(d).__name__}; meta.json is one object, "
                               '{"format": "mediafm-shots", "version": 1, "fused_dim": ..., ...} (DATASET_FORMAT.md)')
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise DatasetError(f"{path}: format={d.get('format')!r} version={d.get('version')!r}, "
                               f"expected {FORMAT!r} version {VERSION}")
        for k in ("fused_dim", "modalities", "title_dim"):
            if k not in d:
                raise DatasetError(f"{path}: missing key {k!r}")
        for k in ("fused_dim", "title_dim"):
            if not _whole(d[k]) or d[k] < 1:
                raise DatasetError(f"{path}: {k!r} is {d[k]!r}; give a whole number >= 1 (not a string)")
        if not isinstance(d["modalities"], dict) or not d["modalities"]:
            raise DatasetError(f"{path}: 'modalities' is {d['modalities']!r}; give an object of modality -> "
                               '[start, end) slice of the fused vector, e.g. {"video": [0, 768], ...}')
        for k, v in d["modalities"].items():
            if not (isinstance(v, list) and len(v) == 2 and all(_whole(x) for x in v) and 0 <= v[0] < v[1]):
                raise DatasetError(f"{path}: modalities[{k!r}] is {v!r}; give [start, end) as two whole numbers "
                                   "with 0 <= start < end")
        if not isinstance(d.get("encoders", {}), dict):
            raise DatasetError(f"{path}: 'encoders' is {d['encoders']!r}; give an object of modality -> free text")
        mods = dict(sorted(((k, tuple(v)) for k, v in d["modalities"].items()), key=lambda kv: kv[1][0]))
        # in feature order, whatever order the file lists them in: every reader of slices may rely on it
        ends = sorted(mods.values())
        if (ends[0][0] != 0 or ends[-1][1] != d["fused_dim"]
                or any(a[1] != b[0] for a, b in zip(ends, ends[1:], strict=False))):
            raise DatasetError(f"{path}: modalities {mods} do not tile [0, fused_dim={d['fused_dim']})")
        return cls(d["fused_dim"], mods, d["title_dim"], dict(d.get("encoders", {})))


_FIXED_LIST_HINT = ("; write it as a fixed-size list (pyarrow: pa.list_(pa.float32(), {dim}), or "
                    "pa.FixedSizeListArray.from_arrays(values, {dim})), not the variable-length list pandas writes")

OPTIONAL = {"split", "genres", "ad_labels", "popularity", "tones", "clip_worthy"}
"""Columns whose cells may be null (DATASET_FORMAT.md): one that is null throughout may have arrow's null type
(what pandas writes for a column of None)."""


def _whole(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@contextmanager
def _arrow(path: Path):
    """pyarrow's errors reading `path` as DatasetError naming the file (a parquet file pyarrow cannot read at
    all: a null row of a fixed_size_list column is one way to write such a file)."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        hint = ("; a fixed_size_list column (fused, title_embedding) holds a null or short row: write every "
                "vector whole" if "lists to be of size" in str(e) else "")
        raise DatasetError(f"{path}: pyarrow cannot read it: {type(e).__name__}: {e}{hint}") from None


def _check_types(path: Path, schema: pa.Schema, want: dict[str, tuple]) -> None:
    """Each column of `want` that is present has a type its check accepts ({column: (check, type named in the
    error)}); a column of OPTIONAL may also be null throughout (arrow's null type)."""
    for col, (ok, name) in want.items():
        typ = schema.field(col).type if col in schema.names else None
        if typ is not None and not ok(typ) and not (col in OPTIONAL and pa.types.is_null(typ)):
            raise DatasetError(f"{path}: column {col!r} is {typ}; DATASET_FORMAT.md has {name}")


def _check_not_null(path: Path, t: pa.Table, cols, why: str) -> None:
    for col in cols:
        if t.column(col).null_count:
            row = int(np.flatnonzero(t.column(col).is_null().to_numpy(zero_copy_only=False))[0])
            raise DatasetError(f"{path}: column {col!r} is null in row {row}; {why}")


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t)


def _is_int_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)


CLIPS_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("title_id", pa.string()), ("first_shot", pa.int32()), ("last_shot", pa.int32()),
    ("ad_labels", pa.list_(pa.int32())), ("popularity", pa.float64()), ("tones", pa.list_(pa.int32())),
    ("genres", pa.list_(pa.int32())), ("clip_worthy", pa.bool_()),
])


def _check_vector_column(table: pa.Table, col: str, dim: int, path: Path, *, unit: bool = False,
                         first_row: int = 0, copy: bool = True) -> np.ndarray:
    """fixed_size_list<float32>[dim] -> (n, dim) float32, or DatasetError. unit (the fused vectors): a row of
    zeros is refused (it has no direction to norm), and rows off unit norm are logged, once a file.
    first_row: the file row of the table's first row (errors name rows of the file, not of a slice of it);
    copy=False: a read-only view where arrow allows one (a check that keeps nothing)."""
    x = _vector_rows(table, col, dim, path, copy=copy)
    check = _RowCheck(path, col, unit=unit)
    check.add(x, first_row)
    check.finish()
    return x


def _vector_rows(table: pa.Table, col: str, dim: int, path: Path, *, copy: bool = True) -> np.ndarray:
    if col not in table.column_names:
        raise DatasetError(f"{path}: missing column {col!r} (columns: {table.column_names})")
    arr = table.column(col).combine_chunks()
    t = arr.type
    if not pa.types.is_fixed_size_list(t) or t.list_size != dim:
        got = t.list_size if pa.types.is_fixed_size_list(t) else str(t)
        hint = "" if pa.types.is_fixed_size_list(t) else _FIXED_LIST_HINT.format(dim=dim)
        raise DatasetError(f"{path}: column {col!r} has dim {got}, expected fixed_size_list<float32>[{dim}] "
                           f"(from meta.json){hint}")
    if arr.null_count:
        raise DatasetError(f"{path}: column {col!r} has {arr.null_count} null rows")
    # a writable copy: arrow buffers are read-only, and torch wants to own what it wraps
    values = arr.values.to_numpy(zero_copy_only=False)
    return (np.array(values, dtype=np.float32) if copy else values.astype(np.float32, copy=False)).reshape(-1, dim)


class _RowCheck:
    """The row checks of a vector column over one or more blocks of a file's rows, in any order: NaN/inf in a
    row, and with unit (the fused vectors) a row of zeros, refused; rows off unit norm logged, once a file. The
    error counts and first row are those of all the blocks together, so a file checked a block at a time
    (`Dataset.check_shard`) is refused with the message a whole read of it gives."""

    def __init__(self, path: Path, col: str, *, unit: bool) -> None:
        self.path, self.col, self.unit = path, col, unit
        self.rows = 0
        self.bad: tuple[int, int | None] = (0, None)  # NaN/inf rows: count, first
        self.zero: tuple[int, int | None] = (0, None)
        self.off: tuple[int, int | None, float] = (0, None, 0.0)  # rows off unit norm: count, first, its norm

    @staticmethod
    def _merge(acc: tuple, rows: np.ndarray, first_row: int, *extra) -> tuple:
        if not len(rows):
            return acc
        r = first_row + int(rows[0])
        first = acc[1] is None or r < acc[1]
        return (acc[0] + len(rows), r if first else acc[1], *(extra if first else acc[2:]))

    def add(self, x: np.ndarray, first_row: int = 0) -> None:
        self.rows += len(x)
        self.bad = self._merge(self.bad, np.flatnonzero(~np.isfinite(x).all(axis=1)), first_row)
        if self.unit and len(x):
            norm = np.linalg.norm(x, axis=1)  # NaN for a NaN row: neither zero nor off below
            self.zero = self._merge(self.zero, np.flatnonzero(norm == 0), first_row)
            off = np.flatnonzero(np.abs(norm - 1) > 1e-3)
            self.off = self._merge(self.off, off, first_row, float(norm[off[0]]) if len(off) else 0.0)

    def finish(self) -> None:
        path, col = self.path, self.col
        if self.bad[0]:
            raise DatasetError(f"{path}: column {col!r} has NaN/inf in {self.bad[0]} rows (first at row {self.bad[1]})")
        if self.zero[0]:
            raise DatasetError(f"{path}: column {col!r} has {self.zero[0]} rows of zeros (first at row "
                               f"{self.zero[1]}): a shot needs at least one modality; leave out shots with none")
        if self.off[0] and path not in _WARNED:
            _WARNED.add(path)
            log.warning("%s: %d of %d rows of column %r are not of unit norm (row %d: %.4f); DATASET_FORMAT.md "
                        "wants each row divided by its L2 norm, after the modalities are concatenated", path,
                        self.off[0], self.rows, col, self.off[1], self.off[2])


_WARNED: set[Path] = set()


@dataclass
class TitleInfo:
    title_id: str
    title_embedding: np.ndarray
    kind: str
    split: str
    genres: list[int] | None
    n_shots: int
    shard: int
    """The shard file where the title starts (a title may continue into the next files)."""
    row: int
    """First row of the title inside its shard."""
    pieces: list[tuple[int, int, int]] = field(default_factory=list)
    """(shard, first row, rows) of each file holding part of the title, in order; one entry for most titles."""


@dataclass
class Title:
    info: TitleInfo
    fused: np.ndarray  # (n_shots, fused_dim) float32
    start_s: np.ndarray  # (n_shots,)
    end_s: np.ndarray



def split_for(title_id: str, val_fraction: float, test_fraction: float) -> str:
    """The split of a title drawn from a hash of its id, not from the other titles: a title keeps its split as the
    catalog grows and between runs (so a test title is never trained on by a later refresh), and about
    test_fraction of the titles are "test", val_fraction "val", the rest "train"."""
    if not (0 <= val_fraction <= 1 and 0 <= test_fraction <= 1 and val_fraction + test_fraction <= 1):
        raise DatasetError(f"val_fraction={val_fraction} and test_fraction={test_fraction}: each must be in [0, 1] "
                           "and their sum at most 1")
    u = int.from_bytes(hashlib.blake2b(title_id.encode(), digest_size=8).digest(), "big") / 2.0**64  # in [0, 1)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def check_title_fields(where: str, tid: str, kind, split, genres) -> None:
    """DatasetError naming `where` (a titles.parquet, or the writer) where a title's kind, split (None: train) or
    genres break DATASET_FORMAT.md: what Dataset() refuses, and so what DatasetWriter does not write."""
    if split not in ("train", "val", "test", None):
        raise DatasetError(f"{where}: column 'split' has {split!r} for {tid!r}; use train/val/test")
    if kind not in ("title", "live"):
        raise DatasetError(f"{where}: column 'kind' has {kind!r} for {tid!r}; use 'title' or 'live'")
    if bad := [g for g in genres or [] if not isinstance(g, int | np.integer) or not 0 <= g < N_GENRES]:
        raise DatasetError(f"{where}: column 'genres' of {tid!r} has {bad}: indices into the {N_GENRES} genres of "
                           f"MEDIAFM.md, 0..{N_GENRES - 1}, none null")


class Dataset:
    """An opened, validated v1 dataset. Cheap to open: reads only ids and indices."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a directory; pass a v1 dataset dir (meta.json, titles.parquet, shots/)")
        self.meta = Meta.load(self.root / "meta.json")
        self.shards = sorted((self.root / "shots").glob("*.parquet"))
        if not self.shards:
            raise DatasetError(f"{self.root / 'shots'}: no *.parquet shards")
        self.titles = self._load_titles()
        self._index_shots()
        self._group_starts: dict[int, np.ndarray] = {}  # shard -> its row groups' first rows (`_row_groups`)

    def _load_titles(self) -> dict[str, TitleInfo]:
        path = self.root / "titles.parquet"
        if not path.exists():
            raise DatasetError(f"{path}: missing")
        with _arrow(path):
            t = pq.read_table(path)
        for col in ("title_id", "title_embedding", "kind"):
            if col not in t.column_names:
                raise DatasetError(f"{path}: missing column {col!r}")
        _check_types(path, t.schema, {"title_id": (_is_text, "string"), "kind": (_is_text, "string"),
                                      "split": (_is_text, "string"), "genres": (_is_int_list, "list<int32>")})
        emb = _check_vector_column(t, "title_embedding", self.meta.title_dim, path)
        ids = t.column("title_id").to_pylist()
        if None in ids:
            raise DatasetError(f"{path}: column 'title_id' is null in row {ids.index(None)}; every title needs an id")
        if len(set(ids)) != len(ids):
            seen: dict[str, int] = {}
            for i, tid in enumerate(ids):
                if tid in seen:
                    raise DatasetError(f"{path}: column 'title_id' has {tid!r} twice, rows {seen[tid]} and {i}; "
                                       "one row a title (a title's shots may span files, its row may not repeat)")
                seen[tid] = i
        kinds = t.column("kind").to_pylist()
        splits = t.column("split").to_pylist() if "split" in t.column_names else ["train"] * len(ids)
        genres = t.column("genres").to_pylist() if "genres" in t.column_names else [None] * len(ids)
        out = {}
        for i, tid in enumerate(ids):
            check_title_fields(str(path), tid, kinds[i], splits[i], genres[i])
            out[tid] = TitleInfo(tid, emb[i], kinds[i], splits[i] or "train", genres[i], 0, -1, -1)
        return out

    def _index_shots(self) -> None:
        """One pass over title_id/shot_index only: where each title lives, and order checks.

        A title's rows are contiguous within a file and ordered by shot_index; a file may end in the
        middle of a title, which then continues at the top of the next (non-empty) file. Anything
        else (a title's rows split by another title's, a title resuming further down a later file,
        shot indices that skip, repeat or go back across the pieces) is a DatasetError.
        """
        prev_tail: str | None = None  # the title of the last rows of the previous non-empty file
        for s, path in enumerate(self.shards):
            with _arrow(path):
                pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            for col in ("title_id", "shot_index", "start_s", "end_s", "fused"):
                if col not in names:
                    raise DatasetError(f"{path}: missing column {col!r} (columns: {names})")
            ft = pf.schema_arrow.field("fused").type
            if not pa.types.is_fixed_size_list(ft) or ft.list_size != self.meta.fused_dim:
                got = ft.list_size if pa.types.is_fixed_size_list(ft) else str(ft)
                hint = "" if pa.types.is_fixed_size_list(ft) else _FIXED_LIST_HINT.format(dim=self.meta.fused_dim)
                raise DatasetError(f"{path}: column 'fused' has dim {got}, meta.json says fused_dim="
                                   f"{self.meta.fused_dim}{hint}")
            _check_types(path, pf.schema_arrow, {
                "title_id": (_is_text, "string"), "shot_index": (pa.types.is_integer, "int32"),
                "start_s": (_is_number, "float64"), "end_s": (_is_number, "float64")})
            with _arrow(path):
                t = pf.read(columns=["title_id", "shot_index", "start_s", "end_s"])
            _check_not_null(path, t, t.column_names, "every shot needs its title_id, shot_index, start_s and end_s")
            tids = t.column("title_id").to_pylist()
            idx = t.column("shot_index").to_numpy(zero_copy_only=False)
            self._check_spans(path, tids, t.column("start_s").to_numpy(zero_copy_only=False),
                              t.column("end_s").to_numpy(zero_copy_only=False))
            row = 0
            while row < len(tids):
                tid = tids[row]
                end = row
                while end < len(tids) and tids[end] == tid:
                    end += 1
                info = self.titles.get(tid)
                if info is None:
                    raise DatasetError(f"{path}: column 'title_id' has {tid!r}, absent from titles.parquet")
                if info.pieces:
                    self._check_continuation(info, s, row, end, prev_tail)
                seq = idx[row:end]
                first = info.n_shots
                if not np.array_equal(seq, np.arange(first, first + end - row)):
                    raise DatasetError(self._order_problem(info, path, row, seq, first))
                if not info.pieces:
                    info.shard, info.row = s, row
                info.pieces.append((s, row, end - row))
                info.n_shots += end - row
                row = end
            if tids:
                prev_tail = tids[-1]
        missing = [t for t, i in self.titles.items() if i.shard == -1]
        if missing:
            raise DatasetError(f"{self.root / 'titles.parquet'}: titles {missing[:5]} have no shots")

    @staticmethod
    def _check_spans(path: Path, tids: list[str], start: np.ndarray, end: np.ndarray) -> None:
        """Shot spans are finite seconds that do not end before they start."""
        bad = ~(np.isfinite(start) & np.isfinite(end) & (end >= start))
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{path}: row {r} (title {tids[r]!r}) has span start_s={start[r]}, end_s={end[r]}; "
                               f"a shot's span is finite seconds with end_s >= start_s ({int(bad.sum())} such rows)")

    def _where(self, piece: tuple[int, int, int]) -> str:
        s, row, n = piece
        return f"{self.shards[s].name} rows {row}..{row + n - 1}"

    def _check_continuation(self, info: TitleInfo, s: int, row: int, end: int, prev_tail: str | None) -> None:
        """Rows [row, end) of shard s belong to a title already seen: legal only at the top of this file,
        when the previous non-empty file ended with that title."""
        path, tid, last = self.shards[s], info.title_id, info.pieces[-1]
        if last[0] == s:
            why = f"rows {last[1] + last[2]}..{row - 1} between them hold other titles; write each title's rows together"
        elif row != 0:
            why = (f"it resumes at row {row} of {path.name}; a title may continue into the next file only at "
                   "its top")
        elif prev_tail != tid:
            why = (f"other titles' rows follow it (the file before {path.name} ends with {prev_tail!r}); a title "
                   "may continue only from the last rows of one file into the first rows of the next")
        else:
            return
        raise DatasetError(f"{path}: rows of title {tid!r} are not contiguous (column 'title_id'): "
                           f"{self._where(last)} and {path.name} rows {row}..{end - 1}, but {why}")

    def _order_problem(self, info: TitleInfo, path: Path, row: int, seq: np.ndarray, first: int) -> str:
        tid, n = info.title_id, len(seq)
        want = np.arange(first, first + n)
        k = int(np.flatnonzero(seq != want)[0])
        got, exp = int(seq[k]), int(want[k])
        what = (f"skips shot_index {exp}..{got - 1}" if got > exp else
                f"repeats or goes back to shot_index {got}")
        where = (f" (its rows {row}..{row + n - 1} here continue {self._where(info.pieces[-1])}, shots "
                 f"0..{first - 1})" if info.pieces else "")
        return (f"{path}: column 'shot_index' of title {tid!r} is not {first}..{first + n - 1} in order{where}: "
                f"row {row + k} has {got}, expected {exp} ({what}); sort rows by shot_index with no gaps")

    def clips(self, *, n_tones: int = 100, n_genres: int = N_GENRES) -> pa.Table | None:
        """clips.parquet validated against the titles (None if the dataset has none).

        Raises DatasetError naming the column and clip for a clip past its
        title's end, an unknown title, or a class index out of range.
        """
        path = self.root / "clips.parquet"
        if not path.exists():
            return None
        with _arrow(path):
            t = pq.read_table(path)
        for col in ("clip_id", "title_id", "first_shot", "last_shot"):
            if col not in t.column_names:
                raise DatasetError(f"{path}: missing column {col!r}")
        _check_types(path, t.schema, {
            "clip_id": (_is_text, "string"), "title_id": (_is_text, "string"),
            "first_shot": (pa.types.is_integer, "int32"), "last_shot": (pa.types.is_integer, "int32"),
            "ad_labels": (_is_int_list, "list<int32>"), "tones": (_is_int_list, "list<int32>"),
            "genres": (_is_int_list, "list<int32>"), "popularity": (_is_number, "float64"),
            "clip_worthy": (pa.types.is_boolean, "bool")})
        _check_not_null(path, t, ("clip_id", "title_id", "first_shot", "last_shot"),
                        "every clip needs its id, title and shots (a null marks only a task a clip is not labelled for)")
        if "popularity" in t.column_names:
            pop = t.column("popularity").to_numpy(zero_copy_only=False).astype(np.float64)  # nulls read as NaN
            nan = np.isnan(pop) & ~t.column("popularity").is_null().to_numpy(zero_copy_only=False)
            if (nan | np.isinf(pop)).any():
                row = int(np.flatnonzero(nan | np.isinf(pop))[0])
                raise DatasetError(f"{path}: column 'popularity' is {pop[row]} in row {row}; give a finite number, "
                                   "or null for a clip not labelled for popularity")
        ids = t.column("clip_id").to_pylist()
        tids = t.column("title_id").to_pylist()
        first = t.column("first_shot").to_pylist()
        last = t.column("last_shot").to_pylist()
        for cid, tid, a, b in zip(ids, tids, first, last, strict=True):
            info = self.titles.get(tid)
            if info is None:
                raise DatasetError(f"{path}: clip {cid!r} column 'title_id' names {tid!r}, absent from titles.parquet")
            if a > b:
                raise DatasetError(f"{path}: clip {cid!r} has first_shot {a} after last_shot {b}; a clip is the "
                                   "shots first_shot..last_shot, inclusive")
            if not 0 <= a <= b < info.n_shots:
                raise DatasetError(f"{path}: clip {cid!r} columns 'first_shot'/'last_shot' = {a}..{b} are outside "
                                   f"title {tid!r} (shots 0..{info.n_shots - 1})")
        for col, limit in (("tones", n_tones), ("genres", n_genres), ("ad_labels", None)):
            if col not in t.column_names:
                continue
            for cid, labels in zip(ids, t.column(col).to_pylist(), strict=True):
                if labels is not None and None in labels:
                    raise DatasetError(f"{path}: clip {cid!r} column {col!r} has a null class in {labels}; give "
                                       "class indices, or a null cell for a clip not labelled for the task")
                bad = [x for x in (labels or []) if x < 0 or (limit is not None and x >= limit)]
                if bad:
                    rng = f"0..{limit - 1}" if limit is not None else ">= 0"
                    raise DatasetError(f"{path}: clip {cid!r} column {col!r} has classes {bad} outside {rng}")
        return t

    def split(self, name: str) -> list[TitleInfo]:
        return [i for i in self.titles.values() if i.split == name]

    def fingerprint(self) -> dict:
        """What a training run's data order rests on, to tell the same dataset (wherever it now lies) from another
        one: titles and shots per split, and a digest of the layout and each title's id, split and length (not of
        the vectors: reading them all costs what a pass over the data costs)."""
        h = hashlib.blake2b(json.dumps(self.meta.to_json(), sort_keys=True).encode(), digest_size=16)
        counts: dict[str, list[int]] = {}
        for info in self.titles.values():  # in titles.parquet's order, which the loader's order follows
            h.update(f"{info.title_id}\0{info.split}\0{info.n_shots}\n".encode())
            c = counts.setdefault(info.split, [0, 0])
            c[0], c[1] = c[0] + 1, c[1] + info.n_shots
        return {"digest": h.hexdigest(), **{f"{k}_titles": v[0] for k, v in sorted(counts.items())},
                **{f"{k}_shots": v[1] for k, v in sorted(counts.items())}}

    def _row_groups(self, shard: int, pf: pq.ParquetFile) -> np.ndarray:
        """First row of each row group of the shard, and its row count last (from the file's footer, once)."""
        starts = self._group_starts.get(shard)
        if starts is None:
            md = pf.metadata
            starts = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
            self._group_starts[shard] = starts
        return starts

    def _read_ranges(self, shard: int, ranges: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(fused, start_s, end_s) of rows [row, row + n) of one shard for each (row, n) of `ranges`, reading
        only the row groups that hold them (the footer's row counts say which) and, inside each, no further
        than its last row needed: a tail continued from the previous file, or the first shots of a few
        titles, costs their rows, not the file. Each range's rows are checked (`_check_vector_column`, errors
        naming rows of the file) and are arrays of their own, not views of what was read around them."""
        path = self.shards[shard]
        if not ranges:
            return []
        with _arrow(path):
            pf = pq.ParquetFile(path)
            starts = self._row_groups(shard, pf)
            total = int(starts[-1])
            if max(r + n for r, n in ranges) > total:
                raise DatasetError(f"{path}: has {total} rows, fewer than the index read "
                                   f"({max(r + n for r, n in ranges)})")
            stop: dict[int, int] = {}  # row group -> the file row it is read up to
            for r, n in ranges:
                for g in range(int(np.searchsorted(starts, r, "right")) - 1,
                               int(np.searchsorted(starts, r + n - 1, "right"))):
                    stop[g] = max(stop.get(g, 0), min(r + n, int(starts[g + 1])))
            blocks: list[tuple[int, pa.RecordBatch]] = []  # (file row of its first row, rows) touching a range
            for g in sorted(stop):
                at = int(starts[g])
                for batch in pf.iter_batches(batch_size=READ_ROWS, row_groups=[g],
                                             columns=["start_s", "end_s", "fused"]):
                    if any(r < at + batch.num_rows and at < r + n for r, n in ranges):
                        blocks.append((at, batch))
                    at += batch.num_rows
                    if at >= stop[g]:
                        break
        out = []
        for r, n in ranges:
            parts = [b.slice(max(0, r - at), min(r + n, at + b.num_rows) - max(r, at))
                     for at, b in blocks if r < at + b.num_rows and at < r + n]
            t = pa.Table.from_batches(parts)
            fused = _check_vector_column(t, "fused", self.meta.fused_dim, path, unit=True, first_row=r)
            out.append((fused, np.array(t.column("start_s").to_numpy()), np.array(t.column("end_s").to_numpy())))
        return out

    def _read_rows(self, shard: int, row: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fused, start_s, end_s) of rows [row, row + n) of one shard, reading only the row groups that hold
        them (a title continued from the previous file sits at the top of this one)."""
        return self._read_ranges(shard, [(row, n)])[0]

    def _checked_blocks(self, shard: int, columns: list[str]) -> Iterator[tuple[int, pa.Table, np.ndarray]]:
        """(file row of its first row, the block, its fused rows as a read-only view) of the shard's `columns`,
        READ_ROWS rows at a time; the rows' checks (_RowCheck: finite, not all zeros) over all of them, raised once
        the last block is taken, with the message a whole read gives."""
        path = self.shards[shard]
        check, row = _RowCheck(path, "fused", unit=True), 0
        with _arrow(path):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=columns):
                t = pa.Table.from_batches([batch])
                x = _vector_rows(t, "fused", self.meta.fused_dim, path, copy=False)
                check.add(x, row)
                yield row, t, x
                row += len(x)
        check.finish()

    def _read_whole(self, shard: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fused, start_s, end_s) of every row of one shard, read a block at a time into arrays of their own: the
        shard's vectors are in memory once, not twice (before 2026-12-08 the whole file was read as an arrow
        table, every column a producer added to it included, and then copied), and checked as `check_shard`
        checks them."""
        path = self.shards[shard]
        with _arrow(path):
            n = pq.ParquetFile(path).metadata.num_rows
        fused, start, end = np.empty((n, self.meta.fused_dim), np.float32), np.empty(n), np.empty(n)
        rows = 0
        for row, t, x in self._checked_blocks(shard, ["start_s", "end_s", "fused"]):
            fused[row:row + len(x)] = x
            start[row:row + len(x)] = t.column("start_s").to_numpy()
            end[row:row + len(x)] = t.column("end_s").to_numpy()
            rows = row + len(x)
        if rows != n:
            raise DatasetError(f"{path}: its footer says {n} rows and {rows} were read; write the file again")
        return fused, start, end

    def read_shard(self, shard: int, only: set[str] | None = None) -> dict[str, Title]:
        """Every title that starts in this shard (or those of them in `only`), whole: a title continued
        into the next shard(s) is completed with just its rows at their top (so one shard plus one
        title's tail is in memory). When `only` leaves some of the shard's titles out, the kept ones are
        copies of their rows, not views of the shard's array: a caller holding a few titles of many shards
        (validation batches) holds those titles, not every shard they came from."""
        fused, start, end = self._read_whole(shard)
        kept = [info for info in self.titles.values()
                if info.shard == shard and (only is None or info.title_id in only)]
        # all the shard's rows kept (or all its titles asked for): views cost nothing more than the shard; fewer: copies
        partial = only is not None and sum(n for info in kept for s, _, n in info.pieces if s == shard) < len(fused)

        def rows(x: np.ndarray, r: int, n: int) -> np.ndarray:
            return np.array(x[r:r + n]) if partial else x[r:r + n]

        out = {}
        for info in kept:
            parts = [(rows(fused, r, n), rows(start, r, n), rows(end, r, n)) if s == shard
                     else self._read_rows(s, r, n) for s, r, n in info.pieces]
            if len(parts) == 1:
                out[info.title_id] = Title(info, *parts[0])
            else:
                out[info.title_id] = Title(info, *(np.concatenate(c) for c in zip(*parts, strict=True)))
        return out

    def iter_titles(self, titles: list[TitleInfo] | None = None) -> Iterator[Title]:
        """Stream whole titles shard by shard (each from the shard it starts in): one shard in memory at a
        time, plus the rows of a title that continues into the next shard."""
        wanted = {i.title_id for i in (titles if titles is not None else self.titles.values())}
        for s in range(len(self.shards)):
            if any(i.shard == s and i.title_id in wanted for i in self.titles.values()):
                yield from self.read_shard(s, wanted).values()

    def in_order(self, titles: list[TitleInfo]) -> list[TitleInfo]:
        """`titles` in the order iter_titles streams them: by the shard each starts in, then as titles.parquet
        lists them."""
        wanted = {i.title_id for i in titles}
        return sorted((i for i in self.titles.values() if i.title_id in wanted), key=lambda i: i.shard)

    def iter_heads(self, titles: list[TitleInfo], max_shots: int) -> Iterator[Title]:
        """The first min(n_shots, max_shots) shots of each title, in iter_titles' order, reading only those
        rows: each file that holds some once, and in it only the row groups that hold them, up to the last
        one needed (`_read_ranges`). The Title's arrays are those rows, not n_shots of them (its info still
        says n_shots); they are copies, holding no shard. What validation needs (its windows are the first
        max_shots shots of each title), at a fraction of the cost of reading every shard that holds a title.
        Lazy: a caller that stops early reads no file past the titles it took."""
        order = self.in_order(titles)
        need: dict[int, list[tuple[str, int, int]]] = {}  # file -> (title, row, rows) of the heads' pieces in it
        last: dict[str, int] = {}  # title -> the last file its head reaches
        for info in order:
            left = min(info.n_shots, max_shots)
            for s, r, n in info.pieces:
                if left <= 0:
                    break
                need.setdefault(s, []).append((info.title_id, r, min(n, left)))
                last[info.title_id], left = s, left - min(n, left)
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        k = 0  # the next title of `order` to yield
        for s in sorted(need):
            for (tid, _, _), rows in zip(need[s], self._read_ranges(s, [(r, n) for _, r, n in need[s]]),
                                         strict=True):
                parts.setdefault(tid, []).append(rows)
            # titles come in the order of the file they start in, and a head reaches only later files: every
            # title whose head ends by this file is whole, and yielded in order
            while k < len(order) and last[order[k].title_id] <= s:
                p = parts.pop(order[k].title_id)
                yield Title(order[k], *(p[0] if len(p) == 1 else (np.concatenate(c) for c in zip(*p, strict=True))))
                k += 1

    def check_shard(self, shard: int) -> int:
        """Every row of the shard's fused column finite and not all zeros, the check `read_shard` makes when
        training reaches the shard, made now (the trainer's preflight): DatasetError with the message a whole
        read gives, naming the file and the first bad row. Streams the file a block of READ_ROWS rows at a
        time and keeps nothing. Returns the rows checked."""
        rows = 0
        for row, _, x in self._checked_blocks(shard, ["fused"]):
            rows = row + len(x)
        return rows


class DatasetWriter:
    """Writes a v1 dataset atomically: into DIR.partial, renamed to DIR on close.

    A shard is written once it holds at least `shard_shots` rows, after the title that crossed the
    mark (a title stays in one file). With split_titles=True every shard but the last holds exactly
    `shard_shots` rows and a title may continue at the top of the next file, as the format allows.
    """

    def __init__(self, root: str | Path, meta: Meta, *, shard_shots: int = SHARD_SHOTS,
                 split_titles: bool = False) -> None:
        self.root = Path(root).resolve()  # a link to a dataset: the dataset it names is replaced, the link kept
        self.meta = meta
        if shard_shots < 1:
            raise DatasetError(f"shard_shots must be >= 1, got {shard_shots}")
        self.shard_shots = shard_shots
        self.split_titles = split_titles
        self.tmp = self.root.with_name(self.root.name + ".partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        (self.tmp / "shots").mkdir(parents=True)
        self._titles: list[dict] = []
        self._ids: set[str] = set()
        self._rows: list[dict] = []
        self._n_rows = 0
        self._shard = 0
        self._clips: list[dict] | None = None

    def add_title(self, *, title_id: str, title_embedding: np.ndarray, fused: np.ndarray,
                  start_s: np.ndarray, end_s: np.ndarray, kind: str = "title",
                  split: str = "train", genres: list[int] | None = None) -> None:
        """One title, checked here as Dataset() checks what it reads (DatasetError naming the title and what is
        wrong): before (2026-12-07), a title of no shots, one added twice, an unknown split or kind, or genres out
        of range were written, the old dataset replaced, and the new one then refused by every reader; times or a
        title embedding of the wrong length failed later in pyarrow, naming nothing."""
        fused = np.asarray(fused, np.float32)
        start_s, end_s = np.asarray(start_s, np.float64), np.asarray(end_s, np.float64)
        title_embedding = np.asarray(title_embedding, np.float32)
        what = f"title {title_id!r}"
        if not isinstance(title_id, str) or not title_id:
            raise DatasetError(f"{what}: a title id is a non-empty string")
        if title_id in self._ids:
            raise DatasetError(f"{what} was added twice; a dataset holds each title once")
        if fused.ndim != 2 or fused.shape[1] != self.meta.fused_dim:
            raise DatasetError(f"{what}: fused has shape {fused.shape}, expected (n, {self.meta.fused_dim})")
        if len(fused) == 0:
            raise DatasetError(f"{what} has no shots")
        if start_s.shape != (len(fused),) or end_s.shape != (len(fused),):
            raise DatasetError(f"{what}: start_s {start_s.shape} and end_s {end_s.shape}, expected one time per "
                               f"shot ({len(fused)},)")
        if title_embedding.shape != (self.meta.title_dim,):
            raise DatasetError(f"{what}: title_embedding has shape {title_embedding.shape}, expected "
                               f"({self.meta.title_dim},)")
        check_title_fields("DatasetWriter", title_id, kind, split, genres)
        self._ids.add(title_id)
        self._titles.append(dict(title_id=title_id, title_embedding=title_embedding, kind=kind, split=split,
                                 genres=None if genres is None else [int(g) for g in genres]))
        self._rows.append(dict(title_id=title_id, fused=fused, start_s=start_s, end_s=end_s, first=0))
        self._n_rows += len(fused)
        if not self.split_titles:
            if self._n_rows >= self.shard_shots:
                self._flush()
            return
        while self._n_rows >= self.shard_shots:  # a full file; the rest of the title opens the next one
            over = self._n_rows - self.shard_shots
            last = self._rows[-1]
            keep = len(last["fused"]) - over
            rest = dict(title_id=last["title_id"], first=last["first"] + keep,
                        **{k: last[k][keep:] for k in ("fused", "start_s", "end_s")})
            self._rows[-1] = dict(last, **{k: last[k][:keep] for k in ("fused", "start_s", "end_s")})
            self._flush()
            if over:
                self._rows, self._n_rows = [rest], over

    def _flush(self) -> None:
        if not self._rows:
            return
        fused = np.concatenate([r["fused"] for r in self._rows])
        table = pa.table({
            "title_id": pa.array([r["title_id"] for r in self._rows for _ in range(len(r["fused"]))], pa.string()),
            "shot_index": pa.array(np.concatenate([r["first"] + np.arange(len(r["fused"]))
                                                   for r in self._rows]).astype(np.int32)),
            "start_s": pa.array(np.concatenate([r["start_s"] for r in self._rows])),
            "end_s": pa.array(np.concatenate([r["end_s"] for r in self._rows])),
            "fused": pa.FixedSizeListArray.from_arrays(pa.array(fused.reshape(-1)), self.meta.fused_dim),
        })
        # row groups of READ_ROWS: a reader that wants a few titles' first shots (validation) or a continued
        # title's tail decodes the groups that hold them, not the file (pyarrow's default is one group a file)
        pq.write_table(table, self.tmp / "shots" / f"part-{self._shard:05d}.parquet", row_group_size=READ_ROWS)
        self._shard += 1
        self._rows, self._n_rows = [], 0

    def add_clips(self, rows: list[dict]) -> None:
        """Evaluation labels: rows with the columns of clips.parquet (None = unlabelled)."""
        self._clips = (self._clips or []) + list(rows)

    def close(self) -> Path:
        if not self._titles:  # what is at root stays as it was
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise DatasetError(f"{self.root}: no title was added; a dataset holds at least one, and the one there "
                               "(if any) is left as it was")
        self._flush()
        if self._clips is not None:
            pq.write_table(pa.Table.from_pylist(self._clips, schema=CLIPS_SCHEMA), self.tmp / "clips.parquet")
        ts = self._titles
        emb = np.stack([t["title_embedding"] for t in ts]).astype(np.float32) if ts else np.zeros((0, self.meta.title_dim), np.float32)
        table = pa.table({
            "title_id": pa.array([t["title_id"] for t in ts], pa.string()),
            "title_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), self.meta.title_dim),
            "kind": pa.array([t["kind"] for t in ts], pa.string()),
            "split": pa.array([t["split"] for t in ts], pa.string()),
            "genres": pa.array([t["genres"] for t in ts], pa.list_(pa.int32())),
        })
        pq.write_table(table, self.tmp / "titles.parquet")
        (self.tmp / "meta.json").write_text(json.dumps(self.meta.to_json(), indent=2) + "\n")
        # the old dataset moves aside before the new one takes its name, and goes only then: a kill in between
        # leaves DIR.old whole, never no dataset at all (before: deleted first, then the new one renamed in)
        old = self.root.with_name(self.root.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.root.exists():
            os.replace(self.root, old)
        os.replace(self.tmp, self.root)
        shutil.rmtree(old, ignore_errors=True)
        return self.root
