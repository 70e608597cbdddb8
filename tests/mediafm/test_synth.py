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
