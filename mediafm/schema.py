"""Kafka message schemas: one typed record per message, msgpack on the wire.

Every message is a msgpack map carrying its schema name and version::

    {"schema": "mediafm.fused_shot", "v": 1, "title_id": "tt01", ...}

Vectors travel as raw little-endian float32 bytes (about 4x smaller and
100x faster to decode than msgpack lists of floats). One message per shot:
a whole 512 x 2304 float32 window is 4.7 MB, above Kafka's default 1 MB limit.

:func:`decode` validates everything it returns, so an agent can trust a
record or route the raw bytes to the dead-letter topic with the
:class:`~mediafm.errors.SchemaError` text as the reason.
"""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from dataclasses import dataclass, field
from typing import ClassVar

import msgpack
import numpy as np

from mediafm.errors import SchemaError

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Hard cap on one encoded message; the broker's message.max.bytes matches it."""


DTYPES = {"float32": "<f4", "float16": "<f2"}
"""Wire formats of vectors: little-endian float32, or float16 where configured (embedding_dtype)."""


def vec_to_bytes(x: np.ndarray, dtype: str = "float32") -> bytes:
    """A 1-D vector as little-endian float32 (or float16) bytes."""
    return np.ascontiguousarray(x, dtype=DTYPES[dtype]).tobytes()


