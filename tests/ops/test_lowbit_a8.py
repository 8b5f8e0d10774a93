"""dequant_mm_int4_a8 (W4A8: int4 group-wise weights x per-token int8 activations): the native CPU
kernels on every instruction set this CPU runs against the reference (the spec).

The integer sums per group are exact everywhere. The scalar kernel does the reference's float32 steps
in its order (g ascending), so it matches bit for bit; the SIMD kernels sum each group's int32 lanes in
float32 and reduce at the end: per element within 1e-5 * S + one output step * |ref|, with
S = sx * sum_g s_g * (sum_k q |xq| + z |sum_k xq|) (the size of the float terms; testing.linear_bound
on the matching |x'| @ |w'|.T).
"""
from __future__ import annotations

import pytest
import torch

from slimkernels import _native, ops
from slimkernels.backends.lowbit import dequant_mm_int4_a8_reference
from slimkernels.backends.quantize import quantize_rows_int8
from slimkernels.quant import lowbit
from slimkernels.testing import Case, assert_close_linear, cases, forced, make_int4, opcheck, rand_x

C = _native._C
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731
SWEEP = cases("dequant_mm_int4_a8", reference=False)
CONTRACT = cases("dequant_mm_int4_a8")
NATIVE = [c for c in SWEEP if c.values[0].impl == "native"]

# (N, K, group_size): one step of every kernel (32), groups that are and are not a multiple of the
# AVX-512 (128) and AVX2 (64) steps, per channel with odd K (rows end mid-byte, past a step), and a
# 4096-long row.
SHAPES = [(37, 32, 32), (37, 96, 32), (37, 256, 64), (37, 384, 128), (37, 192, 96), (37, 77, 77), (37, 201, 201),
          (9, 4096, 128), (9, 4096, 4096)]
MS = (1, 3, 17, 33, 64)


def a8_bound_operands(x, qweight, scales, zeros, group_size):
    """(x', w') with |x'| @ |w'|.T = S of the module docstring, for testing.linear_bound."""
    k = x.shape[1]
    xq, sx = quantize_rows_int8(x)
    n, groups = scales.shape
    q = lowbit.unpack_codes(qweight, 4, k).double()
    z = torch.full_like(scales, 8).double() if zeros is None else zeros.double()
    xs = xq.double().view(-1, groups, group_size).sum(-1).abs()
    s = scales.double()
    sxd = torch.nan_to_num(sx.double(), nan=0.0)[:, None]
    x2 = torch.cat([xq.double().abs(), xs], 1) * sxd
    w2 = torch.cat([q * s.repeat_interleave(group_size, 1), z * s], 1)
    return x2, w2


def check(case: Case, x, weights, bias=None, what=""):
    qweight, scales, zeros, gs = weights
    ref = dequant_mm_int4_a8_reference(x, qweight, scales, zeros, gs, bias)
    with forced(case):
        got = ops.dequant_mm_int4_a8(x, qweight, scales, zeros, gs, bias)
    nan = ref.isnan()
    assert torch.equal(got.isnan(), nan), f"{what}: NaN at other places"
    got, ref = got.masked_fill(nan, 0), ref.masked_fill(nan, 0)
    if case.cpu_isa == "scalar":  # the reference's arithmetic step by step
        torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True, msg=what)
        return
    x2, w2 = a8_bound_operands(x, qweight, scales, zeros, gs)
    assert_close_linear(got, ref, x2, w2, case, what)


@pytest.mark.parametrize("case", SWEEP)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_matches_reference(case, dtype):
    for i, (n, k, gs) in enumerate(SHAPES):
        for asym in (False, True):
            qweight, scales, zeros = make_int4(n, k, gs, asym, seed=i)
            bias = torch.randn(n) if asym else None
            for m in (MS if dtype == torch.float32 else MS[:3]) if k < 4096 else (1, 5):
                x = rand_x(m, k, dtype, seed=m + i)
                check(case, x, (qweight, scales, zeros, gs), bias, f"{case.id} {dtype} M={m} N={n} K={k} g{gs} asym={asym}")


