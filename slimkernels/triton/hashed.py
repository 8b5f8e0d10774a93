"""Hashed weight sharing in Triton: ``hashed_linear`` (``out = x @ W.T + bias``) and ``hashed_weight``
(W itself), W [N, K] the virtual weight of a bucket array under a seed, as specified in
``slimkernels.backends.hashed`` (the hash, the row windows, the sign).

hashed_linear: one program per (BLOCK_M rows of x, BLOCK_N outputs). For each BLOCK_K step it computes
the hashes of its [BLOCK_N, BLOCK_K] weight tile in registers (int64 lanes holding 32-bit values:
the multiplications by the hash constants are split in 16-bit halves so nothing overflows, the same
arithmetic as the torch reference), gathers the buckets (a small array: it stays in cache), applies
the signs and multiplies with ``tl.dot`` in float32 (IEEE, no TF32). x is read as float32 (the launcher
converts float16/bfloat16 x), the result is float32, cast to x.dtype by the launcher. Not yet timed on
a GPU; under ``TRITON_INTERPRET=1`` it is tested on small shapes.
"""

from __future__ import annotations

import torch

from ..backends.hashed import HASH_MUL1, HASH_MUL2, HASH_WINDOW
from ._common import HAVE_TRITON, launch_device, require_triton, tl, triton

__all__ = ["hashed_linear", "hashed_weight"]

BLOCK_M, BLOCK_N, BLOCK_K = 16, 32, 32

if HAVE_TRITON:

    @triton.jit
    def _mul32(h, C: tl.constexpr):
        # (h * C) mod 2**32 for h in [0, 2**32) held in int64: C in 16-bit halves, no product past 2**48
        return (h * (C & 0xFFFF) + (((h * (C >> 16)) & 0xFFFF) << 16)) & 0xFFFFFFFF

    @triton.jit
    def _weight_tile(b_ptr, rn, rk, N, K, B, S, seed, MUL1: tl.constexpr, MUL2: tl.constexpr):
        """The virtual weight's [len(rn), len(rk)] tile in float32 (zero outside N x K)."""
        rn64 = rn.to(tl.int64)
        i = (rn64[:, None] * K + rk[None, :].to(tl.int64)) & 0xFFFFFFFF
        h = i ^ seed
        h = h ^ (h >> 16)
        h = _mul32(h, MUL1)
        h = h ^ (h >> 13)
        h = _mul32(h, MUL2)
        h = h ^ (h >> 16)
        base = (rn64 * B) // N
        bucket = (base[:, None] + ((h * S) >> 32)) % B
        inside = (rn[:, None] < N) & (rk[None, :] < K)
        v = tl.load(b_ptr + bucket, mask=inside, other=0.0)
        return tl.where((h & 1) == 1, -v, v)

    @triton.jit
    def _hashed_linear_kernel(x_ptr, b_ptr, bias_ptr, y_ptr, M, N, K, stride_xm, B, S, seed,
                              HAS_BIAS: tl.constexpr, MUL1: tl.constexpr, MUL2: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :],
                         mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
            w = _weight_tile(b_ptr, rn, rk, N, K, B, S, seed, MUL1, MUL2)
            acc += tl.dot(xt, tl.trans(w), input_precision="ieee")
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def _hashed_weight_kernel(b_ptr, out_ptr, N, K, B, S, seed, MUL1: tl.constexpr, MUL2: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        w = _weight_tile(b_ptr, rn, rk, N, K, B, S, seed, MUL1, MUL2)
        tl.store(out_ptr + rn[:, None].to(tl.int64) * K + rk[None, :], w, mask=(rn[:, None] < N) & (rk[None, :] < K))


def hashed_linear(x: torch.Tensor, buckets: torch.Tensor, seed: int, out_features: int,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (any row stride) @ W.T + bias -> [M, out_features] in x.dtype."""
    require_triton("hashed.hashed_linear")
    m, k = x.shape
    xf = x if x.dtype == torch.float32 else x.float()
    b = buckets.float().contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    y = torch.empty((m, out_features), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(out_features, BLOCK_N))
    with launch_device(x):
        _hashed_linear_kernel[grid](xf, b, bias32 if bias32 is not None else b, y, m, out_features, k,
                                    xf.stride(0) if m > 1 else k, b.numel(), min(b.numel(), HASH_WINDOW), seed,
                                    HAS_BIAS=bias is not None, MUL1=HASH_MUL1, MUL2=HASH_MUL2,
                                    BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def hashed_weight(buckets: torch.Tensor, seed: int, out_features: int, in_features: int) -> torch.Tensor:
    """The virtual weight [out_features, in_features] in float32."""
    require_triton("hashed.hashed_weight")
    b = buckets.float().contiguous()
    out = torch.empty((out_features, in_features), dtype=torch.float32, device=b.device)
    grid = (triton.cdiv(out_features, BLOCK_N), triton.cdiv(in_features, BLOCK_K))
    with launch_device(b):
        _hashed_weight_kernel[grid](b, out, out_features, in_features, b.numel(), min(b.numel(), HASH_WINDOW), seed,
                                    MUL1=HASH_MUL1, MUL2=HASH_MUL2, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out
