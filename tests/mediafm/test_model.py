"""mediafm.model: masking rule, loss placement, padding, special tokens."""

import pytest
import torch

from mediafm.model import CONFIGS, HEADS, MaskedShotModel, MediaFMConfig, MediaFMEncoder, mask_positions, msm_loss
from mediafm.served_mediafm import WEIGHTS, load_encoder


def tiny(**kw) -> MediaFMConfig:
    return MediaFMConfig(**{**CONFIGS["tiny"], "fused_dim": 24, "title_dim": 8, **kw})


def test_mask_count_follows_the_documented_rounding_rule():
    lengths = torch.tensor([10, 3, 50, 1, 7, 12])
    m = mask_positions(lengths, 50, 0.2, generator=torch.Generator().manual_seed(0))
    # k = max(1, floor(0.2 * n + 0.5)): 2, 1 (0.6 -> 1), 10, 1 (at least one), 1 (1.4 -> 1), 2 (2.4 -> 2)
    assert m.sum(1).tolist() == [2, 1, 10, 1, 1, 2]


def test_mask_never_touches_padding_and_covers_every_real_shot():
    lengths = torch.tensor([5, 20])
    seen = torch.zeros(2, 20)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        m = mask_positions(lengths, 20, 0.2, generator=g)
        assert not m[0, 5:].any(), "padding masked"
        seen += m.float()
    assert (seen[0, :5] > 0).all() and (seen[1] > 0).all()
    # uniform over real shots: every position masked 20% of the time, within noise
    assert (seen[1] / 300 - 0.2).abs().max() < 0.08


def test_span_masks_keep_the_count_and_hide_runs_of_neighbours():
    """max_span > 1 (mediafm train --mask_span): the same number of masked shots per row as single-shot masks,
    never padding, every real shot reachable, and in runs: SpanBERT's lengths (Geometric(0.2) clipped to 10,
    mean 3.8) leave most masked shots next to another masked one, where single shots rarely are."""
    lengths = torch.tensor([64, 40, 5, 1, 120])
    g = torch.Generator().manual_seed(0)
    single = mask_positions(lengths, 128, 0.2, generator=g)
    seen, runs, neighbours = torch.zeros(5, 128), [], {"span": 0.0, "single": 0.0}
    for _ in range(200):
        m = mask_positions(lengths, 128, 0.2, generator=g, max_span=10)
        assert m.sum(1).tolist() == single.sum(1).tolist() == [13, 8, 1, 1, 24]
        pad = torch.arange(128)[None, :] >= lengths[:, None]
        assert not (m & pad).any(), "padding masked"
        seen += m.float()
        row = m[4].int().tolist()  # the lengths of the masked runs in the longest row
        runs += [len(r) for r in "".join(map(str, row)).split("0") if r]
        for name, mm in (("span", m[4]), ("single", mask_positions(lengths, 128, 0.2, generator=g)[4])):
            next_to = mm[1:] & mm[:-1]
            neighbours[name] += float(next_to.sum()) / float(mm.sum())
    assert (seen[:, :1] > 0).all() and (seen[4, :120] > 0).all() and (seen[0, :64] > 0).all()
    assert neighbours["span"] / 200 > 0.5 > 0.3 > neighbours["single"] / 200, neighbours
    assert max(runs) >= 8 and 2.5 < sum(runs) / len(runs), (max(runs), sum(runs) / len(runs))
    assert torch.equal(mask_positions(lengths, 128, 0.2, generator=torch.Generator().manual_seed(3), max_span=1),
                       mask_positions(lengths, 128, 0.2, generator=torch.Generator().manual_seed(3))), \
        "max_span=1 is the source's masking, draw for draw"


def test_loss_is_cosine_distance_on_masked_positions_only():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, 24), torch.randn(2, 6, 24)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1] = mask[1, 4] = True
    expected = 1 - torch.nn.functional.cosine_similarity(pred[mask], target[mask], dim=-1).mean()
    assert torch.allclose(msm_loss(pred, target, mask), expected)
    pred2 = pred.clone()
    pred2[~mask] = torch.randn_like(pred2[~mask])  # unmasked predictions do not count
    assert torch.allclose(msm_loss(pred2, target, mask), expected)


