"""Films we did not make: odd streams, damaged files, joined recordings. Each file is made here by the ffmpeg
CLI the way a user's tools make it; each test says what went wrong before."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from mediafm.errors import MediaURIError, NoVideoError
from mediafm.media.decode import has_audio, iter_audio, probe
from mediafm.media.subtitles import container_subtitles
from mediafm.media.synthfilm import ffmpeg


def run_ffmpeg(*args) -> None:
    subprocess.run([ffmpeg(), "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """8 s of 160x90 test pattern at 25 fps with a 440 Hz tone (AAC, 44.1 kHz), and a 64x64 cover picture."""
    d = tmp_path_factory.mktemp("hostile")
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x90:r=25:d=8", "-f", "lavfi", "-i", "sine=f=440:r=44100:d=8",
               "-pix_fmt", "yuv420p", "-c:v", "libx264", "-g", "50", "-c:a", "aac", "-shortest", d / "base.mp4")
    run_ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x64:d=1", "-frames:v", "1", d / "cover.png")
    return d


def test_an_audio_file_with_cover_art_is_not_a_film(base):
    """Before: the cover picture was taken for the video: one shot of 0.04 s, its audio too short to count."""
    out = base / "song.m4a"
    run_ffmpeg("-i", base / "base.mp4", "-i", base / "cover.png", "-map", "0:a", "-map", "1:v", "-c:a", "copy",
               "-c:v", "png", "-disposition:v:0", "attached_pic", out)
    with pytest.raises(NoVideoError, match=r"no video stream .* \(its picture is cover art, not video\)"):
        probe(out)


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_picture_before_the_film_is_passed_over(base, container):
    """mp4 marks the picture an attached picture; Matroska keeps it as a video stream, the film marked
    default. Before: the 64x64 picture was taken for the film."""
    out = base / f"cover_first.{container}"
    run_ffmpeg("-i", base / "base.mp4", "-i", base / "cover.png", "-map", "1:v", "-map", "0:v", "-map", "0:a",
               "-c", "copy", "-c:v:0", "png", "-disposition:v:0", "attached_pic", "-disposition:v:1", "default", out)
    info = probe(out)
    assert (info.width, info.height, info.has_audio) == (160, 90, True)


def test_the_default_audio_stream_is_the_one_heard(base):
    """A silent commentary track first, the film's sound second and marked default (as a player picks it).
    Before: the first stream was read, and every shot's audio was silence."""
    out = base / "two_tracks.mkv"
    run_ffmpeg("-i", base / "base.mp4", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-map", "0:v",
               "-map", "1:a", "-map", "0:a", "-c:v", "copy", "-c:a", "aac", "-shortest", "-disposition:a:0", "0",
               "-disposition:a:1", "default", out)
    x = np.concatenate([chunk for _, _, chunk in iter_audio(out)])
    assert len(x) > 7 * 44100 and np.sqrt(np.mean(x[44100:] ** 2)) > 0.05  # the tone: 0.088; silence: 0


def test_other_readers_of_a_file_keep_the_decoders_guards(base, tmp_path):
    """A playlist naming a file elsewhere: the audio check and the subtitle reader opened it with FFmpeg's
    defaults, and so read the file it names."""
    (tmp_path / "elsewhere").mkdir()
    run_ffmpeg("-i", base / "base.mp4", "-c", "copy", "-f", "mpegts", tmp_path / "elsewhere" / "secret.ts")
    pl = tmp_path / "film.mp4"
    pl.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:8.0,\n{tmp_path / 'elsewhere' / 'secret.ts'}\n"
                  "#EXT-X-ENDLIST\n")
    with pytest.raises(MediaURIError, match="a playlist or concat script, not media"):
        has_audio(pl)
    assert container_subtitles(pl) == []
