"""Every implementation of the int8 ops against the pure-torch reference (the spec)."""
from __future__ import annotations

import pytest
import torch

import slimkernels
from slimkernels import ops
from slimkernels.backends import reference
from slimkernels.testing import extreme_int8, impl_params, rand_int8, small_only

SHAPES = [  # (M, N, K): M=1, odd everything, K not a multiple of 4/16, N not a multiple of the tiles
    (1, 1, 1), (1, 16, 64), (1, 37, 13), (3, 17, 33), (5, 64, 128), (17, 48, 100), (33, 50, 257), (64, 96, 512),
]
BIG_SHAPES = [(1, 4096, 1024), (8, 300, 4096), (129, 200, 640)]


def shapes_for(device, impl):
    return SHAPES[:6] if small_only(device, impl) else SHAPES + BIG_SHAPES


@pytest.mark.parametrize("device,impl", impl_params("int8_mm"))
def test_int8_mm_bit_exact(device, impl):
    gen = torch.Generator().manual_seed(0)
    for m, n, k in shapes_for(device, impl):
        a, b = rand_int8(m, k, device=device, gen=gen), rand_int8(n, k, device=device, gen=gen)
        with slimkernels.use_backend(impl):
            got = ops.int8_mm(a, b)
        assert got.dtype == torch.int32 and got.shape == (m, n)
        torch.testing.assert_close(got, reference.exact_int8_mm(a, b), rtol=0, atol=0, msg=f"shape {(m, n, k)}")


@pytest.mark.parametrize("device,impl", impl_params("int8_mm"))
@pytest.mark.parametrize("kind_a,kind_b", [("min", "min"), ("max", "min"), ("max", "max"), ("mix", "mix")])
def test_int8_mm_extremes(device, impl, kind_a, kind_b):
    # -128 * -128 summed over K is where saturating instructions (AVX2 maddubs) go wrong.
    m, n, k = (3, 20, 70) if small_only(device, impl) else (9, 70, 1030)
    a, b = extreme_int8(kind_a, m, k, device=device), extreme_int8(kind_b, n, k, device=device)
    with slimkernels.use_backend(impl):
        got = ops.int8_mm(a, b)
    torch.testing.assert_close(got, reference.exact_int8_mm(a, b), rtol=0, atol=0)


@pytest.mark.parametrize("device,impl", impl_params("int8_mm"))
def test_int8_mm_empty_and_strided(device, impl):
    b = rand_int8(7, 12, device=device)
    with slimkernels.use_backend(impl):
        assert ops.int8_mm(rand_int8(0, 12, device=device), b).shape == (0, 7)
        wide = rand_int8(5, 40, device=device)
        a = wide[:, 3:15]  # non-contiguous rows
        torch.testing.assert_close(ops.int8_mm(a, b), reference.exact_int8_mm(a, b), rtol=0, atol=0)


def _scaled_inputs(m, n, k, device, gen, bias):
    a, b = rand_int8(m, k, device=device, gen=gen), rand_int8(n, k, device=device, gen=gen)
    a_scale = (torch.rand(m, generator=gen) * 0.1 + 1e-3).to(device)
    b_scale = (torch.rand(n, generator=gen) * 0.01 + 1e-4).to(device)
    bias_t = torch.randn(n, generator=gen).to(device) if bias else None
    return a, a_scale, b, b_scale, bias_t


@pytest.mark.parametrize("device,impl", impl_params("int8_scaled_mm_packed"))
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_scaled_mm_packed(device, impl, out_dtype, bias):
    gen = torch.Generator().manual_seed(1)
    for m, n, k in shapes_for(device, impl):
        a, a_scale, b, b_scale, bias_t = _scaled_inputs(m, n, k, device, gen, bias)
        expected = reference.int8_scaled_mm(a, a_scale, b, b_scale, bias_t, out_dtype)
        with slimkernels.use_backend(impl):
            packed = ops.int8_prepack(b)
            got = ops.int8_scaled_mm_packed(a, a_scale, packed, b_scale, bias_t, out_dtype)
            plain = ops.int8_scaled_mm(a, a_scale, b, b_scale, bias_t, out_dtype)
        assert got.dtype == out_dtype and got.shape == (m, n)
        # Same float32 epilogue, same rounding: equal up to one unit in the last place of out_dtype.
        torch.testing.assert_close(got, expected, rtol=torch.finfo(out_dtype).eps, atol=1e-6, msg=f"shape {(m, n, k)}")
        torch.testing.assert_close(plain, got, rtol=0, atol=0)


