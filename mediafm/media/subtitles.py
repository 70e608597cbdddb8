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
import html
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av

from mediafm.errors import MediaError, SubtitleError
from mediafm.media.decode import open_media

log = logging.getLogger(__name__)
MAX_SUBTITLE_BYTES = 64 * 1024 * 1024
MAX_CUES = 100_000
"""A feature film has a few thousand cues; more than this is not timed text of one title (and a
million of them cost the worker a GB of memory and half a minute to parse): refused."""
MAX_SHOT_TEXT_CHARS = 32_000
"""A shot's timed text is cut here (the text encoders read at most 8191 tokens, MiniLM 256), so
one shot's message stays far below the message size limit whatever the cues."""


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


_TAGS = re.compile(r"\{[^}]*\}|<[^>]+>")


def _clean(text: str) -> str:
    text = _TAGS.sub("", text.replace("\\N", " ").replace("\\n", " ").replace("\\h", " "))
    return " ".join(text.split())


_VTT_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[.,](\d{1,3})"
_VTT_TIMING = re.compile(rf"^\s*{_VTT_TIME}\s+-->\s+{_VTT_TIME}(?:\s.*)?$")
_VTT_TAGS = re.compile(r"<[^>]*>")


def _vtt_seconds(h: str | None, m: str, s: str, frac: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000.0


def _webvtt(text: str) -> list[Cue]:
    """The cues of a WebVTT file, parsed as the WebVTT spec's parser does (https://www.w3.org/TR/webvtt1/).

    Blocks are separated by blank lines; a cue block is an optional identifier line, the timing line
    (`start --> end [settings]`), then its text, up to a blank line or another line with `-->`. Other
    blocks (the header, NOTE comments, STYLE and REGION definitions) and cues whose timing does not parse
    are passed over. The text loses its tags (`<v Roger>`, `<b>`, `<00:01.000>`) and then has its
    character references decoded (`&amp;` `&lt;` `&gt;` `&nbsp;` `&#233;`)."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cues: list[Cue] = []
    i, n = 0, len(lines)
    if lines[0].startswith("WEBVTT"):
        while i < n and lines[i].strip() and (i == 0 or "-->" not in lines[i]):  # the header: up to a blank line
            i += 1
    while i < n:
        if not lines[i].strip():
            i += 1
            continue
        # a block: the timing line is its first line, or its second after an identifier
        k = i if "-->" in lines[i] else i + 1
        if k >= n or "-->" not in lines[k]:
            while i < n and lines[i].strip():  # not a cue (NOTE, STYLE, REGION, stray text): skip the block
                i += 1
            continue
        j = k + 1
        while j < n and lines[j].strip() and "-->" not in lines[j]:
            j += 1
        m = _VTT_TIMING.match(lines[k])
        if m:
            g = m.groups()
            body = html.unescape(_VTT_TAGS.sub("", "\n".join(lines[k + 1:j])))
            cues.append(Cue(_vtt_seconds(*g[:4]), _vtt_seconds(*g[4:]), " ".join(body.split())))
        i = j
    return cues


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
    n = max(text.count("-->"), text.count("\nDialogue:"))  # SRT/WebVTT timings, ASS events: cheap, before parsing
    if n > MAX_CUES:
        raise SubtitleError(f"{path}: {n} cues, over the limit of {MAX_CUES}; is it the timed text of this title?")
    if path.suffix.lower() == ".vtt" or text.lstrip("\ufeff").startswith("WEBVTT"):
        cues = _webvtt(text)
    else:
        try:
            subs = pysubs2.SSAFile.from_string(text)
        except Exception as e:  # pysubs2 raises several types (FormatAutodetectionError, ValueError, ...)
            raise SubtitleError(f"{path}: not a readable subtitle file ({type(e).__name__}: {e}); "
                                "expected SRT, WebVTT or ASS") from None
        cues = [Cue(ev.start / 1000.0, ev.end / 1000.0, _clean(ev.plaintext)) for ev in subs if not ev.is_comment]
    cues = [c for c in cues if c.text and c.end_s > c.start_s]
    if not cues:
        raise SubtitleError(f"{path}: no timed text found (is it a subtitle file?); expected SRT, WebVTT or ASS")
    return sorted(cues, key=lambda c: (c.start_s, c.end_s))


def write_webvtt(cues: list[Cue], path: str | Path) -> Path:
    """Cues as a WebVTT file (times as given), readable by load_subtitles (`&`, `<` and `>` written as
    character references, as WebVTT text needs them)."""
    def ts(t: float) -> str:
        ms = max(0, round(t * 1000))
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"

    body = "".join(f"{ts(c.start_s)} --> {ts(c.end_s)}\n{html.escape(c.text, quote=False)}\n\n" for c in cues)
    Path(path).write_text("WEBVTT\n\n" + body, encoding="utf-8")
    return Path(path)


def container_subtitles(path: str | Path) -> list[Cue]:
    """Text subtitle streams inside the media container (all of them, merged by time)."""
    cues: list[Cue] = []
    try:
        with open_media(Path(path)) as c:  # the decoder's guards: no playlists, file protocol only, a timeout
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
                            if len(cues) > MAX_CUES:
                                raise SubtitleError(f"{path}: its subtitle streams hold over {MAX_CUES} cues; "
                                                    "remux it without them (ffmpeg -sn) or fix them")
    except (av.FFmpegError, MediaError) as e:
        log.warning("%s: subtitle streams unreadable (%s); continuing without them", path, e)
    return sorted(cues, key=lambda c: (c.start_s, c.end_s))


def align(cues: list[Cue], shots, *, min_overlap_s: float = 0.05) -> list[str]:
    """One string per shot: the text of the cues overlapping it ("" when none), cut at MAX_SHOT_TEXT_CHARS.

    One sweep over shots and cues in time order, so a long film with many cues stays linear
    (the cues still open at a shot's start are the only ones looked at again).
    """
    cues = sorted(cues, key=lambda c: c.start_s)
    out = [""] * len(shots)
    active: list[Cue] = []  # cues started before the current shot ends, in start order
    nxt = 0
    for k in sorted(range(len(shots)), key=lambda k: shots[k].start_s):
        shot = shots[k]
        while nxt < len(cues) and cues[nxt].start_s < shot.end_s:
            active.append(cues[nxt])
            nxt += 1
        # a cue that overlaps this shot by min_overlap_s at most overlaps no later shot more
        active = [c for c in active if c.end_s - shot.start_s > min_overlap_s]
        texts, size = [], 0
        for c in active:
            if min(c.end_s, shot.end_s) - max(c.start_s, shot.start_s) > min_overlap_s:
                texts.append(c.text)
                size += len(c.text) + 1
                if size > MAX_SHOT_TEXT_CHARS:
                    break
        out[k] = " ".join(texts)[:MAX_SHOT_TEXT_CHARS]
    return out
