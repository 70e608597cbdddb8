"""bench/worlds.py's summary over the grid: what each count means, on a grid small enough to count by hand."""

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