@pytest.mark.parametrize("head", HEADS)
def test_model_loss_uses_the_masked_shots_and_hides_them(head):
    torch.manual_seed(0)
    model = MaskedShotModel(tiny(head=head)).eval()
    shots, title, lengths = torch.randn(2, 10, 24), torch.randn(2, 8), torch.tensor([10, 6])
    mask = mask_positions(lengths, 10, 0.2, generator=torch.Generator().manual_seed(0))
    pred, loss = model(shots, title, lengths, mask)
    assert torch.allclose(loss, msm_loss(pred, shots, mask))
    # what is under a mask is invisible to the model: changing it changes no prediction
    hidden = shots.clone()
    hidden[mask] = torch.randn_like(hidden[mask])
    pred_b, _ = model(hidden, title, lengths, mask)
    assert torch.allclose(pred, pred_b, atol=1e-6)


@pytest.mark.parametrize("head", HEADS)
def test_padding_does_not_change_real_positions(head):
    torch.manual_seed(0)
    enc = MediaFMEncoder(tiny(head=head)).eval()
    shots, title = torch.randn(1, 7, 24), torch.randn(1, 8)
    h_short, o_short = enc(shots, title, torch.tensor([7]))
    padded = torch.cat([shots, 100 * torch.randn(1, 5, 24)], dim=1)
    h_pad, o_pad = enc(padded, title, torch.tensor([7]))
    assert torch.allclose(h_short, h_pad[:, :7], atol=1e-5) and torch.allclose(o_short, o_pad[:, :7], atol=1e-5)


def test_title_embedding_reaches_every_shot_through_global():
    torch.manual_seed(0)
    enc = MediaFMEncoder(tiny()).eval()
    shots = torch.randn(1, 5, 24)
    h1, _ = enc(shots, torch.randn(1, 8), None)
    h2, _ = enc(shots, torch.randn(1, 8), None)
    assert ((h1 - h2).abs().amax(-1) > 1e-4).all()


@pytest.mark.parametrize("norm_first", [True, False])
def test_shapes_for_both_norm_placements(norm_first):
    enc = MediaFMEncoder(tiny(norm_first=norm_first))
    h, o = enc(torch.randn(3, 9, 24), torch.randn(3, 8), torch.tensor([9, 4, 1]))
    assert h.shape == (3, 9, 64) and o.shape == (3, 9, 24)


def test_copy_head_outputs_a_weighted_mean_of_the_windows_real_shots():
    torch.manual_seed(0)
    enc = MediaFMEncoder(tiny(head="copy", copy_wide=0.0)).eval()
    title = torch.randn(1, 8)
    # one-hot shots: each output row is then the weights themselves, a distribution over the 10 shots
    _, out = enc(torch.eye(24)[:10][None], title, None)
    assert (out >= 0).all() and torch.allclose(out.sum(-1), torch.ones(1, 10), atol=1e-5)
    assert (out[..., 10:] == 0).all()
    # padding gets no weight: a window of one repeated shot returns that shot, whatever the padding holds
    v = torch.nn.functional.normalize(torch.randn(24), dim=0)
    padded = torch.cat([v.expand(1, 6, 24), 100 * torch.randn(1, 4, 24)], dim=1)
    _, out = enc(padded, title, torch.tensor([6]))
    assert torch.allclose(out[0, :6], v.expand(6, 24), atol=1e-5)


