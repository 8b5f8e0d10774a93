"""Sparse matmuls in Triton: ``spmm_csr`` (unstructured), ``spmm_bsr`` (block-sparse) and ``spmm_nm``
(N:M semi-structured, 2:4 and 4:8), ``out = x @ W.T + bias`` with W read in the canonical layouts of
``slimkernels.quant.sparse`` as stored (no device layout). x is float16/bfloat16/float32 [M, K] (any
row stride); values are float32/float16/bfloat16, or int8 with float32 per-row ``scales``; the result
is [M, N] in x.dtype, accumulated in float32.

CSR. One program per (output row n, BLOCK_M rows of x): it walks the row's nonzeros BLOCK_NNZ at a time,
gathers x's columns col_idx[z] for its BLOCK_M rows and sums x * value in float32 (x and the values
widen to float32 exactly, so only the order of the sum differs from the reference). A gather kernel
for small M: no tensor cores, every x element read once per nonzero of W.

BSR. One program per (BLOCK_M rows of x, block row of W, TILE_N-wide slice of the block's bn rows).
It walks the block row's stored blocks (``row_ptr``/``col_idx``) and, per block, the block's bk
columns in TILE_K steps: x's [BLOCK_M, TILE_K] tile at the block's columns times the block slice
transposed. Blocks whose two sides are both >= 16 feed ``tl.dot`` (tiles padded to powers of two by
masked loads). Narrower blocks (bn or bk < 16: 1x4, 4x4, 8x1 ...) would waste most of a tensor-core
tile, so they multiply with broadcast FMAs and ``tl.sum`` over a register tile kept to
~4096 products. int8 values enter the sum as integers (exact in any float type) and the row scale
multiplies the float32 sum once, in the epilogue, with the bias.

N:M. The tiled GEMM of ``triton/lowbit.py`` (same launcher, tiles, split-K path and reduction):
for each [BLOCK_K, BLOCK_N] tile of the dense weight, every column k loads the m/2 kept values of its
group and their in-group positions (b-bit codes, decoded as low-bit codes) and keeps the value whose
position is k % m, else 0. Only the kept values and the packed positions are read from memory (each
is loaded m times, from cache), so the weight bytes read are half the dense ones plus b/8 per value:
at small M the kernel is bound by them. int8 values are scaled in float32 before the cast to x's
dtype, as lowbit's int4 path does.

Under the interpreter (``TRITON_INTERPRET=1``) bfloat16 tensors (x or values) are loaded on the bits
(see ``_common``) and dotted in float32. Inputs are validated and non-empty (``slimkernels.ops`` and
backends dispatch); launchers trust that and only keep in-range indices in bounds.
"""

from __future__ import annotations

import torch

from .. import triton as slim_triton
from ..quant import sparse as layout
from ._common import (
    HAVE_TRITON, bf16_manual, launch_device, m_bucket, needs_int64_index, require_float, require_triton,
    tl, triton,
)

if HAVE_TRITON:
    from ._common import (
        bias_epilogue_store, dequant_epilogue_store, even_k_heuristic, load_maybe_bf16, tile_offsets, widen,
    )
    from .lowbit import _autotuned, _launch, _load_codes, _store_result

__all__ = ["spmm_csr", "spmm_bsr", "spmm_nm"]

# ---------------------------------------------------------------------------------------------
# CSR tiles (BLOCK_M, BLOCK_NNZ): not yet timed on a GPU.
# ---------------------------------------------------------------------------------------------
_CSR_TILES = [(16, 128), (32, 64), (64, 32)]
_CSR_INTERPRETER_TILE = (16, 32)


def _csr_configs():
    tiles = [_CSR_INTERPRETER_TILE] if slim_triton.interpreting() else _CSR_TILES
    return [triton.Config({"BLOCK_M": bm, "BLOCK_NNZ": bz}, num_warps=4, num_stages=2) for bm, bz in tiles]


def _csr_prune(configs, named_args, **kwargs):
    bucket = int(named_args.get("M_BUCKET", 16))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, bucket)]
    return kept or list(configs)[:1]


