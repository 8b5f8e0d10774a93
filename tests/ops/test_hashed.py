"""The hashed family (hashed_linear, hashed_weight, hashed_bucket_grad): the hash itself (the C++ kernels
and Triton compute exactly the torch reference's virtual weight, every ISA), every implementation usable
here against the reference on fresh random inputs and awkward shapes, gradients against autograd through
the materialized weight, the contract (empty problems, strided x, opcheck, compile) and bad input, from
Python and from the native binding."""
from __future__ import annotations

import pytest
import torch

from slimkernels import _native, backends, ops
from slimkernels.backends.hashed import HASH_WINDOW, hash32, hash_index, hashed_linear_reference, virtual_weight
from slimkernels.testing import assert_close_linear, cases, forced, opcheck, rand_x

C = _native._C
needs_native = pytest.mark.skipif(C is None, reason="slimkernels._C is not built")
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731

LINEAR_SWEEP = cases("hashed_linear", reference=False)
LINEAR_CASES = cases("hashed_linear", per_isa=False)
WEIGHT_CASES = cases("hashed_weight", reference=False)
GRAD_CASES = cases("hashed_bucket_grad", reference=False)
SEEDS = (0, 1, 12345, 2**32 - 1)


def buckets_for(count: int, seed: int, device="cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, generator=gen).to(device)


def run_linear(case, x, buckets, seed, n, bias=None, what=""):
    k = x.shape[-1]
    with forced(case):
        got = ops.hashed_linear(x, buckets, seed, n, k, bias)
    rows = x.reshape(-1, k).cpu()
    ref = hashed_linear_reference(rows, buckets.cpu(), seed, n, k, None if bias is None else bias.cpu())
    assert got.shape == (*x.shape[:-1], n)
    assert_close_linear(got.reshape(-1, n), ref, rows, virtual_weight(buckets.cpu(), seed, n, k), case, what)


# ---- the hash ------------------------------------------------------------------------------------------
def test_hash_is_murmur_fmix32():
    """The reference's hash against a plain-Python fmix32 (the function slim/hashed.h documents)."""

    def fmix32(h):
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & 0xFFFFFFFF
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & 0xFFFFFFFF
        return h ^ (h >> 16)

    values = [0, 1, 2, 255, 65536, 2**31, 2**32 - 1, 123456789]
    for seed in SEEDS:
        got = hash32(torch.tensor(values, dtype=torch.int64), seed).tolist()
        assert got == [fmix32(v ^ seed) for v in values]


def test_hash_index_spreads_entries():
    """Buckets in range, signs balanced, every bucket used about N * K / B times (windows wrap)."""
    n, k, count = 64, 1024, 2048  # 32 entries per bucket on average: Poisson spread std / mean ~ 0.18
    bucket, sign = hash_index(n, k, 3, count)
    assert int(bucket.min()) >= 0 and int(bucket.max()) < count
    assert abs(float(sign.mean())) < 0.02
    uses = torch.bincount(bucket.reshape(-1), minlength=count).float()
    assert float(uses.min()) > 0 and float(uses.std() / uses.mean()) < 0.22
    # more buckets than one row's window: each row stays in its window of HASH_WINDOW buckets
    n, k, count = 8, 1000, 3 * HASH_WINDOW
    bucket, _ = hash_index(n, k, 5, count)
    base = torch.arange(n)[:, None] * count // n
    assert int(((bucket - base) % count).max()) < HASH_WINDOW


@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_weight_matches_reference_exactly(case):
    """hashed_weight computes the reference's hash bit for bit: odd shapes, one bucket, more buckets than
    a window, a K that is not a multiple of the SIMD width, every seed."""
    shapes = [(5, 7, 1), (37, 53, 100), (3, 600, 3 * HASH_WINDOW + 5)] if case.small else \
        [(1, 1, 1), (5, 7, 1), (37, 53, 100), (17, 301, 5000), (9, 4099, 3 * HASH_WINDOW + 5), (2, 33, 2)]
    for n, k, count in shapes:
        for seed in SEEDS:
            b = buckets_for(count, seed, case.device)
            with forced(case):
                got = ops.hashed_weight(b, seed, n, k)
            assert got.dtype == torch.float32 and got.shape == (n, k)
            assert torch.equal(got.cpu(), virtual_weight(b.cpu(), seed, n, k)), f"N={n} K={k} B={count} seed={seed}"


# ---- hashed_linear against the reference -----------------------------------------------------------------
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", LINEAR_SWEEP)
def test_linear_matches_reference(case, x_dtype):
    dev = case.device
    shapes = [(37, 45, 300), (1, 77, 20)] if case.small else [(37, 77, 300), (1, 5, 1), (45, 301, 6000), (64, 128, 1024)]
    ms = (1, 5, 17) if case.small else (1, 2, 16, 17, 70)  # fused (<= 16 rows) and materialized paths
    for j, (n, k, count) in enumerate(shapes):
        for i, m in enumerate(ms):
            seed = SEEDS[(i + j) % len(SEEDS)]
            bias = (torch.randn(n) * 2).to(dev) if (i + j) % 2 else None
            run_linear(case, rand_x(m, k, x_dtype, seed=i, device=dev), buckets_for(count, i, dev), seed, n, bias,
                       f"M={m} N={n} K={k} B={count} bias={bias is not None}")


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear_batched_strided_and_empty(case):
    dev = case.device
    b = buckets_for(50, 1, dev)
    run_linear(case, torch.randn(2, 3, 19, device=dev), b, 4, 11, None, "batched [2, 3, K]")
    wide = torch.randn(6, 40, device=dev)
    run_linear(case, wide[:, 3:22], b, 4, 11, torch.randn(11, device=dev), "row-strided x")
    run_linear(case, wide[::2, :19], b, 4, 11, None, "every other row")
    with forced(case):
        assert ops.hashed_linear(torch.randn(0, 19, device=dev), b, 4, 11, 19).shape == (0, 11)
        assert ops.hashed_linear(torch.randn(2, 0, 19, device=dev), b, 4, 11, 19).shape == (2, 0, 11)
        assert ops.hashed_linear(torch.randn(3, 19, device=dev), b, 4, 0, 19).shape == (3, 0)
        bias = torch.randn(11, device=dev)
        y = ops.hashed_linear(torch.randn(3, 0, device=dev), b, 4, 11, 0, bias)
        assert torch.equal(y, bias.expand(3, 11))
        assert ops.hashed_weight(b, 4, 0, 7).shape == (0, 7)


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_opcheck(case):
    dev = case.device
    b = buckets_for(40, 2, dev)
    x = torch.randn(3, 13, device=dev)
    opcheck(case, torch.ops.slimkernels.hashed_linear.default, (x, b, 5, 9, 13, torch.randn(9, device=dev)))
    opcheck(case, torch.ops.slimkernels.hashed_linear.default, (x, b, 5, 9, 13, None))
    opcheck(case, torch.ops.slimkernels.hashed_weight.default, (b, 5, 9, 13))


def test_compiles_without_graph_breaks():
    b = buckets_for(40, 2).requires_grad_()
    x = torch.randn(4, 13)

    def f(x, b):
        return ops.hashed_linear(x, b, 5, 9, 13, None).relu().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x, b), f(x, b), rtol=1e-5, atol=1e-5)


