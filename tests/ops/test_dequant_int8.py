"""The dequant_int8 family (dequant_mm_int8, W8A16: x @ (qweight * scales[:, None]).T + bias): every
implementation usable here (reference; native on each CPU instruction set; torch's own kernels;
Triton, on CPU under its interpreter with small shapes, through both split-K policies; CUDA)
against the reference (float32 x @ (qweight * scale).T + bias, rounded once to x.dtype).
The numerical sweeps leave the reference out (it is what they compare with); the contract tests
(strides, empty problems, special values, opcheck, autograd) run it too.

Tolerance per element: slimkernels.testing.linear_bound, with w = qweight * scales[:, None]. For
the native CPU kernels 1e-5 * (|x| @ |w|.T) (a float32 sum in another order) plus one rounding
step of the output kind (2^-23, 2^-10 and 2^-7 of |y| for float32, float16 and bfloat16). Triton
rounds its result too (two steps, and K * 2^-24 for the order of its float32 sum); torch's kernels
round the product, the scale and the bias in x.dtype (4u more). The bound is per element, so the
tiny output channels of scales spread over nine decades are checked as strictly as the large ones.

Then what only one implementation has: the native binding (leading dimensions, pads it must not
write, null pointers, argument validation) and Triton's split-K determinism and launcher strides.
"""
from __future__ import annotations

import pytest
import torch

import slimkernels
from slimkernels import _native, ops
from slimkernels.backends.dequant_int8 import dequant_mm_int8_reference
from slimkernels.testing import Case, assert_close_linear, cases, forced, make_int8_weight, opcheck, rand_x

C = _native._C
ISAS = list(C.supported_isas()) if C is not None else []
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731

CASES = cases("dequant_mm_int8")
# Contract tests whose outcome does not depend on the instruction set: native once, on the best.
CONTRACT = cases("dequant_mm_int8", per_isa=False)
# The numerical sweeps compare with the reference, so they leave the reference itself out.
SWEEP = cases("dequant_mm_int8", reference=False)
SPLIT_SWEEP = cases("dequant_mm_int8", reference=False, split_k=True)

# (M, N, K): one element; M tails 1, 3, 5, 17, 19 and 63/64 (torch's int8 kernel takes M < 64 with K
# a multiple of 16); odd N and K; K not a multiple of any tile. The interpreter: small shapes, under,
# at and over one 16-row tile.
SHAPES = [(1, 1, 1), (1, 17, 33), (3, 40, 70), (5, 64, 128), (17, 45, 77), (19, 33, 100), (63, 40, 64),
          (64, 300, 520)]
SMALL_SHAPES = [(1, 1, 1), (1, 17, 33), (3, 40, 70), (16, 64, 128), (19, 33, 100)]


def shapes_for(case: Case):
    if case.small:
        return [s for s in SMALL_SHAPES if s[0] <= 16 or case.split_k != "always"]  # split-K is for M <= 16
    return SHAPES


def threads_for(case: Case):
    """The native CPU kernels follow torch.get_num_threads(): run them on 1 and 2 threads."""
    return (1, 2) if case.device == "cpu" and case.impl == "native" else (None,)


def run(case, x, qweight, scales, bias=None, what="", threads=None):
    """The op under `case` (on `threads` torch threads, if given) against the reference."""
    old = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with forced(case):
            got = ops.dequant_mm_int8(x, qweight, scales, bias)
    finally:
        torch.set_num_threads(old)
    k, n = x.shape[-1], qweight.shape[0]
    rows, qweight, scales = x.reshape(-1, k).cpu(), qweight.cpu(), scales.cpu()
    ref = dequant_mm_int8_reference(rows, qweight, scales, None if bias is None else bias.cpu())
    assert got.shape == (*x.shape[:-1], n)
    assert_close_linear(got.reshape(-1, n), ref, rows, qweight.float() * scales[:, None], case,
                        f"{what} threads={threads}")
    return got


