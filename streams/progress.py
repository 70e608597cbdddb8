"""Progress records the stages keep in their tables: small pure classes, msgpack in the changelogs.

TitleProgress (contextualise-titles): which of a title's n shots have arrived, the offset of each in its
partition of the fused topic (streams/fused_source.py reads them back from there), and whether it is done
(or where a publication whose shots were gone, or some refused by a stage before, was given up), and which
shots a stage before refused.
LiveProgress (live-events): the next shot expected, how many have their final embedding, n once known,
the MediaFM version the event is pinned to, and its shots' profile.

The wire formats extend those the tables have always held, so state written by
an older worker is read by a newer one. One exception: a title in flight under a
worker from before the offsets (it kept its shots in a table, contextualise-shots)
has its counted shots forgotten (TitleProgress.forgotten), and they must be
published again; a finished title stays finished.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import msgpack
import numpy as np


@dataclass
class TitleProgress:
    """Bit i of `have` is set when shot i of the title has arrived; offsets[i] is where it is in
    `partition` of the fused topic (-1: not arrived). A finished title's record keeps no offsets."""

    n: int
    have: bytearray = field(default_factory=bytearray)
    done: bool = False
    partition: int = -1
    offsets: np.ndarray = field(default=None)  # type: ignore[assignment]
    forgotten: int = 0
    """Shots an older worker counted without an offset (from_bytes): they have to come again."""
    floor: int = -1
    """A publication of this request was given up at this offset of `partition` (its shots were gone from the
    topic): a redelivery at or below it is not counted, and shots after it start the title afresh."""
    refused: bytearray = field(default_factory=bytearray)
    """Bit i is set when a stage before refused shot i (ShotsRefused); empty: none was. A copy of it that arrives
    after all the same is taken. Once every shot has arrived or been refused (settled), the publication is given
    up: dead-lettered for the title, and its record starts afresh after that event (floor), as for shots gone."""
    why: str = ""
    """The first refusal's words (shots, stage, reason), for the title's dead letter."""

    def __post_init__(self) -> None:
        self.have = bytearray(self.have) or bytearray((self.n + 7) // 8)
        if len(self.have) != (self.n + 7) // 8:
            raise ValueError(f"progress of {self.n} shots needs {(self.n + 7) // 8} bytes, has {len(self.have)}")
        if self.offsets is None:
            self.offsets = np.full(self.n, -1, np.int64)
        self.refused = bytearray(self.refused)

    @classmethod
    def from_bytes(cls, raw: bytes) -> TitleProgress:
        d = msgpack.unpackb(raw)
        p = cls(n=d["n"], have=bytearray(d["have"]), done=d["done"], partition=d.get("p", -1),
                floor=d.get("floor", -1), refused=bytearray(d.get("rf", b"")), why=d.get("why", ""))
        if "offs" in d:  # deltas, so that a title's mostly consecutive offsets compress to little
            p.offsets = np.cumsum(np.frombuffer(zlib.decompress(d["offs"]), "<i8"))
        elif not p.done and p.count:  # an older worker's: the shots it held in its table are not known here
            p.forgotten, p.have = p.count, bytearray(len(p.have))
        return p

    def to_bytes(self) -> bytes:
        d = {"n": self.n, "have": bytes(self.have), "done": self.done}
        if not self.done:
            d["p"] = self.partition
            d["offs"] = zlib.compress(np.diff(self.offsets, prepend=0).astype("<i8").tobytes(), 1)
            if self.floor >= 0:
                d["floor"] = self.floor
            if self.refused:
                d["rf"], d["why"] = bytes(self.refused), self.why
        return msgpack.packb(d)

    def holds(self, i: int) -> bool:
        return bool(self.have[i // 8] >> (i % 8) & 1)

    def add(self, i: int, offset: int) -> bool:
        """Mark shot i arrived at `offset`; False if it already was (a redelivery, or a second copy)."""
        if self.holds(i):
            return False
        self.have[i // 8] |= 1 << (i % 8)
        self.offsets[i] = offset
        return True

    @property
    def count(self) -> int:
        return int.from_bytes(self.have, "little").bit_count()

    @property
    def complete(self) -> bool:
        return self.count == self.n

    def refuse(self, first: int, last: int, why: str) -> bool:
        """Mark shots first..last refused where they have not arrived; False if every one of them has (a copy
        refused on a redelivery: nothing changes)."""
        late = [i for i in range(first, min(last, self.n - 1) + 1) if not self.holds(i)]
        if not late:
            return False
        if not self.refused:
            self.refused, self.why = bytearray(len(self.have)), why
        for i in late:
            self.refused[i // 8] |= 1 << (i % 8)
        return True

    @property
    def settled(self) -> bool:
        """Every shot has arrived or been refused, and at least one was refused and has not arrived: the
        publication cannot complete."""
        if not self.refused or self.complete:
            return False
        return (int.from_bytes(self.have, "little") | int.from_bytes(self.refused, "little")).bit_count() == self.n


@dataclass
class LiveProgress:
    """A live event's shots [0, next) have arrived; [0, final) have their final embedding; n once known."""

    next: int = 0
    final: int = 0
    n: int | None = None
    version: str = ""
    """The MediaFM version that made the event's first embeddings: all of its embeddings ask for it."""
    lost: int = 0
    """Shots that never arrived (dead-lettered upstream): the event went on without them."""
    profile: str = ""
    """The encoder profile of the event's shots ("": none yet, or a record from before it was kept)."""
    held_from: int = -1
    """Where the shots the last step held started (those it let go are deleted after this record is written: a
    kill -9 in between leaves them to the redelivery, streams/live.py _let_go). -1: a record from before."""

    @classmethod
    def from_bytes(cls, raw: bytes) -> LiveProgress:
        d = msgpack.unpackb(raw)
        return cls(next=d["next"], final=d["final"], n=d["n"], version=d.get("version", ""), lost=d.get("lost", 0),
                   profile=d.get("profile", ""), held_from=d.get("held_from", -1))

    def to_bytes(self) -> bytes:
        return msgpack.packb({"next": self.next, "final": self.final, "n": self.n, "version": self.version,
                              "lost": self.lost, "profile": self.profile, "held_from": self.held_from})

    @property
    def over(self) -> bool:
        """Every shot of the event has its final embedding."""
        return self.n is not None and self.final >= self.n
