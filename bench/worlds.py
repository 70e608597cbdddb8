"""Model quality on a grid of stand-in worlds (issue 17): MediaFM in context vs its own inputs, per world.

    .venv/bin/python bench/worlds.py                      # the whole grid at the small default (~25 min, 2 cores)
    .venv/bin/python bench/worlds.py --worlds standin short-scenes --seeds 2 --steps 200
    .venv/bin/python bench/worlds.py --variant mediafm= --variant adamw="--optimizer adamw"
    .venv/bin/python bench/worlds.py --variant mediafm= --served copy_span=8 --served copy_span=32

The worlds are fixed in bench/worlds.toml, written before any run and never
edited to make a model win (its header says how to add one): the grid's nine
(2026-11-30), on which the recipe was chosen, and three held out (2026-12-02:
storylines cross-cut, ads from the next scene), written after the choice and
before any run on them; and two from a second generator that shares nothing with
mediafm/synth.py (bench/elsewhere.py, `generator = "elsewhere"`; 2026-12-02, also
before any run on them). The default runs all fourteen; --worlds picks. For each
world and each seed s (1..--seeds):

  1. `mediafm synth corpus` with the world's knobs (or bench/elsewhere.py at the world's noise), corpus seed s;
  2. `mediafm train` of every --variant (default two: `mediafm`, the recipe of `mediafm train` with
     its copy head, and `source`, the source's output projection), training seed s;
  3. `mediafm evaluate` of all variants on the corpus' test titles.

Then it prints and writes (OUT/worlds.md, OUT/worlds.json) ONE table: per world
and task, the concatenated inputs (`concat`: the shot's own inputs, no context),
the baselines that use context without learning (`avg-k3`, `avg-k8`,
`clip+next12`: means of the fused vectors around the clip) and MediaFM in context
(`<variant>:context` hidden states, `<variant>:context-output` the model's output
(copy head or projection; with the copy head's copy_wide, its sharp and wide copies), the published vector;
`<variant>:context+input` the output and the shot's own input, unit vectors averaged, at the fused width;
`<variant>:sharp+input` the same with the sharp copy alone, what was published before copy_wide), each as
mean ± sd over the seeds (the spread covers both the corpus
draw and the training seed). A cell marked ✗ is below concat: context hurt there.
With --served KEY=VALUE[,KEY=VALUE] (repeat), every variant is also evaluated as
served with those inference-only settings (trainer/evaluate.py SERVED: copy_wide,
copy_span, sharp_span), rows `<variant>@<setting>:...`; finished (world, seed) runs are
evaluated again for them, not trained again. A summary table counts, per
representation over the grid's cells (world x task, means over seeds), those at
or above `concat`, below it in every seed (a paired verdict: each seed's corpus is
the same for both), above `avg-k8` and above all four baselines, the mean
ratio to `concat`, and those clearly above and clearly below `concat` and `avg-k8`
by a paired t-test over the seeds (two-sided, 5%, 3 seeds at least; paired_verdict).
With more than one variant, a table sets each against the first (the reference),
cell by cell: clearly better, clearly worse, or not told apart by the seeds. A
further table gives validation loss (masked-shot cosine distance) over the two
context-free predictors the trainer logs (title mean, neighbours): below 1 means
the model predicts masked shots better than they do. A last table gives each world's shot spectrum
(shot_spectrum: the strongest direction's share of the variance, the effective rank over the width), which says
where a loss that reweighs directions can change anything. OUT/worlds.png draws the grid:
a heatmap per representation (the moving averages, each variant's published output
and context+input), worlds down, tasks across, each cell its ratio to `concat`
(blue above, red below; ✗ clearly below it by the paired t-test, or with fewer than
3 seeds below it in every seed).

Default budget (small on purpose, 2 CPU cores): measured 2026-11-30, 40 s per world
and seed on a quiet machine, 65-90 s (one thread) while other work shared it, so
the 27 runs of the nine-world grid take ~20-40 min a variant; on 2026-12-01 the two default variants took
23 min as two processes side by side (--worlds split 5/4, 23 and 21 min, then --collect). `tiny` model (hidden 64, 2 layers, 64-shot windows), 600 steps
of batch 16 (AdamW lr 3e-3, warmup 30), 150 titles of 40-120 shots per corpus
(35% evaluation titles, 10% validation), 64-d modalities (192-d fused), probes
with 5 folds and one fold seed. Numbers at this size compare methods within a world; they are
noisy and do not predict catalog scores. Raise --steps/--titles/--config for a
real run (GPU: --config small --steps 2000 --titles 700).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASK_ORDER = ("ad_relevancy", "popularity", "tone", "genre", "retrieval")
BASE_ROWS = ("concat", "avg-k3", "avg-k8", "clip+next12")
CONTEXT_ROWS = ("context", "context-output", "context+input", "sharp+input")  # per variant, where the evaluation has them
DEFAULT_VARIANTS = ["mediafm=", "source=--head projection"]  # this repository's recipe; the source's output head
ALPHA = 0.05  # level of the paired t-tests over seeds (paired_verdict)
TRAIN_DEFAULTS = ["--batch_size", "16", "--lr_adamw", "3e-3", "--warmup_steps", "30", "--val_batches", "4"]


def load_worlds(path: Path, only: list[str] | None) -> dict[str, dict]:
    """name -> {"about", "noise", World knobs...}; unknown names in `only` are an error."""
    worlds = tomllib.loads(path.read_text())
    if only:
        missing = [w for w in only if w not in worlds]
        if missing:
            raise SystemExit(f"worlds: {missing} not in {path}; choose from {list(worlds)}")
        worlds = {w: worlds[w] for w in only}
    return worlds


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """['mediafm=', 'adamw=--optimizer adamw'] -> {name: extra training flags}."""
    out: dict[str, list[str]] = {}
    for spec in specs or DEFAULT_VARIANTS:
        name, _, flags = spec.partition("=")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise SystemExit(f"--variant {spec!r}: give NAME=FLAGS, NAME of letters, digits, - and _")
        if name in out:
            raise SystemExit(f"--variant {name} given twice")
        out[name] = shlex.split(flags)
    return out


SPECTRUM_SHOTS = 20_000  # shot_spectrum reads at most this many training shots, every k-th of each title


def shot_spectrum(data: Path, *, max_shots: int = SPECTRUM_SHOTS) -> dict[str, float]:
    """How a corpus's training shots spread their variance over directions (eigenvalues of their covariance):
    `top_share`, the strongest direction's share of it, and `effective_rank`, exp of the entropy of the shares
    (Roy & Vetterli 2007) over the width. Isotropic shots have a share near 1 / width and an effective rank near
    1; learnt encoders' embeddings are usually steeper. A loss that reweighs directions (`--loss whitened`) can
    only change anything where the spectrum is steep, so the grid's table says which worlds can judge one."""
    from mediafm.dataset import Dataset
    from trainer.data import shot_moments

    ds = Dataset(data)
    _, cov = shot_moments(ds, ds.split("train"), max_shots=max_shots)
    share = np.clip(np.linalg.eigvalsh(cov.numpy()), 0, None)
    share = share / share.sum()
    nz = share[share > 0]
    return {"top_share": float(share.max()), "effective_rank": float(np.exp(-(nz * np.log(nz)).sum()) / len(share))}


