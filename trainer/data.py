"""Batches of shot windows for training, streamed from a v1 dataset.

Each epoch has a plan fixed by (seed, epoch): shard order, title order inside
each shard, and a random crop of at most `max_shots` for each longer title.
A batch is `batch_size` consecutive entries of the plan, padded to the longest
window. Because the plan is a pure function of (seed, epoch), the data
position of a checkpoint is two integers (epoch, batch), and a resumed run
sees exactly the batches the uninterrupted run would have seen. The
shards are read in a background thread, `prefetch` shards ahead of the
batch being trained on (`WindowLoader`), by the same code and in the same
order as without it, so the batches and the resume are the same.

Validation windows are fixed: `EvalWindows` reads only their rows once and
keeps them in memory (up to a byte budget) for every later validation.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mediafm.dataset import Dataset, Title, TitleInfo

log = logging.getLogger(__name__)
PREFETCH = 2
"""Shards the training loader reads ahead by default (`WindowLoader`, TrainConfig.prefetch)."""


@dataclass
class Batch:
    shots: torch.Tensor  # (B, T, fused_dim) float32, zero padding
    title: torch.Tensor  # (B, title_dim)
    lengths: torch.Tensor  # (B,) int64
    title_ids: list[str]
    starts: list[int]  # window start inside its title


def collate(windows: list[tuple[Title, int, int]]) -> Batch:
    """[(title, start, length)] -> padded Batch."""
    T = max(n for _, _, n in windows)
    D = windows[0][0].fused.shape[1]
    shots = np.zeros((len(windows), T, D), np.float32)
    for i, (t, s, n) in enumerate(windows):
        shots[i, :n] = t.fused[s : s + n]
    return Batch(
        shots=torch.from_numpy(shots),
        title=torch.from_numpy(np.stack([t.info.title_embedding for t, _, _ in windows])),
        lengths=torch.tensor([n for _, _, n in windows], dtype=torch.long),
        title_ids=[t.info.title_id for t, _, _ in windows],
        starts=[s for _, s, _ in windows],
    )


class _Stopped(Exception):
    """The reader thread was told to stop (its consumer closed or was dropped)."""


class _Reader:
    """A daemon thread running a loader's batch stream ahead of the training thread.

    The stream is the synchronous loader's own code (`WindowLoader._stream`), so the thread makes the same
    batches in the same order; the training thread takes them with the position after each. Bounded: before
    each shard read the thread waits until it would be at most `depth` shards ahead of the batch last taken
    (or no batch is waiting: the next batch is always made, whatever shards it spans), and it waits while
    `4 * depth` finished batches are waiting (a shard of many short titles, or a set smaller than a batch,
    which reads nothing new, cannot fill memory). An exception in the thread (a DatasetError from a shard) is
    raised in the training thread where that batch would have been, with its message. `stop` (the consumer
    closed, dropped or the loader closed) ends it at its next wait, at most one shard read later; as a daemon
    it never holds the process open.
    """

    def __init__(self, stream: Callable[..., Iterator], epoch: int, batch: int, depth: int) -> None:
        self.depth = depth
        self._cond = threading.Condition()
        self._items: deque = deque()
        self._taken = 0  # shard reads done when the batch the consumer took last was made
        self._stopped = False
        self._thread = threading.Thread(target=self._run, args=(stream, epoch, batch), daemon=True,
                                        name="WindowLoader-reader")
        self._thread.start()

    def _before_read(self, reads: int) -> None:
        with self._cond:
            # nothing waiting: the read is for the next batch the step takes, however many shards that batch
            # spans (waiting then would wait for a batch that this read makes: a deadlock)
            self._cond.wait_for(lambda: self._stopped or not self._items or reads + 1 - self._taken <= self.depth)
            if self._stopped:
                raise _Stopped

    def _run(self, stream: Callable[..., Iterator], epoch: int, batch: int) -> None:
        try:
            for item in stream(epoch, batch, self._before_read):
                with self._cond:
                    self._cond.wait_for(lambda: self._stopped or len(self._items) < 4 * self.depth)
                    if self._stopped:
                        return
                    self._items.append(item)
                    self._cond.notify_all()
        except _Stopped:
            pass
        except BaseException as e:  # any failure goes to the consumer, who raises it where the batch was due
            with self._cond:
                self._items.append(e)
                self._cond.notify_all()

    def take(self) -> tuple[Batch, int, int]:
        """The next (batch, epoch, batch position after it); raises what the thread raised."""
        with self._cond:
            while not self._items:
                if not self._thread.is_alive():  # it puts an item or an error before it ends: never seen
                    raise RuntimeError("WindowLoader: the reader thread ended without a batch or an error")
                self._cond.wait(timeout=1.0)
            item = self._items.popleft()
            if isinstance(item, BaseException):
                self._stopped = True
                raise item
            batch, epoch, position, reads = item
            self._taken = reads
            self._cond.notify_all()
            return batch, epoch, position

    def stop(self, *, wait: float | None = None) -> None:
        with self._cond:
            self._stopped = True
            self._items.clear()
            self._cond.notify_all()
        if wait is not None:
            self._thread.join(wait)

    def alive(self) -> bool:
        return self._thread.is_alive()


class WindowLoader:
    """Endless, resumable stream of training batches over `titles`.

    rank/world split each batch list between DDP processes (batch i goes to
    rank i % world), so every process sees different data. An epoch has a
    multiple of `world` batches, so every rank takes as many of them and the
    ranks, stepping in lockstep, are always in the same epoch: after k steps
    all of them have consumed the same `world * k` batches, a position any
    rank's state_dict gives (`load_state_dict` rounds it up to a multiple of
    the world it was saved with), and a resumed run continues each rank
    exactly where it stopped.

    prefetch: shards read ahead in a background thread (`_Reader`), which also
    pads the batches, so the training step does not wait for a read (pyarrow's
    decoding and numpy's copies release the GIL). The thread runs the same code
    as prefetch=0 (everything on the calling thread, as before), so batches,
    order and positions are the same. Memory: the shard being read, and at
    most 4 x prefetch finished batches, from at most `prefetch` shards past
    the one in training. Close the loader (or drop its iterator) to stop the
    thread.
    """

    def __init__(self, ds: Dataset, titles: list[TitleInfo], *, batch_size: int, max_shots: int, seed: int,
                 rank: int = 0, world: int = 1, prefetch: int = PREFETCH) -> None:
        if not titles:
            raise ValueError(f"{ds.root / 'titles.parquet'}: no titles to train on: none has split 'train' (column "
                             "'split'; a title without one, or a null cell, is train)")
        if prefetch < 0:
            raise ValueError(f"prefetch={prefetch}: give the shards to read ahead, >= 0 (0: read on the calling "
                             "thread)")
        self.ds, self.titles = ds, titles
        self.batch_size, self.max_shots, self.seed = batch_size, max_shots, seed
        self.rank, self.world = rank, world
        self.prefetch = prefetch
        self.epoch, self.batch = 0, 0  # position: the next batch to yield
        self._readers: list[_Reader] = []

    def plan(self, epoch: int) -> list[tuple[TitleInfo, int, int]]:
        """(title, start, length) for every window of the epoch, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        by_shard: dict[int, list[TitleInfo]] = {}
        for info in self.titles:
            by_shard.setdefault(info.shard, []).append(info)
        out = []
        for shard in rng.permutation(sorted(by_shard)):
            infos = by_shard[int(shard)]
            for j in rng.permutation(len(infos)):
                info = infos[j]
                n = min(info.n_shots, self.max_shots)
                start = int(rng.integers(0, info.n_shots - n + 1))
                out.append((info, start, n))
        return out

    def state_dict(self) -> dict:
        """This rank's position (rank 0's is 1 + the last batch it took, so 2k + 1 style under world 2) and the
        world it strides over: `load_state_dict` turns it into the position every rank has reached."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint data seed {state['seed']} != configured seed {self.seed}")
        world = state.get("world", self.world)  # checkpoints from before the key: the world of this run
        # every rank has taken its batch of each group of `world` up to the saved one: resume after the group,
        # or rank 1 (behind rank 0's counter) would take again the batch it trained just before the checkpoint
        self.epoch, self.batch = state["epoch"], -(-state["batch"] // world) * world

    def _stream(self, epoch: int, batch: int, before_read: Callable[[int], None] | None = None) -> Iterator:
        """(Batch, epoch, batch position after it, shard reads so far) from position (epoch, batch) on: the
        loader itself, run on the calling thread (prefetch 0) or in the reader thread. One shard in memory at a
        time (dropped before the next is read); before_read(reads done) is called before each read."""
        shard: tuple[int, dict[str, Title]] | None = None
        reads = 0

        def title(info: TitleInfo) -> Title:
            nonlocal shard, reads
            if shard is None or shard[0] != info.shard:
                if before_read is not None:
                    before_read(reads)
                shard = None  # the old shard goes before the new one comes: one in memory, not two
                shard = (info.shard, self.ds.read_shard(info.shard))
                reads += 1
            return shard[1][info.title_id]

        while True:
            plan = self.plan(epoch)
            # drop the ragged tail, and the last batches short of a multiple of world (every rank takes as many
            # batches an epoch); tiny sets still train, a rank past the plan wrapping round to its start
            n_batches = len(plan) // self.batch_size // self.world * self.world or self.world
            while batch < n_batches:
                i = batch
                batch += 1
                if i % self.world != self.rank:
                    continue
                lo = i * self.batch_size
                chunk = plan[lo : lo + self.batch_size] if lo < len(plan) else plan[lo % len(plan) :][: self.batch_size]
                yield collate([(title(info), s, n) for info, s, n in chunk]), epoch, batch, reads
            epoch, batch = epoch + 1, 0

    def __iter__(self) -> Iterator[Batch]:
        if not self.prefetch:
            for b, epoch, position, _ in self._stream(self.epoch, self.batch):
                self.epoch, self.batch = epoch, position
                yield b
            return  # not reached: the stream is endless
        self._readers = [r for r in self._readers if r.alive()]
        reader = _Reader(self._stream, self.epoch, self.batch, self.prefetch)
        self._readers.append(reader)
        try:
            while True:
                b, self.epoch, self.batch = reader.take()
                yield b
        finally:  # closed, dropped (garbage collected) or raised: the thread stops at its next wait
            reader.stop()

    def close(self, timeout: float = 60.0) -> None:
        """Stop the reader threads of this loader's iterators and wait for them (each ends at its next wait,
        after the shard read it may be in). Iterating again starts a new one from the current position."""
        for r in self._readers:
            r.stop(wait=timeout)
        self._readers = []


def eval_batches(ds: Dataset, titles: list[TitleInfo], *, batch_size: int, max_shots: int,
                 max_batches: int | None = None) -> Iterator[Batch]:
    """Fixed validation windows: the first max_shots shots of each title, in dataset order. Reads only those
    rows (`Dataset.iter_heads`), not the shards that hold them."""
    return window_batches(ds.iter_heads(titles, max_shots), batch_size=batch_size, max_shots=max_shots,
                          max_batches=max_batches)


def window_batches(titles: Iterable[Title], *, batch_size: int, max_shots: int,
                   max_batches: int | None = None) -> Iterator[Batch]:
    """Batches of the first max_shots shots of each title, in the order given, at most max_batches of them."""
    chunk: list[tuple[Title, int, int]] = []
    done = 0
    for title in titles:
        chunk.append((title, 0, min(title.info.n_shots, max_shots)))
        if len(chunk) == batch_size:
            yield collate(chunk)
            chunk, done = [], done + 1
            if max_batches is not None and done >= max_batches:
                return
    if chunk:
        yield collate(chunk)


class EvalWindows:
    """eval_batches' batches, the same at every validation, kept in memory after the first one.

    A validation reads the same windows each time (the first max_shots shots of the first max_batches x
    batch_size validation titles); the first reads them (only their rows, `eval_batches`), every later one
    takes them from memory and reads nothing. Bounded by budget_bytes: the batches sizes are known from the
    index before anything is read (each is padded to its longest window), so the leading batches that fit are
    kept and the rest are read again at every validation, which a log line says once, with what keeping all
    would take. budget_bytes=0 keeps none (every validation reads, as eval_batches does).
    """

    def __init__(self, ds: Dataset, titles: list[TitleInfo], *, batch_size: int, max_shots: int,
                 max_batches: int | None = None, budget_bytes: int = 2 << 30) -> None:
        self.ds, self.batch_size, self.max_shots = ds, batch_size, max_shots
        order = ds.in_order(titles)
        self.titles = order[: max_batches * batch_size] if max_batches is not None else order
        chunks = [self.titles[i : i + batch_size] for i in range(0, len(self.titles), batch_size)]
        row = 4 * ds.meta.fused_dim  # float32 shots; + title embedding and length per window
        sizes = [len(c) * (max(min(i.n_shots, max_shots) for i in c) * row + 4 * ds.meta.title_dim + 8)
                 for c in chunks]
        total, self.keep = 0, 0  # the leading batches that fit the budget
        for size in sizes:
            if total + size > budget_bytes:
                break
            total, self.keep = total + size, self.keep + 1
        self.bytes, self.needed = total, sum(sizes)
        if self.keep < len(chunks) and budget_bytes:  # none asked for (0): nothing to say
            log.warning("validation windows: %d of %d batches (%.0f MiB) kept in memory, the other %d read again at "
                        "every validation; all of them take %.0f MiB (raise val_cache_mb to keep them)", self.keep,
                        len(chunks), total / 2**20, len(chunks) - self.keep, sum(sizes) / 2**20)
        self._kept: list[Batch] = []

    def __len__(self) -> int:
        return -(-len(self.titles) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        yield from self._kept
        rest = self.titles[len(self._kept) * self.batch_size :]
        for b in eval_batches(self.ds, rest, batch_size=self.batch_size, max_shots=self.max_shots):
            if len(self._kept) < self.keep:
                self._kept.append(b)
            yield b


def shot_moments(ds: Dataset, titles: list[TitleInfo], *, max_shots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), covariance (D, D)) of the titles' fused shots, float64: at most max_shots of them, every k-th
    of each title, summed title by title (memory D x D, not shots x D); a function of the data, so the same on
    every rank and on resume. The whitened loss (trainer/train.py `whitening`) and the grid's spectrum
    (bench/worlds.py `shot_spectrum`) read it."""
    total = sum(i.n_shots for i in titles)
    if not total:
        raise ValueError("no shots in these titles to take the mean and covariance of")
    every, dim = max(1, -(-total // max_shots)), ds.meta.fused_dim
    n, s, ss = 0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64)
    for title in ds.iter_titles(titles):
        x = torch.from_numpy(title.fused[::every]).double()
        n, s, ss = n + len(x), s + x.sum(0), ss + x.T @ x
    mean = s / n
    return mean, (ss - n * torch.outer(mean, mean)) / max(n - 1, 1)
