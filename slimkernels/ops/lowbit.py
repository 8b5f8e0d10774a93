"""The lowbit family: weight-only int4 group-wise (dequant_mm_int4) and 2/3/4-bit codebook weights
(lut_mm), dequantized inside the kernels, and int4 weights times per-token int8 activations
(dequant_mm_int4_a8, W4A8). Contracts and public functions; implementations in
backends/lowbit.py; the canonical packed layouts in quant/lowbit.py."""
from typing import Optional

import torch
from torch import Tensor

from ..quant import lowbit
from . import _checks as check
from ._contract import linear_fake, linear_rows, op, weight_only_autograd


def _check_codes(op_name, x, codes, codes_name, bits, bias, n_from):
    check.float_input(op_name, "x", x)
    check.dtype(op_name, codes_name, codes, (torch.uint8,))
    check.ndim(op_name, codes_name, codes, 2)
    k = x.shape[-1]
    row_bytes = lowbit.packed_row_bytes(k, bits)
    if codes.shape[1] != row_bytes:
        raise ValueError(
            f"slimkernels.{op_name}: {codes_name} has shape {tuple(codes.shape)} but x has K={k} features, which "
            f"pack {bits}-bit codes into [N, {row_bytes}] bytes per row (see slimkernels.quant.lowbit)"
        )
    if codes.shape[0] != n_from:
        raise ValueError(f"slimkernels.{op_name}: {codes_name} has N={codes.shape[0]} rows but its scales/codebook "
                         f"say N={n_from}")
    check.optional_bias(op_name, bias, codes.shape[0])


# ---- dequant_mm_int4 ----------------------------------------------------------------------------
def _check_int4(x, qweight, scales, zeros, group_size, bias=None, op_name="dequant_mm_int4"):
    k = x.shape[-1] if isinstance(x, Tensor) and x.dim() else 0
    check.group_size(op_name, group_size, k)
    check.dtype(op_name, "scales", scales, (torch.float32,))
    check.ndim(op_name, "scales", scales, 2)
    n = scales.shape[0]
    _check_codes(op_name, x, qweight, "qweight", 4, bias, n)
    groups = k // group_size if k else 0
    check.shape(op_name, "scales", scales, (n, groups))
    if zeros is not None:
        check.dtype(op_name, "zeros", zeros, (torch.uint8,))
        check.shape(op_name, "zeros", zeros, (n, groups))
    check.same_device(op_name, x=x, qweight=qweight, scales=scales, zeros=zeros, bias=bias)


@op("dequant_mm_int4", _check_int4, linear_fake(lambda x, qweight, *_: qweight.shape[0]))
def dequant_mm_int4(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], group_size: int,
                    bias: Optional[Tensor] = None) -> Tensor:
    """Weight-only int4 (W4A16), group-wise: x [..., K] @ W.T + bias -> [..., N] in x.dtype, with
    W[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], g = k // group_size (zeros None: 8, symmetric;
    group_size == K: per channel). qweight is uint8 [N, ceil(K/2)] (two codes a byte, low nibble
    first; see quant.lowbit)."""
    return linear_rows("dequant_mm_int4", x, qweight.shape[0], qweight, scales, zeros, group_size, bias)


# ---- dequant_mm_int4_a8 ----------------------------------------------------------------------------
def _check_int4_a8(x, qweight, scales, zeros, group_size, bias=None):
    _check_int4(x, qweight, scales, zeros, group_size, bias, op_name="dequant_mm_int4_a8")


@op("dequant_mm_int4_a8", _check_int4_a8, linear_fake(lambda x, qweight, *_: qweight.shape[0]))
def dequant_mm_int4_a8(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], group_size: int,
                       bias: Optional[Tensor] = None) -> Tensor:
    """W4A8: dequant_mm_int4's weights (same arguments and layout) times x [..., K] quantized per token
    to int8 as quantize_per_token_int8 does (sx = absmax/127, xq = round(x/sx)), with exact integer
    sums per group: y[m, n] = sx[m] * sum_g scales[n, g] * (sum_{k in g} q[n, k] * xq[m, k]
    - z[n, g] * sum_{k in g} xq[m, k]) + bias[n], z = zeros or 8; [..., N] in x.dtype. Faster than
    dequant_mm_int4 on CPUs without bf16 dot products or AMX, at the accuracy cost of int8 activations.
    Differentiable in x (straight-through: grad_x = grad @ W, W the dequantized weight) and bias."""
    return linear_rows("dequant_mm_int4_a8", x, qweight.shape[0], qweight, scales, zeros, group_size, bias)


# ---- lut_mm ---------------------------------------------------------------------------------------
def _check_lut(x, indices, codebook, bias=None):
    op_name = "lut_mm"
    check.dtype(op_name, "codebook", codebook, (torch.float32,))
    check.ndim(op_name, "codebook", codebook, 2)
    try:
        bits = lowbit.bits_from_codebook(codebook.shape[1])
    except ValueError as exc:
        raise ValueError(f"slimkernels.{op_name}: codebook has shape {tuple(codebook.shape)}: {exc}") from None
    n = indices.shape[0] if isinstance(indices, Tensor) and indices.dim() == 2 else -1
    if codebook.shape[0] not in (1, n):
        raise ValueError(
            f"slimkernels.{op_name}: codebook must have 1 row (per layer) or N={n} rows (per output row), "
            f"got shape {tuple(codebook.shape)}"
        )
    _check_codes(op_name, x, indices, "indices", bits, bias, n)
    check.same_device(op_name, x=x, indices=indices, codebook=codebook, bias=bias)


@op("lut_mm", _check_lut, linear_fake(lambda x, indices, *_: indices.shape[0]))
def lut_mm(x: Tensor, indices: Tensor, codebook: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Codebook weights: x [..., K] @ W.T + bias -> [..., N] in x.dtype, W[n, k] = codebook[n or 0,
    idx[n, k]]. indices are 2/3/4-bit codes packed as in quant.lowbit; the code width is log2 of the
    codebook's length (float32 [1 or N, 2^bits])."""
    return linear_rows("lut_mm", x, indices.shape[0], indices, codebook, bias)


weight_only_autograd(dequant_mm_int4.opdef, lowbit.dequantize_int4, 4)
weight_only_autograd(dequant_mm_int4_a8.opdef, lowbit.dequantize_int4, 4)
weight_only_autograd(lut_mm.opdef, lowbit.dequantize_codebook, 2)

__all__ = ["dequant_mm_int4", "dequant_mm_int4_a8", "lut_mm"]
