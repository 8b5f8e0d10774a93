"""int8 x int8 -> int32 GEMM in Triton, with an optional fused dequantizing epilogue.

``out = a @ b.T`` for a int8 [M, K] and b int8 [N, K] (both row-major, so the weight of a linear
layer is used as stored). The accumulator is int32 and exact: ``tl.dot`` on int8 operands with an
int32 accumulator gives the int64 result taken mod 2**32 for every input in [-128, 127].

With a float ``out_dtype`` the epilogue computes, per element and in float32,
``((acc * a_scale[m]) * b_scale[n]) + bias[n]`` and then casts. FMA contraction is switched off for
these kernels (``enable_fp_fusion=False``) so the float32 result is bit-identical to the same
expression evaluated in torch. The float32 -> bfloat16 cast is round-to-nearest-even (native on the
GPU; done on the bits under the interpreter, whose own cast truncates).

Two GPU paths, one contract:

* ``_int8_mm_kernel``: one program per (BLOCK_M, BLOCK_N) output tile, grouped ("swizzled")
  tile order for L2 reuse, epilogue fused. Autotuned per (M bucket, N, K, dtypes).
* ``_int8_mm_splitk_kernel``: for small M (decode, M <= 16) and an N too small to give every SM a
  tile, K is split over SPLIT_K programs that ``atomic_add`` their int32 partial sums into a zeroed
  int32 buffer (integer addition is associative, so the result stays exact and deterministic); a
  small epilogue kernel (``_common``'s split-K reduction, over that one buffer) then applies the
  scales. ``slimkernels.triton.set_split_k`` forces or forbids it.

Inputs are validated, non-empty and contiguous (slimkernels.ops and backends dispatch). Triton is imported
guarded (in ``_common``), so importing this module never fails; the launcher raises
``RuntimeError`` without it.
"""

from __future__ import annotations

import torch

from ._common import (
    AUTOTUNE_KEY, HAVE_TRITON, NO_FP_FUSION, bf16_manual, config_pruner,
    launch_device, m_bucket, needs_int64_index, reduce_splitk, require_triton, tile_configs,
    tile_grid, tl, triton, use_split_k,
)

if HAVE_TRITON:
    from ._common import dequant_epilogue_store, even_k_heuristic, store_tile, tile_product

__all__ = ["int8_mm"]


_FLOAT_OUT = (torch.float32, torch.float16, torch.bfloat16)

# ---------------------------------------------------------------------------------------------
# Autotune configurations: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages[, SPLIT_K])
# ---------------------------------------------------------------------------------------------

_GEMM_TILES = [
    # M <= 16 (decode; torch._int_mm refuses M <= 16). Weight streaming: the time is reading
    # b, so narrow N tiles give many CTAs and deep K tiles give long, few loads per CTA.
    (16, 32, 256, 1, 4, 4), (16, 64, 128, 1, 4, 4), (16, 64, 256, 1, 4, 3),
    (16, 128, 128, 1, 4, 4), (16, 128, 256, 1, 8, 3),
    # 17 <= M <= 128: still mostly weight bytes; taller tiles reuse each b tile more.
    (32, 64, 128, 8, 4, 4), (32, 128, 128, 8, 4, 4), (64, 64, 128, 8, 4, 4),
    (64, 128, 128, 8, 4, 4), (64, 256, 128, 8, 8, 3),
    # M >= 256 up to compute-bound M >= 2048: big tensor-core tiles, deep pipelines,
    # grouped tile order for L2 reuse of both operands.
    (128, 128, 64, 8, 4, 4), (128, 128, 128, 8, 4, 4), (128, 128, 128, 8, 8, 3),
    (128, 256, 64, 8, 8, 4), (128, 256, 128, 8, 8, 3), (256, 128, 128, 8, 8, 3),
]

_SPLITK_TILES = [
    (16, 32, 256, 1, 4, 4, 2), (16, 64, 128, 1, 4, 4, 2), (16, 64, 128, 1, 4, 4, 4),
    (16, 64, 256, 1, 4, 3, 4), (16, 64, 128, 1, 4, 4, 8), (16, 128, 128, 1, 4, 4, 4),
]

# ---------------------------------------------------------------------------------------------
# Kernels (the split-K epilogue is _common's reduction kernel with SPLIT_K = 1)
# ---------------------------------------------------------------------------------------------

