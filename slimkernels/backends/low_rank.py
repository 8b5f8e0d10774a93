"""Implementations of the low_rank family (low_rank_linear: y = (x V^T) U^T + bias): reference (the
spec: the two matmuls in float32), native CPU (AVX-512 / AVX2 / scalar: slim/low_rank.h, each factor
read once per call with the rank-r intermediate in cache) and Triton. Inputs arrive validated and
non-empty (see backends/__init__.py).
"""
import torch

from .. import _native
from . import register, row_stride
from ._common import cpu_isa, ptr, threads
from .quantize import ALL_DEVICES

# The native CPU kernel runs for FUSED_MIN_M <= M <= FUSED_MAX_M rows of x, where it measured faster than
# the two matmuls (interleaved, 4096 x 4096 at rank 512 and 1024, one thread: 1.0-1.4x at M = 4..32, and
# 0.75-0.94x at M = 1..3, where torch's BLAS gemv is faster): bench/results/2026-11-30-lowrank-kernel.md. Outside
# that range, and for factors that are not float32 (the kernel would convert them on every call), the
# two matmuls of the reference.
FUSED_MIN_M, FUSED_MAX_M = 4, 32


# ---- reference: the spec -------------------------------------------------------------------------------
@register("low_rank_linear", "reference", ALL_DEVICES)
def low_rank_linear_reference(x, v, u, bias):
    """(x @ v.T) @ u.T + bias in float32 (two matmuls), returned in x.dtype."""
    y = (x.float() @ v.float().T) @ u.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ---- native CPU ----------------------------------------------------------------------------------------
def fused_cpu(x, v, u, bias):
    """The native kernel itself, at any M: float32 v, u and bias (x of any float dtype, any row stride)."""
    m, k = x.shape
    xf = x if x.dtype == torch.float32 else x.float()
    n, r = u.shape
    y = torch.empty((m, n), dtype=torch.float32)
    _native.require_cpu().low_rank_linear(xf.data_ptr(), row_stride(xf), v.data_ptr(), u.data_ptr(), ptr(bias),
                                          y.data_ptr(), n, m, n, k, r, threads(), cpu_isa())
    return y if y.dtype == x.dtype else y.to(x.dtype)


@register("low_rank_linear", "native", ("cpu",), strided_rows=True)
def low_rank_linear_cpu(x, v, u, bias):
    float32 = v.dtype == u.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
    if float32 and FUSED_MIN_M <= x.shape[0] <= FUSED_MAX_M:
        return fused_cpu(x, v, u, bias)
    return low_rank_linear_reference(x, v, u, bias)


# ---- Triton ----------------------------------------------------------------------------------------------
# triton/low_rank.py: two launches of one kernel, t = x V^T (float32), then y = t U^T + bias.
@register("low_rank_linear", "triton", ("cuda", "cpu"), strided_rows=True)
def low_rank_linear_triton(x, v, u, bias):
    from ..triton.low_rank import low_rank_linear

    return low_rank_linear(x, v, u, bias)