def test_wide_copy_spreads_the_same_scores_and_training_fits_the_sharp_copy(tmp_path):
    """copy_wide: the served output is the mean of the unit sharp copy and the unit copy at that temperature;
    wide=False and the masked-shot loss see the sharp copy alone; an export without the key serves it alone."""
    torch.manual_seed(0)
    cfg = tiny(copy_wide=4.0, sharp_span=0)
    enc = MediaFMEncoder(cfg).eval()
    shots, title, lengths = torch.randn(2, 10, 24), torch.randn(2, 8), torch.tensor([10, 7])
    hidden, served = enc(shots, title, lengths)
    scores = enc.copy_q(hidden) @ enc.copy_k(hidden).transpose(1, 2) / cfg.hidden**0.5
    scores[1, :, 7:] = float("-inf")  # padding
    unit = torch.nn.functional.normalize
    sharp, broad = torch.softmax(scores, -1) @ shots, torch.softmax(scores / 4.0, -1) @ shots
    assert torch.allclose(served, (unit(sharp, dim=-1) + unit(broad, dim=-1)) / 2, atol=1e-5)
    assert torch.allclose(enc(shots, title, lengths, wide=False)[1], sharp, atol=1e-5)
    # a window served padded in a batch (Triton) gives its real shots what it gives them alone (trainer/evaluate.py)
    assert torch.allclose(served[1, :7], enc(shots[1:, :7], title[1:], None)[1][0], atol=1e-5)
    real = torch.arange(10)[None, :] < lengths[:, None]  # sharp_span 0: the whole-window copy handed in is reused
    trained = enc(shots, title, lengths, wide=False)[1]
    assert torch.allclose(enc.served_copy(hidden, shots, real, trained=trained), served, atol=1e-6)
    assert not torch.allclose(unit(sharp, dim=-1), unit(broad, dim=-1), atol=1e-2), "the wide copy adds nothing"
    # the loss: the same with and without a wide copy
    model = MaskedShotModel(cfg).eval()
    sharp_only = MaskedShotModel(tiny(copy_wide=0.0)).eval()
    sharp_only.load_state_dict(model.state_dict())
    mask = mask_positions(lengths, 10, 0.2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model(shots, title, lengths, mask)[1], sharp_only(shots, title, lengths, mask)[1])
    # an export from before copy_wide: the sharp copy alone, as it was served then
    old = {k: v for k, v in cfg.to_dict().items() if k != "copy_wide"}
    torch.save({"config": old, "encoder": enc.state_dict()}, tmp_path / WEIGHTS)
    loaded = load_encoder(tmp_path)
    assert loaded.cfg.copy_wide == 0.0 and torch.allclose(loaded(shots, title, lengths)[1], sharp, atol=1e-5)


def test_copy_spans_keep_each_served_copy_within_its_reach_whatever_the_window(tmp_path):
    """copy_span and sharp_span: the served wide and sharp copies of a shot mix only the shots at most that many
    positions away (the same scores, cut to that band); padding that sees no real shot within reach stays finite;
    training (wide=False) fits the sharp copy over the whole window; a model without copy_wide serves its sharp
    copy within sharp_span; an export from before the keys reaches over the whole window, as it was served then."""
    torch.manual_seed(0)
    cfg = tiny(copy_wide=4.0, copy_span=3, sharp_span=2)
    enc = MediaFMEncoder(cfg).eval()
    shots, title, lengths = torch.randn(2, 20, 24), torch.randn(2, 8), torch.tensor([20, 9])
    hidden, served = enc(shots, title, lengths)
    scores = enc.copy_q(hidden) @ enc.copy_k(hidden).transpose(1, 2) / cfg.hidden**0.5
    scores[1, :, 9:] = float("-inf")  # padding
    apart = (torch.arange(20)[:, None] - torch.arange(20)[None, :]).abs()
    unit = torch.nn.functional.normalize
    sharp = torch.softmax(scores.masked_fill(apart > 2, float("-inf")), -1) @ shots
    broad = torch.softmax((scores / 4.0).masked_fill(apart > 3, float("-inf")), -1) @ shots
    expect = (unit(sharp, dim=-1) + unit(broad, dim=-1)) / 2
    assert torch.allclose(served[0], expect[0], atol=1e-5) and torch.allclose(served[1, :9], expect[1, :9], atol=1e-5)
    assert torch.allclose(served[1, :9], enc(shots[1:, :9], title[1:], None)[1][0], atol=1e-5), "padded != alone"
    trained = enc(shots, title, lengths, wide=False)[1]  # the loss's sharp copy: the whole window
    assert torch.allclose(trained[0], (torch.softmax(scores, -1) @ shots)[0], atol=1e-5)
    real = torch.arange(20)[None, :] < lengths[:, None]
    # handed the whole-window copy (trainer/evaluate.py), the served one is still cut to sharp_span
    assert torch.allclose(enc.served_copy(hidden, shots, real, trained=trained), served, atol=1e-6)
    alone = MediaFMEncoder(tiny(copy_wide=0.0, sharp_span=2)).eval()
    alone.load_state_dict(enc.state_dict())
    assert torch.allclose(alone(shots, title, lengths)[1][0], sharp[0], atol=1e-5)
    # the same hidden states, shots 10.. changed: what cannot reach them is unchanged
    moved = shots.clone()
    moved[:, 10:] = 100 * torch.randn(2, 10, 24)
    before, after = enc.served_copy(hidden, shots, real), enc.served_copy(hidden, moved, real)
    assert torch.allclose(before[:, :7], after[:, :7], atol=1e-6)  # shots 0..6 reach at most shot 9
    assert not torch.allclose(before[0, 7:10], after[0, 7:10], atol=1e-3)  # shots 7..9 reach shot 10
    assert torch.isfinite(served).all()  # row 1's padding shots 13..19 see no real shot within reach
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("copy_span", "sharp_span")}
    torch.save({"config": old, "encoder": enc.state_dict()}, tmp_path / WEIGHTS)
    loaded = load_encoder(tmp_path)
    assert loaded.cfg.copy_span == 0 and loaded.cfg.sharp_span == 0
    whole, moved_whole = loaded.served_copy(hidden, shots, real), loaded.served_copy(hidden, moved, real)
    assert not torch.allclose(whole[:, :7], moved_whole[:, :7], atol=1e-3), "an old export reaches the whole window"
    for key in ("copy_span", "sharp_span"):
        with pytest.raises(ValueError, match=f"{key}=-1: shots either side"):
            tiny(**{key: -1})


