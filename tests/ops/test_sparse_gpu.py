"""What only the GPU kernels of the sparse family have (the generic per-implementation sweep is
tests/ops/test_sparse.py):

* Triton (slimkernels/triton/sparse.py), on CPU under its interpreter: spmm_csr (rows longer than
  one nonzero chunk, empty rows, int16 and int32 columns); spmm_bsr on both of its paths
  (tl.dot for blocks >= 16 on both sides, padded when a side is not a power of two; FMAs for narrow
  blocks), empty block rows, row-strided x; spmm_nm for 2:4 and 4:8 through both split-K policies, K
  not a multiple of the K tile; every value dtype (int8 with scales) with every x dtype, bias or not.
* The CUDA 2:4 kernel (csrc/cuda/sparse.cu): `emulate_spmm_24_cuda` replays its index math on CPU
  (which lane loads which kept values, x pairs and metadata bytes, padding of tails, the sparsity
  selector per k16 step, the warps' K split) and applies mma.sp's fragment semantics as the PTX ISA
  states them; it must reproduce the reference. On a GPU (marker `gpu`) the kernel itself runs, with
  its binding's checks and the Python routing of 4:8 and float32 x.

Tolerance: slimkernels.testing.assert_close_linear (Triton: the weight cast to x's dtype, float32
accumulation in another order, two output roundings; CUDA: relative to the largest |reference|).
"""
from __future__ import annotations

import pytest
import torch

import slimkernels
import slimkernels.triton
from slimkernels import _native, ops
from slimkernels.backends.sparse import spmm_24_reference, spmm_bsr_reference, spmm_csr_reference
from slimkernels.quant import sparse as layout
from slimkernels.testing import Case, assert_close_linear

triton_ok = slimkernels.triton.available()
needs_triton = pytest.mark.skipif(not triton_ok,
                                  reason=f"Triton unavailable: {slimkernels.triton.unavailable_reason()}")
HAS_CUDA = torch.cuda.is_available()
needs_cuda_ext = pytest.mark.skipif(not HAS_CUDA or _native._C_cuda is None,
                                    reason="needs a CUDA device and the _C_cuda extension")

VALUE_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]
X_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731
TRITON_CPU = Case("cpu", "triton")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def sparse_weight(n, k, density=0.5, seed=0):
    """Random float32 [n, k] with about `density` nonzeros, a few outliers, no exact zeros elsewhere."""
    g = _gen(seed)
    w = torch.randn(n, k, generator=g)
    w[torch.rand(n, k, generator=g) > density] = 0
    w[0, 0] = 9.0
    return w


