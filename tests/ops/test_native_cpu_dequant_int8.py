"""slimkernels._C.dequant_mm_int8 (W8A16 on CPU): every ISA, and the public op under the "native"
backend, against the reference (float32 x @ (qweight * scale).T + bias, rounded once to x.dtype).

Tolerance is relative to max|y| (per output column where scales span orders of magnitude):
float32 1e-5, float16 1e-3, bfloat16 8e-3 (one bf16 rounding step of a float32 result that differs
in the summation order).
"""
from __future__ import annotations

import pytest
import torch

import slimkernels
from slimkernels import ops
from slimkernels.backends import reference

C = pytest.importorskip("slimkernels._C")

ISAS = C.supported_isas()
KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = list(KIND)
SHAPES = [(1, 1, 1), (1, 17, 33), (3, 40, 70), (5, 64, 128), (19, 33, 100), (64, 300, 520)]


def call(x, w, scale, bias, *, threads=1, isa="", ldx=None, ldy=None):
    """Call the binding on x [M, K] (possibly a strided view), w [N, K]; returns y [M, N]."""
    m, k = x.shape
    n = w.shape[0]
    ldx = x.stride(0) if ldx is None else ldx
    ldy = n if ldy is None else ldy
    buf = torch.full((m * ldy + 1,), float("nan")).to(x.dtype)  # pads stay NaN: writes outside [N] show up
    C.dequant_mm_int8(
        x.data_ptr(), ldx, KIND[x.dtype], w.data_ptr(), w.stride(0), scale.data_ptr(),
        0 if bias is None else bias.data_ptr(), buf.data_ptr(), ldy, m, n, k, threads, isa,
    )
    y = buf[: m * ldy].view(m, ldy)
    if ldy > n:
        assert torch.isnan(y[:, n:].float()).all(), "wrote outside the output rows"
    return y[:, :n]


def check(y, x, w, scale, bias, per_column=False):
    ref = reference.dequant_mm_int8(x, w, scale, bias)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    err = (y.float() - ref.float()).abs()
    if per_column:
        denom = ref.float().abs().amax(dim=0, keepdim=True).clamp_min(1e-30)
        rel = (err / denom).max().item()
    else:
        rel = err.max().item() / max(ref.float().abs().max().item(), 1e-30)
    assert rel <= TOL[x.dtype], f"relative error {rel:.3g} > {TOL[x.dtype]}"


