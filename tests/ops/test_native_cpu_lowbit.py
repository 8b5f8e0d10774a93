"""slimkernels._C.lowbit_gemm (dequant_mm_int4 and lut_mm on CPU): every ISA, and the public ops
under the "native" backend, against the reference (weights dequantized in float32, float32 GEMM,
rounded once to x.dtype).

Tolerance per element: 1e-5 * (|x| @ |w|.T) (a float32 sum in another order) plus one rounding step of
the output kind (2^-23, 2^-10 and 2^-7 of |y| for float32, float16 and bfloat16: a sum that differs
in its last bit can round the other way once the bias is added or the output is narrowed).
"""
from __future__ import annotations

import pytest
import torch

import slimkernels
from slimkernels import ops
from slimkernels.backends import reference
from slimkernels.quant import lowbit

C = pytest.importorskip("slimkernels._C")

ISAS = C.supported_isas()
KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
DTYPES = list(KIND)
STEP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
MS = (1, 2, 3, 4, 5, 17, 64)
N = 37  # odd, not a multiple of any register tile


def make_int4(n, k, group_size, asym, seed):
    g = torch.Generator().manual_seed(seed)
    groups = k // group_size
    qweight = lowbit.pack_codes(torch.randint(0, 16, (n, k), generator=g), 4)
    scales = torch.rand(n, groups, generator=g) * 0.1 + 0.01
    zeros = torch.randint(0, 16, (n, groups), generator=g, dtype=torch.uint8) if asym else None
    return qweight, scales, zeros


def make_codebook(n, k, bits, per_row, seed):
    g = torch.Generator().manual_seed(seed)
    indices = lowbit.pack_codes(torch.randint(0, 1 << bits, (n, k), generator=g), bits)
    codebook = torch.randn(n if per_row else 1, 1 << bits, generator=g)
    return indices, codebook


def rand_x(m, k, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed + 1000)
    return (torch.randn(m, k, generator=g) * scale).to(dtype)


def check(y, ref, x, w):
    """y vs the reference ref; w the float32 dequantized weight [N, K]."""
    assert y.dtype == ref.dtype and y.shape == ref.shape
    bound = 1e-5 * (x.double().abs() @ w.double().abs().T) + STEP[ref.dtype] * ref.double().abs() + 1e-30
    err = (y.double() - ref.double()).abs()
    assert (err <= bound).all(), f"max error {err.max().item():.3g}, worst ratio {(err / bound).max().item():.3g}"


def call(x, codes, bits, lut_kind, n, *, scales=None, zeros=None, group_size=0, codebook=None, bias=None,
         threads=1, isa="", ldy=None, amx="auto"):
    """Call the binding on x [M, K] (possibly a row-strided view); returns y [M, N]."""
    m, k = x.shape
    ldy = n if ldy is None else ldy
    buf = torch.full((m * ldy + 1,), float("nan")).to(x.dtype)  # pads stay NaN: writes outside [N] show up
    p = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    C.lowbit_gemm(
        x.data_ptr(), x.stride(0) if m > 1 else k, KIND[x.dtype], codes.data_ptr(), bits, lut_kind, p(scales),
        p(zeros), group_size, p(codebook), 0 if codebook is None else codebook.shape[0], p(bias), buf.data_ptr(),
        ldy, m, n, k, threads, isa, amx,
    )
    y = buf[: m * ldy].view(m, ldy)
    if ldy > n:
        assert torch.isnan(y[:, n:].float()).all(), "wrote outside the output rows"
    return y[:, :n]


def run_int4(x, qweight, scales, zeros, group_size, bias, **kw):
    n, k = qweight.shape[0], x.shape[1]
    y = call(x, qweight, 4, "int4", n, scales=scales, zeros=zeros, group_size=group_size, bias=bias, **kw)
    ref = reference.dequant_mm_int4(x, qweight, scales, zeros, group_size, bias)
    check(y, ref, x, lowbit.dequantize_int4(qweight, scales, zeros, group_size, k))


def run_codebook(x, indices, codebook, bias, **kw):
    n, k = indices.shape[0], x.shape[1]
    bits = lowbit.bits_from_codebook(codebook.shape[1])
    y = call(x, indices, bits, "codebook", n, codebook=codebook, group_size=k, bias=bias, **kw)
    check(y, reference.lut_mm(x, indices, codebook, bias), x, lowbit.dequantize_codebook(indices, codebook, k))


