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
import functools
import json
import math
import re
import stat
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import msgpack
import numpy as np

from mediafm.errors import MediaError, SchemaError

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Hard cap on one encoded message; the broker's message.max.bytes matches it."""


MAX_ID_CHARS = 512
"""Longest title / event / request id accepted (ids name table keys, files and log lines)."""

MAX_META_TEXT_CHARS = 32_000
"""Longest metadata text (title, synopsis, tags) accepted: the text encoders read only its first
few thousand tokens (MiniLM 256, OpenAI 8191), and every shot message of the title carries it."""

_BIDI_AND_LINE = set("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE = set("\u200b\u200e\u200f\u061c\u2060\ufeff")
"""Characters that show as nothing: a zero-width space, the direction marks, a word joiner, a byte-order mark (two
ids that look the same). ZWNJ and ZWJ are not among them: Persian and Indic words are written with them."""
_NOT_IN_ID = re.compile("[\x00-\x1f\x7f-\x9f" + "".join(sorted(_BIDI_AND_LINE | _INVISIBLE)) + "\ud800-\udfff]")
"""...and lone surrogates (\ud800-\udfff): no UTF-8 holds them, so a message naming one could not be written
(a file name in a foreign encoding, taken as an id, was a UnicodeEncodeError at the publisher)."""


def check_id(value: str, name: str = "title_id", *, empty_ok: bool = False) -> str:
    """`value` if it is a usable id: not empty (unless empty_ok), at most MAX_ID_CHARS, no control characters
    (C0/C1, DEL, line separators, bidi overrides: they forge log lines and hide in keys); else SchemaError."""
    if not value and not empty_ok:
        raise SchemaError(f"field {name!r} is empty; give every title/event an id")
    if len(value) > MAX_ID_CHARS:
        raise SchemaError(f"field {name!r} is {len(value)} characters, over the {MAX_ID_CHARS} limit: {value[:40]!r}...")
    if _NOT_IN_ID.search(value):  # checked per message: a regex, not a loop over the characters
        bad = sorted(set(_NOT_IN_ID.findall(value)))
        raise SchemaError(f"field {name!r} has control characters {bad!r}: {value[:80]!r}; ids are printable text "
                          "(no control, invisible or unencodable character)")
    return value


DTYPES = {"float32": "<f4", "float16": "<f2"}
"""Wire formats of vectors: little-endian float32, or float16 where configured (embedding_dtype)."""
_ITEMSIZE = {name: np.dtype(code).itemsize for name, code in DTYPES.items()}


_F16_MAX = float(np.finfo(np.float16).max)


def vec_to_bytes(x: np.ndarray, dtype: str = "float32") -> bytes:
    """A 1-D vector as little-endian float32 (or float16) bytes. To float16, values past its range (65504) are
    saturated: cast as they were, they became inf, which every reader refuses (decode), so a `hidden` embedding
    with one large activation, published with embedding_dtype=float16, was a message no consumer could read."""
    if dtype == "float16":
        x = np.clip(np.asarray(x, dtype=np.float32), -_F16_MAX, _F16_MAX)
    return np.ascontiguousarray(x, dtype=DTYPES[dtype]).tobytes()


def bytes_to_vec(b: bytes, dim: int, *, what: str = "vector", dtype: str = "float32") -> np.ndarray:
    """Inverse of :func:`vec_to_bytes`, checking the length matches `dim`; float32 out."""
    if dtype not in DTYPES:
        raise SchemaError(f"{what}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    width = _ITEMSIZE[dtype]
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

    def _body(self) -> dict:
        # fields are flat (no nested records): a shallow dict, not dataclasses.asdict's deep copy
        body = {"schema": self.SCHEMA, "v": self.VERSION}
        body.update((name, getattr(self, name)) for name, _, _ in _fields(type(self)))
        return body

    def to_bytes(self) -> bytes:
        data = msgpack.packb(self._body(), use_bin_type=True)
        if len(data) > MAX_MESSAGE_BYTES:
            raise SchemaError(
                f"{self.SCHEMA} message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES} limit"
            )
        return data

    def check(self) -> None:
        """The value checks `decode` makes of a received message (ids, finite times, spans, indices), made of
        one built here before it is sent: SchemaError saying what a worker would refuse."""
        _check_values(self.SCHEMA, {name: getattr(self, name) for name, _, _ in _fields(type(self))})


@dataclass
class TitleRequest(Message):
    """An ingestion system asks for a title to be embedded. Key: title_id.

    `request_id` names this request: publishing the same title again with a new
    request id (`mediafm backfill`) re-embeds it with the model served now. An empty
    one is named by the worker after the record (partition and offset): each
    publication is embedded, a redelivery of one is recognised. Before, every
    publication of a title without one after the first was skipped as a duplicate,
    silently.
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
    subtitles_uri: str | None = None
    """Timed text for this segment (SRT / WebVTT, as HLS carries WebVTT beside its media segments), cue
    times on the event's clock (the one start_s is on); the shots it overlaps get it as their text."""
    subtitle_encoding: str | None = None
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
class EncodedShots(Message):
    """Several encoded shots of one title (one request) in one record: what the encode stage publishes, and
    what an ingestion system may publish, so that the fuse stage reads and acknowledges a record per run of a
    title's shots rather than one per shot (bench/catalog.py). Key: title_id. A lone EncodedShot is accepted
    too; read either with `record_shots(EncodedShots, data)`, write with `shot_records`.
    """

    SCHEMA: ClassVar[str] = "mediafm.encoded_shots"
    SHOT: ClassVar[type[Message]] = EncodedShot
    title_id: str
    shots: list[bytes]
    """EncodedShot messages (each its to_bytes()), all of title_id and request_id, in the order they were made."""
    request_id: str = ""


@dataclass
class FusedShots(Message):
    """Several fused shots of one title (one request) in one record: what the fuse stage publishes, so that
    the contextualise stage reads, records and acknowledges a record per run of a title's shots rather than
    one per shot (bench/catalog.py). Key: title_id. A lone FusedShot is accepted too; read either with
    `record_shots(FusedShots, data)`, write with `shot_records`.
    """

    SCHEMA: ClassVar[str] = "mediafm.fused_shots"
    SHOT: ClassVar[type[Message]] = FusedShot
    title_id: str
    shots: list[bytes]
    """FusedShot messages (each its to_bytes()), all of title_id and request_id, in the order they were made."""
    request_id: str = ""


RECORD_BYTES = 448 * 1024
"""A run of a title's shots goes in one EncodedShots / FusedShots record up to this many bytes (a lone shot
may be more): under the workers' producer batch (streams/runtime.py, 512 KiB), so that a record does not take
a batch of its own. About 40 shots at the offline profile's widths."""

Runs = type[EncodedShots] | type[FusedShots]


def shot_records(kind: Runs, shots: list[bytes], title_id: str, request_id: str, limit: int = RECORD_BYTES):
    """The records that carry a run of one title's shots (`kind.SHOT` bytes, in order): `kind` records of up
    to `limit` bytes of shots, a lone shot as itself. What the encode and fuse stages, `mediafm publish
    dataset` and the benchmarks send."""
    k = 0
    while k < len(shots):
        end, size = k + 1, len(shots[k])
        while end < len(shots) and size + len(shots[end]) <= limit:
            size += len(shots[end])
            end += 1
        yield shots[k] if end - k == 1 else kind(title_id=title_id, shots=shots[k:end],
                                                 request_id=request_id).to_bytes()
        k = end


def record_shots(kind: Runs, data: bytes, *, refusals: bool = False) -> list | ShotsRefused:
    """The shots of one record: a lone `kind.SHOT`, or the shots of a `kind` record, each checked as a lone
    one is. Raises SchemaError naming what is wrong (a shot of another title, none at all, which shot).
    refusals: a ShotsRefused record (the encoded and fused topics carry them) is returned as it is."""
    one = kind.SHOT
    msg = decode(data)
    if isinstance(msg, one):
        return [msg]
    if refusals and isinstance(msg, ShotsRefused):
        return msg
    if not isinstance(msg, kind):
        raise SchemaError(f"expected a {one.SCHEMA} or {kind.SCHEMA} message, got {msg.SCHEMA}")
    if not msg.shots:
        raise SchemaError(f"{kind.SCHEMA} of {msg.title_id!r} holds no shot")
    shots = []
    for k, raw in enumerate(msg.shots):
        try:
            shot = decode(raw, expect=one)
        except SchemaError as e:
            raise SchemaError(f"{kind.SCHEMA} of {msg.title_id!r}, shot {k}: {e}") from None
        if (shot.title_id, shot.request_id) != (msg.title_id, msg.request_id):
            raise SchemaError(f"{kind.SCHEMA} of {msg.title_id!r}#{msg.request_id} holds a shot of "
                              f"{shot.title_id!r}#{shot.request_id}: one record carries one title's shots")
        shots.append(shot)
    return shots


def record_kind(data: bytes) -> str | None:
    """The kind ('title' or 'live') of the shots of a record of shots (a lone shot, a record of a run, or a
    ShotsRefused), read from its first shot without checking the record: for ordering work only, never for
    accepting a record (record_shots does that). None where it cannot be read."""
    try:
        body = msgpack.unpackb(data, raw=False)
        if isinstance(body.get("shots"), list):
            body = msgpack.unpackb(body["shots"][0], raw=False)
        cls = SCHEMAS.get(body.get("schema"))  # a field left out is the schema's default (a ShotsRefused's: live)
        kind = body.get("kind", cls.kind if cls is not None and hasattr(cls, "kind") else "title")
    except Exception:  # anything unreadable: record_shots says what is wrong with it
        return None
    return kind if isinstance(kind, str) else None


@dataclass
class ContextualEmbedding(Message):
    """A shot as MediaFM understands it in its title: the product's output. Key: title_id.

    Consumers deduplicate on (title_id, shot_index, model_version): after a
    worker restart a shot may be published again, with the same values. A title
    published again (a new request_id) is embedded again, and its passes may
    interleave on the topic: keep one request_id's embeddings of a title.
    """

    SCHEMA: ClassVar[str] = "mediafm.contextual_embedding"
    title_id: str
    shot_index: int
    start_s: float
    end_s: float
    embedding: bytes
    """`dim` little-endian values of `dtype` (use .vector()): MediaFM's `representation` of the shot."""
    dim: int
    model_version: str
    """The version of `model` that made it."""
    profile: str
    window_start: int
    window_end: int
    """The shots [window_start, window_end) of the MediaFM pass this output was taken from."""
    final: bool
    """False: provisional (live events, left context only); a final one follows."""
    n_shots: int | None = None
    kind: str = "title"
    model: str = "mediafm"
    """The served MediaFM model that made it (mediafm, or mediafm_offline for the offline profile)."""
    representation: str = "hidden"
    """mediafm/representations.py: "output" (the model's output, fused_dim wide; the pipeline's default),
    "context+input" (that output beside the shot's fused input, fused_dim wide) or "hidden" (the last hidden
    state); messages from before this field existed carry hidden states."""
    published_at: float = 0.0
    """When the source shot entered the pipeline (for end-to-end latency)."""
    produced_at: float = field(default_factory=time.time)
    dtype: str = "float32"
    """float32, or float16 where the pipeline is configured so (embedding_dtype): half the bytes."""
    request_id: str = ""
    """The publication of the title its shots came from (TitleRequest.request_id; "" for a live event, and in
    messages from before this field)."""

    def vector(self) -> np.ndarray:
        """The embedding as a float32 array, whatever its wire dtype."""
        return bytes_to_vec(self.embedding, self.dim, what="embedding", dtype=self.dtype)


@dataclass
class ShotsRefused(Message):
    """Shots [first, last] of a live event or of a title's publication that a stage refused (each dead-lettered
    there, with the reason), sent on down the pipeline in their place, on the key's partition, after the shots
    before them. For a live event the live stage counts them lost and goes on, and where they carried the event's
    n_shots, it ends the event (without it, an event whose last shots were refused never ended). For a title the
    contextualise stage gives up that publication: one dead letter for the title says which shots went and why,
    and what it held for the title is let go (without it, the title waited for them for ever, its progress record
    and held shots kept). Key: title_id (the event's id)."""

    SCHEMA: ClassVar[str] = "mediafm.shots_refused"
    title_id: str
    first: int
    last: int
    stage: str
    reason: str
    n_shots: int | None = None
    """The event's n_shots, where the refused shots carried it (its last segment's); a title's."""
    kind: str = "live"
    published_at: float = field(default_factory=time.time)
    request_id: str = ""
    """The title's publication (TitleRequest.request_id); "" for a live event."""

    def _body(self) -> dict:
        """As every message's, without request_id where it is "" (a live event's): as the message was before the
        field, which a worker of then reads."""
        body = super()._body()
        if not self.request_id:
            del body["request_id"]
        return body

    def describe(self) -> str:
        """"shots 3-4 refused at the encode stage: <reason>": what the title's dead letter and the sink say."""
        what = f"shot {self.first}" if self.first == self.last else f"shots {self.first}-{self.last}"
        return f"{what} refused at the {self.stage} stage: {self.reason}"


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


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def not_a_file(p: Path) -> str | None:
    """None if p is a regular file (or a link to one), else what it is instead."""
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return "no such file" + (" (a symbolic link to a missing file)" if p.is_symlink() else "")
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    return f"exists but is {next((name for test, name in _KINDS if test(mode)), 'not a file')}, not a regular file"



META_EXAMPLE = '{"title": "...", "synopsis": "...", "tags": ["..."]}'


def load_meta(meta: str | Path | dict | None) -> dict:
    """Title metadata from a dict, inline JSON (a str starting with '{') or a JSON file path.

    MediaError saying which of the two it was read as and what is wrong."""
    if meta is None or isinstance(meta, dict):
        return dict(meta or {})
    if isinstance(meta, str) and meta.lstrip().startswith("{"):
        source = "inline JSON (the --meta value starts with '{')"
        try:
            d = json.loads(meta)
        except json.JSONDecodeError as e:
            raise MediaError(f"metadata read as {source} is not valid JSON: {e.msg} at character {e.pos} of "
                             f"{meta!r}; pass a JSON object like {META_EXAMPLE} (quoted for the shell), "
                             "or the path of a JSON file") from None
    else:
        path = Path(meta).expanduser()
        source = f"the file {path} (the --meta value does not start with '{{', so it is taken as a path)"
        problem = not_a_file(path)
        if problem is not None:
            raise MediaError(f"metadata (--meta) {str(meta)!r} does not start with '{{', so it was taken as a file "
                             f"path, but {path}: {problem}; pass a JSON file, or inline JSON like {META_EXAMPLE}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MediaError(f"metadata read from {source} could not be read: {e}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise MediaError(f"metadata read from {source} is not valid JSON: {e}; the file must hold a JSON "
                             f"object like {META_EXAMPLE}") from None
    if not isinstance(d, dict):
        raise MediaError(f"metadata read from {source} must be a JSON object like {META_EXAMPLE}, "
                         f"got a JSON {type(d).__name__}")
    return d


@dataclass
class TitleMeta:
    """Title metadata: a TitleRequest's or LiveSegment's `meta`, or a `--meta` JSON file.

    Its text (title, synopsis, tags) is what the title embedding is made from.
    :meth:`from_dict` is the one validator, used by the streams and the CLI alike.
    """

    title_id: str
    kind: str = "title"
    title: str = ""
    synopsis: str = ""
    tags: list[str] = field(default_factory=list)
    genres: list[int] | None = None
    split: str = "train"

    def text(self) -> str:
        parts = [p for p in (self.title, self.synopsis) if p]
        if self.tags:
            parts.append("Tags: " + ", ".join(self.tags))
        return ". ".join(parts) or self.title_id

    @classmethod
    def from_dict(cls, meta: object, *, title_id: str, kind: str = "title") -> TitleMeta:
        """Checked metadata of `title_id`; SchemaError naming an unknown key or a wrong type.

        `meta` may repeat the title id (a --meta file may name its title), never contradict it.
        """
        if not isinstance(meta, dict):
            raise SchemaError(f"meta must be a JSON object (a map), got {type(meta).__name__}")
        meta = dict(meta)
        said = meta.pop("title_id", title_id)
        if said != title_id:
            raise SchemaError(f"meta names title_id {said!r}, but this is {title_id!r}; drop it or make them agree")
        known = [f.name for f in dataclasses.fields(cls) if f.name not in ("title_id", "kind")]
        unknown = sorted(set(meta) - set(known), key=str)  # a msgpack map may have bytes keys beside str ones
        if unknown:
            raise SchemaError(f"meta has unknown keys {unknown}; known: {['title_id', *known]} (kind is set by how "
                              "the title is published: a title, or a live event)")
        hints = typing.get_type_hints(cls)
        out = cls(title_id=title_id, kind=kind, **{k: _check_type(f"meta.{k}", v, hints[k]) for k, v in meta.items()})
        size = len(out.title) + len(out.synopsis) + sum(len(t) + 2 for t in out.tags)
        if size > MAX_META_TEXT_CHARS:
            raise SchemaError(f"meta text (title, synopsis, tags) is {size} characters, over the {MAX_META_TEXT_CHARS} "
                              "limit (the text encoders read only its first few thousand tokens); shorten the synopsis")
        return out

    @classmethod
    def load(cls, meta: str | Path | dict | None, *, default_id: str) -> TitleMeta:
        """`mediafm embed --meta`: inline JSON (a value starting with '{') or a JSON file, as `publish --meta` reads
        it (load_meta; before 2026-12-08 embed took a path only, and its error offered inline
        JSON as the fix); its title_id (or default_id) names the title. MediaError naming what is wrong."""
        d = load_meta(meta)
        try:
            return cls.from_dict(d, title_id=d.get("title_id", default_id))
        except SchemaError as e:
            raise MediaError(f"metadata (--meta): {e}") from None


SCHEMAS: dict[str, type[Message]] = {c.SCHEMA: c for c in (TitleRequest, LiveSegment, ShotRef, EncodedShot,
                                                            EncodedShots, FusedShot, FusedShots, ContextualEmbedding,
                                                            ShotsRefused, DeadLetter)}


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


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, object, bool], ...]:
    """(name, type hint, required) of each field of a message class. typing.get_type_hints evaluates the
    string annotations anew on every call: a fifth of a worker's CPU when it was called per message."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                 for f in dataclasses.fields(cls))


@functools.cache
def _exact_types(cls: type) -> tuple[tuple[type, ...], ...]:
    """Per field of `_fields(cls)`, the value types that pass _check_type unchanged without a look at the hint
    (a plain class, or one or None); () where it must look (lists, a float field given an int). decode runs
    per message, and walking each hint with typing.get_origin cost more than unpacking the message."""
    out = []
    for _, hint, _ in _fields(cls):
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        plain = all(isinstance(a, type) and typing.get_origin(a) is None for a in args)
        out.append(tuple(a for a in args if a is not bool or hint is bool) if plain else ())
    return tuple(out)


def decode(data: bytes, expect: type[Message] | None = None) -> Message:
    """Bytes -> validated record. Raises SchemaError saying what is wrong."""
    if not isinstance(data, bytes | bytearray | memoryview):  # a Kafka tombstone arrives as None
        raise SchemaError(f"message has no bytes (value is {type(data).__name__}: a tombstone?); send a msgpack map")
    if len(data) > MAX_MESSAGE_BYTES:
        raise SchemaError(f"message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        detail = str(e) or {"StackError": "nested too deeply", "FormatError": "a byte that starts no msgpack type"
                            }.get(type(e).__name__, "")
        raise SchemaError(f"not msgpack: {type(e).__name__}: {detail}") from None
    if not isinstance(body, dict):
        raise SchemaError(f"message must be a msgpack map, got {type(body).__name__}")
    name, version = body.pop("schema", None), body.pop("v", None)
    if name is not None and not isinstance(name, str):  # a list or map: a TypeError out of the lookup, before
        raise SchemaError(f"field 'schema' must be a string naming the record, got {type(name).__name__}; known: "
                          f"{sorted(SCHEMAS)}")
    cls = SCHEMAS.get(name)
    if cls is None:
        raise SchemaError(f"unknown schema {name!r}; known: {sorted(SCHEMAS)}")
    if expect is not None and cls is not expect:
        raise SchemaError(f"expected a {expect.SCHEMA} message, got {name}")
    if version != cls.VERSION:
        raise SchemaError(f"{name} version {version!r} is not supported (this worker reads v{cls.VERSION})")
    kwargs = {}
    for (fname, hint, required), exact in zip(_fields(cls), _exact_types(cls), strict=True):
        if fname in body:
            value = body.pop(fname)
            kwargs[fname] = value if type(value) in exact else _check_type(fname, value, hint)
        elif required:
            raise SchemaError(f"{name} is missing required field {fname!r}")
    if body:
        raise SchemaError(f"{name} has unknown fields {sorted(body, key=str)}")  # str and bytes keys together
    _check_values(name, kwargs)
    return cls(**kwargs)


_ID_FIELDS = {"title_id": False, "event_id": False, "request_id": True}  # field -> may be empty
_TIME_FIELDS = ("start_s", "end_s", "media_start_s", "published_at", "produced_at", "at")
_WALL_CLOCK = ("published_at", "produced_at", "at")  # seconds since the epoch, set by a clock
MAX_TIME_S = 1e11
"""Largest time a message may carry (s; epoch seconds are about 1.8e9 now): float64 keeps milliseconds only
below about 1e12, and a media seek converts seconds to a C long (a span at 1e15 overflowed it)."""
MAX_INDEX = 10**9
"""Largest shot, frame or segment index a message may carry (a billion frames: 385 days at 30 fps)."""
MAX_TITLE_SHOTS = 200_000
"""Most shots a title may have (a 12-hour title, max_media_duration_s, cut every 0.2 s): a title's progress
record keeps 8 bytes a shot and must fit one changelog message (MAX_MESSAGE_BYTES); a claimed n_shots of 30
million made it 4.8 MB, and the worker's producer crashed. A live event has no such record and no limit."""


def _check_values(name: str, f: dict) -> None:
    """What the types cannot say: usable ids, finite times, spans and indices that make sense."""
    for key, empty_ok in _ID_FIELDS.items():
        if key in f:
            check_id(f[key], key, empty_ok=empty_ok)
    if "#" in f.get("request_id", "") or "/" in f.get("request_id", ""):  # the stages' table keys join
        # "<title_id>#<request_id>/<shot>": a request id without either keeps every (title, request) apart
        raise SchemaError(f"{name}: request_id {f['request_id'][:80]!r} has '#' or '/'; request ids are "
                          "tokens (e.g. a uuid), not paths")
    for key in _TIME_FIELDS:
        if key in f and not math.isfinite(f[key]):
            raise SchemaError(f"{name}: field {key!r} is {f[key]}; times are finite seconds")
        if key in f and not (0 if key in _WALL_CLOCK else -MAX_TIME_S) <= f[key] <= MAX_TIME_S:
            what = "seconds since the epoch (time.time())" if key in _WALL_CLOCK else "seconds on the media's clock"
            raise SchemaError(f"{name}: field {key!r} is {f[key]:g}; it is {what}, within "
                              f"{'0' if key in _WALL_CLOCK else f'-{MAX_TIME_S:g}'}..{MAX_TIME_S:g}")
    if "start_s" in f and "end_s" in f and f["end_s"] < f["start_s"]:
        raise SchemaError(f"{name} has span [{f['start_s']}, {f['end_s']}), which ends before it starts")
    for key in ("segment_index", "start_frame", "end_frame", "window_start", "partition", "offset", "first", "last"):
        if f.get(key) is not None and f[key] < 0:
            raise SchemaError(f"{name}: field {key!r} is {f[key]}; it counts from 0")
    for key in ("segment_index", "start_frame", "end_frame", "window_start", "shot_index", "first", "last"):
        if f.get(key) is not None and f[key] > MAX_INDEX:
            raise SchemaError(f"{name}: field {key!r} is {f[key]}, over {MAX_INDEX:,}; it counts shots, frames or "
                              "segments of one title or event")
    if f.get("start_frame") is not None and f.get("end_frame") is not None and f["end_frame"] < f["start_frame"]:
        raise SchemaError(f"{name} has frames [{f['start_frame']}, {f['end_frame']}), which end before they start")
    if "first" in f and "last" in f and f["last"] < f["first"]:
        raise SchemaError(f"{name}: shots [{f['first']}, {f['last']}] end before they start")
    if name == ShotsRefused.SCHEMA and f.get("kind") == "title" and f.get("n_shots") is None:
        raise SchemaError(f"{name}: a title's refused shots carry its n_shots")
    if name == ShotsRefused.SCHEMA and f.get("n_shots") is not None and f["last"] >= f["n_shots"]:
        raise SchemaError(f"{name}: shots [{f['first']}, {f['last']}] outside the event's {f['n_shots']}")
    i, n = f.get("shot_index"), f.get("n_shots")
    if n is not None and n < 1:
        raise SchemaError(f"{name}: n_shots={n}; a title has at least one shot")
    if n is not None and f.get("kind", "title") == "title" and n > MAX_TITLE_SHOTS:
        raise SchemaError(f"{name}: n_shots={n} for {f.get('title_id')!r}, over the {MAX_TITLE_SHOTS:,} a title "
                          "may have; cut a longer recording into titles (or publish it as a live event)")
    if f.get("kind") is not None and f["kind"] not in ("title", "live"):
        raise SchemaError(f"{name}: kind={f['kind']!r}; a shot is of a 'title' or of a 'live' event")
    # a live shot's index is checked against its event's n_shots where that is known (streams/contextualise.py)
    if i is not None and (i < 0 or (n is not None and f.get("kind", "title") == "title" and i >= n)):
        raise SchemaError(f"{name}: shot_index {i} outside 0..{'' if n is None else n - 1} of {f.get('title_id')!r}")
    if name == ContextualEmbedding.SCHEMA:  # what follow, the sink and every consumer read: whole, finite, as said
        if not 0 < f["dim"] <= MAX_MESSAGE_BYTES // 2:
            raise SchemaError(f"{name}: dim={f['dim']}; an embedding has at least one value and fits a message")
        bytes_to_vec(f["embedding"], f["dim"], what=f"{name}'s embedding", dtype=f.get("dtype", "float32"))