def collect(work: Path, variants: dict[str, list[str]]) -> dict | None:
    """The probes and losses of a finished (world, seed) from its files; None if its evaluation is missing.
    The corpus's shot spectrum (shot_spectrum) is measured once and kept beside the report."""
    report = work / "report" / "results.json"
    if not report.exists():
        return None
    spectrum_file = work / "report" / "spectrum.json"
    if not spectrum_file.exists() and (work / "data" / "meta.json").exists():
        spectrum_file.write_text(json.dumps(shot_spectrum(work / "data")))
    spectrum = json.loads(spectrum_file.read_text()) if spectrum_file.exists() else None
    res = json.loads(report.read_text())["results"]
    losses = {}
    for name in variants:
        latest = work / name / "checkpoints" / "latest.json"
        metrics = json.loads(latest.read_text()).get("metrics", {}) if latest.exists() else {}
        losses[name] = {k: metrics[k] for k in ("val_loss", "title_mean", "neighbours") if k in metrics}
    return {"probes": {rep: {t: v["mean"] for t, v in row.items()} for rep, row in res.items()}, "losses": losses,
            "recipe": {name: trained_as(work / name) for name in variants if (work / name / "config.json").exists()},
            **({"spectrum": spectrum} if spectrum else {})}


def trained_as(run: Path) -> str:
    """'<config>, <steps> steps' as the run recorded it (mediafm train's config.json)."""
    train = json.loads((run / "config.json").read_text())["train"]
    return f"{train['config']}, {train['max_steps']} steps"


