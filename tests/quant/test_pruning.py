"""One-shot pruning math (slimkernels.quant.pruning): scores, masks, allocations, SparseGPT, conv unfolding."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimkernels.quant import pruning
from slimkernels.quant.hessian import HessianAccumulator, layer_output_error
from slimkernels.quant.sparse import is_nm, pack_csr, pack_nm, row_scales_int8, unpack_csr, unpack_nm


def _layer(n=48, k=128, rows=2048, seed=0):
    """A random layer and correlated calibration inputs with uneven feature scales (rows >> K: a
    well-conditioned Hessian)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    mix = torch.randn(k, k, generator=gen) / k ** 0.5 + torch.eye(k) * 0.5
    x = (torch.randn(rows, k, generator=gen) * torch.linspace(0.2, 3, k)) @ mix
    acc = HessianAccumulator(k)
    acc.add(x)
    return w, x, acc.hessian()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77])
@pytest.mark.parametrize("shape", [(1, 7), (5, 33), (16, 64)])
def test_unstructured_masks_hit_the_exact_sparsity(sparsity, shape):
    score = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    n, k = shape
    row = pruning.unstructured_mask(score, sparsity, per="row")
    assert ((~row).sum(1) == round(sparsity * k)).all()
    layer = pruning.unstructured_mask(score, sparsity, per="layer")
    assert int((~layer).sum()) == round(sparsity * n * k)
    # the pruned entries are the lowest scores
    if (~layer).any() and layer.any():
        assert score[~layer].max() <= score[layer].min()


def test_ties_and_constant_scores_still_exact():
    score = torch.ones(4, 10)
    assert int((~pruning.unstructured_mask(score, 0.5, "layer")).sum()) == 20
    assert ((~pruning.unstructured_mask(score, 0.3, "row")).sum(1) == 3).all()


def test_global_sparsities_prune_exactly_the_lowest_entries():
    gen = torch.Generator().manual_seed(2)
    scores = [torch.rand(8, 16, generator=gen), torch.rand(4, 32, generator=gen) * 2, torch.rand(3, 5, generator=gen) * 0.5]
    total = sum(s.numel() for s in scores)
    sparsities = pruning.global_sparsities(scores, 0.6)
    masks = [pruning.unstructured_mask(s, sp, per="layer") for s, sp in zip(scores, sparsities)]
    assert sum(int((~m).sum()) for m in masks) == round(0.6 * total)
    kept = torch.cat([s[m] for s, m in zip(scores, masks)])
    pruned = torch.cat([s[~m] for s, m in zip(scores, masks)])
    assert pruned.max() <= kept.min()
    assert sparsities[2] > sparsities[0] > sparsities[1]  # lower scores lose more
    assert pruning.global_sparsities(scores, 0.0) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("pattern,m", [("2:4", 4), ("4:8", 8)])
def test_nm_masks_are_valid(pattern, m):
    w = torch.randn(9, 8 * m)
    mask = pruning.pattern_mask(pruning.magnitude_score(w), pattern)
    assert is_nm(w * mask, m) and int(mask.sum()) == w.numel() // 2
    with pytest.raises(ValueError, match=f"divisible by {m}"):
        pruning.pattern_mask(torch.rand(3, m + 2), pattern)


def test_block_mask_prunes_whole_tiles():
    score = torch.rand(32, 12, generator=torch.Generator().manual_seed(3))
    mask = pruning.block_mask(score, 0.5, (16, 2))
    tiles = mask.reshape(2, 16, 6, 2).permute(0, 2, 1, 3).reshape(12, -1)
    assert ((tiles.all(1)) | (~tiles.any(1))).all() and int((~tiles.all(1)).sum()) == 6
    with pytest.raises(ValueError, match="must divide"):
        pruning.block_mask(score, 0.5, (5, 1))


def test_wanda_ranks_by_weight_times_input_norm():
    w = torch.tensor([[1.0, 0.5, 2.0, 0.1]])
    norm = torch.tensor([1.0, 10.0, 0.1, 1.0])  # |w| * ||x|| = 1, 5, 0.2, 0.1
    keep = pruning.unstructured_mask(pruning.wanda_score(w, norm), 0.5)
    assert keep.tolist() == [[True, True, False, False]]
    assert pruning.unstructured_mask(pruning.magnitude_score(w), 0.5).tolist() == [[True, False, True, False]]
    with pytest.raises(ValueError, match="input_norm must be a \\[4\\]"):
        pruning.wanda_score(w, torch.ones(3))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8", "block"])