def test_copy_per_modality_mixes_each_slice_with_its_own_scores(tmp_path):
    """copy_per_modality: each modality slice of the output is a softmax-weighted mean of the same slice of the
    window's real shots, with a query and key of its own (not one mix for the whole vector); spans and the wide
    copy apply to every slice; the export loads and serves the same output."""
    torch.manual_seed(0)
    slices = [[0, 8], [8, 20], [20, 24]]
    cfg = tiny(copy_per_modality=True, modalities=slices, copy_wide=4.0, copy_span=3, sharp_span=2)
    enc = MediaFMEncoder(cfg).eval()
    shots, title, lengths = torch.randn(2, 12, 24), torch.randn(2, 8), torch.tensor([12, 7])
    hidden, served = enc(shots, title, lengths)
    H, unit = cfg.hidden, torch.nn.functional.normalize
    apart = (torch.arange(12)[:, None] - torch.arange(12)[None, :]).abs()
    sharp, broad, trained = [], [], []
    for m, (lo, hi) in enumerate(slices):
        q, k = enc.copy_q(hidden)[..., m * H:(m + 1) * H], enc.copy_k(hidden)[..., m * H:(m + 1) * H]
        scores = q @ k.transpose(1, 2) / H**0.5
        scores[1, :, 7:] = float("-inf")  # padding
        sharp.append(torch.softmax(scores.masked_fill(apart > 2, float("-inf")), -1) @ shots[..., lo:hi])
        broad.append(torch.softmax((scores / 4.0).masked_fill(apart > 3, float("-inf")), -1) @ shots[..., lo:hi])
        trained.append(torch.softmax(scores, -1) @ shots[..., lo:hi])
    sharp, broad, trained = (torch.cat(x, -1) for x in (sharp, broad, trained))
    expect = (unit(sharp, dim=-1) + unit(broad, dim=-1)) / 2
    assert torch.allclose(served[0], expect[0], atol=1e-5) and torch.allclose(served[1, :7], expect[1, :7], atol=1e-5)
    assert torch.allclose(enc(shots, title, lengths, wide=False)[1][0], trained[0], atol=1e-5)
    assert torch.allclose(served[1, :7], enc(shots[1:, :7], title[1:], None)[1][0], atol=1e-5), "padded != alone"
    # the slices' mixes differ: one set of weights for the whole vector would not give this output
    whole = torch.softmax(enc.copy_q(hidden)[..., :H] @ enc.copy_k(hidden)[..., :H].transpose(1, 2) / H**0.5, -1)
    assert not torch.allclose((whole @ shots)[0, :, 8:], trained[0, :, 8:], atol=1e-3)
    torch.save({"config": cfg.to_dict(), "encoder": enc.state_dict()}, tmp_path / WEIGHTS)
    loaded = load_encoder(tmp_path)
    assert loaded.cfg.modalities == slices and torch.allclose(loaded(shots, title, lengths)[1], served, atol=1e-6)
    # trained by masked shot modeling like the whole-vector copy
    model = MaskedShotModel(cfg)
    mask = mask_positions(lengths, 12, 0.2, generator=torch.Generator().manual_seed(0))
    model(shots, title, lengths, mask)[1].backward()
    assert model.encoder.copy_q.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kw, match", [
    (dict(copy_per_modality=True), r"modalities=\[\] must tile \[0, fused_dim=24\)"),
    (dict(copy_per_modality=True, modalities=[[0, 8], [9, 24]]), "must tile"),
    (dict(copy_per_modality=True, modalities=[[0, 8], [8, 20]]), "must tile"),
    (dict(copy_per_modality=True, modalities=[[0, 24]], head="projection"), "copy_per_modality needs head='copy'"),
])
def test_copy_per_modality_needs_slices_that_tile_the_fused_vector(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_copy_mix_adds_score_sets_with_a_learnt_gate_per_shot(tmp_path):
    """copy_mix K: K softmax distributions over the window, from K query/key pairs, mixed per shot by a softmax
    gate of its hidden state (zero at start: an even mix), so the output is a convex mix of real shots; spans and
    the wide copy apply to every set; the export loads and serves the same output; the gate trains."""
    torch.manual_seed(0)
    cfg = tiny(copy_mix=3, copy_wide=4.0, copy_span=3, sharp_span=2)
    enc = MediaFMEncoder(cfg).eval()
    assert torch.equal(enc.copy_gate.weight, torch.zeros(3, cfg.hidden))
    with torch.no_grad():
        enc.copy_gate.weight.normal_(std=0.5)  # a trained gate: shots mix their sets unevenly
    shots, title, lengths = torch.randn(2, 12, 24), torch.randn(2, 8), torch.tensor([12, 7])
    hidden, served = enc(shots, title, lengths)
    H, unit = cfg.hidden, torch.nn.functional.normalize
    apart = (torch.arange(12)[:, None] - torch.arange(12)[None, :]).abs()
    gate = torch.softmax(enc.copy_gate(hidden), -1)  # (B, T, 3)
    assert (gate.std(-1) > 1e-3).all(), "the gate should not be even here"
    sharp = broad = trained = 0
    for m in range(3):
        q, k = enc.copy_q(hidden)[..., m * H:(m + 1) * H], enc.copy_k(hidden)[..., m * H:(m + 1) * H]
        scores = q @ k.transpose(1, 2) / H**0.5
        scores[1, :, 7:] = float("-inf")  # padding
        g = gate[..., m:m + 1]
        sharp = sharp + g * (torch.softmax(scores.masked_fill(apart > 2, float("-inf")), -1) @ shots)
        broad = broad + g * (torch.softmax((scores / 4.0).masked_fill(apart > 3, float("-inf")), -1) @ shots)
        trained = trained + g * (torch.softmax(scores, -1) @ shots)
    expect = (unit(sharp, dim=-1) + unit(broad, dim=-1)) / 2
    assert torch.allclose(served[0], expect[0], atol=1e-5) and torch.allclose(served[1, :7], expect[1, :7], atol=1e-5)
    assert torch.allclose(enc(shots, title, lengths, wide=False)[1][0], trained[0], atol=1e-5)
    assert torch.allclose(served[1, :7], enc(shots[1:, :7], title[1:], None)[1][0], atol=1e-5), "padded != alone"
    # the gate is uneven, so an even mix fails the checks above; one set alone gives another output
    first = torch.softmax(enc.copy_q(hidden)[..., :H] @ enc.copy_k(hidden)[..., :H].transpose(1, 2) / H**0.5, -1)
    assert not torch.allclose((first @ shots)[0], trained[0], atol=1e-3)
    torch.save({"config": cfg.to_dict(), "encoder": enc.state_dict()}, tmp_path / WEIGHTS)
    loaded = load_encoder(tmp_path)
    assert loaded.cfg.copy_mix == 3 and torch.allclose(loaded(shots, title, lengths)[1], served, atol=1e-6)
    model = MaskedShotModel(cfg)
    mask = mask_positions(lengths, 12, 0.2, generator=torch.Generator().manual_seed(0))
    model(shots, title, lengths, mask)[1].backward()
    assert model.encoder.copy_gate.weight.grad.abs().sum() > 0
    for kw, match in ((dict(copy_mix=0), "copy_mix=0"), (dict(copy_mix=2, head="projection"), "needs head='copy'"),
                      (dict(copy_mix=2, copy_per_modality=True, modalities=[[0, 24]]), "without copy_per_modality")):
        with pytest.raises(ValueError, match=match):
            tiny(**kw)


def test_named_sizes_train_the_copy_head_and_old_exports_load_as_projection(tmp_path):
    assert {c["head"] for c in CONFIGS.values()} == {"copy"}
    # an export written before `head` existed has no such key: it is the source's projection head
    torch.manual_seed(0)
    cfg = tiny(head="projection", copy_wide=0.0)
    enc = MediaFMEncoder(cfg).eval()
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("head", "copy_wide")}
    torch.save({"config": old, "encoder": enc.state_dict()}, tmp_path / WEIGHTS)
    loaded = load_encoder(tmp_path)
    shots, title = torch.randn(2, 5, 24), torch.randn(2, 8)
    assert loaded.cfg.head == "projection"
    assert torch.allclose(loaded(shots, title, None)[1], enc(shots, title, None)[1])


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="head='linear'; choose one of projection, copy"):
        tiny(head="linear")
    with pytest.raises(ValueError, match="hidden=65 is not divisible by n_heads=4"):
        tiny(hidden=65)
    with pytest.raises(ValueError, match="mask_rate must be in"):
        tiny(mask_rate=1.5)
    with pytest.raises(ValueError, match="copy_wide=-1.0: a temperature > 0, or 0 for none"):
        tiny(copy_wide=-1.0)


