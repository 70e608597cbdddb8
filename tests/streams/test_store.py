"""A worker's table stores share one memory budget (streams/store.py), on real RocksDB (rocksdict)."""

from __future__ import annotations

import os
import time

import pytest
from prometheus_client import REGISTRY

from mediafm.config import Settings
from streams.app import create_runtime
from streams.store import TableMemory, _Options

MIB = 2**20


@pytest.fixture
def open_stores(tmp_path):
    opened = []

    def open_(memory: TableMemory, n: int) -> list:
        opened.extend(_Options(memory).open(tmp_path / f"shots-{len(opened) + p}.db") for p in range(n))
        return opened[-n:]

    yield open_
    for db in opened:
        db.close()


def caught_up(dbs) -> None:
    """Wait until no store has a flush pending or running: a writer that RocksDB's flushes keep up with, as
    they keep up with a worker (~15 MB/s of fused shots); without it the limit is as soft as the disk is slow."""
    def flushing():
        return any(db.property_int_value("rocksdb.mem-table-flush-pending")
                   or db.property_int_value("rocksdb.num-running-flushes") for db in dbs)

    deadline = time.monotonic() + 60
    while flushing():
        assert time.monotonic() < deadline, "RocksDB's flushes did not finish in 60 s"
        time.sleep(0.001)


def test_stores_of_all_partitions_stay_within_one_budget(open_stores):
    """The contextualise stage's pattern at title size: 1,500 shots of 10 KB written, read back and deleted per
    title, 40 titles over 4 partitions' stores: 600 MB through stores that share 16 MiB."""
    memory = TableMemory(16 * MIB)
    dbs = open_stores(memory, 4)
    value = os.urandom(10_000)
    peak = writing = 0
    for t in range(40):
        db = dbs[t % 4]
        keys = [f"title-{t}/{i:07d}".encode() for i in range(1500)]
        for i, k in enumerate(keys):
            db[k] = value
            used = memory.usage()  # every title's writes: the memtables fill, then flush
            peak = max(peak, used)
            if t == 0:
                writing = max(writing, used)
            if i % 100 == 0:
                caught_up(dbs)
        assert all(db[k] == value for k in keys)  # read back whole, part from memtables, part from flushed files
        peak = max(peak, memory.usage())
        for k in keys:
            del db[k]
    # memtables are charged to the shared cache (while the first title is written, nothing else is in it) ...
    assert writing > 4 * MIB, f"memtables not charged to the shared cache ({writing / MIB:.1f} MiB)"
    # ... and flushed once half the budget is in them; the cache holds what was read back too
    assert peak <= 1.25 * 16 * MIB, f"stores used {peak / MIB:.1f} MiB of a 16 MiB budget"
    assert all(db.get(b"title-0/0000000") is None for db in dbs)


def test_one_budget_whatever_the_partitions(open_stores):
    """A worker owning 16 partitions gets no more table memory than its budget (with Faust's defaults each
    partition's store may hold 3 x 64 MiB of memtables)."""
    memory = TableMemory(64 * MIB)
    dbs = open_stores(memory, 16)
    value, peak = os.urandom(10_000), 0
    for i in range(3000):  # 480 MB
        for db in dbs:
            db[f"{i:07d}".encode()] = value
        peak = max(peak, memory.usage())
        caught_up(dbs)
    assert 16 * MIB < peak <= 1.25 * 64 * MIB, f"{peak / MIB:.1f} MiB"
    assert all(db[b"0001234"] == value for db in dbs)


def test_a_workers_tables_open_their_stores_under_its_budget(tmp_path):
    """The worker's Table builds Faust's own RocksDB store and gives it the worker's budget before any of its
    databases is opened; the metric reports the budget's use."""
    rt = create_runtime(Settings(state_dir=tmp_path, topic_prefix="budget", table_memory_mb=16))
    stores = [table.data for table in rt.app.tables.values()]
    assert len(stores) >= 3
    memory = stores[0].rocksdb_options.memory
    assert memory.budget == 16 * MIB
    for store in stores:
        assert type(store.rocksdb_options) is _Options and store.rocksdb_options.memory is memory
        assert not store._dbs, "a database was opened before its options were replaced"
    value = os.urandom(10_000)
    dbs = [store._db_for_partition(0) for store in stores[:2]]  # opened as the first event of partition 0 opens it
    try:
        for i in range(300):  # 6 MB of memtables, under the 8 MiB that starts a flush
            for db in dbs:
                db[f"{i:07d}".encode()] = value
        assert 4 * MIB < REGISTRY.get_sample_value("mediafm_table_memory_bytes") <= 1.25 * 16 * MIB
    finally:
        for db in dbs:
            db.close()