# ---- gradients -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", GRAD_CASES)
def test_bucket_grad_matches_reference(case):
    for n, k, count in [(37, 53, 100), (5, 3, 1), (9, 600, 3 * HASH_WINDOW + 5)]:
        g = torch.randn(n, k).to(case.device)
        with forced(case):
            got = ops.hashed_bucket_grad(g, count, 77)
        bucket, sign = hash_index(n, k, 77, count)
        ref = torch.zeros(count).index_add_(0, bucket.reshape(-1), (g.cpu() * sign).reshape(-1))
        assert torch.allclose(got.cpu(), ref, rtol=1e-5, atol=1e-5), f"N={n} K={k} B={count}"


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_gradients_match_autograd_through_the_weight(case):
    """Gradients of x, buckets and bias against plain autograd through the materialized weight (torch
    indexing of the buckets), at the fused and the materialized row counts."""
    dev = case.device
    n, k, count = 23, 31, 97
    for m, seed in ((1, 3), (6, 2**32 - 1), (20, 0)):
        x = torch.randn(m, k, device=dev, requires_grad=True)
        b = buckets_for(count, m, dev).requires_grad_()
        bias = torch.randn(n, device=dev, requires_grad=True)
        up = torch.randn(m, n, device=dev)
        with forced(case):
            (ops.hashed_linear(x, b, seed, n, k, bias) * up).sum().backward()
        got = (x.grad, b.grad, bias.grad)
        x2, b2, bias2 = (t.detach().clone().requires_grad_() for t in (x, b, bias))
        ((x2 @ virtual_weight(b2, seed, n, k).T + bias2) * up).sum().backward()
        for name, g, r in zip(("x", "buckets", "bias"), got, (x2.grad, b2.grad, bias2.grad)):
            assert torch.allclose(g, r, rtol=1e-4, atol=1e-4), f"grad of {name} at M={m}"