def test_bert_replacement_rule_keeps_or_swaps_some_chosen_shots():
    """mask_keep / mask_random: of the chosen shots, some stay as they are, some become another real shot."""
    torch.manual_seed(0)
    cfg = MediaFMConfig(fused_dim=16, title_dim=8, hidden=32, n_layers=1, n_heads=4, max_shots=64, dropout=0.0,
                        mask_keep=0.3, mask_random=0.3)
    model = MaskedShotModel(cfg)
    seen = {}
    model.encoder.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0].clone()))  # returns None
    shots = torch.nn.functional.normalize(torch.randn(4, 64, 16), dim=-1)
    lengths = torch.tensor([64, 64, 40, 64])
    mask = mask_positions(lengths, 64, 0.5)
    _, loss = model(shots, torch.randn(4, 8), lengths, mask)
    x = seen["x"]
    is_token = (x == model.mask_token).all(-1)
    is_same = (x == shots).all(-1)
    assert not (is_token & ~mask).any() and is_same[~mask].all(), "unchosen shots are untouched"
    n = int(mask.sum())
    token, same = int((is_token & mask).sum()), int((is_same & mask).sum())
    swapped = n - token - same
    assert abs(token / n - 0.4) < 0.12 and abs(same / n - 0.3) < 0.12 and abs(swapped / n - 0.3) < 0.12
    real = (torch.arange(64)[None, :] < lengths[:, None])
    pool = shots[real]
    for v in x[mask & ~is_token & ~is_same]:  # a swapped shot is some real shot of the batch, never padding
        assert (pool == v).all(-1).any()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="mask_keep"):
        MediaFMConfig(mask_keep=0.6, mask_random=0.5)