@pytest.mark.parametrize("device,impl", impl_params("int8_dynamic_linear"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_dynamic_linear(device, impl, dtype):
    """The fused W8A8 op equals per-token quantize + packed GEMM of the reference, rounding included."""
    gen = torch.Generator().manual_seed(5)
    for m, n, k in shapes_for(device, impl)[:7]:
        x = (torch.randn(m, k, generator=gen) * 2).to(dtype).to(device)
        w, w_scale = rand_int8(n, k, device=device, gen=gen), (torch.rand(n, generator=gen) * 0.01).to(device)
        bias = torch.randn(n, generator=gen).to(device)
        q, s = reference.quantize_rows_int8(x)
        expected = reference.int8_scaled_mm(q, s, w, w_scale, bias, dtype)
        with slimkernels.use_backend(impl):
            got = ops.int8_dynamic_linear(x.reshape(1, m, k), ops.int8_prepack(w), w_scale, bias)
        assert got.shape == (1, m, n) and got.dtype == dtype
        torch.testing.assert_close(got[0], expected, rtol=torch.finfo(dtype).eps, atol=1e-6)


@pytest.mark.parametrize("device,impl", impl_params("quantize_per_token_int8"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantize_per_token_bit_exact(device, impl, dtype):
    gen = torch.Generator().manual_seed(2)
    rows = [
        torch.randn(5, 37, generator=gen) * 3,
        torch.randn(1, 1000, generator=gen),
        torch.randn(4, 16, generator=gen) * 1e4,
        torch.randn(4, 16, generator=gen) * 1e-3,
    ]
    special = torch.randn(6, 33, generator=gen)
    special[1] = 0  # all-zero row: scale 1, q 0
    special[2, 5] = float("nan")
    special[3, 0] = float("inf")
    special[4, 7] = -float("inf")
    special[5] = torch.arange(33) - 16.5  # x/scale lands on exact .5 ties
    for x in rows + [special]:
        x = x.to(dtype).to(device)
        q_ref, s_ref = reference.quantize_rows_int8(x)
        with slimkernels.use_backend(impl):
            q, s = ops.quantize_per_token_int8(x)
        torch.testing.assert_close(s, s_ref, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(q, q_ref, rtol=0, atol=0)


def test_quantize_reference_semantics():
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [float("nan"), 1.0]])
    q, s = reference.quantize_rows_int8(x)
    assert s[0] == 1 and q[0].tolist() == [0, 0]
    assert s[1] == torch.tensor(2.0) / 127 and q[1].tolist() == [64, -127]
    assert torch.isnan(s[2]) and q[2].tolist() == [0, 0]


def test_quantize_flattens_batch_dims():
    x = torch.randn(2, 3, 8)
    q, s = ops.quantize_per_token_int8(x)
    assert q.shape == (6, 8) and s.shape == (6,)
    q2, s2 = ops.quantize_per_channel_int8(torch.randn(4, 8))
    assert q2.shape == (4, 8) and s2.shape == (4,)


@pytest.mark.parametrize("device,impl", impl_params("dequant_mm_int8"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dequant_mm_int8(device, impl, dtype):
    gen = torch.Generator().manual_seed(3)
    for m, n, k in [(1, 17, 33), (4, 64, 128), (70, 40, 96)]:
        x = torch.randn(m, k, generator=gen).to(dtype).to(device)
        w = rand_int8(n, k, device=device, gen=gen)
        s = (torch.rand(n, generator=gen) * 0.01).to(device)
        bias = torch.randn(n, generator=gen).to(device)
        with slimkernels.use_backend(impl):
            got = ops.dequant_mm_int8(x, w, s, bias)
        expected = reference.dequant_mm_int8(x, w, s, bias)
        tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}[dtype]
        torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol * 5)


def test_dequant_mm_int8_grad():
    x = torch.randn(3, 5, 16, requires_grad=True)
    w, s = rand_int8(7, 16), torch.rand(7) * 0.1
    bias = torch.randn(7, requires_grad=True)
    ops.dequant_mm_int8(x, w, s, bias).square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    b2 = bias.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, w.float() * s[:, None], b2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bias.grad, b2.grad, rtol=1e-4, atol=1e-4)


def test_opcheck():
    gen = torch.Generator().manual_seed(4)
    a, a_scale, b, b_scale, bias = _scaled_inputs(5, 24, 40, "cpu", gen, True)
    packed = ops.int8_prepack(b)
    cases = [
        (torch.ops.slimkernels.quantize_per_token_int8.default, (torch.randn(3, 4, 40),)),
        (torch.ops.slimkernels.quantize_per_channel_int8.default, (torch.randn(24, 40),)),
        (torch.ops.slimkernels.int8_mm.default, (a, b)),
        (torch.ops.slimkernels.int8_scaled_mm.default, (a, a_scale, b, b_scale, bias, torch.bfloat16)),
        (torch.ops.slimkernels.int8_prepack.default, (b,)),
        (torch.ops.slimkernels.int8_scaled_mm_packed.default, (a, a_scale, packed, b_scale, None, torch.float32)),
        (torch.ops.slimkernels.dequant_mm_int8.default, (torch.randn(2, 40), b, b_scale, bias)),
        (torch.ops.slimkernels.int8_dynamic_linear.default, (torch.randn(2, 3, 40), packed, b_scale, bias)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_forced_backend_switch():
    a, b = rand_int8(2, 8), rand_int8(3, 8)
    with slimkernels.use_backend("reference"):
        assert slimkernels.get_backend() == "reference"
        ops.int8_mm(a, b)
    assert slimkernels.get_backend() is None
    with pytest.raises(ValueError, match="unknown slimkernels backend"):
        slimkernels.set_backend("fastest")
    with slimkernels.use_backend("torch"), pytest.raises(NotImplementedError, match="no 'torch' implementation"):
        ops.int8_mm(a, b)


@pytest.mark.parametrize("isa", slimkernels._native._C.supported_isas() if slimkernels._native._C else [])
def test_cpu_native_paths_on_every_isa(isa, monkeypatch):
    """The fused W8A8 call and the W8A16 kernel on each CPU ISA (SLIMKERNELS_CPU_ISA forces one)."""
    monkeypatch.setenv("SLIMKERNELS_CPU_ISA", isa)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(9, 130, generator=gen)
    w, w_scale, bias = rand_int8(70, 130, gen=gen), torch.rand(70, generator=gen) * 0.01, torch.randn(70, generator=gen)
    q, s = reference.quantize_rows_int8(x)
    with slimkernels.use_backend("native"):
        got = ops.int8_dynamic_linear(x, ops.int8_prepack(w), w_scale, bias)
        w16 = ops.dequant_mm_int8(x, w, w_scale, bias)
    torch.testing.assert_close(got, reference.int8_scaled_mm(q, s, w, w_scale, bias, torch.float32), rtol=1.2e-7, atol=1e-6)
    torch.testing.assert_close(w16, reference.dequant_mm_int8(x, w, w_scale, bias), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="isa"):
        monkeypatch.setenv("SLIMKERNELS_CPU_ISA", "avx9000")
        with slimkernels.use_backend("native"):
            ops.int8_dynamic_linear(x, ops.int8_prepack(w), w_scale, bias)
