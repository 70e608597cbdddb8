"""Live segments decoded once: what the shot detector decoded, kept for the encoders.

A live shot is encoded moments after the segment that closes it was cut, from
the same segments the detector has just decoded. Decoding them again cost the
encode stage more than the encoders themselves (a heavy 2 s segment: ~0.35 s,
a shot spans 2-5 of them; bench/live.py). So the segment stage records each
segment's frames as the detector decodes them, converted once to the encoders'
frame size, and the encode stage samples its shots' frames from memory:

    cache = DecodedSegments(max_bytes=256 << 20)            # one per worker (Runtime.decoded)
    recorder = cache.recorder(frame_size=224)
    det.push_segment(path, time_offset=s0, tap=recorder)    # the detector's own decode
    cache.put(path, recorder.result())
    ...
    iter_shot_media(paths, shots, ..., decoded=cache)         # replays it; decodes what is not held

A replay gives what decoding the file again gives, bit for bit: the same frames,
converted by the same libswscale call, at times from the same arithmetic
(mediafm.media.decode.FrameTimes over the frames' own timestamps). The cache is
an LRU bounded in bytes (Settings.live_decoded_mb); a segment evicted, written
by another worker, or changed on disk since (size or mtime) is decoded again.
Audio is not kept: the encoders read a shot's central audio window from the
files (one demux per segment).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from mediafm.media.decode import FrameTimes
from mediafm.media.shots import Scaler


@dataclass
class DecodedSegment:
    """One file's video frames at frame_size x frame_size RGB (rotation applied), with what their times need."""

    base: float
    rate: float
    has_audio: bool
    frame_size: int
    frames: list[tuple[float | None, int, np.ndarray]] = field(default_factory=list)
    """(the frame's own timestamp or None, rotation, pixels) in decode order."""

    @property
    def nbytes(self) -> int:
        return sum(img.nbytes for _, _, img in self.frames)

    def replay(self, *, start_index: int = 0, time_offset: float | None = None) -> Iterator[tuple]:
        """(index, time_s, pixels, rotation) per frame, as iter_video_frames(path, start_index=...,
        time_offset=...) gives (index, time_s, av frame, rotation) for the same file."""
        clock = FrameTimes(self.base, self.rate, time_offset)
        for i, (raw, rot, img) in enumerate(self.frames, start_index):
            yield i, clock(raw), img, rot


class SegmentRecorder:
    """A tap for iter_video_frames (ShotDetector.push_segment(tap=...)): converts every frame it sees.
    Gives up (result() is None) past max_bytes, so one huge segment cannot hold the worker's memory."""

    def __init__(self, frame_size: int, max_bytes: int) -> None:
        self.frame_size, self.max_bytes = frame_size, max_bytes
        self._scaler = Scaler()
        self._seg: DecodedSegment | None = None
        self._bytes = 0

    def opened(self, base: float, rate: float, has_audio: bool) -> None:
        self._seg = DecodedSegment(base, rate, has_audio, self.frame_size)
        self._bytes = 0

    def frame(self, raw_time: float | None, frame, rot: int) -> None:
        if self._seg is None:
            return
        img = self._scaler(frame, (self.frame_size, self.frame_size), rot)
        self._bytes += img.nbytes
        if self._bytes > self.max_bytes:
            self._seg = None
            return
        self._seg.frames.append((raw_time, rot, img))

    def result(self) -> DecodedSegment | None:
        return self._seg if self._seg is not None and self._seg.frames else None


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class DecodedSegments:
    """Decoded segments by path, least recently used first out past max_bytes; thread-safe (the detector
    and the encoders' frame sampling run in worker threads)."""

    def __init__(self, max_bytes: int, on_lookup: Callable[[bool], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self.on_lookup = on_lookup  # told each get()'s outcome (True: held), e.g. a metric
        self._items: OrderedDict[str, tuple[tuple[int, int], DecodedSegment]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def recorder(self, frame_size: int) -> SegmentRecorder | None:
        """A tap recording one segment for this cache; None when the cache is off (max_bytes 0)."""
        return SegmentRecorder(frame_size, self.max_bytes) if self.max_bytes > 0 else None

    def put(self, path: str, seg: DecodedSegment | None) -> None:
        stamp = _stamp(path)
        if seg is None or stamp is None or seg.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(path, None)
            if old is not None:
                self._bytes -= old[1].nbytes
            self._items[path] = (stamp, seg)
            self._bytes += seg.nbytes
            while self._bytes > self.max_bytes:
                self._bytes -= self._items.popitem(last=False)[1][1].nbytes

    def get(self, path: str, frame_size: int) -> DecodedSegment | None:
        """The segment as recorded, if held at this frame size and the file is unchanged since."""
        with self._lock:
            item = self._items.get(path)
        if item is not None and item[1].frame_size == frame_size and item[0] == _stamp(path):
            with self._lock:
                if path in self._items:
                    self._items.move_to_end(path)
                self.hits += 1
            if self.on_lookup:
                self.on_lookup(True)
            return item[1]
        with self._lock:
            self.misses += 1
        if self.on_lookup:
            self.on_lookup(False)
        return None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
