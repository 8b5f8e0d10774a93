"""The int8_mm family (int8_mm, int8_scaled_mm, int8_prepack, int8_scaled_mm_packed,
int8_dynamic_linear): every implementation usable here (reference, native on each CPU instruction
set, Triton under the interpreter through both split-K policies, CUDA) against exact references.

Integer results are bit-exact (the int64 product taken mod 2**32). Float results are bit-exact too:
every implementation evaluates the same float32 epilogue ((acc * a_scale) * b_scale + bias, no FMA
contraction) and rounds once to out_dtype. Then the native binding itself (leading dimensions,
threads, null pointers, argument validation) and the Triton package's availability."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

import slimkernels
import slimkernels.triton as slim_triton
from slimkernels import _native, ops
from slimkernels.backends.quantize import quantize_rows_int8
from slimkernels.quant.packing import pack_int8_cpu
from slimkernels.testing import (
    Case, assert_same, cases, extreme_int8, forced, int8_mm_exact, int8_scaled_inputs, opcheck, quantize_rows_exact,
    rand_int8, rand_rows, scaled_epilogue_exact,
)

FLOAT_OUT = [torch.float32, torch.float16, torch.bfloat16]
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731

# (M, N, K): M = 1, odd everything, K not a multiple of 4 / 16, N not a multiple of the tiles.
SHAPES = [
    (1, 1, 1), (1, 16, 4), (1, 33, 13), (2, 1, 7), (3, 47, 64), (8, 49, 4), (9, 48, 100), (17, 33, 13), (5, 97, 129),
    (31, 17, 1), (33, 50, 257), (16, 144, 256), (1, 300, 520), (64, 300, 520),
]
BIG_SHAPES = [(1, 4096, 1024), (8, 300, 4096), (129, 200, 640), (37, 200, 1001)]
SMALL_SHAPES = [(1, 1, 1), (1, 5, 33), (3, 17, 13), (16, 32, 64), (19, 40, 70), (33, 65, 96)]  # the interpreter


def shapes_for(case: Case):
    if case.small:
        return SMALL_SHAPES
    return SHAPES[:10] if case.impl == "reference" else SHAPES + BIG_SHAPES  # the reference: int64 matmul, slow


def scaled_shapes_for(case: Case):
    return [(1, 5, 33), (3, 17, 13), (19, 40, 70)] if case.small else [(1, 33, 13), (17, 50, 64), (5, 97, 129),
                                                                        (64, 300, 520)]


# ---- int8_mm: exact int32 ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases("int8_mm", split_k=True))
def test_int8_mm_bit_exact(case):
    for m, n, k in shapes_for(case):
        gen = torch.Generator().manual_seed(m * 1000003 + n * 1009 + k)
        a, b = rand_int8(m, k, device=case.device, gen=gen), rand_int8(n, k, device=case.device, gen=gen)
        with forced(case):
            got = ops.int8_mm(a, b)
        assert_same(got, int8_mm_exact(a, b), f"shape {(m, n, k)}")


EXTREMES = [("min", "min"), ("max", "min"), ("min", "max"), ("max", "max"), ("mix", "mix"), ("signs", "signs"),
            ("checker", "checker")]
SMALL_EXTREMES = [("min", "min"), ("min", "max"), ("max", "max"), ("checker", "checker")]


@pytest.mark.parametrize("case", cases("int8_mm", split_k=True))
def test_int8_mm_extremes(case):
    # -128 * -128 summed over K is where saturating instructions (AVX2 maddubs) go wrong.
    m, n, k = (5, 37, 100) if case.small else (11, 70, 1030)
    gen = torch.Generator().manual_seed(5)
    for kind_a, kind_b in SMALL_EXTREMES if case.small else EXTREMES:
        a = extreme_int8(kind_a, m, k, device=case.device, gen=gen)
        b = extreme_int8(kind_b, n, k, device=case.device, gen=gen)
        with forced(case):
            assert_same(ops.int8_mm(a, b), int8_mm_exact(a, b), f"{kind_a} x {kind_b}")


@pytest.mark.parametrize("case", cases("int8_mm", split_k=True))
def test_int8_mm_wraps_mod_2_32(case):
    # 16384 * K > 2**31 - 1: the int32 accumulator wraps exactly like the int64 result mod 2**32.
    m, n, k = (1, 2, 131_104) if case.small else (2, 20, 140_000)
    a = torch.full((m, k), -128, dtype=torch.int8, device=case.device)
    b = torch.full((n, k), -128, dtype=torch.int8, device=case.device)
    b[1, ::7] = 127
    ref = int8_mm_exact(a, b)
    assert ref[0, 0].item() < 0  # really wrapped
    with forced(case):
        assert_same(ops.int8_mm(a, b), ref)


@pytest.mark.parametrize("case", cases("int8_mm"))
def test_int8_mm_strided_and_misaligned(case):
    gen = torch.Generator().manual_seed(1)
    m, n, k = 13, 35, 22
    a_big = rand_int8(m, k + 9, device=case.device, gen=gen)
    b_big = rand_int8(2 * n, k + 5, device=case.device, gen=gen)
    b = rand_int8(n, k, device=case.device, gen=gen)
    a_misaligned = rand_int8(1 + m * k, device=case.device, gen=gen)[1:].view(m, k)  # no 16/64-byte alignment
    views = {
        "row-strided a": (a_big[:, 3:3 + k], b),  # lda = K + 9, offset start
        "column-strided a": (rand_int8(k, m, device=case.device, gen=gen).T, b),
        "strided b": (a_big[:, :k], b_big[::2, 2:2 + k]),
        "misaligned a": (a_misaligned, b),
    }
    with forced(case):
        for what, (a, b_) in views.items():
            assert_same(ops.int8_mm(a, b_), int8_mm_exact(a, b_), what)


@pytest.mark.parametrize("case", cases("int8_dynamic_linear"))
def test_scaled_ops_on_misaligned_views(case):
    """Every tensor starting one element into its buffer (no 16/64-byte alignment)."""
    gen = torch.Generator().manual_seed(2)
    m, n, k = 5, 21, 67

    def view(t, *shape):
        return t.to(case.device)[1:].view(*shape)

    a, b = view(rand_int8(1 + m * k, gen=gen), m, k), view(rand_int8(1 + n * k, gen=gen), n, k)
    sa, sb = view(torch.rand(1 + m, generator=gen), m), view(torch.rand(1 + n, generator=gen) * 0.01, n)
    bias, x = view(torch.randn(1 + n, generator=gen), n), view(torch.randn(1 + m * k, generator=gen), m, k)
    q, s = quantize_rows_exact(x)
    with forced(case):
        packed = ops.int8_prepack(b)
        assert_same(ops.int8_scaled_mm_packed(a, sa, packed, sb, bias, torch.float32),
                    scaled_epilogue_exact(int8_mm_exact(a, b), sa, sb, bias, torch.float32), "int8_scaled_mm_packed")
        assert_same(ops.int8_scaled_mm(a, sa, b, sb, None, torch.bfloat16),
                    scaled_epilogue_exact(int8_mm_exact(a, b), sa, sb, None, torch.bfloat16), "int8_scaled_mm")
        assert_same(ops.int8_dynamic_linear(x, packed, sb, bias),
                    scaled_epilogue_exact(int8_mm_exact(q, b), s, sb, bias, torch.float32), "int8_dynamic_linear")


# ---- int8_scaled_mm / int8_prepack / int8_scaled_mm_packed: the fused epilogue -----------------------
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("out_dtype", FLOAT_OUT, ids=dtype_id)
@pytest.mark.parametrize("case", cases("int8_scaled_mm_packed", split_k=True))
def test_int8_scaled_mm(case, out_dtype, bias):
    for i, (m, n, k) in enumerate(scaled_shapes_for(case)):
        gen = torch.Generator().manual_seed(m + 31 * n + 977 * k)
        a, a_scale, b, b_scale, bias_t = int8_scaled_inputs(m, n, k, device=case.device, gen=gen, bias=bias)
        expected = scaled_epilogue_exact(int8_mm_exact(a, b), a_scale, b_scale, bias_t, out_dtype)
        with forced(case):
            packed = ops.int8_prepack(b)
            assert_same(ops.int8_scaled_mm_packed(a, a_scale, packed, b_scale, bias_t, out_dtype), expected,
                        f"packed {(m, n, k)}")
            if i == 0 or not case.small:  # Triton on CPU: the packed op runs the same kernel (on the unpacked weight)
                assert_same(ops.int8_scaled_mm(a, a_scale, b, b_scale, bias_t, out_dtype), expected,
                            f"plain {(m, n, k)}")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the interpreter
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")  # inf * 0, ditto
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", cases("int8_scaled_mm_packed"))
def test_half_rounding_edges(case, out_dtype):
    """Scales that push results into float16 overflow and the subnormal range, and inf * 0 = NaN."""
    gen = torch.Generator().manual_seed(11)
    m, n, k = 6, 40, 24
    a, b = rand_int8(m, k, device=case.device, gen=gen), rand_int8(n, k, device=case.device, gen=gen)
    a_scale = torch.tensor([1.0, 1e-7, 300.0, 2.0**-20, 1.0 / 3.0, 65504.0 / 200000.0])
    b_scale = torch.logspace(-9, 3, n)
    b_scale[0] = float("inf")  # inf * 0 -> NaN must stay NaN; inf * x -> inf
    bias = torch.randn(n, generator=gen)
    a_scale, b_scale, bias = a_scale.to(case.device), b_scale.to(case.device), bias.to(case.device)
    a[0, :] = 0  # a zero row meets the inf scale
    expected = scaled_epilogue_exact(int8_mm_exact(a, b), a_scale, b_scale, bias, out_dtype)
    assert expected.isnan().any() and expected.isinf().any()
    with forced(case):
        assert_same(ops.int8_scaled_mm_packed(a, a_scale, ops.int8_prepack(b), b_scale, bias, out_dtype), expected)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the interpreter
@pytest.mark.parametrize("case", cases("int8_scaled_mm", split_k=True))
def test_float16_overflow_to_inf(case):
    # Large scales push results past float16's range: inf, as torch's cast gives.
    gen = torch.Generator().manual_seed(5)
    a = torch.full((2, 64), 127, dtype=torch.int8, device=case.device)
    b = rand_int8(20, 64, device=case.device, gen=gen)
    sa, sb = torch.full((2,), 3.0, device=case.device), torch.full((20,), 2.0, device=case.device)
    expected = scaled_epilogue_exact(int8_mm_exact(a, b), sa, sb, None, torch.float16)
    assert expected.isinf().any()
    with forced(case):
        assert_same(ops.int8_scaled_mm(a, sa, b, sb, None, torch.float16), expected)


# ---- int8_dynamic_linear: W8A8 in one op ------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_OUT, ids=dtype_id)
@pytest.mark.parametrize("case", cases("int8_dynamic_linear"))
def test_int8_dynamic_linear(case, dtype):
    """Equal to per-token quantization + the packed GEMM of the spec, rounding included."""
    shapes = [(1, 5, 33), (3, 17, 13), (5, 24, 70)] if case.small else SHAPES[:11] + [(9, 70, 130)]
    for m, n, k in shapes:
        gen = torch.Generator().manual_seed(m * 7 + n + k)
        x = rand_rows(m, k, dtype, device=case.device, gen=gen, spread=True) * 2
        w, w_scale = rand_int8(n, k, device=case.device, gen=gen), (torch.rand(n, generator=gen) * 0.01).to(case.device)
        bias = torch.randn(n, generator=gen).to(case.device)
        q, s = quantize_rows_exact(x)
        expected = scaled_epilogue_exact(int8_mm_exact(q, w), s, w_scale, bias, dtype)
        with forced(case):
            got = ops.int8_dynamic_linear(x.reshape(1, m, k), ops.int8_prepack(w), w_scale, bias)
        assert_same(got, expected.reshape(1, m, n), f"shape {(m, n, k)}")


@pytest.mark.parametrize("case", cases("int8_dynamic_linear"))
def test_w8a8_composition_approximates_float_linear(case):
    """quantize_per_channel_int8 + int8_prepack + int8_dynamic_linear, as QuantLinear composes them:
    equal to the spec's composition, and close to the float linear layer."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(5, 70, generator=gen).to(torch.bfloat16).to(case.device)
    w = torch.randn(24, 70, generator=gen).to(case.device)
    bias = torch.randn(24, generator=gen).to(case.device)
    with forced(case):
        qw, sw = ops.quantize_per_channel_int8(w)
        out = ops.int8_dynamic_linear(x, ops.int8_prepack(qw), sw, bias)
    (qx, sx), (qw_ref, sw_ref) = quantize_rows_exact(x), quantize_rows_exact(w)
    assert_same(out, scaled_epilogue_exact(int8_mm_exact(qx, qw_ref), sx, sw_ref, bias, torch.bfloat16))
    exact = x.float().cpu() @ w.cpu().T + bias.cpu()
    assert (out.float().cpu() - exact).abs().max() < 0.05 * (exact - bias.cpu()).abs().max()


