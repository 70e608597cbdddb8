"""Synthetic titles with a documented latent structure (a public stand-in).

This is SYNTHETIC data in modality-embedding space, not decoded media. It
exists so that training, the pipeline and the evaluation can be exercised and
measured without a private catalog. What it models:

- a *world* shared by the whole catalog: 11 genres, each with a visual and a
  sonic style (colour grading, score; faint) and a sparse palette of tones
  and location types it favours (horror: creepy, scary), so genre shows most
  in what the title's scenes are like; 24 location types (kitchen, street,
  ...; they drive video and ambient audio, and decide ad categories); 100
  tones (music/mood in the audio, grading in the video);
- a *title*: one or two genres, its own cast of six characters and its own
  handful of locations. Faces, voices and speech are drawn fresh for every
  title, and a location is its type plus what is particular to this film, as
  in a real catalog where no two films share a face or a set. A model cannot
  memorise them: it has to read them from the title's other shots. The title
  embedding (the [GLOBAL] input) is its genre mix plus noise;
- a *scene*: a location, a tone (from the genres' palette), two characters,
  dialogue or not, and a shot/reverse-shot pattern: shots alternate between
  the two characters (A, B, A, B ...), so a shot resembles the shots two away
  more than its direct neighbours. Shots without dialogue have no text (zeros,
  as in the source). Scenes return to earlier locations;
- a *narrative arc*: intensity rises to a climax late in the title (music
  swells: an audio direction scaled by the arc);
- *storylines* (World.storylines, default 1): two or more stories cross-cut,
  scenes taking turns between them, each with its own characters, locations
  and arc;
- every shot is its latent content plus strong noise, so a shot alone carries
  weak evidence and the surrounding scene and title carry most of it.

Evaluation labels (clips.parquet, the five tasks of MEDIAFM.md) depend on
context the way the source describes:
- ad relevancy (8 categories): the ad categories of the location types of the
  scenes *around* the clip (the one before, its own, the one after; or, with
  World.ad_scenes = "next", only the scene after it, or its own last scene at
  the title's end);
- popularity: the arc at the clip's position plus dialogue, plus noise; ranked
  within each title;
- tone (100 classes): the tones of the scenes the clip overlaps;
- genre (11 classes): the parent title's genres;
- clip-worthiness: the 6-10 clips of a title with the highest arc-and-dialogue
  score are positive, three times as many others negative, the rest unlabelled.

What it cannot show: anything about real encoders, real editing rhythm or real
human labels. Numbers on it compare methods; they do not predict catalog scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import numpy as np

from mediafm.fusion import Layout, fuse
from mediafm.schema import EncodedShot, vec_to_bytes

N_GENRES = 11
N_AD = 8
NOISE = 1.5
"""Default per-shot noise scale: noise of norm 1.5 * NOISE on each unit-scale latent component."""


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class World:
    """What every title is drawn from: genres, location types, tones, and how they show in shots.

    The fields after `cast_size` are the knobs of issue 17's grid of worlds (bench/worlds.toml):
    what decides whether context helps or hurts a shot's embedding. Their defaults are the
    stand-in corpus as it always was (the same seed gives the same corpus, bit for bit).
    """

    layout: Layout
    seed: int = 0
    n_settings: int = 24
    """Location types (shared by the catalog; type % 8 is the ad category)."""
    n_tones: int = 100
    cast_size: int = 6
    tone_video: float = 0.5
    """Weight of the scene's tone in each shot's video (colour grading)."""
    tone_audio: float = 1.0
    """Weight of the scene's tone in each shot's audio (music, mood)."""
    tone_text: float = 0.0
    """Weight of the scene's tone in each dialogue shot's timed text (what is said); 0 = text carries no tone."""
    setting_video: float = 1.0
    """Weight of the location type (the ad topic) against what is particular to this film's set, in video."""
    setting_audio: float = 1.0
    """The same for ambient audio."""
    face_weight: float = 1.0
    """Weight of the character on screen in the video (shot / reverse shot)."""
    voice_weight: float = 0.8
    """Weight of the speaking character's voice in the audio of dialogue scenes."""
    genre_weight: float = 0.15
    """Weight of the title's genre style (grading, score) in every shot."""
    locations_per_title: tuple[int, int] = (3, 8)
    """Fewest and most locations of a title (inclusive): few = settings recur often."""
    scene_shots: tuple[int, int] = (6, 24)
    """Fewest and most shots in a scene (inclusive)."""
    dialogue_rate: float = 0.6
    """Fraction of scenes with dialogue, hence with timed text on their shots."""
    storylines: int = 1
    """Storylines cross-cut in a title: scenes take turns between them (A, B, A, B ...), each storyline with its
    own characters, its own locations and its own arc (climax). 1 = one story told in order."""
    ad_scenes: str = "around"
    """Which scenes decide a clip's ad categories: "around" (the one before, its own, the one after) or "next"
    (only the scene after the clip's last one: the ad break comes before it; a clip that ends in the title's
    last scene, with none after it, takes that scene's own)."""
    genres: dict[str, np.ndarray] = field(init=False)
    settings: dict[str, np.ndarray] = field(init=False)
    tones: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        def whole(x) -> bool:
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

        for name in ("n_settings", "n_tones", "cast_size", "storylines"):
            if not whole(getattr(self, name)):
                raise ValueError(f"World.{name}={getattr(self, name)!r}: give a whole number")
        for name in ("locations_per_title", "scene_shots"):
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(whole(x) for x in value)):
                raise ValueError(f"World.{name}={value!r}: give two whole numbers (min, max), e.g. [2, 6]")
        for name in ("n_settings", "n_tones", "cast_size"):
            if getattr(self, name) < (2 if name == "cast_size" else 1):
                raise ValueError(f"World.{name}={getattr(self, name)} is too small (cast_size >= 2, others >= 1)")
        for name in ("tone_video", "tone_audio", "tone_text", "setting_video", "setting_audio", "face_weight",
                     "voice_weight", "genre_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"World.{name}={getattr(self, name)} must be >= 0")
        for name in ("locations_per_title", "scene_shots"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"World.{name}={getattr(self, name)}: give (min, max) with 1 <= min <= max")
        if not 0 <= self.dialogue_rate <= 1:
            raise ValueError(f"World.dialogue_rate={self.dialogue_rate} must be in [0, 1]")
        if not 1 <= self.storylines or self.cast_size < 2 * self.storylines \
                or self.locations_per_title[0] < self.storylines:
            raise ValueError(f"World.storylines={self.storylines}: need >= 1, and each storyline two characters "
                             f"(cast_size {self.cast_size}) and a location (locations_per_title "
                             f"{tuple(self.locations_per_title)}) of its own")
        if self.ad_scenes not in ("around", "next"):
            raise ValueError(f"World.ad_scenes={self.ad_scenes!r}: choose 'around' or 'next'")
        self.locations_per_title = tuple(self.locations_per_title)
        self.scene_shots = tuple(self.scene_shots)
        rng = np.random.default_rng(self.seed)
        L = self.layout

        def bank(n: int, dim: int) -> np.ndarray:
            return _unit(rng.normal(size=(n, dim))).astype(np.float32)

        self.genres = {"title": bank(N_GENRES, L.title), "video": bank(N_GENRES, L.video),
                       "audio": bank(N_GENRES, L.audio)}
        self.settings = {"video": bank(self.n_settings, L.video), "audio": bank(self.n_settings, L.audio)}
        self.tones = {"video": bank(self.n_tones, L.video), "audio": bank(self.n_tones, L.audio)}
        self.intensity = bank(1, L.audio)[0]
        # What each genre favours: a sparse preference over tones and location types. A genre's 20 likeliest
        # tones carry about 65-80% of its palette (horror: creepy, scary; comedy: funny), so the tones of a title's
        # scenes point to its genre. With Dirichlet 1.0 (~50%) they said little about it, and MediaFM in context
        # lost the genre probe to the concatenated inputs (bench/standin.py: 0.490 vs 0.522).
        self.tone_palette = rng.dirichlet(np.full(self.n_tones, 0.3), size=N_GENRES)
        self.setting_palette = rng.dirichlet(np.full(self.n_settings, 0.3), size=N_GENRES)
        # Tones in timed text come from their own generator, so that the banks above (and every corpus
        # written before this knob existed) stay the same.
        self.tones["text"] = _unit(np.random.default_rng([self.seed, 7]).normal(
            size=(self.n_tones, L.text))).astype(np.float32)


@dataclass
class SynthTitle:
    title_id: str
    title_embedding: np.ndarray  # (title_dim,)
    video: np.ndarray  # (n, video_dim)
    audio: np.ndarray
    text: np.ndarray
    present: np.ndarray  # (n, 3) bool
    start_s: np.ndarray
    end_s: np.ndarray
    genres: list[int]
    scene: np.ndarray  # (n,) scene index of each shot
    scene_tone: list[int]
    scene_dialogue: list[bool]
    scene_setting: list[int]
    """Location type of each scene (its ad category is type % N_AD)."""
    arc: np.ndarray  # (n,) narrative intensity in [0, 1] (of the shot's storyline)

    @property
    def fused(self) -> np.ndarray:
        return fuse(self.video, self.audio, self.text, self.present, layout=self.layout)

    layout: Layout = field(default=None, repr=False)  # type: ignore[assignment]
    scene_storyline: list[int] = field(default_factory=list)
    """Storyline of each scene (World.storylines; all 0 in a title told in order)."""
    ad_scenes: str = "around"
    """World.ad_scenes: which scenes decide a clip's ad categories."""


def generate_title(world: World, title_id: str, n_shots: int, rng: np.random.Generator,
                   *, noise: float = NOISE) -> SynthTitle:
    L, W = world.layout, world

    def fresh(n: int, dim: int) -> np.ndarray:  # this title's own faces, voices, sets
        return _unit(rng.normal(size=(n, dim))).astype(np.float32)

    genres = sorted(rng.choice(N_GENRES, size=int(rng.integers(1, 3)), replace=False).tolist())
    title_emb = _unit(world.genres["title"][genres].sum(0) + 0.5 * rng.normal(size=L.title) / np.sqrt(L.title))
    face, voice, speech = (fresh(world.cast_size, d) for d in (L.video, L.audio, L.text))
    n_locations = int(rng.integers(world.locations_per_title[0], world.locations_per_title[1] + 1))
    loc_type = rng.choice(world.n_settings, size=n_locations, p=world.setting_palette[genres].mean(0))
    loc_v = _unit(world.setting_video * world.settings["video"][loc_type] + fresh(n_locations, L.video))
    loc_a = _unit(world.setting_audio * world.settings["audio"][loc_type] + fresh(n_locations, L.audio))
    tone_p = world.tone_palette[genres].mean(0)
    genre_v = world.genres["video"][genres].mean(0)
    genre_a = world.genres["audio"][genres].mean(0)
    video, audio, text = (np.zeros((n_shots, d), np.float32) for d in (L.video, L.audio, L.text))
    present = np.ones((n_shots, 3), bool)
    scene = np.zeros(n_shots, np.int64)
    tones, dialogue, settings_ = [], [], []
    climax = rng.uniform(0.55, 0.9)
    lines = world.storylines  # a title told in order draws nothing more: the stand-in corpus stays as it was
    if lines > 1:
        climax = np.array([climax, *rng.uniform(0.55, 0.9, size=lines - 1)])[:, None]
        cast_of = [np.arange(world.cast_size)[j::lines] for j in range(lines)]
        locations_of = [np.arange(n_locations)[j::lines] for j in range(lines)]
    arcs = np.exp(-(((np.arange(n_shots) + 0.5) / n_shots - climax) / 0.2) ** 2).reshape(-1, n_shots)
    arc = arcs[0].copy()
    storyline = []

    def noisy(v: np.ndarray) -> np.ndarray:
        return v + 1.5 * noise * rng.normal(size=v.shape) / np.sqrt(v.shape[-1])

    i, s = 0, 0
    while i < n_shots:
        length = min(int(rng.integers(world.scene_shots[0], world.scene_shots[1] + 1)), n_shots - i)
        line = s % lines
        if lines > 1:
            loc = int(rng.choice(locations_of[line]))
        else:
            loc = int(rng.integers(n_locations))
        tone = int(rng.choice(world.n_tones, p=tone_p))
        a, b = rng.choice(cast_of[line] if lines > 1 else world.cast_size, size=2, replace=False)
        talk = bool(rng.random() < world.dialogue_rate)
        tones.append(tone)
        dialogue.append(talk)
        settings_.append(int(loc_type[loc]))
        storyline.append(line)
        for j in range(length):
            who = a if j % 2 == 0 else b  # shot / reverse shot
            k = i + j
            scene[k] = s
            arc[k] = arcs[line, k]
            video[k] = _unit(noisy(loc_v[loc] + W.face_weight * face[who] + W.tone_video * world.tones["video"][tone]
                                   + W.genre_weight * genre_v))
            audio[k] = _unit(noisy(loc_a[loc] + W.tone_audio * world.tones["audio"][tone]
                                   + (W.voice_weight * voice[who] if talk else 0)
                                   + W.genre_weight * genre_a + 0.8 * arc[k] * world.intensity))
            if talk:
                text[k] = _unit(noisy(speech[who] + W.tone_text * world.tones["text"][tone] if W.tone_text
                                      else speech[who]))
            else:
                present[k, 2] = False
        i += length
        s += 1
    durations = rng.uniform(0.8, 6.0, size=n_shots)
    end = np.cumsum(durations)
    return SynthTitle(title_id, title_emb.astype(np.float32), video, audio, text, present, end - durations, end,
                      genres, scene, tones, dialogue, settings_, arc, layout=L, scene_storyline=storyline,
                      ad_scenes=world.ad_scenes)


def encoded_shots(t: SynthTitle) -> list[EncodedShot]:
    """The title as pipeline input: one EncodedShot per shot, as an encoding stage publishes it."""
    n = len(t.scene)
    return [EncodedShot(title_id=t.title_id, shot_index=i, start_s=float(t.start_s[i]), end_s=float(t.end_s[i]),
                        profile=t.layout.name, video=vec_to_bytes(t.video[i]), audio=vec_to_bytes(t.audio[i]),
                        text=vec_to_bytes(t.text[i]) if t.present[i, 2] else None, n_shots=n,
                        title_embedding=vec_to_bytes(t.title_embedding))
            for i in range(n)]


def clips_for_title(t: SynthTitle, rng: np.random.Generator) -> list[dict]:
    """Labelled clips (rows of clips.parquet) for one synthetic title."""
    n = len(t.scene)
    n_clips = int(np.clip(n // 6, 8, 48))
    rows, scores = [], []
    for j in range(n_clips):
        length = int(rng.integers(3, 13))
        first = int(rng.integers(0, max(1, n - length + 1)))
        last = min(n - 1, first + length - 1)
        scenes = sorted(set(t.scene[first : last + 1].tolist()))
        after = min(int(t.scene.max()), scenes[-1] + 1)
        around = [after] if t.ad_scenes == "next" else sorted({max(0, scenes[0] - 1), *scenes, after})
        talk = float(np.mean([t.scene_dialogue[s] for s in scenes]))
        arc = float(t.arc[first : last + 1].mean())
        rows.append({
            "clip_id": f"{t.title_id}-c{j:03d}", "title_id": t.title_id, "first_shot": first, "last_shot": last,
            "ad_labels": sorted({t.scene_setting[s] % N_AD for s in around}),
            "popularity": arc + 0.3 * talk + 0.1 * float(rng.normal()),
            "tones": sorted({t.scene_tone[s] for s in scenes}),
            "genres": list(t.genres),
            "clip_worthy": None,
        })
        scores.append(arc + 0.5 * talk + 0.05 * float(rng.normal()))
    order = np.argsort(scores)[::-1]
    k = min(int(rng.integers(6, 11)), len(rows) // 4)  # 1 positive : 3 negatives
    for r in order[:k]:
        rows[r]["clip_worthy"] = True
    for r in rng.choice(order[k:], size=min(3 * k, len(order) - k), replace=False):
        rows[r]["clip_worthy"] = False
    return rows


def write_corpus(out, *, n_titles: int, layout: Layout, seed: int = 0, shots: tuple[int, int] = (40, 400),
                 val_fraction: float = 0.1, test_fraction: float = 0.1, noise: float = NOISE, progress: bool = False,
                 world: dict | None = None):
    """Write a synthetic corpus in the v1 dataset format; returns its path.

    world: overrides of World's fields (tone_video=1.0, scene_shots=(2, 6), ...); none = the stand-in corpus.
    """
    from tqdm import tqdm

    from mediafm.errors import ConfigError

    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ConfigError(f"val fraction {val_fraction} + test fraction {test_fraction}: each must be >= 0 and "
                          "together < 1, so that some titles are left to train on")
    if not (1 <= shots[0] <= shots[1]):
        raise ConfigError(f"shots per title {shots[0]},{shots[1]}: give MIN,MAX with 1 <= MIN <= MAX")
    if n_titles < 1 or noise < 0:
        raise ConfigError(f"titles={n_titles}, noise={noise}: need at least 1 title and noise >= 0")

    from mediafm.dataset import DatasetWriter, Meta

    knobs = dict(world or {})
    unknown = set(knobs) - {f.name for f in fields(World) if f.init} - {"layout", "seed"}
    if unknown or {"layout", "seed"} & set(knobs):
        raise ConfigError(f"world overrides {sorted(set(knobs) & ({'layout', 'seed'} | unknown))} are not World knobs; "
                          f"choose from {sorted(f.name for f in fields(World) if f.init and f.name not in ('layout', 'seed'))}")
    try:
        w = World(layout, seed=seed, **knobs)
    except (ValueError, TypeError) as e:  # TypeError: a knob of the wrong kind (storylines="two")
        raise ConfigError(f"world knobs {knobs}: {e}") from None
    extra = "".join(f", {k} {v}" for k, v in sorted(knobs.items()))
    enc = {m: f"synthetic (mediafm.synth, seed {seed}, noise {noise}{extra})" for m in ("video", "audio", "text")}
    writer = DatasetWriter(out, Meta.from_layout(layout, enc))
    clips: list[dict] = []
    titles = corpus_titles(w, n_titles, seed=seed, shots=shots, noise=noise, val_fraction=val_fraction,
                           test_fraction=test_fraction)
    for t, split, title_clips in tqdm(titles, total=n_titles, disable=not progress, unit="title", desc="synth corpus"):
        writer.add_title(title_id=t.title_id, title_embedding=t.title_embedding, fused=t.fused,
                         start_s=t.start_s, end_s=t.end_s, split=split, genres=t.genres)
        clips.extend(title_clips)
    writer.add_clips(clips)
    return writer.close()


def corpus_titles(world: World, n_titles: int, *, seed: int, shots: tuple[int, int], noise: float = NOISE,
                  val_fraction: float = 0.1, test_fraction: float = 0.1) -> Iterator[tuple[SynthTitle, str, list[dict]]]:
    """The titles of write_corpus's corpus, in order, each with its split and clips: (title, split, clips).

    Every random draw of a title comes from one stream seeded by `seed`, and the noise only scales draws made
    anyway, so the same seed at noise 0 gives the same titles without their noise (bench/floor.py)."""
    rng = np.random.default_rng([seed, 1])
    for i in range(n_titles):
        t = generate_title(world, f"synth-{seed}-{i:06d}", int(rng.integers(shots[0], shots[1] + 1)), rng, noise=noise)
        u = rng.random()
        split = "val" if u < val_fraction else ("test" if u < val_fraction + test_fraction else "train")
        yield t, split, clips_for_title(t, rng)