def block_sparse_weight(n, k, block, keep=0.5, seed=0):
    """[n, k] whose bn x bk blocks are kept with probability `keep` (dense inside); block row 0 empty."""
    bn, bk = block
    g = _gen(seed)
    keep_blocks = torch.rand(n // bn, k // bk, generator=g) < keep
    keep_blocks[0] = False  # an empty block row: its outputs are the bias alone
    mask = keep_blocks.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    return torch.randn(n, k, generator=g) * mask


def nm_weight(n, k, m, seed=0):
    w = torch.randn(n, k, generator=_gen(seed))
    w = w * layout.nm_mask(w, m)
    w[n // 2, : m] = 0  # a group with fewer than m/2 nonzeros: stored zeros at unused positions
    return w


def x_rows(m, k, dtype, seed=1):
    return (torch.randn(m, k, generator=_gen(seed)) * 2).to(dtype)


def bias_for(n, with_bias, seed=2):
    return torch.randn(n, generator=_gen(seed)) if with_bias else None


# ---- Triton: spmm_csr ----------------------------------------------------------------------------------------
# (N, K, density): rows of 0 .. K nonzeros (chunks of 32 under the interpreter: one and several), an
# empty row; K = 40000 needs int32 column indices.
CSR_SHAPES = [(37, 77, 0.5), (9, 200, 0.9), (5, 40000, 0.002)]


@needs_triton
@pytest.mark.parametrize("shape", CSR_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("vdtype", VALUE_DTYPES, ids=dtype_id)
def test_triton_csr_matches_reference(shape, vdtype):
    from slimkernels.triton.sparse import spmm_csr

    n, k, density = shape
    w = sparse_weight(n, k, density, seed=n + k)
    w[n // 2] = 0  # an empty row: bias alone
    packed = layout.pack_csr(w, vdtype)
    assert packed.col_idx.dtype == layout.index_dtype(k)
    w32 = layout.unpack_csr(*packed, k)
    for i, xdtype in enumerate(X_DTYPES):
        m = (1, 17, 3)[i]
        x = x_rows(m, k, xdtype, seed=i)
        bias = bias_for(n, i != 2)
        got = spmm_csr(x, *packed, bias)
        ref = spmm_csr_reference(x, *packed, bias)
        assert_close_linear(got, ref, x, w32, TRITON_CPU, f"csr {shape} {vdtype} x {xdtype} M={m}")


@needs_triton
def test_triton_csr_strided_rows_through_the_op():
    n, k = 21, 50
    packed = layout.pack_csr(sparse_weight(n, k, 0.3), torch.int8)
    wide = x_rows(4, 2 * k, torch.float16)
    bias = bias_for(n, True)
    with slimkernels.use_backend("triton"):
        got = ops.spmm_csr(wide[:, 1: k + 1], *packed, bias=bias)
    ref = spmm_csr_reference(wide[:, 1: k + 1].contiguous(), *packed, bias)
    assert_close_linear(got, ref, wide[:, 1: k + 1], layout.unpack_csr(*packed, k), TRITON_CPU, "csr strided")


# ---- Triton: spmm_bsr ---------------------------------------------------------------------------------
# (N, K, block): the tl.dot path with power-of-two blocks, a 48-wide block side (padded to 64), a block
# taller than the dot tile (bn = 128: two TILE_N slices), and the FMA path (4x4, 1x8 single-row blocks,
# 20x1 single-column blocks, 8x32).
BSR_SHAPES = [(32, 48, (16, 16)), (48, 96, (48, 16)), (32, 96, (16, 48)), (128, 32, (128, 16)),
              (12, 20, (4, 4)), (5, 24, (1, 8)), (40, 6, (20, 1)), (16, 64, (8, 32))]
BSR_MS = (1, 3, 17)


@needs_triton
@pytest.mark.parametrize("shape", BSR_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}_b{s[2][0]}x{s[2][1]}")
@pytest.mark.parametrize("vdtype", VALUE_DTYPES, ids=dtype_id)
def test_triton_bsr_matches_reference(shape, vdtype):
    n, k, block = shape
    w = block_sparse_weight(n, k, block, seed=n + k)
    packed = layout.pack_bsr(w, block, vdtype)
    w32 = layout.unpack_bsr(*packed, k)
    from slimkernels.triton.sparse import spmm_bsr

    for i, xdtype in enumerate(X_DTYPES):
        m = BSR_MS[i % len(BSR_MS)]
        x = x_rows(m, k, xdtype, seed=i)
        bias = bias_for(n, i != 1)
        got = spmm_bsr(x, *packed, bias)
        ref = spmm_bsr_reference(x, *packed, bias)
        assert_close_linear(got, ref, x, w32, TRITON_CPU, f"bsr {shape} {vdtype} x {xdtype} M={m}")


@needs_triton
def test_triton_bsr_strided_rows_and_no_blocks():
    from slimkernels.triton.sparse import spmm_bsr

    n, k, block = 32, 64, (16, 16)
    w = block_sparse_weight(n, k, block, seed=5)
    packed = layout.pack_bsr(w, block, torch.float16)
    wide = x_rows(5, 3 * k, torch.float16)
    x = wide[:, k: 2 * k]  # row stride 3K
    got = spmm_bsr(x, *packed, None)
    assert_close_linear(got, spmm_bsr_reference(x.contiguous(), *packed, None), x, layout.unpack_bsr(*packed, k),
                        TRITON_CPU, "strided x")
    # A weight with no stored block at all: y = bias.
    empty = layout.pack_bsr(torch.zeros(n, k), block, torch.int8)
    bias = bias_for(n, True)
    got = spmm_bsr(x.contiguous(), *empty, bias)
    torch.testing.assert_close(got, bias.to(x.dtype).expand(5, n), rtol=0, atol=0)


@needs_triton
def test_triton_bsr_int8_extremes():
    """All-127 / -127 int8 blocks with large and tiny scales: the integer sum is exact, scaled once."""
    from slimkernels.triton.sparse import spmm_bsr

    n, k, block = 32, 32, (16, 16)
    g = _gen(7)
    w = torch.where(torch.rand(n, k, generator=g) < 0.5, 127.0, -127.0)
    w[16:] *= 1e-3
    packed = layout.pack_bsr(w, block, torch.int8)
    assert int(packed.values.abs().min()) == 127
    x = x_rows(3, k, torch.float32)
    got = spmm_bsr(x, *packed, None)
    assert_close_linear(got, spmm_bsr_reference(x, *packed, None), x, layout.unpack_bsr(*packed, k), TRITON_CPU,
                        "int8 extremes")


# ---- Triton: spmm_nm (2:4 and 4:8) -------------------------------------------------------------------------
# K: below one 64-wide K tile, one tile plus a tail, two whole tiles; N = 37 is odd.
NM_SHAPES = [(37, 24), (37, 72), (5, 128)]


@needs_triton
@pytest.mark.parametrize("group", (4, 8))
@pytest.mark.parametrize("shape", NM_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("vdtype", VALUE_DTYPES, ids=dtype_id)
def test_triton_nm_matches_reference(group, shape, vdtype):
    from slimkernels.triton.sparse import spmm_nm

    n, k = shape
    w = nm_weight(n, k, group, seed=n + k + group)
    packed = layout.pack_nm(w, group, vdtype)
    w32 = layout.unpack_nm(*packed, group, k)
    for i, xdtype in enumerate(X_DTYPES):
        m = (1, 3, 17)[i]
        x = x_rows(m, k, xdtype, seed=i)
        bias = bias_for(n, i != 0)
        got = spmm_nm(x, *packed, group, bias)
        ref = spmm_24_reference(x, *packed, group, bias)
        assert_close_linear(got, ref, x, w32, TRITON_CPU, f"{group // 2}:{group} {shape} {vdtype} x {xdtype} M={m}")


@needs_triton
@pytest.mark.parametrize("policy", ("never", "always"))
def test_triton_nm_split_k_and_strided_rows(policy):
    """Through the op (leading dims, row-strided x kept in place), split-K forced on and off."""
    n, k, group = 37, 200, 4
    w = nm_weight(n, k, group, seed=3)
    packed = layout.pack_nm(w, group, torch.int8)
    wide = x_rows(6, 2 * k, torch.bfloat16)
    x = wide[:, :k]
    bias = bias_for(n, True)
    with slimkernels.use_backend("triton"), slimkernels.triton.use_split_k(policy):
        got = ops.spmm_24(x.reshape(2, 3, k), *packed, group=group, bias=bias)
    ref = spmm_24_reference(x.contiguous(), *packed, group, bias)
    assert_close_linear(got.reshape(6, n), ref, x, layout.unpack_nm(*packed, group, k), TRITON_CPU, policy)


# ---- CUDA 2:4 kernel: its index math replayed on CPU ------------------------------------------------------------
KWARPS, KCHUNK, KROWS = 4, 64, 16  # csrc/cuda/sparse.cu: kWarps, kChunk, kRows
PAD_NIBBLE = 0x4


def _row_metadata(idx_row: torch.Tensor, step: int, groups: int, valid: bool) -> int:
    """sparse.cu row_metadata: 16 bits of metadata (4 groups) of one row and one k16 step."""
    if not valid:
        return PAD_NIBBLE * 0x1111
    bits = 0
    for c in range(4):
        grp = 4 * step + c
        nib = (int(idx_row[grp >> 1]) >> (4 * (grp & 1))) & 0xF if grp < groups else PAD_NIBBLE
        bits |= nib << (4 * c)
    return bits


def _mma_sp_m16n8k16(a: list, b: list, e: list, sel: int) -> torch.Tensor:
    """mma.sp m16n8k16 (.f16/.bf16) as the PTX ISA defines it, from the 32 lanes' registers:
    a[lane] = (row g pair, row g + 8 pair), b[lane] = (k 2t, 2t+1 pair, k 2t+8, 2t+9 pair), e[lane] the
    metadata word; lanes 4g + sel supply it: bits [4c, 4c+4) group c of row g, [16+4c, ..) of row g + 8."""
    A = torch.zeros(16, 16, dtype=torch.float64)
    B = torch.zeros(16, 8, dtype=torch.float64)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        word = e[4 * g + sel]
        for hi in (0, 1):
            nib = (word >> (16 * hi + 4 * t)) & 0xF
            v0, v1 = a[lane][hi]
            A[g + 8 * hi, 4 * t + (nib & 3)] += v0
            A[g + 8 * hi, 4 * t + (nib >> 2)] += v1
        (b0, b1), (b2, b3) = b[lane]
        B[2 * t, g], B[2 * t + 1, g], B[2 * t + 8, g], B[2 * t + 9, g] = b0, b1, b2, b3
    return A @ B


def emulate_spmm_24_cuda(x, values, indices, scales, bias):
    """csrc/cuda/sparse.cu's spmm_24_kernel replayed in Python (float64 sums, token tiles of 8): per row
    block, warp, chunk and k16 step, what every lane loads, then the mma.sp semantics. Values are rounded
    to x's type as the kernel's pack2 does; the result is rounded once to x.dtype."""
    M, K = x.shape
    N = values.shape[0]
    kept, groups = K // 2, K // 4
    v_t = values.to(torch.float32).to(x.dtype).double()  # pack2<T>: value -> float -> T (int8 exactly)
    xd = x.double()
    out = torch.empty(M, N, dtype=torch.float64)
    for n0 in range(0, N, KROWS):
        for m0 in range(0, M, 8):
            acc = torch.zeros(16, 8, dtype=torch.float64)
            for warp in range(KWARPS):
                for c0 in range(warp * KCHUNK, K, KWARPS * KCHUNK):
                    e = []
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3
                        lo, hi = n0 + g, n0 + g + 8
                        e.append(_row_metadata(indices[min(lo, N - 1)], c0 // 16 + t, groups, lo < N)
                                 | _row_metadata(indices[min(hi, N - 1)], c0 // 16 + t, groups, hi < N) << 16)
                    for sel in range(4):
                        k0 = c0 + 16 * sel
                        if k0 >= K:
                            break
                        a, b = [], []
                        for lane in range(32):
                            g, t = lane >> 2, lane & 3
                            kc = k0 // 2 + 2 * t
                            pair = lambda r: (tuple(v_t[r, kc: kc + 2].tolist())  # noqa: E731
                                              if r < N and kc < kept else (0.0, 0.0))
                            a.append((pair(n0 + g), pair(n0 + g + 8)))
                            m = m0 + g
                            xp = lambda k: (tuple(xd[m, k: k + 2].tolist())  # noqa: E731
                                            if m < M and k < K else (0.0, 0.0))
                            b.append((xp(k0 + 2 * t), xp(k0 + 2 * t + 8)))
                        acc += _mma_sp_m16n8k16(a, b, e, sel)
            rows, cols = min(16, N - n0), min(8, M - m0)
            out[m0: m0 + cols, n0: n0 + rows] = acc[:rows, :cols].T
    if scales is not None:
        out = out * scales.double()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype)


# K: one k16 step short of a chunk (72: K % 16 = 8), a row ending mid-byte (100: K % 8 = 4), chunks for
# all four warps and a second round (520). N = 37 leaves a partial 16-row block.
EMULATION_SHAPES = [(37, 72, 9), (21, 100, 3), (16, 520, 1)]


@pytest.mark.parametrize("shape", EMULATION_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}_M{s[2]}")
@pytest.mark.parametrize("vdtype", VALUE_DTYPES, ids=dtype_id)
def test_cuda_24_index_math_emulated(shape, vdtype):
    n, k, m = shape
    w = nm_weight(n, k, 4, seed=n + k)
    packed = layout.pack_nm(w, 4, vdtype)
    w32 = layout.unpack_nm(*packed, 4, k)
    for i, xdtype in enumerate((torch.float16, torch.bfloat16)):
        x = x_rows(m, k, xdtype, seed=i)
        bias = bias_for(n, i == 0)
        got = emulate_spmm_24_cuda(x, *packed, bias)
        ref = spmm_24_reference(x, *packed, 4, bias)
        # The emulation's only differences from the reference: values rounded to x's type, float64
        # sums: within Triton's bound (the same weight cast).
        assert_close_linear(got, ref, x, w32, Case("cpu", "triton"), f"emulated {shape} {vdtype} x {xdtype}")


def test_cuda_24_metadata_is_the_canonical_nibble():
    """The kernel's premise: group t of a row is the nibble p0 | p1 << 2 at bits [4t, 4t+4) of the packed
    indices, which is mma.sp's metadata nibble (first index in the low bits)."""
    n, k = 3, 32
    w = nm_weight(n, k, 4, seed=11)
    packed = layout.pack_nm(w, 4, torch.float32)
    pos = layout.nm_positions(packed.indices, 4, k).reshape(n, k // 4, 2)
    for r in range(n):
        for grp in range(k // 4):
            nib = (int(packed.indices[r, grp >> 1]) >> (4 * (grp & 1))) & 0xF
            assert nib == int(pos[r, grp, 0]) | int(pos[r, grp, 1]) << 2
            assert nib not in (0b0000, 0b0101, 0b1010, 0b1111)  # invalid metadata


# ---- on a GPU ---------------------------------------------------------------------------------------------
CUDA_SHAPES = [(37, 72), (21, 100), (16, 520), (4096, 4096), (300, 1028)]
CUDA_MS = (1, 5, 8, 9, 16, 17, 64, 300)


@pytest.mark.gpu
@needs_cuda_ext
@pytest.mark.parametrize("vdtype", VALUE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("xdtype", (torch.float16, torch.bfloat16), ids=dtype_id)
def test_cuda_24_kernel_matches_reference(vdtype, xdtype):
    from slimkernels.backends.sparse import spmm_24_cuda

    case = Case("cuda", "native")
    for n, k in CUDA_SHAPES:
        w = nm_weight(n, k, 4, seed=n + k)
        packed = [t.cuda() if t is not None else None for t in layout.pack_nm(w, 4, vdtype)]
        w32 = layout.unpack_nm(*packed, 4, k)
        for i, m in enumerate(CUDA_MS):
            x = x_rows(m, k, xdtype, seed=m).cuda()
            bias = bias_for(n, i % 2 == 0)
            bias = bias.cuda() if bias is not None else None
            got = spmm_24_cuda(x, *packed, 4, bias)
            ref = spmm_24_reference(x, *packed, 4, bias)
            assert_close_linear(got, ref, x, w32, case, f"cuda 2:4 {n}x{k} M={m} {vdtype} x {xdtype}")
            # Row-strided x read in place.
            wide = torch.cat([x, x], dim=1)
            got_strided = spmm_24_cuda(wide[:, :k], *packed, 4, bias)
            torch.testing.assert_close(got_strided, got, rtol=0, atol=0)


@pytest.mark.gpu
@needs_cuda_ext
def test_cuda_24_routes_48_and_float32_to_reference():
    from slimkernels.backends.sparse import spmm_24_cuda

    for group, xdtype in ((8, torch.float16), (4, torch.float32)):
        w = nm_weight(33, 64, group)
        packed = [t.cuda() if t is not None else None for t in layout.pack_nm(w, group, torch.float16)]
        x = x_rows(5, 64, xdtype).cuda()
        torch.testing.assert_close(spmm_24_cuda(x, *packed, group, None), spmm_24_reference(x, *packed, group, None))


@pytest.mark.gpu
@needs_cuda_ext
def test_cuda_24_binding_checks():
    C = _native._C_cuda
    x = torch.zeros(2, 8, dtype=torch.float16, device="cuda")
    v = torch.zeros(4, 4, dtype=torch.float16, device="cuda")
    idx = torch.full((4, 1), 0x44, dtype=torch.uint8, device="cuda")
    out = torch.empty(2, 4, dtype=torch.float16, device="cuda")
    s = torch.cuda.current_stream().cuda_stream
    ok = dict(x=x.data_ptr(), ldx=8, M=2, K=8, x_kind="float16", values=v.data_ptr(), value_kind="float16",
              indices=idx.data_ptr(), scales=0, N=4, bias=0, out=out.data_ptr(), ldo=4, stream=s)
    C.spmm_24(**ok)
    for bad in (dict(K=6), dict(x_kind="float32"), dict(value_kind="int4"), dict(ldx=4), dict(ldo=2),
                dict(value_kind="int8"), dict(scales=out.data_ptr())):
        with pytest.raises(ValueError):
            C.spmm_24(**{**ok, **bad})


# (x dtype, value dtype) pairs for Triton on a GPU: each pair compiles and autotunes its own kernels, so a
# few that cover every dtype (the interpreter tests above take the full product).
TRITON_CUDA_DTYPES = [(torch.float16, torch.float16), (torch.bfloat16, torch.int8), (torch.float32, torch.float32),
                      (torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or not triton_ok, reason="needs a CUDA device and Triton")
@pytest.mark.parametrize("xdtype,vdtype", TRITON_CUDA_DTYPES, ids=lambda d: dtype_id(d))
def test_triton_on_cuda_matches_reference(xdtype, vdtype):
    from slimkernels.triton.sparse import spmm_bsr, spmm_csr, spmm_nm

    case = Case("cuda", "triton")
    for n, k, density in [(4096, 4096, 0.1), (37, 77, 0.5)]:
        packed = [t.cuda() if t is not None else None for t in layout.pack_csr(sparse_weight(n, k, density), vdtype)]
        w32 = layout.unpack_csr(*packed, k)
        for m in (1, 100):
            x = x_rows(m, k, xdtype).cuda()
            assert_close_linear(spmm_csr(x, *packed, None), spmm_csr_reference(x, *packed, None), x, w32, case,
                                f"csr {vdtype} x {xdtype} M={m}")
    for n, k, block in [(256, 512, (32, 32)), (96, 128, (4, 4)), (64, 96, (1, 16)), (4096, 4096, (64, 64))]:
        w = block_sparse_weight(n, k, block, seed=n)
        packed = [t.cuda() if t is not None else None for t in layout.pack_bsr(w, block, vdtype)]
        w32 = layout.unpack_bsr(*packed, k)
        for m in (1, 100):
            x = x_rows(m, k, xdtype).cuda()
            assert_close_linear(spmm_bsr(x, *packed, None), spmm_bsr_reference(x, *packed, None), x, w32, case,
                                f"bsr {block} {vdtype} x {xdtype} M={m}")
    for group in (4, 8):
        for n, k in [(37, 72), (4096, 4096)]:
            w = nm_weight(n, k, group)
            packed = [t.cuda() if t is not None else None for t in layout.pack_nm(w, group, vdtype)]
            w32 = layout.unpack_nm(*packed, group, k)
            for m in (1, 100):
                x = x_rows(m, k, xdtype).cuda()
                assert_close_linear(spmm_nm(x, *packed, group, None), spmm_24_reference(x, *packed, group, None),
                                    x, w32, case, f"{group} {vdtype} x {xdtype} M={m}")
