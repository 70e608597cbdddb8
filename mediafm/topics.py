"""The pipeline's Kafka topics: one name per stage of the data path.

    titles ──► shots ──► shots.encoded ──► shots.fused ──► embeddings
    live.segments ─┘                                         │
    deadletter   ◄── every stage, with the reason            ▼
    models       ◄── trainer exports (new MediaFM versions)  consumers

Every topic has the same partition count (Settings.partitions) and is keyed by
title / live-event id, so one title's shots stay ordered in one partition and
tables keyed by title id are co-partitioned with their source topics.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from aiokafka.partitioner import murmur2

from mediafm.config import Settings


def partition_of(key: str, partitions: int) -> int:
    """The partition of a title's or live event's records in every pipeline topic: Kafka's default partitioner
    (murmur2 of the key), which the workers' producers and kafka-python's use."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Topics:
    titles: str
    """Title requests from ingestion systems (media URI, subtitles, metadata)."""
    live_segments: str
    """Consecutive segments of live events."""
    shots: str
    """Shots cut from titles and live segments."""
    encoded: str
    """Per-shot modality embeddings (video, audio, timed text)."""
    fused: str
    """Per-shot fused vectors (mediafm.fusion.fuse)."""
    embeddings: str
    """Contextual embeddings, one per shot: the product's output."""
    deadletter: str
    """Rejected messages with the reason; nothing is dropped silently."""
    models: str
    """Model updates: a new MediaFM version is being served."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        p = settings.topic_prefix
        return cls(
            titles=f"{p}.titles",
            live_segments=f"{p}.live.segments",
            shots=f"{p}.shots",
            encoded=f"{p}.shots.encoded",
            fused=f"{p}.shots.fused",
            embeddings=f"{p}.embeddings",
            deadletter=f"{p}.deadletter",
            models=f"{p}.models",
        )

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]