# ---- 7-bit activations: the AVX2 kernel's vpmaddubsw path (every a in [-64, 63]) ----------------------
@pytest.mark.parametrize("case", cases("int8_mm"))
def test_int8_mm_7bit_range_bit_exact(case):
    """Activations in [-64, 63] (the AVX2 kernel then takes its vpmaddubsw path) against full-range and
    extreme weights; one value outside the range, in the K tail or the body, sends the call back to
    the full-range path: exact either way."""
    outliers = [None, (-1, -1, -65)] if case.small else [None, (-1, -1, -65), (0, None, 64), (None, 0, -128)]
    for m, n, k in shapes_for(case)[:4 if case.small else 12]:
        gen = torch.Generator().manual_seed(m * 31 + n * 7 + k)
        a = torch.randint(-64, 64, (m, k), generator=gen, dtype=torch.int8)
        a[0, : k // 2] = -64  # the extremes of the range
        a[-1, k // 2:] = 63
        for b in (rand_int8(n, k, gen=gen), extreme_int8("mix", n, k, gen=gen), extreme_int8("min", n, k)):
            for outlier in outliers:
                a_case = a.clone()
                if outlier is not None:  # (row, column, value), None: the middle
                    row, col, value = outlier
                    a_case[m // 2 if row is None else row, k // 2 if col is None else col] = value
                a_case, b_case = a_case.to(case.device), b.to(case.device)
                with forced(case):
                    got = ops.int8_mm(a_case, b_case)
                assert_same(got, int8_mm_exact(a_case, b_case), f"shape {(m, n, k)} outlier {outlier}")


@pytest.mark.parametrize("dtype", FLOAT_OUT, ids=dtype_id)
@pytest.mark.parametrize("case", cases("int8_dynamic_linear"))
def test_int8_dynamic_linear_7bit_activations(case, dtype):
    """act_bits=7: activations quantized to |q| <= 63 (scale amax / 63), then the same exact GEMM and
    epilogue, bit for bit on every implementation and instruction set."""
    shapes = [(1, 5, 33), (3, 17, 13)] if case.small else [(1, 33, 13), (8, 49, 4), (17, 33, 13), (33, 50, 257),
                                                           (64, 300, 520), (8, 300, 4096)]
    for m, n, k in shapes:
        gen = torch.Generator().manual_seed(m * 5 + n + k)
        x = rand_rows(m, k, dtype, device=case.device, gen=gen, spread=True) * 2
        w, w_scale = rand_int8(n, k, device=case.device, gen=gen), (torch.rand(n, generator=gen) * 0.01).to(case.device)
        bias = torch.randn(n, generator=gen).to(case.device)
        q, s = quantize_rows_int8(x.cpu(), 63)
        assert q.abs().max() <= 63 and torch.equal(s, x.cpu().float().abs().amax(1) / 63)
        expected = scaled_epilogue_exact(int8_mm_exact(q, w.cpu()), s, w_scale.cpu(), bias.cpu(), dtype)
        with forced(case):
            got = ops.int8_dynamic_linear(x.reshape(1, m, k), ops.int8_prepack(w), w_scale, bias, 7)
        assert_same(got, expected.reshape(1, m, n).to(case.device), f"shape {(m, n, k)}")


def test_int8_dynamic_linear_7bit_autograd():
    """The same straight-through gradients as with 8-bit activations, act_bits passed or not."""
    gen = torch.Generator().manual_seed(23)
    b, w_scale = rand_int8(12, 40, gen=gen), torch.rand(12, generator=gen) * 0.01 + 0.001
    packed, w = ops.int8_prepack(b), b.float() * w_scale[:, None]
    grad = torch.randn(2, 3, 12, generator=gen)
    for args in [(), (7,), (8,)]:
        x = rand_rows(6, 40, gen=gen).reshape(2, 3, 40).requires_grad_()
        bias = torch.randn(12, generator=gen).requires_grad_()
        ops.int8_dynamic_linear(x, packed, w_scale, bias, *args).backward(grad)
        torch.testing.assert_close(x.grad, grad @ w, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bias.grad, grad.sum((0, 1)), rtol=1e-5, atol=1e-5)


def test_int8_dynamic_linear_rejects_bad_act_bits():
    packed, scale = ops.int8_prepack(torch.ones(3, 8, dtype=torch.int8)), torch.ones(3)
    for bad in (6, 9, True):
        with pytest.raises(ValueError, match="act_bits must be 7 or 8"):
            ops.int8_dynamic_linear(torch.randn(2, 8), packed, scale, None, bad)


# ---- empty problems: answered by dispatch, whatever the implementation ---------------------------------
@pytest.mark.parametrize("case", cases("int8_scaled_mm_packed"))
@pytest.mark.parametrize("m,n,k", [(0, 7, 12), (5, 0, 12), (5, 7, 0), (0, 0, 0)])
def test_empty(case, m, n, k):
    """M, N or K = 0: an empty result, or (K = 0) empty sums: zeros through the epilogue (the bias)."""
    dev = case.device
    gen = torch.Generator().manual_seed(0)
    a, a_scale, b, b_scale, bias = int8_scaled_inputs(m, n, k, device=dev, gen=gen)
    acc = torch.zeros((m, n), dtype=torch.int32, device=dev)
    x = torch.randn(2, m, k, generator=gen).to(dev)
    with forced(case):
        assert_same(ops.int8_mm(a, b), acc)
        packed = ops.int8_prepack(b)
        for out_dtype in FLOAT_OUT:
            for bias_t in (None, bias):
                expected = scaled_epilogue_exact(acc, a_scale, b_scale, bias_t, out_dtype)
                assert_same(ops.int8_scaled_mm(a, a_scale, b, b_scale, bias_t, out_dtype), expected, f"{out_dtype}")
                assert_same(ops.int8_scaled_mm_packed(a, a_scale, packed, b_scale, bias_t, out_dtype), expected,
                            f"packed {out_dtype}")
        y = ops.int8_dynamic_linear(x, packed, b_scale, bias)
        assert_same(y, bias.expand(2, m, n).contiguous() if m and n else torch.empty(2, m, n, device=dev))


# ---- opcheck and concurrency ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases("int8_scaled_mm_packed", per_isa=False))
def test_opcheck(case):
    gen = torch.Generator().manual_seed(4)
    a, a_scale, b, b_scale, bias = int8_scaled_inputs(5, 24, 40, device=case.device, gen=gen)
    packed = ops.int8_prepack(b)
    x = rand_rows(6, 40, device=case.device, gen=gen).view(2, 3, 40)
    checks = [
        (torch.ops.slimkernels.int8_mm.default, (a, b)),
        (torch.ops.slimkernels.int8_scaled_mm.default, (a, a_scale, b, b_scale, bias, torch.bfloat16)),
        (torch.ops.slimkernels.int8_scaled_mm_packed.default, (a, a_scale, packed, b_scale, None, torch.float32)),
        (torch.ops.slimkernels.int8_dynamic_linear.default, (x, packed, b_scale, bias)),
        (torch.ops.slimkernels.int8_dynamic_linear.default, (x, packed, b_scale, bias, 7)),
    ]
    if case.impl == "reference":  # the packing does not depend on the implementation
        checks.append((torch.ops.slimkernels.int8_prepack.default, (b,)))
    for op, args in checks:
        opcheck(case, op, args)


@pytest.mark.parametrize("case", [p for p in cases("int8_dynamic_linear") if not p.values[0].small])
def test_concurrent_callers(case):
    """Python threads calling at once neither deadlock nor mix results; each forces its own case
    (the switches are per thread)."""
    gen = torch.Generator().manual_seed(8)
    inputs = [(rand_int8(24, 300, gen=gen), rand_int8(160, 300, gen=gen), torch.randn(9, 300, generator=gen))
              for _ in range(4)]
    inputs = [tuple(t.to(case.device) for t in args) for args in inputs]
    scale = torch.full((160,), 0.01, device=case.device)
    expected = []
    for a, b, x in inputs:
        q, s = quantize_rows_exact(x)
        expected.append((int8_mm_exact(a, b), scaled_epilogue_exact(int8_mm_exact(q, b), s, scale, None, x.dtype)))
    errors = []

    def work(i):
        a, b, x = inputs[i]
        try:
            with forced(case):
                packed = ops.int8_prepack(b)
                for _ in range(10):
                    assert torch.equal(ops.int8_mm(a, b), expected[i][0])
                    assert torch.equal(ops.int8_dynamic_linear(x, packed, scale), expected[i][1])
        except Exception as exc:  # collected: assertion errors in threads do not fail pytest
            errors.append((i, exc))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in workers)
    assert not errors, errors


# ---- switches and bad input --------------------------------------------------------------------------
def test_forced_backend_switch():
    a, b = rand_int8(2, 8), rand_int8(3, 8)
    before = slimkernels.get_backend()
    with slimkernels.use_backend("reference"):
        assert slimkernels.get_backend() == "reference"
        ops.int8_mm(a, b)
    assert slimkernels.get_backend() == before
    with pytest.raises(ValueError, match="unknown slimkernels backend"):
        slimkernels.set_backend("fastest")
    with slimkernels.use_backend("torch"), pytest.raises(NotImplementedError, match="no 'torch' implementation"):
        ops.int8_mm(a, b)


def test_split_k_switch():
    before = slim_triton.get_split_k()
    with slim_triton.use_split_k("always"):
        assert slim_triton.get_split_k() == "always"
    assert slim_triton.get_split_k() == before
    with pytest.raises(ValueError, match="split_k"):
        slim_triton.set_split_k("sometimes")


def test_int8_mm_rejects_bad_arguments():
    a, b = rand_int8(4, 8), rand_int8(3, 8)
    with pytest.raises(TypeError, match="a must be torch.int8"):
        ops.int8_mm(a.float(), b)
    with pytest.raises(TypeError, match="b must be torch.int8"):
        ops.int8_mm(a, b.to(torch.uint8))
    with pytest.raises(ValueError, match="K must match"):
        ops.int8_mm(a, rand_int8(3, 9))
    with pytest.raises(ValueError, match="a must be 2-D"):
        ops.int8_mm(a[None], b)
    with pytest.raises(ValueError, match="meta"):
        ops.int8_mm(a, b.to("meta"))


def test_scaled_mm_rejects_bad_scales_and_dtypes():
    a, b = rand_int8(4, 8), rand_int8(3, 8)
    sa, sb = torch.rand(4), torch.rand(3)
    with pytest.raises(TypeError, match="a_scale must be torch.float32"):
        ops.int8_scaled_mm(a, sa.half(), b, sb)
    with pytest.raises(ValueError, match="b_scale must have shape"):
        ops.int8_scaled_mm(a, sa, b, torch.rand(4))
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.int8_scaled_mm(a, sa, b, sb, torch.rand(5))
    with pytest.raises(TypeError, match="out_dtype"):
        ops.int8_scaled_mm(a, sa, b, sb, None, torch.int32)


def test_packed_mismatch_is_named():
    a = rand_int8(4, 8)
    packed = ops.int8_prepack(rand_int8(3, 12))  # packed for K=12, used with K=8
    with pytest.raises(ValueError, match="b_packed has shape"):
        ops.int8_scaled_mm_packed(a, torch.rand(4), packed, torch.rand(3))
    with pytest.raises(ValueError, match="w_packed has shape"):
        ops.int8_dynamic_linear(torch.randn(2, 8), packed, torch.rand(3))


# ---- the native CPU binding itself: leading dimensions, threads, null pointers, validation ----------
C = _native._C
ISAS = list(C.supported_isas()) if C is not None else []
needs_native = pytest.mark.skipif(C is None, reason="slimkernels._C is not built")
KINDS = {"int32": torch.int32, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def run_gemm(a, b, *, kind="int32", a_scale=None, b_scale=None, bias=None, threads=1, isa="", lda=None, ldc=None):
    """_C.int8_mm on a [M, K] int8 (any row stride) and b [N, K] int8, into an out buffer with
    ldc >= N whose columns past N must stay untouched. Returns out [M, N]."""
    m, k = a.shape
    n = b.shape[0]
    packed = pack_int8_cpu(b)
    lda = a.stride(0) if lda is None else lda
    ldc = n if ldc is None else ldc
    buf = torch.full((max(m, 1), max(ldc, 1)), 7, dtype=KINDS[kind])  # sentinel outside [:, :n]
    C.int8_mm(a.data_ptr(), lda, packed.data_ptr(), m, n, k, buf.data_ptr(), ldc, kind,
              0 if a_scale is None else a_scale.data_ptr(), 0 if b_scale is None else b_scale.data_ptr(),
              0 if bias is None else bias.data_ptr(), threads, isa)
    if ldc > n and m > 0:
        assert (buf[:m, n:ldc] == 7).all(), "wrote past N"
    return buf[:m, :n]


@needs_native
def test_binding_isa_queries():
    assert C.cpu_isa() == ISAS[0]
    assert ISAS[-1] == "scalar"
    assert set(ISAS) <= {"avx512_vnni", "avx2", "scalar"}


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", ISAS)
def test_binding_threads_and_leading_dimensions(isa, threads):
    """Single- and multi-threaded, a read at lda > K from an offset start, out written at ldc > N."""
    gen = torch.Generator().manual_seed(3)
    for m, n, k in [(1, 33, 13), (13, 35, 22), (17, 50, 64), (64, 300, 520)]:
        a = rand_int8(m, k + 9, gen=gen)[:, 3:3 + k]
        b = rand_int8(n, k, gen=gen)
        assert_same(run_gemm(a, b, isa=isa, threads=threads, ldc=n + 5), int8_mm_exact(a, b), f"{(m, n, k)}")
        a_scale, b_scale = torch.rand(m, generator=gen) * 0.02 + 1e-4, torch.rand(n, generator=gen) * 0.01 + 1e-4
        bias = torch.randn(n, generator=gen) * 3
        for kind in ("float32", "float16", "bfloat16"):
            got = run_gemm(a, b, kind=kind, a_scale=a_scale, b_scale=b_scale, bias=bias, threads=threads, isa=isa,
                           ldc=n + 3)
            assert_same(got, scaled_epilogue_exact(int8_mm_exact(a, b), a_scale, b_scale, bias, KINDS[kind]),
                        f"{kind} {(m, n, k)}")
    for kind_a, kind_b in [("min", "min"), ("signs", "signs")]:
        a, b = extreme_int8(kind_a, 11, 1030, gen=gen), extreme_int8(kind_b, 37, 1030, gen=gen)
        assert_same(run_gemm(a, b, threads=threads, isa=isa), int8_mm_exact(a, b), f"{kind_a} x {kind_b}")


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_binding_empty(isa):
    b = rand_int8(5, 8)
    packed = pack_int8_cpu(b)
    out = torch.full((1, 5), 3, dtype=torch.int32)
    # M == 0 and N == 0: no-ops (null pointers allowed)
    C.int8_mm(0, 8, packed.data_ptr(), 0, 5, 8, 0, 5, "int32", 0, 0, 0, 1, isa)
    C.int8_mm(0, 8, 0, 3, 0, 8, 0, 0, "float32", 0, 0, 0, 2, isa)
    C.int8_mm(0, 8, packed.data_ptr(), 0, 5, 8, out.data_ptr(), 5, "float32", 0, 0, 0, 1, isa)
    assert (out == 3).all()
    # K == 0 (lda = 0): sums of nothing, through the epilogue
    m, n = 3, 20
    a, b = torch.zeros(m, 0, dtype=torch.int8), torch.zeros(n, 0, dtype=torch.int8)
    a_scale, b_scale, bias = torch.rand(m) + 0.5, torch.rand(n) + 0.5, torch.randn(n)
    zeros = torch.zeros(m, n, dtype=torch.int32)
    for kind, dtype in KINDS.items():
        got = run_gemm(a, b, kind=kind, a_scale=a_scale, b_scale=b_scale, bias=bias, isa=isa, lda=0)
        expected = zeros if kind == "int32" else scaled_epilogue_exact(zeros, a_scale, b_scale, bias, dtype)
        assert_same(got, expected, kind)


@needs_native
def test_binding_bad_arguments_raise_value_error():
    a = torch.ones(2, 8, dtype=torch.int8)
    packed = pack_int8_cpu(torch.ones(3, 8, dtype=torch.int8))
    out = torch.empty(2, 3, dtype=torch.float32)
    sc = torch.ones(3)
    good = dict(a=a.data_ptr(), lda=8, packed=packed.data_ptr(), M=2, N=3, K=8, out=out.data_ptr(), ldc=3,
                out_kind="float32", a_scale=sc.data_ptr(), b_scale=sc.data_ptr(), bias=0, num_threads=1)
    C.int8_mm(**good)
    bads = [dict(M=-1), dict(N=-1), dict(K=-2), dict(lda=7), dict(ldc=2), dict(out_kind="int8"), dict(a_scale=0),
            dict(b_scale=0), dict(out=0), dict(a=0), dict(packed=0), dict(num_threads=0), dict(isa="avx9000")]
    for bad in bads:
        with pytest.raises(ValueError):
            C.int8_mm(**{**good, **bad})
    with pytest.raises(ValueError, match="lda"):
        C.int8_mm(**{**good, "lda": 7})
    x = torch.randn(2, 8)
    for qmax in (0, 128):
        with pytest.raises(ValueError, match="act_qmax"):
            C.int8_dynamic_linear(x.data_ptr(), 8, "float32", packed.data_ptr(), sc.data_ptr(), 0, 2, 3, 8,
                                  out.data_ptr(), 3, 1, "", qmax)


@needs_native
def test_binding_unsupported_isa_raises():
    for name in ("avx512_vnni", "avx2", "scalar"):
        if name not in ISAS:
            with pytest.raises(ValueError):
                C.int8_mm(0, 0, 0, 0, 0, 0, 0, 0, "int32", 0, 0, 0, 1, name)


# ---- the Triton package ---------------------------------------------------------------------------
def test_triton_available_here():
    if not slim_triton.available():
        pytest.skip(f"Triton kernels cannot run: {slim_triton.unavailable_reason()}")
    assert slim_triton.unavailable_reason() == ""


def test_triton_imports_without_triton(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "sys.modules['triton.language'] = None\n"
        "import slimkernels.triton as t\n"
        "from slimkernels.triton import int8_mm, quantize\n"
        "assert t.available() is False\n"
        "assert 'triton is not importable' in t.unavailable_reason()\n"
        "import torch\n"
        "i8 = torch.ones(2, 2, dtype=torch.int8)\n"
        "for call in (lambda: quantize.quantize_per_token_int8(torch.ones(2, 2)), lambda: int8_mm.int8_mm(i8, i8)):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as e:\n"
        "        assert 'triton' in str(e)\n"
        "    else:\n"
        "        raise AssertionError('expected RuntimeError')\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(slimkernels.__file__))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


# ---- autograd ------------------------------------------------------------------------------------------
# int8_dynamic_linear: x and bias get gradients; the weight is frozen, and the per-token rounding of x is
# taken as the identity (straight-through), so grad_x = grad @ W with W = unpack(w_packed) * w_scale, the
# dequantized weight. int8_scaled_mm(_packed): the int8 operands cannot require grad (torch refuses it on
# integer tensors); the scales and the bias get the exact gradients of (acc * a_scale) * b_scale + bias.
@pytest.mark.parametrize("case", cases("int8_dynamic_linear", per_isa=False))
def test_dynamic_linear_autograd(case):
    dev = case.device
    gen = torch.Generator().manual_seed(21)
    b = rand_int8(12, 40, gen=gen).to(dev)
    w_scale = (torch.rand(12, generator=gen) * 0.01 + 0.001).to(dev)
    w = b.cpu().float() * w_scale.cpu()[:, None]
    x = rand_rows(6, 40, gen=gen).reshape(2, 3, 40).to(dev).requires_grad_()
    bias = torch.randn(12, generator=gen).to(dev).requires_grad_()
    grad = torch.randn(2, 3, 12, generator=gen).to(dev)
    with forced(case):
        packed = ops.int8_prepack(b)
        ops.int8_dynamic_linear(x, packed, w_scale, bias).backward(grad)
    torch.testing.assert_close(x.grad.cpu(), grad.cpu() @ w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad.cpu(), grad.cpu().sum((0, 1)), rtol=1e-5, atol=1e-5)
    # only what was asked for: x alone, bias alone
    x2 = x.detach().clone().requires_grad_()
    with forced(case):
        ops.int8_dynamic_linear(x2, packed, w_scale, bias.detach()).sum().backward()
    torch.testing.assert_close(x2.grad.cpu(), w.sum(0).expand(2, 3, 40), rtol=1e-5, atol=1e-5)


def test_dynamic_linear_autograd_half_and_opcheck():
    gen = torch.Generator().manual_seed(22)
    b = rand_int8(24, 40, gen=gen)
    w_scale = torch.rand(24, generator=gen) * 0.01 + 0.001
    packed = ops.int8_prepack(b)
    for dtype in (torch.bfloat16, torch.float16):
        x = rand_rows(5, 40, gen=gen).to(dtype).requires_grad_()
        ops.int8_dynamic_linear(x, packed, w_scale).sum().backward()
        assert x.grad.dtype == dtype
        expected = (b.float() * w_scale[:, None]).sum(0).expand(5, 40).to(dtype)
        torch.testing.assert_close(x.grad.float(), expected.float())
    # opcheck with inputs that require grad: the autograd registration and its AOT trace
    x = rand_rows(6, 40, gen=gen).view(2, 3, 40).requires_grad_()
    bias = torch.randn(24, generator=gen, requires_grad=True)
    op = torch.ops.slimkernels.int8_dynamic_linear.default
    torch.library.opcheck(op, (x, packed, w_scale, bias))
    torch.library.opcheck(op, (x, packed, w_scale, None))
    torch.library.opcheck(op, (x.detach(), packed, w_scale, bias))


def test_dynamic_linear_refuses_a_weight_gradient():
    gen = torch.Generator().manual_seed(23)
    packed = ops.int8_prepack(rand_int8(8, 16, gen=gen))
    w_scale = torch.rand(8, generator=gen).requires_grad_()
    x = torch.randn(3, 16, requires_grad=True)
    y = ops.int8_dynamic_linear(x, packed, w_scale)
    with pytest.raises(RuntimeError, match=r"slimkernels.int8_dynamic_linear: no gradient for w_scale: the quantized "
                                           r"weight is frozen.*prepare_qat_"):
        y.sum().backward()
    with pytest.raises(RuntimeError, match="only Tensors of floating point"):  # torch's own, on the int8 tensor
        packed.requires_grad_()


def test_scaled_mm_autograd():
    gen = torch.Generator().manual_seed(24)
    a, a_scale, b, b_scale, bias = int8_scaled_inputs(5, 24, 40, gen=gen)
    packed = ops.int8_prepack(b)
    acc = int8_mm_exact(a, b).double()
    grad = torch.randn(5, 24, generator=gen)
    for name, fn in (("int8_scaled_mm", lambda s_a, s_b, c: ops.int8_scaled_mm(a, s_a, b, s_b, c)),
                     ("int8_scaled_mm_packed", lambda s_a, s_b, c: ops.int8_scaled_mm_packed(a, s_a, packed, s_b, c))):
        args = [t.clone().requires_grad_() for t in (a_scale, b_scale, bias)]
        fn(*args).backward(grad)
        ref = [t.detach().double().requires_grad_() for t in (a_scale, b_scale, bias)]
        ((acc * ref[0][:, None]) * ref[1][None, :] + ref[2][None, :]).backward(grad.double())
        for got, want in zip(args, ref):
            torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-5, atol=1e-6, msg=name)
        # only the bias: no product is recomputed, the scales get nothing
        c = bias.clone().requires_grad_()
        fn(a_scale, b_scale, c).backward(grad)
        torch.testing.assert_close(c.grad, grad.sum(0), msg=name)
    with pytest.raises(RuntimeError, match="only Tensors of floating point"):  # an int8 operand has no gradient
        a.clone().requires_grad_()
    assert not ops.int8_mm(a, b).requires_grad  # integer out: nothing to differentiate
    for op, args in ((torch.ops.slimkernels.int8_scaled_mm.default,
                      (a, a_scale.clone().requires_grad_(), b, b_scale.clone().requires_grad_(), bias, torch.bfloat16)),
                     (torch.ops.slimkernels.int8_scaled_mm_packed.default,
                      (a, a_scale, packed, b_scale.clone().requires_grad_(), bias.clone().requires_grad_(),
                       torch.float32))):
        torch.library.opcheck(op, args)


# ---- int8_unpack: the exact inverse of int8_prepack, every layout ----------------------------------------
UNPACK_SHAPES = [(1, 1), (1, 4), (5, 3), (16, 16), (17, 33), (33, 13), (48, 100), (97, 129), (300, 520), (7, 0), (0, 9)]


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_int8_unpack_inverts_prepack(device):
    from slimkernels.quant.packing import pack_int8_plain

    for n, k in UNPACK_SHAPES:
        gen = torch.Generator().manual_seed(n * 1009 + k)
        for b in (rand_int8(n, k, gen=gen), extreme_int8("mix", n, k, gen=gen)):
            b = b.to(device)
            packed = ops.int8_prepack(b)
            got = ops.int8_unpack(packed, n, k)
            assert_same(got, b, f"{device} {(n, k)}")
            assert got.data_ptr() != packed.data_ptr() or not got.numel()  # a copy, never a view
            # the other layout read on this device (a weight moved before it is repacked)
            other = pack_int8_plain(b) if device == "cpu" else pack_int8_cpu(b.cpu()).to(device)
            assert_same(ops.int8_unpack(other, n, k), b, f"other layout {(n, k)}")


@pytest.mark.parametrize("isa", ISAS)
def test_int8_unpack_is_what_every_isa_kernel_reads(isa):
    """The layout is one for every instruction set: the weight unpacked is the weight each kernel multiplies by."""
    for m, n, k in [(1, 33, 13), (5, 97, 129), (17, 48, 100)]:
        gen = torch.Generator().manual_seed(m + n + k)
        a, b = rand_int8(m, k, gen=gen), rand_int8(n, k, gen=gen)
        packed = ops.int8_prepack(b)
        with slimkernels.use_backend("native"), slimkernels.use_cpu_isa(isa):
            got = ops.int8_scaled_mm_packed(a, torch.ones(m), packed, torch.ones(n), None, torch.float32)
        assert_same(got, int8_mm_exact(a, ops.int8_unpack(packed, n, k)).float(), f"{isa} {(m, n, k)}")


def test_int8_unpack_rejects_bad_input():
    packed = ops.int8_prepack(rand_int8(5, 7))
    with pytest.raises(ValueError, match=r"int8_unpack: packed has shape .* no int8_prepack layout of an \[N, K\] = \[17, 7\]"):
        ops.int8_unpack(packed, 17, 7)
    with pytest.raises(TypeError, match="int8_unpack: packed must be torch.int8"):
        ops.int8_unpack(packed.view(torch.uint8), 5, 7)
    for n, k in ((-1, 7), (5, 7.0), (True, 7)):
        with pytest.raises(ValueError, match="int8_unpack: [nk] must be an int >= 0"):
            ops.int8_unpack(packed, n, k)
