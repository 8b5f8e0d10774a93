"""dequant_mm_int8 (W8A16) on AMX-BF16 tiles (csrc/cpu/dequant_int8_amx.cpp on amx_tiles.h), under
slimkernels.use_cpu_amx: 'on' at any M, 'auto' from kDequantInt8AmxMinM rows of x, 'off' never.

Two numerics, as for the low-bit AMX path (tests/ops/test_lowbit.py): on the avx512_vnni tier the
tiles are float32-exact (x split into bfloat16 pieces, int8 weights exact in bfloat16), so the result
is the reference's float32 GEMM summed in another order, within the native CPU bound of
slimkernels.testing.linear_bound; on the avx512_bf16 tier (cpu_bf16's kernels) x is rounded to
bfloat16 first, and the result is compared with the reference on that rounded x, as
tests/ops/test_weight_only_bf16.py does. Skipped where the CPU, OS or build has no AMX-BF16."""
from __future__ import annotations

import pytest
import torch

import slimkernels
from slimkernels import _native, ops
from slimkernels.backends.dequant_int8 import dequant_mm_int8_reference
from slimkernels.nn import QuantLinear
from slimkernels.testing import Case, assert_close_linear, make_int8_weight, rand_x

C = _native._C
AMX = C is not None and bool(C.amx_bf16_supported())
pytestmark = pytest.mark.skipif(not AMX, reason="no AMX-BF16 here (CPU, OS or build)")

NATIVE = Case("cpu", "native")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731
MIN_M = 16  # kDequantInt8AmxMinM (csrc/include/slim/dequant_int8.h)
# M: under, at and over one and two 16-row tiles, an odd tile count; N odd and not a multiple of the
# 32-row panel; K not a multiple of the 32-k step.
MS = (1, 15, 16, 17, 33, 100)
NK = [(37, 77), (33, 256), (70, 100), (1, 1)]


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.float().bfloat16().float()


def call(x, qweight, scales, bias=None, *, isa="", amx="on", threads=1, ldy=None):
    """slimkernels._C.dequant_mm_int8 on x [M, K] (possibly row-strided); returns y [M, N]; the pads of
    a strided y must stay NaN."""
    m, k = x.shape
    n = qweight.shape[0]
    ldy = n if ldy is None else ldy
    buf = torch.full((m * ldy + 1,), float("nan")).to(x.dtype)
    C.dequant_mm_int8(x.data_ptr(), x.stride(0) if m > 1 else k, KIND[x.dtype], qweight.data_ptr(), k,
                      scales.data_ptr(), 0 if bias is None else bias.data_ptr(), buf.data_ptr(), ldy, m, n, k, threads,
                      isa, amx)
    y = buf[: m * ldy].view(m, ldy)
    if ldy > n:
        assert torch.isnan(y[:, n:].float()).all(), "wrote outside the output rows"
    return y[:, :n]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n,k", NK, ids=lambda v: str(v))
def test_exact(dtype, n, k):
    qweight, scales = make_int8_weight(n, k, seed=n + k)
    w = qweight.float() * scales[:, None]
    for i, m in enumerate(MS):
        x = rand_x(m, k, dtype, seed=m + k)
        bias = torch.randn(n, generator=torch.Generator().manual_seed(m)) if i % 2 else None
        for threads in (1, 2):
            got = call(x, qweight, scales, bias, threads=threads)
            assert_close_linear(got, dequant_mm_int8_reference(x, qweight, scales, bias), x, w, NATIVE,
                                f"exact M={m} N={n} K={k} threads={threads}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n,k", NK, ids=lambda v: str(v))
def test_rounded(dtype, n, k):
    # isa avx512_bf16: x rounded to bf16 (the weights are exact in it), float32 sums.
    qweight, scales = make_int8_weight(n, k, seed=3 * n + k)
    w = qweight.float() * scales[:, None]
    for i, m in enumerate(MS):
        x = rand_x(m, k, dtype, seed=2 * m + k)
        bias = torch.randn(n, generator=torch.Generator().manual_seed(m)) if i % 2 == 0 else None
        got = call(x, qweight, scales, bias, isa="avx512_bf16", threads=1 + i % 2)
        expected = dequant_mm_int8_reference(bf16(x), qweight, scales, bias).to(dtype)
        assert_close_linear(got, expected, bf16(x), w, NATIVE, f"rounded M={m} N={n} K={k}")


def test_large_m_strides_and_scales():
    # Several blocks of x rows per thread (M = 300 at K = 4000: more than the L2 budget of one block),
    # row-strided x and y, scales over nine decades (checked per element).
    n, k = 45, 4000
    qweight, scales = make_int8_weight(n, k, seed=5, scale_decades=(-6, 3))
    x = torch.randn(300, k + 9)[:, 4:4 + k]
    bias = torch.randn(n)
    got = call(x, qweight, scales, bias, threads=2, ldy=n + 3)
    w = qweight.float() * scales[:, None]
    assert_close_linear(got, dequant_mm_int8_reference(x, qweight, scales, bias), x, w, NATIVE, "M=300")


def test_auto_threshold_and_switch():
    # 'auto' is exactly 'off' below MIN_M rows and exactly 'on' from there; the op follows use_cpu_amx.
    qweight, scales = make_int8_weight(40, 96, seed=7)
    for m, as_mode in ((MIN_M - 1, "off"), (MIN_M, "on")):
        x = rand_x(m, 96, seed=m)
        got = {mode: call(x, qweight, scales, amx=mode) for mode in ("auto", "on", "off")}
        assert torch.equal(got["auto"], got[as_mode]), f"M={m}"
        assert not torch.equal(got["on"], got["off"]), f"M={m}: 'on' and 'off' should differ (in rounding)"
        for mode in ("on", "off"):
            with slimkernels.use_backend("native"), slimkernels.use_cpu_amx(mode):
                assert torch.equal(ops.dequant_mm_int8(x, qweight, scales), got[mode]), f"op, amx={mode}"
    with pytest.raises(ValueError, match="amx"):
        call(x, qweight, scales, amx="yes")
    if "avx2" in C.supported_isas():
        with pytest.raises(ValueError, match="amx='on' needs AMX-BF16"):
            call(x, qweight, scales, isa="avx2", amx="on")


def test_specials():
    # Inf and NaN in x give non-finite outputs where the float32 kernel does; a huge finite x stays finite.
    qweight, scales = make_int8_weight(37, 300, seed=9)
    x = rand_x(20, 300, seed=9)
    x[0, 3], x[1, 5], x[2, 0] = float("inf"), float("nan"), 1e36
    on, off = call(x, qweight, scales, amx="on"), call(x, qweight, scales, amx="off")
    assert torch.equal(torch.isfinite(on), torch.isfinite(off)) and not torch.isfinite(on[:2]).any()
    torch.testing.assert_close(on[2:], off[2:], rtol=1e-5, atol=1e-5)


def test_quant_linear_fast_path_follows_amx():
    # The W8A16 layer's eager fast path passes the switch: the same bits as the op under each mode.
    torch.manual_seed(11)
    layer = QuantLinear.from_float(torch.nn.Linear(96, 40), "w8a16")
    x = rand_x(MIN_M + 3, 96, seed=11)
    for mode in ("on", "off"):
        with torch.inference_mode(), slimkernels.use_cpu_amx(mode):
            fast = layer(x)
            with slimkernels.use_backend("native"):
                op = ops.dequant_mm_int8(x, layer.qweight, layer.weight_scale, layer.bias)
        assert torch.equal(fast, op), mode