def bytes_to_vec(b: bytes, dim: int, *, what: str = "vector", dtype: str = "float32") -> np.ndarray:
    """Inverse of :func:`vec_to_bytes`, checking the length matches `dim`; float32 out."""
    if dtype not in DTYPES:
        raise SchemaError(f"{what}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    width = np.dtype(DTYPES[dtype]).itemsize
    if len(b) != width * dim:
        raise SchemaError(f"{what} has {len(b)} bytes, expected {width * dim} ({dtype} x {dim})")
    v = np.frombuffer(b, dtype=DTYPES[dtype]).astype(np.float32, copy=False)  # float32: a view, no copy
    if not np.isfinite(v).all():
        raise SchemaError(f"{what} contains NaN or inf")
    return v


@dataclass
class Message:
    """Base of every record. Subclasses set SCHEMA and VERSION."""

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def to_bytes(self) -> bytes:
        body = {"schema": self.SCHEMA, "v": self.VERSION, **dataclasses.asdict(self)}
        data = msgpack.packb(body, use_bin_type=True)
        if len(data) > MAX_MESSAGE_BYTES:
            raise SchemaError(
                f"{self.SCHEMA} message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES} limit"
            )
        return data


@dataclass
class TitleRequest(Message):
    """An ingestion system asks for a title to be embedded. Key: title_id.

    `request_id` names this request: publishing the same title again with a new
    request id (`mediafm backfill`) re-embeds it with the model served now.
    """

    SCHEMA: ClassVar[str] = "mediafm.title_request"
    title_id: str
    uri: str
    """The media file (a path or file:// URI under one of the worker's media_roots)."""
    request_id: str = ""
    subtitles_uri: str | None = None
    """An SRT / WebVTT / ASS file; the container's own text subtitle streams are always read too."""
    subtitle_encoding: str | None = None
    meta: dict = field(default_factory=dict)
    """Title metadata: title, synopsis, tags (embedded as the [GLOBAL] title embedding)."""
    published_at: float = field(default_factory=time.time)


@dataclass
class LiveSegment(Message):
    """One segment (a few seconds) of a live event, in order. Key: event_id."""

    SCHEMA: ClassVar[str] = "mediafm.live_segment"
    event_id: str
    segment_index: int
    uri: str
    start_s: float
    """Event time of the segment's first frame."""
    last: bool = False
    """True on the event's final segment: every open shot is closed and finalised."""
    meta: dict = field(default_factory=dict)
    published_at: float = field(default_factory=time.time)


@dataclass
class ShotRef(Message):
    """A shot cut by the segmentation stage: where its media is, not its pixels. Key: title_id.

    `media` lists the file(s) holding the shot: the title's file, or the live
    segments it spans, whose first one starts at event time `media_start_s`.
    """

    SCHEMA: ClassVar[str] = "mediafm.shot"
    title_id: str
    shot_index: int
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    media: list[str]
    media_start_s: float
    text: str
    """Timed text overlapping the shot, joined ("" when none: zeros in the text slice)."""
    title_text: str
    """The metadata text the title embedding is made from."""
    profile: str
    n_shots: int | None = None
    kind: str = "title"
    request_id: str = ""
    published_at: float = field(default_factory=time.time)


@dataclass
class EncodedShot(Message):
    """One shot's modality embeddings, before fusion. Key: title_id."""

    SCHEMA: ClassVar[str] = "mediafm.encoded_shot"
    title_id: str
    shot_index: int
    start_s: float
    end_s: float
    profile: str
    """Encoder profile; names the Layout that gives each modality's dim."""
    video: bytes | None
    audio: bytes | None
    text: bytes | None
    n_shots: int | None = None
    """Total shots of the title once known (titles); None for live events."""
    kind: str = "title"
    title_embedding: bytes | None = None
    request_id: str = ""
    published_at: float = field(default_factory=time.time)


@dataclass
class FusedShot(Message):
    """One shot's fused vector. Key: title_id."""

    SCHEMA: ClassVar[str] = "mediafm.fused_shot"
    title_id: str
    shot_index: int
    start_s: float
    end_s: float
    profile: str
    fused: bytes
    present: list[bool]
    """Which of video/audio/text the shot really had (absent = zeros)."""
    n_shots: int | None = None
    kind: str = "title"
    title_embedding: bytes | None = None
    request_id: str = ""
    published_at: float = field(default_factory=time.time)


@dataclass
class ContextualEmbedding(Message):
    """A shot as MediaFM understands it in its title: the product's output. Key: title_id.

    Consumers deduplicate on (title_id, shot_index, model_version): after a
    worker restart a shot may be published again, with the same values.
    """

    SCHEMA: ClassVar[str] = "mediafm.contextual_embedding"
    title_id: str
    shot_index: int
    start_s: float
    end_s: float
    embedding: bytes
    """`dim` little-endian values of `dtype`: MediaFM's last hidden state for the shot (use .vector())."""
    dim: int
    model_version: str
    profile: str
    window_start: int
    window_end: int
    """The shots [window_start, window_end) of the MediaFM pass this output was taken from."""
    final: bool
    """False: provisional (live events, left context only); a final one follows."""
    n_shots: int | None = None
    kind: str = "title"
    model: str = "mediafm"
    published_at: float = 0.0
    """When the source shot entered the pipeline (for end-to-end latency)."""
    produced_at: float = field(default_factory=time.time)
    dtype: str = "float32"
    """float32, or float16 where the pipeline is configured so (embedding_dtype): half the bytes."""

    def vector(self) -> np.ndarray:
        """The embedding as a float32 array, whatever its wire dtype."""
        return bytes_to_vec(self.embedding, self.dim, what="embedding", dtype=self.dtype)


@dataclass
class DeadLetter(Message):
    """A rejected message and why. Key: the original key."""

    SCHEMA: ClassVar[str] = "mediafm.dead_letter"
    stage: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    reason: str
    payload: bytes
    """The original bytes, cut to 1 MiB so a dead letter is always deliverable."""
    at: float = field(default_factory=time.time)


SCHEMAS: dict[str, type[Message]] = {c.SCHEMA: c for c in (TitleRequest, LiveSegment, ShotRef, EncodedShot, FusedShot,
                                                            ContextualEmbedding, DeadLetter)}


def _check_type(name: str, value: object, hint: object) -> object:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(name, value, inner[0])
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"field {name!r} must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_check_type(f"{name}[]", v, item) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise SchemaError(f"field {name!r} must be int, got bool")
    if not isinstance(value, hint):  # type: ignore[arg-type]
        raise SchemaError(
            f"field {name!r} must be {getattr(hint, '__name__', hint)}, got {type(value).__name__}"
        )
    return value


def decode(data: bytes, expect: type[Message] | None = None) -> Message:
    """Bytes -> validated record. Raises SchemaError saying what is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SchemaError(f"message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise SchemaError(f"not msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(body, dict):
        raise SchemaError(f"message must be a msgpack map, got {type(body).__name__}")
    name, version = body.pop("schema", None), body.pop("v", None)
    cls = SCHEMAS.get(name)  # type: ignore[arg-type]
    if cls is None:
        raise SchemaError(f"unknown schema {name!r}; known: {sorted(SCHEMAS)}")
    if expect is not None and cls is not expect:
        raise SchemaError(f"expected a {expect.SCHEMA} message, got {name}")
    if version != cls.VERSION:
        raise SchemaError(f"{name} version {version!r} is not supported (this worker reads v{cls.VERSION})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = _check_type(f.name, body.pop(f.name), hints[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(f"{name} is missing required field {f.name!r}")
    if body:
        raise SchemaError(f"{name} has unknown fields {sorted(body)}")
    return cls(**kwargs)
