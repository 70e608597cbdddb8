"""Batches of shot windows for training, streamed from a v1 dataset.

Each epoch has a plan fixed by (seed, epoch): shard order, title order inside
each shard, and a random crop of at most `max_shots` for each longer title.
A batch is `batch_size` consecutive entries of the plan, padded to the longest
window. Because the plan is a pure function of (seed, epoch), the data
position of a checkpoint is two integers (epoch, batch), and a resumed run
sees exactly the batches the uninterrupted run would have seen. Only one
shard is in memory at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mediafm.dataset import Dataset, Title, TitleInfo


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
    """

    def __init__(self, ds: Dataset, titles: list[TitleInfo], *, batch_size: int, max_shots: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        if not titles:
            raise ValueError(f"{ds.root / 'titles.parquet'}: no titles to train on: none has split 'train' (column "
                             "'split'; a title without one, or a null cell, is train)")
        self.ds, self.titles = ds, titles
        self.batch_size, self.max_shots, self.seed = batch_size, max_shots, seed
        self.rank, self.world = rank, world
        self.epoch, self.batch = 0, 0  # position: the next batch to yield
        self._shard: tuple[int, dict[str, Title]] | None = None

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

    def _title(self, info: TitleInfo) -> Title:
        if self._shard is None or self._shard[0] != info.shard:
            self._shard = (info.shard, self.ds.read_shard(info.shard))
        return self._shard[1][info.title_id]

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

    def __iter__(self) -> Iterator[Batch]:
        while True:
            plan = self.plan(self.epoch)
            # drop the ragged tail, and the last batches short of a multiple of world (every rank takes as many
            # batches an epoch); tiny sets still train, a rank past the plan wrapping round to its start
            n_batches = len(plan) // self.batch_size // self.world * self.world or self.world
            while self.batch < n_batches:
                i = self.batch
                self.batch += 1
                if i % self.world != self.rank:
                    continue
                lo = i * self.batch_size
                chunk = plan[lo : lo + self.batch_size] if lo < len(plan) else plan[lo % len(plan) :][: self.batch_size]
                yield collate([(self._title(info), s, n) for info, s, n in chunk])
            self.epoch, self.batch = self.epoch + 1, 0


def eval_batches(ds: Dataset, titles: list[TitleInfo], *, batch_size: int, max_shots: int,
                 max_batches: int | None = None) -> Iterator[Batch]:
    """Fixed validation windows: the first max_shots shots of each title, in dataset order."""
    chunk: list[tuple[Title, int, int]] = []
    done = 0
    for title in ds.iter_titles(titles):
        chunk.append((title, 0, min(title.info.n_shots, max_shots)))
        if len(chunk) == batch_size:
            yield collate(chunk)
            chunk, done = [], done + 1
            if max_batches is not None and done >= max_batches:
                return
    if chunk:
        yield collate(chunk)


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
