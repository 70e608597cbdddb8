"""Encoders on a real Triton vs in process; timed text; the embed path end to end on generated films."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mediafm.dataset import Dataset
from mediafm.errors import MediaError, SubtitleError
from mediafm.media.embed import encode_shots_sync, fuse_encoded, iter_shot_media
from mediafm.media.shots import Shot
from mediafm.media.subtitles import Cue as SubCue
from mediafm.media.subtitles import align, container_subtitles, load_subtitles
from mediafm.media.synthfilm import Cue, make_film, write_srt, write_vtt
from mediafm.profiles import OFFLINE
from mediafm.schema import TitleMeta
from mediafm.triton_client import infer_sync

FPS = 24
SHOTS = [36, 30, 42, 30]  # 1.5 s, 1.25 s, 1.75 s, 1.25 s
CUES = [Cue(0.2, 1.3, "Hello, where is the station?"), Cue(3.0, 4.3, "The train leaves at noon.")]


def truth_shots(frames: list[int]) -> list[Shot]:
    edges = np.cumsum([0, *frames])
    return [Shot(i, a / FPS, b / FPS, int(a), int(b)) for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))]


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    return make_film(d / "film.mp4", shots=SHOTS, fps=FPS, size=(224, 128),
                     audio=["speech:hello where is the station", "tone:440", "noise", "speech:the train leaves at noon"],
                     cues=CUES, subtitle_codec="mov_text")


# --- timed text


def test_srt_vtt_and_container_subtitles_align_to_shots(film, tmp_path):
    shots = truth_shots(SHOTS)  # 0-1.5, 1.5-2.75, 2.75-4.5, 4.5-5.75
    srt = load_subtitles(write_srt(tmp_path / "a.srt", CUES))
    vtt = load_subtitles(write_vtt(tmp_path / "a.vtt", CUES))
    inner = container_subtitles(film.path)
    for cues in (srt, vtt, inner):
        assert [c.text for c in cues] == [c.text for c in CUES]
        texts = align(cues, shots)
        assert texts == ["Hello, where is the station?", "", "The train leaves at noon.", ""], texts
    # a cue spanning a cut belongs to both shots
    assert align([SubCue(1.0, 2.0, "across")], shots) == ["across", "across", "", ""]


def test_container_subtitles_come_from_one_track_and_a_cue_not_utf8_costs_only_itself(tmp_path):
    """A film with a French track and an English one marked default: before (2026-12-07), both were read and
    merged, so a shot's text was "Hello there Bonjour"; now the default track's alone. A track with one cue in
    cp1252 (an older rip): FFmpeg refuses that cue, and before, the refusal ended the read, so every cue after it
    was lost; now that cue alone is left out."""
    import subprocess

    from mediafm.media.synthfilm import ffmpeg

    film = make_film(tmp_path / "film.mp4", shots=[24, 24, 24], fps=FPS, size=(64, 48))
    write_srt(tmp_path / "eng.srt", [Cue(0.1, 0.9, "Hello there"), Cue(1.1, 1.9, "How are you"),
                                     Cue(2.1, 2.9, "Goodbye")])
    write_srt(tmp_path / "fre.srt", [Cue(0.1, 0.9, "Bonjour"), Cue(2.1, 2.9, "Au revoir")])
    (tmp_path / "old.srt").write_bytes("1\n00:00:00,100 --> 00:00:00,900\nHello there\n\n2\n00:00:01,100 --> "
                                       "00:00:01,900\nÇa va très bien\n\n3\n00:00:02,100 --> 00:00:02,900\n"
                                       "Goodbye\n\n".encode("cp1252"))
    subprocess.run([ffmpeg(), "-y", "-loglevel", "error", "-i", str(film.path), "-i", str(tmp_path / "fre.srt"),
                    "-i", str(tmp_path / "eng.srt"), "-map", "0:v", "-map", "1", "-map", "2", "-c:v", "copy",
                    "-c:s", "copy", "-metadata:s:s:0", "language=fre", "-metadata:s:s:1", "language=eng",
                    "-disposition:s:0", "0", "-disposition:s:1", "default", str(tmp_path / "two.mkv")], check=True)
    subprocess.run([ffmpeg(), "-y", "-loglevel", "error", "-i", str(film.path), "-i", str(tmp_path / "old.srt"),
                    "-map", "0:v", "-map", "1", "-c:v", "copy", "-c:s", "copy", str(tmp_path / "old.mkv")], check=True)
    assert [c.text for c in container_subtitles(tmp_path / "two.mkv")] == ["Hello there", "How are you", "Goodbye"]
    # the subtitle_languages setting: the first of them the film has, whatever its default (region ignored)
    assert [c.text for c in container_subtitles(tmp_path / "two.mkv", ("fre",))] == ["Bonjour", "Au revoir"]
    assert [c.text for c in container_subtitles(tmp_path / "two.mkv", ("ger", "FRE-ca", "eng"))] == [
        "Bonjour", "Au revoir"]
    assert [c.text for c in container_subtitles(tmp_path / "two.mkv", ("ger",))] == [
        "Hello there", "How are you", "Goodbye"], "none of them there: the default"
    assert [c.text for c in container_subtitles(tmp_path / "old.mkv")] == ["Hello there", "Goodbye"]
    # a stream this FFmpeg has no decoder for (TTML in MP4; DVB teletext in broadcast .ts): no text, no error
    subprocess.run([ffmpeg(), "-y", "-loglevel", "error", "-i", str(film.path), "-i", str(tmp_path / "eng.srt"),
                    "-map", "0:v", "-map", "1", "-c:v", "copy", "-c:s", "ttml", "-tag:s", "stpp",
                    str(tmp_path / "ttml.mp4")], check=True)
    assert container_subtitles(tmp_path / "ttml.mp4") == []


def test_broken_subtitles_and_encodings(tmp_path):
    bad = tmp_path / "bad.srt"
    bad.write_bytes(b"\x00\x01garbage that is not a subtitle file\n")
    with pytest.raises(SubtitleError):
        load_subtitles(bad)
    latin = tmp_path / "latin.srt"
    write_srt(latin, [Cue(0, 1, "Ça va très bien")], encoding="cp1252")
    with pytest.raises(SubtitleError, match="not UTF-8"):
        load_subtitles(latin)
    assert load_subtitles(latin, encoding="cp1252")[0].text == "Ça va très bien"
    with pytest.raises(SubtitleError, match="unknown text encoding"):
        load_subtitles(latin, encoding="klingon-8")
    (tmp_path / "empty.srt").write_text("")
    with pytest.raises(SubtitleError, match="empty"):
        load_subtitles(tmp_path / "empty.srt")


def test_shot_media_is_sampled_inside_each_shot(film):
    items = list(iter_shot_media(film.path, truth_shots(SHOTS), frames_per_shot=4, frame_size=64,
                                 audio_rate=16000, audio_window_s=1.0))
    assert [m.frames.shape for m in items] == [(4, 64, 64, 3)] * 4
    # consecutive shots are different sources: frames of a shot resemble each other more than the next shot's
    means = [m.frames.reshape(4, -1).astype(float).mean(0) for m in items]
    assert all(np.abs(means[i] - means[i + 1]).mean() > 5 for i in range(3))
    assert [len(m.audio) for m in items] == [16000] * 4  # central 1 s window of each shot
    assert items[1].audio.std() > 0.05  # the 440 Hz tone


def test_a_shot_beyond_its_media_is_refused(film):
    """Before: a shot at 1,000 s of this 5.75-s film was embedded from the film's last frame, without a word (a
    ShotRef whose times or media_start_s do not match its media)."""
    shots = truth_shots(SHOTS)
    kw = dict(frames_per_shot=4, frame_size=64, audio_rate=16000, audio_window_s=1.0)
    past = Shot(3, shots[3].start_s, shots[3].end_s + 0.5, 108, 132)  # another tool's longer last frame
    assert len(list(iter_shot_media(film.path, [*shots[:3], past], **kw))) == 4
    with pytest.raises(MediaError, match=r"film.mp4: shot 4 spans 1000.000-1001.000 s, but the video ends at "
                                         r"5.750 s; the shot's times \(or its media_start_s\) do not match"):
        list(iter_shot_media(film.path, [*shots, Shot(4, 1000.0, 1001.0, 24000, 24024)], **kw))
    with pytest.raises(MediaError, match=r"shot 3 spans 4.500-9.000 s, but the video ends at 5.750 s"):
        list(iter_shot_media(film.path, [*shots[:3], Shot(3, 4.5, 9.0, 108, 216)], **kw))


@pytest.mark.parametrize("n", [1, 3, 7])
def test_a_shot_shorter_than_its_samples_gets_only_its_own_frames(film, n):
    """A shot of n < frames_per_shot frames (TransNetV2 allows 1): each sample is the frame on screen at its
    time. Before, the nearest frame by timestamp: the later samples of the shot's last frame rounded forward into
    the next shot (half of a 1-frame shot's samples). The last n frames of shot 0, then shot 1 (another source).
    Its audio window is at least 0.2 s, centred (a shot under 0.1 s of window counted as having no audio)."""
    from mediafm.media.decode import iter_video_frames, to_array

    cut = SHOTS[0]
    short = Shot(0, (cut - n) / FPS, cut / FPS, cut - n, cut)
    (m,) = iter_shot_media(film.path, [short], frames_per_shot=8, frame_size=64, audio_rate=16000,
                           audio_window_s=1.0)
    decoded = [to_array(f, (64, 64), rot).astype(int) for i, _, f, rot in iter_video_frames(film.path)
               if cut - n <= i <= cut]
    own, after = decoded[:n], decoded[n]
    assert np.abs(after - own[-1]).mean() > 5, "the next shot's first frame differs (another source)"
    for sample in m.frames:
        assert min(np.abs(sample.astype(int) - f).mean() for f in own) < 0.5, "one of the shot's own frames"
    from mediafm.media.embed import MIN_AUDIO_S

    assert len(m.audio) >= MIN_AUDIO_S * 16000, "the sound around it (under 0.1 s it counted as no audio)"


def test_a_video_whose_last_frame_is_held_long_is_embedded_to_its_end(tmp_path):
    """Variable frame rate: 50 frames at 25 fps, then one frame at 2.0 s shown for 8 s (an end card, a slideshow,
    a GIF made MP4). The shot detector ends the video at the last frame's own duration (10 s); iter_shot_media
    ended it at the last frame plus the gap before it (2.04 s) and refused the detector's shot: "shot 0 spans
    0.000-10.000 s, but the video ends at 2.040 s", the whole title lost."""
    from fractions import Fraction

    import av

    from mediafm.media.shots import detect_shots

    path = tmp_path / "held.mp4"
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        st.codec_context.time_base = st.time_base = Fraction(1, 1000)
        packets = []
        for k, pts in enumerate([*range(0, 2000, 40), 2000]):
            img = np.full((48, 64, 3), 200 if k == 50 else (k * 5) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            packets += st.encode(frame)
        for packet in [*packets, *st.encode()]:
            if packet.pts == 2000:
                packet.duration = 8000  # the last frame is shown for 8 s
            out.mux(packet)
    shots = detect_shots(path, detector="content")
    assert shots[-1].end_s == pytest.approx(10.0, abs=0.05)
    got = list(iter_shot_media(path, shots, frames_per_shot=8, frame_size=32, audio_rate=16000, audio_window_s=1.0))
    assert [m.shot.index for m in got] == [s.index for s in shots]


def test_embed_finds_triton_down_before_decoding_the_film(film, tmp_path, monkeypatch):
    """Before: `mediafm embed` without Triton decoded and cut the whole film, then waited 120 s for Triton."""
    from conftest import free_port

    import mediafm.media.shots
    from mediafm.config import Settings, replace
    from mediafm.errors import TritonUnavailable
    from mediafm.media.embed import embed_title

    url = f"127.0.0.1:{free_port()}"  # nothing listens there, nor will the session hand it to a service
    cut = []
    monkeypatch.setattr(mediafm.media.shots, "detect_shots", lambda *a, **k: cut.append(a) or [])
    settings = replace(Settings(), triton_url=url, media_roots=(str(film.path.parent),))
    with pytest.raises(TritonUnavailable, match=f"Triton at {url} unavailable"):
        embed_title(film.path, out=tmp_path / "out", settings=settings, triton_wait_s=0.5)
    assert cut == [], "the film was cut before Triton was found down"


def _same_media_from_any_shot(path, shots, rate) -> list:
    """iter_shot_media over all shots, checked equal, shot by shot and bit for bit, to passes from each later shot."""
    whole = list(iter_shot_media(path, shots, frames_per_shot=4, frame_size=64, audio_rate=rate, audio_window_s=1.0))
    for start in range(1, len(shots)):
        part = list(iter_shot_media(path, shots[start:], frames_per_shot=4, frame_size=64, audio_rate=rate,
                                    audio_window_s=1.0))
        for a, b in zip(whole[start:], part, strict=True):
            assert a.shot == b.shot
            assert np.array_equal(a.frames, b.frames), f"shot {a.shot.index} from shot {start}: other frames"
            assert len(a.audio) == len(b.audio) == round(min(a.shot.end_s - a.shot.start_s, 1.0) * rate)  # central 1 s
            np.testing.assert_array_equal(a.audio, b.audio, err_msg=f"shot {a.shot.index} from shot {start}")
    return whole


@pytest.mark.parametrize("rate", [16000, 44100])  # resampled from the film's 44.1 kHz, and its own rate
def test_a_shots_media_does_not_depend_on_where_decoding_started(film, rate, monkeypatch):
    """The encode stage decodes a title in batches of shots, `mediafm embed` whole: a shot must get the same
    frames and the same audio samples either way. Before, audio decoding started before each batch's first
    shot, and both FFmpeg's streaming resampler and the AAC decoder (its overlap, the noise it substitutes)
    gave other samples, up to 0.02 apart, and so other audio embeddings."""
    from mediafm.media.embed import _AudioCursor

    monkeypatch.setattr(_AudioCursor, "PERIOD_S", 2.0)  # restarts inside this 5.75 s film: at 1 s and 3 s
    shots = truth_shots(SHOTS)
    whole = _same_media_from_any_shot(film.path, shots, rate)
    # and the samples are the sound: shot 1 is a 440 Hz tone at either rate, at the level the film has it
    spectrum = np.abs(np.fft.rfft(whole[1].audio))
    assert abs(np.argmax(spectrum) * rate / len(whole[1].audio) - 440) <= 1
    if rate != 44100:
        (native,) = list(iter_shot_media(film.path, shots[1:2], frames_per_shot=4, frame_size=64, audio_rate=44100,
                                         audio_window_s=1.0))
        assert np.isclose(whole[1].audio.std(), native.audio.std(), rtol=0.01)
    else:  # each shot's samples are those at its own times: one pass over the file, no seek, gives them there
        from mediafm.media.decode import iter_audio

        chunks = list(iter_audio(film.path))
        assert chunks[0][0] == 0 and {r for _, r, _ in chunks} == {44100}
        stream = np.concatenate([x for _, _, x in chunks])
        for m in whole:
            k0 = int(np.ceil((m.shot.start_s + m.shot.end_s - 1.0) / 2 * rate))
            lags = range(-40, 41)  # (the decoder restarted 1 s before: its samples differ a little, not in time)
            corr = [float(m.audio @ stream[k0 + lag: k0 + lag + len(m.audio)]) for lag in lags]
            assert lags[int(np.argmax(corr))] == 0, f"shot {m.shot.index}: its audio is {lags[int(np.argmax(corr))]} samples off"


def test_an_mpeg_ts_title_gives_a_shot_the_same_media_from_any_shot(tmp_path, monkeypatch):
    """MPEG-TS has no index: FFmpeg's seek searches timestamps and landed 1.6 s after the time asked, so a
    batch of shots got frames from the wrong time (other pixels in 4 of 8 batches here). Also: 48 kHz stereo
    audio (downmixed), silent for its first 0.5 s, and 2-s GOPs."""
    from mediafm.media.embed import _AudioCursor
    from mediafm.media.synthfilm import ffmpeg

    path = tmp_path / "title.ts"
    subprocess.run([ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25",
                    "-f", "lavfi", "-i", "anoisesrc=color=pink:sample_rate=48000:amplitude=0.5",
                    "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000",
                    "-filter_complex", "[1:a][2:a]amerge=inputs=2,adelay=500|500[a]", "-map", "0:v", "-map", "[a]",
                    "-t", "12", "-c:v", "libx264", "-g", "50", "-c:a", "aac", "-ac", "2", str(path)],
                   check=True, timeout=120)
    monkeypatch.setattr(_AudioCursor, "PERIOD_S", 2.0)
    # the last shot starts in the last GOP (from 10 s): a seek 1 s before it, at 10.2 s, lands past the last frame
    shots = [Shot(i, i * 1.2, (i + 1) * 1.2, i * 30, (i + 1) * 30) for i in range(9)] + [Shot(9, 11.2, 11.9, 280, 297)]
    whole = _same_media_from_any_shot(path, shots, 16000)
    # the frames are those of the shot's own times: testsrc2 moves, so each sampled frame differs from the next
    assert all(not np.array_equal(m.frames[0], m.frames[1]) for m in whole)
    # the sound starts 0.5 s in: silence before it in shot 0's central second (0.1-1.1 s), sound after
    assert np.abs(whole[0].audio[: int(0.35 * 16000)]).max() == 0 and whole[0].audio[int(0.45 * 16000):].std() > 0.05


@pytest.mark.parametrize(("rate_in", "rate"), [(44100, 16000), (48000, 16000), (8000, 16000), (22050, 44100)])
def test_resample_span_is_the_whole_signal_resampled_cut_to_the_span(rate_in, rate):
    """Any span, from samples starting anywhere before it, equals resampling the whole signal and cutting."""
    from scipy.signal import resample_poly

    from mediafm.media.decode import _resample_filter, resample_span

    g = np.gcd(rate, rate_in)
    x = np.random.default_rng(0).standard_normal(2 * rate_in).astype(np.float32)
    whole = resample_poly(x, rate // g, rate_in // g, window=_resample_filter(rate // g, rate_in // g))
    for k0, k1, first in [(rate // 2, rate, 0), (rate // 2, rate, rate_in // 3), (rate // 3 + 7, rate + 11, 1001),
                          (3 * rate // 2, 3 * rate, rate_in)]:  # the last runs past the signal's end: cut there
        got = resample_span(x[first:], first, rate_in, rate, k0, k1)
        want = whole[k0:k1]
        assert len(got) == len(want) and np.allclose(got, want, atol=1e-5), (k0, k1, first)
    # a span starting before the samples do (a stream whose audio starts late) is cut there too, as at its end
    got = resample_span(x[rate_in // 2:], rate_in // 2, rate_in, rate, 0, rate)
    assert len(got) == rate - rate // 2


# --- Triton


@pytest.mark.triton
def test_triton_encoders_equal_in_process(triton_stack):
    from mediafm.media.encoders import AisfxAudio, EfficientNetLite0Video, MiniLMText

    url = triton_stack.triton_http_url
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 2, 224, 224, 3), dtype=np.uint8)
    got = infer_sync(url, "video_efficientnet", {"FRAMES": frames}, ["EMBEDDING"])["EMBEDDING"]
    assert got.shape == (3, 1280)
    assert np.allclose(got, EfficientNetLite0Video().encode(frames), atol=1e-4)
    audio = rng.standard_normal((2, 44100)).astype(np.float32) * 0.1
    lengths = np.array([[44100], [30000]], np.int64)
    got = infer_sync(url, "audio_aisfx", {"AUDIO": audio, "LENGTH": lengths}, ["EMBEDDING"])["EMBEDDING"]
    assert got.shape == (2, 512) and np.allclose(got, AisfxAudio().encode(audio, lengths), atol=1e-4)
    texts = ["a man walks a dog", "stock prices fell sharply"]
    got = infer_sync(url, "text_minilm", {"TEXT": np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1)},
                     ["EMBEDDING"])["EMBEDDING"]
    assert got.shape == (2, 384) and np.allclose(got, MiniLMText().encode(texts), atol=1e-5)


@pytest.mark.triton
def test_encode_shots_missing_modalities_and_separation(triton_stack, film):
    shots = truth_shots(SHOTS)
    meta = TitleMeta("tt-film", synopsis="Two travellers ask for the train station.", tags=["travel"])
    msgs = encode_shots_sync(triton_stack.triton_http_url, film.path, shots, None, meta, "offline",
                             settings=triton_stack)
    assert [m.shot_index for m in msgs] == [0, 1, 2, 3] and all(m.n_shots == 4 for m in msgs)
    assert [m.text is not None for m in msgs] == [True, False, True, False]  # container subtitles
    assert all(m.video is not None and m.audio is not None for m in msgs)
    fused, present = fuse_encoded(msgs, OFFLINE.layout)
    assert np.allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-5)
    assert np.all(fused[[1, 3], 1280 + 512:] == 0)  # no timed text -> zeros in the text slice
    a = {i: np.frombuffer(m.audio, "<f4") for i, m in enumerate(msgs)}
    # speech vs speech closer than speech vs tone / noise (offline audio encoder separates them)
    assert a[0] @ a[3] > max(a[0] @ a[1], a[0] @ a[2], a[3] @ a[1], a[3] @ a[2])
    v = [np.frombuffer(m.video, "<f4") for m in msgs]
    sims = np.array([[x @ y for y in v] for x in v])
    assert np.all(np.diag(sims) > sims.max(axis=1, where=~np.eye(4, dtype=bool), initial=-1) + 0.01)
    # a film without an audio stream: audio is None for every shot
    silent = make_film(film.path.with_name("silent.mp4"), shots=[24, 24], fps=FPS)
    msgs = encode_shots_sync(triton_stack.triton_http_url, silent.path, truth_shots([24, 24]), [], meta,
                             "offline", settings=triton_stack)
    assert all(m.audio is None and m.text is None and m.video is not None for m in msgs)


@pytest.mark.triton
@pytest.mark.slow
def test_cli_embed_writes_v1_dataset(triton_stack, film, tmp_path):
    from tests.conftest import settings_env

    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"title_id": "tt42", "synopsis": "Travellers at a station", "tags": ["drama"]}))
    out = tmp_path / "ds"
    env = settings_env(triton_stack)
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", "embed", str(film.path), "--meta", str(meta),
                        "--detector", "content", "--out", str(out)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    ds = Dataset(out)
    assert ds.meta.fused_dim == 1280 + 512 + 384 and ds.meta.title_dim == 384
    (title,) = list(ds.iter_titles())
    assert title.info.title_id == "tt42" and len(title.fused) >= 3
    assert np.allclose(np.linalg.norm(title.fused, axis=1), 1, atol=1e-5)
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", "embed", str(tmp_path / "nope.mp4"), "--out",
                        str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
