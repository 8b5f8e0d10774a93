"""Triton W8A16 dequantize-matmul (``dequant_mm_int8``) against the pure-torch reference.

Runs on CUDA when present, else on CPU tensors in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported). Shapes stay small: the interpreter is slow.
The kernel accumulates in float32 in a different order than the reference, and rounds the result to
x.dtype, so results are compared with a tolerance per dtype, relative to the largest output
magnitude of each output channel (scales differ per channel by orders of magnitude in some tests).
"""

import pytest
import torch

import slimkernels
import slimkernels.triton as sk_triton
from slimkernels.backends import reference
from slimkernels.triton import dequant_int8 as dq_mod  # imports even without triton
from slimkernels.triton.dequant_int8 import dequant_mm_int8

if not sk_triton.available():  # no triton, or neither a GPU nor the interpreter
    pytest.skip(f"Triton kernels cannot run: {sk_triton.unavailable_reason()}",
                allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative to the output's largest magnitude (per output channel).
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SHAPES = [(1, 1, 1), (1, 17, 33), (3, 40, 70), (16, 64, 128), (19, 33, 100)]


@pytest.fixture(params=["never", "always"], ids=["direct", "splitk"])
def split_k_policy(request, monkeypatch):
    """Run a test through the plain kernel and through the split-K path (used for M <= 16)."""
    monkeypatch.setattr(dq_mod, "SPLIT_K_POLICY", request.param)
    return request.param


def make_inputs(M, N, K, dtype, with_bias, gen, scale_decades=(-3.0, -1.0), weights=None):
    x = (torch.rand(M, K, generator=gen) * 2 - 1).to(dtype)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=gen) if weights is None else weights
    lo, hi = scale_decades
    s = 10.0 ** (lo + (hi - lo) * torch.rand(N, generator=gen))
    b = torch.randn(N, generator=gen) if with_bias else None
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return to(x), to(w), to(s.float()), to(b)


def assert_matches_reference(got, x, w, s, b):
    expected = reference.dequant_mm_int8(x.cpu(), w.cpu(), s.cpu(), None if b is None else b.cpu())
    got = got.cpu()
    assert got.dtype == x.dtype and got.shape == expected.shape
    if expected.numel() == 0:
        return
    g, e = got.float(), expected.float()
    assert torch.isfinite(g).all()
    colmax = e.abs().amax(dim=0, keepdim=True)
    bound = TOL[x.dtype] * colmax + 1e-30
    err = (g - e).abs()
    assert (err <= bound).all(), (
        f"max relative error {(err / bound).max().item() * TOL[x.dtype]:.3g} > {TOL[x.dtype]}")


