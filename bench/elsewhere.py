"""A second corpus generator, written apart from mediafm/synth.py (issue 17: worlds we did not design).

    .venv/bin/python bench/elsewhere.py --out data/elsewhere --titles 150 --seed 1   # a v1 dataset, labelled
    .venv/bin/python bench/worlds.py --worlds elsewhere                               # through the grid's protocol

Every world of bench/worlds.toml before it is one generator (mediafm/synth.py) with its knobs turned: each
modality a sum of unit vectors (place, face, tone, genre) plus Gaussian noise, labels read off the same
latent parts. A model and a recipe chosen on those worlds may have learnt that generator's shape. This one
shares no code and no structure with it (it imports nothing of mediafm, and writes DATASET_FORMAT.md's
files itself with pyarrow), and it was written, with its worlds in bench/worlds.toml, before anything was
trained or evaluated on it. How it differs, on purpose:

- **Nonlinear senses.** Each modality is a fixed random two-layer network (tanh) of the latent state, not a
  sum of parts: what a linear probe reads off a shot is tangled, as it is from real encoders.
- **Continuous mood.** A scene's mood is a point in a 12-d space that drifts from shot to shot (AR(1)); the
  100 tones are prototypes in that space and a clip's tones are the ones nearest its mean mood, so a clip's
  label depends on which part of its scenes it covers.
- **Shot types.** Close-ups (the face), wide shots (the place), inserts (an object), mediums: each shot shows
  the scene's parts in other proportions, and an object (the ads' topic) shows only in some shots.
- **Pacing.** Scene lengths are geometric (many short scenes, a few long), shot durations lognormal, and
  cutting speeds up with the action; each genre has its own pace.
- **Recurrence.** Places recur by a Zipf law; some scenes return to an earlier scene's place and mood
  (flashbacks); the lead is on screen more than the rest of the cast.
- **Gaps.** Audio drops out of some shots (missing modality); timed text is on a dialogue shot with
  probability 0.7.

Labels (clips.parquet, 2-16 shots a clip):
- ads: the ad categories of the objects shown in the scenes the clip overlaps, and of its main place;
- popularity: action intensity (peaks), the lead's share of the clip's shots and dialogue, with noise;
- tones: the tone prototypes nearest the clip's mean mood (the nearest, and any others within 0.05 cosine
  of it, at most 3);
- genres: the title's;
- clip-worthy: 1 positive to 3 negatives per title, by intensity, the lead and a look away from the title's
  average mood, with noise.

Shards hold at most --shard-shots rows (default 5,000), so titles continue into the next file, as the format
allows a writer to.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

N_GENRES, N_TONES, N_ADS, N_PLACE_TYPES = 11, 100, 12, 20
MOOD, PLACE, FACE, VOICE, OBJECT, STYLE = 12, 8, 8, 8, 8, 4
SHOT_TYPES = {"close": (0.4, 1.6, 0.2), "wide": (1.6, 0.4, 0.2), "insert": (0.5, 0.2, 1.8),
              "medium": (1.0, 1.0, 0.4)}  # (place, face, object) weights in the video
SHOT_TYPE_P = (0.35, 0.2, 0.15, 0.3)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Sense:
    """A fixed random two-layer network from a latent vector to a modality's width: tanh, then linear."""

    def __init__(self, rng: np.random.Generator, d_in: int, d_out: int, hidden: int = 128) -> None:
        self.w1 = rng.normal(size=(d_in, hidden)) * (1.5 / np.sqrt(d_in))
        self.b1 = rng.normal(size=hidden) * 0.3
        self.w2 = rng.normal(size=(hidden, d_out)) / np.sqrt(hidden)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return np.tanh(z @ self.w1 + self.b1) @ self.w2


