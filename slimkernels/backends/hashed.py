"""Implementations of the hashed family (HashedNets weight sharing: hashed_linear, hashed_weight,
hashed_bucket_grad): reference (the spec: the hash in torch, the virtual weight materialized, one
float32 matmul), native CPU (AVX-512 / AVX2 / scalar: hashes in registers, never materialized) and
Triton. Inputs arrive validated and non-empty (see backends/__init__.py).

The hash (csrc/include/slim/hashed.h says the same, and the tests check both agree bit for bit): the
virtual weight W [N, K] has W[n, k] = sign * buckets[bucket] with, for the flat index
i = (n * K + k) mod 2**32 and a seed in [0, 2**32),

    h = fmix32(i ^ seed)     murmur3's finalizer: h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13;
                             h *= 0xC2B2AE35; h ^= h >> 16 (mod 2**32)
    bucket = (base(n) + ((h * S) >> 32)) mod B
                             S = min(B, HASH_WINDOW): row n's entries spread uniformly (the high bits
                             of h, Lemire's range reduction) over a window of S buckets starting at
                             base(n) = floor(n * B / N), wrapping around
    sign = +1 if h is even, else -1.

The window keeps the buckets a row reads in L1 (slim/hashed.h says why and measures it); consecutive
rows' windows overlap, so each bucket is still shared by about N * K / B entries of ~S * N / B rows.
"""
from typing import Tuple

import torch

from .. import _native
from . import register, row_stride
from ._common import cpu_isa, f32, ptr, threads
from .quantize import ALL_DEVICES

MASK32 = 0xFFFFFFFF
HASH_MUL1, HASH_MUL2 = 0x85EBCA6B, 0xC2B2AE35
# Up to this many rows of x the native CPU kernel runs fused (the weight decoded a row at a time, in
# cache); above it, materializing W once (natively) and one BLAS GEMM wins.
FUSED_MAX_M = 16
HASH_WINDOW = 4096  # kHashWindow of slim/hashed.h


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2**32 for h in [0, 2**32) (int64), in two 16-bit halves of c so no product overflows int64."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def hash32(i: torch.Tensor, seed: int) -> torch.Tensor:
    """fmix32(i ^ seed) of int64 tensor i (values in [0, 2**32)): the hash of the module docstring."""
    h = i ^ seed
    h = h ^ (h >> 16)
    h = _mul32(h, HASH_MUL1)
    h = h ^ (h >> 13)
    h = _mul32(h, HASH_MUL2)
    return h ^ (h >> 16)


def hash_index(out_features: int, in_features: int, seed: int, num_buckets: int,
               device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(bucket int64 [N, K], sign float32 [N, K] of +-1): where each entry of the virtual weight reads."""
    n = torch.arange(out_features, dtype=torch.int64, device=device)
    k = torch.arange(in_features, dtype=torch.int64, device=device)
    h = hash32((n[:, None] * in_features + k[None, :]) & MASK32, seed)
    base = (n * num_buckets) // max(out_features, 1)
    bucket = (base[:, None] + ((h * min(num_buckets, HASH_WINDOW)) >> 32)) % num_buckets
    sign = 1.0 - 2.0 * (h & 1).to(torch.float32)
    return bucket, sign


def virtual_weight(buckets: torch.Tensor, seed: int, out_features: int, in_features: int) -> torch.Tensor:
    """The virtual weight W [N, K] in float32 (differentiable in buckets: plain torch indexing)."""
    bucket, sign = hash_index(out_features, in_features, seed, buckets.numel(), buckets.device)
    return buckets.float()[bucket] * sign


# ---- reference: the spec -------------------------------------------------------------------------------
@register("hashed_linear", "reference", ALL_DEVICES)
def hashed_linear_reference(x, buckets, seed, out_features, in_features, bias):
    """x @ W.T + bias in float32 (W materialized), returned in x.dtype."""
    y = x.float() @ virtual_weight(buckets, seed, out_features, in_features).T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@register("hashed_weight", "reference", ALL_DEVICES)
def hashed_weight_reference(buckets, seed, out_features, in_features):
    return virtual_weight(buckets, seed, out_features, in_features)


# A scatter-add: torch's index_add_ serves the Triton backend too (set_backend("triton") reaches it in backward).
@register("hashed_bucket_grad", "triton", ("cuda", "cpu"))
@register("hashed_bucket_grad", "reference", ALL_DEVICES)
def hashed_bucket_grad_reference(grad_w, num_buckets, seed):
    """grad_buckets [B] float32: sign * grad_w summed into each entry's bucket."""
    n, k = grad_w.shape
    bucket, sign = hash_index(n, k, seed, num_buckets, grad_w.device)
    out = torch.zeros(num_buckets, dtype=torch.float32, device=grad_w.device)
    return out.index_add_(0, bucket.reshape(-1), (grad_w.float() * sign).reshape(-1))


# ---- native CPU ----------------------------------------------------------------------------------------
# csrc/cpu/hashed*.cpp through _C; float32 only there: other dtypes are converted here (buckets are small).
def _weight_cpu(buckets: torch.Tensor, seed: int, n: int, k: int) -> torch.Tensor:
    b = f32(buckets)
    out = torch.empty((n, k), dtype=torch.float32)
    _native.require_cpu().hashed_weight(b.data_ptr(), b.numel(), seed, out.data_ptr(), n, k, threads(), cpu_isa())
    return out


@register("hashed_linear", "native", ("cpu",), strided_rows=True)
def hashed_linear_cpu(x, buckets, seed, out_features, in_features, bias):
    m = x.shape[0]
    if m > FUSED_MAX_M:
        y = x.float() @ _weight_cpu(buckets, seed, out_features, in_features).T
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)
    xf = x if x.dtype == torch.float32 else x.float()
    ldx = row_stride(xf)
    b, bias32 = f32(buckets), f32(bias)
    y = torch.empty((m, out_features), dtype=torch.float32)
    _native.require_cpu().hashed_linear(xf.data_ptr(), ldx, b.data_ptr(), b.numel(), seed, ptr(bias32), y.data_ptr(),
                                        out_features, m, out_features, in_features, threads(), cpu_isa())
    return y if y.dtype == x.dtype else y.to(x.dtype)


@register("hashed_weight", "native", ("cpu",))
def hashed_weight_cpu(buckets, seed, out_features, in_features):
    return _weight_cpu(buckets, seed, out_features, in_features)


@register("hashed_bucket_grad", "native", ("cpu",))
def hashed_bucket_grad_cpu(grad_w, num_buckets, seed):
    g = f32(grad_w)
    n, k = g.shape
    out = torch.empty(num_buckets, dtype=torch.float32)
    _native.require_cpu().hashed_bucket_grad(g.data_ptr(), num_buckets, seed, out.data_ptr(), n, k, threads())
    return out


# ---- Triton ----------------------------------------------------------------------------------------------
# triton/hashed.py: the hash computed per tile in registers, the buckets gathered, tl.dot with x.
@register("hashed_linear", "triton", ("cuda", "cpu"), strided_rows=True)
def hashed_linear_triton(x, buckets, seed, out_features, in_features, bias):
    from ..triton.hashed import hashed_linear

    return hashed_linear(x, buckets, seed, out_features, bias)


@register("hashed_weight", "triton", ("cuda", "cpu"))
def hashed_weight_triton(buckets, seed, out_features, in_features):
    from ..triton.hashed import hashed_weight

    return hashed_weight(buckets, seed, out_features, in_features)

