"""Timed text: subtitle files (SRT, WebVTT, ASS/SSA via pysubs2) and subtitle streams inside
the container (mov_text, SubRip, ASS, WebVTT via PyAV), aligned to shots.

    cues = load_subtitles("film.srt")                # SubtitleError: broken file, unknown encoding
    cues = container_subtitles(path)                 # or, without a file: one text subtitle stream of the media
    texts = align(cues, shots)                       # one string per shot ("" = no timed text)

A cue belongs to every shot it overlaps (by more than `min_overlap_s`); a shot's
text is its cues' text in time order, joined with spaces. Bitmap subtitles
(DVD/PGS) carry no text and are skipped.

Hostile input is bounded: a subtitle file is read only as SRT, ASS/SSA or WebVTT (other formats
pysubs2 would guess, such as MPL2 or TMP, are refused), at most MAX_CUES cues, each cue's text cut at
MAX_CUE_CHARS before its tags are removed, and tags are removed by linear-time patterns. An encoding
must be a text codec (`check_encoding`). The module imports only the standard library at load time
(pysubs2 and PyAV are imported by the functions that need them).
"""

from __future__ import annotations

import codecs
import html
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mediafm.errors import MediaError, SubtitleError

log = logging.getLogger(__name__)
MAX_SUBTITLE_BYTES = 64 * 1024 * 1024
MAX_CUES = 100_000
"""A feature film has a few thousand cues; more than this is not timed text of one title (and a
million of them cost the worker a GB of memory and half a minute to parse): refused."""
MAX_SHOT_TEXT_CHARS = 32_000
"""A shot's timed text is cut here (the text encoders read at most 8191 tokens, MiniLM 256), so
one shot's message stays far below the message size limit whatever the cues."""
MAX_CUE_CHARS = 4_096
"""A cue's raw text (tags included) is cut here before its tags are removed, and a warning names the
file once: a spoken line is a few dozen characters, and a cue of hundreds of kilobytes (say of unclosed
`<` or `{`) is not dialogue. The cut bounds the text kept per cue and the work of cleaning it. Cutting
before the tags are removed can leave half a tag (`<i`) at the end of such a cue's text."""
MAX_SUBTITLE_LINES = 1_000_000
"""Ten lines a cue at MAX_CUES (a cue is a number, a timing line, a line or two of text and a blank
line). Both readers hold a file as a list of its lines, and 22 million short lines in a 63 MB file cost
3.7 GB and 20 s in pysubs2: over this, the file is refused before either reader runs. Lines over
MAX_CUE_CHARS are cut to it first (a warning names the file), so the list holds at most the file's text."""
SUBTITLE_FORMATS = ("srt", "ass", "ssa", "vtt")
"""The subtitle formats read (pysubs2's identifiers): SRT, ASS/SSA and WebVTT. The other formats pysubs2
can guess (MPL2, TMP, MicroDVD, SAMI, TTML, JSON, Whisper) are refused: their lines are cues with no
`-->` to count up front, and nobody delivers the timed text of a title in them."""
_TEXT_ENCODING_HINT = "use a text encoding such as utf-8, cp1252, latin-1, utf-16"
_REFUSED_CODECS = {"punycode": "a domain-name label encoding", "idna": "a domain-name label encoding"}


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


# Linear: neither class can run past the next opener, so a run of unclosed `<` or `{` costs one pass
# (`<[^>]+>` rescanned the rest of the text from every `<`: quadratic).
_TAGS = re.compile(r"\{[^{}]*\}|<[^<>]+>")