class Catalog:
    """What every title is drawn from: genres (mood, pace, objects), place types, tones, ad categories, senses."""

    def __init__(self, dims: int, title_dim: int, seed: int, noise: float) -> None:
        rng = np.random.default_rng([seed, 71])
        self.noise = noise
        self.tones = _unit(rng.normal(size=(N_TONES, MOOD)))
        self.genre_mood = _unit(rng.normal(size=(N_GENRES, MOOD))) * 0.8
        self.genre_style = rng.normal(size=(N_GENRES, STYLE))
        self.genre_pace = rng.uniform(3.0, 12.0, size=N_GENRES)  # mean shots a scene
        self.genre_cut = rng.uniform(1.2, 4.0, size=N_GENRES)  # median shot seconds
        self.genre_objects = rng.dirichlet(np.full(N_ADS, 0.4), size=N_GENRES)
        self.place_types = rng.normal(size=(N_PLACE_TYPES, PLACE))
        self.place_ad = rng.integers(0, N_ADS, size=N_PLACE_TYPES)
        self.objects = rng.normal(size=(N_ADS, OBJECT))
        self.video = Sense(rng, PLACE + FACE + OBJECT + MOOD + STYLE + 1, dims)
        self.audio = Sense(rng, MOOD + VOICE + PLACE + STYLE + 1, dims)
        self.text = Sense(rng, OBJECT + MOOD + VOICE, dims)
        self.title = Sense(rng, N_GENRES + OBJECT + MOOD, title_dim)


def title(cat: Catalog, title_id: str, n: int, rng: np.random.Generator) -> dict:
    """One title: its shots' modality vectors (None where missing), spans, and the latent state labels use."""
    genres = sorted(rng.choice(N_GENRES, size=int(rng.integers(1, 4)), replace=False).tolist())
    mood0 = cat.genre_mood[genres].mean(0)
    style = cat.genre_style[genres].mean(0)
    pace = float(cat.genre_pace[genres].mean())
    cut = float(cat.genre_cut[genres].mean())
    obj_p = cat.genre_objects[genres].mean(0)
    n_cast = int(rng.integers(4, 11))
    face, voice = rng.normal(size=(n_cast, FACE)), rng.normal(size=(n_cast, VOICE))
    cast_p = np.r_[3.0, np.ones(n_cast - 1)]
    cast_p /= cast_p.sum()
    n_places = int(rng.integers(3, 13))
    ptype = rng.integers(0, N_PLACE_TYPES, size=n_places)
    place = cat.place_types[ptype] + 0.7 * rng.normal(size=(n_places, PLACE))
    zipf = 1.0 / np.arange(1, n_places + 1)
    zipf /= zipf.sum()
    peaks = rng.uniform(0.1, 1.0, size=int(rng.integers(1, 4)))
    pos = (np.arange(n) + 0.5) / n
    intensity = np.max(np.exp(-((pos[:, None] - peaks[None]) / 0.08) ** 2), axis=1)

    vids, auds, texts = [], [], []
    mood = np.zeros((n, MOOD))
    scene = np.zeros(n, np.int64)
    lead = np.zeros(n, bool)
    talking = np.zeros(n, bool)
    scenes: list[dict] = []
    i = 0
    while i < n:
        length = min(int(rng.geometric(1.0 / pace)), n - i)
        if scenes and rng.random() < 0.12:  # a flashback: an earlier scene's place and mood
            back = scenes[int(rng.integers(len(scenes)))]
            where, m = back["place"], back["mood"] + 0.2 * rng.normal(size=MOOD)
        else:
            where = int(rng.choice(n_places, p=zipf))
            m = mood0 + 0.6 * intensity[i] * cat.genre_mood[genres[0]] + 0.8 * rng.normal(size=MOOD)
        objs = rng.choice(N_ADS, size=int(rng.integers(0, 3)), replace=False, p=obj_p)
        who = rng.choice(n_cast, size=min(n_cast, int(rng.integers(1, 4))), replace=False, p=cast_p)
        talk = bool(rng.random() < 0.5)
        s = {"place": where, "mood": m, "objects": [int(o) for o in objs], "ad": int(cat.place_ad[ptype[where]])}
        scenes.append(s)
        drift = m.copy()
        for j in range(length):
            k = i + j
            drift = 0.8 * drift + 0.2 * m + 0.15 * rng.normal(size=MOOD)
            mood[k], scene[k] = drift, len(scenes) - 1
            kind = rng.choice(list(SHOT_TYPES), p=SHOT_TYPE_P)
            wp, wf, wo = SHOT_TYPES[kind]
            c = int(who[j % len(who)])
            lead[k] = c == 0 and kind != "insert"
            obj = cat.objects[objs].sum(0) if len(objs) else np.zeros(OBJECT)
            z = np.r_[wp * place[where], wf * face[c], wo * obj, drift, style, intensity[k]]
            vids.append(cat.video(z + cat.noise * rng.normal(size=z.shape)))
            if rng.random() < 0.1:  # the audio track drops out
                auds.append(None)
            else:
                za = np.r_[drift, (voice[c] if talk else 0 * voice[c]), 0.6 * place[where], style, 2 * intensity[k]]
                auds.append(cat.audio(za + cat.noise * rng.normal(size=za.shape)))
            if talk and rng.random() < 0.7:
                zt = np.r_[obj, 0.5 * drift, 0.3 * voice[c]]
                texts.append(cat.text(zt + cat.noise * rng.normal(size=zt.shape)))
                talking[k] = True
            else:
                texts.append(None)
        i += length

    fused = np.zeros((n, 3 * len(vids[0])), np.float32)
    d = len(vids[0])
    for k in range(n):
        for m_i, v in enumerate((vids[k], auds[k], texts[k])):
            if v is not None:
                fused[k, m_i * d:(m_i + 1) * d] = _unit(v)
    fused = _unit(fused).astype(np.float32)
    dur = np.exp(rng.normal(np.log(cut) - 0.6 * intensity, 0.5))
    end = np.cumsum(dur)
    zt = np.r_[np.bincount(genres, minlength=N_GENRES), cat.objects.T @ obj_p, mood0]
    title_emb = _unit(cat.title(zt + 0.5 * rng.normal(size=zt.shape))).astype(np.float32)
    return {"title_id": title_id, "genres": genres, "fused": fused, "start_s": end - dur, "end_s": end,
            "title_embedding": title_emb, "mood": mood, "scene": scene, "scenes": scenes, "lead": lead,
            "talking": talking, "intensity": intensity, "mood0": mood0}


