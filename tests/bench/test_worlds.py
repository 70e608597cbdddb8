"""bench/worlds.py's summary over the grid: what each count means, on a grid small enough to count by hand."""

import json

from scipy import stats

TASKS = ("ad_relevancy", "popularity", "tone", "genre", "retrieval")


def _seed(ours: dict[str, float]) -> dict:
    base = {t: 0.4 for t in TASKS}
    return {"probes": {"concat": {t: 0.5 for t in TASKS}, "avg-k3": dict(base), "avg-k8": {**base, "genre": 0.6},
                       "clip+next12": dict(base), "m:context-output": ours}, "losses": {}}


def test_grid_summary_counts_each_cell_once_on_the_mean_and_pairs_seeds_for_the_every_seed_verdict(bench_script):
    worlds = bench_script("worlds")
    results = {"w": [
        # ads above everything; popularity below concat on the mean (0.485) but not in seed 2; tone below it in
        # both seeds; genre above concat, below avg-k8; retrieval level with concat (counts as at or above it)
        _seed({"ad_relevancy": 0.6, "popularity": 0.45, "tone": 0.45, "genre": 0.55, "retrieval": 0.5}),
        _seed({"ad_relevancy": 0.6, "popularity": 0.52, "tone": 0.45, "genre": 0.55, "retrieval": 0.5}),
    ]}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in worlds.grid_summary(results, ["m"])}
    cells = [c.strip() for c in rows["m:context-output"].strip("|").split("|")]
    # representation, cells, at or above concat, below it in every seed, above avg-k8, above all four, mean ratio
    assert cells[:7] == ["m:context-output", "5", "3", "1", "4", "1", "1.034"], cells
    assert cells[7] == "1.20 / 0.97 / 0.90 / 1.10 / 1.00"
    assert [c.strip() for c in rows["avg-k8"].strip("|").split("|")][2:6] == ["1", "4", "-", "0"]  # at or above concat on genre only


def test_the_grid_plot_draws_each_cell_as_its_ratio_to_concat_and_marks_the_paired_losses(bench_script, tmp_path):
    worlds = bench_script("worlds")
    results = {"w": [
        _seed({"ad_relevancy": 0.6, "popularity": 0.45, "tone": 0.45, "genre": 0.55, "retrieval": 0.5}),
        _seed({"ad_relevancy": 0.6, "popularity": 0.52, "tone": 0.45, "genre": 0.55, "retrieval": 0.5}),
    ], "v": [_seed({"ad_relevancy": 0.4, "popularity": 0.5, "tone": 0.6, "genre": 0.5, "retrieval": 0.55})]}
    drawn = worlds.plot_grid(results, ["m"], tmp_path / "worlds.png")
    assert list(drawn) == ["avg-k3", "avg-k8", "clip+next12", "m:context-output"]  # no context+input row here
    ratio, below = drawn["m:context-output"]
    assert ratio.round(3).tolist() == [[1.2, 0.97, 0.9, 1.1, 1.0], [0.8, 1.0, 1.2, 1.0, 1.1]]
    # popularity in w is below concat on the mean only (seed 2 is above it): not marked; tone is below in both
    assert below.tolist() == [[False, False, True, False, False], [True, False, False, False, False]]
    assert drawn["avg-k8"][0][0].round(3).tolist() == [0.8, 0.8, 0.8, 1.2, 0.8]
    assert (tmp_path / "worlds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_with_three_seeds_or_more_the_plot_marks_what_the_paired_test_calls_not_what_every_seed_shows(bench_script,
                                                                                                      tmp_path):
    worlds = bench_script("worlds")
    # five seeds of one world: tone 0.05 below concat in four seeds and 0.001 above in the fifth (a steady loss the
    # t-test calls); popularity below in every seed, by 0.001 to 0.1 (too uneven for five seeds to call)
    tone = (-0.05, -0.05, -0.05, -0.05, 0.001)
    popularity = (-0.001, -0.05, -0.1, -0.002, -0.08)
    results = {"w": [_seed({"ad_relevancy": 0.6, "popularity": 0.5 + p, "tone": 0.5 + t, "genre": 0.55,
                            "retrieval": 0.5}) for t, p in zip(tone, popularity, strict=True)]}
    assert worlds.paired_verdict(results, "w", "m:context-output", "concat", "tone") == -1
    assert worlds.below_every_seed(results, "w", "m:context-output", "popularity")
    _, marked = worlds.plot_grid(results, ["m"], tmp_path / "worlds.png")["m:context-output"]
    assert marked.tolist() == [[False, False, True, False, False]]


def _pairs(xs: list[float], refs: list[float]) -> dict:
    """One world, a seed per pair: the representation `m:context-output` at x, concat at ref."""
    return {"w": [{"probes": {"concat": {"tone": r}, "m:context-output": {"tone": x}}} for x, r in zip(xs, refs, strict=True)]}