def test_weight_op_gradient_and_gradcheck():
    b = buckets_for(30, 1).requires_grad_()
    up = torch.randn(7, 11)
    (ops.hashed_weight(b, 8, 7, 11) * up).sum().backward()
    b2 = b.detach().clone().requires_grad_()
    (virtual_weight(b2, 8, 7, 11) * up).sum().backward()
    assert torch.allclose(b.grad, b2.grad, atol=1e-5)
    # numerical check of the linear op's bucket gradient (float32: loose tolerances)
    x = torch.randn(3, 11)
    fn = lambda bb: ops.hashed_linear(x, bb, 8, 7, 11, None)  # noqa: E731
    torch.autograd.gradcheck(fn, (buckets_for(30, 2).requires_grad_(),), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_no_gradient_asked_for_frozen_buckets():
    x = torch.randn(2, 9, requires_grad=True)
    y = ops.hashed_linear(x, buckets_for(10, 0), 1, 4, 9)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == (2, 9)


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, err, words", [
    (lambda: ops.hashed_linear(torch.randn(2, 8), torch.randn(0), 0, 4, 8), ValueError, "at least 1 bucket"),
    (lambda: ops.hashed_linear(torch.randn(2, 8), torch.randn(3, 3), 0, 4, 8), ValueError, "buckets must be 1-D"),
    (lambda: ops.hashed_linear(torch.randn(2, 8), torch.arange(5), 0, 4, 8), TypeError, "buckets must be"),
    (lambda: ops.hashed_linear(torch.arange(16).reshape(2, 8), torch.randn(5), 0, 4, 8), TypeError, "x must be"),
    (lambda: ops.hashed_linear(torch.randn(2, 8), torch.randn(5), 0, 4, 9), ValueError, "in_features=9"),
    (lambda: ops.hashed_linear(torch.randn(2, 8), torch.randn(5), -1, 4, 8), ValueError, "seed must be"),
    (lambda: ops.hashed_linear(torch.randn(2, 8), torch.randn(5), 2**32, 4, 8), ValueError, "seed must be"),
    (lambda: ops.hashed_linear(torch.randn(2, 8), torch.randn(5), 0, -4, 8), ValueError, "out_features must be"),
    (lambda: ops.hashed_linear(torch.randn(2, 8), torch.randn(5), 0, 4, 8, torch.randn(5)), ValueError, "bias"),
    (lambda: ops.hashed_linear(torch.randn(2, 8), torch.randn(5, device="meta"), 0, 4, 8), ValueError, "device"),
    (lambda: ops.hashed_weight(torch.randn(5), 0, 4, -1), ValueError, "in_features must be"),
    (lambda: ops.hashed_bucket_grad(torch.randn(4, 4), 0, 0), ValueError, "num_buckets must be"),
    (lambda: ops.hashed_bucket_grad(torch.randn(16), 4, 0), ValueError, "grad_w must be 2-D"),
], ids=["no-buckets", "2d-buckets", "int-buckets", "int-x", "k-mismatch", "neg-seed", "big-seed", "neg-n",
        "bias-shape", "device", "neg-k", "grad-buckets", "grad-1d"])
def test_bad_input(call, err, words):
    with pytest.raises(err, match=words):
        call()


@needs_native
def test_native_binding_checks():
    """The binding re-checks what the op validated (callers of _C directly get ValueErrors, never a crash)."""
    b = torch.randn(10)
    x = torch.randn(3, 8)
    y = torch.empty(3, 4)
    args = dict(x=x.data_ptr(), ldx=8, buckets=b.data_ptr(), num_buckets=10, seed=0, bias=0, y=y.data_ptr(), ldy=4,
                M=3, N=4, K=8, num_threads=1)
    C.hashed_linear(**args)
    assert torch.allclose(y, x @ virtual_weight(b, 0, 4, 8).T, atol=1e-5)
    for change, words in [({"num_buckets": 0}, "num_buckets must be"), ({"num_buckets": 2**31}, "num_buckets must be"),
                          ({"seed": -1}, "seed must be"), ({"seed": 2**32}, "seed must be"),
                          ({"ldx": 7}, "ldx must be"), ({"ldy": 3}, "ldy must be"), ({"M": -1}, "M must be"),
                          ({"K": -2}, "K must be"), ({"buckets": 0}, "buckets must not be null"),
                          ({"y": 0}, "y must not be null"), ({"num_threads": 0}, "num_threads")]:
        with pytest.raises(ValueError, match=words):
            C.hashed_linear(**{**args, **change})
    with pytest.raises(ValueError, match="isa"):
        C.hashed_linear(**args, isa="sse9")
    with pytest.raises(ValueError, match="out must not be null"):
        C.hashed_weight(b.data_ptr(), 10, 0, 0, 4, 8, 1)
    with pytest.raises(ValueError, match="num_buckets must be"):
        C.hashed_bucket_grad(x.data_ptr(), 0, 0, b.data_ptr(), 3, 8, 1)


@needs_native
def test_native_threads_agree():
    b = buckets_for(3000, 4)
    x = torch.randn(3, 700)
    g = torch.randn(300, 700)
    with backends.use_backend("native"):
        outs, grads = [], []
        for threads in (1, 2):
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                outs.append(ops.hashed_linear(x, b, 3, 300, 700))
                grads.append(ops.hashed_bucket_grad(g, 3000, 3))
            finally:
                torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])
    assert torch.allclose(grads[0], grads[1], atol=1e-4)
