"""Decoding media with PyAV: checked URIs, a probe, and streamed frames and audio.

Everything here streams: frames are converted to the small size the caller
asks for as they are decoded and never collected, so memory stays bounded for
a 4K or 8-hour file. Times are seconds from the container's start
(`start_time`), from each frame's own timestamp, so variable frame rate is
handled; rotation metadata (the display matrix) is applied to every frame.

API for the agents (streams/) and the CLI::

    path = check_uri(uri, settings)     # MediaURIError: scheme/root/size/empty
    info = probe(path, settings)        # CorruptMediaError, NoVideoError, MediaURIError (too long, frames too big)
    for f in iter_frames(path, size=(48, 27)): ...   # Frame(index, time_s, rgb uint8 (H, W, 3))
    for i, rate, pcm in iter_audio(path): ...        # mono float32 chunks, sample i at i / rate s
    pcm = resample_span(pcm, i, rate, 16000, k0, k1)  # samples k0..k1-1 at 16 kHz

Every failure is a :class:`~mediafm.errors.MediaError` subclass with a
one-line cause and fix; PyAV's own exceptions never escape.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import math
import os
import stat
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mediafm.config import Settings
from mediafm.errors import CorruptMediaError, MediaUnavailable, MediaURIError, NoVideoError
from mediafm.redact import redact_url

log = logging.getLogger(__name__)

STORAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EIO, errno.EAGAIN,
                            errno.EINTR, errno.EBUSY, errno.ESTALE, errno.ETIMEDOUT, errno.ECONNRESET,
                            errno.ECONNABORTED, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETDOWN,
                            errno.ENETUNREACH, errno.ENOLINK, errno.EREMOTEIO})
"""Errors of a read that say the machine or its storage failed, not the file: too many open files, out of memory,
an I/O error, a network mount stale or unreachable. The same read may succeed later, so they are MediaUnavailable
(Transient: retried, never dead-lettered); before 2026-12-08 they were MediaURIError, and a mount's hiccup
dead-lettered every title read during it as "check the path and its permissions"."""


FFMPEG_STORAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ESTALE, errno.ETIMEDOUT, errno.ECONNRESET,
                                   errno.ECONNABORTED, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETDOWN,
                                   errno.ENETUNREACH, errno.ENOLINK, errno.EREMOTEIO})
"""Those of STORAGE_ERRNOS that FFmpeg's errors mean only of the system: FFmpeg also says ENOMEM, EIO, EAGAIN or
EBUSY for what the file itself causes (a y4m header of 100000x100000 pixels is EBUSY), and a file that always fails
so must be dead-lettered, not retried for ever."""


def storage_fault(path: object, e: BaseException) -> MediaUnavailable | None:
    """MediaUnavailable for an OSError of a system call in STORAGE_ERRNOS, or an FFmpeg error in
    FFMPEG_STORAGE_ERRNOS; None otherwise."""
    code = getattr(e, "errno", None)
    if code not in (FFMPEG_STORAGE_ERRNOS if isinstance(e, av.FFmpegError) else STORAGE_ERRNOS):
        return None
    return MediaUnavailable(f"{_show(path)}: its storage did not answer a read ({os.strerror(code)}); retried")

# Opening a stream reads this much at most before giving up on finding streams
# (a garbage file must fail fast, not scan gigabytes). FFmpeg may open local files
# only (a playlist naming http:// or tcp:// URLs must not make the worker fetch them).
_OPEN_OPTIONS = {"probesize": str(32 * 1024 * 1024), "analyzeduration": str(20_000_000), "protocol_whitelist": "file"}

# Demuxers that read other files or URLs named inside the file (playlists, manifests, concat
# scripts): through them a file under media_roots could make FFmpeg read media outside them.
_INDIRECT_FORMATS = {"hls", "applehttp", "dash", "concat", "imf"}
_INDIRECT_MAGIC = (b"#EXTM3U", b"ffconcat version")

MAX_FPS = 240
"""Video whose average (else guessed) frame rate is over this is refused by probe: every frame is decoded, so
12 hours at 1000 frames/s would take days of CPU. High-speed footage (120, 240 fps) passes; re-encode faster
video at a lower rate first. Decoding stops, too, past max_duration_s * MAX_FPS frames (iter_video_frames)."""

MAX_AUDIO_RATE = 384_000
"""Audio sample rates over this (Hz; the highest real audio gear records at) are refused (probe, iter_audio): a
header may declare 1,000,000,007 Hz, and resampling that to the encoders' rate needs a filter of GBs."""

MAX_AUDIO_CHANNELS = 32
"""Audio with more channels than this is refused (probe, iter_audio): FFmpeg's resampler cannot downmix them."""

MAX_RESAMPLE_FACTOR = 1 << 16
"""resample_span refuses rates whose ratio, in lowest terms (up/down), has a term over this: its filter has
20 * max(up, down) + 1 taps (1.3 M taps, 10 MB, at this bound); every pair of real rates (44.1/48 kHz: 147/160,
even 48001 Hz to 16 kHz) is far under it."""

MAX_FRAME_SIDE = 16384
MAX_FRAME_PIXELS = 8192 * 8192
"""Frames larger than this (8K UHD is 7680 x 4320) are refused before any is decoded: a small
file may declare huge frames (a decompression bomb: GBs per decoded frame)."""


def under_roots(path: Path, roots) -> bool:
    """Is `path` (symlinks resolved) one of `roots` or inside one of them?"""
    path = Path(path).expanduser().resolve()
    return any(path == r or r in path.parents for r in (Path(x).expanduser().resolve() for x in roots))


def _netloc(parsed) -> str:
    """A parsed URI's host part for a message, its password masked (user:***@host)."""
    return redact_url(f"//{parsed.netloc}")[2:]