def world_corpus(spec: dict, seed: int, args, data: Path) -> Path:
    """The world's corpus for a seed at `data` (args: titles, shots "MIN,MAX", dims), written unless it is there:
    the same titles for every run of the seed (bench/residual.py draws them too)."""
    from mediafm.fusion import Layout
    from mediafm.synth import write_corpus

    knobs = {k: v for k, v in spec.items() if k not in ("about", "noise", "generator")}
    d = args.dims
    lo, hi = (int(x) for x in args.shots.split(","))
    generator = spec.get("generator", "synth")
    if generator not in ("synth", "elsewhere"):
        raise SystemExit(f"generator = {generator!r}: 'synth' (mediafm/synth.py, the default) or 'elsewhere' "
                         "(bench/elsewhere.py)")
    if not (data / "meta.json").exists() and generator == "elsewhere":
        import elsewhere  # bench/elsewhere.py, the second generator: no knobs but its noise

        if knobs:
            raise SystemExit(f"bench/elsewhere.py takes no World knobs ({sorted(knobs)}): only about and noise")
        elsewhere.write_corpus(data, n_titles=args.titles, dims=d, seed=seed, shots=(lo, hi),
                               noise=float(spec.get("noise", 0.3)), val_fraction=0.1, test_fraction=0.35)
    elif not (data / "meta.json").exists():
        write_corpus(data, n_titles=args.titles, layout=Layout(f"worlds-{d}", video=d, audio=d, text=d, title=d),
                     seed=seed, shots=(lo, hi), noise=float(spec.get("noise", 1.5)), val_fraction=0.1,
                     test_fraction=0.35, world=knobs)
    return data


def one_seed(world: str, spec: dict, seed: int, variants: dict[str, list[str]], args, work: Path) -> dict:
    """Corpus, training of every variant and evaluation for one (world, seed); a finished one is read back
    (evaluated again when a variant's or a --served row is missing from it: a report written before a variant
    finished, by a run stopped between its training and its evaluation, does not count for it)."""
    served = [f"{v}@{x}" for v in variants for x in args.served]
    done = collect(work, variants)
    if (done is not None and all(done["losses"].get(v) for v in variants)
            and all(f"{name}:context-output" in done["probes"] for name in [*variants, *served])):
        return done
    from trainer.evaluate import evaluate
    from trainer.train import TrainConfig, parse_overrides, train

    data = world_corpus(spec, seed, args, work / "data")
    for name, flags in variants.items():  # a run already at --steps returns at once (train resumes)
        if done is not None and done["losses"].get(name):
            continue  # trained and validated: evaluated again only (a row was missing from its report)
        train_over, model_over = parse_overrides([*TRAIN_DEFAULTS, "--max_steps", str(args.steps), "--eval_every",
                                                  str(args.steps), "--ckpt_every", str(args.steps), "--seed",
                                                  str(seed), *flags])
        train(data, work / name, TrainConfig(config=args.config, **train_over), model_over, quiet=True)
    evaluate(data, [work / n for n in variants] + [f"{work / name}" for name in served], work / "report",
             seeds=args.eval_seeds, folds=args.folds, progress=False, plot=False)
    return collect(work, variants)


def cell(vals: list[float], *, worse: bool = False) -> str:
    s = f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "-"
    return s + (" ✗" if worse else "")


