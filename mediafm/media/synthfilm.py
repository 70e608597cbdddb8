"""Generated test films with known ground truth, made with the ffmpeg CLI.

Used by the tests and by bench/shots.py (never by the pipeline): each film is
a run of visually distinct lavfi sources joined by hard cuts at known frame
indices, with optional audio (tones, noise or espeak-ng speech per shot) and
optional soft subtitles (mov_text in MP4, SRT in MKV), and optional dissolves
(cross-fades of a known number of frames) instead of hard cuts.

    film = make_film(tmp / "a.mp4", shots=[48, 30, 60], fps=24)
    film.cuts   # [48, 78]: first frame of every shot after the first
    film = make_film(tmp / "b.mp4", shots=[48, 30, 60], fps=24, dissolves=[12, 0])
    film.spans  # [(42, 54), (78, 78)]: the blended frames of each transition (empty for a hard cut)
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
    # gradients' two colours given: left out, FFmpeg draws them from its own random seed whatever `seed`
    # says, and a film with a gradients shot would differ from run to run
    "gradients=size={w}x{h}:rate={fps}:speed=0.02:seed=1:c0=0x3060c0:c1=0xe0b040",
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
    dissolves: list[int] = field(default_factory=list)
    """Per cut, the frames of its cross-fade (0 = a hard cut); empty = all hard cuts."""

    @property
    def cuts(self) -> list[int]:
        """First frame index of every shot after the first (the ground truth)."""
        out, acc = [], 0
        for n in self.shot_frames[:-1]:
            acc += n
            out.append(acc)
        return out

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Per cut, the frames [first, end) that blend both shots: (c - d // 2, c - d // 2 + d) for a
        d-frame dissolve centred on cut c, (c, c) for a hard cut."""
        ds = self.dissolves or [0] * len(self.cuts)
        return [(c - d // 2, c - d // 2 + d) for c, d in zip(self.cuts, ds, strict=True)]

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
              first_source: int = 0, vcodec: str = "libx264", gop: int = 250,
              dissolves: list[int] | None = None, preset: str = "ultrafast", sources: list[str] | None = None) -> Film:
    """Write a film of len(shots) shots (frame counts) with hard cuts between them.

    dissolves: per cut (len(shots) - 1 entries), the length in frames of a cross-fade centred on it
    (frames c - d//2 .. c - d//2 + d - 1 blend the two shots, the incoming shot's weight rising
    linearly as (k + 1) / (d + 1)); 0 = a hard cut. The film keeps sum(shots) frames and its cuts.
    preset: x264's preset (ultrafast has no B-frames; e.g. "veryfast" has them).
    sources: the lavfi sources to cycle through (default SOURCES).
    audio: per shot, "tone:<Hz>", "noise", "silence" or "speech:<text>"; None = no audio stream.
    cues: timed text muxed as a soft subtitle stream (subtitle_codec "mov_text" for MP4, "srt" for MKV).
    """
    path = Path(path)
    w, h = size
    args: list[str] = [ffmpeg(), "-y", "-loglevel", "error"]
    parts = []
    for i, n in enumerate(shots):
        srcs = sources or SOURCES
        src = srcs[(first_source + i) % len(srcs)].format(w=w, h=h, fps=fps)
        args += ["-f", "lavfi", "-i", src]
        hue = f",hue=h={(i // len(srcs)) * 67}" if i >= len(srcs) else ""
        parts.append(f"[{i}:v]trim=end_frame={n},setpts=PTS-STARTPTS,format=yuv420p{hue}[v{i}]")
    graph = ";".join(parts) + ";" + "".join(f"[v{i}]" for i in range(len(shots))) + f"concat=n={len(shots)}:v=1:a=0[v]"
    if dissolves is not None and any(dissolves):
        graph = _dissolve_graph(shots, dissolves, fps, len(sources or SOURCES))  # input i: shot i's source
    maps = ["-map", "[v]"]
    n_in = len(shots)
    wavs: list[Path] = []  # ffmpeg's inputs only: removed once it has run
    if audio is not None:
        assert len(audio) == len(shots), f"audio has {len(audio)} entries for {len(shots)} shots"
        aparts = []
        for i, (spec, n) in enumerate(zip(audio, shots, strict=True)):
            dur = n / fps
            if spec.startswith("speech:"):
                wavs.append(speech_wav(spec[7:], path.with_name(f"{path.stem}.speech{i}.wav")))
                args += ["-i", str(wavs[-1])]
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
        args += ["-preset", preset, "-g", str(gop), "-pix_fmt", "yuv420p"]
    args += [str(path)]
    try:
        subprocess.run(args, check=True, timeout=300)
    finally:
        for wav in wavs:
            wav.unlink(missing_ok=True)
    return Film(path, fps, list(shots), list(cues or []), list(dissolves or []))


def _dissolve_graph(shots: list[int], dissolves: list[int], fps: float, n_sources: int) -> str:
    """The video filter graph of make_film with cross-fades: shot i's source (input i) runs over the film frames
    [a_i, b_i) (its own frames plus its halves of the fades around it); each fade blends the tail of
    one source with the head of the next, frame-exactly (the frame number from blend's T: its N
    starts at 1 in some FFmpeg versions)."""
    assert len(dissolves) == len(shots) - 1, f"dissolves has {len(dissolves)} entries for {len(shots) - 1} cuts"
    cuts, acc = [], 0
    for n in shots[:-1]:
        acc += n
        cuts.append(acc)
    total = acc + shots[-1]
    starts = [0] + [c - d // 2 for c, d in zip(cuts, dissolves, strict=True)]
    ends = [c - d // 2 + d for c, d in zip(cuts, dissolves, strict=True)] + [total]
    parts, chain = [], []
    for i in range(len(shots)):
        d_in = dissolves[i - 1] if i else 0
        d_out = dissolves[i] if i < len(dissolves) else 0
        length = ends[i] - starts[i]
        assert length - d_in - d_out >= 1, f"shot {i} is too short for its dissolves"
        hue = f",hue=h={(i // n_sources) * 67}" if i >= n_sources else ""
        outs = ["mid"] + (["in"] if d_in else []) + (["out"] if d_out else [])
        parts.append(f"[{i}:v]trim=end_frame={length},setpts=PTS-STARTPTS,format=yuv420p{hue},"
                     f"split={len(outs)}" + "".join(f"[s{i}{o}]" for o in outs))
        parts.append(f"[s{i}mid]trim=start_frame={d_in}:end_frame={length - d_out},setpts=PTS-STARTPTS[m{i}]")
        if d_in:
            parts.append(f"[s{i}in]trim=end_frame={d_in},setpts=PTS-STARTPTS[h{i}]")
        if d_out:
            parts.append(f"[s{i}out]trim=start_frame={length - d_out},setpts=PTS-STARTPTS[t{i}]")
        chain.append(f"[m{i}]")
        if d_out:
            wt = f"((floor(T*{fps}+0.5)+1)/{d_out + 1})"
            parts.append(f"[t{i}][h{i + 1}]blend=all_expr='A*(1-{wt})+B*{wt}'[x{i}]")
            chain.append(f"[x{i}]")
    return ";".join(parts) + ";" + "".join(chain) + f"concat=n={len(chain)}:v=1:a=0[v]"


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


SENTENCES = [
    "Where is the train station?", "The train leaves at noon.", "I have not seen her since the winter.",
    "Keep the lights off until they are gone.", "We should have taken the other road.",
    "Nobody told me the bridge was closed.", "Call me when you reach the harbour.",
    "The storm will pass before morning.", "Did you hear that noise upstairs?", "This is the last letter she wrote.",
]


def make_long_film(path: str | Path, *, duration_s: float, fps: float = 25, size: tuple[int, int] = (1280, 720),
                   shot_s: tuple[float, float] = (1.2, 4.8), speech_every: int = 3, seed: int = 0,
                   chunk_shots: int = 10, preset: str = "ultrafast") -> Film:
    """A long film (benchmarks): shots of random length in `shot_s` seconds up to `duration_s`, hard cuts,
    audio in every shot (every `speech_every`-th shot espeak-ng speech, the others tones, noise or silence,
    in turn), and one soft subtitle cue (mov_text) over every spoken shot, saying what is spoken.

    Made `chunk_shots` shots at a time with make_film, joined without re-encoding (concat demuxer),
    subtitles muxed last: the filter graphs stay small whatever the length. 10 minutes at 1280x720
    (~200 shots) take a few minutes of CPU.
    """
    import numpy as np

    path = Path(path)
    rng = np.random.default_rng(seed)
    frames: list[int] = []
    while sum(frames) < duration_s * fps:
        frames.append(int(round(rng.uniform(*shot_s) * fps)))
    frames[-1] -= sum(frames) - int(round(duration_s * fps))
    if frames[-1] < fps * shot_s[0] / 2 and len(frames) > 1:  # no sliver of a last shot
        frames[-2] += frames.pop()
    others = ["tone:{}", "noise", "silence"]
    audio, cues, t = [], [], 0.0
    for i, n in enumerate(frames):
        if i % speech_every == 0:
            text = SENTENCES[(i // speech_every) % len(SENTENCES)]
            audio.append(f"speech:{text}")
            cues.append(Cue(round(t + 0.1, 3), round(t + n / fps - 0.1, 3), text))
        else:
            audio.append(others[i % len(others)].format(220 + 55 * (i % 12)))
        t += n / fps
    work = path.with_name(path.stem + ".parts")
    work.mkdir(parents=True, exist_ok=True)
    parts = []
    for k in range(0, len(frames), chunk_shots):
        part = work / f"part{k // chunk_shots:04d}.mp4"
        make_film(part, shots=frames[k:k + chunk_shots], fps=fps, size=size, audio=audio[k:k + chunk_shots],
                  first_source=k // chunk_shots, preset=preset)
        parts.append(part)
    join_films(parts, path, srt=write_srt(work / "cues.srt", cues))
    shutil.rmtree(work, ignore_errors=True)
    return Film(path, fps, frames, cues)


def join_films(parts: list[Path], path: str | Path, *, srt: Path | None = None) -> Path:
    """Films of the same codecs and sizes (make_film's parts) joined one after another into `path` without
    re-encoding, by ffmpeg's concat demuxer: a long film made in parts keeps each filter graph small (one make_film
    call of about a thousand shots passes the kernel's limit on one argument). `srt`: cues muxed as a mov_text
    subtitle stream."""
    path = Path(path)
    listing = path.with_name(f"{path.stem}.parts.txt")
    # the demuxer's own quoting: a ' inside a quoted name is written '\''
    listing.write_text("".join("file '" + str(Path(q).resolve()).replace("'", "'\\''") + "'\n" for q in parts))
    args = [ffmpeg(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", str(listing)]
    if srt is not None:
        args += ["-i", str(srt), "-map", "0:v", "-map", "0:a", "-map", "1:s", "-c", "copy", "-c:s", "mov_text"]
    else:
        args += ["-c", "copy"]
    try:
        subprocess.run([*args, str(path)], check=True, timeout=600)
    finally:
        listing.unlink(missing_ok=True)
    return path
