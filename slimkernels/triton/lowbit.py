"""Weight-only low-bit matmuls in Triton: ``dequant_mm_int4`` (int4 group-wise) and ``lut_mm``
(2/3/4-bit codebook), ``out = x @ W.T + bias`` with W decoded from its packed codes in the kernel.

Both read the canonical layouts of ``slimkernels.quant.lowbit`` as stored (no repacking): each
weight row is an LSB-first bit stream of b-bit codes, code k at bits [k*b, k*b + b). x is
float16/bfloat16/float32 [M, K]; the result is [M, N] in x.dtype.

One K loop serves both formats (``_lowbit_tile_product``). For each (BLOCK_K, BLOCK_N) weight tile
it gathers, per element, the byte that holds code k (byte ``(k*b) >> 3``; a 3-bit code may
straddle two bytes, so for b = 3 the byte of its last bit is loaded too and the pair shifted), then
decodes the codes in float32:

* int4: ``w = (q - z) * s`` with the scale and zero point of group ``k // group_size`` (zero point
  8 without zeros), exactly the reference's float32 arithmetic. When the tile lies inside one
  group (``group_size % BLOCK_K == 0``, or one group per row) the [BLOCK_N] scales and zeros are
  loaded once per tile; otherwise (a tile spanning several groups) per element.
* codebook: ``w = codebook[row, q]``, a gather from the tiny codebook (it stays in L1/L2); a
  per-layer codebook is a row stride of 0.

The decoded tile is cast to x's dtype and fed to ``tl.dot`` with a float32 accumulator (float32
x: ``input_precision="ieee"``). The scales vary along K, so unlike the int8 kernels nothing is
left for the epilogue but the bias (float32) and the cast to x.dtype.

Two paths, one kernel per op:

* GEMM: one program per (BLOCK_M, BLOCK_N) output tile, grouped tile order, epilogue fused
  (``SPLIT_K == 1``). Autotuned per (M bucket, N, K, dtypes, group size or code width).
* split-K (decode, M <= 16, when N gives too few tiles to fill the GPU): K blocks are shared out
  over SPLIT_K programs, each writing its float32 partial sum to its own slice of a
  [SPLIT_K, M, N] workspace; ``_common``'s reduction kernel sums the slices in a fixed order and
  adds the bias. No atomics, so results are deterministic. ``slimkernels.triton.set_split_k`` forces or
  forbids it. With BLOCK_M = 16 this is the GEMV: decode is bound by reading the packed weights,
  and a 16-row ``tl.dot`` costs nothing next to that.

Under the interpreter (``TRITON_INTERPRET=1``) bfloat16 x is handled on the bits, as in
``dequant_int8`` (see ``_common``): loaded up to float32 exactly, dotted in float32, the result
rounded to bfloat16 by hand. Its single config has BLOCK_K = 64, so the tests cover both the
one-group-per-tile path (group size 64, per channel) and the several-groups path (group size 32).

Inputs are validated and non-empty (``slimkernels.ops`` and backends dispatch). Triton is imported guarded (in
``_common``), so importing this module never fails; the launchers raise ``RuntimeError`` without it.
"""

from __future__ import annotations

import torch

from ..quant import lowbit
from ._common import (
    AUTOTUNE_KEY, HAVE_TRITON, bf16_manual, config_pruner, launch_device,
    m_bucket, needs_int64_index, reduce_splitk, require_float, require_triton, tile_configs,
    tile_grid, tl, triton, use_split_k,
)

if HAVE_TRITON:
    from ._common import bias_epilogue_store, even_k_heuristic, load_maybe_bf16, tile_offsets, widen

__all__ = ["dequant_mm_int4", "lut_mm"]


# ---------------------------------------------------------------------------------------------
# Autotune configurations: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, SPLIT_K)
# Not yet timed on a GPU: short lists, modelled on dequant_int8's, with deeper K tiles (a packed
# weight tile is a half (int4) to a quarter (2-bit) of int8's bytes).
# ---------------------------------------------------------------------------------------------

