"""Timed text: subtitle files (SRT, WebVTT, ASS/SSA via pysubs2) and subtitle streams inside
the container (mov_text, SubRip, ASS, WebVTT via PyAV), aligned to shots.

    cues = load_subtitles("film.srt")                # SubtitleError: broken file, unknown encoding
    cues += container_subtitles(path)                # text subtitle streams of the media itself
    texts = align(cues, shots)                       # one string per shot ("" = no timed text)

A cue belongs to every shot it overlaps (by more than `min_overlap_s`); a shot's
text is its cues' text in time order, joined with spaces. Bitmap subtitles
(DVD/PGS) carry no text and are skipped.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av

from mediafm.errors import SubtitleError

log = logging.getLogger(__name__)
MAX_SUBTITLE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


_TAGS = re.compile(r"\{[^}]*\}|<[^>]+>")


def _clean(text: str) -> str:
    text = _TAGS.sub("", text.replace("\\N", " ").replace("\\n", " ").replace("\\h", " "))
    return " ".join(text.split())


def _decode(raw: bytes, path: Path, encoding: str | None) -> str:
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise SubtitleError(f"{path}: unknown text encoding {encoding!r}; use a Python codec name such "
                                "as utf-8, cp1252, latin-1, utf-16") from None
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as e:
            raise SubtitleError(f"{path}: not valid {encoding} ({e.reason} at byte {e.start}); pass the file's "
                                "real encoding") from None
    for bom, enc in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            return raw.decode(enc, errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SubtitleError(f"{path}: not UTF-8 (byte {e.start}); pass its encoding (e.g. --subtitle-encoding "
                            "cp1252) or convert it to UTF-8") from None


def load_subtitles(path: str | Path, *, encoding: str | None = None) -> list[Cue]:
    """Cues of an SRT / WebVTT / ASS file, sorted by start; SubtitleError when it cannot be read."""
    import pysubs2

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise SubtitleError(f"{path}: cannot read ({e.strerror})") from None
    if size > MAX_SUBTITLE_BYTES:
        raise SubtitleError(f"{path}: {size} bytes is not a subtitle file (limit {MAX_SUBTITLE_BYTES})")
    text = _decode(path.read_bytes(), path, encoding)
    if not text.strip():
        raise SubtitleError(f"{path}: empty subtitle file; pass a non-empty SRT/WebVTT file or omit it")
    fmt = "vtt" if path.suffix.lower() == ".vtt" or text.lstrip("\ufeff").startswith("WEBVTT") else None
    try:
        subs = pysubs2.SSAFile.from_string(text, format_=fmt)
    except Exception as e:  # pysubs2 raises several types (FormatAutodetectionError, ValueError, ...)
        raise SubtitleError(f"{path}: not a readable subtitle file ({type(e).__name__}: {e}); "
                            "expected SRT, WebVTT or ASS") from None
    cues = [Cue(ev.start / 1000.0, ev.end / 1000.0, _clean(ev.plaintext)) for ev in subs
            if not ev.is_comment and ev.end > ev.start]
    cues = [c for c in cues if c.text]
    if not cues:
        raise SubtitleError(f"{path}: no timed text found (is it a subtitle file?); expected SRT, WebVTT or ASS")
    return sorted(cues, key=lambda c: (c.start_s, c.end_s))


def container_subtitles(path: str | Path) -> list[Cue]:
    """Text subtitle streams inside the media container (all of them, merged by time)."""
    cues: list[Cue] = []
    try:
        with av.open(str(path)) as c:
            streams = [s for s in c.streams.subtitles]
            if not streams:
                return []
            base = c.start_time / av.time_base if c.start_time is not None else 0.0
            for packet in c.demux(*streams):
                if packet.pts is None:
                    continue
                tb = packet.time_base
                start = float(packet.pts * tb) - base
                end = start + float((packet.duration or 0) * tb)
                for sub in packet.decode():
                    items = sub if isinstance(sub, Sequence) else [sub]
                    for item in items:
                        raw = getattr(item, "dialogue", None) or getattr(item, "text", None)
                        if not raw:
                            continue  # bitmap subtitles: no text
                        text = _clean(raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw))
                        if text and end > start:
                            cues.append(Cue(start, end, text))
    except av.FFmpegError as e:
        log.warning("%s: subtitle streams unreadable (%s); continuing without them", path, e)
    return sorted(cues, key=lambda c: (c.start_s, c.end_s))


def align(cues: list[Cue], shots, *, min_overlap_s: float = 0.05) -> list[str]:
    """One string per shot: the text of the cues overlapping it ("" when none)."""
    out = []
    cues = sorted(cues, key=lambda c: c.start_s)
    for shot in shots:
        texts = [c.text for c in cues if min(c.end_s, shot.end_s) - max(c.start_s, shot.start_s) > min_overlap_s]
        out.append(" ".join(texts))
    return out