def clips(cat: Catalog, t: dict, rng: np.random.Generator) -> list[dict]:
    """Labelled clips of one title (rows of clips.parquet)."""
    n = len(t["scene"])
    rows, worth = [], []
    for j in range(int(np.clip(n // 6, 6, 40))):
        length = int(rng.integers(2, 17))
        first = int(rng.integers(0, max(1, n - length + 1)))
        last = min(n - 1, first + length - 1)
        span = slice(first, last + 1)
        sc = sorted(set(t["scene"][span].tolist()))
        main = int(np.bincount(t["scene"][span]).argmax())
        ads = {o for s in sc for o in t["scenes"][s]["objects"]} | {t["scenes"][main]["ad"]}
        m = _unit(t["mood"][span].mean(0))
        cos = cat.tones @ m
        near = np.argsort(cos)[::-1][:3]
        tones = sorted(int(x) for x in near if cos[x] >= cos[near[0]] - 0.05)
        inten, lead, talk = (float(t[k][span].mean()) for k in ("intensity", "lead", "talking"))
        rows.append({"clip_id": f"{t['title_id']}-c{j:03d}", "title_id": t["title_id"], "first_shot": first,
                     "last_shot": last, "ad_labels": sorted(ads),
                     "popularity": inten + 0.4 * lead + 0.2 * talk + 0.15 * float(rng.normal()),
                     "tones": tones, "genres": list(t["genres"]), "clip_worthy": None})
        away = 1.0 - float(m @ _unit(t["mood0"]))
        worth.append(0.6 * inten + 0.4 * lead + 0.3 * away + 0.1 * float(rng.normal()))
    order = np.argsort(worth)[::-1]
    k = min(int(rng.integers(6, 11)), len(rows) // 4)
    for r in order[:k]:
        rows[r]["clip_worthy"] = True
    for r in rng.choice(order[k:], size=min(3 * k, len(order) - k), replace=False):
        rows[r]["clip_worthy"] = False
    return rows


def write_corpus(out, *, n_titles: int, dims: int, seed: int = 0, shots: tuple[int, int] = (40, 400),
                 val_fraction: float = 0.1, test_fraction: float = 0.1, noise: float = 0.3,
                 shard_shots: int = 5000) -> Path:
    """Write a v1 dataset (DATASET_FORMAT.md) with pyarrow alone; returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    (out / "shots").mkdir(parents=True, exist_ok=True)
    cat = Catalog(dims, dims, seed, noise)
    rng = np.random.default_rng([seed, 72])
    fused_dim = 3 * dims
    buf: dict[str, list] = {"title_id": [], "shot_index": [], "start_s": [], "end_s": [], "fused": []}
    shard = 0

    def flush(rows: int) -> None:
        nonlocal shard
        part = {k: v[:rows] for k, v in buf.items()}
        fused = np.concatenate(part["fused"]) if rows else np.zeros((0, fused_dim), np.float32)
        table = pa.table({"title_id": pa.array(part["title_id"], pa.string()),
                          "shot_index": pa.array(part["shot_index"], pa.int32()),
                          "start_s": pa.array(part["start_s"], pa.float64()),
                          "end_s": pa.array(part["end_s"], pa.float64()),
                          "fused": pa.FixedSizeListArray.from_arrays(pa.array(fused.reshape(-1)), fused_dim)})
        pq.write_table(table, out / "shots" / f"part-{shard:05d}.parquet")
        shard += 1
        for k in buf:
            del buf[k][:rows]

    titles, all_clips = [], []
    for i in range(n_titles):
        t = title(cat, f"elsewhere-{seed}-{i:05d}", int(rng.integers(shots[0], shots[1] + 1)), rng)
        u = rng.random()
        split = "val" if u < val_fraction else ("test" if u < val_fraction + test_fraction else "train")
        titles.append({"title_id": t["title_id"], "title_embedding": t["title_embedding"], "kind": "title",
                       "split": split, "genres": t["genres"]})
        n = len(t["fused"])
        buf["title_id"] += [t["title_id"]] * n
        buf["shot_index"] += list(range(n))
        buf["start_s"] += t["start_s"].tolist()
        buf["end_s"] += t["end_s"].tolist()
        buf["fused"] += list(t["fused"][:, None, :])
        while len(buf["title_id"]) >= shard_shots:
            flush(shard_shots)
        all_clips += clips(cat, t, rng)
    if buf["title_id"] or shard == 0:
        flush(len(buf["title_id"]))
    emb = np.stack([t["title_embedding"] for t in titles])
    pq.write_table(pa.table({
        "title_id": pa.array([t["title_id"] for t in titles], pa.string()),
        "title_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dims),
        "kind": pa.array([t["kind"] for t in titles], pa.string()),
        "split": pa.array([t["split"] for t in titles], pa.string()),
        "genres": pa.array([t["genres"] for t in titles], pa.list_(pa.int32()))}), out / "titles.parquet")
    cols = {"clip_id": pa.string(), "title_id": pa.string(), "first_shot": pa.int32(), "last_shot": pa.int32(),
            "ad_labels": pa.list_(pa.int32()), "popularity": pa.float64(), "tones": pa.list_(pa.int32()),
            "genres": pa.list_(pa.int32()), "clip_worthy": pa.bool_()}
    pq.write_table(pa.table({k: pa.array([c[k] for c in all_clips], ty) for k, ty in cols.items()}),
                   out / "clips.parquet")
    who = f"bench/elsewhere.py (seed {seed}, noise {noise})"
    (out / "meta.json").write_text(json.dumps({
        "format": "mediafm-shots", "version": 1, "fused_dim": fused_dim,
        "modalities": {"video": [0, dims], "audio": [dims, 2 * dims], "text": [2 * dims, 3 * dims]},
        "title_dim": dims, "encoders": {m: who for m in ("video", "audio", "text")}}, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--titles", type=int, default=150)
    p.add_argument("--shots", default="40,400", help="MIN,MAX shots a title")
    p.add_argument("--dims", type=int, default=64, help="width of each modality and of the title embedding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.3, help="latent noise of every shot's senses")
    p.add_argument("--test-fraction", type=float, default=0.35)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--shard-shots", type=int, default=5000, help="rows a shard file (titles continue into the next)")
    a = p.parse_args(argv)
    lo, hi = (int(x) for x in a.shots.split(","))
    if not (1 <= lo <= hi) or a.titles < 1 or a.dims < 1 or a.noise < 0 or a.shard_shots < 1:
        p.error(f"--titles {a.titles} --shots {a.shots} --dims {a.dims} --noise {a.noise} --shard-shots "
                f"{a.shard_shots}: need titles, dims and shard-shots >= 1, 1 <= MIN <= MAX, noise >= 0")
    if not (0 <= a.val_fraction and 0 <= a.test_fraction and a.val_fraction + a.test_fraction < 1):
        p.error("--val-fraction and --test-fraction must be >= 0 and sum below 1")
    print(write_corpus(a.out, n_titles=a.titles, dims=a.dims, seed=a.seed, shots=(lo, hi), noise=a.noise,
                       val_fraction=a.val_fraction, test_fraction=a.test_fraction, shard_shots=a.shard_shots))


if __name__ == "__main__":
    main()