# ======================================= every implementation =======================================
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", SPLIT_SWEEP)
def test_matches_reference(case, dtype, bias):
    dev = case.device
    for m, n, k in shapes_for(case):
        seed = m * 1000 + n * 10 + k
        qweight, scales = make_int8_weight(n, k, seed=seed, device=dev)
        x = rand_x(m, k, dtype, seed=seed, device=dev)
        b = torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(dev) if bias else None
        for threads in threads_for(case):
            run(case, x, qweight, scales, b, f"M={m} N={n} K={k}", threads)


@pytest.mark.parametrize("pattern", ["min", "max", "mix"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", SPLIT_SWEEP)
def test_extreme_weights_and_scales(case, dtype, pattern):
    # int8 extremes (-128 is the one value whose magnitude 127 does not cover) and per-channel scales
    # over nine decades (float16: six, to stay below its 65504 maximum); x of one sign (no
    # cancellation), then of both.
    dev = case.device
    m, n, k = (5, 40, 100) if case.small else (9, 70, 300)
    gen = torch.Generator().manual_seed(7)
    codes = {"min": torch.full((n, k), -128, dtype=torch.int8), "max": torch.full((n, k), 127, dtype=torch.int8),
             "mix": torch.where(torch.rand(n, k, generator=gen) < 0.5, -128, 127).to(torch.int8)}[pattern]
    scales = 10.0 ** torch.linspace(-6, 0 if dtype == torch.float16 else 3, n)
    qweight, scales = codes.to(dev), scales.to(dev)
    x = (torch.rand(m, k, generator=gen) + 0.1).to(dtype).to(dev)
    bias = (torch.randn(n, generator=gen) * scales.cpu()).to(dev)
    for threads in threads_for(case):
        run(case, x, qweight, scales, bias, "one-signed x", threads)
    run(case, rand_x(m, k, dtype, seed=8, device=dev), qweight, scales, None, "x of both signs")


# Scales below 6.1e-5 (max|w| / 127 of a layer whose weights stay under 8e-3) are subnormal in
# float16: the torch implementation must not round them to it.
@pytest.mark.parametrize("case", [p for p in cases("dequant_mm_int8", impls=("torch",)) if p.values[0].device == "cpu"])
def test_torch_float16_subnormal_scales(case):
    dev = case.device
    qweight, scales = make_int8_weight(16, 64, seed=9, device=dev, scale_decades=(-7.0, -5.0))
    run(case, rand_x(4, 64, torch.float16, seed=9, device=dev), qweight, scales, None, "scales 1e-7..1e-5")


@pytest.mark.parametrize("case", [p for p in SWEEP if not p.values[0].small])
def test_large_k_and_many_rows(case):
    # several M blocks and N chunks: the task split over threads
    dev = case.device
    qweight, scales = make_int8_weight(260, 4100, seed=1, device=dev)
    x, bias = rand_x(130, 4100, seed=1, device=dev), torch.randn(260).to(dev)
    for threads in threads_for(case):
        run(case, x, qweight, scales, bias, "130x260x4100", threads)
    qweight, scales = make_int8_weight(130, 300, seed=2, device=dev)
    for threads in threads_for(case):
        run(case, rand_x(33, 300, torch.bfloat16, seed=2, device=dev), qweight, scales, bias[:130], "33x130x300",
            threads)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES)
def test_strided_and_batched_x(case, dtype):
    # Row-strided x is read in place (strided_rows implementations), anything else is copied once by
    # dispatch; batched x is flattened by the op; weights at odd strides.
    dev = case.device
    n, k = 40, 70
    wide = rand_x(6, 90, dtype, seed=3, device=dev)
    xs = {
        "batched slice": wide.reshape(2, 3, 90)[..., 5:75],  # [2, 3, 70], rows strided
        "column slice": wide[:, 5:75],
        "every other row": wide[::2, 10:80],
        "column-major": wide[:, :k].t().contiguous().t(),
    }
    qweight, scales = make_int8_weight(n, k, seed=4, device=dev)
    bias = torch.randn(n).to(dev)
    for name, x in xs.items():
        run(case, x, qweight, scales, bias, name)
    run(case, wide[:, :k], qweight.t().contiguous().t(), scales, None, "column-major qweight")
    every_other = lambda t: torch.stack([t, t], 1)[:, 0]  # noqa: E731
    run(case, wide[:, :k], qweight, every_other(scales), every_other(bias), "strided scales and bias")
    # a [1, K] view whose row stride is smaller than K (torch allows any stride on a size-1 dim)
    x = torch.randn(40).to(dtype).to(dev).as_strided((1, 33), (1, 1))
    w = torch.randint(-128, 128, (1, 33), dtype=torch.int8).to(dev).as_strided((1, 33), (2, 1))
    run(case, x, w, (torch.rand(1) + 0.1).to(dev), None, "single row")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CONTRACT)