def test_sparsegpt_beats_magnitude_and_wanda(pattern):
    w, x, H = _layer()
    block = (16, 1) if pattern == "block" else None
    norm = x.norm(dim=0)
    magnitude = w * pruning.pattern_mask(pruning.magnitude_score(w), pattern, 0.5, block=block)
    wanda = w * pruning.pattern_mask(pruning.wanda_score(w, norm), pattern, 0.5, block=block)
    pruned = pruning.sparsegpt_prune(w, H, 0.5, pattern, block_size=32, block=block)
    err = layer_output_error(w, pruned, H)
    assert err < 0.9 * layer_output_error(w, wanda, H) and err < layer_output_error(w, magnitude, H)
    assert float((pruned == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)
    if pattern in ("2:4", "4:8"):
        assert is_nm(pruned, pruning.NM_PATTERNS[pattern])


@pytest.mark.parametrize("per", ["row", "layer"])
def test_sparsegpt_exact_count_with_odd_sparsity(per):
    w, _, H = _layer(n=10, k=50)
    pruned = pruning.sparsegpt_prune(w, H, 0.37, block_size=16, per=per)
    zeros = (pruned == 0).sum(1)
    if per == "row":
        assert (zeros == round(0.37 * 50)).all()
    else:
        assert int(zeros.sum()) == round(0.37 * 500)


def test_sparsegpt_int8_values_lie_on_the_packing_grid():
    w, _, H = _layer(n=24, k=64)
    for pattern, m in [("unstructured", None), ("2:4", 4)]:
        q = pruning.sparsegpt_prune(w, H, 0.5, pattern, values="int8")
        codes = q / row_scales_int8(q)[:, None]
        assert (codes - codes.round()).abs().max() < 1e-3 and codes.abs().max() <= 127 + 1e-3
        torch.testing.assert_close(row_scales_int8(q), row_scales_int8(w))  # the float weight's grid, kept
        unpacked = unpack_csr(*pack_csr(q, torch.int8), k=64) if m is None else unpack_nm(*pack_nm(q, 4, torch.int8), 4, 64)
        torch.testing.assert_close(unpacked, q, rtol=1e-5, atol=1e-6)  # packing does not re-round
        # quantizing as well costs a little over pruning alone, far less than rounding the pruned weight afresh
        float_only = pruning.sparsegpt_prune(w, H, 0.5, pattern)
        assert layer_output_error(w, q, H) < 1.2 * layer_output_error(w, float_only, H)


def test_sparsegpt_dead_inputs_and_bad_arguments():
    w, x, _ = _layer(n=8, k=32, rows=256)
    x[:, 5] = 0  # a dead input: decoupled, pruned by magnitude
    acc = HessianAccumulator(32)
    acc.add(x)
    pruned = pruning.sparsegpt_prune(w, acc.hessian(), 0.5)
    assert torch.isfinite(pruned).all() and ((pruned == 0).sum(1) == 16).all()
    H = acc.hessian()
    with pytest.raises(ValueError, match="sparsity must be a number in \\[0, 1\\]"):
        pruning.sparsegpt_prune(w, H, 1.5)
    assert not pruning.sparsegpt_prune(w, H, 1.0).any()  # a whole layer may go (an allocation's choice)
    with pytest.raises(ValueError, match="pattern must be one of"):
        pruning.sparsegpt_prune(w, H, 0.5, "3:4")
    with pytest.raises(ValueError, match="values must be None or 'int8'"):
        pruning.sparsegpt_prune(w, H, 0.5, values="int4")
    with pytest.raises(ValueError, match="H must be"):
        pruning.sparsegpt_prune(w, H[:4, :4], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        pruning.sparsegpt_prune(torch.full((2, 32), float("nan")), H, 0.5)
    for bad in (-0.1, 1.01, float("nan"), "half", True):
        with pytest.raises(ValueError, match="sparsity"):
            pruning.unstructured_mask(torch.rand(2, 4), bad)


def test_owl_keeps_the_mean_and_spares_outlier_layers():
    sizes = [100, 100, 200, 50]
    s = pruning.owl_sparsities([0.01, 0.05, 0.02, 0.03], sizes, 0.6, 0.1)
    mean = sum(a * b for a, b in zip(s, sizes)) / sum(sizes)
    assert mean == pytest.approx(0.6, abs=1e-9)
    assert s[1] < s[3] < s[2] < s[0]  # most outliers -> least pruned
    assert max(s) - min(s) == pytest.approx(0.2)
    assert pruning.owl_sparsities([0.1, 0.1], [3, 4], 0.5, 0.1) == [0.5, 0.5]
    score = torch.ones(10, 10)
    score[0, 0] = 100.0
    assert pruning.outlier_ratio(score, 5.0) == 0.01


@pytest.mark.parametrize("groups,stride,padding,dilation", [(1, 1, 0, 1), (1, 2, 1, 1), (2, 1, 2, 2), (4, 2, 1, 1)])
def test_conv_unfolding_matches_conv2d(groups, stride, padding, dilation):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 9, 7, generator=gen)
    weight = torch.randn(12, 8 // groups, 3, 2, generator=gen)
    ref = F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups)
    rows = pruning.unfold_conv_input(x, (3, 2), stride, padding, dilation, groups)  # [g, B*L, Kg]
    mats = pruning.conv_weight_groups(weight, groups)  # [g, Cout/g, Kg]
    out = torch.einsum("grk,gnk->rgn", rows, mats)  # [B*L, g, Cout/g]
    b, cout, oh, ow = ref.shape
    torch.testing.assert_close(out.reshape(b, oh * ow, cout).transpose(1, 2).reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(pruning.conv_weight_from_groups(mats, weight.shape), weight)