@pytest.mark.parametrize("case", SWEEP)
def test_worst_case_values(case):
    """Largest sums: codes all 15 or all 0 against zero points 0 or 15, activations at +-amax (every
    |xq| = 127), one outlier per row (the rest round to few levels), exact ties."""
    n, k, gs = 13, 256, 128
    for codes_value, zero in ((15, 0), (0, 15), (15, 15)):
        codes = torch.full((n, k), codes_value)
        qweight, scales, _ = make_int4(n, k, gs, False, codes=codes, seed=1)
        zeros = torch.full(scales.shape, zero, dtype=torch.uint8)
        signs = torch.where(torch.rand(5, k, generator=torch.Generator().manual_seed(3)) < 0.5, -1.0, 1.0)
        for x in (torch.full((5, k), 2.5), signs * 3.0):
            check(case, x, (qweight, scales, zeros, gs), None, f"{case.id} codes={codes_value} z={zero}")
    qweight, scales, zeros = make_int4(n, k, 64, True, seed=2)
    x = rand_x(7, k, seed=4)
    x[:, 5] = 1e3  # an outlier per row
    x[2, 9] = -1e3
    check(case, x, (qweight, scales, zeros, 64), torch.randn(n), f"{case.id} outliers")


@pytest.mark.parametrize("case", SWEEP)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_special_rows(case, dtype):
    """As W8A8: a row holding NaN or Inf has scale NaN, so its outputs are NaN; an all-zero row gives
    the bias; the other rows are untouched."""
    n, k, gs = 11, 128, 32
    qweight, scales, zeros = make_int4(n, k, gs, True, seed=5)
    bias = torch.randn(n)
    x = rand_x(5, k, dtype, seed=6)
    x[1, 7] = float("nan")
    x[2, 0] = float("inf")
    x[3] = 0
    with forced(case):
        y = ops.dequant_mm_int4_a8(x, qweight, scales, zeros, gs, bias)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    torch.testing.assert_close(y[3], bias.to(dtype), rtol=0, atol=0)
    check(case, x, (qweight, scales, zeros, gs), bias, f"{case.id} special rows")


@pytest.mark.parametrize("case", CONTRACT)
def test_empty_strided_batched(case):
    n, k, gs = 9, 64, 32
    qweight, scales, zeros = make_int4(n, k, gs, True, seed=7)
    bias = torch.randn(n)
    with forced(case):
        y = ops.dequant_mm_int4_a8(torch.randn(0, k), qweight, scales, zeros, gs, bias)
        assert y.shape == (0, n)
        wide = rand_x(4, k + 16, seed=8)
        y = ops.dequant_mm_int4_a8(wide[:, :k], qweight, scales, zeros, gs, bias)
        batched = ops.dequant_mm_int4_a8(wide[:, :k].reshape(2, 2, k), qweight, scales, zeros, gs, bias)
    ref = dequant_mm_int4_a8_reference(wide[:, :k].contiguous(), qweight, scales, zeros, gs, bias)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched.reshape(4, n), y, rtol=0, atol=0)


@pytest.mark.parametrize("case", CONTRACT)
def test_opcheck_and_autograd(case):
    n, k, gs = 9, 64, 32
    qweight, scales, zeros = make_int4(n, k, gs, True, seed=9)
    bias = torch.randn(n)
    x = rand_x(3, k, seed=10)
    opcheck(case, torch.ops.slimkernels.dequant_mm_int4_a8.default, (x, qweight, scales, zeros, gs, bias))
    xg = x.clone().requires_grad_()
    bg = bias.clone().requires_grad_()
    with forced(case):
        ops.dequant_mm_int4_a8(xg, qweight, scales, zeros, gs, bg).sum().backward()
    w = lowbit.dequantize_int4(qweight, scales, zeros, gs, k)
    torch.testing.assert_close(xg.grad, torch.ones(3, n) @ w)
    torch.testing.assert_close(bg.grad, torch.full((n,), 3.0))


