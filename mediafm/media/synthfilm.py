"""Generated test films with known ground truth, made with the ffmpeg CLI.

Used by the tests and by bench/shots.py (never by the pipeline): each film is
a run of visually distinct lavfi sources joined by hard cuts at known frame
indices, with optional audio (tones, noise or espeak-ng speech per shot) and
optional soft subtitles (mov_text in MP4, SRT in MKV).

    film = make_film(tmp / "a.mp4", shots=[48, 30, 60], fps=24)
    film.cuts   # [48, 78]: first frame of every shot after the first
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# Visually distinct sources (random ones seeded: the same film every time, so a test that passes
# once passes again); each shot takes the next one (with a per-shot hue shift
# when the list wraps so two shots never look the same).
SOURCES = [
    "testsrc2=size={w}x{h}:rate={fps}",
    "smptebars=size={w}x{h}:rate={fps}",
    "mandelbrot=size={w}x{h}:rate={fps}",
    "cellauto=size={w}x{h}:rate={fps}:rule=110:seed=1",
    "rgbtestsrc=size={w}x{h}:rate={fps}",
    "gradients=size={w}x{h}:rate={fps}:speed=0.02:seed=1",
    "life=size={w}x{h}:rate={fps}:mold=10:ratio=0.3:seed=1:death_color=#202080:life_color=#ffcc00",
    "yuvtestsrc=size={w}x{h}:rate={fps}",
    "color=c=0x336633:size={w}x{h}:rate={fps},noise=alls=40:allf=t:all_seed=1",
    "pal100bars=size={w}x{h}:rate={fps}",
]


@dataclass
class Cue:
    start_s: float
    end_s: float
    text: str


@dataclass
class Film:
    path: Path
    fps: float
    shot_frames: list[int]
    cues: list[Cue] = field(default_factory=list)

    @property
    def cuts(self) -> list[int]:
        """First frame index of every shot after the first (the ground truth)."""
        out, acc = [], 0
        for n in self.shot_frames[:-1]:
            acc += n
            out.append(acc)
        return out

    @property
    def n_frames(self) -> int:
        return sum(self.shot_frames)

    @property
    def bounds_s(self) -> list[tuple[float, float]]:
        edges = [0, *self.cuts, self.n_frames]
        return [(a / self.fps, b / self.fps) for a, b in zip(edges, edges[1:], strict=False)]


def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("ffmpeg is not installed; apt-get install ffmpeg (scripts/bootstrap.sh does)")
    return exe


def speech_wav(text: str, path: Path) -> Path:
    """espeak-ng speech as a WAV file."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; apt-get install espeak-ng (scripts/bootstrap.sh does)")
    subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True, timeout=60)
    return path


def make_film(path: str | Path, *, shots: list[int], fps: float = 24, size: tuple[int, int] = (160, 96),
              audio: list[str] | None = None, cues: list[Cue] | None = None, subtitle_codec: str | None = None,
              first_source: int = 0, vcodec: str = "libx264", gop: int = 250) -> Film:
    """Write a film of len(shots) shots (frame counts) with hard cuts between them.

    audio: per shot, "tone:<Hz>", "noise", "silence" or "speech:<text>"; None = no audio stream.
    cues: timed text muxed as a soft subtitle stream (subtitle_codec "mov_text" for MP4, "srt" for MKV).
    """
    path = Path(path)
    w, h = size
    args: list[str] = [ffmpeg(), "-y", "-loglevel", "error"]
    parts = []
    for i, n in enumerate(shots):
        src = SOURCES[(first_source + i) % len(SOURCES)].format(w=w, h=h, fps=fps)
        args += ["-f", "lavfi", "-i", src]
        hue = f",hue=h={(i // len(SOURCES)) * 67}" if i >= len(SOURCES) else ""
        parts.append(f"[{i}:v]trim=end_frame={n},setpts=PTS-STARTPTS,format=yuv420p{hue}[v{i}]")
    graph = ";".join(parts) + ";" + "".join(f"[v{i}]" for i in range(len(shots))) + f"concat=n={len(shots)}:v=1:a=0[v]"
    maps = ["-map", "[v]"]
    n_in = len(shots)
    if audio is not None:
        assert len(audio) == len(shots), f"audio has {len(audio)} entries for {len(shots)} shots"
        aparts = []
        for i, (spec, n) in enumerate(zip(audio, shots, strict=True)):
            dur = n / fps
            if spec.startswith("speech:"):
                wav = speech_wav(spec[7:], path.with_name(f"{path.stem}.speech{i}.wav"))
                args += ["-i", str(wav)]
            elif spec.startswith("tone:"):
                args += ["-f", "lavfi", "-i", f"sine=frequency={spec[5:]}:sample_rate=44100"]
            elif spec == "noise":
                args += ["-f", "lavfi", "-i", "anoisesrc=color=pink:sample_rate=44100:amplitude=0.5"]
            else:
                args += ["-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono"]
            aparts.append(f"[{n_in}:a]aresample=44100,aformat=channel_layouts=mono,apad,atrim=0:{dur:.6f},"
                          f"asetpts=PTS-STARTPTS[a{i}]")
            n_in += 1
        graph += ";" + ";".join(aparts) + ";" + "".join(f"[a{i}]" for i in range(len(shots))) \
            + f"concat=n={len(shots)}:v=0:a=1[a]"
        maps += ["-map", "[a]", "-c:a", "aac", "-b:a", "96k"]
    if cues:
        srt = path.with_suffix(".srt")
        write_srt(srt, cues)
        args += ["-i", str(srt)]
        maps += ["-map", f"{n_in}:s", "-c:s", subtitle_codec or "mov_text"]
    args += ["-filter_complex", graph, *maps, "-c:v", vcodec, "-r", str(fps)]
    if vcodec == "libx264":  # gop: segmenting with -c copy cuts at keyframes
        args += ["-preset", "ultrafast", "-g", str(gop), "-pix_fmt", "yuv420p"]
    args += [str(path)]
    subprocess.run(args, check=True, timeout=300)
    return Film(path, fps, list(shots), list(cues or []))


def _ts(t: float, sep: str = ",") -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def write_srt(path: str | Path, cues: list[Cue], *, encoding: str = "utf-8") -> Path:
    path = Path(path)
    text = "\n".join(f"{i}\n{_ts(c.start_s)} --> {_ts(c.end_s)}\n{c.text}\n" for i, c in enumerate(cues, 1))
    path.write_text(text, encoding=encoding)
    return path


def write_vtt(path: str | Path, cues: list[Cue]) -> Path:
    path = Path(path)
    body = "\n".join(f"{_ts(c.start_s, '.')} --> {_ts(c.end_s, '.')}\n{c.text}\n" for c in cues)
    path.write_text("WEBVTT\n\n" + body, encoding="utf-8")
    return path
