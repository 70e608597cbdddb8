"""Progress records the stages keep in their tables: small pure classes, msgpack in the changelogs.

TitleProgress (contextualise-titles): which of a title's n shots are held, and whether it is done.
LiveProgress (live-events): the next shot expected, how many have their final embedding, n once known,
and the MediaFM version the event is pinned to.

The wire formats are those the tables have always held, so state written by
an older worker is read by a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack


@dataclass
class TitleProgress:
    """Bit i of `have` is set when shot i of the title is held in the shots table."""

    n: int
    have: bytearray = field(default_factory=bytearray)
    done: bool = False

    def __post_init__(self) -> None:
        self.have = bytearray(self.have) or bytearray((self.n + 7) // 8)
        if len(self.have) != (self.n + 7) // 8:
            raise ValueError(f"progress of {self.n} shots needs {(self.n + 7) // 8} bytes, has {len(self.have)}")

    @classmethod
    def from_bytes(cls, raw: bytes) -> TitleProgress:
        d = msgpack.unpackb(raw)
        return cls(n=d["n"], have=bytearray(d["have"]), done=d["done"])

    def to_bytes(self) -> bytes:
        return msgpack.packb({"n": self.n, "have": bytes(self.have), "done": self.done})

    def holds(self, i: int) -> bool:
        return bool(self.have[i // 8] >> (i % 8) & 1)

    def add(self, i: int) -> bool:
        """Mark shot i held; False if it already was (a redelivery)."""
        if self.holds(i):
            return False
        self.have[i // 8] |= 1 << (i % 8)
        return True

    def drop(self, i: int) -> None:
        self.have[i // 8] &= ~(1 << (i % 8)) & 0xFF

    @property
    def count(self) -> int:
        return int.from_bytes(self.have, "little").bit_count()

    @property
    def complete(self) -> bool:
        return self.count == self.n


@dataclass
class LiveProgress:
    """A live event's shots [0, next) have arrived; [0, final) have their final embedding; n once known."""

    next: int = 0
    final: int = 0
    n: int | None = None
    version: str = ""
    """The MediaFM version that made the event's first embeddings: all of its embeddings ask for it."""

    @classmethod
    def from_bytes(cls, raw: bytes) -> LiveProgress:
        d = msgpack.unpackb(raw)
        return cls(next=d["next"], final=d["final"], n=d["n"], version=d.get("version", ""))

    def to_bytes(self) -> bytes:
        return msgpack.packb({"next": self.next, "final": self.final, "n": self.n, "version": self.version})

    @property
    def over(self) -> bool:
        """Every shot of the event has its final embedding."""
        return self.n is not None and self.final >= self.n
