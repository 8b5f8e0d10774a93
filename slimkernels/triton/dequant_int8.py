"""W8A16: fused dequantize-matmul in Triton, ``out = x @ (qweight * scales[:, None]).T + bias``.

x float16/bfloat16/float32 [M, K], qweight int8 [N, K] (row-major, the linear layer's weight as
stored), scales float32 [N] (one per output channel), bias [N] (any float dtype) or None; the result
is [M, N] in x.dtype.

Each program loads an int8 weight tile, converts it to x's dtype (every int8 value is exact in
float16 and bfloat16) and feeds it to ``tl.dot`` with the activation tile and a float32 accumulator
(float32 x: ``input_precision="ieee"``, no TF32). The scale is per output channel, so it factors
out of the K sum: the accumulator is multiplied by ``scales[n]`` once, in the epilogue, then the bias
is added (float32) and the result cast to x.dtype.

Two GPU paths, one contract:

* ``_dequant_mm_int8_kernel``: one program per (BLOCK_M, BLOCK_N) output tile, grouped tile order,
  epilogue fused. Autotuned per (M bucket, N, K, dtypes).
* ``_dequant_mm_int8_splitk_kernel``: for decode (M <= 16) when N is too small to give every SM a
  tile, K is split over SPLIT_K programs. Each writes its float32 partial sum to its own slice of a
  [SPLIT_K, M, N] workspace (no atomics: float addition is not associative and atomics would make
  the result depend on timing); ``_common``'s split-K reduction kernel sums the slices in a fixed
  order and applies the epilogue, so results are deterministic. ``slimkernels.triton.set_split_k`` forces or
  forbids it.

Under the interpreter (``TRITON_INTERPRET=1``) bfloat16 tensors are numpy uint16 bit patterns and
its ``tl.dot`` would multiply the bit patterns, so for bfloat16 x the interpreter path moves the
bits up to float32 (exact) and dots in float32 (each product of a bfloat16 and an int8 is exact in
float32, as on the GPU); the final float32 -> bfloat16 cast is done on the bits (the interpreter's
own cast truncates). On the GPU these flags are off and the native bfloat16 path runs.

Inputs are validated, non-empty and laid out by the op and dispatch (slimkernels.ops, backends). Triton is imported guarded
(in ``_common``), so importing this module never fails; the launcher raises ``RuntimeError``
without it.
"""

from __future__ import annotations

import torch

from ._common import (
    AUTOTUNE_KEY, HAVE_TRITON, bf16_manual, config_pruner, launch_device,
    m_bucket, needs_int64_index, reduce_splitk, require_float, require_triton, tile_configs,
    tile_grid, tl, triton, use_split_k,
)

if HAVE_TRITON:
    from ._common import dequant_epilogue_store, even_k_heuristic, tile_product

__all__ = ["dequant_mm_int8"]


# ---------------------------------------------------------------------------------------------
# Autotune configurations: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages[, SPLIT_K])
# ---------------------------------------------------------------------------------------------

_GEMM_TILES = [
    # M <= 16 (decode): the time is reading the int8 weights (N*K bytes, half of bf16's), so
    # narrow N tiles give many CTAs to stream them and deep K tiles give few, long loads per
    # CTA with several stages in flight. BLOCK_N = 16 doubles the CTA count of 32 for N ~ 4096.
    (16, 16, 256, 1, 2, 4), (16, 16, 512, 1, 4, 3), (16, 32, 256, 1, 4, 4),
    (16, 32, 512, 1, 4, 3), (16, 64, 128, 1, 4, 4), (16, 64, 256, 1, 4, 3),
    (16, 128, 128, 1, 4, 4),
    # 17 <= M <= 128: still mostly weight bytes; taller tiles reuse each weight tile more.
    # Activation tiles are 16-bit here (twice int8's bytes), so K tiles are shallower than the
    # int8 GEMM's.
    (32, 64, 128, 8, 4, 4), (32, 128, 64, 8, 4, 4), (32, 128, 128, 8, 4, 3),
    (64, 64, 128, 8, 4, 4), (64, 128, 64, 8, 4, 4), (64, 128, 128, 8, 4, 3),
    (64, 256, 64, 8, 8, 3),
    # M >= 256 up to compute-bound M >= 2048: big tensor-core tiles, deep pipelines,
    # grouped tile order for L2 reuse of both operands.
    (128, 128, 64, 8, 4, 4), (128, 128, 64, 8, 8, 4), (128, 256, 64, 8, 8, 3),
    (256, 128, 64, 8, 8, 3), (128, 128, 32, 8, 4, 5),
]

_SPLITK_TILES = [
    (16, 32, 256, 1, 4, 4, 2), (16, 32, 256, 1, 4, 4, 4), (16, 64, 128, 1, 4, 4, 4),
    (16, 64, 256, 1, 4, 3, 4), (16, 64, 128, 1, 4, 4, 8), (16, 128, 128, 1, 4, 4, 8),
]