# --------------------------------------------------------------------------------------------
# the launcher
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_random(M, N, K, dtype, with_bias, split_k_policy):
    gen = torch.Generator().manual_seed(M * 1000 + N * 10 + K)
    x, w, s, b = make_inputs(M, N, K, dtype, with_bias, gen)
    assert_matches_reference(dequant_mm_int8(x, w, s, b), x, w, s, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pattern", ["min", "max", "mix"])
def test_extreme_weights_and_scales(dtype, pattern, split_k_policy):
    # int8 extremes (-128 is the one value whose magnitude 127 does not cover) and per-channel
    # scales spanning five decades; the per-channel tolerance sees errors in the tiny channels too.
    M, N, K = 5, 40, 100
    gen = torch.Generator().manual_seed(7)
    if pattern == "min":
        w = torch.full((N, K), -128, dtype=torch.int8)
    elif pattern == "max":
        w = torch.full((N, K), 127, dtype=torch.int8)
    else:
        w = torch.where(torch.rand(N, K, generator=gen) < 0.5, -128, 127).to(torch.int8)
    # |acc| <= 128 * K = 12800; the largest scale keeps float16 outputs finite.
    x, w, s, b = make_inputs(M, N, K, dtype, True, gen, scale_decades=(-4.0, 0.5), weights=w)
    assert_matches_reference(dequant_mm_int8(x, w, s, b), x, w, s, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_dtypes(dtype):
    # The contract takes a bias in any float dtype; it is added in float32.
    gen = torch.Generator().manual_seed(3)
    x, w, s, b = make_inputs(2, 24, 40, dtype, True, gen)
    for bias in (b.half(), b.bfloat16(), b.float()):
        assert_matches_reference(dequant_mm_int8(x, w, s, bias), x, w, s, bias)


def test_empty():
    w = torch.randint(-128, 128, (8, 12), dtype=torch.int8).to(DEVICE)
    s = torch.rand(8).to(DEVICE)
    for dtype in DTYPES:
        out = dequant_mm_int8(torch.empty(0, 12, dtype=dtype, device=DEVICE), w, s, None)
        assert out.shape == (0, 8) and out.dtype == dtype
    out = dequant_mm_int8(torch.randn(3, 12, device=DEVICE),
                          torch.empty(0, 12, dtype=torch.int8, device=DEVICE),
                          torch.empty(0, device=DEVICE), None)
    assert out.shape == (3, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_k_zero(dtype):
    # Empty sum: the output is the bias (or zeros), in x.dtype.
    x = torch.empty(4, 0, dtype=dtype, device=DEVICE)
    w = torch.empty(6, 0, dtype=torch.int8, device=DEVICE)
    s, b = torch.rand(6).to(DEVICE), torch.randn(6).to(DEVICE)
    torch.testing.assert_close(dequant_mm_int8(x, w, s, b).cpu(),
                               b.cpu().to(dtype).expand(4, 6), rtol=0, atol=0)
    assert torch.count_nonzero(dequant_mm_int8(x, w, s, None)) == 0


def test_strided_inputs():
    # The launcher takes any strides (the backend wrapper makes them contiguous for speed).
    gen = torch.Generator().manual_seed(11)
    x, w, s, b = make_inputs(6, 20, 90, torch.float16, True, gen)
    xs = torch.cat([x, x], dim=1)[:, 5:95]  # non-contiguous rows
    wt = w.t().contiguous().t()  # column-major weight
    assert_matches_reference(dequant_mm_int8(xs, wt, s, b), xs, wt, s, b)


def test_splitk_deterministic(monkeypatch):
    monkeypatch.setattr(dq_mod, "SPLIT_K_POLICY", "always")
    gen = torch.Generator().manual_seed(5)
    x, w, s, b = make_inputs(4, 48, 200, torch.float32, True, gen)
    first = dequant_mm_int8(x, w, s, b)
    for _ in range(2):
        assert torch.equal(dequant_mm_int8(x, w, s, b), first)


# --------------------------------------------------------------------------------------------
# the registered implementation, through the public op
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_public_op_3d(dtype):
    gen = torch.Generator().manual_seed(13)
    x2d, w, s, b = make_inputs(2 * 3, 24, 56, dtype, True, gen)
    x3d = x2d.reshape(2, 3, 56)
    with slimkernels.use_backend("triton"):
        got = slimkernels.ops.dequant_mm_int8(x3d, w, s, b)
        no_bias = slimkernels.ops.dequant_mm_int8(x3d, w, s)
    assert got.shape == (2, 3, 24) and got.dtype == dtype
    assert_matches_reference(got.reshape(6, 24), x2d, w, s, b)
    assert_matches_reference(no_bias.reshape(6, 24), x2d, w, s, None)


def test_public_op_empty_and_noncontiguous():
    gen = torch.Generator().manual_seed(17)
    x, w, s, b = make_inputs(4, 10, 30, torch.bfloat16, True, gen)
    with slimkernels.use_backend("triton"):
        empty = slimkernels.ops.dequant_mm_int8(x[:0].reshape(0, 1, 30), w, s, b)
        assert empty.shape == (0, 1, 10) and empty.dtype == torch.bfloat16
        xt = x.t().contiguous().t()  # column-major x
        got = slimkernels.ops.dequant_mm_int8(xt, w, s, b)
    assert_matches_reference(got, x, w, s, b)


def test_opcheck_triton_backend():
    gen = torch.Generator().manual_seed(19)
    x, w, s, b = make_inputs(3, 16, 40, torch.float32, True, gen)
    with slimkernels.use_backend("triton"):
        torch.library.opcheck(torch.ops.slimkernels.dequant_mm_int8.default, (x, w, s, b))