_GEMM_TILES = [
    # M <= 16 (decode): bound by streaming the packed weights; narrow N tiles give many CTAs.
    (16, 32, 128, 1, 4, 4, 1), (16, 64, 128, 1, 4, 4, 1), (16, 32, 256, 1, 4, 3, 1),
    (16, 128, 64, 1, 4, 4, 1),
    # 17 <= M <= 128: taller tiles reuse each decoded weight tile over more rows.
    (32, 64, 128, 8, 4, 4, 1), (64, 64, 64, 8, 4, 4, 1), (64, 128, 64, 8, 4, 3, 1),
    # larger M: big tensor-core tiles, grouped tile order for L2 reuse.
    (128, 128, 64, 8, 8, 3, 1), (128, 256, 64, 8, 8, 3, 1), (256, 128, 64, 8, 8, 3, 1),
]

_SPLITK_TILES = [
    (16, 32, 128, 1, 4, 4, 4), (16, 64, 128, 1, 4, 4, 4), (16, 64, 128, 1, 4, 3, 8),
    (16, 128, 64, 1, 4, 4, 8),
]

#: The interpreter's single config (BLOCK_K = 64: see the module docstring), GEMM and split-K.
_INTERPRETER_GEMM_TILE = (16, 32, 64, 2, 4, 1, 1)
_INTERPRETER_SPLITK_TILE = (16, 32, 64, 1, 4, 1, 2)

#: Largest SPLIT_K among the split-K configs: the workspace is sized for it.
_MAX_SPLIT_K = max(t[6] for t in _SPLITK_TILES + [_INTERPRETER_SPLITK_TILE])

# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

