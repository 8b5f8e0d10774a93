"""GPTQ int4 (slimkernels.quant.gptq): it must beat RTN on the objective it minimizes, stay in the
canonical int4 format, and survive degenerate Hessians."""
from __future__ import annotations

import pytest
import torch

from slimkernels.quant import gptq, hessian, int4
from slimkernels.testing import DEVICES


def _layer(n=48, k=128, rows=512, seed=0, device="cpu"):
    """A random layer and correlated calibration inputs X = Z A (H far from diagonal, uneven diag)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    mix = torch.randn(k, k, generator=gen) / k ** 0.5 + torch.eye(k) * 0.3
    x = (torch.randn(rows, k, generator=gen) * torch.linspace(0.2, 3, k)) @ mix
    return w.to(device), x.to(device)


def _hessian(x):
    acc = hessian.HessianAccumulator(x.shape[-1])
    acc.add(x)
    return acc.hessian()


def _error(w, h, codes, scales, zeros, g):
    return hessian.layer_output_error(w, int4.dequantize_int4_codes(codes, scales, zeros, g), h)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, -1])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn(device, symmetric, group_size, act_order):
    w, x = _layer(device=device)
    h = _hessian(x)
    rtn = _error(w, h, *int4.quantize_int4_rtn(w, group_size, symmetric), group_size)
    codes, scales, zeros = gptq.gptq_quantize_int4(w, h, group_size, symmetric, act_order=act_order)
    groups = 1 if group_size == -1 else 128 // group_size
    assert codes.dtype == torch.uint8 and codes.shape == w.shape and int(codes.max()) <= 15
    assert scales.shape == (48, groups) and bool((scales > 0).all()) and bool(torch.isfinite(scales).all())
    assert (zeros is None) == symmetric
    err = _error(w, h, codes, scales, zeros, group_size)
    assert err < 0.6 * rtn, (err, rtn)  # about 0.35-0.4 here


def test_gptq_is_deterministic_and_block_size_only_changes_rounding():
    w, x = _layer(k=192)
    h = _hessian(x)
    ref = gptq.gptq_quantize_int4(w, h, 64, False, block_size=128)
    again = gptq.gptq_quantize_int4(w, h, 64, False, block_size=128)
    for a, b in zip(ref, again):
        assert torch.equal(a, b)
    ref_err = _error(w, h, *ref, 64)
    # blocks smaller than a group, not a multiple of it, and larger than K: the same algorithm
    for bs in (16, 48, 100, 1000):
        got = gptq.gptq_quantize_int4(w, h, 64, False, block_size=bs)
        assert (got[0] != ref[0]).float().mean() < 0.01, bs
        assert _error(w, h, *got, 64) == pytest.approx(ref_err, rel=0.02), bs


def test_dead_input_channels():
    w, x = _layer()
    dead = [0, 5, 6, 77, 127]
    x[:, dead] = 0
    h = _hessian(x)
    for act_order in (False, True):
        codes, scales, zeros = gptq.gptq_quantize_int4(w, h, 32, False, act_order=act_order)
        deq = int4.dequantize_int4_codes(codes, scales, zeros, 32)
        assert bool(torch.isfinite(deq).all())
        # kept: a dead weight is rounded to nearest with its group's parameters
        assert bool(((deq[:, dead] - w[:, dead]).abs() <= int4._TINY + scales.repeat_interleave(32, 1)[:, dead] * 0.51).all())
        rtn = _error(w, h, *int4.quantize_int4_rtn(w, 32, False), 32)
        assert _error(w, h, codes, scales, zeros, 32) < 0.75 * rtn
    codes, scales, zeros = gptq.gptq_quantize_int4(w, h, 32, True, zero_dead=True)
    assert bool((int4.dequantize_int4_codes(codes, scales, zeros, 32)[:, dead] == 0).all())
    # every input dead (no signal at all): plain RTN, finite
    codes, scales, zeros = gptq.gptq_quantize_int4(w, torch.zeros(128, 128), 32, False)
    rtn = int4.quantize_int4_rtn(w, 32, False)
    assert torch.equal(codes, rtn[0]) and torch.equal(scales, rtn[1])


def test_singular_hessian_works_after_damping():
    w, x = _layer(rows=16)  # rank 16 < K = 128
    h = _hessian(x)
    codes, scales, zeros = gptq.gptq_quantize_int4(w, h, 32, True)
    assert bool(torch.isfinite(int4.dequantize_int4_codes(codes, scales, zeros, 32)).all())
    # damp=0 fails the first Cholesky and is retried with more dampening
    codes, scales, zeros = gptq.gptq_quantize_int4(w, h, 32, True, damp=0.0)
    assert bool(torch.isfinite(scales).all())


def test_hopeless_hessian_raises():
    h = torch.tensor([[1.0, 1e7], [1e7, 1.0]])  # indefinite, needs damping ~1e7 x mean(diag)
    with pytest.raises(ValueError, match="not positive definite"):
        gptq.gptq_quantize_int4(torch.randn(4, 2), h, -1, True)


def test_small_and_odd_shapes():
    gen = torch.Generator().manual_seed(5)
    for n, k, g in [(1, 32, 32), (3, 7, -1), (5, 96, 32)]:
        w = torch.randn(n, k, generator=gen)
        x = torch.randn(64, k, generator=gen)
        codes, scales, zeros = gptq.gptq_quantize_int4(w, _hessian(x), g, False, block_size=16, act_order=True)
        assert codes.shape == (n, k) and bool(torch.isfinite(int4.dequantize_int4_codes(codes, scales, zeros, g)).all())
    codes, scales, zeros = gptq.gptq_quantize_int4(torch.randn(0, 64), torch.eye(64), 32, False)
    assert codes.shape == (0, 64) and scales.shape == (0, 2)


def test_bad_input():
    w = torch.randn(4, 64)
    with pytest.raises(ValueError, match=r"\[64, 64\]"):
        gptq.gptq_quantize_int4(w, torch.eye(32), 32, True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        gptq.gptq_quantize_int4(w, torch.full((64, 64), float("nan")), 32, True)
    with pytest.raises(ValueError, match="negative diagonal"):
        gptq.gptq_quantize_int4(w, -torch.eye(64), 32, True)
    with pytest.raises(ValueError, match="does not divide"):
        gptq.gptq_quantize_int4(w, torch.eye(64), 48, True)
    with pytest.raises(ValueError, match="block_size"):
        gptq.gptq_quantize_int4(w, torch.eye(64), 32, True, block_size=0)
    with pytest.raises(ValueError, match="damp"):
        gptq.gptq_quantize_int4(w, torch.eye(64), 32, True, damp=-1.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        gptq.gptq_quantize_int4(w.masked_fill(w > 1, float("inf")), torch.eye(64), 32, True)
    with pytest.raises(ValueError, match="one shape"):
        hessian.layer_output_error(w, w[:, :32], torch.eye(64))