def _show(path, fmt=str) -> str:
    """A path or URI for a one-line message, any password in it masked: long ones keep their start and end."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    text = fmt(redact_url(text) if isinstance(text, str) else text)
    return text if len(text) <= 300 else f"{text[:150]}...{text[-100:]} ({len(text)} characters)"


def _kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    return ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "a symbolic link" if stat.S_ISLNK(mode) else "not a file")


def check_uri(uri: str | os.PathLike, settings: Settings, *, allow_relative: bool = True) -> Path:
    """A local path or file:// URI -> resolved Path, checked against the settings.

    Raises MediaURIError for another scheme (http://, s3://: fetch it first), a
    path outside `media_roots` (when set; symlinks are resolved first), a
    missing or non-regular file, an empty file, or one over `max_media_bytes`.
    allow_relative=False (URIs from messages, which a worker must not resolve against its own working
    directory: `C:/x.mp4` became `<cwd>/C:/x.mp4`): a path that is not absolute is refused too; True (the
    CLI: `mediafm embed film.mp4`) resolves it against the working directory.
    Passwords in a URI are masked (user:***@host) in every message.

    The file may change after this check: open it with open_media or read_checked, which open exactly
    the checked file (no symlink, no FIFO) or refuse it.
    """
    s = os.fspath(uri)
    if not s.strip():
        raise MediaURIError("empty media URI; pass a path or file:// URI under media_roots")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in s):
        raise MediaURIError(f"{_show(s, repr)}: control characters in a media URI; pass a plain path or file:// URI")
    parsed = urllib.parse.urlparse(s)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise MediaURIError(f"{_show(s)}: file URI names host {_netloc(parsed)!r}; only local files are read")
        s = urllib.parse.unquote(parsed.path)
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in s):  # %00, %0a... decoded
            raise MediaURIError(f"{_show(uri)}: control characters in a media URI; pass a plain path or file:// URI")
    elif parsed.scheme and len(parsed.scheme) > 1:  # len 1: a Windows drive letter
        raise MediaURIError(f"{_show(s)}: scheme {parsed.scheme!r} is not supported; copy the media to a local "
                            "path (or file:// URI) under media_roots first")
    if not allow_relative and not os.path.isabs(os.path.expanduser(s)):
        raise MediaURIError(f"{_show(s)}: not an absolute path; media URIs must be absolute paths or file:// URIs "
                            "under media_roots (a relative one would name a file in the worker's working directory)")
    try:
        path = Path(s).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a name too long, an unknown ~user
        raise MediaURIError(f"{_show(s)}: cannot resolve it ({type(e).__name__}: {str(e)[:200]}); pass the real "
                            "path of a media file under media_roots") from None
    if settings.media_roots and not under_roots(path, settings.media_roots):
        roots = [str(Path(r).expanduser().resolve()) for r in settings.media_roots]
        raise MediaURIError(f"{_show(path)}: outside the allowed media_roots {roots}; "
                                "move it there or add its directory to media_roots")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MediaURIError(f"{_show(path)}: no such file") from None
    except OSError as e:
        raise storage_fault(path, e) or MediaURIError(f"{_show(path)}: cannot read it ({e.strerror}); check the path "
                                                      "and its permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise MediaURIError(f"{_show(path)}: not a regular file ({_kind(st.st_mode)}); pass a media file")
    size = st.st_size
    if size == 0:
        raise MediaURIError(f"{_show(path)}: zero-length file; the upload or copy did not finish")
    if size > settings.max_media_bytes:
        raise MediaURIError(f"{_show(path)}: {size} bytes, over max_media_bytes={settings.max_media_bytes}; "
                            "raise the setting if this is intended")
    return path


@dataclass
class MediaInfo:
    path: Path
    duration_s: float | None
    """Container duration, None when the container does not say (live segments, raw streams)."""
    width: int
    height: int
    """Display size: the stored width scaled by the sample aspect ratio (anamorphic video), then rotation."""
    fps: float
    """Average frame rate (informational: times come from each frame's timestamp)."""
    rotation: int
    has_audio: bool
    subtitle_streams: list[int] = field(default_factory=list)
    video_codec: str = ""


_FD_DIR = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
"""Where an open descriptor has a name: opening `{_FD_DIR}/{fd}` opens the very file the descriptor is open on,
whatever its path names now (Linux's /proc; /dev/fd elsewhere)."""


def _open_checked(path: Path | str) -> int:
    """A read-only descriptor on the regular file `path` names now, as check_uri checked it; MediaURIError for
    anything else. Opened without following a symlink (O_NOFOLLOW) and without blocking (O_NONBLOCK: a FIFO
    swapped in after the check would block an open or a read forever), then refused unless it is a regular
    file whose real path is `path` (absolute: the resolved path check_uri gives), so a file swapped for a
    symlink, or a directory on its path for one, after the check is not read. O_NONBLOCK is cleared after."""
    want = os.path.abspath(os.fspath(path))
    try:
        fd = os.open(want, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MediaURIError(f"{_show(path)}: a symbolic link (changed after it was checked?); pass the real path "
                                "of a media file under media_roots, as check_uri gives it") from None
        if e.errno == errno.ENOENT:
            raise MediaURIError(f"{_show(path)}: no such file (removed after it was checked?)") from None
        raise storage_fault(path, e) or MediaURIError(f"{_show(path)}: cannot read it ({e.strerror}); check the "
                                                      "path and its permissions") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MediaURIError(f"{_show(path)}: not a regular file ({_kind(st.st_mode)}; changed after it was "
                                "checked?); pass a media file")
        if _FD_DIR == "/proc/self/fd":
            real = os.readlink(f"{_FD_DIR}/{fd}")
            same = real == want
        else:  # no /proc: the same file as the path names (a directory swapped on its path is not seen)
            real, named = want, os.stat(want)
            same = (named.st_dev, named.st_ino) == (st.st_dev, st.st_ino)
        if not same:
            raise MediaURIError(f"{_show(path)}: changed after it was checked (it is now {_show(real)}: a "
                                "directory on its path was replaced, by a symlink?); pass the real path of a media "
                                "file under media_roots")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_checked(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of a small file (subtitles) at `path`, read safely after check_uri checked it: only a regular
    file, not through a symlink, not a FIFO or device (a read that would never end), and at most `max_bytes`
    (MediaURIError naming its size otherwise), the file read being the one the path named when it was opened
    (_open_checked). MediaURIError for all of these, with the cause and the fix."""
    fd = _open_checked(path)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise MediaURIError(f"{_show(path)}: {size} bytes, over the limit of {max_bytes}; pass a smaller file")
        parts, got = [], 0
        while True:
            try:
                b = os.read(fd, min(1 << 20, max_bytes + 1 - got))
            except OSError as e:
                raise storage_fault(path, e) or MediaURIError(f"{_show(path)}: cannot read it ({e.strerror}); "
                                                              "check the file") from None
            if not b:
                break
            parts.append(b)
            got += len(b)
            if got > max_bytes:  # it grew while read
                raise MediaURIError(f"{_show(path)}: over the limit of {max_bytes} bytes (it grew while read); pass "
                                    "a smaller file, and publish it only once it is complete")
        return b"".join(parts)
    finally:
        os.close(fd)


def _read_head(path: Path | str, n: int) -> bytes:
    """The first `n` bytes of the media file (opened as _open_checked opens it)."""
    fd = _open_checked(path)
    try:
        return os.pread(fd, n, 0)
    finally:
        os.close(fd)


def open_media(path: Path) -> av.container.InputContainer:
    """The file opened for reading, with the guards every reader of media uses: a regular file only, the one
    `path` (resolved, as check_uri gives it) named when checked: not a symlink, a FIFO or device, and not
    through a directory replaced since (_open_checked); not a playlist or concat script, FFmpeg's file protocol
    only, a timeout; MediaURIError or CorruptMediaError otherwise.

    FFmpeg opens the checked descriptor's file (`/proc/self/fd/N`: the same file, at native speed, whatever the
    path names by then), so the file checked is the file decoded; the descriptor is closed once FFmpeg holds
    its own, which lives as long as the container."""
    fd = _open_checked(path)
    try:
        try:
            head = os.pread(fd, 64, 0).lstrip(b"\xef\xbb\xbf \t\r\n")
        except OSError as e:
            raise storage_fault(path, e) or MediaURIError(f"{_show(path)}: cannot read it ({e.strerror}); check "
                                                          "the path and its permissions") from None
        if head.startswith(_INDIRECT_MAGIC):
            raise MediaURIError(f"{_show(path)}: a playlist or concat script, not media (it names other files or "
                                "URLs, which are not read); publish the media file itself")
        name = f"{_FD_DIR}/{fd}"
        try:
            c = av.open(name, options=_OPEN_OPTIONS, timeout=30.0)
        except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
            if (fault := storage_fault(path, e)) is not None:
                raise fault from None
            why = str(e).replace(name, os.fspath(path))
            raise CorruptMediaError(f"{_show(path)}: FFmpeg cannot open it ({type(e).__name__}: {why}); the file "
                                    "is corrupt, truncated or not media: re-encode or re-fetch it") from None
    finally:
        os.close(fd)
    if _INDIRECT_FORMATS & set(c.format.name.split(",")):
        c.close()
        raise MediaURIError(f"{path}: a {c.format.name} playlist or manifest, not media (it names other files or "
                            "URLs, which are not read); publish the media file itself")
    return c


def video_stream(c):
    """The film's picture, as a player picks it: of the video streams that are not an attached picture (an
    audio file's cover art, a thumbnail track), the one marked default, else the first; None if none."""
    pics = av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails
    return _default([s for s in c.streams.video if not s.disposition & pics])


def _default(streams: list):
    return next((s for s in streams if s.disposition & av.stream.Disposition.default), streams[0] if streams else None)


def audio_stream(c):
    """The film's sound: the audio stream marked default (a player's choice), else the first; None if none."""
    return _default(list(c.streams.audio))


def has_audio(path: Path) -> bool:
    """Whether the file has an audio stream (opened with the same guards as for decoding)."""
    with open_media(path) as c:
        return audio_stream(c) is not None


def _check_frame_size(path: Path, width: int, height: int, what: str) -> None:
    if width > MAX_FRAME_SIDE or height > MAX_FRAME_SIDE or width * height > MAX_FRAME_PIXELS:
        raise MediaURIError(f"{path}: {what} {width}x{height} pixels, over the limit ({MAX_FRAME_SIDE} a side, "
                            f"{MAX_FRAME_PIXELS} in all); downscale it first")


def _check_audio(path: Path, a) -> None:
    """MediaURIError for an audio stream whose sample rate or channel count no real recording has (a header
    declaring 1,000,000,007 Hz or 64 channels): refused before it is resampled or downmixed."""
    cc = a.codec_context
    rate = (cc.sample_rate if cc is not None else 0) or a.rate or 0
    channels = (cc.channels if cc is not None else 0) or 0
    if rate > MAX_AUDIO_RATE:
        raise MediaURIError(f"{_show(path)}: audio at {rate} Hz, over the limit of {MAX_AUDIO_RATE} Hz; resample it "
                            "first (e.g. `ffmpeg -i IN -c:v copy -ar 48000 OUT`)")
    if channels > MAX_AUDIO_CHANNELS:
        raise MediaURIError(f"{_show(path)}: audio with {channels} channels, over the limit of {MAX_AUDIO_CHANNELS}; "
                            "downmix it first (e.g. `ffmpeg -i IN -c:v copy -ac 2 OUT`)")


def _png_size(head: bytes) -> tuple[int, int] | None:
    """The (width, height) a PNG's header declares, None if `head` is not a PNG's start."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def _start(container) -> float:
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def _rotation(stream) -> int:
    """The counter-clockwise angle of an old-style `rotate` tag (FFmpeg before 5 exported it; new files carry a
    display matrix, read per frame): the tag is the clockwise angle to display the picture by."""
    try:
        rot = int(stream.metadata.get("rotate", 0))
    except ValueError:
        rot = 0
    return -rot % 360


def sample_aspect(stream) -> Fraction:
    """The width a pixel of `stream` is shown at over its height (SAR), as FFmpeg's CLI and players take it
    (av_guess_sample_aspect_ratio: the container's, else the codec's): anamorphic video (DVD, DV, broadcast SD;
    320x240 at 16:11 is shown 465x240) is stored squeezed. 1 (square) where the file gives none or 0:1."""
    sar = stream.sample_aspect_ratio
    return sar if sar is not None and sar > 0 else Fraction(1)


def display_size(width: int, height: int, sar: Fraction, rot: int) -> tuple[float, float]:
    """The (w, h) a player shows stored `width` x `height` pixels at: the width scaled by the sample aspect
    ratio, then turned by the display matrix's angle (the ratio is the stored pixels', so it applies first)."""
    w, h = width * float(sar), float(height)
    return (h, w) if rot in (90, 270) else (w, h)


@dataclass
class PixelAspect:
    """The sample aspect ratio of one pass's video (sample_aspect), filled in when iter_video_frames opens the
    stream (iter_video_frames(aspect=...)): what sizes a picture as a player shows it (display_size)."""

    sar: Fraction = Fraction(1)


def turn(img: np.ndarray, rot: int) -> np.ndarray:
    """Pixels as a player shows them. `rot` is the display matrix's angle, counter-clockwise (what PyAV's
    frame.rotation and ffprobe report); FFmpeg's own autorotation turns the picture counter-clockwise by it."""
    return np.ascontiguousarray(np.rot90(img, k=rot // 90)) if rot else img


def probe(path: Path, settings: Settings | None = None) -> MediaInfo:
    """Open the file and describe it, decoding one frame to prove the video decodes."""
    with open_media(path) as c:
        v = video_stream(c)
        if v is None:
            kinds = sorted({s.type for s in c.streams}) or ["none"]
            cover = " (its picture is cover art, not video)" if c.streams.video else ""
            raise NoVideoError(f"{path}: no video stream (streams: {', '.join(kinds)}){cover}; shots need video: "
                               "pass a file with a video track")
        if v.codec_context is None:  # PyAV opens no codec context when FFmpeg has no decoder for the codec
            raise CorruptMediaError(f"{path}: FFmpeg has no decoder for its video codec (unsupported or unknown "
                                    "codec); re-encode it, e.g. to H.264")
        _check_frame_size(path, v.codec_context.width or 0, v.codec_context.height or 0, "declares frames of")
        rate = v.average_rate or v.guessed_rate
        # the average only: the guessed rate is the finest one the timestamps need, 1000/s for variable-rate
        # WebM with millisecond timestamps; such a file is bounded while decoded (max_duration_s * MAX_FPS frames)
        if v.average_rate and float(v.average_rate) > MAX_FPS:
            raise MediaURIError(f"{_show(path)}: video at {float(rate):g} frames/s, over the limit of {MAX_FPS}; "
                                "re-encode it at a lower frame rate first (e.g. `ffmpeg -i IN -r 60 OUT.mp4`)")
        a = audio_stream(c)
        if a is not None:
            _check_audio(path, a)
        _limit_pixels(v)
        first = next(_frames(c, v, Damage(path, "video")), None)
        if first is None:
            size = _png_size(_read_head(path, 24)) if v.codec_context.name in ("png", "apng") else None
            if size is not None:  # FFmpeg finds no size before it decodes a PNG, and max_pixels refuses to
                _check_frame_size(path, *size, "declares frames of")
            raise CorruptMediaError(f"{path}: the video stream has no decodable frame; the file is truncated "
                                    "or empty: re-fetch it")
        rot = int(getattr(first, "rotation", 0) or 0) % 360 or _rotation(v)
        _check_frame_size(path, first.width, first.height, "has frames of")
        w, h = (max(1, round(x)) for x in display_size(first.width, first.height, sample_aspect(v), rot))
        dur = c.duration / av.time_base if c.duration else None
        # How long it is: Matroska's duration runs from timestamp 0, not from its first one (a file starting
        # at 9e9 s declares 9e9 + its length); other containers' is already end minus start.
        span = max(0.0, dur - _start(c)) if dur is not None and "matroska" in c.format.name else dur
        if settings is not None and span is not None and span > settings.max_media_duration_s:
            raise MediaURIError(f"{path}: {span:.0f} s long, over max_media_duration_s="
                                f"{settings.max_media_duration_s:.0f}; raise the setting if this is intended")
        fps = float(rate or 0) or 25.0
        return MediaInfo(path, dur, w, h, fps, rot, a is not None,
                         [s.index for s in c.streams.subtitles], v.codec_context.name)


@dataclass
class Frame:
    index: int
    """Decode-order index within the file (or across the segments fed to one detector)."""
    time_s: float
    image: np.ndarray
    """(H, W, 3) uint8 RGB (or BGR when asked), rotation applied."""


def _to_array(frame, size: tuple[int, int] | None, fmt: str, rot: int) -> np.ndarray:
    if size is None:
        img = frame.to_ndarray(format=fmt)
    else:
        w, h = size
        if rot in (90, 270):  # scale to the pre-rotation shape so the result is (h, w)
            w, h = h, w
        img = frame.to_ndarray(width=w, height=h, format=fmt)
    return turn(img, rot)


GAP_S = 0.02
"""iter_audio: a frame's timestamp further than this from the samples counted before it means audio is missing
there (or repeated): the count follows the timestamp. AAC frames are 21-23 ms; timestamp rounding is far less."""

MAX_BAD_PACKETS = 50
"""Packets in a row that do not decode before the rest of a stream is given up (it ends there, as a truncated
file's does: about 1 s of AAC, 2 s of 25-fps video). Fewer are skipped, as FFmpeg's CLI skips them: a damaged
stretch costs its own frames or audio, not the rest of the file."""


class Damage:
    """The packets of one pass over a stream that did not decode (skipped), and a read error that ended it."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        self.restart()

    def restart(self) -> None:
        """A new attempt from another point (_decode's seeks): what an abandoned one met is not counted."""
        self.skipped, self.in_row = 0, 0
        self.first: str | None = None
        self.ended: str | None = None

    def skip(self, packet, error: Exception) -> bool:
        """Count a packet that did not decode; False once MAX_BAD_PACKETS came in a row (the stream ends)."""
        self.skipped += 1
        self.in_row += 1
        if self.first is None:
            at = float(packet.pts * packet.time_base) if packet.pts is not None else None
            self.first = f"{'?' if at is None else f'{at:.2f}'} s: {error}"
        if self.in_row >= MAX_BAD_PACKETS:
            self.ended = f"{self.in_row} packets in a row did not decode"
            return False
        return True

    def report(self) -> None:
        """A warning for what was skipped or cut short (once, at the end of the pass)."""
        if self.skipped:
            log.warning("%s: %d %s packets did not decode and were skipped (the first at %s): a damaged file, or "
                        "frames over the size limit; re-encode or re-fetch it for a clean copy", self.path,
                        self.skipped, self.what, self.first)
        if self.ended:
            log.warning("%s: reading the %s stopped early (%s); using what came before: a truncated file",
                        self.path, self.what, self.ended)


def _frames(c, stream, damage: Damage):
    """Decoded frames of `stream` from where the container is; a packet that does not decode is skipped
    (`damage` counts it), a read error of the container ends the stream (a truncated file)."""
    packets = c.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as e:  # the end of a truncated file; a read the storage failed is no end of the file
            if (fault := storage_fault("the media", e)) is not None:
                raise fault from None
            damage.ended = str(e)
            return
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            if damage.skip(packet, e):
                continue
            return
        damage.in_row = 0
        yield from frames


def _limit_pixels(stream) -> None:
    """The decoder refuses frames over MAX_FRAME_PIXELS (FFmpeg's max_pixels) before it allocates them: a
    file whose first frame is small may still hold huge ones (a decompression bomb)."""
    stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(MAX_FRAME_PIXELS)}


AVFMT_NOTIMESTAMPS = 128
"""libavformat's flag of a format whose packets carry no timestamps (raw .h264, .hevc): it is decoded from its
start, never sought by time (a seek there failed, and so did the rewind after it)."""


def _seek(c, base: float, seek_s: float | None) -> bool:
    """Jump to the keyframe at or before seek_s (container time); decoding goes on from there. False where the
    container cannot seek at all, not even to its start (a raw .h264 stream): it stays where it is."""
    if seek_s and seek_s > 0:
        try:
            c.seek(int((base + seek_s) * av.time_base), backward=True)
        except av.FFmpegError:  # not seekable (a pipe, a broken index): decode from the start
            return _rewind(c)
    return True


def _rewind(c) -> bool:
    """Back to the start; False where the container refuses even that (before 2026-12-07, FFmpeg's
    PermissionError escaped, and every batch of a raw stream's shots after the first was dead-lettered)."""
    try:
        c.seek(0)
    except av.FFmpegError:
        return False
    return True


def _decode(c, stream, base: float, seek_s: float | None, damage: Damage):
    """Decoded frames of `stream`, the first at or before seek_s (container time) when it is given.

    A seek lands at or before the time asked in an indexed container (MP4, Matroska); in MPEG-TS, which has no
    index, FFmpeg searches timestamps and may land seconds after it. Then seek again further back (1, 2, 4 ...
    s more), and decode from the start after that: the frames a caller wants are never skipped, and the same
    file and time always give the same first frame. The container seeks (its index is usually the video's:
    Matroska's cues, whose audio-stream seek reads the file from its start), for audio too."""
    if not seek_s or seek_s <= 0 or int(c.format.flags) & AVFMT_NOTIMESTAMPS:  # a raw stream: no time to seek to
        yield from _frames(c, stream, damage)
        return
    target, back = seek_s, 1.0
    while target > 0:
        if not _seek(c, base, target):
            if target != seek_s:  # frames were read on the pass before: where it is now is not the start
                raise CorruptMediaError(f"{c.name}: cannot seek back to an earlier time; remux it into a "
                                        "container (ffmpeg -i IN -c copy OUT.mkv)")
            damage.restart()  # cannot seek: on from where it is (its start: nothing was read yet)
            yield from _frames(c, stream, damage)
            return
        damage.restart()
        frames = _frames(c, stream, damage)
        first = next(frames, None)
        if first is not None and first.time is None:
            break  # no timestamp: where it landed is unknown
        if first is not None and first.time - base <= seek_s + 1e-6:
            yield first
            yield from frames
            return
        target, back = target - back, back * 2  # landed late, or past the stream's last frame
    if not _rewind(c):
        raise CorruptMediaError(f"{c.name}: cannot seek back to its start; remux it into a container "
                                "(ffmpeg -i IN -c copy OUT.mkv)")
    damage.restart()
    yield from _frames(c, stream, damage)


class FrameTimes:
    """The seconds iter_video_frames gives a stream's frames, from each frame's own timestamp (`frame.time`;
    when it has none, the previous one plus a nominal frame): from the container start (`base`), or with
    `time_offset` from that time at the first frame. One per pass over a stream; a decoded segment replayed
    from memory (mediafm.media.segment_cache) goes through the same arithmetic, so its times are the same floats."""

    BACK_S = 0.5
    """Frames whose timestamps go back by more than this are refused: recordings joined end to end (MPEG-TS
    files concatenated), whose times repeat, so shots would overlap and a seek by time could land in either."""

    def __init__(self, base: float, rate: float, time_offset: float | None, path: Path | str = "") -> None:
        self.base, self.rate, self.time_offset, self.path = base, rate, time_offset, path
        self.first: float | None = None
        self.last: float | None = None

    def __call__(self, t: float | None) -> float:
        if t is None:  # no timestamp: continue from the last one at the nominal rate
            t = (self.last if self.last is not None else self.base) + 1.0 / self.rate
        if self.last is not None and t < self.last - self.BACK_S:
            raise CorruptMediaError(
                f"{self.path}: its video timestamps go back from {self.last - self.base:.2f} s to "
                f"{t - self.base:.2f} s: recordings joined end to end? Lay them out in one timeline, e.g. "
                "`ffmpeg -i IN -c copy OUT.mp4` (FFmpeg's CLI joins MPEG-TS discontinuities), or the concat demuxer")
        self.last = t
        if self.time_offset is not None and self.first is None:
            self.first = t
        return self.place(t)

    def place(self, t: float) -> float:
        """A timestamp of this stream (s) on the clock the frames are given on."""
        if self.time_offset is None:
            return t - self.base
        return self.time_offset + (t - self.first)


TRUNCATED_S = 1.0
"""Video that ends this much or more before the end its file declares for it is reported (a warning): a truncated
file (Matroska and MP4 cut short still open and decode up to the cut, with their headers' duration)."""


@dataclass
class VideoEnd:
    """Where the video of one pass of iter_video_frames ends, on the clock its frames are given on; filled in
    when the pass reaches the end of the stream (iter_video_frames(end=...))."""

    end_s: float | None = None
    """The last frame's time plus its duration (the container's, else the nominal frame period its times are
    placed at, FrameTimes.rate: one period for one stream; never the gap before it, which with variable frame
    rate can be seconds), and never past the end the file declares (_declared_end: the video's own, or the
    container's, which bounds every track's), when it declares one."""


def _declared_end(c, v, base: float) -> tuple[float | None, bool]:
    """Where the file says its video ends, on its timestamps' clock (s), None when it does not say: the stream's
    own duration where FFmpeg knows it (MP4, MPEG-TS), else the DURATION tag Matroska muxers write per track
    (the end of its last frame), else the container's duration (Matroska's runs from timestamp 0, not from
    the first one). And whether that end is the video's own: the container's covers every track, subtitles
    included, so it is the video's only where no other stream is timed (a muxer that writes no DURATION tags,
    audio running past the video: the video is not short of anything the file says of it)."""
    if v.duration and v.time_base:
        start = float(v.start_time * v.time_base) if v.start_time is not None else base
        return start + float(v.duration * v.time_base), True
    tag = v.metadata.get("DURATION")
    if tag:
        try:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec), True
        except ValueError:
            pass
    if c.duration:
        pic = av.stream.Disposition.attached_pic  # a cover picture (Matroska's attached images) has no span
        alone = all(s.index == v.index or s.type == "attachment" or (s.type == "video" and s.disposition & pic)
                    for s in c.streams)
        return c.duration / av.time_base + (0.0 if "matroska" in c.format.name else base), alone
    return None, False


def iter_video_frames(path: Path, *, start_index: int = 0, time_offset: float | None = None,
                      seek_s: float | None = None, tap=None, end: VideoEnd | None = None,
                      aspect: PixelAspect | None = None,
                      max_duration_s: float | None = None) -> Iterator[tuple[int, float, av.VideoFrame, int]]:
    """(index, time_s, av frame, rotation) for every decoded frame; the av frame is not converted.

    time_offset None: times from the container start; a number: the first frame gets that time
    (segments of a live event laid end to end). seek_s: start near that time (the keyframe at
    or before it) instead of at the first frame; frame indices then count from start_index.
    tap: told what a replay needs (mediafm.media.segment_cache.SegmentRecorder): `tap.opened(base, rate,
    has_audio)` once, then `tap.frame(frame.time, frame, rotation)` per frame.
    end: told where the video ends (VideoEnd), once the pass reaches the end of the stream. Video that ends
    TRUNCATED_S or more before the end the file declares for it is reported (a warning: a truncated file).
    aspect: told the video's sample aspect ratio (PixelAspect) when the stream is opened, before any frame.
    max_duration_s: settings.max_media_duration_s; MediaURIError once a frame lies further than that from the
    container start, or more than max_duration_s * MAX_FPS frames decoded in this pass: a raw stream declares
    no duration for probe to check, and a file may hold more than it declares. None: no limit.
    """
    with open_media(path) as c:
        v = video_stream(c)
        if v is None:
            raise NoVideoError(f"{path}: no video stream; shots need video: pass a file with a video track")
        v.thread_type = "AUTO"
        _limit_pixels(v)
        base = _start(c)
        stream_rot = _rotation(v)
        if aspect is not None:
            aspect.sar = sample_aspect(v)
        clock = FrameTimes(base, float(v.average_rate or 25), time_offset, path)
        if tap is not None:
            tap.opened(base, clock.rate, audio_stream(c) is not None)
        damage = Damage(path, "video")
        i = start_index
        dur = None  # the last frame's own duration (s)
        most = None if max_duration_s is None else max(1, math.ceil(max_duration_s * MAX_FPS))
        try:
            for frame in _decode(c, v, base, seek_s if time_offset is None else None, damage):
                raw = frame.time
                rot = int(getattr(frame, "rotation", 0) or 0) % 360 or stream_rot
                t = clock(raw)
                if max_duration_s is not None:
                    _check_decoded(path, "video", clock.last - base, i - start_index, most, max_duration_s)
                dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else None
                if tap is not None:
                    tap.frame(raw, frame, rot)
                yield i, t, frame, rot
                i += 1
            if i == start_index:
                raise CorruptMediaError(f"{path}: the video stream does not decode "
                                        f"({damage.first or damage.ended or 'no frame'}); re-encode or re-fetch it")
            declared, own = _declared_end(c, v, base)
            ends = clock.last + (dur or 1.0 / clock.rate)
            if declared is not None and clock.last < declared < ends:
                ends = declared
            if end is not None:
                end.end_s = clock.place(ends)
            if own and declared - ends >= TRUNCATED_S and not damage.ended:
                log.warning("%s: the file declares %.2f s of video but it ends at %.2f s; using what decoded: a "
                            "truncated file? Re-fetch it for a complete copy", path, declared - base, ends - base)
        finally:  # also for a pass its reader leaves early (the encode stage's batches)
            if i > start_index:
                damage.report()  # a damaged stretch, or a truncated tail after good frames: what decoded is used


DURATION_SLACK_S = 1.0
"""How far past max_duration_s decoding may go before it stops (iter_video_frames, iter_audio): streams may run a
little past the duration their container declares (audio's priming samples, timestamp rounding)."""


def _check_decoded(path, what: str, at_s: float, count: int, most: int | None, max_duration_s: float) -> None:
    """MediaURIError once decoding reaches past max_duration_s of media (DURATION_SLACK_S more: a file probe
    passed may run a little past the duration its container declares) or `most` frames."""
    over = at_s > max_duration_s + DURATION_SLACK_S
    if over or (most is not None and count >= most):
        reached = f"{at_s:.1f} s" if over else f"{count} frames, at most {MAX_FPS} frames/s"
        raise MediaURIError(f"{_show(path)}: its {what} runs past max_media_duration_s={max_duration_s:g} "
                            f"(decoding reached {reached}; its container declares less, or no duration: a raw "
                            "stream?); cut it, or raise the setting if this is intended")


def iter_frames(path: Path, *, size: tuple[int, int] | None = None, fmt: str = "rgb24",
                start_index: int = 0, time_offset: float | None = None,
                max_duration_s: float | None = None) -> Iterator[Frame]:
    """Decoded frames scaled to `size` (w, h) as they come; never more than one in memory.
    max_duration_s: as iter_video_frames's."""
    for i, t, frame, rot in iter_video_frames(path, start_index=start_index, time_offset=time_offset,
                                              max_duration_s=max_duration_s):
        yield Frame(i, t, _to_array(frame, size, fmt, rot))


def to_array(frame, size: tuple[int, int] | None, rot: int, fmt: str = "rgb24") -> np.ndarray:
    """Convert an av frame from :func:`iter_video_frames` (scaled, rotated)."""
    return _to_array(frame, size, fmt, rot)


def iter_audio(path: Path, *, rate: int | None = None, time_offset: float | None = None,
               seek_s: float | None = None, max_duration_s: float | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first sample's index, rate, mono float32 samples) chunks of the audio stream (audio_stream: the default
    one, else the first); nothing if none.

    Samples are at the stream's own rate (`rate`: converted to that one instead, for a file that continues
    another at another rate); sample `i` lies at `i / rate` seconds from the container start, or from
    `time_offset` at the first chunk. The first decoded frame's timestamp gives its index and samples are
    counted from there, so a pass started after a seek gives each sample the index a pass from the start
    gives it. Resample with :func:`resample_span`, which gives each output sample the same value wherever
    decoding started (FFmpeg's streaming resampler does not: its output depends on where it began).
    Where a frame's timestamp is more than GAP_S from the samples counted, the count follows the timestamp:
    silence fills a gap (audio missing from the file, packets lost), and samples for times already given are
    dropped. A packet that does not decode is skipped (its samples are a gap then); a read error ends the
    stream (a truncated file keeps what it had).
    A stream over MAX_AUDIO_RATE or MAX_AUDIO_CHANNELS is refused (MediaURIError), and an error FFmpeg raises
    converting it is a CorruptMediaError. max_duration_s: settings.max_media_duration_s; MediaURIError once a
    sample lies further than that from the container start (None: no limit).
    """
    with open_media(path) as c:
        a = audio_stream(c)
        if a is None:
            return
        _check_audio(path, a)
        base = _start(c)
        damage = Damage(path, "audio")
        try:
            yield from _audio_chunks(c, a, base, rate, time_offset, seek_s, damage, path, max_duration_s)
        except av.FFmpegError as e:  # the resampler refusing a layout or format (ArgumentError...)
            raise CorruptMediaError(f"{_show(path)}: FFmpeg cannot convert its audio ({type(e).__name__}: "
                                    f"{str(e)[:200]}); re-encode the audio, e.g. to stereo AAC") from None
        finally:  # also for a pass its reader leaves early (_AudioCursor restarts every 30 s)
            damage.report()


def _audio_chunks(c, a, base: float, rate: int | None, time_offset: float | None, seek_s: float | None,
                  damage: Damage, path: Path | str = "",
                  max_duration_s: float | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """iter_audio's chunks from an open container's stream `a`.

    A stream whose sample format, channel layout or rate changes part way (a broadcast recording switching
    mono to stereo, or 44.1 to 48 kHz, at an ad break) is converted to the first one's mono float rate
    throughout: the converter made for the old format gives what it holds, then one is made for the new."""
    res, made_for = None, None  # downmix to mono float (and convert the rate only where `rate` asks it)
    pos = 0  # the next sample's index
    origin = (0.0, 0)  # (timestamp, index) samples are placed from
    started = False
    at0 = (0.0, 0)  # (s from the container start, index) of the first sample: where the limit is counted from

    def _limit(k: int) -> None:  # sample k (the next one given) must lie within max_duration_s
        if max_duration_s is not None:
            _check_decoded(path, "audio", at0[0] + (k - at0[1]) / rate, 0, None, max_duration_s)

    def _out(frames) -> list[np.ndarray]:
        return [o.to_ndarray().reshape(-1).astype(np.float32, copy=False) for o in frames]

    for frame in _decode(c, a, base, seek_s if time_offset is None else None, damage):
        drop = 0
        fmt = (frame.format.name, frame.layout.name, frame.layout.nb_channels, frame.sample_rate)
        if res is not None and fmt != made_for:  # what the old converter holds comes before this frame
            for x in _out(res.resample(None)):
                yield pos, rate, x
                pos += len(x)
            res = None
        if not started:
            started = True
            rate = rate or frame.sample_rate
            ft = frame.time if frame.time is not None else base
            pos = round(time_offset * rate) if time_offset is not None else round(ft * rate) - round(base * rate)
            # From the container start, an index follows from the timestamp alone, wherever decoding began.
            origin = (ft, pos) if time_offset is not None else (base, 0)
            at0 = (ft - base, pos)
        elif frame.time is not None:
            at = origin[1] + round((frame.time - origin[0]) * rate)  # where this frame's samples belong
            if at - pos > GAP_S * rate:
                for k in range(pos, at, rate):  # silence for the missing audio, a second at a time
                    _limit(k + min(rate, at - k))
                    yield k, rate, np.zeros(min(rate, at - k), np.float32)
                pos = at
            elif pos - at > GAP_S * rate:
                drop = pos - at  # times already given (a repeated stretch): not given twice
        if frame.format.name in ("flt", "fltp") and frame.layout.nb_channels == 1 and frame.sample_rate == rate:
            outs = [frame.to_ndarray().reshape(-1)]  # mono float at the rate asked: what the resampler gives
        else:
            if res is None:
                res, made_for = av.AudioResampler(format="flt", layout="mono", rate=rate), fmt
            outs = _out(res.resample(frame))
        for x in outs:
            x, drop = x[drop:], max(0, drop - len(x))
            if len(x):
                _limit(pos + len(x))
                yield pos, rate, x
                pos += len(x)
    if res is not None:
        for x in _out(res.resample(None)):
            yield pos, rate, x
            pos += len(x)


@functools.lru_cache(maxsize=4)
def _resample_filter(up: int, down: int) -> np.ndarray:
    """resample_poly's filter for up/down (lowest terms); MediaURIError past MAX_RESAMPLE_FACTOR (its length
    grows with them: 1,000,003 Hz to 44.1 kHz needs 20 M taps, 160 MB, kept in this cache)."""
    from scipy.signal import firwin  # what resample_poly designs, made once per ratio

    if max(up, down) > MAX_RESAMPLE_FACTOR:
        raise MediaURIError(f"resampling by {up}/{down} needs a filter of {20 * max(up, down) + 1} taps, over the "
                            f"limit of {20 * MAX_RESAMPLE_FACTOR + 1}: the audio's sample rate is unusual; resample "
                            "it first to a common rate (e.g. `ffmpeg -i IN -c:v copy -ar 48000 OUT`)")
    half = 10 * max(up, down)
    return firwin(2 * half + 1, 1.0 / max(up, down), window=("kaiser", 5.0))  # resample_poly scales it by up


def resample_span(x: np.ndarray, first: int, rate_in: int, rate: int, k0: int, k1: int) -> np.ndarray:
    """Samples `k0 .. k1-1` at `rate` (sample k at k / rate s) of the samples `x` at `rate_in` (x[0] is sample
    `first`), for the part of that span `x` covers.

    Polyphase resampling (scipy's resample_poly, a Kaiser-windowed FIR) of just the samples the span needs,
    cut on the grid both rates share: each output sample is the same sum over the same input samples
    whichever part of the stream `x` is, so a shot's audio does not depend on where decoding started."""
    if rate == rate_in:
        lo, hi = max(k0, first), min(k1, first + len(x))
        return np.array(x[lo - first: hi - first], np.float32) if hi > lo else np.zeros(0, np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(rate, rate_in)
    up, down = rate // g, rate_in // g
    h = _resample_filter(up, down)
    reach = -(-(len(h) // 2) // up) + 1  # input samples on each side an output sample reads
    k0 = max(k0, -(-first * up // down))  # no samples before the start or past the end of what was decoded
    k1 = min(k1, -(-(first + len(x)) * up // down))
    if k1 <= k0:
        return np.zeros(0, np.float32)
    lo = ((k0 * down) // up - reach) // down * down  # on both rates' grid: output sample lo * up / down
    hi = (k1 * down) // up + reach + 1
    seg = np.zeros(hi - lo, np.float32)
    a, b = max(lo, first), min(hi, first + len(x))
    if b > a:
        seg[a - lo: b - lo] = x[a - first: b - first]
    out = resample_poly(seg, up, down, window=h)
    j0 = k0 - lo * up // down
    return out[j0: j0 + (k1 - k0)].astype(np.float32)
