"""Every op's contract: schema (from the type hints), argument checks, fake kernel, autograd.

The op bodies validate once, then hand over to `backends.dispatch`, which picks the implementation
(reference, native C++/CUDA, Triton, torch) for the tensor's device. Fake kernels let
torch.compile(fullgraph=True) trace through every op without running it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _checks as check
from .backends import dispatch
from .quant import lowbit
from .quant.packing import int8_packed_shape, pack_int8

LIB = "slimkernels"


def _flat_rows(x: Tensor) -> tuple[int, int]:
    """(M, K) of x [..., K] with the leading dims flattened; works for K == 0 too."""
    return int(torch.Size(x.shape[:-1]).numel()), x.shape[-1]


def _as_rows(x: Tensor) -> Tensor:
    if x.dim() == 2:
        return x
    # reshape(-1, K) cannot infer -1 when K == 0, so name M explicitly.
    return x.reshape(_flat_rows(x))


def _dispatch_rows(op: str, x: Tensor, n: int, *rest) -> Tensor:
    """Run a linear-like op on x [..., K] flattened to rows; the result is [..., n]."""
    y = dispatch(op, x.device.type, _as_rows(x), *rest)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n)


# ---- quantize_per_token_int8 / quantize_per_channel_int8 ----------------------------------------
@torch.library.custom_op(f"{LIB}::quantize_per_token_int8", mutates_args=())
def quantize_per_token_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row: scale = absmax/127 (1 for all-zero rows), q = round(x/scale)."""
    check.float_input("quantize_per_token_int8", "x", x)
    return dispatch("quantize_per_token_int8", x.device.type, _as_rows(x))


@quantize_per_token_int8.register_fake
def _(x):
    check.float_input("quantize_per_token_int8", "x", x)
    m, k = _flat_rows(x)
    return x.new_empty((m, k), dtype=torch.int8), x.new_empty((m,), dtype=torch.float32)


@torch.library.custom_op(f"{LIB}::quantize_per_channel_int8", mutates_args=())
def quantize_per_channel_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output channel of a [N, K] weight (the per-token math on rows)."""
    check.float_input("quantize_per_channel_int8", "w", w)
    check.ndim("quantize_per_channel_int8", "w", w, 2)
    return dispatch("quantize_per_token_int8", w.device.type, w)


@quantize_per_channel_int8.register_fake
def _(w):
    check.float_input("quantize_per_channel_int8", "w", w)
    check.ndim("quantize_per_channel_int8", "w", w, 2)
    return w.new_empty(w.shape, dtype=torch.int8), w.new_empty((w.shape[0],), dtype=torch.float32)


# ---- int8_mm ---------------------------------------------------------------------------------------
@torch.library.custom_op(f"{LIB}::int8_mm", mutates_args=())
def int8_mm(a: Tensor, b: Tensor) -> Tensor:
    """a [M, K] int8 @ b [N, K] int8 .T -> int32 [M, N], exact (wrapping mod 2^32 like int32 C)."""
    check.int8_pair("int8_mm", a, b)
    return dispatch("int8_mm", a.device.type, a, b)


@int8_mm.register_fake
def _(a, b):
    check.int8_pair("int8_mm", a, b)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


# ---- int8_scaled_mm --------------------------------------------------------------------------------
@torch.library.custom_op(f"{LIB}::int8_scaled_mm", mutates_args=())
def int8_scaled_mm(
    a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, bias: Optional[Tensor], out_dtype: torch.dtype
) -> Tensor:
    """((a @ b.T) * a_scale[m] * b_scale[n] + bias[n]) in float32, cast to out_dtype."""
    check.int8_pair("int8_scaled_mm", a, b)
    check.scales_and_bias("int8_scaled_mm", a, a_scale, b_scale, bias, b.shape[0], out_dtype)
    return dispatch("int8_scaled_mm", a.device.type, a, a_scale, b, b_scale, bias, out_dtype)


@int8_scaled_mm.register_fake
def _(a, a_scale, b, b_scale, bias, out_dtype):
    check.int8_pair("int8_scaled_mm", a, b)
    check.scales_and_bias("int8_scaled_mm", a, a_scale, b_scale, bias, b.shape[0], out_dtype)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


# ---- int8_prepack / int8_scaled_mm_packed ----------------------------------------------------------
# The packed layout is a function of the device (see quant/packing.py), not of the implementation,
# so a module packed once works with every implementation the switch can select.
@torch.library.custom_op(f"{LIB}::int8_prepack", mutates_args=())
def int8_prepack(b: Tensor) -> Tensor:
    """[N, K] int8 weight -> the packed layout the kernels of b's device read."""
    check.dtype("int8_prepack", "b", b, (torch.int8,))
    check.ndim("int8_prepack", "b", b, 2)
    return pack_int8(b)


