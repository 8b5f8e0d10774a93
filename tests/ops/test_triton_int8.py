"""Triton int8 GEMM and per-token int8 quantization against pure-torch references.

Runs on CUDA when present, else on CPU tensors in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported). Shapes stay small: the interpreter is slow.
Integer results are compared bit for bit; the float epilogue is compared bit for bit too, since the
kernels run with FMA contraction off and evaluate the same float32 expression as the reference.
"""

import os
import subprocess
import sys

import pytest
import torch

import slimkernels.triton as sk_triton
from slimkernels.triton import int8_gemm as gemm_mod  # imports even without triton
from slimkernels.triton.int8_gemm import int8_gemm
from slimkernels.triton.quantize import quantize_per_token_int8

if not sk_triton.available():  # no triton, or neither a GPU nor the interpreter
    pytest.skip(f"Triton kernels cannot run: {sk_triton.unavailable_reason()}",
                allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FLOAT_OUT = [torch.float32, torch.float16, torch.bfloat16]


# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------

def ref_int32(a, b):
    """Exact int64 product taken mod 2**32, as int32."""
    acc = a.cpu().long() @ b.cpu().long().T
    acc = torch.remainder(acc + 2**31, 2**32) - 2**31
    return acc.to(torch.int32)


def ref_epilogue(acc, a_scale, b_scale, bias, out_dtype):
    out = (acc.float() * a_scale.cpu()[:, None]) * b_scale.cpu()[None, :]
    if bias is not None:
        out = out + bias.cpu()[None, :]
    return out.to(out_dtype)


def ref_quantize(x):
    xf = x.cpu().float()
    amax = xf.abs().amax(dim=1)  # propagates NaN
    finite = torch.isfinite(amax)
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / 127)
    scale = torch.where(finite, scale, torch.full_like(amax, float("nan")))
    q = torch.round(xf / scale[:, None]).clamp(-127, 127)
    q = torch.where(finite[:, None], q, torch.zeros_like(q)).to(torch.int8)
    return q, scale


def rand_int8(*shape, gen):
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen).to(DEVICE)


@pytest.fixture(params=["never", "always"], ids=["direct", "splitk"])
def split_k_policy(request, monkeypatch):
    """Run a test through the plain kernel and through the split-K path (used for M <= 16)."""
    monkeypatch.setattr(gemm_mod, "SPLIT_K_POLICY", request.param)
    return request.param


# --------------------------------------------------------------------------------------------
# int8_gemm: exact int32
# --------------------------------------------------------------------------------------------

SHAPES = [(1, 1, 1), (1, 5, 33), (3, 17, 13), (16, 32, 64), (19, 40, 70), (33, 65, 96)]


@pytest.mark.parametrize("M,N,K", SHAPES)
def test_int8_gemm_int32_random(M, N, K, split_k_policy):
    gen = torch.Generator().manual_seed(M * 10007 + N * 101 + K)
    a, b = rand_int8(M, K, gen=gen), rand_int8(N, K, gen=gen)
    out = int8_gemm(a, b)
    assert out.dtype == torch.int32 and out.shape == (M, N) and out.device == a.device
    assert torch.equal(out.cpu(), ref_int32(a, b))


@pytest.mark.parametrize("pattern", ["all_min", "all_max", "min_max", "checker"])
def test_int8_gemm_int32_extremes(pattern, split_k_policy):
    M, N, K = 5, 37, 100
    if pattern == "all_min":
        a = torch.full((M, K), -128, dtype=torch.int8)
        b = torch.full((N, K), -128, dtype=torch.int8)
    elif pattern == "all_max":
        a = torch.full((M, K), 127, dtype=torch.int8)
        b = torch.full((N, K), 127, dtype=torch.int8)
    elif pattern == "min_max":
        a = torch.full((M, K), -128, dtype=torch.int8)
        b = torch.full((N, K), 127, dtype=torch.int8)
    else:
        idx = torch.arange(M * K).reshape(M, K)
        a = torch.where(idx % 3 == 0, -128, 127).to(torch.int8)
        idx = torch.arange(N * K).reshape(N, K)
        b = torch.where(idx % 2 == 0, -128, 127).to(torch.int8)
    a, b = a.to(DEVICE), b.to(DEVICE)
    assert torch.equal(int8_gemm(a, b).cpu(), ref_int32(a, b))


def test_int8_gemm_int32_wraps_mod_2_32(split_k_policy):
    # 16384 * K > 2**31 - 1: the int32 accumulator wraps exactly like the int64 result mod 2**32.
    M, N, K = 1, 2, 140_000 if DEVICE == "cuda" else 131_104
    a = torch.full((M, K), -128, dtype=torch.int8, device=DEVICE)
    b = torch.full((N, K), -128, dtype=torch.int8, device=DEVICE)
    b[1, ::7] = 127
    ref = ref_int32(a, b)
    assert ref[0, 0].item() < 0  # really wrapped
    assert torch.equal(int8_gemm(a, b).cpu(), ref)


