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

# Up to this many rows of x the native CPU kernel runs; above it (and for factors that are not float32,
# which it would have to convert on every call) the two matmuls of the reference. Measured interleaved
# against the two matmuls at M = 1..32: bench/results/2026-11-30-lowrank-kernel.md.
FUSED_MAX_M = 32


# ---- reference: the spec -------------------------------------------------------------------------------
@register("low_rank_linear", "reference", ALL_DEVICES)
def low_rank_linear_reference(x, v, u, bias):
    """(x @ v.T) @ u.T + bias in float32 (two matmuls), returned in x.dtype."""
    y = (x.float() @ v.float().T) @ u.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ---- native CPU ----------------------------------------------------------------------------------------
@register("low_rank_linear", "native", ("cpu",), strided_rows=True)
def low_rank_linear_cpu(x, v, u, bias):
    m, k = x.shape
    fused = m <= FUSED_MAX_M and v.dtype == u.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
    if not fused:
        return low_rank_linear_reference(x, v, u, bias)
    xf = x if x.dtype == torch.float32 else x.float()
    n, r = u.shape
    y = torch.empty((m, n), dtype=torch.float32)
    _native.require_cpu().low_rank_linear(xf.data_ptr(), row_stride(xf), v.data_ptr(), u.data_ptr(), ptr(bias),
                                          y.data_ptr(), n, m, n, k, r, threads(), cpu_isa())
    return y if y.dtype == x.dtype else y.to(x.dtype)


# ---- Triton ----------------------------------------------------------------------------------------------
# triton/low_rank.py: two launches of one kernel, t = x V^T (float32), then y = t U^T + bias.
@register("low_rank_linear", "triton", ("cuda", "cpu"), strided_rows=True)
def low_rank_linear_triton(x, v, u, bias):
    from ..triton.low_rank import low_rank_linear

    return low_rank_linear(x, v, u, bias)