def test_bias_dtypes(case, dtype):
    # The contract takes a bias in any float dtype; it is added in float32.
    dev = case.device
    qweight, scales = make_int8_weight(24, 40, seed=3, device=dev)
    x, b = rand_x(2, 40, dtype, seed=3, device=dev), torch.randn(24).to(dev)
    for bias in (b.half(), b.bfloat16(), b.float()):
        run(case, x, qweight, scales, bias, f"bias {bias.dtype}")


@pytest.mark.parametrize("m,n,k", [(0, 8, 16), (4, 0, 16), (4, 8, 0), (0, 0, 0)])
@pytest.mark.parametrize("case", CONTRACT)
def test_empty_problems(case, m, n, k):
    # M, N or K = 0 through the op: an empty result, or (K = 0, an empty sum) the bias or zeros.
    dev = case.device
    qweight, scales, b = torch.zeros(n, k, dtype=torch.int8).to(dev), torch.rand(n).to(dev), torch.randn(n).to(dev)
    for dtype in DTYPES:
        for shape in ((m, k), (1, m, k), (m, 1, k)):
            x = torch.randn(shape).to(dtype).to(dev)
            want = b.to(dtype).expand(m, n).reshape(*shape[:-1], n)
            with forced(case):
                got, got_nobias = ops.dequant_mm_int8(x, qweight, scales, b), ops.dequant_mm_int8(x, qweight, scales)
            assert got.dtype == got_nobias.dtype == dtype and got.device.type == dev
            assert torch.equal(got, want) and torch.equal(got_nobias, torch.zeros_like(want))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # Triton's interpreter: Inf * 0
@pytest.mark.parametrize("case", CASES)
def test_inf_nan_x(case):
    # Inf and NaN in x give non-finite outputs in their rows only, as in the reference.
    dev = case.device
    x = rand_x(4, 64, seed=5)
    x[0, 3], x[1, 5] = float("inf"), float("nan")
    qweight, scales = make_int8_weight(21, 64, seed=5)
    qweight[:, 3] = torch.where(qweight[:, 3] == 0, 1, qweight[:, 3]).to(torch.int8)  # Inf * 0 would be NaN
    with forced(case):
        got = ops.dequant_mm_int8(x.to(dev), qweight.to(dev), scales.to(dev)).cpu()
    ref = dequant_mm_int8_reference(x, qweight, scales, None)
    assert ref[0].isinf().all() and ref[1].isnan().all()
    assert torch.equal(got.isinf(), ref.isinf()) and torch.equal(got.isnan(), ref.isnan())
    assert_close_linear(got[2:], ref[2:], x[2:], qweight.float() * scales[:, None], case)