def test_int8_gemm_empty():
    gen = torch.Generator().manual_seed(0)
    a0, b = rand_int8(0, 16, gen=gen), rand_int8(8, 16, gen=gen)
    out = int8_gemm(a0, b)
    assert out.shape == (0, 8) and out.dtype == torch.int32
    out = int8_gemm(a0, b, torch.ones(0, device=DEVICE), torch.ones(8, device=DEVICE),
                    None, torch.bfloat16)
    assert out.shape == (0, 8) and out.dtype == torch.bfloat16
    a = rand_int8(3, 16, gen=gen)
    assert int8_gemm(a, rand_int8(0, 16, gen=gen)).shape == (3, 0)


@pytest.mark.parametrize("out_dtype", [torch.int32] + FLOAT_OUT)
def test_int8_gemm_k_zero(out_dtype):
    M, N = 3, 5
    a = torch.empty((M, 0), dtype=torch.int8, device=DEVICE)
    b = torch.empty((N, 0), dtype=torch.int8, device=DEVICE)
    if out_dtype == torch.int32:
        assert torch.equal(int8_gemm(a, b).cpu(), torch.zeros(M, N, dtype=torch.int32))
        return
    sa, sb = torch.rand(M) + 0.5, torch.rand(N) + 0.5
    bias = torch.randn(N)
    out = int8_gemm(a, b, sa.to(DEVICE), sb.to(DEVICE), bias.to(DEVICE), out_dtype)
    ref = ref_epilogue(torch.zeros(M, N, dtype=torch.int32), sa, sb, bias, out_dtype)
    assert out.dtype == out_dtype and torch.equal(out.cpu(), ref)