def test_bad_arguments():
    qweight, scales, zeros = make_int4(9, 64, 32, True, seed=11)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="dequant_mm_int4_a8"):
        ops.dequant_mm_int4_a8(x, qweight[:, :20], scales, zeros, 32)
    with pytest.raises(ValueError, match="dequant_mm_int4_a8"):
        ops.dequant_mm_int4_a8(x, qweight, scales, zeros, 48)
    with pytest.raises(TypeError, match="dequant_mm_int4_a8"):
        ops.dequant_mm_int4_a8(x.double(), qweight, scales, zeros, 32)


@pytest.mark.skipif(C is None, reason="native extension not built")
def test_binding_validates():
    qweight, scales, zeros = make_int4(9, 64, 32, True, seed=12)
    x = torch.randn(2, 64)
    y = torch.empty(2, 9)
    args = dict(x=x.data_ptr(), ldx=64, x_kind="float32", qweight=qweight.data_ptr(), scales=scales.data_ptr(),
                zeros=zeros.data_ptr(), group_size=32, bias=0, y=y.data_ptr(), ldy=9, M=2, N=9, K=64, num_threads=1)
    C.dequant_mm_int4_a8(**args)
    for bad, match in ((dict(group_size=48), "group_size"), (dict(ldx=10), "ldx"), (dict(ldy=3), "ldy"),
                       (dict(x_kind="int8"), "x_kind"), (dict(num_threads=0), "num_threads"),
                       (dict(isa="nope"), "isa"), (dict(x=0), "x must not be null")):
        with pytest.raises(ValueError, match=match):
            C.dequant_mm_int4_a8(**{**args, **bad})


@pytest.mark.parametrize("case", NATIVE)
def test_threads_many_tiles(case):
    """Enough work for the split over threads (M * N * K >= 2^18), with N and M tails."""
    n, k, gs = 130, 512, 128
    qweight, scales, zeros = make_int4(n, k, gs, True, seed=13)
    x = rand_x(37, k, seed=14)
    check(case, x, (qweight, scales, zeros, gs), torch.randn(n), f"{case.id} threads")


AVX2 = C is not None and "avx2" in list(C.supported_isas())
AVX_VNNI = C is not None and bool(C.a8_avx_vnni_supported())


@pytest.mark.skipif(not AVX2, reason="no AVX2 here")
@pytest.mark.parametrize("avx_vnni", [False, pytest.param(True, marks=pytest.mark.skipif(
    not AVX_VNNI, reason="no AVX-VNNI here (CPU or compiler)"))], ids=["vpmaddubsw", "avx_vnni"])
def test_avx2_dot_products(avx_vnni):
    """The avx2 tier's two int8 dot products (the op takes AVX-VNNI where the CPU has it; the binding can
    turn it off), through both step widths (groups of 32 / 96: 32 k's a step; 64 / per channel: 64)."""
    for i, (n, k, gs) in enumerate([(37, 96, 32), (37, 192, 96), (37, 256, 64), (37, 201, 201)]):
        qweight, scales, zeros = make_int4(n, k, gs, True, seed=20 + i)
        bias = torch.randn(n)
        for m in (1, 3, 17):
            x = rand_x(m, k, seed=30 + m)
            y = torch.empty(m, n)
            C.dequant_mm_int4_a8(x.data_ptr(), k, "float32", qweight.data_ptr(), scales.data_ptr(), zeros.data_ptr(),
                                 gs, bias.data_ptr(), y.data_ptr(), n, m, n, k, 1, "avx2", avx_vnni)
            ref = dequant_mm_int4_a8_reference(x, qweight, scales, zeros, gs, bias)
            x2, w2 = a8_bound_operands(x, qweight, scales, zeros, gs)
            assert_close_linear(y, ref, x2, w2, Case("cpu", "native", "avx2"), f"avx_vnni={avx_vnni} M={m} K={k} g{gs}")