@pytest.mark.parametrize("case", CONTRACT)
def test_opcheck(case):
    dev = case.device
    qweight, scales = make_int8_weight(16, 40, seed=19, device=dev)
    x = rand_x(3, 40, seed=19, device=dev)
    op = torch.ops.slimkernels.dequant_mm_int8.default
    opcheck(case, op, (x, qweight, scales, torch.randn(16, device=dev)))
    opcheck(case, op, (x, qweight, scales, None))


@pytest.mark.parametrize("case", CONTRACT)
def test_autograd(case):
    # The weight is frozen int8: x and bias get gradients (x: grad @ W, bias: grad summed over rows).
    dev = case.device
    qweight, scales = make_int8_weight(12, 40, seed=6, device=dev)
    w = qweight.cpu().float() * scales.cpu()[:, None]
    x = rand_x(6, 40, seed=7, device=dev).reshape(2, 3, 40).requires_grad_()
    bias = torch.randn(12, device=dev, requires_grad=True)
    grad = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(8)).to(dev)
    with forced(case):
        ops.dequant_mm_int8(x, qweight, scales, bias).backward(grad)
    torch.testing.assert_close(x.grad.cpu(), grad.cpu() @ w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad.cpu(), grad.cpu().sum((0, 1)), rtol=1e-5, atol=1e-5)


def test_op_rejects_bad_arguments():
    x, qweight = torch.randn(2, 8), torch.randint(-128, 128, (3, 8), dtype=torch.int8)
    with pytest.raises(ValueError, match="K=5 features"):
        ops.dequant_mm_int8(torch.randn(2, 5), qweight, torch.rand(3))
    with pytest.raises(ValueError, match="qweight"):
        ops.dequant_mm_int8(x, torch.zeros(3, 7, dtype=torch.int8), torch.ones(3))
    with pytest.raises(TypeError, match="qweight must be torch.int8"):
        ops.dequant_mm_int8(x, qweight.to(torch.uint8), torch.rand(3))
    with pytest.raises(TypeError, match="scales must be torch.float32"):
        ops.dequant_mm_int8(x, qweight, torch.rand(3).double())
    with pytest.raises(ValueError, match="scales must have shape"):
        ops.dequant_mm_int8(x, qweight, torch.rand(4))
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.dequant_mm_int8(x, qweight, torch.rand(3), torch.rand(4))
    with pytest.raises(TypeError, match="x must be"):
        ops.dequant_mm_int8(x.double(), qweight, torch.rand(3))
    with pytest.raises(ValueError, match="meta"):
        ops.dequant_mm_int8(x, qweight.to("meta"), torch.rand(3))


# ======================================= the native CPU binding =======================================
needs_native = pytest.mark.skipif(C is None, reason="slimkernels._C is not built")


def call(x, w, scale, bias, *, threads=1, isa="", ldx=None, ldy=None):
    """slimkernels._C.dequant_mm_int8 on x [M, K] (possibly a strided view), w [N, K]; returns y [M, N]."""
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


@needs_native
def test_isa_queries():
    assert ISAS[-1] == "scalar" and C.cpu_isa() == ISAS[0]


@needs_native
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("isa", ISAS)
def test_binding_strided(isa, dtype):
    # x a column slice of a wider tensor (ldx > K), w rows with padding (ldw > K), y with ldy > N.
    m, n, k = 7, 45, 83
    x = torch.randn(m, k + 13).to(dtype)[:, 3:3 + k]
    w = torch.randint(-128, 128, (n, k + 5), dtype=torch.int8)[:, :k]
    scale, b = torch.rand(n) + 0.5, torch.randn(n)
    ref = dequant_mm_int8_reference(x, w, scale, b)
    for threads in (1, 2):
        y = call(x, w, scale, b, threads=threads, isa=isa, ldy=n + 6)
        assert_close_linear(y, ref, x, w.float() * scale[:, None], Case("cpu", "native", isa), f"threads={threads}")