def test_the_paired_verdict_calls_a_steady_gap_and_not_a_large_mean_that_the_seeds_do_not_agree_on(bench_script):
    worlds = bench_script("worlds")
    corpora = [0.30, 0.50, 0.70, 0.40]  # the corpus draw moves both rows far more than the gap between them
    steady = _pairs([c - 0.01 + d for c, d in zip(corpora, (0.001, -0.001, 0.0, 0.0005), strict=True)], corpora)
    assert worlds.paired_verdict(steady, "w", "m:context-output", "concat", "tone") == -1
    assert worlds.paired_verdict(steady, "w", "concat", "m:context-output", "tone") == 1
    # unpaired, the same numbers are nowhere near a verdict: the spread of the seeds is 15x the gap
    ours = [r["probes"]["m:context-output"]["tone"] for r in steady["w"]]
    assert stats.ttest_ind(ours, corpora, equal_var=False).pvalue > 0.5
    wild = _pairs([c + d for c, d in zip(corpora, (0.10, -0.06, 0.09, -0.05), strict=True)], corpora)  # mean +0.02, signs split
    assert worlds.paired_verdict(wild, "w", "m:context-output", "concat", "tone") == 0
    two = _pairs([0.29, 0.49], [0.30, 0.50])  # below in both seeds, but two seeds test nothing
    assert worlds.paired_verdict(two, "w", "m:context-output", "concat", "tone") == 0
    assert worlds.below_every_seed(two, "w", "m:context-output", "tone")


def test_the_summary_and_the_variant_table_count_cells_by_the_paired_verdict(bench_script):
    worlds = bench_script("worlds")
    noise = (0.0, 0.1, -0.1)  # the corpus draw, the same for every row of a seed

    def seed(i: int, m: dict, v: dict) -> dict:
        def row(xs: dict) -> dict:
            return {t: xs.get(t, 0.5) + noise[i] + 0.001 * i for t in TASKS}
        base = {"concat": row({}), "avg-k3": row({t: 0.45 for t in TASKS}), "avg-k8": row({"genre": 0.6}),
                "clip+next12": row({t: 0.4 for t in TASKS})}
        return {"probes": {**base, "m:context-output": row(m), "v:context-output": row(v)}, "losses": {}}

    m = {"ad_relevancy": 0.7, "popularity": 0.52, "tone": 0.45, "genre": 0.55}  # retrieval equal to concat
    v = {**m, "ad_relevancy": 0.71, "tone": 0.4}
    results = {"w": [seed(i, m, v) for i in range(3)]}
    rows = {line.split(" | ")[0].lstrip("| "): [c.strip() for c in line.strip("|").split("|")]
            for line in worlds.grid_summary(results, ["m", "v"])}
    # against concat: clearly above on ads, popularity and genre, below on tone, retrieval a tie (equal seed for
    # seed: no verdict); against avg-k8 (0.6 on genre): above on ads and popularity, below on tone and genre;
    # so above all four baselines on ads and popularity, below one of them on tone and genre
    assert rows["m:context-output"][8:] == ["3 / 1", "2 / 2", "2 / 2"], rows["m:context-output"]
    assert rows["avg-k8"][8:] == ["1 / 0", "-", "-"]
    table = worlds.variant_comparison(results, ["m", "v"])
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:6] == ["v:context-output", "m:context-output", "5", "1", "1", "3"], cells
    assert worlds.variant_comparison(results, ["m"]) == []


def test_a_variant_run_on_fewer_seeds_is_compared_on_its_own_seeds_only(bench_script, tmp_path):
    worlds = bench_script("worlds")
    # four seeds of the recipe `m`, two of the variant `v`; seeds 3-4 drew an easy corpus (every row +0.3). On the
    # two seeds it has, v is 0.02 above concat; over all four, concat's mean is far above v's.
    def seed(i: int, with_v: bool) -> dict:
        r = _seed({t: 0.51 + 0.3 * (i >= 2) for t in TASKS})
        r["probes"] = {k: {t: x + 0.3 * (i >= 2) for t, x in row.items()} if not k.startswith("m:") else row
                       for k, row in r["probes"].items()}
        if with_v:
            r["probes"]["v:context-output"] = {t: 0.52 for t in TASKS}
        return r

    results = {"w": [seed(i, with_v=i < 2) for i in range(4)]}
    assert worlds.matched_means(results, "w", ("v:context-output", "concat"), "tone") == [0.52, 0.5]
    rows = {line.split(" | ")[0].lstrip("| "): [c.strip() for c in line.strip("|").split("|")]
            for line in worlds.grid_summary(results, ["m", "v"])}
    assert rows["v:context-output"][1:4] == ["5", "5", "0"], rows["v:context-output"]  # at or above concat in all five
    assert rows["v:context-output"][6] == "1.040"
    # against the recipe on the seeds both have (0.52 / 0.51), not v's two seeds over m's four
    table = worlds.variant_comparison(results, ["m", "v"])
    assert table[2].strip("|").split("|")[-1].strip() == "1.020", table[2]
    _, marked = worlds.plot_grid(results, ["m", "v"], tmp_path / "worlds.png")["v:context-output"]
    assert not marked.any()
    row = next(line for line in worlds.tables(results, ["m", "v"], 4).splitlines() if "| v:context-output |" in line)
    assert "✗" not in row and "(n=2)" in row, row


