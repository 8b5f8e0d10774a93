"""The lowbit family (dequant_mm_int4: int4 group-wise; lut_mm: 2/3/4-bit codebooks): every
implementation usable here (reference; native on each CPU instruction set, and on AMX-BF16 tiles
under slimkernels.use_cpu_amx; Triton, on CPU under its interpreter with small shapes, through both
split-K policies; CUDA) against the reference (weights dequantized in float32, float32 GEMM,
rounded once to x.dtype).
The numerical sweeps leave the reference out (it is what they compare with); the contract tests
(strides, empty problems, special values, opcheck, autograd) run it too.

Tolerance per element: slimkernels.testing.linear_bound. For the native CPU kernels 1e-5 *
(|x| @ |w|.T) (a float32 sum in another order) plus one rounding step of the output kind (2^-23,
2^-10 and 2^-7 of |y| for float32, float16 and bfloat16: a sum that differs in its last bit can
round the other way once the bias is added or the output is narrowed). Triton casts the decoded
weight to x's dtype and rounds its result too: (u_w + K * 2^-24) * (|x| @ |w|.T) plus two output
steps. CUDA native: relative to the largest |reference| of the output.

Then what only one implementation has: the native binding (leading dimensions, null pointers,
argument validation), the AMX paths (on / off / auto, the auto thresholds bit for bit), Triton's
split-K determinism and its launchers' strides, and the CUDA GEMV threshold, side streams, graph
capture and binding checks.
"""
from __future__ import annotations

import pytest
import torch

import slimkernels
from slimkernels import _native, ops
from slimkernels.backends.lowbit import (LOWBIT_GEMV_MAX_M, avx512_bf16_supported, dequant_mm_int4_reference,
                                         lut_mm_reference)
from slimkernels.quant import lowbit
from slimkernels.testing import (
    Case, assert_close_linear, cases, forced, make_codebook, make_int4, opcheck, rand_x,
)

C = _native._C
ISAS = list(C.supported_isas()) if C is not None else []
AMX = C is not None and bool(C.amx_bf16_supported())
needs_amx = pytest.mark.skipif(not AMX, reason="no AMX-BF16 here (CPU, OS or build)")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731

INT4_CASES = cases("dequant_mm_int4")
LUT_CASES = cases("lut_mm")
# Contract tests whose outcome does not depend on the instruction set: native once, on the best.
INT4_CONTRACT = cases("dequant_mm_int4", per_isa=False)
# The numerical sweeps compare with the reference, so they leave the reference itself out.
INT4_SWEEP = cases("dequant_mm_int4", reference=False)
INT4_SPLIT_SWEEP = cases("dequant_mm_int4", reference=False, split_k=True)
LUT_SPLIT_SWEEP = cases("lut_mm", reference=False, split_k=True)
NATIVE_CPU = Case("cpu", "native")  # the best instruction set this CPU has (AMX tests)

# ---- shapes -------------------------------------------------------------------------------------------
# (N, K, group_size). CPU: group-wise 32/64/96/128 and per-channel with an odd K (rows end mid-byte),
# one of them longer than a 128-code chunk (a full chunk, then a row end); N = 37 is odd and not a
# multiple of any register tile. The interpreter (BLOCK_K = 64): group 32 (several groups per tile),
# 64 (one per tile), 96 (tile and group do not nest), per channel with a K tail. CUDA adds K % 32 != 0,
# several 1024-code chunks, and rows whose byte length is not a multiple of the vector load.
INT4_SHAPES_CPU = [(37, 256, 32), (37, 192, 64), (37, 384, 128), (37, 77, 77), (37, 201, 201), (37, 192, 96)]
INT4_SHAPES_SMALL = [(37, 128, 32), (37, 128, 64), (37, 192, 96), (37, 45, 45), (37, 96, 32)]
INT4_SHAPES_CUDA = INT4_SHAPES_CPU + [(129, 512, 128), (65, 192, 64), (33, 77, 77), (300, 4096, 128),
                                      (17, 1000, 1000), (8, 2048, 2048), (1, 3072, 32)]
# (N, K) of the codebook tests: odd K (rows end mid-byte; 3-bit rows end mid-code), full chunks, one code.
LUT_SHAPES_CPU = [(37, 77), (37, 256), (37, 1)]
LUT_SHAPES_CUDA = LUT_SHAPES_CPU + [(64, 1024), (129, 4099), (9, 1000), (3, 5), (40, 2048)]
# M tails (1..5 rows, 17 and 64) on CPU; the interpreter: under, at and over one 16-row tile; CUDA:
# both sides of the GEMV threshold (LOWBIT_GEMV_MAX_M) and a prefill size.
MS_CPU = (1, 2, 3, 4, 5, 17, 64)
MS_SMALL = (1, 3, 16, 33)
MS_CUDA = (1, 2, 3, 4, 5, 8, 9, 16, 17, 64, 300)


def ms_for(case: Case):
    if case.small:
        return tuple(m for m in MS_SMALL if m <= 16 or case.split_k != "always")  # split-K is for M <= 16
    return MS_CUDA if case.device == "cuda" else MS_CPU


def int4_shapes_for(case: Case):
    return INT4_SHAPES_SMALL if case.small else INT4_SHAPES_CUDA if case.device == "cuda" else INT4_SHAPES_CPU


# ---- running an op and checking it ---------------------------------------------------------------------
def _cpu(t):
    return None if t is None else t.cpu()


def run_int4(case, x, qweight, scales, zeros, group_size, bias=None, what="", w=None):
    """The op under `case` against the reference; returns its result. w: the float32 weight, if known."""
    with forced(case):
        got = ops.dequant_mm_int4(x, qweight, scales, zeros, group_size, bias)
    k, n = x.shape[-1], qweight.shape[0]
    rows = x.reshape(-1, k).cpu()
    qweight, scales, zeros, bias = map(_cpu, (qweight, scales, zeros, bias))
    ref = dequant_mm_int4_reference(rows, qweight, scales, zeros, group_size, bias)
    if w is None:
        w = lowbit.dequantize_int4(qweight, scales, zeros, group_size, k)
    assert got.shape == (*x.shape[:-1], n)
    assert_close_linear(got.reshape(-1, n), ref, rows, w, case, what)
    return got