def make(m, n, k, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    scale = torch.rand(n, generator=g) * 0.02 + 1e-3
    b = torch.randn(n, generator=g) if bias else None
    return x, w, scale, b


def test_isa_queries():
    assert ISAS[-1] == "scalar" and C.cpu_isa() == ISAS[0]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_binding_matches_reference(isa, dtype, shape, bias):
    x, w, scale, b = make(*shape, dtype, bias)
    for threads in (1, 2):
        check(call(x, w, scale, b, threads=threads, isa=isa), x, w, scale, b)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided(isa, dtype):
    # x a column slice of a wider tensor (ldx > K), w rows with padding (ldw > K), y with ldy > N.
    m, n, k = 7, 45, 83
    xb = torch.randn(m, k + 13).to(dtype)
    wb = torch.randint(-128, 128, (n, k + 5), dtype=torch.int8)
    x, w = xb[:, 3 : 3 + k], wb[:, :k]
    scale, b = torch.rand(n) + 0.5, torch.randn(n)
    for threads in (1, 2):
        check(call(x, w, scale, b, threads=threads, isa=isa, ldy=n + 6), x, w, scale, b)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("value", [-128, 127])
def test_extreme_weights_and_scales(isa, dtype, value):
    m, n, k = 9, 70, 300
    x = (torch.rand(m, k) + 0.1).to(dtype)  # one sign: no cancellation, the tolerance stays meaningful
    w = torch.full((n, k), value, dtype=torch.int8)
    # scales over 9 (float16: 6, to stay below its 65504 maximum) orders of magnitude
    scale = 10.0 ** torch.linspace(-6, 0 if dtype == torch.float16 else 3, n)
    b = torch.randn(n) * scale
    for threads in (1, 2):
        check(call(x, w, scale, b, threads=threads, isa=isa), x, w, scale, b, per_column=True)
    # mixed extremes along K
    w = torch.where(torch.rand(n, k) < 0.5, -128, 127).to(torch.int8)
    x = torch.randn(m, k).to(dtype)
    check(call(x, w, scale, None, threads=2, isa=isa), x, w, scale, None, per_column=True)


@pytest.mark.parametrize("isa", ISAS)
def test_large_k_and_many_rows(isa):
    # several M blocks and N chunks: exercises the task split over threads
    x, w, scale, b = make(130, 260, 4100, torch.float32)
    check(call(x, w, scale, b, threads=2, isa=isa), x, w, scale, b)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_k_gives_bias(isa, dtype):
    x = torch.empty(3, 0, dtype=dtype)
    w = torch.empty(5, 0, dtype=torch.int8)
    scale, b = torch.full((5,), float("inf")), torch.randn(5)
    y = call(x, w, scale, b, isa=isa, ldx=0)
    torch.testing.assert_close(y, b.to(dtype).expand(3, 5), rtol=0, atol=0)
    y = call(x, w, scale, None, isa=isa, ldx=0)
    assert (y == 0).all()


def test_empty_m_n_noop():
    x, w, scale, b = make(0, 4, 8, torch.float32)
    C.dequant_mm_int8(x.data_ptr(), 8, "float32", w.data_ptr(), 8, scale.data_ptr(), 0, 0, 4, 0, 4, 8, 1)
    C.dequant_mm_int8(0, 8, "float32", 0, 8, 0, 0, 0, 0, 3, 0, 8, 1)


# ---------------------------------------------------------------------------------- bad arguments


def _args(**over):
    x, w, scale, _ = make(2, 3, 4, torch.float32, seed=1)
    y = torch.empty(2, 3)
    a = dict(x=x.data_ptr(), ldx=4, x_kind="float32", w=w.data_ptr(), ldw=4, scale=scale.data_ptr(), bias=0,
             y=y.data_ptr(), ldy=3, M=2, N=3, K=4, num_threads=1, isa="")
    a.update(over)
    return a, (x, w, scale, y)


@pytest.mark.parametrize(
    "over, name",
    [
        (dict(M=-1), "M"), (dict(N=-1), "N"), (dict(K=-1), "K"), (dict(ldx=3), "ldx"), (dict(ldw=3), "ldw"),
        (dict(ldy=2), "ldy"), (dict(num_threads=0), "num_threads"), (dict(x_kind="int8"), "x_kind"),
        (dict(isa="sse9"), "isa"), (dict(y=0), "y"), (dict(scale=0), "scale"), (dict(x=0), "x"), (dict(w=0), "w"),
    ],
)
def test_bad_arguments(over, name):
    a, keep = _args(**over)
    with pytest.raises(ValueError, match=name):
        C.dequant_mm_int8(**a)


# ---------------------------------------------------------------------------------- the public op


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_op_native_backend(dtype, shape, bias):
    x, w, scale, b = make(*shape, dtype, bias)
    with slimkernels.use_backend("native"):
        y = ops.dequant_mm_int8(x, w, scale, b)
    check(y, x, w, scale, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_op_native_strided_and_batched(dtype):
    xb = torch.randn(2, 3, 90).to(dtype)
    x = xb[..., 5:75]  # [2, 3, 70], last-dim slice: rows not contiguous
    w = torch.randint(-128, 128, (40, 70), dtype=torch.int8)
    scale, b = torch.rand(40) + 0.1, torch.randn(40)
    with slimkernels.use_backend("native"):
        y = ops.dequant_mm_int8(x, w, scale, b)
    assert y.shape == (2, 3, 40)
    check(y.reshape(6, 40), x.reshape(6, 70), w, scale, b)


def test_op_native_single_row_odd_stride():
    # a [1, K] view whose row stride is smaller than K (torch allows any stride on a size-1 dim)
    base = torch.randn(40)
    x = base.as_strided((1, 33), (1, 1))
    w = torch.randint(-128, 128, (1, 33), dtype=torch.int8).as_strided((1, 33), (2, 1))
    scale = torch.rand(1) + 0.1
    with slimkernels.use_backend("native"):
        check(ops.dequant_mm_int8(x, w, scale, None), x, w, scale, None)


@pytest.mark.parametrize("m, n, k", [(0, 8, 16), (4, 0, 16), (4, 8, 0)])
def test_native_backend_empty(m, n, k):
    from slimkernels.backends import cpu

    x = torch.randn(m, k)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    scale, b = torch.rand(n), torch.randn(n)
    # the registered function itself: the op's x.reshape(-1, K) cannot take K = 0 (_ops.py)
    torch.testing.assert_close(cpu.dequant_mm_int8(x, w, scale, b), reference.dequant_mm_int8(x, w, scale, b))
    if k > 0:
        with slimkernels.use_backend("native"):
            torch.testing.assert_close(ops.dequant_mm_int8(x, w, scale, b), reference.dequant_mm_int8(x, w, scale, b))


def test_op_native_threads():
    x, w, scale, b = make(33, 130, 300, torch.bfloat16)
    old = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            with slimkernels.use_backend("native"):
                check(ops.dequant_mm_int8(x, w, scale, b), x, w, scale, b)
    finally:
        torch.set_num_threads(old)


def test_op_bad_input():
    x = torch.randn(2, 8)
    with slimkernels.use_backend("native"), pytest.raises(ValueError, match="qweight"):
        ops.dequant_mm_int8(x, torch.zeros(3, 7, dtype=torch.int8), torch.ones(3), None)
