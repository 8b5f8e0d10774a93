"""RTN int4 group-wise quantization (slimkernels.quant.int4) against its own contract and the canonical
layout of slimkernels.quant.lowbit."""
from __future__ import annotations

import pytest
import torch

from slimkernels.quant import int4, lowbit
from slimkernels.testing import DEVICES

# (N, K, group_size): N=1, odd N, odd K per channel, several groups, -1 and K meaning per channel
CASES = [(1, 32, 32), (7, 96, 32), (33, 128, 64), (5, 7, -1), (3, 13, 13), (16, 256, 128), (2, 64, 1)]


def _rand(n, k, gen, device="cpu", dtype=torch.float32):
    return (torch.randn(n, k, generator=gen) * torch.rand(n, 1, generator=gen) * 3).to(device=device, dtype=dtype)


def _expand(t, k):
    return t.to(torch.float32).repeat_interleave(k // t.shape[1], dim=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_round_trip_within_half_a_step(device, symmetric):
    gen = torch.Generator().manual_seed(0)
    for n, k, g in CASES:
        w = _rand(n, k, gen, device)
        codes, scales, zeros = int4.quantize_int4_rtn(w, g, symmetric)
        groups = 1 if g == -1 else k // g
        assert codes.dtype == torch.uint8 and codes.shape == (n, k) and int(codes.max()) <= 15
        assert scales.dtype == torch.float32 and scales.shape == (n, groups) and bool((scales > 0).all())
        if symmetric:
            assert zeros is None
        else:
            assert zeros.dtype == torch.uint8 and zeros.shape == (n, groups) and int(zeros.max()) <= 15
        deq = int4.dequantize_int4_codes(codes, scales, zeros, g)
        bound = _expand(scales, k) * (0.5 + 1e-5)
        assert bool(((deq - w).abs() <= bound).all()), (n, k, g)


@pytest.mark.parametrize("symmetric", [False, True])
def test_dequantize_matches_canonical_layout_bit_for_bit(symmetric):
    gen = torch.Generator().manual_seed(1)
    for n, k, g in CASES:
        w = _rand(n, k, gen)
        codes, scales, zeros = int4.quantize_int4_rtn(w, g, symmetric)
        gs = k if g == -1 else g
        ref = lowbit.dequantize_int4(lowbit.pack_codes(codes, 4), scales, zeros, gs, k)
        torch.testing.assert_close(int4.dequantize_int4_codes(codes, scales, zeros, g), ref, rtol=0, atol=0)


def test_quantize_is_round_to_nearest_of_the_given_params():
    gen = torch.Generator().manual_seed(2)
    w = _rand(9, 64, gen)
    scales = torch.rand(9, 2, generator=gen) + 0.05
    zeros = torch.randint(0, 16, (9, 2), generator=gen, dtype=torch.uint8)
    codes = int4.quantize_int4(w, scales, zeros, 32)
    expect = (torch.round(w / _expand(scales, 64)) + _expand(zeros, 64)).clamp(0, 15)
    torch.testing.assert_close(codes.to(torch.float32), expect, rtol=0, atol=0)


@pytest.mark.parametrize("symmetric", [False, True])
def test_all_zero_groups_and_exact_zero(symmetric):
    w = torch.randn(4, 64)
    w[1] = 0  # whole row
    w[2, 32:] = 0  # one group
    w[3, :16] = 0  # zeros inside a live group stay exactly zero
    codes, scales, zeros = int4.quantize_int4_rtn(w, 32, symmetric)
    assert bool(torch.isfinite(scales).all()) and bool((scales > 0).all())
    assert scales[1].tolist() == [1.0, 1.0] and scales[2, 1].item() == 1.0
    deq = int4.dequantize_int4_codes(codes, scales, zeros, 32)
    assert bool((deq[w == 0] == 0).all())


def test_symmetric_uses_code_zero_for_the_negative_side():
    w = torch.tensor([[-8.0, -3.0, 0.0, 7.0], [-4.0, 1.0, 2.0, 7.0]])
    codes, scales, zeros = int4.quantize_int4_rtn(w, 4, symmetric=True)
    assert scales.flatten().tolist() == [1.0, 1.0] and zeros is None
    assert codes[0].tolist() == [0, 5, 8, 15]
    torch.testing.assert_close(int4.dequantize_int4_codes(codes, scales, None, 4), w, rtol=0, atol=0)


def test_asymmetric_range_includes_zero():
    w = torch.tensor([[1.0, 2.0, 4.0, 16.0], [-15.0, -1.0, -2.0, -3.0]])
    codes, scales, zeros = int4.quantize_int4_rtn(w, -1, symmetric=False)
    assert zeros.flatten().tolist() == [0, 15]
    assert scales.flatten().tolist() == pytest.approx([16 / 15, 1.0])


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("big", [1e30, 3.0e38])
def test_extreme_outliers_stay_finite(symmetric, big):
    w = torch.randn(3, 64) * 1e-3
    w[0, 5] = big
    w[1, 40] = -big
    w[2, 0], w[2, 1] = big, -big  # hi - lo overflows float32 if computed naively
    codes, scales, zeros = int4.quantize_int4_rtn(w, 32, symmetric)
    deq = int4.dequantize_int4_codes(codes, scales, zeros, 32)
    assert bool(torch.isfinite(scales).all()) and bool(torch.isfinite(deq).all())
    assert bool(((deq - w).abs() <= _expand(scales, 64) * (0.5 + 1e-5)).all())


def test_tiny_denormal_group_gets_unit_scale():
    w = torch.full((1, 32), 1e-40)
    codes, scales, zeros = int4.quantize_int4_rtn(w, 32, symmetric=False)
    assert scales.item() == 1.0
    assert bool((int4.dequantize_int4_codes(codes, scales, zeros, 32) == 0).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights(dtype):
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(3)).to(dtype)
    ref = int4.quantize_int4_rtn(w.float(), 32, False)
    got = int4.quantize_int4_rtn(w, 32, False)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_empty_rows():
    codes, scales, zeros = int4.quantize_int4_rtn(torch.randn(0, 64), 32, False)
    assert codes.shape == (0, 64) and scales.shape == (0, 2) and zeros.shape == (0, 2)


def test_bad_input():
    with pytest.raises(ValueError, match="does not divide K=64"):
        int4.int4_params(torch.randn(2, 64), 48, True)
    with pytest.raises(ValueError, match="group_size"):
        int4.int4_params(torch.randn(2, 64), 0, True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        int4.int4_params(torch.tensor([[1.0, float("nan")]]), -1, True)
    with pytest.raises(ValueError, match="2-D"):
        int4.int4_params(torch.randn(64), 32, True)
    with pytest.raises(TypeError, match="floating-point"):
        int4.int4_params(torch.ones(2, 64, dtype=torch.int32), 32, True)
    with pytest.raises(ValueError, match="scales must have shape"):
        int4.quantize_int4(torch.randn(2, 64), torch.ones(2, 3), None, 32)
    with pytest.raises(ValueError, match="zeros must have shape"):
        int4.dequantize_int4_codes(torch.zeros(2, 64, dtype=torch.uint8), torch.ones(2, 2), torch.zeros(2, 1, dtype=torch.uint8), 32)
