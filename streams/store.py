"""The RocksDB stores behind a worker's tables, under one memory budget.

    Runtime ──► Table ──► faust's Store (one RocksDB per table partition) ──► TableMemory
                                                                                one block cache, memtables charged to it

Faust opens a RocksDB for every partition of every table a worker owns, each
with 64 MiB write buffers (up to 3) and its own 2 GiB block cache. A worker's
memory then grew with the partitions it owned and the work it had done: the
contextualise stage's shots table filled a 64 MiB memtable per partition before
the first flush (bench/catalog.py, 60 titles of 1,500 shots on 4 partitions:
RocksDB's LOG shows a flush of 66 MB per memtable). Here every store of the
worker shares one LRU cache of `table_memory_mb`, and one write-buffer manager
charges the memtables to it (RocksDB's "cost memtable memory to block cache"),
so the stores together stay near that figure however many partitions the worker
holds: once memtables take about half the budget, the store being written flushes its
memtable (a soft limit: flushes must keep up with the writes, as they do at a stage's rate).
"""

from __future__ import annotations

import rocksdict
from faust.stores import rocksdb as faust_rocksdb


class TableMemory:
    """One budget for all of a worker's RocksDB stores: a shared block cache, with memtables charged to it."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.cache = rocksdict.Cache(budget_bytes)
        # allow_stall=False: past the budget RocksDB flushes; it never blocks a write (writes run on the
        # event loop's thread).
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            budget_bytes // 2, False, self.cache)

    def usage(self) -> int:
        """Bytes in the block cache, the memtables charged to it included."""
        return self.cache.get_usage()


class _Options(faust_rocksdb.RocksDBOptions):
    """Faust's RocksDB options (rocksdict driver) with the worker's shared cache and write-buffer manager."""

    def __init__(self, memory: TableMemory, **kwargs) -> None:
        super().__init__(write_buffer_size=memory.budget // 4, max_write_buffer_number=2, use_rocksdict=True,
                         **kwargs)
        self.memory = memory

    def as_options(self) -> rocksdict.Options:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_max_open_files(self.max_open_files)
        opts.set_write_buffer_size(self.write_buffer_size)
        opts.set_max_write_buffer_number(self.max_write_buffer_number)
        opts.set_target_file_size_base(self.target_file_size_base)
        opts.set_write_buffer_manager(self.memory.write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(self.memory.cache)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        opts.set_block_based_table_factory(table)
        return opts


def budgeted(store: faust_rocksdb.Store, memory: TableMemory) -> faust_rocksdb.Store:
    """Faust's RocksDB store (rocksdict), just built, its memory taken from the worker's TableMemory.

    The store's options are replaced before any of its databases exists: Faust opens them with
    `store.rocksdb_options` only when a partition is first used (Store._open_for_partition), never while
    the store is being built.
    """
    if not isinstance(store, faust_rocksdb.Store) or not store.use_rocksdict:  # pragma: no cover - app store=rocksdb://
        raise RuntimeError(f"the tables need faust's RocksDB store with its rocksdict driver, not {store!r} "
                           "(store='rocksdb://', pip install 'faust-streaming[rocksdict]')")
    store.rocksdb_options = _Options(memory, **{k: v for k, v in store.options.items()
                                                if k in ("max_open_files", "ttl")})
    return store