# (K, group_size): group-wise 32/64/128 and per-channel with an odd K (rows end mid-byte), one of them
# longer than a 128-code chunk (a full chunk, then a row end)
INT4_GROUPS = [(256, 32), (192, 64), (384, 128), (77, 77), (201, 201)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k, group_size", INT4_GROUPS, ids=lambda v: str(v))
def test_int4_binding(isa, dtype, k, group_size):
    bias = torch.randn(N)
    for i, m in enumerate(MS):
        asym = i % 2 == 0
        qweight, scales, zeros = make_int4(N, k, group_size, asym, seed=i)
        run_int4(rand_x(m, k, dtype, i), qweight, scales, zeros, group_size, bias if i % 3 else None, isa=isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("per_row", [True, False], ids=["per_row", "per_layer"])
def test_codebook_binding(isa, dtype, bits, per_row):
    bias = torch.randn(N)
    for i, m in enumerate(MS):
        for k in (77, 256, 1):  # odd K (rows end mid-byte; 3-bit rows end mid-code), full chunks, one code
            indices, codebook = make_codebook(N, k, bits, per_row, seed=i)
            run_codebook(rand_x(m, k, dtype, i), indices, codebook, bias if i % 2 else None, isa=isa)


@pytest.mark.parametrize("isa", ISAS)
def test_threads_and_many_tiles(isa):
    # enough work to go parallel: several N chunks and (at M = 200) several M blocks
    for m, k in ((1, 1024), (3, 512), (200, 768)):
        qweight, scales, zeros = make_int4(301, k, 128, True, seed=m)
        x = rand_x(m, k, torch.float32, m)
        for threads in (1, 2):
            run_int4(x, qweight, scales, zeros, 128, torch.randn(301), threads=threads, isa=isa)
        indices, codebook = make_codebook(301, k, 3, True, seed=m)
        run_codebook(x, indices, codebook, None, threads=2, isa=isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_x_and_y(isa, dtype):
    m, k = 6, 160
    x = torch.randn(m, k + 19).to(dtype)[:, 7 : 7 + k]  # ldx > K
    qweight, scales, zeros = make_int4(N, k, 32, True, seed=3)
    run_int4(x, qweight, scales, zeros, 32, torch.randn(N), isa=isa, ldy=N + 5, threads=2)
    indices, codebook = make_codebook(N, k, 2, False, seed=4)
    run_codebook(x, indices, codebook, torch.randn(N), isa=isa, ldy=N + 3)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_magnitudes(isa, dtype):
    m, k = 5, 384
    x = rand_x(m, k, dtype, 7, scale=1e4)
    qweight, scales, zeros = make_int4(N, k, 64, True, seed=8)
    scales = scales * (1e-3 if dtype == torch.float16 else 10.0)  # float16: stay below 65504
    run_int4(x, qweight, scales, zeros, 64, None, isa=isa)
    # all codes extreme: 0 and 15 with zero points 0 and 15
    q = lowbit.pack_codes(torch.where(torch.rand(N, k) < 0.5, 0, 15), 4)
    z = torch.where(torch.rand(N, k // 64) < 0.5, 0, 15).to(torch.uint8)
    run_int4(x, q, scales, z, 64, torch.randn(N), isa=isa)
    indices, codebook = make_codebook(N, k, 4, True, seed=9)
    run_codebook(x, indices, codebook * (1e-3 if dtype == torch.float16 else 1e3), None, isa=isa)


@pytest.mark.parametrize("isa", ISAS)
def test_zero_points_outside_the_layout(isa):
    # The layout says 0..15, but the op does not scan zeros on every call: any uint8 zero point must
    # compute what the reference computes, never index past the kernel's tables.
    m, k = 3, 256
    qweight, scales, _ = make_int4(N, k, 128, False, seed=11)
    zeros = torch.randint(16, 256, (N, k // 128), dtype=torch.uint8)
    run_int4(rand_x(m, k, torch.float32, 11), qweight, scales, zeros, 128, None, isa=isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_padding_codes_never_count(isa, bits):
    # The unused entry 0 of the table is inf; no code uses it, so the result is finite even though the
    # padding bits at the end of each row read as code 0.
    m, k = 3, 45
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(1, 1 << bits, (N, k), generator=g)
    indices = lowbit.pack_codes(codes, bits)
    codebook = torch.randn(1, 1 << bits, generator=g)
    codebook[0, 0] = float("inf")
    x = torch.randn(m, k, generator=g)
    y = call(x, indices, bits, "codebook", N, codebook=codebook, group_size=k, isa=isa)
    assert torch.isfinite(y).all()
    w = codebook[0][codes.long()]
    torch.testing.assert_close(y, x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_empty_k_gives_bias(isa):
    x = torch.empty(3, 0, dtype=torch.bfloat16)
    codes = torch.empty(5, 0, dtype=torch.uint8)
    b = torch.randn(5)
    y = call(x, codes, 4, "int4", 5, scales=torch.empty(5, 0), group_size=0, bias=b, isa=isa)
    torch.testing.assert_close(y, b.to(torch.bfloat16).expand(3, 5), rtol=0, atol=0)


def test_empty_m_n_noop():
    C.lowbit_gemm(0, 8, "float32", 0, 4, "int4", 0, 0, 8, 0, 0, 0, 0, 4, 0, 4, 8, 1)
    C.lowbit_gemm(0, 8, "float32", 0, 2, "codebook", 0, 0, 8, 0, 1, 0, 0, 0, 3, 0, 8, 1)


# ---------------------------------------------------------------------------------- bad arguments


def _args(**over):
    x = torch.randn(2, 64)
    qweight, scales, zeros = make_int4(3, 64, 32, True, seed=1)
    y = torch.empty(2, 3)
    a = dict(x=x.data_ptr(), ldx=64, x_kind="float32", codes=qweight.data_ptr(), bits=4, lut_kind="int4",
             scales=scales.data_ptr(), zeros=zeros.data_ptr(), group_size=32, codebook=0, codebook_rows=0, bias=0,
             y=y.data_ptr(), ldy=3, M=2, N=3, K=64, num_threads=1, isa="")
    a.update(over)
    return a, (x, qweight, scales, zeros, y)


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
    ],
)
def test_bad_arguments(over, name):
    a, keep = _args(**over)
    with pytest.raises(ValueError, match=name):
        C.lowbit_gemm(**a)


# ---------------------------------------------------------------------------------- the public ops


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ops_native_backend(dtype):
    k = 256
    x = torch.randn(2, 3, k + 10).to(dtype)[..., 4 : 4 + k]  # batched, rows not contiguous
    qweight, scales, zeros = make_int4(N, k, 128, True, seed=11)
    b = torch.randn(N).to(dtype)
    with slimkernels.use_backend("native"):
        y = ops.dequant_mm_int4(x, qweight, scales, zeros, 128, b)
    assert y.shape == (2, 3, N)
    ref = reference.dequant_mm_int4(x.reshape(6, k), qweight, scales, zeros, 128, b)
    check(y.reshape(6, N), ref, x.reshape(6, k), lowbit.dequantize_int4(qweight, scales, zeros, 128, k))
    indices, codebook = make_codebook(N, k, 3, False, seed=12)
    with slimkernels.use_backend("native"):
        y = ops.lut_mm(x, indices, codebook, None)
    ref = reference.lut_mm(x.reshape(6, k), indices, codebook, None)
    check(y.reshape(6, N), ref, x.reshape(6, k), lowbit.dequantize_codebook(indices, codebook, k))


def test_ops_native_threads():
    x = rand_x(9, 512, torch.bfloat16, 5)
    qweight, scales, _ = make_int4(130, 512, 64, False, seed=13)
    ref = reference.dequant_mm_int4(x, qweight, scales, None, 64, None)
    w = lowbit.dequantize_int4(qweight, scales, None, 64, 512)
    old = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            with slimkernels.use_backend("native"):
                check(ops.dequant_mm_int4(x, qweight, scales, None, 64, None), ref, x, w)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("m, n, k", [(0, 8, 64), (4, 0, 64), (4, 8, 0), (0, 0, 0)])
def test_native_backend_empty(m, n, k):
    # the registered functions themselves (the op's x.reshape(-1, K) cannot take K = 0, _ops.py)
    from slimkernels.backends import cpu

    x = torch.randn(m, k, dtype=torch.float16)
    qweight = torch.zeros(n, (k + 1) // 2, dtype=torch.uint8)
    scales, zeros = torch.rand(n, 1 if k else 0), None
    b = torch.randn(n)
    expect = b.to(x.dtype).expand(m, n)  # K = 0: the bias; M or N = 0: empty
    torch.testing.assert_close(cpu.dequant_mm_int4(x, qweight, scales, zeros, k, b), expect, rtol=0, atol=0)
    indices, codebook = torch.zeros(n, (k * 3 + 7) // 8, dtype=torch.uint8), torch.randn(1, 8)
    torch.testing.assert_close(cpu.lut_mm(x, indices, codebook, b), expect, rtol=0, atol=0)
    assert cpu.lut_mm(x, indices, codebook, None).eq(0).all()


def test_ops_opcheck():
    x = torch.randn(3, 64)
    qweight, scales, zeros = make_int4(5, 64, 32, True, seed=2)
    indices, codebook = make_codebook(5, 64, 4, True, seed=2)
    with slimkernels.use_backend("native"):
        torch.library.opcheck(torch.ops.slimkernels.dequant_mm_int4.default, (x, qweight, scales, zeros, 32, None))
        torch.library.opcheck(torch.ops.slimkernels.lut_mm.default, (x, indices, codebook, torch.randn(5)))


# ---- AMX-BF16 tiles (amx='on' forces them at any M; 'auto' from 6 rows of x for int4, 16 for codebooks) ----
AMX = C.amx_bf16_supported()
needs_amx = pytest.mark.skipif(not AMX, reason="no AMX-BF16 here (CPU, OS or build)")
AMX_SHAPES = [(1, 37), (5, 48), (16, 100), (17, 49), (40, 37)]  # (M, N): tails of the 16-row tiles and units


@needs_amx
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k, group_size", INT4_GROUPS + [(1024, 128)], ids=lambda v: str(v))
def test_int4_amx(dtype, k, group_size):
    for i, (m, n) in enumerate(AMX_SHAPES):
        qweight, scales, zeros = make_int4(n, k, group_size, i % 2 == 0, seed=i)
        bias = torch.randn(n) if i % 3 else None
        for threads in (1, 2):
            run_int4(rand_x(m, k, dtype, i), qweight, scales, zeros, group_size, bias, threads=threads, amx="on")


@needs_amx
def test_int4_amx_edges():
    m, k, n = 7, 384, 37
    for dtype in DTYPES:  # large magnitudes; all codes and zero points extreme
        x = rand_x(m, k, dtype, 7, scale=1e4)
        q = lowbit.pack_codes(torch.where(torch.rand(n, k) < 0.5, 0, 15), 4)
        z = torch.where(torch.rand(n, k // 64) < 0.5, 0, 15).to(torch.uint8)
        scales = torch.rand(n, k // 64) * (1e-3 if dtype == torch.float16 else 10.0) + 1e-3
        run_int4(x, q, scales, z, 64, torch.randn(n), amx="on")
    x = torch.randn(m + 3, k + 9)[:, 4 : 4 + k]  # strided x and y
    qweight, scales, zeros = make_int4(n, k, 128, True, seed=3)
    run_int4(x, qweight, scales, zeros, 128, None, amx="on", ldy=n + 5, threads=2)
    zeros = torch.randint(16, 256, (n, k // 128), dtype=torch.uint8)  # outside the layout: as the reference
    run_int4(rand_x(m, k, torch.float32, 1), qweight, scales, zeros, 128, None, amx="on")
    # Inf and NaN in x give what the float32 kernel gives; so does a huge finite x (the split into
    # bfloat16 pieces truncates, never rounding up into Inf; it overflows only above ~2e37, where
    # (q - z) * x does before the scale)
    x = rand_x(m, k, torch.float32, 2)
    x[0, 3], x[1, 5], x[2, 0] = float("inf"), float("nan"), 1e36
    qweight, scales, zeros = make_int4(n, k, 128, False, seed=4)
    on = call(x, qweight, 4, "int4", n, scales=scales, group_size=128, amx="on")
    off = call(x, qweight, 4, "int4", n, scales=scales, group_size=128, amx="off")
    assert torch.equal(torch.isnan(on[:2]), torch.isnan(off[:2])) and torch.equal(on[:2].isinf(), off[:2].isinf())
    assert torch.isfinite(on[2]).all()
    torch.testing.assert_close(on[2:], off[2:], rtol=1e-5, atol=1e-5)


@needs_amx
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [2, 3, 4])  # 3-bit codebooks keep the float32 kernel, even with 'on'
@pytest.mark.parametrize("per_row", [True, False], ids=["per_row", "per_layer"])
def test_codebook_amx(dtype, bits, per_row):
    for i, (m, n) in enumerate(AMX_SHAPES):
        for k in (77, 256, 1, 1000):
            indices, codebook = make_codebook(n, k, bits, per_row, seed=i)
            bias = torch.randn(n) if i % 2 else None
            run_codebook(rand_x(m, k, dtype, i), indices, codebook, bias, threads=1 + i % 2, amx="on")
    # entries of every magnitude: each is split into three bfloat16 pieces
    indices, codebook = make_codebook(37, 300, bits, per_row, seed=9)
    lo, hi = (-4, 2) if dtype == torch.float16 else (-30, 30)  # float16 outputs: stay below 65504
    codebook = codebook * torch.logspace(lo, hi, codebook.numel()).reshape(codebook.shape)
    run_codebook(rand_x(7, 300, dtype, 9), indices, codebook, None, amx="on")


@needs_amx
def test_codebook_amx_padding_and_specials():
    # An Inf entry no code uses stays out (the padding codes of the last step weigh 0); Inf and NaN in
    # x give non-finite outputs where the float32 kernel does (an Inf x can meet a zero piece of a
    # weight, Inf * 0, so some may be NaN rather than +-Inf).
    m, k, n = 9, 45, 37
    for bits in (2, 4):
        codes = torch.randint(1, 1 << bits, (n, k))
        codebook = torch.randn(1, 1 << bits)
        codebook[0, 0] = float("inf")
        x = torch.randn(m, k)
        y = call(x, lowbit.pack_codes(codes, bits), bits, "codebook", n, codebook=codebook, group_size=k, amx="on")
        torch.testing.assert_close(y, x @ codebook[0][codes.long()].T, rtol=1e-5, atol=1e-5)
        x[0, 3], x[1, 5] = float("inf"), float("nan")
        indices, codebook = make_codebook(n, k, bits, True, seed=3)
        on = call(x, indices, bits, "codebook", n, codebook=codebook, group_size=k, amx="on")
        off = call(x, indices, bits, "codebook", n, codebook=codebook, group_size=k, amx="off")
        assert torch.equal(torch.isfinite(on), torch.isfinite(off)) and not torch.isfinite(on[:2]).any()


@needs_amx
def test_amx_auto_threshold():
    # 'auto' is exactly 'on' from 6 rows (int4) or 16 (codebooks) and exactly 'off' below
    k, n = 256, 40
    qweight, scales, zeros = make_int4(n, k, 128, True, seed=5)
    indices, codebook = make_codebook(n, k, 2, True, seed=5)
    for m, int4_as, codebook_as in ((5, "off", "off"), (6, "on", "off"), (15, "on", "off"), (16, "on", "on")):
        x = rand_x(m, k, torch.float32, m)
        kw = dict(scales=scales, zeros=zeros, group_size=128)
        assert torch.equal(call(x, qweight, 4, "int4", n, **kw), call(x, qweight, 4, "int4", n, amx=int4_as, **kw))
        kw = dict(codebook=codebook, group_size=k)
        assert torch.equal(call(x, indices, 2, "codebook", n, **kw),
                           call(x, indices, 2, "codebook", n, amx=codebook_as, **kw))


def test_amx_arguments():
    qweight, scales, zeros = make_int4(8, 64, 32, True, seed=6)
    x = rand_x(8, 64, torch.float32, 6)
    with pytest.raises(ValueError, match="amx"):
        call(x, qweight, 4, "int4", 8, scales=scales, zeros=zeros, group_size=32, amx="yes")
    if "avx2" in ISAS:
        with pytest.raises(ValueError, match="amx='on' needs AMX-BF16"):
            call(x, qweight, 4, "int4", 8, scales=scales, zeros=zeros, group_size=32, amx="on", isa="avx2")
    if not AMX:
        with pytest.raises(ValueError, match="amx='on' needs AMX-BF16"):
            call(x, qweight, 4, "int4", 8, scales=scales, zeros=zeros, group_size=32, amx="on")
