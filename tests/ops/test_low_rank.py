"""The low_rank family (low_rank_linear: (x V^T) U^T + bias): every implementation usable here (native
once per ISA, Triton under its interpreter) against the reference on fresh random inputs and awkward
shapes (M = 1, odd N and K, r = 1, r not a multiple of the SIMD width, more rows than one block of the
native kernel, 3-D and row-strided x, empty problems, bias or none), gradients against autograd through
the two matmuls, the contract (opcheck, compile) and bad input, from Python and from the native binding."""
from __future__ import annotations

import pytest
import torch

from slimkernels import _native, backends, ops
from slimkernels.backends.low_rank import FUSED_MAX_M, FUSED_MIN_M, fused_cpu, low_rank_linear_reference
from slimkernels.testing import assert_close_linear, cases, forced, opcheck, rand_x

C = _native._C
needs_native = pytest.mark.skipif(C is None, reason="slimkernels._C is not built")
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731

SWEEP = cases("low_rank_linear", reference=False)
CASES = cases("low_rank_linear", per_isa=False)


def factors(n: int, k: int, r: int, seed: int = 0, device="cpu", dtype=torch.float32, bias: bool = True):
    """v [r, K], u [N, r] (scaled so that y stays O(1)) and a bias [N] or None, fresh from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(r, k, generator=gen) / k**0.5
    u = torch.randn(n, r, generator=gen) / r**0.5
    b = torch.randn(n, generator=gen) if bias else None
    to = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return to(v), to(u), to(b)


def run(case, x, v, u, bias=None, what=""):
    k, n = x.shape[-1], u.shape[0]
    with forced(case):
        got = ops.low_rank_linear(x, v, u, bias)
    assert got.shape == (*x.shape[:-1], n), what
    rows = x.reshape(-1, k).cpu()
    ref = low_rank_linear_reference(rows, v.cpu(), u.cpu(), None if bias is None else bias.cpu())
    # The bound's |x| @ |W|.T with |W| = |U| |V|: the error of both products, summed in any order.
    assert_close_linear(got.reshape(-1, n), ref, rows, u.cpu().float().abs() @ v.cpu().float().abs(), case, what)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", SWEEP)
def test_matches_reference(case, x_dtype):
    dev = case.device
    # (N, K, r): odd sizes, r = 1, r below / not a multiple of / above the SIMD widths (8, 16)
    shapes = [(37, 45, 5), (9, 70, 1), (33, 20, 17)] if case.small else \
        [(37, 45, 5), (9, 70, 1), (301, 257, 33), (64, 128, 16), (5, 3, 2), (130, 77, 77)]
    # the dispatch's fallbacks on both sides, tails of the register tiles, one block of rows and more
    ms = (1, 5) if case.small else (1, FUSED_MIN_M, 7, FUSED_MAX_M, FUSED_MAX_M + 3)
    for j, (n, k, r) in enumerate(shapes):
        for i, m in enumerate(ms):
            v, u, b = factors(n, k, r, seed=10 * j + i, device=dev, bias=(i + j) % 2 == 0)
            run(case, rand_x(m, k, x_dtype, seed=i, device=dev), v, u, b, f"M={m} N={n} K={k} r={r} bias={b is not None}")


@pytest.mark.parametrize("factor_dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", CASES)
def test_half_precision_factors(case, factor_dtype):
    v, u, b = factors(23, 31, 6, seed=3, device=case.device, dtype=factor_dtype)
    for m in (1, 4):
        run(case, rand_x(m, 31, seed=m, device=case.device), v, u, b, f"M={m} factors {factor_dtype}")


@pytest.mark.parametrize("case", CASES)
def test_batched_strided_and_empty(case):
    dev = case.device
    v, u, b = factors(11, 19, 4, seed=1, device=dev)
    run(case, torch.randn(2, 3, 19, device=dev), v, u, b, "batched [2, 3, K]")
    wide = torch.randn(12, 40, device=dev)  # 12 and 6 rows: the native kernel's range
    run(case, wide[:, 3:22], v, u, None, "row-strided x")
    run(case, wide[::2, :19], v, u, b, "every other row")
    with forced(case):
        assert ops.low_rank_linear(torch.randn(0, 19, device=dev), v, u, b).shape == (0, 11)
        assert ops.low_rank_linear(torch.randn(2, 0, 19, device=dev), v, u).shape == (2, 0, 11)
        y = ops.low_rank_linear(torch.randn(3, 0, device=dev), v[:, :0], u, b)  # K = 0: the bias
        assert torch.equal(y, b.expand(3, 11))
        assert ops.low_rank_linear(torch.randn(3, 19, device=dev), v, u[:0]).shape == (3, 0)


@pytest.mark.parametrize("case", CASES)
def test_opcheck(case):
    dev = case.device
    v, u, b = factors(9, 13, 3, seed=2, device=dev)
    x = torch.randn(3, 13, device=dev)
    opcheck(case, torch.ops.slimkernels.low_rank_linear.default, (x, v, u, b))
    opcheck(case, torch.ops.slimkernels.low_rank_linear.default, (x, v, u, None))


def test_compiles_without_graph_breaks():
    v, u, b = factors(9, 13, 3, seed=4)
    v.requires_grad_()
    x = torch.randn(4, 13)

    def f(x, v):
        return ops.low_rank_linear(x, v, u, b).relu().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x, v), f(x, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_autograd_through_the_matmuls(case):
    dev = case.device
    n, k, r = 23, 31, 7
    for m in (1, 6):
        v, u, b = (t.requires_grad_() for t in factors(n, k, r, seed=m, device=dev))
        x = torch.randn(2, m, k, device=dev, requires_grad=True)
        up = torch.randn(2, m, n, device=dev)
        with forced(case):
            (ops.low_rank_linear(x, v, u, b) * up).sum().backward()
        got = (x.grad, v.grad, u.grad, b.grad)
        x2, v2, u2, b2 = (t.detach().clone().requires_grad_() for t in (x, v, u, b))
        (((x2 @ v2.T) @ u2.T + b2) * up).sum().backward()
        for name, g, ref in zip(("x", "v", "u", "bias"), got, (x2.grad, v2.grad, u2.grad, b2.grad)):
            assert g.shape == ref.shape and torch.allclose(g, ref, rtol=1e-4, atol=1e-4), f"grad of {name} at M={m}"


@pytest.mark.filterwarnings("ignore:Input #.* requires gradient and is not a double")
def test_gradcheck():
    """Numerical check of every gradient (float32: loose tolerances)."""
    v, u, b = factors(5, 7, 3, seed=5)
    x = torch.randn(3, 7)
    torch.autograd.gradcheck(ops.low_rank_linear, tuple(t.requires_grad_() for t in (x, v, u, b)),
                             eps=1e-2, atol=2e-2, rtol=2e-2)


# ---- bad input -------------------------------------------------------------------------------------------
V, U = torch.randn(4, 8), torch.randn(5, 4)


@pytest.mark.parametrize("call, err, words", [
    (lambda: ops.low_rank_linear(torch.arange(16).reshape(2, 8), V, U), TypeError, "x must be"),
    (lambda: ops.low_rank_linear(torch.randn(2, 8), V.int(), U), TypeError, "v must be"),
    (lambda: ops.low_rank_linear(torch.randn(2, 8), V, U.double()), TypeError, "u must be"),
    (lambda: ops.low_rank_linear(torch.randn(2, 8), V.reshape(-1), U), ValueError, "v must be 2-D"),
    (lambda: ops.low_rank_linear(torch.randn(2, 8), V, U.reshape(-1)), ValueError, "u must be 2-D"),
    (lambda: ops.low_rank_linear(torch.randn(2, 8), V[:0], U[:, :0]), ValueError, "rank r = v.shape"),
    (lambda: ops.low_rank_linear(torch.randn(2, 9), V, U), ValueError, "x has 9 features"),
    (lambda: ops.low_rank_linear(torch.randn(2, 8), V, U[:, :3]), ValueError, "u must be"),
    (lambda: ops.low_rank_linear(torch.randn(2, 8), V, U, torch.randn(4)), ValueError, "bias"),
    (lambda: ops.low_rank_linear(torch.randn(2, 8), V, U, torch.randn(5).int()), TypeError, "bias"),
    (lambda: ops.low_rank_linear(torch.randn(2, 8), V.to("meta"), U), ValueError, "device"),
    (lambda: ops.low_rank_linear(torch.tensor(1.0), V, U), ValueError, "at least 1 dimension"),
], ids=["int-x", "int-v", "double-u", "1d-v", "1d-u", "rank-0", "k-mismatch", "r-mismatch", "bias-shape",
        "bias-dtype", "device", "scalar-x"])
def test_bad_input(call, err, words):
    with pytest.raises(err, match=words):
        call()


NATIVE_ISAS = [pytest.param(isa, id=isa) for isa in (C.supported_isas() if C is not None else [])]


@needs_native
@pytest.mark.parametrize("isa", NATIVE_ISAS)
def test_native_kernel_at_every_m(isa):
    """The kernel itself at the M the dispatch gives to the two matmuls (1..FUSED_MIN_M - 1) and beyond one
    block of rows (two blocks and a tail), every ISA, K and r around the SIMD widths."""
    case = next(p.values[0] for p in cases("low_rank_linear") if p.values[0].cpu_isa == isa)
    for j, (n, k, r) in enumerate([(37, 45, 5), (9, 70, 1), (130, 77, 17), (20, 16, 16)]):
        for m in (1, 2, 3, 2 * 32 + 5):  # the kernel's blocks are 32 rows (kLowRankRows)
            x = rand_x(m, k, seed=m + j)
            v, u, b = factors(n, k, r, seed=j, bias=m % 2 == 1)
            with backends.use_cpu_isa(isa):
                got = fused_cpu(x, v, u, b)
            ref = low_rank_linear_reference(x, v, u, b)
            assert_close_linear(got, ref, x, u.abs() @ v.abs(), case, f"{isa} M={m} N={n} K={k} r={r}")


@needs_native
def test_native_binding_checks():
    """The binding re-checks what the op validated (callers of _C directly get ValueErrors, never a crash)."""
    x, y, b = torch.randn(3, 8), torch.empty(3, 5), torch.randn(5)
    args = dict(x=x.data_ptr(), ldx=8, v=V.data_ptr(), u=U.data_ptr(), bias=b.data_ptr(), y=y.data_ptr(), ldy=5, M=3,
                N=5, K=8, r=4, num_threads=1)
    C.low_rank_linear(**args)
    assert torch.allclose(y, (x @ V.T) @ U.T + b, atol=1e-5)
    for change, words in [({"r": 0}, "r \\(the rank\\) must be"), ({"ldx": 7}, "ldx must be"),
                          ({"ldy": 4}, "ldy must be"), ({"M": -1}, "M must be"), ({"N": -1}, "N must be"),
                          ({"K": -2}, "K must be"), ({"v": 0}, "v must not be null"), ({"u": 0}, "u must not be null"),
                          ({"x": 0}, "x must not be null"), ({"y": 0}, "y must not be null"),
                          ({"num_threads": 0}, "num_threads")]:
        with pytest.raises(ValueError, match=words):
            C.low_rank_linear(**{**args, **change})
    with pytest.raises(ValueError, match="isa"):
        C.low_rank_linear(**args, isa="sse9")


@needs_native
def test_native_threads_agree():
    """The split over threads does not change a bit (every row of the output is summed by one thread)."""
    v, u, b = factors(300, 700, 45, seed=6)
    x = torch.randn(FUSED_MAX_M, 700)
    outs = []
    with backends.use_backend("native"):
        before = torch.get_num_threads()
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outs.append(ops.low_rank_linear(x, v, u, b))
        finally:
            torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_low_rank_linear_module_runs_the_op_for_float32_factors():
    """LowRankLinear's forward is the op with float32 factors (and matches its two layers); bfloat16 factors
    keep the two layers in their own dtype."""
    from torch import nn
    from torch.fx.experimental.proxy_tensor import make_fx

    from slimkernels import LowRankLinear

    torch.manual_seed(0)
    layer = LowRankLinear.from_float(nn.Linear(45, 37), 6)
    x = torch.randn(2, 5, 45)

    def ops_in(module):
        return {str(n.target) for n in make_fx(module)(x.to(module.up.weight.dtype)).graph.nodes}

    assert any("low_rank_linear" in t for t in ops_in(layer))
    torch.testing.assert_close(layer(x), layer.up(layer.down(x)), rtol=1e-5, atol=1e-5)
    half = LowRankLinear.from_float(nn.Linear(45, 37).to(torch.bfloat16), 6)
    assert not any("low_rank_linear" in t for t in ops_in(half))
