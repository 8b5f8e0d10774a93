"""Triton low-bit weight-only matmuls (``dequant_mm_int4``, ``lut_mm``) against the pure-torch
reference, through the public ops with the "triton" backend forced.

Runs on CUDA when present, else on CPU tensors in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported), whose single config has BLOCK_K = 64: group size 64
and per-channel groups take the one-group-per-tile path, group sizes 32 and 96 the per-element
path, and K = 45 / 96 leave a K tail. Shapes stay small there: the interpreter is slow.

Tolerance. The kernel decodes W exactly as the reference does (float32), casts it to x's dtype
(rounding it for float16/bfloat16), accumulates in float32 in another order and rounds the result
to x's dtype. So per output element ``|got - ref| <= u_out * |ref| + (u_w + K * 2**-24) * S``
with ``S = |x| @ |W|.T``: u_out covers the two roundings of the result (ours and the
reference's), u_w the rounding of each weight, K * 2**-24 the float32 accumulation order.
"""

import pytest
import torch

import slimkernels
import slimkernels.triton as sk_triton
from slimkernels import ops
from slimkernels.backends import reference
from slimkernels.quant import lowbit
from slimkernels.testing import impl_params, small_only
from slimkernels.triton import lowbit_mm  # imports even without triton

if not sk_triton.available():  # no triton, or neither a GPU nor the interpreter
    pytest.skip(f"Triton kernels cannot run: {sk_triton.unavailable_reason()}",
                allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (relative rounding of the output, relative rounding of a weight) per x dtype; float16 also has
# an absolute floor at its subnormal spacing.
ROUNDING = {torch.float32: (2.0**-22, 0.0), torch.float16: (2.0**-9, 2.0**-11),
            torch.bfloat16: (2.0**-6, 2.0**-8)}
ABS_FLOOR = {torch.float32: 1e-30, torch.float16: 2.0**-24, torch.bfloat16: 1e-30}


def _triton_params(op):
    """(device, "triton") params: CUDA when present (gpu marker), else CPU under the interpreter.
    (impl_params lists only the default order's implementations, which on CPU exclude Triton.)"""
    params = [p for p in impl_params(op) if p.values[1] == "triton"]
    if not torch.cuda.is_available():
        params.append(pytest.param("cpu", "triton", id="cpu-triton"))
    return params


INT4_IMPLS = _triton_params("dequant_mm_int4")
LUT_IMPLS = _triton_params("lut_mm")


@pytest.fixture(params=["never", "always"], ids=["direct", "splitk"])
def split_k_policy(request, monkeypatch):
    """Run a test through the plain kernel and through the split-K path (used for M <= 16)."""
    monkeypatch.setattr(lowbit_mm, "SPLIT_K_POLICY", request.param)
    return request.param


# --------------------------------------------------------------------------------------------
# inputs and the comparison
# --------------------------------------------------------------------------------------------

def make_x(M, K, dtype, gen, device):
    return (torch.rand(M, K, generator=gen) * 2 - 1).to(dtype).to(device)


def make_bias(N, with_bias, gen, device):
    return (torch.randn(N, generator=gen) * 4).to(device) if with_bias else None


def make_int4(N, K, group_size, asymmetric, gen, device, codes=None, scale_decades=(-3.0, -1.0)):
    G = K // group_size
    if codes is None:
        codes = torch.randint(0, 16, (N, K), generator=gen)
    lo, hi = scale_decades
    scales = 10.0 ** (lo + (hi - lo) * torch.rand(N, G, generator=gen))
    zeros = torch.randint(0, 16, (N, G), generator=gen, dtype=torch.uint8) if asymmetric else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(lowbit.pack_codes(codes, 4)), to(scales.float()), to(zeros)


def make_codebook(N, K, bits, per_row, gen, device, spread=1.0):
    codes = torch.randint(0, 1 << bits, (N, K), generator=gen)
    codebook = torch.randn(N if per_row else 1, 1 << bits, generator=gen) * spread
    return lowbit.pack_codes(codes, bits).to(device), codebook.float().to(device)


def assert_close_to_reference(got, expected, x, w):
    """``got`` (the kernel) against ``expected`` (the reference) for x @ w.T, w the float32
    decoded weight; the bound is the module docstring's."""
    assert got.dtype == expected.dtype == x.dtype and got.shape == expected.shape
    if expected.numel() == 0:
        return
    g, e = got.cpu().float(), expected.cpu().float()
    assert torch.isfinite(g).all()
    u_out, u_w = ROUNDING[x.dtype]
    K = x.shape[1]
    abs_products = x.cpu().float().abs() @ w.cpu().abs().T
    bound = u_out * e.abs() + (u_w + K * 2.0**-24) * abs_products + ABS_FLOOR[x.dtype]
    err = (g - e).abs()
    worst = (err / bound).max().item()
    assert (err <= bound).all(), f"error exceeds the bound by up to {worst:.3g}x"


def check_int4(x, qweight, scales, zeros, group_size, bias):
    with slimkernels.use_backend("triton"):
        got = ops.dequant_mm_int4(x, qweight, scales, zeros, group_size, bias)
    expected = reference.dequant_mm_int4(x.cpu(), qweight.cpu(), scales.cpu(),
                                         None if zeros is None else zeros.cpu(), group_size,
                                         None if bias is None else bias.cpu())
    w = lowbit.dequantize_int4(qweight.cpu(), scales.cpu(), None if zeros is None else zeros.cpu(),
                               group_size, x.shape[1])
    assert_close_to_reference(got, expected, x, w)
    return got


def check_lut(x, indices, codebook, bias):
    with slimkernels.use_backend("triton"):
        got = ops.lut_mm(x, indices, codebook, bias)
    expected = reference.lut_mm(x.cpu(), indices.cpu(), codebook.cpu(),
                                None if bias is None else bias.cpu())
    w = lowbit.dequantize_codebook(indices.cpu(), codebook.cpu(), x.shape[1])
    assert_close_to_reference(got, expected, x, w)
    return got


# --------------------------------------------------------------------------------------------
# dequant_mm_int4
# --------------------------------------------------------------------------------------------

# (N, K, group_size, asymmetric): group 32 (several groups per interpreter tile), 64 (one group
# per tile), 96 (tile and group do not nest), per channel with odd K.
INT4_CASES = [(37, 128, 32, True), (37, 128, 64, False), (37, 192, 96, True), (37, 45, 45, True),
              (37, 96, 32, False)]


@pytest.mark.parametrize("device,impl", INT4_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M", [1, 3, 16, 33])
@pytest.mark.parametrize("N,K,group_size,asymmetric", INT4_CASES,
                         ids=[f"K{c[1]}g{c[2]}{'asym' if c[3] else 'sym'}" for c in INT4_CASES])
def test_int4_random(device, impl, M, N, K, group_size, asymmetric, dtype, split_k_policy):
    if M > 16 and split_k_policy == "always":
        pytest.skip("split-K is for M <= 16: same path as direct")
    gen = torch.Generator().manual_seed(M * 1000 + K * 10 + group_size)
    x = make_x(M, K, dtype, gen, device)
    qweight, scales, zeros = make_int4(N, K, group_size, asymmetric, gen, device)
    check_int4(x, qweight, scales, zeros, group_size, make_bias(N, (M + K) % 2 == 1, gen, device))


@pytest.mark.parametrize("device,impl", INT4_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pattern", ["min", "max", "mix"])
def test_int4_extremes(device, impl, dtype, pattern, split_k_policy):
    # Codes 0 and 15 against zero points 0 and 15 (|q - z| up to 15) and scales over five decades;
    # the bound is per element, so errors in the tiny channels are seen too.
    M, N, K, group_size = 5, 40, 128, 32
    gen = torch.Generator().manual_seed(7)
    if pattern == "min":
        codes = torch.zeros(N, K, dtype=torch.long)
    elif pattern == "max":
        codes = torch.full((N, K), 15)
    else:
        codes = torch.where(torch.rand(N, K, generator=gen) < 0.5, 0, 15)
    x = make_x(M, K, dtype, gen, device)
    qweight, scales, _ = make_int4(N, K, group_size, False, gen, device, codes=codes,
                                   scale_decades=(-4.0, 1.0))
    zeros = torch.where(torch.rand(N, K // group_size, generator=gen) < 0.5, 0, 15)
    zeros = zeros.to(torch.uint8).to(device)
    for z in (zeros, None):
        check_int4(x, qweight, scales, z, group_size, make_bias(N, True, gen, device))


# --------------------------------------------------------------------------------------------
# lut_mm
# --------------------------------------------------------------------------------------------

LUT_CASES = [(2, True), (3, False), (3, True), (4, False)]  # (bits, per-row codebook)


@pytest.mark.parametrize("device,impl", LUT_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M", [1, 3, 16, 33])
@pytest.mark.parametrize("bits,per_row", LUT_CASES,
                         ids=[f"{b}bit-{'row' if r else 'layer'}" for b, r in LUT_CASES])
def test_lut_random(device, impl, M, bits, per_row, dtype, split_k_policy):
    if M > 16 and split_k_policy == "always":
        pytest.skip("split-K is for M <= 16: same path as direct")
    N, K = 37, 45 if M % 2 else 128  # odd K (codes straddle the row's last byte) and K = 2 tiles
    gen = torch.Generator().manual_seed(M * 100 + bits * 10 + per_row)
    x = make_x(M, K, dtype, gen, device)
    indices, codebook = make_codebook(N, K, bits, per_row, gen, device)
    check_lut(x, indices, codebook, make_bias(N, M % 3 != 0, gen, device))


@pytest.mark.parametrize("device,impl", LUT_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lut_extremes(device, impl, dtype):
    # Codebook entries over many decades, both signs; every code used.
    M, N, K, bits = 4, 33, 70, 3
    gen = torch.Generator().manual_seed(9)
    indices, _ = make_codebook(N, K, bits, True, gen, device)
    mags = 10.0 ** torch.linspace(-6, 2, 1 << bits)
    signs = torch.where(torch.rand(N, 1 << bits, generator=gen) < 0.5, -1.0, 1.0)
    codebook = (signs * mags).float().to(device)
    check_lut(make_x(M, K, dtype, gen, device), indices, codebook, make_bias(N, True, gen, device))


# --------------------------------------------------------------------------------------------
# both ops: contract details
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,impl", INT4_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_dtypes_and_3d(device, impl, dtype):
    # Any float bias dtype (added in float32); x with batch dims is flattened by the op.
    gen = torch.Generator().manual_seed(3)
    x = make_x(6, 64, dtype, gen, device)
    qweight, scales, zeros = make_int4(24, 64, 32, True, gen, device)
    indices, codebook = make_codebook(24, 64, 4, True, gen, device)
    b = make_bias(24, True, gen, device)
    for bias in (b.half(), b.bfloat16(), b.float()):
        check_int4(x, qweight, scales, zeros, 32, bias)
        check_lut(x, indices, codebook, bias)
    with slimkernels.use_backend("triton"):
        got3d = ops.dequant_mm_int4(x.reshape(2, 3, 64), qweight, scales, zeros, 32, b)
        lut3d = ops.lut_mm(x.reshape(2, 3, 64), indices, codebook)
    assert got3d.shape == lut3d.shape == (2, 3, 24)
    torch.testing.assert_close(got3d.reshape(6, 24), check_int4(x, qweight, scales, zeros, 32, b),
                               rtol=0, atol=0)
    torch.testing.assert_close(lut3d.reshape(6, 24), check_lut(x, indices, codebook, None),
                               rtol=0, atol=0)


@pytest.mark.parametrize("device,impl", INT4_IMPLS)
def test_empty_problems(device, impl):
    gen = torch.Generator().manual_seed(5)
    qweight, scales, zeros = make_int4(8, 64, 32, True, gen, device)
    indices, codebook = make_codebook(8, 45, 3, False, gen, device)
    with slimkernels.use_backend("triton"):
        for dtype in DTYPES:
            out = ops.dequant_mm_int4(torch.empty(0, 64, dtype=dtype, device=device), qweight,
                                      scales, zeros, 32)
            assert out.shape == (0, 8) and out.dtype == dtype
            out = ops.lut_mm(torch.empty(2, 0, 45, dtype=dtype, device=device), indices, codebook)
            assert out.shape == (2, 0, 8) and out.dtype == dtype


@pytest.mark.parametrize("device,impl", LUT_IMPLS)
def test_empty_n(device, impl):
    codebook = torch.randn(1, 8, device=device)
    with slimkernels.use_backend("triton"):
        out = ops.lut_mm(torch.randn(3, 45, device=device),
                         torch.empty(0, 17, dtype=torch.uint8, device=device), codebook)
    assert out.shape == (3, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_launcher_k_zero(dtype):
    # K == 0 (the backend routes it to the reference; the launchers answer it too): the bias.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.empty(4, 0, dtype=dtype, device=device)
    bias = torch.randn(6, device=device)
    got = lowbit_mm.dequant_mm_int4(x, torch.empty(6, 0, dtype=torch.uint8, device=device),
                                    torch.empty(6, 0, device=device), None, 32, bias)
    torch.testing.assert_close(got.cpu(), bias.cpu().to(dtype).expand(4, 6), rtol=0, atol=0)
    got = lowbit_mm.lut_mm(x, torch.empty(6, 0, dtype=torch.uint8, device=device),
                           torch.randn(1, 4, device=device), None)
    assert got.dtype == dtype and torch.count_nonzero(got) == 0


def test_launcher_strided_inputs():
    # The launchers take any strides for x and the codes (the backend makes them contiguous).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(11)
    x = make_x(5, 90, torch.float32, gen, device)
    xs = torch.cat([x, x], dim=1)[:, 7:97]  # non-contiguous rows
    qweight, scales, zeros = make_int4(20, 90, 90, True, gen, device)
    qt = qweight.t().contiguous().t()  # column-major codes
    got = lowbit_mm.dequant_mm_int4(xs, qt, scales, zeros, 90, None)
    expected = reference.dequant_mm_int4(xs.cpu(), qweight.cpu(), scales.cpu(), zeros.cpu(), 90,
                                         None)
    w = lowbit.dequantize_int4(qweight.cpu(), scales.cpu(), zeros.cpu(), 90, 90)
    assert_close_to_reference(got, expected, xs, w)
    indices, codebook = make_codebook(20, 90, 2, True, gen, device)
    got = lowbit_mm.lut_mm(xs, indices.t().contiguous().t(), codebook, None)
    w = lowbit.dequantize_codebook(indices.cpu(), codebook.cpu(), 90)
    assert_close_to_reference(got, reference.lut_mm(xs.cpu(), indices.cpu(), codebook.cpu(), None),
                              xs, w)


def test_launcher_rejects_strided_small_tensors():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(12)
    x = make_x(2, 64, torch.float16, gen, device)
    qweight, scales, zeros = make_int4(8, 64, 32, True, gen, device)
    with pytest.raises(ValueError, match="scales must be contiguous"):
        lowbit_mm.dequant_mm_int4(x, qweight, scales.t().contiguous().t(), zeros, 32)
    indices, codebook = make_codebook(8, 64, 4, True, gen, device)
    with pytest.raises(ValueError, match="codebook must be contiguous"):
        lowbit_mm.lut_mm(x, indices, codebook.t().contiguous().t())


@pytest.mark.parametrize("device,impl", INT4_IMPLS)
def test_splitk_deterministic(device, impl, monkeypatch):
    monkeypatch.setattr(lowbit_mm, "SPLIT_K_POLICY", "always")
    gen = torch.Generator().manual_seed(5)
    x = make_x(4, 192, torch.float32, gen, device)
    qweight, scales, zeros = make_int4(48, 192, 64, True, gen, device)
    indices, codebook = make_codebook(48, 192, 3, True, gen, device)
    with slimkernels.use_backend("triton"):
        first = ops.dequant_mm_int4(x, qweight, scales, zeros, 64)
        first_lut = ops.lut_mm(x, indices, codebook)
        for _ in range(2):
            assert torch.equal(ops.dequant_mm_int4(x, qweight, scales, zeros, 64), first)
            assert torch.equal(ops.lut_mm(x, indices, codebook), first_lut)


@pytest.mark.parametrize("device,impl", INT4_IMPLS)
def test_opcheck_and_bad_input(device, impl):
    gen = torch.Generator().manual_seed(19)
    x = make_x(3, 64, torch.float32, gen, device)
    qweight, scales, zeros = make_int4(16, 64, 32, True, gen, device)
    indices, codebook = make_codebook(16, 64, 2, False, gen, device)
    bias = make_bias(16, True, gen, device)
    with slimkernels.use_backend("triton"):
        torch.library.opcheck(torch.ops.slimkernels.dequant_mm_int4.default,
                              (x, qweight, scales, zeros, 32, bias))
        torch.library.opcheck(torch.ops.slimkernels.lut_mm.default, (x, indices, codebook, bias))
        with pytest.raises(ValueError, match="group_size"):
            ops.dequant_mm_int4(x, qweight, scales, zeros, 48)
        with pytest.raises(ValueError, match="codebook"):
            ops.lut_mm(x, indices, codebook[:, :3])


# --------------------------------------------------------------------------------------------
# GPU only: decode and prefill shapes of a real layer
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,impl", INT4_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("M", [1, 7, 16, 100, 512])
def test_layer_shapes(device, impl, dtype, M):
    if small_only(device, impl):
        pytest.skip("interpreter: large shapes are GPU-only")
    N, K = 1000, 4096
    gen = torch.Generator().manual_seed(M)
    x = make_x(M, K, dtype, gen, device)
    qweight, scales, zeros = make_int4(N, K, 128, True, gen, device)
    check_int4(x, qweight, scales, zeros, 128, make_bias(N, True, gen, device))
    check_int4(x, qweight, scales, None, K, None)  # per channel
    for bits in (2, 3, 4):
        indices, codebook = make_codebook(N, K, bits, bits != 3, gen, device)
        check_lut(x, indices, codebook, None)