def check_encoding(name: str) -> None:
    """SubtitleError unless `name` is a Python text codec that a subtitle file can be written in.

    codecs.lookup also knows bytes-to-bytes and str-to-str codecs (rot13, hex_codec, base64, zlib_codec,
    ...), whose decoding raises LookupError rather than UnicodeError; those, unknown names, and the
    domain-name label codecs (punycode, idna) are refused, naming the encoding and what to use instead."""
    shown = repr(name[:64]) if isinstance(name, str) else repr(type(name).__name__)
    try:
        info = codecs.lookup(name)
    except (LookupError, TypeError, ValueError):
        raise SubtitleError(f"unknown text encoding {shown}; {_TEXT_ENCODING_HINT}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise SubtitleError(f"{shown} is not a text encoding (it is the {info.name} codec, bytes to bytes or "
                            f"str to str); {_TEXT_ENCODING_HINT}")
    if info.name in _REFUSED_CODECS:
        raise SubtitleError(f"{shown} is {_REFUSED_CODECS[info.name]}, not a file encoding; "
                            f"{_TEXT_ENCODING_HINT}")


def _cut(text: str) -> str:
    return text[:MAX_CUE_CHARS]


_BLOCK = re.compile(r"\{[^{}]*\}")  # an ASS override block; linear, as _TAGS
_DRAW = re.compile(r"\\p(\d+)")  # \p1 .. \p4 start drawing mode, \p0 ends it (not \pos, \pbo)


def _undrawn(text: str) -> str:
    """ASS drawing commands (`{\\p1}m 0 0 l 1920 0 1920 1080{\\p0}`: a typeset sign's or a mask's shape) removed;
    they are vector paths, not words, and were embedded as the shot's text."""
    if "\\p" not in text:
        return text
    out, pos, drawing = [], 0, False
    for m in _BLOCK.finditer(text):
        if not drawing:
            out.append(text[pos:m.start()])
        out.append(m.group())  # removed with the other tags by _clean
        for level in _DRAW.findall(m.group()):
            drawing = int(level) > 0
        pos = m.end()
    if not drawing:
        out.append(text[pos:])
    return "".join(out)


def _clean(text: str) -> str:
    """A cue's plain text: cut at MAX_CUE_CHARS, ASS line breaks and hard spaces as spaces, ASS drawings and
    override blocks (`{\\an8}`) and HTML-like tags (`<i>`, `<font color=...>`) removed, whitespace collapsed."""
    text = _undrawn(_cut(text))
    text = _TAGS.sub("", text.replace("\\N", " ").replace("\\n", " ").replace("\\h", " "))
    return " ".join(text.split())


_VTT_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[.,](\d{1,3})"
_VTT_TIMING = re.compile(rf"^\s*{_VTT_TIME}\s+-->\s+{_VTT_TIME}(?:\s.*)?$")
_VTT_TAGS = re.compile(r"<[^<>]*>")  # linear, as _TAGS


def _vtt_seconds(h: str | None, m: str, s: str, frac: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000.0


def _webvtt(text: str, name: object = "WebVTT") -> list[Cue]:
    """The cues of a WebVTT file, parsed as the WebVTT spec's parser does (https://www.w3.org/TR/webvtt1/).

    Blocks are separated by blank lines; a cue block is an optional identifier line, the timing line
    (`start --> end [settings]`), then its text, up to a blank line or another line with `-->`. Other
    blocks (the header, NOTE comments, STYLE and REGION definitions) and cues whose timing does not parse
    are passed over. The text is cut at MAX_CUE_CHARS, loses its tags (`<v Roger>`, `<b>`, `<c.yellow>`,
    `<00:01.000>`) and then has its character references decoded (`&amp;` `&lt;` `&gt;` `&nbsp;` `&#233;`).
    `text` has one line ending already (_bounded_lines)."""
    lines = text.lstrip("\ufeff").split("\n")
    cues: list[Cue] = []
    cut = 0
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
            raw = "\n".join(lines[k + 1:j])
            if len(raw) > MAX_CUE_CHARS:
                cut += 1
            body = html.unescape(_VTT_TAGS.sub("", _cut(raw)))
            cues.append(Cue(_vtt_seconds(*g[:4]), _vtt_seconds(*g[4:]), " ".join(body.split())))
        i = j
    if cut:
        log.warning("%s: %d cue(s) over %d characters cut to that length", name, cut, MAX_CUE_CHARS)
    return cues


def _decode(raw: bytes, path: Path, encoding: str | None) -> str:
    if encoding:
        try:
            check_encoding(encoding)
        except SubtitleError as e:
            raise SubtitleError(f"{path}: {e}") from None
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as e:
            raise SubtitleError(f"{path}: not valid {encoding} ({e.reason} at byte {e.start}); pass the file's "
                                "real encoding") from None
        except (UnicodeError, LookupError, ValueError, TypeError) as e:  # a codec's own failure: still bad input
            raise SubtitleError(f"{path}: cannot decode as {encoding[:64]!r} ({type(e).__name__}: "
                                f"{str(e)[:200]}); pass the file's real encoding, {_TEXT_ENCODING_HINT}") from None
    for bom, enc in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            return raw.decode(enc, errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SubtitleError(f"{path}: not UTF-8 (byte {e.start}); pass its encoding (e.g. --subtitle-encoding "
                            "cp1252) or convert it to UTF-8") from None


_SRT_TIMESTAMP = re.compile(r"\d{1,2}:\d{1,2}:\d{1,2}[.,]\d{1,3}")  # pysubs2's: a line with two is a cue
_ASS_ENTRY = re.compile(r"^[^\S\n]*(?:Dialogue|Comment|Style):", re.MULTILINE)  # pysubs2 keeps each one
_BLANK_RUN = re.compile(r"\n\s*\n")
# A line over MAX_CUE_CHARS and the rest of it. Anchored at line starts, so each line is scanned once.
_LONG_LINE = re.compile(rf"^([^\n]{{{MAX_CUE_CHARS}}})[^\n]+", re.MULTILINE)


def _bounded_lines(text: str, path: Path) -> str:
    """`text` with one line ending (\\n), its lines counted against MAX_SUBTITLE_LINES and each cut at
    MAX_CUE_CHARS: what either reader then splits into lines is bounded by the file's size, not by its
    shape (a run of short lines, or one line of 60 MB)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    n = text.count("\n") + (not text.endswith("\n"))
    if n > MAX_SUBTITLE_LINES:
        raise SubtitleError(f"{path}: {n} lines, over the limit of {MAX_SUBTITLE_LINES} (ten a cue at "
                            f"{MAX_CUES} cues); is it the timed text of this title?")
    text, cut = _LONG_LINE.subn(r"\1", text)
    if cut:
        log.warning("%s: %d line(s) over %d characters cut to that length", path, cut, MAX_CUE_CHARS)
    return text


def _count(pattern: re.Pattern[str], text: str, limit: int) -> int:
    """Matches of `pattern` in `text`, counted up to `limit + 1` (no list of them is built)."""
    n = 0
    for _ in pattern.finditer(text):
        n += 1
        if n > limit:
            break
    return n


def _detect_format(text: str, path: Path) -> str:
    """pysubs2's guess from the file's first 10,000 characters (as its own autodetection reads), refused
    unless it is one of SUBTITLE_FORMATS."""
    from pysubs2.exceptions import FormatAutodetectionError
    from pysubs2.formats import autodetect_format

    accepted = "SRT, ASS/SSA or WebVTT"
    try:
        fmt = autodetect_format(text[:10_000])
    except FormatAutodetectionError as e:
        if e.formats:
            raise SubtitleError(f"{path}: ambiguous subtitle format (looks like {', '.join(sorted(e.formats))}); "
                                f"expected {accepted}") from None
        raise SubtitleError(f"{path}: not a subtitle file (no known format recognised); expected {accepted}") from None
    except Exception as e:  # a guesser failing on odd input is still bad input
        raise SubtitleError(f"{path}: not a readable subtitle file ({type(e).__name__}: {str(e)[:200]}); "
                            f"expected {accepted}") from None
    if fmt not in SUBTITLE_FORMATS:
        raise SubtitleError(f"{path}: subtitle format {fmt!r} is not read; convert it to {accepted} "
                            f"(accepted: {', '.join(SUBTITLE_FORMATS)})")
    return fmt


_LINE = re.compile(r"[^\n]*\n|[^\n]+")


def _pysubs2_lines(text: str, fmt: str):
    """The lines pysubs2's reader is given, one at a time (no StringIO copy of the file, which holds four
    bytes a character). For SRT, after each timing line (pysubs2's own test: two timestamps) only the
    lines that start within the first MAX_CUE_CHARS characters of its text pass: the reader joins a cue's
    lines into one string and rewrites it with four regular expressions, so a cue of a million lines cost
    a dozen times its size. The cue stays over MAX_CUE_CHARS, so the warning below still names it."""
    from pysubs2.formats.subrip import SubripFormat

    stamps = SubripFormat.TIMESTAMP
    kept = 0
    for m in _LINE.finditer(text):
        line = m.group()
        if fmt != "srt":
            yield line
        elif len(stamps.findall(line)) == 2:
            kept = 0
            yield line
        elif kept <= MAX_CUE_CHARS:
            kept += len(line)
            yield line


def _too_many(path: Path, n: int, *, counted_to_limit: bool = False) -> SubtitleError:
    """`counted_to_limit`: `n` is where the count stopped (just past the limit), not the file's count."""
    return SubtitleError(f"{path}: {f'over {MAX_CUES}' if counted_to_limit else n} cues, over the limit of "
                         f"{MAX_CUES}; is it the timed text of this title?")


def load_subtitles(path: str | Path, *, encoding: str | None = None) -> list[Cue]:
    """Cues of an SRT / WebVTT / ASS file, sorted by start; SubtitleError when it cannot be read.
    `path` is read as check_uri gives it (decode.read_checked: the regular file itself, not through a symlink;
    MediaURIError otherwise): a caller with a person's own path resolves it first.

    The format is detected first and must be SRT, ASS/SSA or WebVTT (SUBTITLE_FORMATS); the cues are
    counted before parsing (timestamps for SRT, `-->` for WebVTT, Dialogue/Comment/Style lines for ASS)
    and again after, against MAX_CUES; each cue's text is cut at MAX_CUE_CHARS before its tags are removed
    (a warning names the file)."""
    import pysubs2

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise SubtitleError(f"{path}: cannot read ({e.strerror})") from None
    if size > MAX_SUBTITLE_BYTES:
        raise SubtitleError(f"{path}: {size} bytes is not a subtitle file (limit {MAX_SUBTITLE_BYTES})")
    from mediafm.media.decode import read_checked

    text = _decode(read_checked(path, MAX_SUBTITLE_BYTES), path, encoding)  # the file checked, not one swapped in
    if not text.strip():
        raise SubtitleError(f"{path}: empty subtitle file; pass a non-empty SRT/WebVTT file or omit it")
    n = text.count("-->")  # SRT/WebVTT timings: cheap, before parsing
    if n > MAX_CUES:
        raise _too_many(path, n)
    text = _bounded_lines(text, path)
    if path.suffix.lower() == ".vtt" or text.lstrip("\ufeff").startswith("WEBVTT"):
        cues = _webvtt(text, path)
    else:
        fmt = _detect_format(text, path)
        if fmt == "vtt":  # "WEBVTT" after leading blank lines: the WebVTT reader, as above
            cues = _webvtt(text.lstrip(), path)
        else:
            # pysubs2 keeps every timestamp line (SRT) or Dialogue/Comment/Style line (ASS), arrow or not
            n = _count(_SRT_TIMESTAMP, text, 2 * MAX_CUES + 1) // 2 if fmt == "srt" else _count(_ASS_ENTRY, text, MAX_CUES)
            if n > MAX_CUES:
                raise _too_many(path, n, counted_to_limit=True)
            # One line ending; runs of blank lines as one (they separate cues or are dropped with the rest of
            # the whitespace): pysubs2's SRT reader strips a cue's trailing number with r"\n+ *\d+ *$", which
            # rescans a run of newlines from each of them. Its own tag handling is left off (keep_html_tags:
            # `< */? *[a-zA-Z][^>]*>` is quadratic on `<a<a<a...`); _clean removes the tags instead.
            text = _BLANK_RUN.sub("\n\n", text)  # one line ending already (_bounded_lines)
            try:
                subs = pysubs2.SSAFile.from_file(_pysubs2_lines(text, fmt), format_=fmt,
                                                 **({"keep_html_tags": True} if fmt == "srt" else {}))
            except Exception as e:  # pysubs2 raises several types (ValueError, Pysubs2Error, ...)
                raise SubtitleError(f"{path}: not a readable {fmt} file ({type(e).__name__}: {str(e)[:200]}); "
                                    "expected SRT, WebVTT or ASS") from None
            if len(subs.events) > MAX_CUES or len(subs.styles) > MAX_CUES:
                raise _too_many(path, max(len(subs.events), len(subs.styles)))
            events = [ev for ev in subs if not ev.is_comment]
            cut = sum(len(ev.text) > MAX_CUE_CHARS for ev in events)
            if cut:
                log.warning("%s: %d cue(s) over %d characters cut to that length", path, cut, MAX_CUE_CHARS)
            # ev.text, not ev.plaintext: pysubs2's r"{[^}]*}" is quadratic on a run of `{`; _clean cuts the
            # text first and removes the same override blocks.
            cues = [Cue(ev.start / 1000.0, ev.end / 1000.0, _clean(ev.text)) for ev in events]
    if len(cues) > MAX_CUES:
        raise _too_many(path, len(cues))
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


def _language(stream) -> str:
    """A stream's language tag, lower case, without its region (en-US -> en); "" where the container gives none."""
    return str(stream.metadata.get("language", "")).lower().split("-")[0]


def _one_track(streams, languages: Sequence[str] = ()):
    """The text subtitle stream a shot's text comes from: the first full one (not forced-only, not for the hearing
    impaired) in the first of `languages` the container has (tags as it writes them: ISO 639-2 "eng", or "en"),
    else the default full one, else the first full one, else the first; None where every stream is bitmaps."""
    text = [s for s in streams if s.codec_context is not None and s.codec_context.codec.text_sub]  # (None: no
    # decoder in this FFmpeg for it, as TTML or DVB teletext)
    if not text:
        return None

    def full(s) -> bool:
        d = s.disposition
        return not (d & d.forced or d & d.hearing_impaired)

    for lang in languages:
        chosen = next((s for s in text if full(s) and _language(s) == lang.lower().split("-")[0]), None)
        if chosen is not None:
            return chosen
    return next((s for s in text if s.disposition & s.disposition.default and full(s)), None) or \
        next((s for s in text if full(s)), text[0])


def container_subtitles(path: str | Path, languages: Sequence[str] = ()) -> list[Cue]:
    """The text of one subtitle stream inside the media container (_one_track: the first full one in the first of
    `languages` it has, the subtitle_languages setting; else the default one, else the first full one), each cue's
    text cut at MAX_CUE_CHARS before its tags are removed. Before (2026-12-07), every
    stream was read and merged, so a film with English and French tracks gave shots "Hello there Bonjour". A cue
    FFmpeg cannot decode (text that is not UTF-8, say) is left out, counted in a warning; before, it ended the
    read, and every later cue of every track was lost."""
    import av

    from mediafm.media.decode import open_media

    cues: list[Cue] = []
    skipped = 0
    try:
        with open_media(Path(path)) as c:  # the decoder's guards: no playlists, file protocol only, a timeout
            stream = _one_track(c.streams.subtitles, languages)
            if stream is None:
                return []
            if len(c.streams.subtitles) > 1:
                log.info("%s: timed text from subtitle stream %d (%s) of %d", path, stream.index,
                         stream.metadata.get("language", "language not given"), len(c.streams.subtitles))
            base = c.start_time / av.time_base if c.start_time is not None else 0.0
            for packet in c.demux(stream):
                if packet.pts is None:
                    continue
                tb = packet.time_base
                start = float(packet.pts * tb) - base
                end = start + float((packet.duration or 0) * tb)
                try:
                    subs = packet.decode()
                except av.FFmpegError:
                    skipped += 1
                    continue
                for sub in subs:
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
    if skipped:
        log.warning("%s: %d subtitle cues could not be decoded (text that is not UTF-8?) and were left out; give the "
                    "subtitles as a file with its encoding to keep them", path, skipped)
    return sorted(cues, key=lambda c: (c.start_s, c.end_s))


def align(cues: list[Cue], shots, *, min_overlap_s: float = 0.05) -> list[str]:
    """One string per shot: the text of the cues overlapping it ("" when none), cut at MAX_SHOT_TEXT_CHARS.
    A cue counts where it overlaps the shot by more than min_overlap_s, or by more than half the shot for a shot
    shorter than twice that (a 1-frame shot inside a cue has its text; before 2026-12-07 it never did).

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
        active = [c for c in active if c.end_s > shot.start_s]  # one that ended before it overlaps no later shot
        need = min(min_overlap_s, (shot.end_s - shot.start_s) / 2)
        texts, size = [], 0
        for c in active:
            if min(c.end_s, shot.end_s) - max(c.start_s, shot.start_s) > need:
                texts.append(c.text)
                size += len(c.text) + 1
                if size > MAX_SHOT_TEXT_CHARS:
                    break
        out[k] = " ".join(texts)[:MAX_SHOT_TEXT_CHARS]
    return out