@int8_prepack.register_fake
def _(b):
    check.dtype("int8_prepack", "b", b, (torch.int8,))
    check.ndim("int8_prepack", "b", b, 2)
    return b.new_empty(int8_packed_shape(b.device.type, b.shape[0], b.shape[1]), dtype=torch.int8)


def _check_packed_shape(op: str, name: str, packed: Tensor, n: int, k: int) -> None:
    expected = int8_packed_shape(packed.device.type, n, k)
    if tuple(packed.shape) != expected:
        raise ValueError(
            f"slimkernels.{op}: {name} has shape {tuple(packed.shape)} but a weight of N={n} (from the scales) "
            f"and K={k} (from the activations) packs to {expected} on {packed.device.type}; pack it with "
            "slimkernels.ops.int8_prepack on the device it is used on"
        )


def _check_packed(op: str, a: Tensor, b_packed: Tensor, b_scale: Tensor) -> None:
    check.dtype(op, "a", a, (torch.int8,))
    check.ndim(op, "a", a, 2)
    check.dtype(op, "b_packed", b_packed, (torch.int8,))
    check.dtype(op, "b_scale", b_scale, (torch.float32,))
    check.ndim(op, "b_scale", b_scale, 1)
    check.same_device(op, a=a, b_packed=b_packed)
    _check_packed_shape(op, "b_packed", b_packed, b_scale.shape[0], a.shape[1])


@torch.library.custom_op(f"{LIB}::int8_scaled_mm_packed", mutates_args=())
def int8_scaled_mm_packed(
    a: Tensor, a_scale: Tensor, b_packed: Tensor, b_scale: Tensor, bias: Optional[Tensor], out_dtype: torch.dtype
) -> Tensor:
    """int8_scaled_mm with the weight prepacked by int8_prepack (N from b_scale, K from a)."""
    _check_packed("int8_scaled_mm_packed", a, b_packed, b_scale)
    check.scales_and_bias("int8_scaled_mm_packed", a, a_scale, b_scale, bias, b_scale.shape[0], out_dtype)
    return dispatch("int8_scaled_mm_packed", a.device.type, a, a_scale, b_packed, b_scale, bias, out_dtype)


@int8_scaled_mm_packed.register_fake
def _(a, a_scale, b_packed, b_scale, bias, out_dtype):
    _check_packed("int8_scaled_mm_packed", a, b_packed, b_scale)
    check.scales_and_bias("int8_scaled_mm_packed", a, a_scale, b_scale, bias, b_scale.shape[0], out_dtype)
    return a.new_empty((a.shape[0], b_scale.shape[0]), dtype=out_dtype)


# Autograd of the weight-only ops: the weights are frozen integers or codes, so only x and bias get
# gradients (distillation and fine-tuning around quantized layers); the backward dequantizes the weight
# with `dequantize(*weight_args, K)`.
def _weight_only_autograd(dequantize, n_weight_args):
    def setup(ctx, inputs, output):
        ctx.k = inputs[0].shape[-1]
        ctx.weight_args = inputs[1:1 + n_weight_args]
        bias = inputs[-1]
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def backward(ctx, grad):
        w = dequantize(*ctx.weight_args, ctx.k)
        grad_x = (grad.float() @ w).to(grad.dtype)
        grad_bias = None if ctx.bias_dtype is None else _as_rows(grad).float().sum(0).to(ctx.bias_dtype)
        return (grad_x,) + (None,) * n_weight_args + (grad_bias,)

    return backward, setup