# ---------------------------------------------------------------------------------------------
# BSR tiles. Not yet timed on a GPU: BLOCK_M per M bucket, one warp count.
# ---------------------------------------------------------------------------------------------
#: Below this block side tl.dot would pad a tensor-core tile mostly with zeros: FMAs instead.
BSR_DOT_MIN_SIDE = 16
#: Largest TILE_N / TILE_K of the tl.dot path (a bigger block is walked in slices / steps).
BSR_DOT_MAX_TILE = 64
#: Products per program and K step of the FMA path (registers: BLOCK_M * TILE_K * TILE_N).
BSR_FMA_PRODUCTS = 4096
_BSR_BLOCK_M = (16, 32, 64, 128)
_BSR_INTERPRETER_BLOCK_M = 16


def _pow2(v: int) -> int:
    return triton.next_power_of_2(max(1, int(v)))


def _bsr_use_dot(bn: int, bk: int) -> bool:
    return bn >= BSR_DOT_MIN_SIDE and bk >= BSR_DOT_MIN_SIDE


def _bsr_tile_n(bn: int, bk: int) -> int:
    return min(_pow2(bn), BSR_DOT_MAX_TILE) if _bsr_use_dot(bn, bk) else min(_pow2(bn), BSR_FMA_PRODUCTS // 16)


def _bsr_configs():
    rows = [_BSR_INTERPRETER_BLOCK_M] if slim_triton.interpreting() else _BSR_BLOCK_M
    return [triton.Config({"BLOCK_M": bm}, num_warps=4, num_stages=2) for bm in rows]


def _bsr_prune(configs, named_args, **kwargs):
    # The FMA path keeps BLOCK_M at 16 (its register tile is BLOCK_M * TILE_K * TILE_N); the dot
    # path times the BLOCK_M values up to the M bucket.
    if not named_args.get("USE_DOT", kwargs.get("USE_DOT", True)):
        allowed = (16,)
    else:
        bucket = int(named_args.get("M_BUCKET", 16))
        allowed = tuple(bm for bm in _BSR_BLOCK_M if bm <= max(16, bucket))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] in allowed]
    return kept or list(configs)[:1]