def run_lut(case, x, indices, codebook, bias=None, what="", w=None):
    with forced(case):
        got = ops.lut_mm(x, indices, codebook, bias)
    k, n = x.shape[-1], indices.shape[0]
    rows = x.reshape(-1, k).cpu()
    indices, codebook, bias = map(_cpu, (indices, codebook, bias))
    ref = lut_mm_reference(rows, indices, codebook, bias)
    if w is None:
        w = lowbit.dequantize_codebook(indices, codebook, k)
    assert got.shape == (*x.shape[:-1], n)
    assert_close_linear(got.reshape(-1, n), ref, rows, w, case, what)
    return got


def int4_weights(n, k, group_size, asym, seed, device):
    """make_int4's (qweight, scales, zeros) and the float32 weight (on the CPU)."""
    qweight, scales, zeros = make_int4(n, k, group_size, asym, seed=seed)
    w = lowbit.dequantize_int4(qweight, scales, zeros, group_size, k)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(qweight), to(scales), to(zeros), w


def lut_weights(n, k, bits, per_row, seed, device):
    indices, codebook = make_codebook(n, k, bits, per_row, seed=seed)
    return indices.to(device), codebook.to(device), lowbit.dequantize_codebook(indices, codebook, k)


# ======================================= every implementation =======================================
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", INT4_SPLIT_SWEEP)
def test_int4_matches_reference(case, dtype):
    dev = case.device
    for j, (n, k, g) in enumerate(int4_shapes_for(case)):
        bias = torch.randn(n, generator=torch.Generator().manual_seed(j)).to(dev)
        weights = {asym: int4_weights(n, k, g, asym, j, dev) for asym in (True, False)}  # asymmetric, symmetric
        for i, m in enumerate(ms_for(case)):
            asym, b = (i + j) % 2 == 0, bias if (i + j) % 3 else None
            qweight, scales, zeros, w = weights[asym]
            run_int4(case, rand_x(m, k, dtype, seed=i, device=dev), qweight, scales, zeros, g, b,
                     f"M={m} N={n} K={k} group={g} asym={asym} bias={b is not None}", w)


# (bits, per-row codebook); the interpreter runs the first four only
LUT_FORMATS = [(2, True), (3, False), (3, True), (4, False), (2, False), (4, True)]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("bits,per_row", LUT_FORMATS, ids=[f"{b}bit-{'row' if r else 'layer'}" for b, r in LUT_FORMATS])
@pytest.mark.parametrize("case", LUT_SPLIT_SWEEP)
def test_lut_matches_reference(case, dtype, bits, per_row):
    if case.small and (bits, per_row) not in LUT_FORMATS[:4]:
        pytest.skip("interpreter: a subset of the formats")
    dev = case.device
    shapes = [(37, 45), (37, 128)] if case.small else LUT_SHAPES_CUDA if case.device == "cuda" else LUT_SHAPES_CPU
    weights = {(n, k): lut_weights(n, k, bits, per_row, k, dev) for n, k in shapes}
    for i, m in enumerate(ms_for(case)):
        # the interpreter: an odd K (codes straddle the row's last byte) or two K tiles, per M
        for n, k in [shapes[m % 2 == 0]] if case.small else shapes:
            indices, codebook, w = weights[n, k]
            b = torch.randn(n).to(dev) if i % 2 else None
            run_lut(case, rand_x(m, k, dtype, seed=i, device=dev), indices, codebook, b,
                    f"M={m} N={n} K={k} bias={b is not None}", w)


@pytest.mark.parametrize("case", cases("dequant_mm_int4", impls=("native",)))
def test_threads_and_many_tiles(case):
    # enough work to go parallel (several N chunks, and at M = 200 several M blocks), on 1 and 2
    # threads (the CPU kernels follow torch.get_num_threads())
    dev = case.device
    old = torch.get_num_threads()
    try:
        for m, k in ((1, 1024), (3, 512), (200, 768)):
            qweight, scales, zeros, w = int4_weights(301, k, 128, True, m, dev)
            x, bias = rand_x(m, k, seed=m, device=dev), torch.randn(301).to(dev)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                run_int4(case, x, qweight, scales, zeros, 128, bias, f"M={m} threads={threads}", w)
            indices, codebook, w = lut_weights(301, k, 3, True, m, dev)
            run_lut(case, x, indices, codebook, None, f"M={m}", w)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", INT4_CASES)
def test_strided_and_batched_x(case, dtype):
    # Row-strided x is read in place (strided_rows implementations), anything else is copied once by
    # dispatch; batched x is flattened by the op.
    dev = case.device
    m, n, k = 6, 37, 160
    qweight, scales, zeros = make_int4(n, k, 32, True, seed=3, device=dev)
    indices, codebook = make_codebook(n, k, 2, False, seed=4, device=dev)
    wide = rand_x(2 * m, k + 19, dtype, seed=5, device=dev)
    xs = {
        "column slice": wide[:m, 7:7 + k],                      # row stride k + 19
        "every other row": wide[::2, 3:3 + k],                  # row stride 2 * (k + 19)
        "column-major": wide[:m, :k].t().contiguous().t(),      # stride(1) != 1
        "batched slice": wide.reshape(2, m, k + 19)[..., 5:5 + k],  # [2, 6, K], rows strided
        "single row": wide.reshape(-1)[:k].as_strided((1, k), (1, 1)),  # any stride on a size-1 dim
    }
    bias = torch.randn(n).to(dev)
    for name, x in xs.items():
        run_int4(case, x, qweight, scales, zeros, 32, bias, name)
        run_lut(case, x, indices, codebook, None, name)


