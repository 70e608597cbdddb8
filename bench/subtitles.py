"""Peak memory and time of `load_subtitles` on hostile subtitle files just under the size limit.

A subtitle file may be up to MAX_SUBTITLE_BYTES (64 MB). What a reader holds depends on the file's shape as
well as its size: a line of 60 MB, a cue of a million short lines, millions of lines, 100,000 cues. Each shape
is written once (--size-mb, default 63) and read in a fresh process, which resets its peak RSS right before
the call (/proc/self/clear_refs), so the figure is what the call itself added to the process:

    .venv/bin/python bench/subtitles.py [--size-mb 63] [--shapes ascii_lines.srt vtt_lines.vtt]

Prints, per shape, the file's size, the peak RSS the call added (MiB), that peak over the file's size,
the call's seconds, and what it gave (cues, or the refusal's end). A worker reads one title's file at a time,
so the largest peak is what a hostile message can add to a worker.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

MB = 1024 * 1024
SRT = b"1\n00:00:01,000 --> 00:00:02,000\n"
VTT = b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n"
ASS = (b"[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize\nStyle: Default,Arial,20\n\n"
       b"[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
       b"Dialogue: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,hello\nDialogue: 0,0:00:03.00,0:00:04.00,Default,,0,0,0,,")
EMOJI = "\U0001F600"


def shapes(n: int) -> dict[str, Callable[[], bytes]]:
    """Each shape at about n bytes (cut at a character boundary), built when called."""
    return {
        "ascii_one_cue.srt": lambda: SRT + b"a" * n,  # one line
        "emoji_one_cue.srt": lambda: SRT + (EMOJI * (n // 4)).encode(),  # one line, four bytes a character
        "emoji_lines.srt": lambda: SRT + (EMOJI * 20 + "\n").encode() * (n // 81),  # one cue of 81-byte lines
        "ascii_lines.srt": lambda: SRT + b"ab\n" * (n // 3),  # one cue of 3-byte lines (22 million at 63 MB)
        "lines_at_limit.srt": lambda: SRT + (b"x" * 60 + b"\n") * min(n // 61, 990_000),  # one cue, just under the line limit
        "many_cues.srt": lambda: b"".join(b"%d\n00:00:01,000 --> 00:00:02,000\n" % i + (EMOJI * 150).encode() + b"\n\n"
                                  for i in range(min(n // 640, 99_000))),  # just under MAX_CUES
        "vtt_lines.vtt": lambda: VTT + b"ab\n" * (n // 3),
        "vtt_lines_at_limit.vtt": lambda: VTT + (b"x" * 60 + b"\n") * min(n // 61, 990_000),
        "vtt_one_line.vtt": lambda: VTT + b"a" * n,
        "ass_one_line.ass": lambda: ASS + (EMOJI * (n // 4)).encode() + b"\n",
    }


CALL = """
import sys, time
from mediafm.errors import SubtitleError
from mediafm.media.subtitles import load_subtitles

def kib(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])

open("/proc/self/clear_refs", "w").write("5")  # the peak RSS starts again from here
start, t = kib("VmRSS"), time.perf_counter()
try:
    out = f"{len(load_subtitles(sys.argv[1]))} cue(s)"
except SubtitleError as e:
    out = "refused: ..." + str(e)[-70:]
print((kib("VmHWM") - start) / 1024, time.perf_counter() - t, out, sep="\\t")
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=63.0, help="each file's size (the limit is 64 MB)")
    ap.add_argument("--shapes", nargs="*", help="only these shapes (default: all)")
    args = ap.parse_args(argv)
    n = int(args.size_mb * MB)
    print(f"{'shape':24s} {'MB':>6s} {'peak MiB':>9s} {'x size':>7s} {'s':>6s}  result")
    with tempfile.TemporaryDirectory(prefix="mediafm-bench-subtitles-") as tmp:
        for name, make in shapes(n).items():
            if args.shapes and name not in args.shapes:
                continue
            path = Path(tmp) / name
            path.write_bytes(make()[:n].decode("utf-8", "ignore").encode())
            r = subprocess.run([sys.executable, "-c", CALL, str(path)], capture_output=True, text=True)
            if r.returncode:
                print(f"{name:24s} failed: {r.stderr.strip()[-300:]}")
                continue
            peak, secs, out = r.stdout.strip().split("\t")
            size = path.stat().st_size / MB
            print(f"{name:24s} {size:6.1f} {float(peak):9.0f} {float(peak) / size:7.1f} {float(secs):6.1f}  {out}",
                  flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
