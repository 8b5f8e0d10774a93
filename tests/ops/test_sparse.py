"""The sparse family (spmm_csr: unstructured CSR; spmm_bsr: block-sparse; spmm_24: 2:4 and 4:8): every
implementation usable here (reference; torch's CSR matmul; native on each CPU instruction set; Triton,
on CPU under its interpreter with small shapes) against the reference (the weight unpacked to float32,
float32 GEMM, rounded once to x.dtype), for every value dtype (float32 / float16 / bfloat16 / int8 with
per-row scales) and x dtype, within slimkernels.testing.linear_bound.

Then the contract (batched and strided x, empty problems, opcheck, autograd, bad arguments) and what
only the native binding has: the row pointers it re-checks (a hostile row_ptr is a ValueError, never a
crash), its argument validation, and threads.
"""
from __future__ import annotations

import pytest
import torch

from slimkernels import _native, backends, ops
from slimkernels.backends.sparse import spmm_24_reference, spmm_bsr_reference, spmm_csr_reference
from slimkernels.quant import sparse as layout
from slimkernels.testing import Case, assert_close_linear, cases, forced, opcheck, rand_x

C = _native._C
ISAS = list(C.supported_isas()) if C is not None else []
needs_native = pytest.mark.skipif(C is None, reason="slimkernels._C is not built")
X_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
VALUE_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731

CSR_CASES = cases("spmm_csr")
BSR_CASES = cases("spmm_bsr")
NM_CASES = cases("spmm_24")
# Numerical sweeps compare with the reference, so they leave it out; contract tests run it too.
CSR_SWEEP = cases("spmm_csr", reference=False)
BSR_SWEEP = cases("spmm_bsr", reference=False)
NM_SWEEP = cases("spmm_24", reference=False)
CSR_CONTRACT = cases("spmm_csr", per_isa=False)


def union(*params):
    """Every case of these lists once (an implementation may have some of the ops only: see has())."""
    seen = {}
    for prm in (q for ps in params for q in ps):
        seen.setdefault(prm.id, prm)
    return list(seen.values())


def has(op: str, case: Case) -> bool:
    return case.impl in backends.registered(op, case.device)


SWEEP = union(CSR_SWEEP, BSR_SWEEP, NM_SWEEP)
CONTRACT = union(CSR_CONTRACT, cases("spmm_bsr", per_isa=False), cases("spmm_24", per_isa=False))

MS = (1, 2, 16, 17, 70)  # the row path, tiles of 16, 32 and 64 rows with tails  # one row (the gather path), tiles of 16 rows and their tails
MS_SMALL = (1, 5, 17)
DENSITIES = (0.0, 0.02, 0.3, 1.0)


def ms_for(case: Case):
    return MS_SMALL if case.small else MS