@pytest.mark.parametrize("case", INT4_CONTRACT)
def test_noncontiguous_weights(case):
    # Column-major codes, scales, zeros and codebook, a strided bias: dispatch makes them contiguous.
    dev = case.device
    n, k = 24, 128
    x = rand_x(3, k, seed=1, device=dev)
    qweight, scales, zeros = make_int4(n, k, 32, True, seed=2, device=dev)
    indices, codebook = make_codebook(n, k, 4, True, seed=3, device=dev)
    cm = lambda t: t.t().contiguous().t()  # noqa: E731
    bias = torch.randn(2 * n).to(dev)[::2]
    run_int4(case, x, cm(qweight), cm(scales), cm(zeros), 32, bias)
    run_lut(case, x, cm(indices), cm(codebook), bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", INT4_SWEEP)
def test_extremes_and_large_magnitudes(case, dtype):
    dev = case.device
    m, n, k, g = (5, 40, 128, 32) if case.small else (5, 37, 256, 64)
    gen = torch.Generator().manual_seed(7)
    half = dtype == torch.float16  # float16 outputs: stay below its 65504 maximum
    # large x and scales
    x = rand_x(m, k, dtype, seed=7, device=dev, scale=1e4)
    qweight, scales, zeros = make_int4(n, k, g, True, seed=8, device=dev)
    run_int4(case, x, qweight, scales * (1e-3 if half else 10.0), zeros, g, None, "large magnitudes")
    indices, codebook = make_codebook(n, k, 4, True, seed=9, device=dev)
    run_lut(case, x, indices, codebook * (1e-3 if half else 1e3), None, "large magnitudes")
    # codes 0 and 15 against zero points 0 and 15 (|q - z| up to 15), scales over five decades
    for pattern in ("min", "max", "mix"):
        codes = {"min": torch.zeros(n, k, dtype=torch.long), "max": torch.full((n, k), 15),
                 "mix": torch.where(torch.rand(n, k, generator=gen) < 0.5, 0, 15)}[pattern]
        qweight, scales, _ = make_int4(n, k, g, False, seed=9, device=dev, codes=codes, scale_decades=(-4.0, 1.0))
        zeros = torch.where(torch.rand(n, k // g, generator=gen) < 0.5, 0, 15).to(torch.uint8).to(dev)
        x = rand_x(m, k, dtype, seed=10, device=dev, scale=1.0 if half else 100.0)
        for z in (zeros, None):
            run_int4(case, x, qweight, scales, z, g, torch.randn(n).to(dev), f"{pattern} zeros={z is not None}")
    # codebook entries of every magnitude, both signs (AMX splits each into three bfloat16 pieces)
    for bits in (2, 3, 4):
        indices, codebook = make_codebook(n, k, bits, bits != 3, seed=11, device=dev)
        lo, hi = (-4, 2) if half else (-30, 30)
        mags = torch.logspace(lo, hi, codebook.numel()).reshape(codebook.shape)
        signs = torch.where(torch.rand(codebook.shape, generator=gen) < 0.5, -1.0, 1.0)
        run_lut(case, rand_x(m, k, dtype, seed=12, device=dev), indices, (signs * mags).to(dev), None,
                f"{bits}-bit codebook magnitudes")


@pytest.mark.parametrize("case", INT4_CASES)
def test_zero_points_outside_the_layout(case):
    # The layout says 0..15, but the op does not scan zeros on every call: any uint8 zero point must
    # compute what the reference computes, never index past a kernel's tables.
    dev = case.device
    n, k = 37, 256
    qweight, scales, _ = make_int4(n, k, 128, False, seed=11, device=dev)
    zeros = torch.randint(16, 256, (n, k // 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for m in (3, 7):  # both sides of the AMX threshold
        run_int4(case, rand_x(m, k, seed=11, device=dev), qweight, scales, zeros.to(dev), 128, None, f"M={m}")


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("case", LUT_CASES)
def test_padding_codes_never_count(case, bits):
    # Entry 0 of the codebook is inf and no code uses it, so the result is finite even though the
    # padding bits at the end of each row read as code 0.
    dev = case.device
    n, k = 37, 45
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(1, 1 << bits, (n, k), generator=gen)
    codebook = torch.randn(1, 1 << bits, generator=gen)
    codebook[0, 0] = float("inf")
    indices = lowbit.pack_codes(codes, bits)
    for m in (3, 17):  # both sides of the AMX threshold
        x = torch.randn(m, k, generator=gen)
        with forced(case):
            y = ops.lut_mm(x.to(dev), indices.to(dev), codebook.to(dev))
        assert torch.isfinite(y).all()
        w = codebook[0][codes]
        assert_close_linear(y, x @ w.T, x, w, case, f"M={m}")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # Triton's interpreter: Inf * 0
@pytest.mark.parametrize("case", INT4_CASES)
def test_inf_nan_and_huge_x(case):
    # Inf and NaN in x give non-finite outputs where the reference has them (Inf * a zero weight is
    # NaN); a huge finite x (1e36) stays finite and close.
    dev = case.device
    m, n, k = 9, 37, 128
    x = rand_x(m, k, seed=2)
    x[0, 3], x[1, 5], x[2, 0] = float("inf"), float("nan"), 1e36
    qweight, scales, zeros = make_int4(n, k, 64, False, seed=4)
    ref = dequant_mm_int4_reference(x, qweight, scales, zeros, 64, None)
    with forced(case):
        got = ops.dequant_mm_int4(x.to(dev), qweight.to(dev), scales.to(dev), None, 64).cpu()
    assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.isinf(), ref.isinf())
    assert torch.isfinite(got[2:]).all()
    assert_close_linear(got[2:], ref[2:], x[2:], lowbit.dequantize_int4(qweight, scales, None, 64, k), case)
    for bits in (2, 3, 4):
        indices, codebook = make_codebook(n, k, bits, True, seed=3)
        ref = lut_mm_reference(x, indices, codebook, None)
        with forced(case):
            got = ops.lut_mm(x.to(dev), indices.to(dev), codebook.to(dev)).cpu()
        assert torch.equal(got.isfinite(), ref.isfinite()) and not got[:2].isfinite().any()
        assert_close_linear(got[2:], ref[2:], x[2:], lowbit.dequantize_codebook(indices, codebook, k), case)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", INT4_CONTRACT)
def test_bias_dtypes_and_3d(case, dtype):
    # Any float bias dtype (added in float32); x with batch dims gives what its rows give, bit for bit.
    dev = case.device
    x = rand_x(6, 64, dtype, seed=3, device=dev)
    qweight, scales, zeros = make_int4(24, 64, 32, True, seed=4, device=dev)
    indices, codebook = make_codebook(24, 64, 4, True, seed=5, device=dev)
    b = (torch.randn(24) * 4).to(dev)
    for bias in (b.half(), b.bfloat16(), b.float()):
        run_int4(case, x, qweight, scales, zeros, 32, bias, f"bias {bias.dtype}")
        run_lut(case, x, indices, codebook, bias, f"bias {bias.dtype}")
    with forced(case):
        flat4, flat_lut = ops.dequant_mm_int4(x, qweight, scales, zeros, 32, b), ops.lut_mm(x, indices, codebook)
        got4 = ops.dequant_mm_int4(x.reshape(2, 3, 64), qweight, scales, zeros, 32, b)
        got_lut = ops.lut_mm(x.reshape(2, 3, 64), indices, codebook)
    assert got4.shape == got_lut.shape == (2, 3, 24)
    assert torch.equal(got4.reshape(6, 24), flat4) and torch.equal(got_lut.reshape(6, 24), flat_lut)


@pytest.mark.parametrize("m,n,k", [(0, 8, 64), (4, 0, 64), (4, 8, 0), (0, 0, 0)])
@pytest.mark.parametrize("case", INT4_CONTRACT)
def test_empty_problems(case, m, n, k):
    # M, N or K = 0 through the op: an empty result, or (K = 0, an empty sum) the bias or zeros.
    dev = case.device
    b = torch.randn(n).to(dev)
    qweight, scales = torch.zeros(n, (k + 1) // 2, dtype=torch.uint8), torch.rand(n, 1 if k else 0)
    zeros = torch.zeros(n, 1 if k else 0, dtype=torch.uint8)
    indices, codebook = torch.zeros(n, (k * 3 + 7) // 8, dtype=torch.uint8), torch.randn(1, 8)
    for dtype in DTYPES:
        expect = b.to(dtype).expand(m, n)
        for shape in ((m, k), (1, m, k), (m, 1, k)):
            x = torch.randn(shape).to(dtype).to(dev)
            want = expect.reshape(*shape[:-1], n)
            with forced(case):
                for bias, z in ((b, zeros), (None, None)):
                    got = ops.dequant_mm_int4(x, qweight.to(dev), scales.to(dev), None if z is None else z.to(dev),
                                              k or 32, bias)
                    assert got.dtype == dtype and got.device.type == dev
                    assert torch.equal(got, want if bias is not None else torch.zeros_like(want))
                    got = ops.lut_mm(x, indices.to(dev), codebook.to(dev), bias)
                    assert got.dtype == dtype and got.device.type == dev
                    assert torch.equal(got, want if bias is not None else torch.zeros_like(want))


@pytest.mark.parametrize("case", INT4_CONTRACT)
def test_opcheck(case):
    dev = case.device
    x = rand_x(3, 64, seed=1, device=dev)
    qweight, scales, zeros = make_int4(5, 64, 32, True, seed=2, device=dev)
    indices, codebook = make_codebook(5, 70, 3, True, seed=2, device=dev)
    x70 = rand_x(3, 70, seed=3, device=dev)
    int4_op, lut_op = torch.ops.slimkernels.dequant_mm_int4.default, torch.ops.slimkernels.lut_mm.default
    opcheck(case, int4_op, (x, qweight, scales, zeros, 32, None))
    opcheck(case, int4_op, (x, qweight, scales[:, :1].contiguous(), None, 64, torch.randn(5, device=dev)))
    opcheck(case, lut_op, (x70, indices, codebook, torch.randn(5, device=dev)))


@pytest.mark.parametrize("case", INT4_CONTRACT)
def test_autograd(case):
    # The weights are frozen codes: x and bias get gradients (x: grad @ W, bias: grad summed over rows).
    dev = case.device
    qweight, scales, zeros = make_int4(12, 64, 32, True, seed=6, device=dev)
    indices, codebook = make_codebook(12, 64, 2, False, seed=6, device=dev)
    weights = {
        "int4": (lambda x, b: ops.dequant_mm_int4(x, qweight, scales, zeros, 32, b),
                 lowbit.dequantize_int4(qweight.cpu(), scales.cpu(), zeros.cpu(), 32, 64)),
        "lut": (lambda x, b: ops.lut_mm(x, indices, codebook, b),
                lowbit.dequantize_codebook(indices.cpu(), codebook.cpu(), 64)),
    }
    for name, (fn, w) in weights.items():
        x = rand_x(6, 64, seed=7, device=dev).reshape(2, 3, 64).requires_grad_()
        bias = torch.randn(12, device=dev, requires_grad=True)
        grad = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(8)).to(dev)
        with forced(case):
            fn(x, bias).backward(grad)
        torch.testing.assert_close(x.grad.cpu(), grad.cpu() @ w, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(bias.grad.cpu(), grad.cpu().sum((0, 1)), rtol=1e-5, atol=1e-5, msg=name)


def test_ops_reject_bad_arguments():
    x = torch.randn(2, 64)
    qweight, scales, zeros = make_int4(8, 64, 32, True)
    indices, codebook = make_codebook(8, 64, 2, False)
    with pytest.raises(ValueError, match="group_size"):
        ops.dequant_mm_int4(x, qweight, scales, zeros, 48)
    with pytest.raises(ValueError, match="qweight has shape"):
        ops.dequant_mm_int4(torch.randn(2, 96), qweight, scales, zeros, 32)
    with pytest.raises(ValueError, match="zeros must have shape"):
        ops.dequant_mm_int4(x, qweight, scales, zeros[:, :1], 32)
    with pytest.raises(TypeError, match="scales must be torch.float32"):
        ops.dequant_mm_int4(x, qweight, scales.double(), zeros, 32)
    with pytest.raises(TypeError, match="x must be"):
        ops.dequant_mm_int4(x.double(), qweight, scales, zeros, 32)
    with pytest.raises(ValueError, match="codebook"):
        ops.lut_mm(x, indices, codebook[:, :3])
    with pytest.raises(ValueError, match="1 row"):
        ops.lut_mm(x, indices, torch.randn(3, 4))
    with pytest.raises(ValueError, match="indices has shape"):
        ops.lut_mm(x, indices, torch.randn(1, 16))  # 4-bit codebook for 2-bit codes
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.lut_mm(x, indices, codebook, torch.randn(7))


# ======================================= the native CPU binding =======================================
def call(x, codes, bits, lut_kind, n, *, scales=None, zeros=None, group_size=0, codebook=None, bias=None,
         threads=1, isa="", ldy=None, amx="auto"):
    """slimkernels._C.lowbit_mm on x [M, K] (possibly a row-strided view); returns y [M, N]."""
    m, k = x.shape
    ldy = n if ldy is None else ldy
    buf = torch.full((m * ldy + 1,), float("nan")).to(x.dtype)  # pads stay NaN: writes outside [N] show up
    p = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    C.lowbit_mm(
        x.data_ptr(), x.stride(0) if m > 1 else k, KIND[x.dtype], codes.data_ptr(), bits, lut_kind, p(scales),
        p(zeros), group_size, p(codebook), 0 if codebook is None else codebook.shape[0], p(bias), buf.data_ptr(),
        ldy, m, n, k, threads, isa, amx,
    )
    y = buf[: m * ldy].view(m, ldy)
    if ldy > n:
        assert torch.isnan(y[:, n:].float()).all(), "wrote outside the output rows"
    return y[:, :n]


def native_case(isa):
    return Case("cpu", "native", isa or None)


needs_native = pytest.mark.skipif(C is None, reason="slimkernels._C is not built")


@needs_native
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("isa", ISAS)
def test_binding_strided_x_and_y(isa, dtype):
    m, n, k = 6, 37, 160
    x = torch.randn(m, k + 19).to(dtype)[:, 7:7 + k]  # ldx > K
    qweight, scales, zeros = make_int4(n, k, 32, True, seed=3)
    bias = torch.randn(n)
    y = call(x, qweight, 4, "int4", n, scales=scales, zeros=zeros, group_size=32, bias=bias, isa=isa, ldy=n + 5,
             threads=2)
    assert_close_linear(y, dequant_mm_int4_reference(x, qweight, scales, zeros, 32, bias), x,
                        lowbit.dequantize_int4(qweight, scales, zeros, 32, k), native_case(isa))
    indices, codebook = make_codebook(n, k, 2, False, seed=4)
    y = call(x, indices, 2, "codebook", n, codebook=codebook, group_size=k, bias=bias, isa=isa, ldy=n + 3)
    assert_close_linear(y, lut_mm_reference(x, indices, codebook, bias), x,
                        lowbit.dequantize_codebook(indices, codebook, k), native_case(isa))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_binding_empty_k_gives_bias(isa):
    x = torch.empty(3, 0, dtype=torch.bfloat16)
    codes = torch.empty(5, 0, dtype=torch.uint8)
    b = torch.randn(5)
    y = call(x, codes, 4, "int4", 5, scales=torch.empty(5, 0), group_size=0, bias=b, isa=isa)
    assert torch.equal(y, b.to(torch.bfloat16).expand(3, 5))


@needs_native
def test_binding_empty_m_n_noop():
    C.lowbit_mm(0, 8, "float32", 0, 4, "int4", 0, 0, 8, 0, 0, 0, 0, 4, 0, 4, 8, 1)
    C.lowbit_mm(0, 8, "float32", 0, 2, "codebook", 0, 0, 8, 0, 1, 0, 0, 0, 3, 0, 8, 1)


def _args(**over):
    x = torch.randn(2, 64)
    qweight, scales, zeros = make_int4(3, 64, 32, True, seed=1)
    y = torch.empty(2, 3)
    a = dict(x=x.data_ptr(), ldx=64, x_kind="float32", codes=qweight.data_ptr(), bits=4, lut_kind="int4",
             scales=scales.data_ptr(), zeros=zeros.data_ptr(), group_size=32, codebook=0, codebook_rows=0, bias=0,
             y=y.data_ptr(), ldy=3, M=2, N=3, K=64, num_threads=1, isa="", amx="auto")
    a.update(over)
    return a, (x, qweight, scales, zeros, y)


@needs_native
@pytest.mark.parametrize(
    "over, name",
    [
        (dict(M=-1), "M"), (dict(N=-1), "N"), (dict(K=-1), "K"), (dict(ldx=63), "ldx"), (dict(ldy=2), "ldy"),
        (dict(num_threads=0), "num_threads"), (dict(x_kind="int8"), "x_kind"), (dict(isa="sse9"), "isa"),
        (dict(bits=5), "bits"), (dict(bits=1), "bits"), (dict(bits=2), "bits"), (dict(lut_kind="nf4"), "lut_kind"),
        (dict(group_size=48), "group_size"), (dict(group_size=0), "group_size"), (dict(group_size=-32), "group_size"),
        (dict(lut_kind="codebook", bits=2, codebook_rows=2), "codebook_rows"),
        (dict(lut_kind="codebook", bits=2, codebook_rows=1), "codebook"),
        (dict(y=0), "y"), (dict(x=0), "x"), (dict(codes=0), "codes"), (dict(scales=0), "scales"),
        (dict(amx="yes"), "amx"),
    ],
)
def test_binding_rejects_bad_arguments(over, name):
    a, keep = _args(**over)
    with pytest.raises(ValueError, match=name):
        C.lowbit_mm(**a)


@needs_native
def test_amx_switch_validation():
    # The switches refuse unknown values; amx='on' where the forced ISA (or the CPU) has no AMX is an error.
    amx, isa = slimkernels.get_cpu_amx(), slimkernels.get_cpu_isa()
    with pytest.raises(ValueError, match="cpu_amx"):
        slimkernels.set_cpu_amx("yes")
    with pytest.raises(ValueError, match="cpu_isa"), slimkernels.use_cpu_isa("sse9"):
        pass
    assert (slimkernels.get_cpu_amx(), slimkernels.get_cpu_isa()) == (amx, isa)  # a refused value changes nothing
    qweight, scales, zeros = make_int4(8, 64, 32, True, seed=6)
    x = rand_x(8, 64, seed=6)
    on_unsupported = [isa for isa in ISAS if isa != "avx512_vnni" or not AMX] + ([] if AMX else [None])
    for isa in on_unsupported:
        with slimkernels.use_backend("native"), slimkernels.use_cpu_isa(isa), slimkernels.use_cpu_amx("on"):
            with pytest.raises(ValueError, match="amx='on' needs AMX-BF16"):
                ops.dequant_mm_int4(x, qweight, scales, zeros, 32)


# ======================================= AMX-BF16 tiles (native CPU) ===================================
# amx 'on' forces the tiles at any M; 'auto' from 6 rows of x for int4, 256 for 2- and 4-bit codebooks
# (16 in bf16, under isa avx512_bf16)
# (3-bit codebooks keep the float32 kernel, even with 'on'); 'off' never.
AMX_SHAPES = [(1, 37), (5, 48), (16, 100), (17, 49), (40, 37)]  # (M, N): tails of the 16-row tiles and units


@needs_amx
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("k, group_size", [(256, 32), (192, 64), (384, 128), (77, 77), (201, 201), (1024, 128)],
                         ids=lambda v: str(v))
def test_int4_amx(dtype, k, group_size):
    old = torch.get_num_threads()
    try:
        with slimkernels.use_cpu_amx("on"):
            for i, (m, n) in enumerate(AMX_SHAPES):
                qweight, scales, zeros = make_int4(n, k, group_size, i % 2 == 0, seed=i)
                bias = torch.randn(n) if i % 3 else None
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    run_int4(NATIVE_CPU, rand_x(m, k, dtype, seed=i), qweight, scales, zeros, group_size, bias,
                             f"M={m} N={n} threads={threads}")
    finally:
        torch.set_num_threads(old)


@needs_amx
def test_int4_amx_edges():
    m, k, n = 7, 384, 37
    with slimkernels.use_cpu_amx("on"):
        for dtype in DTYPES:  # large magnitudes; all codes and zero points extreme
            x = rand_x(m, k, dtype, seed=7, scale=1e4)
            q = lowbit.pack_codes(torch.where(torch.rand(n, k) < 0.5, 0, 15), 4)
            z = torch.where(torch.rand(n, k // 64) < 0.5, 0, 15).to(torch.uint8)
            scales = torch.rand(n, k // 64) * (1e-3 if dtype == torch.float16 else 10.0) + 1e-3
            run_int4(NATIVE_CPU, x, q, scales, z, 64, torch.randn(n), str(dtype))
        x = torch.randn(m + 3, k + 9)[:, 4:4 + k]  # strided x
        qweight, scales, zeros = make_int4(n, k, 128, True, seed=3)
        run_int4(NATIVE_CPU, x, qweight, scales, zeros, 128, None, "strided x")
        zeros = torch.randint(16, 256, (n, k // 128), dtype=torch.uint8)  # outside the layout: as the reference
        run_int4(NATIVE_CPU, rand_x(m, k, seed=1), qweight, scales, zeros, 128, None, "zero points > 15")
    # strided y (the binding)
    y = call(x, qweight, 4, "int4", n, scales=scales, zeros=zeros, group_size=128, amx="on", ldy=n + 5, threads=2)
    assert_close_linear(y, dequant_mm_int4_reference(x, qweight, scales, zeros, 128, None), x,
                        lowbit.dequantize_int4(qweight, scales, zeros, 128, k), NATIVE_CPU)
    # Inf and NaN in x give what the float32 kernel gives; so does a huge finite x (the split into
    # bfloat16 pieces truncates, never rounding up into Inf; it overflows only above ~2e37, where
    # (q - z) * x does before the scale)
    x = rand_x(m, k, seed=2)
    x[0, 3], x[1, 5], x[2, 0] = float("inf"), float("nan"), 1e36
    qweight, scales, zeros = make_int4(n, k, 128, False, seed=4)
    with slimkernels.use_backend("native"):
        with slimkernels.use_cpu_amx("on"):
            on = ops.dequant_mm_int4(x, qweight, scales, None, 128)
        with slimkernels.use_cpu_amx("off"):
            off = ops.dequant_mm_int4(x, qweight, scales, None, 128)
    assert torch.equal(on[:2].isnan(), off[:2].isnan()) and torch.equal(on[:2].isinf(), off[:2].isinf())
    assert torch.isfinite(on[2]).all()
    torch.testing.assert_close(on[2:], off[2:], rtol=1e-5, atol=1e-5)


@needs_amx
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("bits", [2, 3, 4])  # 3-bit codebooks keep the float32 kernel, even with 'on'
@pytest.mark.parametrize("per_row", [True, False], ids=["per_row", "per_layer"])
def test_lut_amx(dtype, bits, per_row):
    old = torch.get_num_threads()
    try:
        with slimkernels.use_cpu_amx("on"):
            for i, (m, n) in enumerate(AMX_SHAPES):
                torch.set_num_threads(1 + i % 2)
                for k in (77, 256, 1, 1000):
                    indices, codebook = make_codebook(n, k, bits, per_row, seed=i)
                    bias = torch.randn(n) if i % 2 else None
                    run_lut(NATIVE_CPU, rand_x(m, k, dtype, seed=i), indices, codebook, bias, f"M={m} N={n} K={k}")
            # entries of every magnitude: each is split into three bfloat16 pieces
            indices, codebook = make_codebook(37, 300, bits, per_row, seed=9)
            lo, hi = (-4, 2) if dtype == torch.float16 else (-30, 30)  # float16 outputs: stay below 65504
            codebook = codebook * torch.logspace(lo, hi, codebook.numel()).reshape(codebook.shape)
            run_lut(NATIVE_CPU, rand_x(7, 300, dtype, seed=9), indices, codebook, None, "magnitudes")
    finally:
        torch.set_num_threads(old)


@needs_amx
def test_lut_amx_padding_and_specials():
    # An Inf entry no code uses stays out (the padding codes of the last step weigh 0); Inf and NaN in
    # x give non-finite outputs where the float32 kernel does (an Inf x can meet a zero piece of a
    # weight, Inf * 0, so some may be NaN rather than +-Inf).
    m, k, n = 9, 45, 37
    for bits in (2, 4):
        codes = torch.randint(1, 1 << bits, (n, k))
        codebook = torch.randn(1, 1 << bits)
        codebook[0, 0] = float("inf")
        x = torch.randn(m, k)
        with slimkernels.use_backend("native"), slimkernels.use_cpu_amx("on"):
            y = ops.lut_mm(x, lowbit.pack_codes(codes, bits), codebook)
        w = codebook[0][codes]
        assert_close_linear(y, x @ w.T, x, w, NATIVE_CPU, f"{bits}-bit padding")
        x[0, 3], x[1, 5] = float("inf"), float("nan")
        indices, codebook = make_codebook(n, k, bits, True, seed=3)
        with slimkernels.use_backend("native"):
            with slimkernels.use_cpu_amx("on"):
                on = ops.lut_mm(x, indices, codebook)
            with slimkernels.use_cpu_amx("off"):
                off = ops.lut_mm(x, indices, codebook)
        assert torch.equal(torch.isfinite(on), torch.isfinite(off)) and not torch.isfinite(on[:2]).any()


@needs_amx
def test_amx_auto_threshold():
    # 'auto' is exactly 'on' from 6 rows (int4) or 256 (float32-exact codebooks) and exactly 'off'
    # below, bit for bit.
    k, n = 256, 40
    qweight, scales, zeros = make_int4(n, k, 128, True, seed=5)
    indices, codebook = make_codebook(n, k, 2, True, seed=5)
    for m, int4_as, lut_as in ((5, "off", "off"), (6, "on", "off"), (16, "on", "off"), (255, "on", "off"),
                               (256, "on", "on")):
        x = rand_x(m, k, seed=m)
        got = {}
        for mode in ("auto", "on", "off"):
            with slimkernels.use_backend("native"), slimkernels.use_cpu_amx(mode):
                got[mode] = (ops.dequant_mm_int4(x, qweight, scales, zeros, 128), ops.lut_mm(x, indices, codebook))
        assert torch.equal(got["auto"][0], got[int4_as][0]), f"int4 M={m}"
        assert torch.equal(got["auto"][1], got[lut_as][1]), f"codebook M={m}"
        assert not torch.equal(got["on"][0], got["off"][0]), f"M={m}: 'on' and 'off' should differ (in rounding)"


@needs_amx
def test_amx_large_m():
    # Several 16-row tiles per block, an odd tile count and several blocks of x rows (M = 129, 513),
    # exact on the avx512_vnni tier, for int4 (grouped and per channel) and 2- and 4-bit codebooks.
    k, n = 320, 37
    with slimkernels.use_cpu_amx("on"):
        for m in (129, 513):
            x = rand_x(m, k, seed=m)
            for group_size in (64, k):
                qweight, scales, zeros = make_int4(n, k, group_size, True, seed=m + group_size)
                run_int4(NATIVE_CPU, x, qweight, scales, zeros, group_size, torch.randn(n), f"M={m} g={group_size}")
            for bits in (2, 4):
                indices, codebook = make_codebook(n, k, bits, True, seed=m + bits)
                run_lut(NATIVE_CPU, x, indices, codebook, None, f"M={m} {bits}-bit")


def _bf16(t):
    return t.float().bfloat16().float()


@needs_amx
@pytest.mark.skipif(not avx512_bf16_supported(), reason="no AVX512-BF16 here (CPU or build)")
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_amx_rounded(dtype):
    # isa avx512_bf16 with amx 'on': the tiles take x and the weights ((q - z) * s, codebook entries)
    # rounded to bf16, as the vdpbf16ps kernels do (tests/ops/test_weight_only_bf16.py): compared with
    # the reference on those rounded operands.
    def check(y, x, w, bias, what):
        ref = _bf16(x) @ _bf16(w).T
        ref = (ref if bias is None else ref + bias).to(dtype)
        assert_close_linear(y, ref, _bf16(x), _bf16(w), NATIVE_CPU, what)

    for i, (m, n, k) in enumerate([(1, 37, 77), (17, 40, 256), (33, 5, 1000), (129, 70, 192)]):
        x = rand_x(m, k, dtype, seed=i)
        bias = torch.randn(n) if i % 2 else None
        for group_size in {k, 64 if k % 64 == 0 else k}:
            qweight, scales, zeros = make_int4(n, k, group_size, True, seed=i)
            y = call(x, qweight, 4, "int4", n, scales=scales, zeros=zeros, group_size=group_size, bias=bias,
                     threads=1 + i % 2, isa="avx512_bf16", amx="on")
            check(y, x, lowbit.dequantize_int4(qweight, scales, zeros, group_size, k), bias, f"int4 M={m} g={group_size}")
        for bits in (2, 4):
            indices, codebook = make_codebook(n, k, bits, i % 2 == 0, seed=i)
            y = call(x, indices, bits, "codebook", n, group_size=k, codebook=codebook, bias=bias, threads=2,
                     isa="avx512_bf16", amx="on")
            check(y, x, lowbit.dequantize_codebook(indices, codebook, k), bias, f"{bits}-bit M={m}")


# ======================================= Triton ========================================================
TRITON_INT4 = cases("dequant_mm_int4", impls=("triton",))


@pytest.mark.parametrize("case", TRITON_INT4)
def test_triton_splitk_deterministic(case):
    dev = case.device
    x = rand_x(4, 192, seed=5, device=dev)
    qweight, scales, zeros = make_int4(48, 192, 64, True, seed=5, device=dev)
    indices, codebook = make_codebook(48, 192, 3, True, seed=5, device=dev)
    with forced(case), slimkernels.triton.use_split_k("always"):
        first = ops.dequant_mm_int4(x, qweight, scales, zeros, 64)
        first_lut = ops.lut_mm(x, indices, codebook)
        for _ in range(2):
            assert torch.equal(ops.dequant_mm_int4(x, qweight, scales, zeros, 64), first)
            assert torch.equal(ops.lut_mm(x, indices, codebook), first_lut)


@pytest.mark.parametrize("case", TRITON_INT4)
def test_triton_launchers_take_any_strides(case):
    # The launchers read x and the codes at any strides (dispatch hands them row-strided x as is).
    from slimkernels.triton import lowbit as triton_lowbit

    dev = case.device
    x = rand_x(5, 90, seed=11, device=dev)
    xs = torch.cat([x, x], dim=1)[:, 7:97]  # non-contiguous rows
    qweight, scales, zeros = make_int4(20, 90, 90, True, seed=12, device=dev)
    got = triton_lowbit.dequant_mm_int4(xs, qweight.t().contiguous().t(), scales, zeros, 90, None)
    ref = dequant_mm_int4_reference(xs.cpu(), qweight.cpu(), scales.cpu(), zeros.cpu(), 90, None)
    assert_close_linear(got, ref, xs, lowbit.dequantize_int4(qweight.cpu(), scales.cpu(), zeros.cpu(), 90, 90), case)
    indices, codebook = make_codebook(20, 90, 2, True, seed=13, device=dev)
    got = triton_lowbit.lut_mm(xs, indices.t().contiguous().t(), codebook, None)
    ref = lut_mm_reference(xs.cpu(), indices.cpu(), codebook.cpu(), None)
    assert_close_linear(got, ref, xs, lowbit.dequantize_codebook(indices.cpu(), codebook.cpu(), 90), case)


# ======================================= CUDA ==========================================================
def _cuda_only(params):
    return [p for p in params if p.values[0].device == "cuda"]


@pytest.mark.parametrize("case", _cuda_only(INT4_SWEEP))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("m", [1, 7, 16, 100, 512])
def test_layer_shapes(case, dtype, m):
    # decode and prefill shapes of a real layer
    n, k = 1000, 4096
    x = rand_x(m, k, dtype, seed=m, device="cuda")
    qweight, scales, zeros = make_int4(n, k, 128, True, seed=m, device="cuda")
    run_int4(case, x, qweight, scales, zeros, 128, torch.randn(n, device="cuda"), "group 128")
    run_int4(case, x, qweight, scales.new_ones(n, 1) * 0.01, None, k, None, "per channel")
    for bits in (2, 3, 4):
        indices, codebook = make_codebook(n, k, bits, bits != 3, seed=m, device="cuda")
        run_lut(case, x, indices, codebook, None, f"{bits}-bit")


@pytest.mark.parametrize("case", _cuda_only(cases("dequant_mm_int4", impls=("native",))))
@pytest.mark.parametrize("m", [LOWBIT_GEMV_MAX_M, LOWBIT_GEMV_MAX_M + 1])
def test_both_sides_of_the_gemv_threshold(case, m):
    # The largest M the fused GEMV takes and the smallest M the dequantize + matmul path takes.
    qweight, scales, zeros = make_int4(70, 640, 64, True, seed=3, device="cuda")
    indices, codebook = make_codebook(70, 640, 3, True, seed=3, device="cuda")
    x = rand_x(m, 640, seed=3, device="cuda")
    run_int4(case, x, qweight, scales, zeros, 64, torch.randn(70, device="cuda"), f"M={m}")
    run_lut(case, x, indices, codebook, None, f"M={m}")


@pytest.mark.parametrize("case", _cuda_only(INT4_SWEEP))
def test_side_stream_and_graph_capture(case):
    n, k = 96, 1024
    qweight, scales, zeros = make_int4(n, k, 128, True, seed=6, device="cuda")
    indices, codebook = make_codebook(n, k, 4, False, seed=6, device="cuda")
    xs = {m: rand_x(m, k, torch.float16, seed=m, device="cuda") for m in (2, 24)}

    def run(x):
        return ops.dequant_mm_int4(x, qweight, scales, zeros, 128, None), ops.lut_mm(x, indices, codebook, None)

    def check(outs, x, what):
        ref4 = dequant_mm_int4_reference(x.cpu(), qweight.cpu(), scales.cpu(), zeros.cpu(), 128, None)
        ref_lut = lut_mm_reference(x.cpu(), indices.cpu(), codebook.cpu(), None)
        assert_close_linear(outs[0], ref4, x, lowbit.dequantize_int4(qweight.cpu(), scales.cpu(), zeros.cpu(), 128, k),
                            case, what)
        assert_close_linear(outs[1], ref_lut, x, lowbit.dequantize_codebook(indices.cpu(), codebook.cpu(), k), case,
                            what)

    side = torch.cuda.Stream()
    with forced(case):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            on_side = {m: run(x) for m, x in xs.items()}
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        for m, x in xs.items():
            check(on_side[m], x, f"side stream M={m}")
        # Warm up on a side stream (as torch.cuda.graph requires), capture, replay with new inputs.
        static = {m: x.clone() for m, x in xs.items()}
        with torch.cuda.stream(side):
            for x in static.values():
                run(x)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = {m: run(x) for m, x in static.items()}
        for m, x in xs.items():
            static[m].copy_(x * 0.5)
        graph.replay()
        torch.cuda.synchronize()
        for m, x in xs.items():
            check(outs[m], x * 0.5, f"graph replay M={m}")


# The raw CUDA bindings check their arguments before touching a device: no GPU needed, only the module.
needs_cuda_module = pytest.mark.skipif(_native._C_cuda is None, reason="slimkernels._C_cuda was not built")


@needs_cuda_module
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(M=_native._C_cuda.lowbit_gemv_max_m + 1 if _native._C_cuda else 9), "M <= "),
        (dict(group_size=48), "group_size"),
        (dict(group_size=0), "group_size"),
        (dict(ldx=100), "ldx"),
        (dict(ldo=10), "ldo"),
        (dict(K=-1), "K must be"),
        (dict(N=1 << 30), "N must be"),
        (dict(x_kind="int8"), "x_kind"),
        (dict(scales=0), "scales"),
    ],
)
def test_cuda_int4_binding_rejects(kwargs, match):
    args = dict(x=16, ldx=128, M=1, K=128, x_kind="float16", qweight=16, scales=16, zeros=0, group_size=32, N=16,
                bias=0, out=16, ldo=16, stream=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        _native._C_cuda.dequant_mm_int4_gemv(**args)


@needs_cuda_module
@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(bits=5), "bits"), (dict(codebook_rows=3), "codebook_rows"), (dict(codebook=0), "codebook"),
     (dict(indices=0), "codes pointer")],
)
def test_cuda_lut_binding_rejects(kwargs, match):
    args = dict(x=16, ldx=64, M=2, K=64, x_kind="bfloat16", indices=16, codebook=16, codebook_rows=1, bits=4, N=8,
                bias=0, out=16, ldo=8, stream=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        _native._C_cuda.lut_mm_gemv(**args)


@needs_cuda_module
def test_cuda_dequantize_binding_rejects():
    with pytest.raises(ValueError, match="ldw"):
        _native._C_cuda.dequantize_int4(16, 16, 0, 32, 4, 64, 16, 32, "float32", 0)
    with pytest.raises(ValueError, match="w_kind"):
        _native._C_cuda.dequantize_codebook(16, 16, 1, 2, 4, 64, 16, 64, "float64", 0)