@needs_native
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("isa", ISAS)
def test_binding_empty_k_gives_bias(isa, dtype):
    # an empty sum is 0, even times an infinite scale: the output is the bias (or 0)
    x = torch.empty(3, 0, dtype=dtype)
    w = torch.empty(5, 0, dtype=torch.int8)
    scale, b = torch.full((5,), float("inf")), torch.randn(5)
    assert torch.equal(call(x, w, scale, b, isa=isa, ldx=0), b.to(dtype).expand(3, 5))
    assert (call(x, w, scale, None, isa=isa, ldx=0) == 0).all()


@needs_native
def test_binding_empty_m_n_noop():
    x, w, scale = torch.randn(0, 8), torch.zeros(4, 8, dtype=torch.int8), torch.rand(4)
    C.dequant_mm_int8(x.data_ptr(), 8, "float32", w.data_ptr(), 8, scale.data_ptr(), 0, 0, 4, 0, 4, 8, 1)
    C.dequant_mm_int8(0, 8, "float32", 0, 8, 0, 0, 0, 0, 3, 0, 8, 1)


def _args(**over):
    gen = torch.Generator().manual_seed(1)
    x, w, scale = torch.randn(2, 4, generator=gen), torch.randint(-128, 128, (3, 4), dtype=torch.int8), torch.rand(3)
    y = torch.empty(2, 3)
    a = dict(x=x.data_ptr(), ldx=4, x_kind="float32", w=w.data_ptr(), ldw=4, scale=scale.data_ptr(), bias=0,
             y=y.data_ptr(), ldy=3, M=2, N=3, K=4, num_threads=1, isa="")
    a.update(over)
    return a, (x, w, scale, y)


@needs_native
@pytest.mark.parametrize(
    "over, name",
    [
        (dict(M=-1), "M"), (dict(N=-1), "N"), (dict(K=-1), "K"), (dict(ldx=3), "ldx"), (dict(ldw=3), "ldw"),
        (dict(ldy=2), "ldy"), (dict(num_threads=0), "num_threads"), (dict(x_kind="int8"), "x_kind"),
        (dict(isa="sse9"), "isa"), (dict(y=0), "y"), (dict(scale=0), "scale"), (dict(x=0), "x"), (dict(w=0), "w"),
    ],
)
def test_binding_rejects_bad_arguments(over, name):
    a, keep = _args(**over)
    with pytest.raises(ValueError, match=name):
        C.dequant_mm_int8(**a)


# ======================================= Triton ========================================================
TRITON = cases("dequant_mm_int8", impls=("triton",))


@pytest.mark.parametrize("case", TRITON)
def test_triton_splitk_deterministic(case):
    dev = case.device
    qweight, scales = make_int8_weight(48, 200, seed=5, device=dev)
    x, b = rand_x(4, 200, seed=5, device=dev), torch.randn(48).to(dev)
    with forced(case), slimkernels.triton.use_split_k("always"):
        first = ops.dequant_mm_int8(x, qweight, scales, b)
        for _ in range(2):
            assert torch.equal(ops.dequant_mm_int8(x, qweight, scales, b), first)


@pytest.mark.parametrize("case", TRITON)
def test_triton_launcher_takes_any_strides(case):
    # The launcher reads x and qweight at any strides (dispatch hands it row-strided x as is).
    from slimkernels.triton.dequant_int8 import dequant_mm_int8

    dev = case.device
    qweight, scales = make_int8_weight(20, 90, seed=11, device=dev)
    x, b = rand_x(6, 90, torch.float16, seed=11, device=dev), torch.randn(20).to(dev)
    xs = torch.cat([x, x], dim=1)[:, 5:95]  # non-contiguous rows
    wt = qweight.t().contiguous().t()  # column-major weight
    got = dequant_mm_int8(xs, wt, scales, b)
    ref = dequant_mm_int8_reference(xs.cpu(), qweight.cpu(), scales.cpu(), b.cpu())
    assert_close_linear(got, ref, xs, qweight.cpu().float() * scales.cpu()[:, None], case)