def test_entmax_copy_gives_exact_zeros_trains_and_serves_the_same_after_export(tmp_path):
    """copy_norm="entmax15": the copy's weights are 1.5-entmax of the same scores (sharp copy, and the wide copy
    at temperature copy_wide within copy_span), so the output is a convex mix of a few real shots, with exact
    zeros where a softmax gives every shot some weight; the export loads and serves the same output; gradients
    reach the scores; a config saved before the option existed loads as softmax."""
    from entmax import entmax15

    torch.manual_seed(0)
    cfg = tiny(copy_norm="entmax15", copy_wide=4.0, copy_span=3, sharp_span=2)
    enc = MediaFMEncoder(cfg).eval()
    with torch.no_grad():  # trained scores are far from flat; at init every shot looks alike
        enc.copy_q.weight.normal_(std=0.5)
        enc.copy_k.weight.normal_(std=0.5)
    shots, title, lengths = torch.randn(2, 12, 24), torch.randn(2, 8), torch.tensor([12, 7])
    hidden, served = enc(shots, title, lengths)
    H, unit = cfg.hidden, torch.nn.functional.normalize
    apart = (torch.arange(12)[:, None] - torch.arange(12)[None, :]).abs()
    scores = enc.copy_q(hidden) @ enc.copy_k(hidden).transpose(1, 2) / H**0.5
    scores[1, :, 7:] = float("-inf")  # padding
    trained_w = entmax15(scores, dim=-1)
    assert (trained_w[0] == 0).float().mean() > 0.3, "entmax should leave most shots out of a sharp copy"
    assert (torch.softmax(scores, -1)[0] > 0).all()
    assert torch.allclose(trained_w.sum(-1)[0], torch.ones(12)) and (trained_w[1, :, 7:] == 0).all()
    # out of reach: -1e9, as the model does (a padding row whose reach holds only padding stays a number)
    sharp = entmax15(scores.masked_fill(apart > 2, -1e9), dim=-1) @ shots
    broad = entmax15((scores / 4.0).masked_fill(apart > 3, -1e9), dim=-1) @ shots
    expect = (unit(sharp, dim=-1) + unit(broad, dim=-1)) / 2
    assert torch.allclose(served[0], expect[0], atol=1e-5) and torch.allclose(served[1, :7], expect[1, :7], atol=1e-5)
    assert torch.allclose(enc(shots, title, lengths, wide=False)[1][0], (trained_w @ shots)[0], atol=1e-5)
    assert torch.allclose(served[1, :7], enc(shots[1:, :7], title[1:], None)[1][0], atol=1e-5), "padded != alone"
    softmax_enc = MediaFMEncoder(tiny(copy_wide=4.0, copy_span=3, sharp_span=2)).eval()
    softmax_enc.load_state_dict(enc.state_dict())
    assert not torch.allclose(softmax_enc(shots, title, lengths)[1][0], served[0], atol=1e-3)
    torch.save({"config": cfg.to_dict(), "encoder": enc.state_dict()}, tmp_path / WEIGHTS)
    loaded = load_encoder(tmp_path)
    assert loaded.cfg.copy_norm == "entmax15" and torch.allclose(loaded(shots, title, lengths)[1], served, atol=1e-6)
    old = {k: v for k, v in cfg.to_dict().items() if k != "copy_norm"}
    torch.save({"config": old, "encoder": enc.state_dict()}, tmp_path / WEIGHTS)
    assert load_encoder(tmp_path).cfg.copy_norm == "softmax"
    model = MaskedShotModel(cfg)
    mask = mask_positions(lengths, 12, 0.2, generator=torch.Generator().manual_seed(0))
    model(shots, title, lengths, mask)[1].backward()
    assert model.encoder.copy_q.weight.grad.abs().sum() > 0
    for kw, match in ((dict(copy_norm="sparsemax"), "copy_norm='sparsemax'"),
                      (dict(copy_norm="entmax15", head="projection"), "needs head='copy'")):
        with pytest.raises(ValueError, match=match):
            tiny(**kw)