# ---- weights ------------------------------------------------------------------------------------------
def sparse_weight(n: int, k: int, density: float, seed: int, *, scale: float = 1.0) -> torch.Tensor:
    """Random normal W [n, k] with about `density` of its entries kept (at least one per row when
    density > 0, so no test is all zeros by accident)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * scale
    keep = torch.rand(n, k, generator=gen) < density
    if density > 0 and k:
        keep[torch.arange(n), torch.randint(0, k, (n,), generator=gen)] = True
    return w * keep


def to(device, *ts):
    return tuple(None if t is None else t.to(device) for t in ts)


def rand_bias(n: int, seed: int, device) -> torch.Tensor:
    return (torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 2).to(device)


# ---- running an op and checking it ---------------------------------------------------------------------
def run_csr(case, x, csr, bias=None, what=""):
    with forced(case):
        got = ops.spmm_csr(x, *csr, bias)
    k, n = x.shape[-1], csr.row_ptr.numel() - 1
    rows = x.reshape(-1, k).cpu()
    row_ptr, col_idx, values, scales, b = (t.cpu() if t is not None else None for t in (*csr, bias))
    ref = spmm_csr_reference(rows, row_ptr, col_idx, values, scales, b)
    assert got.shape == (*x.shape[:-1], n)
    assert_close_linear(got.reshape(-1, n), ref, rows, layout.unpack_csr(row_ptr, col_idx, values, scales, k), case,
                        what)
    return got


def run_bsr(case, x, bsr, bias=None, what=""):
    with forced(case):
        got = ops.spmm_bsr(x, *bsr, bias)
    k, n = x.shape[-1], (bsr.row_ptr.numel() - 1) * bsr.values.shape[1]
    rows = x.reshape(-1, k).cpu()
    row_ptr, col_idx, values, scales, b = (t.cpu() if t is not None else None for t in (*bsr, bias))
    ref = spmm_bsr_reference(rows, row_ptr, col_idx, values, scales, b)
    assert got.shape == (*x.shape[:-1], n)
    assert_close_linear(got.reshape(-1, n), ref, rows, layout.unpack_bsr(row_ptr, col_idx, values, scales, k), case,
                        what)
    return got


def run_nm(case, x, nm, group, bias=None, what=""):
    with forced(case):
        got = ops.spmm_24(x, nm.values, nm.indices, nm.scales, group, bias)
    k, n = x.shape[-1], nm.values.shape[0]
    rows = x.reshape(-1, k).cpu()
    values, indices, scales, b = (t.cpu() if t is not None else None for t in (*nm, bias))
    ref = spmm_24_reference(rows, values, indices, scales, group, b)
    assert got.shape == (*x.shape[:-1], n)
    assert_close_linear(got.reshape(-1, n), ref, rows, layout.unpack_nm(values, indices, scales, group, k), case, what)
    return got


# ======================================= every implementation =======================================
@pytest.mark.parametrize("x_dtype", X_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("value_dtype", VALUE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CSR_SWEEP)
def test_csr_matches_reference(case, value_dtype, x_dtype):
    dev = case.device
    # odd N and K, one output row, a K longer than two 16-lane steps per row
    shapes = [(37, 45), (1, 77)] if case.small else [(37, 77), (1, 5), (45, 301)]
    for j, (n, k) in enumerate(shapes):
        for i, m in enumerate(ms_for(case)):
            density = DENSITIES[(i + j) % len(DENSITIES)]
            csr = to(dev, *layout.pack_csr(sparse_weight(n, k, density, seed=10 * j + i), value_dtype))
            bias = rand_bias(n, i, dev) if (i + j) % 2 else None
            run_csr(case, rand_x(m, k, x_dtype, seed=i, device=dev), layout.Csr(*csr), bias,
                    f"M={m} N={n} K={k} density={density} bias={bias is not None}")


# (bn, bk): SIMD-width strips along N or K, square blocks, odd shapes (the generic path), 1 x 1
BLOCKS = [(16, 1), (32, 1), (4, 16), (1, 16), (8, 8), (16, 4), (3, 5), (1, 1)]


@pytest.mark.parametrize("x_dtype", X_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("value_dtype", VALUE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", BSR_SWEEP)
def test_bsr_matches_reference(case, value_dtype, x_dtype):
    dev = case.device
    for j, (bn, bk) in enumerate(BLOCKS[:4] if case.small else BLOCKS):
        n, k = bn * 3, bk * (7 if case.small else 13)
        for i, m in enumerate(ms_for(case)):
            density = (0.15, 0.5, 1.0, 0.0)[(i + j) % 4]
            w = sparse_weight(n, k, density, seed=10 * j + i)
            w = w.reshape(n // bn, bn, k // bk, bk) * (torch.rand(n // bn, 1, k // bk, 1) < density)  # whole blocks
            bsr = layout.Bsr(*to(dev, *layout.pack_bsr(w.reshape(n, k), (bn, bk), value_dtype)))
            bias = rand_bias(n, i, dev) if (i + j) % 2 else None
            run_bsr(case, rand_x(m, k, x_dtype, seed=i, device=dev), bsr, bias,
                    f"M={m} block={bn}x{bk} density={density} bias={bias is not None}")


@pytest.mark.parametrize("x_dtype", X_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("value_dtype", VALUE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("group", [4, 8], ids=["2of4", "4of8"])
@pytest.mark.parametrize("case", NM_SWEEP)
def test_nm_matches_reference(case, group, value_dtype, x_dtype):
    dev = case.device
    # K / 2 kept values per row: not a multiple of the 16 / 8 values of a SIMD step (tails), and several
    # steps; groups with fewer than m / 2 nonzeros (zeros stored at unused positions)
    ks = [group * 5, group * 9] if case.small else [group * 3, group * 11, group * 37, 1024]
    for j, k in enumerate(ks):
        n = 19 if j % 2 else 1
        for i, m in enumerate(ms_for(case)):
            w = sparse_weight(n, k, 0.8 if i % 2 else 1.0, seed=10 * j + i)
            nm = layout.SemiStructured(*to(dev, *layout.pack_nm(w * layout.nm_mask(w, group), group, value_dtype)))
            bias = rand_bias(n, i, dev) if (i + j) % 2 else None
            run_nm(case, rand_x(m, k, x_dtype, seed=i, device=dev), nm, group, bias,
                   f"M={m} N={n} K={k} bias={bias is not None}")


@pytest.mark.parametrize("case", SWEEP)
def test_int32_columns_beyond_32768(case):
    # K > 32768: int32 (block) column indices, on a small N; x's last columns and column 32768 are used
    if case.small:
        pytest.skip("interpreter: small shapes only")
    dev = case.device
    n, k = 5, 40_000
    w = sparse_weight(n, k, 0.01, seed=3)
    w[:, -1] = 1.5
    w[0, 32768] = -2.0
    csr = layout.Csr(*to(dev, *layout.pack_csr(w)))
    bsr = layout.Bsr(*to(dev, *layout.pack_bsr(w, (1, 1))))
    assert csr.col_idx.dtype == bsr.col_idx.dtype == torch.int32
    for m in (1, 3, 17):
        x = rand_x(m, k, seed=m, device=dev)
        if has("spmm_csr", case):
            run_csr(case, x, csr, rand_bias(n, m, dev), f"M={m}")
        if has("spmm_bsr", case):
            run_bsr(case, x, bsr, None, f"BSR 1x1 M={m}")
        if has("spmm_24", case):
            w24 = w * layout.nm_mask(w, 8)
            run_nm(case, x, layout.SemiStructured(*to(dev, *layout.pack_nm(w24, 8))), 8, None, f"4:8 M={m}")


@pytest.mark.parametrize("case", CSR_CASES)
def test_zero_rows_and_zero_weight(case):
    # Rows without nonzeros give the bias; a weight without any nonzero gives the bias everywhere.
    dev = case.device
    n, k = 21, 64
    w = sparse_weight(n, k, 0.3, seed=4)
    w[::3] = 0
    bias = rand_bias(n, 5, dev)
    for m in (1, 6, 20):
        x = rand_x(m, k, seed=m, device=dev)
        y = run_csr(case, x, layout.Csr(*to(dev, *layout.pack_csr(w))), bias, f"zero rows M={m}")
        assert torch.equal(y[:, ::3].cpu(), bias[::3].cpu().expand(m, -1))
        for value_dtype in (torch.float32, torch.int8):
            empty = layout.Csr(*to(dev, *layout.pack_csr(torch.zeros(n, k), value_dtype)))
            assert empty.col_idx.numel() == 0
            with forced(case):
                assert torch.equal(ops.spmm_csr(x, *empty, bias).cpu(), bias.cpu().expand(m, n))
                assert torch.equal(ops.spmm_csr(x, *empty).cpu(), torch.zeros(m, n))


@pytest.mark.parametrize("case", CONTRACT)
def test_zero_blocks_and_groups(case):
    dev = case.device
    n, k = 32, 64
    x = rand_x(5, k, seed=1, device=dev)
    bias = rand_bias(n, 2, dev)
    zero = torch.zeros(n, k)
    with forced(case):
        if has("spmm_bsr", case):
            got = ops.spmm_bsr(x, *to(dev, *layout.pack_bsr(zero, (16, 1))), bias)
            assert torch.equal(got.cpu(), bias.cpu().expand(5, n))
        if has("spmm_24", case):
            got = ops.spmm_24(x, *to(dev, *layout.pack_nm(zero, 4)), 4, bias)
            assert torch.equal(got.cpu(), bias.cpu().expand(5, n))


@pytest.mark.parametrize("value_dtype", VALUE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", SWEEP)
def test_large_magnitudes(case, value_dtype):
    # x up to 1e4 and weight rows over five decades (int8: every value +-127, scales over five decades)
    dev = case.device
    m, n, k = 5, 16, 96
    gen = torch.Generator().manual_seed(6)
    mags = 10.0 ** (torch.rand(n, 1, generator=gen) * 5 - 4)
    w = sparse_weight(n, k, 0.5, seed=6) * mags
    if value_dtype == torch.int8:
        w = torch.sign(w) * mags
    x = rand_x(m, k, seed=7, device=dev, scale=1.0 if value_dtype == torch.float16 else 1e4)
    bias = rand_bias(n, 1, dev)
    if has("spmm_csr", case):
        run_csr(case, x, layout.Csr(*to(dev, *layout.pack_csr(w, value_dtype))), bias, "CSR")
    if has("spmm_bsr", case):
        run_bsr(case, x, layout.Bsr(*to(dev, *layout.pack_bsr(w, (16, 1), value_dtype))), bias, "BSR 16x1")
    if has("spmm_24", case):
        w24 = w * layout.nm_mask(w, 4)
        run_nm(case, x, layout.SemiStructured(*to(dev, *layout.pack_nm(w24, 4, value_dtype))), 4, None, "2:4")


@pytest.mark.parametrize("x_dtype", X_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", union(CSR_CASES, NM_CASES))
def test_strided_and_batched_x(case, x_dtype):
    # Row-strided x is read in place (strided_rows implementations), anything else is copied once by
    # dispatch; batched x is flattened by the op.
    dev = case.device
    m, n, k = 6, 37, 160
    csr = layout.Csr(*to(dev, *layout.pack_csr(sparse_weight(n, k, 0.2, seed=3))))
    nm = layout.SemiStructured(*to(dev, *layout.pack_nm(layout.nm_mask(torch.ones(n, k), 4) * torch.randn(n, k), 4)))
    wide = rand_x(2 * m, k + 19, x_dtype, seed=5, device=dev)
    xs = {
        "column slice": wide[:m, 7:7 + k],
        "every other row": wide[::2, 3:3 + k],
        "column-major": wide[:m, :k].t().contiguous().t(),
        "batched slice": wide.reshape(2, m, k + 19)[..., 5:5 + k],
        "single row": wide.reshape(-1)[:k].as_strided((1, k), (1, 1)),
        "leading dims": wide[:, :k].reshape(2, 3, 2, k),
    }
    bias = rand_bias(n, 1, dev)
    for name, x in xs.items():
        if has("spmm_csr", case):
            run_csr(case, x, csr, bias, name)
        if has("spmm_24", case):
            run_nm(case, x, nm, 4, None, name)


@pytest.mark.parametrize("case", CSR_CONTRACT)
def test_noncontiguous_weights(case):
    # Strided values and bias: dispatch makes them contiguous.
    dev = case.device
    n, k = 24, 128
    csr = layout.pack_csr(sparse_weight(n, k, 0.3, seed=2))
    values = torch.stack([csr.values, csr.values], 1).reshape(-1)[::2]
    bias = torch.randn(2 * n)[::2]
    run_csr(case, rand_x(3, k, seed=1, device=dev), layout.Csr(*to(dev, csr.row_ptr, csr.col_idx, values, None)),
            bias.to(dev))


@pytest.mark.parametrize("m,n,k", [(0, 8, 64), (4, 0, 64), (4, 8, 0), (0, 0, 0)])
@pytest.mark.parametrize("case", CSR_CONTRACT)
def test_empty_problems(case, m, n, k):
    # M, N or K = 0 through the op: an empty result, or (K = 0, an empty sum) the bias or zeros.
    dev = case.device
    b = rand_bias(n, 0, dev)
    csr = to(dev, torch.zeros(n + 1, dtype=torch.int32), torch.zeros(0, dtype=torch.int16), torch.zeros(0))
    for dtype in X_DTYPES:
        for shape in ((m, k), (1, m, k), (m, 1, k)):
            x = torch.randn(shape).to(dtype).to(dev)
            want = b.to(dtype).expand(m, n).reshape(*shape[:-1], n)
            with forced(case):
                for bias in (b, None):
                    got = ops.spmm_csr(x, *csr, None, bias)
                    assert got.dtype == dtype and got.device.type == dev
                    assert torch.equal(got, want if bias is not None else torch.zeros_like(want))


@pytest.mark.parametrize("case", CONTRACT)
def test_opcheck(case):
    dev = case.device
    x = rand_x(3, 64, seed=1, device=dev)
    w = sparse_weight(16, 64, 0.3, seed=2)
    if has("spmm_csr", case):
        csr = to(dev, *layout.pack_csr(w, torch.int8))
        opcheck(case, torch.ops.slimkernels.spmm_csr.default, (x, *csr, rand_bias(16, 1, dev)))
        opcheck(case, torch.ops.slimkernels.spmm_csr.default, (x, *to(dev, *layout.pack_csr(w)), None))
    if has("spmm_bsr", case):
        bsr = to(dev, *layout.pack_bsr(w, (4, 16)))
        opcheck(case, torch.ops.slimkernels.spmm_bsr.default, (x, *bsr, None))
    if has("spmm_24", case):
        nm = to(dev, *layout.pack_nm(w * layout.nm_mask(w, 8), 8, torch.float16))
        opcheck(case, torch.ops.slimkernels.spmm_24.default, (x, *nm, 8, rand_bias(16, 2, dev)))


@pytest.mark.parametrize("case", CONTRACT)
def test_autograd(case):
    # The weights are frozen: x and bias get gradients (x: grad @ W, bias: grad summed over rows).
    dev = case.device
    w = sparse_weight(12, 64, 0.4, seed=6)
    w24 = w * layout.nm_mask(w, 4)
    csr, bsr, nm = (to(dev, *t) for t in (layout.pack_csr(w), layout.pack_bsr(w, (4, 8)), layout.pack_nm(w24, 4)))
    fns = {"csr": (lambda x, b: ops.spmm_csr(x, *csr, b), w), "bsr": (lambda x, b: ops.spmm_bsr(x, *bsr, b), w),
           "2:4": (lambda x, b: ops.spmm_24(x, *nm, 4, b), w24)}
    op_of = {"csr": "spmm_csr", "bsr": "spmm_bsr", "2:4": "spmm_24"}
    fns = {name: f for name, f in fns.items() if has(op_of[name], case)}
    for name, (fn, wf) in fns.items():
        x = rand_x(6, 64, seed=7, device=dev).reshape(2, 3, 64).requires_grad_()
        bias = torch.randn(12, device=dev, requires_grad=True)
        grad = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(8)).to(dev)
        with forced(case):
            fn(x, bias).backward(grad)
        torch.testing.assert_close(x.grad.cpu(), grad.cpu() @ wf, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(bias.grad.cpu(), grad.cpu().sum((0, 1)), rtol=1e-5, atol=1e-5, msg=name)


def test_frozen_values_say_so():
    """Asking for a gradient of the stored values is an error that says the sparse weight is frozen."""
    c = layout.pack_csr(sparse_weight(8, 32, 0.5, seed=3))
    values = c.values.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="spmm_csr: no gradient for values: the sparse weight is frozen"):
        ops.spmm_csr(torch.randn(2, 32), c.row_ptr, c.col_idx, values, None).sum().backward()


def test_ops_reject_bad_arguments():
    x = torch.randn(3, 64)
    w = sparse_weight(8, 64, 0.3, seed=1)
    c, c8 = layout.pack_csr(w), layout.pack_csr(w, torch.int8)
    with pytest.raises(TypeError, match="x must be"):
        ops.spmm_csr(x.double(), *c)
    with pytest.raises(TypeError, match="row_ptr must be torch.int32"):
        ops.spmm_csr(x, c.row_ptr.long(), c.col_idx, c.values, None)
    with pytest.raises(TypeError, match="col_idx must be"):
        ops.spmm_csr(x, c.row_ptr, c.col_idx.float(), c.values, None)
    with pytest.raises(TypeError, match="values must be"):
        ops.spmm_csr(x, c.row_ptr, c.col_idx, c.values.double(), None)
    with pytest.raises(ValueError, match="int8 values need scales"):
        ops.spmm_csr(x, c8.row_ptr, c8.col_idx, c8.values, None)
    with pytest.raises(ValueError, match="scales go with int8 values only"):
        ops.spmm_csr(x, c.row_ptr, c.col_idx, c.values, torch.ones(8))
    with pytest.raises(TypeError, match="scales must be torch.float32"):
        ops.spmm_csr(x, c8.row_ptr, c8.col_idx, c8.values, c8.scales.double())
    with pytest.raises(ValueError, match="scales"):
        ops.spmm_csr(x, c8.row_ptr, c8.col_idx, c8.values, c8.scales[:-1])
    with pytest.raises(ValueError, match="values has shape"):
        ops.spmm_csr(x, c.row_ptr, c.col_idx, c.values[:-1], None)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.spmm_csr(x, *c, torch.randn(7))
    with pytest.raises(ValueError, match="same device"):
        ops.spmm_csr(x.to("meta"), *c)
    nm = layout.pack_nm(w * layout.nm_mask(w, 4), 4)
    with pytest.raises(ValueError, match="not a multiple of the group size"):
        ops.spmm_24(torch.randn(3, 66), *nm)
    with pytest.raises(ValueError, match="indices must have shape"):
        ops.spmm_24(x, nm.values, nm.indices[:, :-1], None)
    with pytest.raises(ValueError, match="group must be 4"):
        ops.spmm_24(x, *nm, group=3)
    with pytest.raises(ValueError, match="values has shape"):
        ops.spmm_24(x, nm.values[:, :-2], nm.indices, None)
    bsr = layout.pack_bsr(w, (2, 4))
    with pytest.raises(ValueError, match="block width"):
        ops.spmm_bsr(torch.randn(3, 66), *bsr)
    with pytest.raises(ValueError, match="values must be 3-D"):
        ops.spmm_bsr(x, bsr.row_ptr, bsr.col_idx, bsr.values.reshape(-1), None)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="same device"):
            ops.spmm_csr(x.cuda(), *c)


# ======================================= the native CPU binding =======================================
KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int8: "int8",
        torch.int16: "int16", torch.int32: "int32"}


def p(t):
    return 0 if t is None else t.data_ptr()


def csr_call(x, csr, n, *, bias=None, threads=1, isa="", ldy=None, row_ptr=None, nnz=None):
    """slimkernels._C.spmm_csr on x [M, K]; y [M, N] (pads of a wider ldy must stay NaN)."""
    m, k = x.shape
    ldy = n if ldy is None else ldy
    buf = torch.full((m * ldy + 1,), float("nan")).to(x.dtype)
    row_ptr = csr.row_ptr if row_ptr is None else row_ptr
    C.spmm_csr(p(x), x.stride(0) if m > 1 else k, KIND[x.dtype], p(row_ptr), p(csr.col_idx), KIND[csr.col_idx.dtype],
               csr.col_idx.numel() if nnz is None else nnz, p(csr.values), KIND[csr.values.dtype], p(csr.scales),
               p(bias), p(buf), ldy, m, n, k, threads, isa)
    y = buf[: m * ldy].view(m, ldy)
    if ldy > n:
        assert torch.isnan(y[:, n:].float()).all(), "wrote outside the output rows"
    return y[:, :n]


@needs_native
@pytest.mark.parametrize("x_dtype", X_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("isa", ISAS)
def test_binding_strided_x_and_y(isa, x_dtype):
    m, n, k = 6, 37, 160
    x = torch.randn(m, k + 19).to(x_dtype)[:, 7:7 + k]
    csr = layout.pack_csr(sparse_weight(n, k, 0.2, seed=3), torch.int8)
    bias = torch.randn(n)
    for rows in (x, x[:1]):
        y = csr_call(rows, csr, n, bias=bias, isa=isa, ldy=n + 5, threads=2)
        assert_close_linear(y, spmm_csr_reference(rows, *csr, bias), rows, layout.unpack_csr(*csr, k),
                            Case("cpu", "native", isa))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_binding_threads(isa):
    # enough work to go parallel, on 1 and 2 threads; rows of very different lengths balance by nnz
    n, k = 301, 1024
    w = sparse_weight(n, k, 0.05, seed=1)
    w[:40] = torch.randn(40, k)  # dense rows first
    csr = layout.pack_csr(w)
    nm = layout.pack_nm(w * layout.nm_mask(w, 4), 4)
    for m in (1, 3, 40):
        x = rand_x(m, k, seed=m)
        ref = spmm_csr_reference(x, *csr, None)
        ref_nm = spmm_24_reference(x, *nm, 4, None)
        for threads in (1, 2):
            assert_close_linear(csr_call(x, csr, n, threads=threads, isa=isa), ref, x, w, Case("cpu", "native", isa),
                                f"M={m} threads={threads}")
            y = torch.empty(m, n)
            C.spmm_nm(p(x), k, "float32", p(nm.values), "float32", p(nm.indices), 4, 0, 0, p(y), n, m, n, k, threads, isa)
            assert_close_linear(y, ref_nm, x, layout.unpack_nm(*nm, 4, k), Case("cpu", "native", isa), f"2:4 M={m}")


HOSTILE_ROW_PTR = {
    "non-monotone": lambda rp: rp.clone().index_put_((torch.tensor([3]),), rp[5] + 1),
    "wrong end": lambda rp: torch.cat([rp[:-1], rp[-1:] + 1]),
    "short end": lambda rp: torch.cat([rp[:-1], rp[-1:] - 1]),
    "wrong start": lambda rp: torch.cat([torch.tensor([2], dtype=torch.int32), rp[1:]]),
    "negative": lambda rp: torch.cat([rp[:1], torch.full((rp.numel() - 2,), -7, dtype=torch.int32), rp[-1:]]),
    "huge": lambda rp: torch.cat([rp[:1], torch.full((rp.numel() - 2,), 2**31 - 1, dtype=torch.int32), rp[-1:]]),
}


@needs_native
@pytest.mark.parametrize("kind", list(HOSTILE_ROW_PTR))
@pytest.mark.parametrize("isa", ISAS)
def test_binding_rejects_hostile_row_ptr(isa, kind):
    n, k = 9, 64
    csr = layout.pack_csr(sparse_weight(n, k, 0.3, seed=1))
    bad = HOSTILE_ROW_PTR[kind](csr.row_ptr).to(torch.int32).contiguous()
    for m in (1, 20):
        with pytest.raises(ValueError, match="row_ptr"):
            csr_call(rand_x(m, k), csr, n, row_ptr=bad, isa=isa)
    # BSR row pointers are checked the same way
    nb, k = 10, 64
    bsr = layout.pack_bsr(sparse_weight(4 * nb, k, 0.3, seed=2), (4, 8))
    rp = HOSTILE_ROW_PTR[kind](bsr.row_ptr).to(torch.int32).contiguous()
    x, y = rand_x(2, k), torch.empty(2, 4 * nb)
    with pytest.raises(ValueError, match="row_ptr"):
        C.spmm_bsr(p(x), k, "float32", p(rp), p(bsr.col_idx), "int16", bsr.col_idx.numel(), p(bsr.values), "float32",
                   4, 8, 0, 0, p(y), 4 * nb, 2, 4 * nb, k, 1, isa)


def _csr_args(**over):
    x = torch.randn(2, 64)
    csr = layout.pack_csr(sparse_weight(3, 64, 0.3, seed=1))
    y = torch.empty(2, 3)
    a = dict(x=p(x), ldx=64, x_kind="float32", row_ptr=p(csr.row_ptr), col_idx=p(csr.col_idx), index_kind="int16",
             nnz=csr.col_idx.numel(), values=p(csr.values), value_kind="float32", scales=0, bias=0, y=p(y), ldy=3, M=2,
             N=3, K=64, num_threads=1, isa="")
    a.update(over)
    return a, (x, csr, y)


@needs_native
@pytest.mark.parametrize(
    "over, name",
    [
        (dict(M=-1), "M"), (dict(N=-1), "N"), (dict(K=-1), "K"), (dict(ldx=63), "ldx"), (dict(ldy=2), "ldy"),
        (dict(num_threads=0), "num_threads"), (dict(x_kind="int8"), "x_kind"), (dict(isa="sse9"), "isa"),
        (dict(index_kind="int64"), "index_kind"), (dict(value_kind="float64"), "value_kind"),
        (dict(value_kind="int8"), "scales"), (dict(scales=1), "scales"), (dict(nnz=-1), "nnz"),
        (dict(row_ptr=0), "row_ptr"), (dict(y=0), "y"), (dict(x=0), "x"), (dict(col_idx=0), "col_idx"),
        (dict(values=0), "values"),
    ],
)
def test_binding_rejects_bad_arguments(over, name):
    a, keep = _csr_args(**over)
    with pytest.raises(ValueError, match=name):
        C.spmm_csr(**a)


@needs_native
def test_binding_rejects_bad_blocks_and_groups():
    x, y = torch.randn(2, 64), torch.empty(2, 12)
    bsr = layout.pack_bsr(sparse_weight(12, 64, 0.3, seed=2), (4, 8))

    def bsr_call(bn, bk, n=12):
        C.spmm_bsr(p(x), 64, "float32", p(bsr.row_ptr), p(bsr.col_idx), "int16", bsr.col_idx.numel(), p(bsr.values),
                   "float32", bn, bk, 0, 0, p(y), 12, 2, n, 64, 1, "")

    for bn, bk, name in ((0, 8, "block"), (4, 0, "block"), (5, 8, "bn"), (4, 7, "bk")):
        with pytest.raises(ValueError, match=name):
            bsr_call(bn, bk)
    nm = layout.pack_nm(torch.randn(12, 64) * layout.nm_mask(torch.ones(12, 64), 4), 4)

    def nm_call(group, k=64, positions=None):
        C.spmm_nm(p(x), 64, "float32", p(nm.values), "float32", p(nm.indices) if positions is None else positions,
                  group, 0, 0, p(y), 12, 2, 12, k, 1, "")

    for kwargs, name in ((dict(group=3), "group"), (dict(group=8, k=60), "K"), (dict(group=4, positions=0), "positions")):
        with pytest.raises(ValueError, match=name):
            nm_call(**kwargs)


@needs_native
def test_binding_empty_and_zero_k():
    # M or N = 0: nothing to do (null pointers are fine); K = 0: y = bias
    rp1, rp6 = torch.zeros(1, dtype=torch.int32), torch.zeros(6, dtype=torch.int32)
    C.spmm_csr(0, 0, "float32", p(rp1), 0, "int16", 0, 0, "float32", 0, 0, 0, 0, 0, 0, 0, 1)
    b = torch.randn(5)
    y = torch.empty(3, 5, dtype=torch.bfloat16)
    C.spmm_csr(0, 0, "bfloat16", p(rp6), 0, "int16", 0, 0, "float32", 0, p(b), p(y), 5, 3, 5, 0, 1)
    assert torch.equal(y, b.to(torch.bfloat16).expand(3, 5))