if HAVE_TRITON:

    @triton.jit
    def _load_codes(codes_ptr, offs_k, k_mask, offs_n, stride_cn, stride_ck, BITS: tl.constexpr,
                    MASKED: tl.constexpr):
        # [BLOCK_K, BLOCK_N] int32 codes k = offs_k of rows offs_n: bits [k*BITS, k*BITS + BITS)
        # of the row's LSB-first bit stream.
        bit = offs_k * BITS
        row = codes_ptr + offs_n[None, :] * stride_cn
        first = row + (bit >> 3)[:, None] * stride_ck
        if MASKED:
            v = tl.load(first, mask=k_mask[:, None], other=0).to(tl.int32)
        else:
            v = tl.load(first).to(tl.int32)
        if BITS == 3:
            # A 3-bit code may straddle two bytes: also load the byte of its last bit (the same
            # byte when it doesn't, which the shift below then ignores). Never past the row.
            last = row + ((bit + BITS - 1) >> 3)[:, None] * stride_ck
            if MASKED:
                v = v | (tl.load(last, mask=k_mask[:, None], other=0).to(tl.int32) << 8)
            else:
                v = v | (tl.load(last).to(tl.int32) << 8)
        return (v >> (bit & 7)[:, None]) & ((1 << BITS) - 1)

    @triton.jit
    def _int4_weights(q, s_ptr, z_ptr, k0, offs_k, k_mask, offs_n, group_size, stride_sn,
                      HAS_ZEROS: tl.constexpr, SCALE_PER_TILE: tl.constexpr):
        # w = (q - z) * s in float32 (the reference's arithmetic), with the scale and zero point
        # of group k // group_size; zeros share the scales' [N, G] layout.
        if SCALE_PER_TILE:
            # The tile (first element k0) lies in one group: a [BLOCK_N] vector, broadcast on K.
            sz_ptrs = (offs_n * stride_sn + k0 // group_size)[None, :]
            s = tl.load(s_ptr + sz_ptrs)
            if HAS_ZEROS:
                z = tl.load(z_ptr + sz_ptrs).to(tl.float32)
            else:
                z = 8.0  # lowbit.INT4_ZERO_SYMMETRIC
        else:
            # Several groups in the tile: per element (k past K has no group: masked).
            sz_ptrs = offs_n[None, :] * stride_sn + (offs_k // group_size)[:, None]
            s = tl.load(s_ptr + sz_ptrs, mask=k_mask[:, None], other=0.0)
            if HAS_ZEROS:
                z = tl.load(z_ptr + sz_ptrs, mask=k_mask[:, None], other=0).to(tl.float32)
            else:
                z = 8.0
        return (q.to(tl.float32) - z) * s

    @triton.jit
    def _lowbit_tile_product(
        x_ptr, codes_ptr, p_ptr, z_ptr, pid, k_first, k_step, M, N, K, group_size,
        stride_xm, stride_xk, stride_cn, stride_ck, stride_pn,
        LUT: tl.constexpr, BITS: tl.constexpr, HAS_ZEROS: tl.constexpr,
        SCALE_PER_TILE: tl.constexpr, INT64_IDX: tl.constexpr, EVEN_K: tl.constexpr,
        BF16_MANUAL: tl.constexpr, DOT_PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # The (BLOCK_M, BLOCK_N) tile `pid` of x @ W.T in float32, over the K blocks kb = k_first,
        # k_first + k_step, ... W is decoded from `codes_ptr`: with LUT, w = p[row, code] (p the
        # codebook, row stride stride_pn, 0 for one per layer); else int4 with scales p and zeros
        # z ([N, G], row stride stride_pn). Returns it with its row and column offsets.
        offs_m, offs_n = tile_offsets(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        # Rows/columns past the edge wrap onto valid ones: loads stay in bounds without masks,
        # and those results are never stored. Masks only in the K tail.
        offs_xm = widen(offs_m % M, INT64_IDX)
        offs_wn = widen(offs_n % N, INT64_IDX)
        offs_kb = widen(tl.arange(0, BLOCK_K), INT64_IDX)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(k_first, tl.cdiv(K, BLOCK_K), k_step):
            offs_k = kb * BLOCK_K + offs_kb
            k_mask = offs_k < K
            x_ptrs = x_ptr + offs_xm[:, None] * stride_xm + offs_k[None, :] * stride_xk
            if EVEN_K:
                x = load_maybe_bf16(x_ptrs, None, False, BF16_MANUAL)
            else:
                x = load_maybe_bf16(x_ptrs, k_mask[None, :], True, BF16_MANUAL)
            q = _load_codes(codes_ptr, offs_k, k_mask, offs_wn, stride_cn, stride_ck, BITS,
                            not EVEN_K)
            if LUT:
                w = tl.load(p_ptr + offs_wn[None, :] * stride_pn + q)
            else:
                w = _int4_weights(q, p_ptr, z_ptr, kb * BLOCK_K, offs_k, k_mask, offs_wn,
                                  group_size, stride_pn, HAS_ZEROS, SCALE_PER_TILE)
            if not EVEN_K:
                # x is 0 there already; a 0 weight too keeps a non-finite entry out of the sum.
                w = tl.where(k_mask[:, None], w, 0.0)
            acc = tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PREC, out_dtype=tl.float32)
        return acc, widen(offs_m, INT64_IDX), widen(offs_n, INT64_IDX)

    @triton.jit
    def _store_result(acc, offs_m, offs_n, out_ptr, bias_ptr, ws_ptr, M, N, stride_om, stride_on,
                      stride_ws_s, stride_ws_m, HAS_BIAS: tl.constexpr, BF16_MANUAL: tl.constexpr,
                      SPLIT_K: tl.constexpr):
        # SPLIT_K == 1: bias and cast, fused. Else this program's partial sum into its own
        # workspace slice (every element of slices 0..SPLIT_K-1 inside [M, N] is written).
        if SPLIT_K == 1:
            bias_epilogue_store(acc, out_ptr, bias_ptr, offs_m, offs_n, M, N, stride_om, stride_on,
                                HAS_BIAS, BF16_MANUAL)
        else:
            mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
            ws_ptrs = (ws_ptr + tl.program_id(1) * stride_ws_s + offs_m[:, None] * stride_ws_m
                       + offs_n[None, :])
            tl.store(ws_ptrs, acc, mask=mask)

    def _scale_per_tile(args):
        # The K tile lies inside one int4 group (see _int4_weights).
        gs = args["group_size"]
        return gs % args["BLOCK_K"] == 0 or gs == args["K"]

    @triton.heuristics({"SCALE_PER_TILE": _scale_per_tile})
    @even_k_heuristic
    @triton.jit
    def _dequant_mm_int4_kernel(
        x_ptr, q_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, ws_ptr,
        M, N, K, M_BUCKET, group_size,
        stride_xm, stride_xk, stride_qn, stride_qk, stride_sn, stride_om, stride_on,
        stride_ws_s, stride_ws_m,
        HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr,
        BF16_MANUAL: tl.constexpr, DOT_PREC: tl.constexpr, EVEN_K: tl.constexpr,
        SCALE_PER_TILE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        acc, offs_m, offs_n = _lowbit_tile_product(
            x_ptr, q_ptr, s_ptr, z_ptr, tl.program_id(0), tl.program_id(1), SPLIT_K, M, N, K,
            group_size, stride_xm, stride_xk, stride_qn, stride_qk, stride_sn,
            False, 4, HAS_ZEROS, SCALE_PER_TILE, INT64_IDX, EVEN_K, BF16_MANUAL, DOT_PREC,
            BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
        _store_result(acc, offs_m, offs_n, out_ptr, bias_ptr, ws_ptr, M, N, stride_om, stride_on,
                      stride_ws_s, stride_ws_m, HAS_BIAS, BF16_MANUAL, SPLIT_K)

    @even_k_heuristic
    @triton.jit
    def _lut_mm_kernel(
        x_ptr, idx_ptr, cb_ptr, bias_ptr, out_ptr, ws_ptr,
        M, N, K, M_BUCKET,
        stride_xm, stride_xk, stride_in, stride_ik, stride_cbn, stride_om, stride_on,
        stride_ws_s, stride_ws_m,
        BITS: tl.constexpr, HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr,
        BF16_MANUAL: tl.constexpr, DOT_PREC: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        acc, offs_m, offs_n = _lowbit_tile_product(
            x_ptr, idx_ptr, cb_ptr, cb_ptr, tl.program_id(0), tl.program_id(1), SPLIT_K, M, N, K,
            K, stride_xm, stride_xk, stride_in, stride_ik, stride_cbn,
            True, BITS, False, False, INT64_IDX, EVEN_K, BF16_MANUAL, DOT_PREC,
            BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
        _store_result(acc, offs_m, offs_n, out_ptr, bias_ptr, ws_ptr, M, N, stride_om, stride_on,
                      stride_ws_s, stride_ws_m, HAS_BIAS, BF16_MANUAL, SPLIT_K)

    def _autotuned(kernel, format_key):
        """(GEMM, split-K) autotuners of one kernel; ``format_key`` names the arguments besides
        AUTOTUNE_KEY whose value changes the best tile (int4 group size, code width)."""
        # Shared memory: x's tile in x's dtype (2 bytes when unknown) plus at most a byte per
        # weight element, plus the decoded tile in x's dtype.
        prune = {"early_config_prune": config_pruner("x_ptr", 2, b_converted=True)}
        key = AUTOTUNE_KEY + format_key
        return tuple(
            triton.autotune(configs=tile_configs(tiles, split_k=True, interpreter_tile=interp),
                            key=key, prune_configs_by=prune)(kernel)
            for tiles, interp in ((_GEMM_TILES, _INTERPRETER_GEMM_TILE),
                                  (_SPLITK_TILES, _INTERPRETER_SPLITK_TILE)))

    _INT4_KERNELS = _autotuned(_dequant_mm_int4_kernel, ["group_size"])
    _LUT_KERNELS = _autotuned(_lut_mm_kernel, ["BITS"])


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

def _launch(kernels, x, codes, n, bias, tensors, ints, strides, **meta):
    """Run one op's kernel (``kernels``: its GEMM and split-K autotuners) on x [M, K] with weight
    codes [N, ...]: the GEMM, or split-K plus the reduction. ``tensors``, ``ints`` and
    ``strides`` are the op's own arguments (after the codes, after K, after the codes' strides),
    ``meta`` its own constexprs."""
    M, K = x.shape
    out = torch.empty((M, n), dtype=x.dtype, device=x.device)
    int64_idx = needs_int64_index(x.numel(), codes.numel(), M * n * _MAX_SPLIT_K,
                                  *(t.numel() for t in tensors))
    bf16_bits = bf16_manual(x.dtype)
    # float32 x: exact float32 products (no TF32); bfloat16 under the interpreter is dotted in
    # float32 too. The flag does not apply to 16-bit dots.
    dot_prec = "ieee" if (x.dtype == torch.float32 or bf16_bits) else "tf32"
    if use_split_k(M, n, K, x.device):
        kernel = kernels[1]
        ws = torch.empty((_MAX_SPLIT_K, M, n), dtype=torch.float32, device=x.device)
    else:  # the GEMM never touches the workspace: `out` stands in for it
        kernel, ws = kernels[0], out
    chosen = []
    with launch_device(x):
        kernel[tile_grid(M, n, split_k=True, chosen_split_k=chosen)](
            x, codes, *tensors, bias if bias is not None else out, out, ws,
            M, n, K, m_bucket(M), *ints,
            x.stride(0), x.stride(1), codes.stride(0), codes.stride(1), *strides,
            out.stride(0), out.stride(1), ws.stride(0), ws.stride(1),
            HAS_BIAS=bias is not None, INT64_IDX=int64_idx, BF16_MANUAL=bf16_bits,
            DOT_PREC=dot_prec, **meta,
        )
        if chosen[-1] > 1:
            reduce_splitk(ws, out, chosen[-1], None, None, bias, int64_idx)
    return out


def dequant_mm_int4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                    zeros: torch.Tensor | None, group_size: int,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ lowbit.dequantize_int4(qweight, scales, zeros, group_size, K).T + bias`` -> [M, N]
    in x.dtype.

    x float16/bfloat16/float32 [M, K] and qweight uint8 [N, ceil(K / 2)] (any strides); scales
    float32 [N, K / group_size] and zeros uint8 of the same shape (or None: zero point 8), both
    contiguous; bias [N] contiguous float (any float dtype) or None.
    """
    require_triton("dequant_mm_int4")
    require_float(x)
    return _launch(_INT4_KERNELS, x, qweight, qweight.shape[0], bias,
                   (scales, zeros if zeros is not None else scales), (group_size,),
                   (scales.stride(0),), HAS_ZEROS=zeros is not None)


def lut_mm(x: torch.Tensor, indices: torch.Tensor, codebook: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ lowbit.dequantize_codebook(indices, codebook, K).T + bias`` -> [M, N] in x.dtype.

    x float16/bfloat16/float32 [M, K] and indices uint8 [N, ceil(K * b / 8)] (any strides);
    codebook float32 [1 or N, 2^b] (b = 2, 3, 4), contiguous; bias [N] contiguous float or None.
    """
    require_triton("lut_mm")
    require_float(x)
    bits = lowbit.bits_from_codebook(codebook.shape[1])
    n = indices.shape[0]
    per_row = codebook.shape[0] == n and n > 1
    return _launch(_LUT_KERNELS, x, indices, n, bias, (codebook,), (),
                   (codebook.stride(0) if per_row else 0,), BITS=bits)