def run_names(results: dict, variants: list[str]) -> list[str]:
    """The variants, then each as evaluated with other inference settings (`<variant>@<setting>`), as found."""
    found = {rep.split(":")[0] for runs in results.values() for r in runs for rep in r["probes"] if ":" in rep}
    return [*variants, *sorted(n for n in found if "@" in n and n.split("@")[0] in variants)]


def matched_means(results: dict, world: str, rows: tuple[str, ...], task: str) -> list[float] | None:
    """Cells of the grid compared: each row's score on the task in the world, the mean over the seeds that have
    every one of the rows (None where no seed has them all). A variant run on fewer seeds than the baselines is
    set against them on its own seeds only: the corpus draw moves every row of a seed alike, and more than most
    methods differ."""
    seeds = [r["probes"] for r in results[world] if all(task in r["probes"].get(row, {}) for row in rows)]
    return [float(np.mean([p[row][task] for p in seeds])) for row in rows] if seeds else None


def below_every_seed(results: dict, world: str, rep: str, task: str) -> bool:
    """Below concat in each seed that has the row: the corpus of a seed is the same for both, so this is a
    paired verdict; a cell below on the mean but not in every seed may be the draw."""
    pairs = seed_pairs(results, world, rep, "concat", task)
    return bool(pairs) and all(x < c for x, c in pairs)


def seed_pairs(results: dict, world: str, rep: str, ref: str, task: str) -> list[tuple[float, float]]:
    """(rep's score, ref's score) on the task in each seed of the world that has both rows."""
    return [(r["probes"][rep][task], r["probes"][ref][task]) for r in results[world]
            if task in r["probes"].get(rep, {}) and task in r["probes"].get(ref, {})]


def marked_below(results: dict, world: str, rep: str, task: str) -> bool:
    """The heatmap's ✗: clearly below concat by paired_verdict where 3 seeds or more have both rows; with fewer,
    which the t-test cannot judge, below it in every seed."""
    if len(seed_pairs(results, world, rep, "concat", task)) >= 3:
        return paired_verdict(results, world, rep, "concat", task) < 0
    return below_every_seed(results, world, rep, task)


def paired_verdict(results: dict, world: str, rep: str, ref: str, task: str, *, alpha: float = ALPHA) -> int:
    """+1 where `rep` is above `ref` on the task in the world by a paired t-test over the seeds that have both
    (two-sided, level alpha), -1 where it is below, 0 where the seeds cannot tell them apart (or fewer than 3
    seeds have both). Paired: a seed's corpus and probe folds are the same for both rows, so the corpus draw,
    which moves a cell more than most methods do, cancels out. Of cells with no true difference, about alpha of
    them are called either way by chance (3 of 60 at 5%)."""
    from scipy import stats

    pairs = seed_pairs(results, world, rep, ref, task)
    if len(pairs) < 3:
        return 0
    diff = np.array([x - y for x, y in pairs])
    sd = diff.std(ddof=1)
    if sd == 0:  # every seed moved by the same amount: no spread to test against (a copy of a row: 0)
        return int(np.sign(diff.mean()))
    t = diff.mean() / (sd / np.sqrt(len(diff)))
    return int(np.sign(t)) if 2 * stats.t.sf(abs(t), len(diff) - 1) < alpha else 0