def test_the_shot_spectrum_tells_a_near_isotropic_world_from_a_steep_one_and_the_table_shows_it(bench_script,
                                                                                                 tmp_path):
    """shot_spectrum on the two generators' corpora: mediafm/synth.py's shots are near isotropic, bench/elsewhere.py's
    (each modality a random network of the latent state) are steep; collect keeps it beside the report and the
    table prints it per world."""
    from mediafm.fusion import Layout
    from mediafm.synth import write_corpus

    worlds, elsewhere = bench_script("worlds"), bench_script("elsewhere")
    flat = write_corpus(tmp_path / "synth" / "data", n_titles=30, layout=Layout("t", video=16, audio=16, text=16,
                        title=16), seed=1, shots=(40, 80), noise=1.5, val_fraction=0.1, test_fraction=0.35)
    steep = elsewhere.write_corpus(tmp_path / "else" / "data", n_titles=30, dims=16, seed=1, shots=(40, 80),
                                   test_fraction=0.35)
    a, b = worlds.shot_spectrum(flat), worlds.shot_spectrum(steep)
    assert 1 / 48 <= a["top_share"] < b["top_share"] <= 1 and 0 < b["effective_rank"] < a["effective_rank"] <= 1, (a, b)
    assert a["effective_rank"] > 0.8 and b["effective_rank"] < 0.7, (a, b)  # measured: 0.90 and 0.58
    for work in (tmp_path / "synth", tmp_path / "else"):
        (work / "report").mkdir()
        (work / "report" / "results.json").write_text(json.dumps(
            {"results": {"concat": {t: {"mean": 0.5} for t in TASKS}}}))
    results = {"synth": [worlds.collect(tmp_path / "synth", {})], "else": [worlds.collect(tmp_path / "else", {})]}
    assert results["synth"][0]["spectrum"] == a and json.loads((tmp_path / "synth" / "report" / "spectrum.json")
                                                                .read_text()) == a
    table = worlds.tables(results, [], 1)
    assert f"| else | {b['top_share']:.3f} ± 0.000 | {b['effective_rank']:.3f} ± 0.000 |" in table, table


def test_a_seed_whose_report_lacks_a_variants_rows_is_evaluated_again_not_read_back(bench_script, tmp_path):
    """A run stopped between a variant's training and the seed's evaluation leaves a report without that variant:
    the next start evaluates the seed again (its trained runs kept) instead of reading it back as finished."""
    import argparse

    from mediafm.fusion import Layout
    from mediafm.synth import write_corpus
    from trainer.train import TrainConfig, train

    worlds = bench_script("worlds")
    work = tmp_path / "world" / "seed1"
    write_corpus(work / "data", n_titles=30, layout=Layout("t", video=8, audio=8, text=8, title=8), seed=1,
                 shots=(20, 40), val_fraction=0.1, test_fraction=0.35)
    args = argparse.Namespace(served=[], steps=2, config="tiny", dims=8, shots="20,40", titles=30, eval_seeds=1,
                              folds=3)
    first = worlds.one_seed("world", {}, 1, {"a": []}, args, work)
    assert "a:context-output" in first["probes"] and "b:context-output" not in first["probes"]
    train(work / "data", work / "b", TrainConfig(config="tiny", max_steps=2, eval_every=2, ckpt_every=2,
                                                 batch_size=4, val_batches=1, seed=1, mask_span=3), quiet=True)
    a_ckpt = (work / "a" / "checkpoints" / "step-0000002.pt").stat().st_mtime_ns
    both = worlds.one_seed("world", {}, 1, {"a": [], "b": ["--mask_span", "3"]}, args, work)
    assert {"a:context-output", "b:context-output"} <= set(both["probes"]), "b's rows made, not read back without"
    assert (work / "a" / "checkpoints" / "step-0000002.pt").stat().st_mtime_ns == a_ckpt, "a is not trained again"
    assert both["probes"]["a:context-output"] == first["probes"]["a:context-output"]