def _bsr_tile_k(args):
    # The K step inside a block: up to BSR_DOT_MAX_TILE for tl.dot (at least 16), else what keeps the
    # FMA tile within BSR_FMA_PRODUCTS.
    bk = args["BK"]
    if args["USE_DOT"]:
        return min(_pow2(bk), BSR_DOT_MAX_TILE)
    budget = max(1, BSR_FMA_PRODUCTS // (args["BLOCK_M"] * args["TILE_N"]))
    return min(_pow2(bk), 1 << (budget.bit_length() - 1))  # the largest power of two <= budget


if HAVE_TRITON:

    @triton.autotune(configs=_csr_configs(), key=["M_BUCKET"], prune_configs_by={"early_config_prune": _csr_prune})
    @triton.jit
    def _spmm_csr_kernel(
        x_ptr, row_ptr_ptr, col_ptr, v_ptr, s_ptr, bias_ptr, out_ptr,
        M, M_BUCKET, stride_xm, stride_xk, stride_om, stride_on,
        HAS_SCALES: tl.constexpr, HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr, BF16_MANUAL: tl.constexpr,
        V_BF16_MANUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_NNZ: tl.constexpr,
    ):
        pid = tl.program_id(0)
        num_m_tiles = tl.cdiv(M, BLOCK_M)
        pid_m = pid % num_m_tiles
        n = pid // num_m_tiles
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_xm = widen(offs_m % M, INT64_IDX)  # rows past M wrap onto valid ones, never stored
        offs_z = tl.arange(0, BLOCK_NNZ)
        first = tl.load(row_ptr_ptr + n)
        last = tl.load(row_ptr_ptr + n + 1)
        acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for z0 in range(first, last, BLOCK_NNZ):
            z = widen(z0 + offs_z, INT64_IDX)
            z_mask = z < last
            cols = widen(tl.load(col_ptr + z, mask=z_mask, other=0).to(tl.int32), INT64_IDX)
            v = load_maybe_bf16(v_ptr + z, z_mask, True, V_BF16_MANUAL).to(tl.float32)
            xg = load_maybe_bf16(x_ptr + offs_xm[:, None] * stride_xm + cols[None, :] * stride_xk, z_mask[None, :],
                                 True, BF16_MANUAL).to(tl.float32)
            acc += tl.sum(xg * v[None, :], axis=1)
        # One output column: a [BLOCK_M, 1] tile whose width mask is "column < n + 1".
        offs_n = widen(n + tl.arange(0, 1), INT64_IDX)
        offs_m = widen(offs_m, INT64_IDX)
        if HAS_SCALES:
            dequant_epilogue_store(acc[:, None], out_ptr, s_ptr, s_ptr, bias_ptr, offs_m, offs_n, M, n + 1,
                                   stride_om, stride_on, False, HAS_BIAS, BF16_MANUAL)
        else:
            bias_epilogue_store(acc[:, None], out_ptr, bias_ptr, offs_m, offs_n, M, n + 1, stride_om, stride_on,
                                HAS_BIAS, BF16_MANUAL)

    @triton.autotune(configs=_bsr_configs(), key=["M_BUCKET", "BN", "BK"],
                     prune_configs_by={"early_config_prune": _bsr_prune})
    @triton.heuristics({"TILE_K": _bsr_tile_k})
    @triton.jit
    def _spmm_bsr_kernel(
        x_ptr, row_ptr_ptr, col_ptr, v_ptr, s_ptr, bias_ptr, out_ptr,
        M, M_BUCKET, n_slices,
        stride_xm, stride_xk, stride_om, stride_on,
        BN: tl.constexpr, BK: tl.constexpr, USE_DOT: tl.constexpr, HAS_SCALES: tl.constexpr,
        HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr, BF16_MANUAL: tl.constexpr,
        V_BF16_MANUAL: tl.constexpr, DOT_PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, TILE_N: tl.constexpr, TILE_K: tl.constexpr,
    ):
        # Program order: M tiles fastest, so the programs reading one block row's weights run
        # together (the weights stay in L2 across the M tiles).
        pid = tl.program_id(0)
        num_m_tiles = tl.cdiv(M, BLOCK_M)
        pid_m = pid % num_m_tiles
        rest = pid // num_m_tiles
        brow = rest // n_slices
        offs_r = (rest % n_slices) * TILE_N + tl.arange(0, TILE_N)  # rows inside the block
        r_mask = offs_r < BN
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_xm = widen(offs_m % M, INT64_IDX)  # rows past M wrap onto valid ones, never stored
        offs_c = tl.arange(0, TILE_K)
        first = tl.load(row_ptr_ptr + brow)
        last = tl.load(row_ptr_ptr + brow + 1)
        acc = tl.zeros((BLOCK_M, TILE_N), dtype=tl.float32)
        for b in range(first, last):
            k0 = widen(tl.load(col_ptr + b).to(tl.int32), INT64_IDX) * BK
            block = v_ptr + widen(b, INT64_IDX) * (BN * BK)
            for c0 in range(0, BK, TILE_K):
                offs_k = c0 + offs_c
                k_mask = offs_k < BK
                x = load_maybe_bf16(x_ptr + offs_xm[:, None] * stride_xm + (k0 + offs_k)[None, :] * stride_xk,
                                    k_mask[None, :], True, BF16_MANUAL)
                w = load_maybe_bf16(block + offs_r[None, :] * BK + offs_k[:, None],
                                    r_mask[None, :] & k_mask[:, None], True, V_BF16_MANUAL)
                if USE_DOT:
                    acc = tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PREC, out_dtype=tl.float32)
                else:
                    w32 = w.to(tl.float32)
                    acc += tl.sum(x.to(tl.float32)[:, :, None] * w32[None, :, :], axis=1)
        # Columns past this block row are masked by passing its end as the output width.
        n_end = (brow + 1) * BN
        offs_n = widen(brow * BN + offs_r, INT64_IDX)
        offs_m = widen(offs_m, INT64_IDX)
        if HAS_SCALES:
            dequant_epilogue_store(acc, out_ptr, s_ptr, s_ptr, bias_ptr, offs_m, offs_n, M, n_end,
                                   stride_om, stride_on, False, HAS_BIAS, BF16_MANUAL)
        else:
            bias_epilogue_store(acc, out_ptr, bias_ptr, offs_m, offs_n, M, n_end, stride_om, stride_on,
                                HAS_BIAS, BF16_MANUAL)

    @even_k_heuristic
    @triton.jit
    def _spmm_nm_kernel(
        x_ptr, v_ptr, idx_ptr, s_ptr, bias_ptr, out_ptr, ws_ptr,
        M, N, K, M_BUCKET,
        stride_xm, stride_xk, stride_vn, stride_vk, stride_in, stride_om, stride_on,
        stride_ws_s, stride_ws_m,
        HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr, BF16_MANUAL: tl.constexpr, DOT_PREC: tl.constexpr,
        GROUP: tl.constexpr, BITS: tl.constexpr, HAS_SCALES: tl.constexpr, V_BF16_MANUAL: tl.constexpr,
        EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        # The (BLOCK_M, BLOCK_N) tile of x @ W.T over the K blocks k_first, k_first + SPLIT_K, ...
        # (see lowbit._lowbit_tile_product, whose structure this follows).
        HALF: tl.constexpr = GROUP // 2
        k_first = tl.program_id(1)
        offs_m, offs_n = tile_offsets(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        offs_xm = widen(offs_m % M, INT64_IDX)
        offs_wn = widen(offs_n % N, INT64_IDX)
        offs_kb = widen(tl.arange(0, BLOCK_K), INT64_IDX)
        if HAS_SCALES:
            scale = tl.load(s_ptr + offs_wn)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(k_first, tl.cdiv(K, BLOCK_K), SPLIT_K):
            offs_k = kb * BLOCK_K + offs_kb
            k_mask = offs_k < K
            x_ptrs = x_ptr + offs_xm[:, None] * stride_xm + offs_k[None, :] * stride_xk
            if EVEN_K:
                x = load_maybe_bf16(x_ptrs, None, False, BF16_MANUAL)
            else:
                x = load_maybe_bf16(x_ptrs, k_mask[None, :], True, BF16_MANUAL)
            # Dense column k is kept value j of its group when that value's position is k % GROUP.
            in_group = (offs_k % GROUP)[:, None]
            w = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
            for j in tl.static_range(HALF):
                kept = (offs_k // GROUP) * HALF + j  # < K / 2 wherever k < K
                pos = _load_codes(idx_ptr, kept, k_mask, offs_wn, stride_in, 1, BITS, not EVEN_K)
                v_ptrs = v_ptr + offs_wn[None, :] * stride_vn + kept[:, None] * stride_vk
                if EVEN_K:
                    v = load_maybe_bf16(v_ptrs, None, False, V_BF16_MANUAL)
                else:
                    v = load_maybe_bf16(v_ptrs, k_mask[:, None], True, V_BF16_MANUAL)
                w = tl.where(pos == in_group, v.to(tl.float32), w)
            if HAS_SCALES:
                w = w * scale[None, :]
            acc = tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PREC, out_dtype=tl.float32)
        _store_result(acc, widen(offs_m, INT64_IDX), widen(offs_n, INT64_IDX), out_ptr, bias_ptr, ws_ptr, M, N,
                      stride_om, stride_on, stride_ws_s, stride_ws_m, HAS_BIAS, BF16_MANUAL, SPLIT_K)

    _NM_KERNELS = _autotuned(_spmm_nm_kernel, ["GROUP", "BITS"])


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

def _dot_precision(x: torch.Tensor) -> str:
    # float32 x: exact float32 products (no TF32); bfloat16 under the interpreter is dotted in
    # float32 too. The flag does not apply to 16-bit dots.
    return "ieee" if (x.dtype == torch.float32 or bf16_manual(x.dtype)) else "tf32"


def spmm_csr(x: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, values: torch.Tensor,
             scales: torch.Tensor | None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ quant.sparse.unpack_csr(row_ptr, col_idx, values, scales, K).T + bias`` -> [M, N] in x.dtype,
    N = row_ptr.numel() - 1.

    x float16/bfloat16/float32 [M, K] (unit column stride, any row stride); row_ptr int32 [N + 1],
    col_idx int16/int32 [nnz], values [nnz] and scales (float32 [N] for int8 values, else None)
    contiguous; bias [N] contiguous float or None.
    """
    require_triton("spmm_csr")
    require_float(x)
    M = x.shape[0]
    n = row_ptr.numel() - 1
    out = torch.empty((M, n), dtype=x.dtype, device=x.device)
    int64_idx = needs_int64_index(x.numel(), values.numel(), M * n)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * n,)

    with launch_device(x):
        _spmm_csr_kernel[grid](
            x, row_ptr, col_idx, values, scales if scales is not None else out, bias if bias is not None else out,
            out, M, m_bucket(M), x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            HAS_SCALES=scales is not None, HAS_BIAS=bias is not None, INT64_IDX=int64_idx,
            BF16_MANUAL=bf16_manual(x.dtype), V_BF16_MANUAL=bf16_manual(values.dtype),
        )
    return out


def spmm_bsr(x: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, values: torch.Tensor,
             scales: torch.Tensor | None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ quant.sparse.unpack_bsr(row_ptr, col_idx, values, scales, K).T + bias`` -> [M, N] in
    x.dtype, N = (row_ptr.numel() - 1) * bn.

    x float16/bfloat16/float32 [M, K] (unit column stride, any row stride); row_ptr int32
    [N / bn + 1], col_idx int16/int32 [nnzb], values [nnzb, bn, bk] and scales (float32 [N] for int8
    values, else None) contiguous; bias [N] contiguous float or None.
    """
    require_triton("spmm_bsr")
    require_float(x)
    M = x.shape[0]
    nnzb, bn, bk = values.shape
    nb = row_ptr.numel() - 1
    n = nb * bn
    out = torch.empty((M, n), dtype=x.dtype, device=x.device)
    use_dot = _bsr_use_dot(bn, bk)
    tile_n = _bsr_tile_n(bn, bk)
    n_slices = triton.cdiv(bn, tile_n)
    int64_idx = needs_int64_index(x.numel(), values.numel(), M * n)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * nb * n_slices,)

    with launch_device(x):
        _spmm_bsr_kernel[grid](
            x, row_ptr, col_idx, values, scales if scales is not None else out,
            bias if bias is not None else out, out,
            M, m_bucket(M), n_slices, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            BN=bn, BK=bk, USE_DOT=use_dot, HAS_SCALES=scales is not None, HAS_BIAS=bias is not None,
            INT64_IDX=int64_idx, BF16_MANUAL=bf16_manual(x.dtype), V_BF16_MANUAL=bf16_manual(values.dtype),
            DOT_PREC=_dot_precision(x), TILE_N=tile_n,
        )
    return out


def spmm_nm(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor | None,
            group: int = 4, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ quant.sparse.unpack_nm(values, indices, scales, group, K).T + bias`` -> [M, N] in x.dtype.

    x float16/bfloat16/float32 [M, K] (unit column stride, any row stride), K a multiple of
    ``group`` (4: 2:4, 8: 4:8); values [N, K / 2] (float, or int8 with scales float32 [N]) and
    indices uint8 [N, ceil(K / 2 * b / 8)] (b = log2(group)) contiguous; bias [N] contiguous float
    or None. The GEMM and split-K paths, tiles and the split-K switch are lowbit's.
    """
    require_triton("spmm_nm")
    require_float(x)
    n = values.shape[0]
    return _launch(_NM_KERNELS, x, values, n, bias, (indices, scales if scales is not None else values), (),
                   (indices.stride(0),), GROUP=group, BITS=layout.nm_bits(group), HAS_SCALES=scales is not None,
                   V_BF16_MANUAL=bf16_manual(values.dtype))