# ---- dequant_mm_int8 (W8A16) -----------------------------------------------------------------------
def _check_dequant_int8(x, qweight, scales, bias):
    op = "dequant_mm_int8"
    check.float_input(op, "x", x)
    check.dtype(op, "qweight", qweight, (torch.int8,))
    check.ndim(op, "qweight", qweight, 2)
    if x.shape[-1] != qweight.shape[1]:
        raise ValueError(
            f"slimkernels.{op}: x has K={x.shape[-1]} features but qweight is [N, K] = {tuple(qweight.shape)}"
        )
    check.dtype(op, "scales", scales, (torch.float32,))
    check.shape(op, "scales", scales, (qweight.shape[0],))
    if bias is not None:
        check.dtype(op, "bias", bias, check.FLOAT_DTYPES)
        check.shape(op, "bias", bias, (qweight.shape[0],))
    check.same_device(op, x=x, qweight=qweight, scales=scales, bias=bias)


@torch.library.custom_op(f"{LIB}::dequant_mm_int8", mutates_args=())
def dequant_mm_int8(x: Tensor, qweight: Tensor, scales: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Weight-only int8: x [.., K] (float) @ (qweight [N, K] * scales[n]).T + bias -> [.., N] in x.dtype."""
    _check_dequant_int8(x, qweight, scales, bias)
    return _dispatch_rows("dequant_mm_int8", x, qweight.shape[0], qweight, scales, bias)


@dequant_mm_int8.register_fake
def _(x, qweight, scales, bias):
    _check_dequant_int8(x, qweight, scales, bias)
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def _dequantize_int8(qweight, scales, _k):
    return qweight.float() * scales[:, None]


_int8_backward, _int8_setup = _weight_only_autograd(_dequantize_int8, 2)
dequant_mm_int8.register_autograd(_int8_backward, setup_context=_int8_setup)


# ---- int8_dynamic_linear (W8A8 in one op) ----------------------------------------------------------
def _check_dynamic_linear(x, w_packed, w_scale, bias):
    op = "int8_dynamic_linear"
    check.float_input(op, "x", x)
    check.dtype(op, "w_packed", w_packed, (torch.int8,))
    check.dtype(op, "w_scale", w_scale, (torch.float32,))
    check.ndim(op, "w_scale", w_scale, 1)
    if bias is not None:
        check.dtype(op, "bias", bias, check.FLOAT_DTYPES)
        check.shape(op, "bias", bias, (w_scale.shape[0],))
    check.same_device(op, x=x, w_packed=w_packed, w_scale=w_scale, bias=bias)
    _check_packed_shape(op, "w_packed", w_packed, w_scale.shape[0], x.shape[-1])


@torch.library.custom_op(f"{LIB}::int8_dynamic_linear", mutates_args=())
def int8_dynamic_linear(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    """W8A8 linear: quantize x [.., K] per token, int8 GEMM with a packed weight, fused epilogue;
    the result [.., N] is in x.dtype. Equal to quantize_per_token_int8 + int8_scaled_mm_packed."""
    _check_dynamic_linear(x, w_packed, w_scale, bias)
    return _dispatch_rows("int8_dynamic_linear", x, w_scale.shape[0], w_packed, w_scale, bias)


@int8_dynamic_linear.register_fake
def _(x, w_packed, w_scale, bias):
    _check_dynamic_linear(x, w_packed, w_scale, bias)
    return x.new_empty((*x.shape[:-1], w_scale.shape[0]))


# ---- low-bit weight-only: dequant_mm_int4 and lut_mm (layouts in quant/lowbit.py) -------------------
def _check_lowbit_common(op, x, codes, codes_name, bits, bias, n_from):
    check.float_input(op, "x", x)
    check.dtype(op, codes_name, codes, (torch.uint8,))
    check.ndim(op, codes_name, codes, 2)
    k = x.shape[-1]
    row_bytes = lowbit.packed_row_bytes(k, bits)
    if codes.shape[1] != row_bytes:
        raise ValueError(
            f"slimkernels.{op}: {codes_name} has shape {tuple(codes.shape)} but x has K={k} features, which "
            f"pack {bits}-bit codes into [N, {row_bytes}] bytes per row (see slimkernels.quant.lowbit)"
        )
    if codes.shape[0] != n_from:
        raise ValueError(f"slimkernels.{op}: {codes_name} has N={codes.shape[0]} rows but its scales/codebook say N={n_from}")
    if bias is not None:
        check.dtype(op, "bias", bias, check.FLOAT_DTYPES)
        check.shape(op, "bias", bias, (codes.shape[0],))


def _check_dequant_int4(x, qweight, scales, zeros, group_size, bias):
    op = "dequant_mm_int4"
    k = x.shape[-1] if isinstance(x, Tensor) and x.dim() else 0
    check.group_size(op, group_size, k)
    check.dtype(op, "scales", scales, (torch.float32,))
    check.ndim(op, "scales", scales, 2)
    n = scales.shape[0]
    _check_lowbit_common(op, x, qweight, "qweight", 4, bias, n)
    groups = k // group_size if k else 0
    check.shape(op, "scales", scales, (n, groups))
    if zeros is not None:
        check.dtype(op, "zeros", zeros, (torch.uint8,))
        check.shape(op, "zeros", zeros, (n, groups))
    check.same_device(op, x=x, qweight=qweight, scales=scales, zeros=zeros, bias=bias)


@torch.library.custom_op(f"{LIB}::dequant_mm_int4", mutates_args=())
def dequant_mm_int4(
    x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], group_size: int, bias: Optional[Tensor]
) -> Tensor:
    """Weight-only int4 (W4A16): x [.., K] (float) @ dequantize_int4(qweight, scales, zeros).T + bias
    -> [.., N] in x.dtype. zeros None = symmetric (zero point 8); group_size == K is per-channel."""
    _check_dequant_int4(x, qweight, scales, zeros, group_size, bias)
    return _dispatch_rows("dequant_mm_int4", x, qweight.shape[0], qweight, scales, zeros, group_size, bias)


@dequant_mm_int4.register_fake
def _(x, qweight, scales, zeros, group_size, bias):
    _check_dequant_int4(x, qweight, scales, zeros, group_size, bias)
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def _check_lut_mm(x, indices, codebook, bias):
    op = "lut_mm"
    check.dtype(op, "codebook", codebook, (torch.float32,))
    check.ndim(op, "codebook", codebook, 2)
    try:
        bits = lowbit.bits_from_codebook(codebook.shape[1])
    except ValueError as exc:
        raise ValueError(f"slimkernels.{op}: codebook has shape {tuple(codebook.shape)}: {exc}") from None
    n = indices.shape[0] if isinstance(indices, Tensor) and indices.dim() == 2 else -1
    if codebook.shape[0] not in (1, n):
        raise ValueError(
            f"slimkernels.{op}: codebook must have 1 row (per layer) or N={n} rows (per output row), "
            f"got shape {tuple(codebook.shape)}"
        )
    _check_lowbit_common(op, x, indices, "indices", bits, bias, n)
    check.same_device(op, x=x, indices=indices, codebook=codebook, bias=bias)


@torch.library.custom_op(f"{LIB}::lut_mm", mutates_args=())
def lut_mm(x: Tensor, indices: Tensor, codebook: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Codebook (non-uniform) weights: x [.., K] @ codebook[row, indices].T + bias -> [.., N] in x.dtype.
    The code width (2, 3 or 4 bits) is log2 of the codebook's length."""
    _check_lut_mm(x, indices, codebook, bias)
    return _dispatch_rows("lut_mm", x, indices.shape[0], indices, codebook, bias)


@lut_mm.register_fake
def _(x, indices, codebook, bias):
    _check_lut_mm(x, indices, codebook, bias)
    return x.new_empty((*x.shape[:-1], indices.shape[0]))


_int4_backward, _int4_setup = _weight_only_autograd(lowbit.dequantize_int4, 4)
dequant_mm_int4.register_autograd(_int4_backward, setup_context=_int4_setup)
_lut_backward, _lut_setup = _weight_only_autograd(lowbit.dequantize_codebook, 2)
lut_mm.register_autograd(_lut_backward, setup_context=_lut_setup)