if HAVE_TRITON:

    @triton.autotune(
        configs=tile_configs(_GEMM_TILES),
        key=AUTOTUNE_KEY,
        prune_configs_by={"early_config_prune": config_pruner("a_ptr")},
    )
    @even_k_heuristic
    @triton.jit
    def _int8_mm_kernel(
        a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, bias_ptr,
        M, N, K, M_BUCKET,
        stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
        HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, INT64_IDX: tl.constexpr,
        BF16_MANUAL: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        acc, offs_m, offs_n = tile_product(
            a_ptr, b_ptr, tl.program_id(0), 0, 1, M, N, K,
            stride_am, stride_ak, stride_bn, stride_bk,
            tl.int32, INT64_IDX, EVEN_K, False, None, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
        if HAS_SCALE:
            dequant_epilogue_store(acc, c_ptr, as_ptr, bs_ptr, bias_ptr, offs_m, offs_n, M, N,
                                   stride_cm, stride_cn, True, HAS_BIAS, BF16_MANUAL)
        else:
            store_tile(c_ptr, acc, offs_m, offs_n, M, N, stride_cm, stride_cn)

    @triton.autotune(
        configs=tile_configs(_SPLITK_TILES, split_k=True),
        key=AUTOTUNE_KEY,
        reset_to_zero=["c_ptr"],  # partial sums are atomically added: zero between timing runs
    )
    @even_k_heuristic
    @triton.jit
    def _int8_mm_splitk_kernel(
        a_ptr, b_ptr, c_ptr,
        M, N, K, M_BUCKET,
        stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
        INT64_IDX: tl.constexpr, EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        # c (int32, zeroed by the caller) += the partial product over K blocks pid_k, pid_k +
        # SPLIT_K, pid_k + 2 * SPLIT_K, ... (integer addition is associative: exact and
        # deterministic whatever the order of the atomics).
        # Row-major tile order (GROUP_M = 1): tiles are few here.
        acc, offs_m, offs_n = tile_product(
            a_ptr, b_ptr, tl.program_id(0), tl.program_id(1), SPLIT_K, M, N, K,
            stride_am, stride_ak, stride_bn, stride_bk,
            tl.int32, INT64_IDX, EVEN_K, False, None, BLOCK_M, BLOCK_N, BLOCK_K, 1)
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.atomic_add(c_ptrs, acc, mask=mask, sem="relaxed")


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

def int8_mm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor | None = None,
            b_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
            out_dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """``a @ b.T`` for int8 a [M, K] and int8 b [N, K].

    out_dtype torch.int32: the raw int32 accumulator (exact, mod 2**32).
    out_dtype float32/float16/bfloat16: ``((acc * a_scale[:, None]) * b_scale[None, :]) + bias``
    in float32, then cast; a_scale float32 [M], b_scale float32 [N], bias float32 [N] or None.
    """
    require_triton("int8_mm")
    fused = out_dtype != torch.int32
    if fused:
        if out_dtype not in _FLOAT_OUT:
            raise TypeError(f"out_dtype must be torch.int32, float32, float16 or bfloat16, "
                            f"got {out_dtype}")
        if a_scale is None or b_scale is None:
            raise ValueError("a_scale and b_scale are required for a float out_dtype")
    M, K = a.shape
    N = b.shape[0]
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)

    int64_idx = needs_int64_index(a.numel(), b.numel(), M * N)
    bucket = m_bucket(M)
    with launch_device(a):
        if use_split_k(M, N, K, a.device):
            acc = out.zero_() if not fused else torch.zeros((M, N), dtype=torch.int32,
                                                            device=a.device)
            _int8_mm_splitk_kernel[tile_grid(M, N, split_k=True)](
                a, b, acc, M, N, K, bucket,
                a.stride(0), a.stride(1), b.stride(0), b.stride(1), acc.stride(0), acc.stride(1),
                INT64_IDX=int64_idx, **NO_FP_FUSION,
            )
            if fused:
                reduce_splitk(acc, out, 1, b_scale, a_scale, bias, int64_idx, **NO_FP_FUSION)
            return out

        # Unused pointer arguments get a valid tensor (the output) as a placeholder.
        _int8_mm_kernel[tile_grid(M, N)](
            a, b, out,
            a_scale if fused else out, b_scale if fused else out,
            bias if (fused and bias is not None) else out,
            M, N, K, bucket,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
            HAS_SCALE=fused, HAS_BIAS=fused and bias is not None, INT64_IDX=int64_idx,
            BF16_MANUAL=bf16_manual(out_dtype), **NO_FP_FUSION,
        )
    return out