def summary_rows(results: dict, names: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    """The rows grid_summary counts, in its order, that some run of the results has: the moving averages, each
    variant's published rows (CONTEXT_ROWS but the hidden state), then `extra`."""
    rows = [*BASE_ROWS[1:], *(f"{n}:{k}" for n in names for k in CONTEXT_ROWS if k != "context"), *extra]
    found = {rep for runs in results.values() for r in runs for rep in r["probes"]}
    return [rep for rep in rows if rep in found]


def clear_counts(results: dict, rep: str) -> dict[str, tuple[int, int]]:
    """Over the grid's cells, by paired_verdict: the cells where `rep` is clearly above and clearly below concat,
    avg-k8, and all four baselines ("all": above every one of them / below at least one), as (above, below)."""
    clear = {"concat": [0, 0], "avg-k8": [0, 0], "all": [0, 0]}
    for world in results:
        for t in TASK_ORDER:
            if matched_means(results, world, (rep, *BASE_ROWS), t) is None:
                continue
            verdict = {b: paired_verdict(results, world, rep, b, t) for b in BASE_ROWS if b != rep}
            for ref in ("concat", "avg-k8"):
                clear[ref][0] += verdict.get(ref, 0) > 0
                clear[ref][1] += verdict.get(ref, 0) < 0
            clear["all"][0] += rep not in BASE_ROWS and all(v > 0 for v in verdict.values())
            clear["all"][1] += any(v < 0 for v in verdict.values())
    return {k: (above, below) for k, (above, below) in clear.items()}


def grid_summary(results: dict, names: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    """Per representation, over the grid's cells (world x task, each the mean over the seeds the representation
    has, the baselines' on the same seeds: matched_means): how many are at or above concat, below it in every seed,
    above avg-k8, above all four baselines, the mean ratio to concat (overall, per task), and by paired_verdict
    how many are clearly above and clearly below concat, avg-k8, and all four baselines (below: below at least
    one). extra: further rows of the results to count the same way (bench/both.py's)."""
    reps = summary_rows(results, names, extra)
    lines = ["| representation | cells | at or above concat | below concat in every seed | above avg-k8 | above all "
             "four baselines | mean ratio to concat | " + " / ".join(TASK_ORDER) + " | paired t: clearly above / "
             "below concat | clearly above / below avg-k8 | clearly above all four / below one |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rep in reps:
        n = ge = always = k8 = best = 0
        clear = clear_counts(results, rep)
        ratios: dict[str, list[float]] = {t: [] for t in TASK_ORDER}
        for world in results:
            for t in TASK_ORDER:
                means = matched_means(results, world, (rep, *BASE_ROWS), t)
                if means is None:
                    continue
                x, base = means[0], means[1:]
                c = base[BASE_ROWS.index("concat")]
                n += 1
                ge += x >= c
                always += below_every_seed(results, world, rep, t)
                k8 += x > base[BASE_ROWS.index("avg-k8")]
                best += x > max(base)
                ratios[t].append(x / c)
        if n:
            per = " / ".join(f"{np.mean(ratios[t]):.2f}" if ratios[t] else "-" for t in TASK_ORDER)
            vs_k8 = "-" if rep == "avg-k8" else "{} / {}".format(*clear["avg-k8"])
            lines.append(f"| {rep} | {n} | {ge} | {always} | {k8 if rep != 'avg-k8' else '-'} | {best} | "
                         f"{np.mean([r for v in ratios.values() for r in v]):.3f} | {per} | "
                         "{} / {} | ".format(*clear["concat"]) + f"{vs_k8} | "
                         + ("- |" if rep in BASE_ROWS else "{} / {} |".format(*clear["all"])))
    return lines


def variant_comparison(results: dict, names: list[str]) -> list[str]:
    """Each variant (and served setting) against the first variant, the reference, representation by
    representation (its output, context+input): over the grid's cells, how many it is clearly better and clearly
    worse in (paired_verdict: the seeds of one corpus paired), how many the seeds cannot tell, and its mean ratio
    to the reference. Judge a variant by these, not by a count of cells at or above concat moving by one or two:
    at a few seeds a cell crosses concat with the draw."""
    if len(names) < 2:
        return []
    ref = names[0]
    lines = ["| representation | against | cells | clearly better | clearly worse | seeds cannot tell | mean ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in names[1:]:
        for kind in ("context-output", "context+input"):
            rep, base = f"{name}:{kind}", f"{ref}:{kind}"
            better = worse = n = 0
            ratios = []
            for world in results:
                for t in TASK_ORDER:
                    means = matched_means(results, world, (rep, base), t)
                    if means is None:
                        continue
                    x, y = means
                    n += 1
                    v = paired_verdict(results, world, rep, base, t)
                    better += v > 0
                    worse += v < 0
                    if y:
                        ratios.append(x / y)
            if n:
                lines.append(f"| {rep} | {base} | {n} | {better} | {worse} | {n - better - worse} | "
                             f"{np.mean(ratios):.3f} |")
    return lines


def plot_grid(results: dict, names: list[str], path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """OUT/worlds.png: one heatmap per representation (the moving averages, each variant's published output and
    context+input), worlds down, tasks across, each cell its mean over seeds as a ratio to concat's (blue above,
    red below), ✗ where it is clearly below concat (marked_below: the paired t-test over 3 seeds or more, else
    below in every seed). Returns {representation: (ratios, marked)}, the arrays drawn (NaN where a cell is
    missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    worlds = list(results)
    found = {rep for runs in results.values() for r in runs for rep in r["probes"]}
    reps = [*BASE_ROWS[1:], *(f"{n}:{k}" for n in names for k in ("context-output", "context+input")
                              if f"{n}:{k}" in found)]
    drawn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fig, axes = plt.subplots(1, len(reps), figsize=(2.2 + 2.6 * len(reps), 1.2 + 0.42 * len(worlds)),
                             squeeze=False, sharey=True)
    norm = TwoSlopeNorm(vmin=0.7, vcenter=1.0, vmax=1.3)
    for ax, rep in zip(axes[0], reps, strict=True):
        ratio = np.full((len(worlds), len(TASK_ORDER)), np.nan)
        below = np.zeros_like(ratio, dtype=bool)
        for i, w in enumerate(worlds):
            for j, t in enumerate(TASK_ORDER):
                x, c = matched_means(results, w, (rep, "concat"), t) or (None, None)
                if x is not None and c:
                    ratio[i, j] = x / c
                    below[i, j] = marked_below(results, w, rep, t)
        drawn[rep] = (ratio, below)
        ax.imshow(np.clip(ratio, 0.7, 1.3), cmap="RdBu", norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(ratio):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}" + (" ✗" if below[i, j] else ""), ha="center", va="center", fontsize=7,
                        color="white" if abs(v - 1.0) > 0.2 else "black")  # readable on the darkest cells
        ok = int(np.sum(ratio >= 1.0))
        ax.set_title(f"{rep}\nat or above concat: {ok} / {int(np.isfinite(ratio).sum())}, ✗ {int(below.sum())}",
                     fontsize=8)
        ax.set_xticks(range(len(TASK_ORDER)), [t.replace("_", " ") for t in TASK_ORDER], rotation=45, ha="right",
                      fontsize=7)
        ax.set_yticks(range(len(worlds)), worlds, fontsize=7)
    fig.suptitle("score / concat's per world and task (mean over seeds); ✗ = clearly below concat (paired t-test "
                 f"over the seeds, {ALPHA:.0%}; with fewer than 3 seeds: below it in every seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def tables(results: dict, variants: list[str], seeds: int) -> str:
    """The probe table (world x representation, tasks as columns), the grid's summary and the loss-ratio table,
    in markdown."""
    names = run_names(results, variants)
    lines = ["| world | representation | " + " | ".join(TASK_ORDER) + " |", "| --- | --- |" + " --- |" * len(TASK_ORDER)]
    summary = []
    for world, per_seed in results.items():
        probes = [r["probes"] for r in per_seed]
        label = world if len(per_seed) == seeds else f"{world} (n={len(per_seed)})"

        def vals(rep: str, task: str, probes: list[dict] = probes) -> list[float]:
            return [p[rep][task] for p in probes if rep in p and task in p[rep]]

        ours = [f"{v}:{kind}" for v in names for kind in CONTEXT_ROWS if any(f"{v}:{kind}" in p for p in probes)]
        rows = [*BASE_ROWS, *ours]
        for rep in rows:
            cells = []
            for t in TASK_ORDER:
                v, vs_concat = vals(rep, t), matched_means(results, world, (rep, "concat"), t)
                few = f" (n={len(v)})" if 0 < len(v) < len(probes) else ""  # a row that only some seeds have
                worse = rep != "concat" and vs_concat is not None and vs_concat[0] < vs_concat[1]
                cells.append(cell(v, worse=worse) + few)
            lines.append(f"| {label} | {rep} | " + " | ".join(cells) + " |")
        for out in (r for r in ours if not r.endswith(":context")):
            means = {t: matched_means(results, world, (out, *BASE_ROWS), t) for t in TASK_ORDER}
            means = {t: m for t, m in means.items() if m is not None}
            beats = {b: sum(m[0] > m[1 + i] for m in means.values()) for i, b in enumerate(BASE_ROWS)}
            best = sum(m[0] > max(m[1:]) for m in means.values())
            summary.append(f"- {world}, {out}: beats concat on {beats['concat']}/5 tasks, avg-k3 on "
                           f"{beats['avg-k3']}/5, avg-k8 on {beats['avg-k8']}/5, clip+next12 on "
                           f"{beats['clip+next12']}/5, all four on {best}/5")
    lines += ["", f"mean ± sd over {seeds} seeds (corpus draw and training seed; (n=k): only k of them); ✗ = below concat (the shot's own "
              "inputs) on the seeds the row has: context hurt there. Metrics: ad_relevancy AP, popularity Kendall's tau within title, tone "
              "micro AP, genre macro AP, retrieval AP.", "", *summary, "",
              "Over the grid (cells: world x task, each the mean over the seeds the row has, the baselines on the "
              "same seeds; ratio: the cell over concat's):", "",
              *grid_summary(results, names), "",
              f"Paired t (two-sided, {ALPHA:.0%}, over the seeds; 3 seeds at least): a cell is clearly above or below "
              "where the seeds' paired differences say so; of cells with no true difference about "
              f"{ALPHA:.0%} are called by chance.", "",
              *([f"Each variant against {names[0]}, cell by cell (paired t over the seeds, {ALPHA:.0%}):", "",
                 *variant_comparison(results, names), ""] if len(names) > 1 else []),
              "Validation loss (masked-shot cosine distance) / context-free predictor; < 1 = MediaFM better:", "",
              "| world | variant | val loss | / title mean | / neighbours |", "| --- | --- | --- | --- | --- |"]
    for world, per_seed in results.items():
        for v in variants:
            ls = [r["losses"][v] for r in per_seed if "val_loss" in r["losses"].get(v, {})]
            if not ls:
                lines.append(f"| {world} | {v} | - | - | - |")
                continue
            val = [x["val_loss"] for x in ls]
            lines.append(f"| {world} | {v} | {cell(val)} | {cell([x['val_loss'] / x['title_mean'] for x in ls])} | "
                         f"{cell([x['val_loss'] / x['neighbours'] for x in ls])} |")
    spectra = {w: [r["spectrum"] for r in per_seed if r.get("spectrum")] for w, per_seed in results.items()}
    if any(spectra.values()):
        lines += ["", "The shots' spectrum (training shots, mean ± sd over the seeds; shot_spectrum): the strongest "
                  "direction's share of the variance, and the effective rank over the width (1: isotropic). A loss "
                  "that reweighs directions can change little where the shots are near isotropic.", "",
                  "| world | strongest direction's share | effective rank / width |", "| --- | --- | --- |"]
        lines += [f"| {w} | {cell([x['top_share'] for x in sp])} | {cell([x['effective_rank'] for x in sp])} |"
                  for w, sp in spectra.items() if sp]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds-file", default=str(ROOT / "bench" / "worlds.toml"), help="the grid (default bench/worlds.toml)")
    p.add_argument("--worlds", nargs="+", metavar="NAME", help="run only these worlds of the grid (default all)")
    p.add_argument("--seeds", type=int, default=3, help="corpus + training seeds per world (default 3)")
    p.add_argument("--steps", type=int, default=600, help="training steps per run (default 600)")
    p.add_argument("--config", default="tiny", help="named model size (default tiny; small/base for real runs)")
    p.add_argument("--titles", type=int, default=150, help="titles per corpus, 35%% of them evaluation titles (default 150)")
    p.add_argument("--shots", default="40,120", help="MIN,MAX shots per title (default 40,120)")
    p.add_argument("--dims", type=int, default=64, help="width of each modality and of the title embedding (default 64)")
    p.add_argument("--folds", type=int, default=5, help="outer folds over evaluation titles (default 5)")
    p.add_argument("--eval-seeds", type=int, default=1, help="fold shuffles per evaluation (default 1)")
    p.add_argument("--variant", action="append", metavar="NAME=FLAGS",
                   help="a training recipe to compare, e.g. adamw=\"--optimizer adamw\" (repeat; default mediafm= "
                   "(the recipe of `mediafm train`, copy head) and source=\"--head projection\" (the source's "
                   "output projection)); FLAGS are `mediafm train` overrides")
    p.add_argument("--served", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="also evaluate every variant with these inference-only settings (copy_span, copy_wide, "
                   "sharp_span), e.g. copy_span=8 (repeat); finished runs are evaluated again, not trained again")
    p.add_argument("--out", default="bench-out/worlds", help="work dir: corpora, runs, reports, worlds.md/json/png")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a 2-core machine shared with other work, 2 threads spin "
                   "against each other; a 600-step run took 4.5 min instead of ~40 s)")
    p.add_argument("--collect", action="store_true",
                   help="train nothing: rebuild the table from the (world, seed) runs already finished in --out "
                   "(a rerun without it resumes: finished ones are read back, the rest run); the variants, their model size "
                   "and steps come from the runs' files, the corpus sizes from OUT/worlds.json")
    args = p.parse_args(argv)
    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    from trainer.evaluate import parse_run

    for x in args.served:  # refused now, not after the first training
        try:
            parse_run(f"run@{x}")
        except ValueError as e:
            raise SystemExit(f"--served {x}: {e}") from None

    worlds = load_worlds(Path(args.worlds_file), args.worlds)
    out = Path(args.out).resolve()
    shown = vars(args).copy()  # what the table says the corpora were
    stored = json.loads((out / "worlds.json").read_text()) if args.collect and (out / "worlds.json").exists() else {}
    if stored:  # --collect: the corpora of the runs, not this command's defaults
        shown.update({k: stored["args"][k] for k in ("titles", "shots", "dims", "folds")})
    if args.collect and not args.variant:  # the variants that were trained, not this command's defaults
        variants = {run.parent.name: [] for run in sorted(out.glob("*/seed*/*/config.json"))} or parse_variants(None)
    else:
        variants = parse_variants(args.variant)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    jobs = [(w, s) for w in worlds for s in range(1, args.seeds + 1)]
    bar = tqdm(jobs, unit="run", desc="worlds x seeds", dynamic_ncols=True)
    command = " ".join(sys.argv[1:] if argv is None else argv)

    def write(done: int) -> str:  # after every (world, seed): an interrupted grid leaves its partial table
        wall = time.perf_counter() - t0
        partial = "" if done == len(jobs) else f" (PARTIAL: {done} of {len(jobs)} world x seed runs)"
        recipes = sorted({f"{v} {r}" for runs in results.values() for x in runs for v, r in x["recipe"].items()})
        md = (f"# MediaFM on the grid of worlds ({args.worlds_file}){partial}\n\n`bench/worlds.py {command}`: "
              f"trained as {'; '.join(recipes) or '-'}; {shown['titles']} titles of {shown['shots']} shots, "
              f"{shown['dims']}-d modalities, {args.seeds} seeds, {shown['folds']} folds; "
              + ("collected from finished runs" if args.collect else f"{wall / 60:.1f} min") + "\n\n"
              + tables(results, list(variants), args.seeds))
        (out / "worlds.md").write_text(md)
        (out / "worlds.json").write_text(json.dumps({"args": shown, "worlds": worlds, "variants": variants,
                                                     "seconds": wall, "done": done, "results": results}, indent=1))
        if results:
            plot_grid(results, run_names(results, list(variants)), out / "worlds.png")
        return md

    md = ""
    for world, seed in bar:
        bar.set_postfix_str(f"{world} seed {seed}")
        t = time.perf_counter()
        work = out / world / f"seed{seed}"
        r = collect(work, variants) if args.collect else one_seed(world, worlds[world], seed, variants, args, work)
        if r is None:
            continue
        results.setdefault(world, []).append(r)
        bar.write(f"{world} seed {seed}: {time.perf_counter() - t:.0f} s")
        md = write(sum(len(v) for v in results.values()))
    print(md)
    print(f"wrote {out / 'worlds.md'}, {out / 'worlds.json'}, {out / 'worlds.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
