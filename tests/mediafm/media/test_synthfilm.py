"""The generated films the tests and benchmarks stand on: long ones are made in parts and joined."""

import av

from mediafm.media.subtitles import container_subtitles
from mediafm.media.synthfilm import join_films, make_film, make_long_film


def _streams(path):
    """(video frames, audio seconds) of a film, decoded with PyAV."""
    with av.open(str(path)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    with av.open(str(path)) as c:
        audio = sum(f.samples / f.sample_rate for f in c.decode(audio=0)) if c.streams.audio else 0.0
    return frames, audio


def test_films_joined_keep_every_frame_and_their_sound_in_order(tmp_path):
    """Parts with audio, one in a folder whose name has a quote (the concat demuxer's listing quotes it), joined
    without re-encoding: every frame of each part, the sound of all of them, and the listing cleaned up."""
    odd = tmp_path / "it's here"
    odd.mkdir()
    a = make_film(tmp_path / "a.mp4", shots=[10, 14], fps=24, audio=["tone:440", "noise"]).path
    b = make_film(odd / "b.mp4", shots=[12, 8, 6], fps=24, audio=["tone:330", "silence", "tone:220"],
                  first_source=2).path
    out = join_films([a, b], tmp_path / "joined.mp4")
    frames, audio = _streams(out)
    assert frames == 10 + 14 + 12 + 8 + 6
    assert abs(audio - 50 / 24) < 0.1, f"{audio:.3f} s of sound for 50 frames at 24 fps"
    assert not list(tmp_path.glob("*.parts.txt"))


def test_a_long_film_made_in_parts_has_its_length_and_every_cue(tmp_path):
    """make_long_film: shots made a few at a time, joined, the cues muxed as one subtitle stream that the
    pipeline's reader (container_subtitles) reads back at their times."""
    film = make_long_film(tmp_path / "long.mp4", duration_s=12, fps=12, size=(160, 96), shot_s=(1.0, 2.0),
                          chunk_shots=3)
    frames, audio = _streams(film.path)
    assert frames == sum(film.shot_frames) == 12 * 12
    assert abs(audio - 12) < 0.2
    read = container_subtitles(film.path)
    assert [c.text for c in read] == [c.text for c in film.cues] and film.cues
    assert all(abs(r.start_s - c.start_s) < 0.05 for r, c in zip(read, film.cues, strict=True))


def test_a_film_with_speech_leaves_only_itself_behind(tmp_path):
    """The espeak-ng WAVs are ffmpeg's inputs, not outputs: a 69-minute event (bench/live.py) left 272 of them
    beside its film. The speech is in the film (its audio runs the film's length); the WAVs are gone."""
    film = make_film(tmp_path / "s.mp4", shots=[24, 24, 24], fps=24, audio=["speech:hello there", "tone:440",
                                                                          "speech:the train leaves at noon"])
    frames, audio = _streams(film.path)
    assert frames == 72 and abs(audio - 3.0) < 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mp4"]
