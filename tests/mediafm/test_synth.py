"""The stand-in corpus has the latent structure its docstring documents (mediafm/synth.py)."""

import numpy as np
import pytest

from mediafm.profiles import PRODUCTION
from mediafm.synth import N_AD, World, _unit, clips_for_title, generate_title


@pytest.fixture(scope="module")
def titles():
    world = World(PRODUCTION.layout, seed=0)
    rng = np.random.default_rng(0)
    return world, [generate_title(world, f"t{i}", 120, rng) for i in range(6)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _unit(a) @ _unit(b).T


def test_a_shot_alone_is_weak_evidence_its_scene_is_strong(titles):
    world, ts = titles
    t = ts[0]
    # Audio carries the scene's tone: as a minor part of one shot (the rest is location, voice
    # and noise), more clearly in the mean of its scene.
    tone = world.tones["audio"][t.scene_tone[0]]
    one = float(_cos(t.audio[0], tone))
    scene = float(_cos(t.audio[t.scene == 0].mean(0), tone))
    assert 0.1 < one < 0.5, one
    assert scene > one + 0.1, (one, scene)


def test_shot_reverse_shot_makes_shots_two_apart_closer_than_neighbours(titles):
    _, ts = titles
    near, two = [], []
    for t in ts:
        v = _unit(t.video)
        for k in range(len(v) - 2):
            if t.scene[k] == t.scene[k + 2]:
                near.append(v[k] @ v[k + 1])
                two.append(v[k] @ v[k + 2])
    assert np.mean(two) > np.mean(near) + 0.05, (np.mean(near), np.mean(two))


def test_casts_and_locations_belong_to_their_title(titles):
    """No face is shared across titles: a model must read a title's cast from its context."""
    _, (a, b, *_) = titles
    v = _unit(a.video)
    same_face = [v[k] @ v[k + 2] for k in range(len(v) - 2) if a.scene[k] == a.scene[k + 2]]
    across = _cos(a.video, b.video)
    assert np.mean(same_face) > across.mean() + 0.2
    assert abs(across.mean()) < 0.05


def test_shots_without_dialogue_have_no_text(titles):
    _, ts = titles
    for t in ts:
        silent = ~np.array(t.scene_dialogue)[t.scene]
        assert silent.any() and (~silent).any()
        assert not t.present[silent, 2].any()
        assert np.all(t.text[silent] == 0)
        assert np.allclose(np.linalg.norm(t.text[~silent], axis=1), 1, atol=1e-5)


def test_labels_depend_on_context(titles):
    _, ts = titles
    rng = np.random.default_rng(1)
    beyond = 0
    for t in ts:
        rows = clips_for_title(t, rng)
        n = len(t.scene)
        for r in rows:
            assert 0 <= r["first_shot"] <= r["last_shot"] < n
            own = set(t.scene[r["first_shot"] : r["last_shot"] + 1].tolist())
            assert set(r["tones"]) == {t.scene_tone[s] for s in own}
            assert r["genres"] == t.genres, "genre comes from the parent title"
            own_ads = {t.scene_setting[s] % N_AD for s in own}
            assert own_ads <= set(r["ad_labels"])
            beyond += bool(set(r["ad_labels"]) - own_ads)  # from the scene before or after the clip
        worthy = [r["clip_worthy"] for r in rows if r["clip_worthy"] is not None]
        assert sum(worthy) * 3 == len(worthy) - sum(worthy), "1 positive : 3 negatives"
    assert beyond > 0, "some ad labels come only from the surrounding scenes"


def test_the_arc_peaks_late_and_swells_the_music(titles):
    world, ts = titles
    for t in ts:
        peak = int(np.argmax(t.arc))
        assert 0.5 * len(t.arc) < peak < len(t.arc)
        loud = t.audio[t.arc > 0.8] @ world.intensity
        quiet = t.audio[t.arc < 0.2] @ world.intensity
        assert loud.mean() > quiet.mean() + 0.1


def test_a_genre_shows_in_the_tones_of_its_scenes(titles):
    """Each genre favours a few tones (horror: creepy, scary): the tones of a title's scenes point to its genre."""
    world, ts = titles
    top20 = np.sort(world.tone_palette, axis=1)[:, ::-1][:, :20].sum(1)
    assert top20.min() > 0.6, top20  # a sparse palette, not tones spread over all 100
    right = 0
    for t in ts:
        loglik = np.log(world.tone_palette[:, t.scene_tone]).sum(1)  # (genres,): how each genre explains the tones
        right += int(np.argmax(loglik)) in t.genres
    assert right >= len(ts) - 1, right


def test_world_knobs_change_what_they_say():
    """Issue 17's grid: scene lengths, dialogue rate, locations and where tone shows are knobs."""
    from mediafm.fusion import Layout

    L = Layout("t", video=64, audio=64, text=64, title=32)
    world = World(L, seed=0, scene_shots=(2, 4), dialogue_rate=0.1, locations_per_title=(12, 12), tone_text=2.0,
                  tone_audio=0.0)
    rng = np.random.default_rng(0)
    ts = [generate_title(world, f"t{i}", 150, rng) for i in range(4)]
    for t in ts:
        lengths = np.bincount(t.scene)
        assert lengths[:-1].min() >= 2 and lengths.max() <= 4, lengths  # the last scene may be cut by the title's end
    talk = np.mean([d for t in ts for d in t.scene_dialogue])
    assert talk < 0.25, talk
    # tone shows in what is said, no longer in the sound
    with_text = [(t, k) for t in ts for k in range(len(t.scene)) if t.present[k, 2]]
    text_cos = np.mean([_cos(t.text[k], world.tones["text"][t.scene_tone[t.scene[k]]]) for t, k in with_text])
    audio_cos = np.mean([_cos(t.audio[k], world.tones["audio"][t.scene_tone[t.scene[k]]]) for t, k in with_text])
    assert text_cos > 0.4 and abs(audio_cos) < 0.15, (text_cos, audio_cos)


def test_default_knobs_leave_the_standin_corpus_as_it_was():
    from mediafm.fusion import Layout

    L = Layout("t", video=16, audio=16, text=16, title=16)
    a = generate_title(World(L, seed=2), "t", 60, np.random.default_rng(4))
    b = generate_title(World(L, seed=2, tone_video=0.5, tone_audio=1.0, tone_text=0.0, setting_video=1.0,
                             scene_shots=(6, 24), locations_per_title=(3, 8), dialogue_rate=0.6),
                       "t", 60, np.random.default_rng(4))
    assert np.array_equal(a.video, b.video) and np.array_equal(a.audio, b.audio) and np.array_equal(a.text, b.text)
    # fingerprint taken with mediafm/synth.py as it was before the knobs existed: the same seed draws the same title
    assert a.scene_tone == [45, 91, 60, 21]
    assert [float(a.video.sum()), float(a.audio.sum()), float(a.text.sum())] == pytest.approx(
        [4.563112258911133, -15.911985397338867, 18.57564926147461], rel=1e-5)


@pytest.mark.parametrize("knobs, match", [({"scene_shots": (5, 2)}, "scene_shots"),
                                          ({"dialogue_rate": 1.5}, "dialogue_rate"),
                                          ({"tone_video": -1.0}, "tone_video")])
def test_bad_world_knobs_are_named(knobs, match):
    from mediafm.fusion import Layout

    with pytest.raises(ValueError, match=match):
        World(Layout("t", video=8, audio=8, text=8, title=8), **knobs)


def test_write_corpus_rejects_unknown_world_knobs(tmp_path):
    from mediafm.errors import ConfigError
    from mediafm.fusion import Layout
    from mediafm.synth import write_corpus

    with pytest.raises(ConfigError, match=r"\['scenes'\] are not World knobs"):
        write_corpus(tmp_path / "d", n_titles=2, layout=Layout("t", video=8, audio=8, text=8, title=8),
                     world={"scenes": (2, 3)})


def test_storylines_cross_cut_with_their_own_cast_locations_and_arc():
    """World.storylines: scenes take turns between the stories, and each story keeps its own people and places."""
    from mediafm.fusion import Layout

    L = Layout("t", video=64, audio=64, text=64, title=32)
    world = World(L, seed=0, storylines=2)
    rng = np.random.default_rng(0)
    ts = [generate_title(world, f"t{i}", 200, rng) for i in range(4)]
    peaks_apart = 0
    pairs: dict[str, tuple[list, list]] = {"cast": ([], []), "locations": ([], [])}
    for t in ts:
        assert t.scene_storyline == [s % 2 for s in range(len(t.scene_storyline))]
        line = np.array(t.scene_storyline)[t.scene]
        n_scenes = len(t.scene_storyline)
        # each story has its own cast: what is said (timed text: the speaker and noise) is closer within a story
        # than across the two; and its own locations: the sound of scenes without dialogue (location, tone, arc)
        for what, vecs, scenes in (("cast", t.text, [s for s in range(n_scenes) if t.scene_dialogue[s]]),
                                   ("locations", t.audio, [s for s in range(n_scenes) if not t.scene_dialogue[s]])):
            m = {s: _unit(vecs[t.scene == s].mean(0)) for s in scenes}
            for a in scenes:
                for b in scenes:
                    if a < b:
                        pairs[what][t.scene_storyline[a] != t.scene_storyline[b]].append(m[a] @ m[b])
        # each story has its own arc: a shot's intensity is its story's, and the music follows it
        for j in (0, 1):
            assert t.arc[line == j].max() > 0.5  # each story reaches its climax within the title
        peaks_apart += abs(int(np.argmax(np.where(line == 0, t.arc, -1))) - int(np.argmax(np.where(line == 1, t.arc, -1)))) > 10
        loud = t.audio[t.arc > 0.8] @ world.intensity
        quiet = t.audio[t.arc < 0.2] @ world.intensity
        assert loud.mean() > quiet.mean() + 0.1
    assert peaks_apart >= 2, "the stories' climaxes fall at different times"
    for what, (same, other) in pairs.items():
        assert len(same) > 10 and len(other) > 10, (what, len(same), len(other))
        assert np.mean(same) > np.mean(other) + 0.1, (what, np.mean(same), np.mean(other))


def test_ads_from_the_next_scene_only():
    from mediafm.fusion import Layout

    L = Layout("t", video=16, audio=16, text=16, title=16)
    world = World(L, seed=0, ad_scenes="next")
    rng = np.random.default_rng(0)
    checked = 0
    for i in range(4):
        t = generate_title(world, f"t{i}", 120, rng)
        for r in clips_for_title(t, rng):
            last = int(t.scene[r["last_shot"]])
            after = min(last + 1, int(t.scene.max()))
            assert r["ad_labels"] == [t.scene_setting[after] % N_AD]
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("knobs, match", [({"storylines": 4}, "storylines"), ({"storylines": 0}, "storylines"),
                                          ({"ad_scenes": "before"}, "ad_scenes")])
def test_bad_storyline_and_ad_knobs_are_named(knobs, match):
    from mediafm.fusion import Layout

    with pytest.raises(ValueError, match=match):
        World(Layout("t", video=8, audio=8, text=8, title=8), **knobs)


def test_synth_corpus_command_takes_world_knobs(tmp_path):
    """`mediafm synth corpus --world KNOB=VALUE`: a world of the grid from the command line; a bad knob is named."""
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    base = [sys.executable, "-m", "mediafm.cli", "synth", "corpus", "--titles", "6", "--dims", "16,16,16,16",
            "--shots", "60,80"]
    r = subprocess.run([*base, "--out", str(tmp_path / "d"), "--world", "storylines=2", "--world", "ad_scenes=next",
                        "--world", "scene_shots=[2, 6]"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert "ad_scenes next, scene_shots [2, 6], storylines 2" in meta["encoders"]["video"]
    clips = pq.read_table(tmp_path / "d" / "clips.parquet").to_pylist()
    assert clips and all(len(c["ad_labels"]) == 1 for c in clips), "ads from the next scene: one scene, one category"
    for bad, named in (("storylines=two", "storylines"), ("storylines=2.0", "whole number"), ("scenes=3", "scenes"),
                       ("scene_shots=2,6", "two whole numbers"), ("storylines", "KNOB=VALUE")):
        r = subprocess.run([*base, "--out", str(tmp_path / "bad"), "--world", bad], capture_output=True, text=True)
        assert r.returncode != 0 and named in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "bad").exists()