#: Largest SPLIT_K among the split-K configs: the workspace is sized for it.
_MAX_SPLIT_K = max(t[6] for t in _SPLITK_TILES)

# ---------------------------------------------------------------------------------------------
# Kernels (the split-K reduction and epilogue kernel is _common's)
# ---------------------------------------------------------------------------------------------

if HAVE_TRITON:

    @triton.autotune(
        configs=tile_configs(_GEMM_TILES),
        key=AUTOTUNE_KEY,
        # Shared memory: x's tile in x's dtype (2 bytes when unknown) plus the int8 weight tile
        # per stage, plus (on some paths) the weight tile converted to x's dtype.
        prune_configs_by={"early_config_prune": config_pruner("x_ptr", 2, b_converted=True)},
    )
    @even_k_heuristic
    @triton.jit
    def _dequant_mm_int8_kernel(
        x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr,
        M, N, K, M_BUCKET,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
        HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr, BF16_MANUAL: tl.constexpr,
        DOT_PREC: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # acc = x @ float(w).T in float32; the per-channel scale factors out of the K sum and is
        # applied once, in the epilogue.
        acc, offs_m, offs_n = tile_product(
            x_ptr, w_ptr, tl.program_id(0), 0, 1, M, N, K,
            stride_xm, stride_xk, stride_wn, stride_wk,
            tl.float32, INT64_IDX, EVEN_K, BF16_MANUAL, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_K,
            GROUP_M)
        dequant_epilogue_store(acc, out_ptr, s_ptr, s_ptr, bias_ptr, offs_m, offs_n, M, N,
                               stride_om, stride_on, False, HAS_BIAS, BF16_MANUAL)

    @triton.autotune(configs=tile_configs(_SPLITK_TILES, split_k=True), key=AUTOTUNE_KEY)
    @even_k_heuristic
    @triton.jit
    def _dequant_mm_int8_splitk_kernel(
        x_ptr, w_ptr, ws_ptr,
        M, N, K, M_BUCKET,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_ws_s, stride_ws_m,
        INT64_IDX: tl.constexpr, BF16_MANUAL: tl.constexpr, DOT_PREC: tl.constexpr,
        EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        # ws[pid_k] = the unscaled float32 partial product over K blocks pid_k, pid_k + SPLIT_K,
        # ... (every element of slices 0..SPLIT_K-1 inside [M, N] is written, so no zeroing).
        pid_k = tl.program_id(1)
        # Row-major tile order (GROUP_M = 1): tiles are few here.
        acc, offs_m, offs_n = tile_product(
            x_ptr, w_ptr, tl.program_id(0), pid_k, SPLIT_K, M, N, K,
            stride_xm, stride_xk, stride_wn, stride_wk,
            tl.float32, INT64_IDX, EVEN_K, BF16_MANUAL, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_K, 1)
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        ws_ptrs = ws_ptr + pid_k * stride_ws_s + offs_m[:, None] * stride_ws_m + offs_n[None, :]
        tl.store(ws_ptrs, acc, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

def dequant_mm_int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ (qweight * scales[:, None]).T + bias`` -> [M, N] in x.dtype.

    x float16/bfloat16/float32 [M, K] (any strides), qweight int8 [N, K] (any strides),
    scales float32 [N] contiguous, bias [N] contiguous float (any float dtype) or None.
    Accumulates in float32; the scale and bias are applied in float32 once per output element.
    """
    require_triton("dequant_mm_int8")
    require_float(x)
    M, K = x.shape
    N = qweight.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)

    int64_idx = needs_int64_index(x.numel(), qweight.numel(), M * N * _MAX_SPLIT_K)
    bucket = m_bucket(M)
    bf16_bits = bf16_manual(x.dtype)
    # float32 x: exact float32 products (no TF32). 16-bit x: the precision flag does not apply.
    # (bfloat16 under the interpreter is dotted in float32: "ieee" too.)
    dot_prec = "ieee" if (x.dtype == torch.float32 or bf16_bits) else "tf32"
    with launch_device(x):
        if use_split_k(M, N, K, x.device):
            ws = torch.empty((_MAX_SPLIT_K, M, N), dtype=torch.float32, device=x.device)
            chosen = []
            _dequant_mm_int8_splitk_kernel[tile_grid(M, N, split_k=True, chosen_split_k=chosen)](
                x, qweight, ws, M, N, K, bucket,
                x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1),
                ws.stride(0), ws.stride(1),
                INT64_IDX=int64_idx, BF16_MANUAL=bf16_bits, DOT_PREC=dot_prec,
            )
            return reduce_splitk(ws, out, chosen[-1], scales, None, bias, int64_idx)

        _dequant_mm_int8_kernel[tile_grid(M, N)](
            x, qweight, scales, bias if bias is not None else scales, out,
            M, N, K, bucket,
            x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1),
            out.stride(0), out.stride(1),
            HAS_BIAS=bias is not None, INT64_IDX=int64_idx, BF16_MANUAL=bf16_bits,
            DOT_PREC=dot_prec,
        )
    return out
