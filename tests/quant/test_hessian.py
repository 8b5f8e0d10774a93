"""The OBS machinery GPTQ and SparseGPT share (slimkernels.quant.hessian): the input Hessian, its damped
inverse factor, dead inputs, the group-aligned column blocks and the blocked column loop."""
from __future__ import annotations

import pytest
import torch

from slimkernels.quant import gptq, hessian


def _layer(n=48, k=128, rows=512, seed=0):
    """A random layer and correlated calibration inputs X = Z A (H far from diagonal, uneven diag)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    mix = torch.randn(k, k, generator=gen) / k ** 0.5 + torch.eye(k) * 0.3
    x = (torch.randn(rows, k, generator=gen) * torch.linspace(0.2, 3, k)) @ mix
    return w, x


def _hessian(x):
    acc = hessian.HessianAccumulator(x.shape[-1])
    acc.add(x)
    return acc.hessian()


def test_hessian_accumulator_matches_direct_formula():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, 24, generator=gen)
    acc = hessian.HessianAccumulator(24)
    x[1:] = x[1:].to(torch.bfloat16).float()  # the bf16 batch below adds exactly these values
    acc.add(x[0])  # [10, 24]
    acc.add(x[1:].to(torch.bfloat16))  # [2, 10, 24] in bfloat16
    acc.add(x[1:2, :0])  # no rows: a no-op
    assert acc.count == 30
    flat = x.reshape(-1, 24)
    torch.testing.assert_close(acc.hessian(), 2 / 30 * flat.T @ flat, rtol=1e-5, atol=1e-5)
    half = hessian.HessianAccumulator(24, device="cpu", dtype=torch.float64)
    half.add(x.to(torch.float16))
    assert half.hessian().dtype == torch.float32 and half.count == 30


def test_hessian_accumulator_bad_input():
    acc = hessian.HessianAccumulator(8)
    with pytest.raises(ValueError, match="no calibration rows"):
        acc.hessian()
    with pytest.raises(ValueError, match=r"\[\.\.\., 8\]"):
        acc.add(torch.randn(4, 9))
    with pytest.raises(TypeError, match="floating-point"):
        acc.add(torch.ones(4, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="in_features"):
        hessian.HessianAccumulator(0)


def test_layer_output_error_is_the_output_mse():
    w, x = _layer(n=8, k=32, rows=64)
    wq = w + torch.randn_like(w) * 0.1
    expect = 2 / 64 * ((x @ w.T - x @ wq.T) ** 2).sum()
    assert hessian.layer_output_error(w, wq, _hessian(x)) == pytest.approx(float(expect), rel=1e-3)


def test_old_import_paths_still_work():
    # quant.gptq re-exports what moved (for one release)
    assert gptq.HessianAccumulator is hessian.HessianAccumulator
    assert gptq.layer_output_error is hessian.layer_output_error
    assert gptq._inverse_hessian_factor is hessian.inverse_hessian_factor
    assert gptq._gptq_columns is hessian.obs_columns and gptq._blocks is hessian.column_blocks
    assert gptq._prepare is hessian.prepare_obs and gptq._act_order is hessian.act_order_permutation
    assert gptq._check_gptq_args is hessian.check_obs_args and gptq._DAMP_RETRIES == hessian.DAMP_RETRIES


def test_inverse_hessian_factor():
    _, x = _layer(k=64, rows=256)
    h = _hessian(x)
    u = hessian.inverse_hessian_factor(h, 0.01, "t")
    assert u.dtype == torch.float32 and torch.equal(u, torch.triu(u))
    damped = h.double() + torch.eye(64, dtype=torch.float64) * 0.01 * h.diagonal().double().mean()
    torch.testing.assert_close(u.double().T @ u.double(), torch.linalg.inv(damped), rtol=1e-4, atol=1e-6)
    low_rank = x[:8].T @ x[:8]  # rank 8 < 64: damp=0 fails, then 0.01, ... succeeds
    assert bool(torch.isfinite(hessian.inverse_hessian_factor(low_rank, 0.0, "t")).all())
    with pytest.raises(ValueError, match="my_method: the Hessian is not positive definite"):
        hessian.inverse_hessian_factor(torch.tensor([[1.0, 1e7], [1e7, 1.0]]), 0.01, "my_method")


@pytest.mark.parametrize("k, g, block_size", [(256, 32, 128), (256, 64, 100), (256, 128, 48), (96, 96, 32), (7, 7, 128)])
def test_column_blocks_tile_and_align_with_groups(k, g, block_size):
    blocks = hessian.column_blocks(k, g, block_size)
    assert blocks[0][0] == 0 and blocks[-1][1] == k
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert all(0 < e - s <= block_size for s, e in blocks)
    for s, e in blocks:  # a group starting inside a block lies whole in it
        for start in range(s, e):
            if start % g == 0 and start != s:
                assert start + g <= e


def test_prepare_obs_and_act_order_decouple_dead_inputs():
    w, x = _layer(n=4, k=16, rows=64)
    x[:, [2, 9]] = 0
    h = _hessian(x)
    h[2, 5] = h[5, 2] = 1e-3  # a non-X^T X H with a dead diagonal: decoupled anyway
    W, hh, dead = hessian.prepare_obs(w, h, zero_dead=False)
    assert dead.nonzero().flatten().tolist() == [2, 9] and torch.equal(W, w)
    assert hh[2].tolist() == [1.0 if j == 2 else 0.0 for j in range(16)] and hh[:, 9].sum() == 1
    W0, _, _ = hessian.prepare_obs(w, h, zero_dead=True)
    assert bool((W0[:, [2, 9]] == 0).all())
    perm = hessian.act_order_permutation(hh, dead)
    assert perm[-2:].tolist() == [2, 9]
    live = hh.diagonal()[perm[:-2]]
    assert bool((live[:-1] >= live[1:]).all())


def test_obs_columns_keeping_every_column_changes_nothing():
    w, x = _layer(n=8, k=64, rows=256)
    W, h, _ = hessian.prepare_obs(w, _hessian(x), False)
    u = hessian.inverse_hessian_factor(h, 0.01, "t")
    q = hessian.obs_columns(W, u, hessian.column_blocks(64, 64, 16), lambda col, i, W1: (W1[:, i], W1[:, i]))
    assert torch.equal(q, w) and torch.equal(W, w)


def test_obs_columns_drives_a_sparsegpt_style_pruner():
    # The loop is not GPTQ-specific: prune half of each row per 32-column block by SparseGPT's
    # saliency w^2 / U_ii^2, pushing each pruned weight's error onto the columns not yet fixed.
    w, x = _layer(n=32, k=128, rows=512)
    h = _hessian(x)
    W, hh, _ = hessian.prepare_obs(w, h, False)
    u = hessian.inverse_hessian_factor(hh, 0.01, "sparse")
    mask = torch.zeros_like(W, dtype=torch.bool)

    def fix_column(col, i, W1):
        if col % 32 == 0:  # a block's first column: choose the block's mask from the current weights
            block = W1[:, i:i + 32] ** 2 / u.diagonal()[col:col + 32] ** 2
            idx = block.topk(16, dim=1, largest=False).indices
            mask[:, col:col + 32].scatter_(1, idx, True)
        keep = W1[:, i] * ~mask[:, col]
        return keep, keep

    pruned = hessian.obs_columns(W, u, hessian.column_blocks(128, 128, 32), fix_column)
    assert (pruned == 0).float().mean() == 0.5
    magnitude = w.clone()
    for s in range(0, 128, 32):
        idx = w[:, s:s + 32].abs().topk(16, dim=1, largest=False).indices
        magnitude[:, s:s + 32].scatter_(1, idx, 0.0)
    assert hessian.layer_output_error(w, pruned, h) < 0.7 * hessian.layer_output_error(w, magnitude, h)  # ~0.48


def test_check_obs_args_names_the_caller():
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"sparse: H must be a floating-point \[8, 8\]"):
        hessian.check_obs_args("sparse", w, torch.eye(4), 16, 0.01)
    with pytest.raises(ValueError, match="sparse: block_size"):
        hessian.check_obs_args("sparse", w, torch.eye(8), 0, 0.01)
    with pytest.raises(ValueError, match="sparse: damp"):
        hessian.check_obs_args("sparse", w, torch.eye(8), 16, float("inf"))
    hessian.check_obs_args("sparse", w, torch.eye(8), 16, 0.0)