# --------------------------------------------------------------------------------------------
# int8_gemm: fused float epilogue
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("out_dtype", FLOAT_OUT, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("M,N,K", [(1, 5, 33), (3, 17, 13), (19, 40, 70)])
def test_int8_gemm_float_epilogue(M, N, K, out_dtype, with_bias, split_k_policy):
    gen = torch.Generator().manual_seed(M + 31 * N + 977 * K)
    a, b = rand_int8(M, K, gen=gen), rand_int8(N, K, gen=gen)
    # Scales as dynamic quantization makes them (amax / 127), spread over a few octaves.
    sa = (torch.rand(M, generator=gen) * 4 + 0.05) / 127
    sb = (torch.rand(N, generator=gen) * 0.5 + 0.01) / 127
    bias = torch.randn(N, generator=gen) * 3 if with_bias else None
    out = int8_gemm(a, b, sa.to(DEVICE), sb.to(DEVICE),
                    bias.to(DEVICE) if with_bias else None, out_dtype)
    assert out.dtype == out_dtype and out.shape == (M, N)
    ref = ref_epilogue(ref_int32(a, b), sa, sb, bias, out_dtype)
    assert torch.equal(out.cpu(), ref)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # interpreter
def test_int8_gemm_float16_overflow_to_inf():
    # Large scales push results past float16's range: inf, as torch's cast gives.
    gen = torch.Generator().manual_seed(5)
    a = torch.full((2, 64), 127, dtype=torch.int8, device=DEVICE)
    b = rand_int8(20, 64, gen=gen)
    sa, sb = torch.full((2,), 3.0), torch.full((20,), 2.0)
    out = int8_gemm(a, b, sa.to(DEVICE), sb.to(DEVICE), None, torch.float16)
    ref = ref_epilogue(ref_int32(a, b), sa, sb, None, torch.float16)
    assert torch.isinf(ref).any() and torch.equal(out.cpu(), ref)


# --------------------------------------------------------------------------------------------
# quantize_per_token_int8
# --------------------------------------------------------------------------------------------

def assert_quant_equal(x):
    q, s = quantize_per_token_int8(x)
    qr, sr = ref_quantize(x)
    assert q.dtype == torch.int8 and q.shape == x.shape and q.device == x.device
    assert s.dtype == torch.float32 and s.shape == (x.shape[0],)
    assert torch.equal(q.cpu(), qr), (q.cpu() != qr).nonzero()[:10]
    torch.testing.assert_close(s.cpu(), sr, rtol=0, atol=0, equal_nan=True)


QDTYPES = [torch.float32, torch.float16, torch.bfloat16]
qdtype_ids = lambda d: str(d).split(".")[-1]  # noqa: E731


@pytest.mark.parametrize("dtype", QDTYPES, ids=qdtype_ids)
@pytest.mark.parametrize("M,K", [(1, 1), (4, 33), (3, 128), (7, 300)])
def test_quantize_random(M, K, dtype):
    gen = torch.Generator().manual_seed(M * 1000 + K)
    x = torch.randn(M, K, generator=gen) * torch.logspace(-3, 3, M)[:, None]
    assert_quant_equal(x.to(dtype).to(DEVICE))


def _special_rows(dtype, K):
    """Rows covering the edge cases, each padded to K with values inside its own range."""
    nan, inf = float("nan"), float("inf")
    big = {torch.float16: 6.0e4}.get(dtype, 3.0e38)
    tiny = {torch.float16: 3.0e-6, torch.bfloat16: 2.0e-39}.get(dtype, 1.0e-40)  # subnormals
    gen = torch.Generator().manual_seed(K)
    rows = []

    def row(head, fill):
        r = fill * (torch.rand(K, generator=gen) * 2 - 1)
        r[: len(head)] = torch.tensor(head, dtype=torch.float32)
        return r

    rows.append(torch.zeros(K))                               # all zero: scale 1, q 0
    rows.append(-torch.zeros(K))                              # negative zeros
    rows.append(row([1.0, nan, -2.0], 1.0))                   # NaN: scale NaN, q 0
    rows.append(row([inf, 1.0], 1.0))                         # +Inf
    rows.append(row([2.0, -inf], 1.0))                        # -Inf
    rows.append(torch.full((K,), nan))                        # all NaN
    # Exact ties: amax 127 -> scale 1, so x / scale = k + 0.5 exactly; half-even rounding.
    rows.append(row([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5, -3.5], 100.0))
    # amax 254 -> scale 2: odd integers are ties.
    rows.append(row([-254.0, 1.0, 3.0, 5.0, -1.0, -3.0, 253.0, -253.0, 7.0], 200.0))
    # amax 127 * 2**-10 -> scale 2**-10: (k + 0.5) * 2**-10 are ties.
    s = 2.0 ** -10
    rows.append(row([127 * s, 0.5 * s, 1.5 * s, -2.5 * s, 10.5 * s, -99.5 * s], 100 * s))
    rows.append(row([big, -big / 3, big / 254], big))         # huge
    rows.append(row([tiny, -tiny / 2], tiny))                 # tiny / subnormal
    rows.append(row([1.0e-30 if dtype != torch.float16 else 1.0e-4], 1.0e-30
                    if dtype != torch.float16 else 1.0e-4))
    rows.append(row([-5.0], 5.0))                             # amax from a negative value
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", QDTYPES, ids=qdtype_ids)
@pytest.mark.parametrize("K", [11, 200])
def test_quantize_special_rows(dtype, K):
    x = _special_rows(dtype, K).to(dtype)
    # The ties really are ties after the cast to dtype.
    xt = x[6].float()
    assert xt[0].item() == 127.0 and xt[1].item() == 0.5 and xt[7].item() == 126.5
    q, s = quantize_per_token_int8(x.to(DEVICE))
    assert q[6, 1:11].cpu().tolist() == [0, 2, 2, 0, -2, -2, 126, -126, 4, -4]
    assert q[7, 1:9].cpu().tolist() == [0, 2, 2, 0, -2, 126, -126, 4]
    assert s[0].item() == 1.0 and s[1].item() == 1.0 and not q[:2].any()
    assert torch.isnan(s[2:6].cpu()).all() and not q[2:6].any()
    assert_quant_equal(x.to(DEVICE))


def test_quantize_empty():
    q, s = quantize_per_token_int8(torch.empty(0, 8, device=DEVICE))
    assert q.shape == (0, 8) and q.dtype == torch.int8 and s.shape == (0,)
    q, s = quantize_per_token_int8(torch.empty(3, 0, dtype=torch.float16, device=DEVICE))
    assert q.shape == (3, 0) and torch.equal(s.cpu(), torch.ones(3))


def test_quantize_then_gemm_matches_reference():
    # The two launchers composed as a dynamic W8A8 linear would use them.
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(5, 70, generator=gen).to(torch.bfloat16)
    w = torch.randn(24, 70, generator=gen)
    bias = torch.randn(24, generator=gen)
    qx, sx = quantize_per_token_int8(x.to(DEVICE))
    qw, sw = quantize_per_token_int8(w.to(DEVICE))
    out = int8_gemm(qx, qw, sx, sw, bias.to(DEVICE), torch.bfloat16)
    qxr, sxr = ref_quantize(x)
    qwr, swr = ref_quantize(w)
    assert torch.equal(out.cpu(), ref_epilogue(ref_int32(qxr, qwr), sxr, swr, bias, torch.bfloat16))
    # and it approximates the float linear
    err = (out.float().cpu() - (x.float() @ w.T + bias)).abs().max().item()
    assert err < 0.05 * (x.float() @ w.T).abs().max().item()


# --------------------------------------------------------------------------------------------
# availability and import without triton
# --------------------------------------------------------------------------------------------

def test_available_here():
    assert sk_triton.available() is True
    assert sk_triton.unavailable_reason() == ""


def test_import_without_triton():
    code = (
        "import sys\n"
        "sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "sys.modules['triton.language'] = None\n"
        "import slimkernels.triton as t\n"
        "from slimkernels.triton import int8_gemm, quantize\n"
        "assert t.available() is False\n"
        "assert 'triton is not importable' in t.unavailable_reason()\n"
        "import torch\n"
        "try:\n"
        "    quantize.quantize_per_token_int8(torch.ones(2, 2))\n"
        "except RuntimeError as e:\n"
        "    assert 'triton' in str(e)\n"
        "else:\n"
        "    raise AssertionError('expected RuntimeError')\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
