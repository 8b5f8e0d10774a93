"""Typed public functions over torch.ops.slimkernels.* (see _ops.py for the contracts).

Which implementation runs is chosen per device (slimkernels.backends.DEFAULT_ORDER) unless forced
with slimkernels.set_backend / use_backend.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _ops  # noqa: F401  (registers the ops)

class _Handles:
    """The ops' overload handles, looked up once: resolving torch.ops attributes on every call
    costs microseconds, which matters for small layers."""

    def __getattr__(self, name):
        handle = getattr(torch.ops.slimkernels, name).default
        setattr(self, name, handle)
        return handle


_OPS = _Handles()


def quantize_per_token_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [..., K] float -> (q int8 [M, K], scale float32 [M]), M = product of the leading dims."""
    return _OPS.quantize_per_token_int8(x)


def quantize_per_channel_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """w [N, K] float -> (q int8 [N, K], scale float32 [N]), symmetric per output channel."""
    return _OPS.quantize_per_channel_int8(w)


def int8_mm(a: Tensor, b: Tensor) -> Tensor:
    """a [M, K] int8 @ b [N, K] int8 .T -> int32 [M, N], exact."""
    return _OPS.int8_mm(a, b)


def int8_scaled_mm(
    a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, bias: Optional[Tensor] = None,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(a @ b.T) * a_scale[:, None] * b_scale[None, :] + bias, fused, in out_dtype."""
    return _OPS.int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype)


def int8_prepack(b: Tensor) -> Tensor:
    """Pack a [N, K] int8 weight once for int8_scaled_mm_packed on b's device."""
    return _OPS.int8_prepack(b)


def int8_scaled_mm_packed(
    a: Tensor, a_scale: Tensor, b_packed: Tensor, b_scale: Tensor, bias: Optional[Tensor] = None,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """int8_scaled_mm with a weight from int8_prepack (N = len(b_scale), K = a.shape[1])."""
    return _OPS.int8_scaled_mm_packed(a, a_scale, b_packed, b_scale, bias, out_dtype)


def int8_dynamic_linear(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """W8A8 linear in one op: per-token quantize of x [..., K], int8 GEMM against a weight from
    int8_prepack, fused epilogue; [..., N] in x.dtype."""
    return _OPS.int8_dynamic_linear(x, w_packed, w_scale, bias)


def dequant_mm_int8(x: Tensor, qweight: Tensor, scales: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Weight-only int8 (W8A16): x [..., K] @ (qweight * scales[:, None]).T + bias, in x.dtype."""
    return _OPS.dequant_mm_int8(x, qweight, scales, bias)


def dequant_mm_int4(
    x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], group_size: int,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """Weight-only int4 (W4A16), group-wise: x [..., K] @ W.T + bias with
    W[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], g = k // group_size (zeros None: 8).
    qweight is uint8 [N, ceil(K/2)] (two codes a byte, low nibble first; see quant.lowbit)."""
    return _OPS.dequant_mm_int4(x, qweight, scales, zeros, group_size, bias)


def lut_mm(x: Tensor, indices: Tensor, codebook: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Codebook weights: x [..., K] @ W.T + bias with W[n, k] = codebook[n or 0, idx[n, k]].
    indices are 2/3/4-bit codes packed as in quant.lowbit; codebook is float32 [1 or N, 2^bits]."""
    return _OPS.lut_mm(x, indices, codebook, bias)


__all__ = [
    "quantize_per_token_int8", "quantize_per_channel_int8", "int8_mm", "int8_scaled_mm",
    "int8_prepack", "int8_scaled_mm_packed", "int8_dynamic_linear", "dequant_mm_int8",
    "dequant_mm_int4", "lut_mm",
]
