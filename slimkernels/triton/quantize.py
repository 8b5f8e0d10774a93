"""Dynamic per-token (per-row) symmetric int8 quantization in Triton.

For each row of x [M, K] (float32/float16/bfloat16), in float32:

* amax = max |x|;
* amax not finite (a NaN or an Inf in the row): scale = NaN and the q row is 0;
* amax == 0: scale = 1 and q = 0;
* otherwise scale = amax / 127 and q = clamp(round_half_even(x / scale), -127, 127).

Bit-exact against ``torch.round(x.float() / scale)``: both divisions are IEEE round-to-nearest
(``tl.math.div_rn``; Triton's plain ``/`` is an approximate division on NVIDIA), and rounding half to
even uses the float32 "magic number" trick ``(v + 1.5 * 2**23) - 1.5 * 2**23``, exact for
|v| < 2**22 (here |v| <= 127 + a rounding error), which works on the GPU and in the interpreter
alike (libdevice's rint does not exist in the interpreter).

One program per row; a row that fits one block is read once, a longer one twice (amax, then q).
"""

from __future__ import annotations

import torch

from . import interpreting
from ._common import (
    HAVE_TRITON, NO_FP_FUSION, bf16_manual, launch_device, needs_int64_index, require_float,
    require_triton, tl, triton,
)

if HAVE_TRITON:
    from ._common import load_maybe_bf16, widen

__all__ = ["quantize_per_token_int8"]

if HAVE_TRITON:

    @triton.jit
    def _load_f32(ptrs, mask, BF16_MANUAL: tl.constexpr):
        # Masked load as float32 (bfloat16 moved up on the bits under the interpreter, whose own
        # cast mangles bfloat16 subnormals; the GPU cast is exact).
        return load_maybe_bf16(ptrs, mask, True, BF16_MANUAL).to(tl.float32)

    @triton.jit
    def _quantize_block(x, div, bad):
        # clamp(rint(x / div), -127, 127) as int8, 0 in bad rows.
        v = tl.math.div_rn(x, div)
        r = (v + 12582912.0) - 12582912.0
        r = tl.minimum(tl.maximum(r, -127.0), 127.0)
        r = tl.where(bad, 0.0, r)
        return r.to(tl.int8)

    @triton.jit
    def _quantize_per_token_int8_kernel(
        x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm,
        INT64_IDX: tl.constexpr, ONE_BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
        BF16_MANUAL: tl.constexpr,
    ):
        row = widen(tl.program_id(0), INT64_IDX)
        x_row = x_ptr + row * stride_xm
        q_row = q_ptr + row * stride_qm
        offs = tl.arange(0, BLOCK_K)

        # Pass 1: amax over |x| with NaNs left out (max ignores NaN on the GPU but propagates it
        # in the interpreter), plus whether any NaN was seen.
        if ONE_BLOCK:
            mask = offs < K
            x = _load_f32(x_row + offs, mask, BF16_MANUAL)
            isnan = x != x
            amax = tl.max(tl.where(isnan, 0.0, tl.abs(x)), axis=0)
            nans = tl.max(isnan.to(tl.int32), axis=0)
        else:
            amax_acc = tl.zeros([BLOCK_K], dtype=tl.float32)
            nan_acc = tl.zeros([BLOCK_K], dtype=tl.int32)
            for k0 in range(0, K, BLOCK_K):
                xk = _load_f32(x_row + k0 + offs, k0 + offs < K, BF16_MANUAL)
                isnan_k = xk != xk
                amax_acc = tl.maximum(amax_acc, tl.where(isnan_k, 0.0, tl.abs(xk)))
                nan_acc = tl.maximum(nan_acc, isnan_k.to(tl.int32))
            amax = tl.max(amax_acc, axis=0)
            nans = tl.max(nan_acc, axis=0)

        bad = (nans > 0) | (amax > 3.4028234663852886e38)  # NaN or Inf in the row
        scale = tl.math.div_rn(amax, 127.0)
        scale = tl.where(amax == 0.0, 1.0, scale)
        scale = tl.where(bad, float("nan"), scale)
        # A dummy finite divisor for bad rows keeps the arithmetic below NaN-free; q is 0 there.
        div = tl.where(bad, 1.0, scale)
        tl.store(s_ptr + row, scale)

        # Pass 2: q = clamp(rint(x / scale), -127, 127).
        if ONE_BLOCK:
            tl.store(q_row + offs, _quantize_block(x, div, bad), mask=mask)
        else:
            for k0 in range(0, K, BLOCK_K):
                mk = k0 + offs < K
                xk = _load_f32(x_row + k0 + offs, mk, BF16_MANUAL)
                tl.store(q_row + k0 + offs, _quantize_block(xk, div, bad), mask=mk)


def _block_and_warps(K: int):
    if interpreting():
        # Small blocks so moderate test rows exercise the two-pass loop.
        return min(triton.next_power_of_2(K), 128), 1
    block = min(triton.next_power_of_2(K), 8192)
    warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    return block, warps


def quantize_per_token_int8(x: torch.Tensor):
    """Per-row symmetric int8 quantization: returns (q int8 [M, K], scale float32 [M])."""
    require_triton("quantize")
    require_float(x)
    M, K = x.shape
    q = torch.empty((M, K), dtype=torch.int8, device=x.device)
    scale = torch.empty((M,), dtype=torch.float32, device=x.device)
    block, warps = _block_and_warps(K)
    with launch_device(x):
        _quantize_per_token_int8_kernel[(M,)](
            x, q, scale, K, x.stride(0), q.stride(0),
            INT64_IDX=needs_int64_index(x.numel()), ONE_BLOCK=K <= block, BLOCK_K=block,
            BF16_MANUAL=bf16_manual(x.dtype), num_warps=warps, **NO_FP_FUSION,
        )
    return q, scale
