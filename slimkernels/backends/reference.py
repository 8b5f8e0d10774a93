"""Pure-torch implementations of every op: the spec that every kernel is tested against.

Registered for every device; slow but exact. Inputs arrive validated by _ops.py.
"""
from __future__ import annotations

import torch

from ..quant import lowbit, packing
from . import register
from ._common import register_dynamic_linear

ALL_DEVICES = ("cpu", "cuda", "mps", "xpu", "meta")


@register("quantize_per_token_int8", "reference", ALL_DEVICES)
def quantize_rows_int8(x: torch.Tensor):
    """x [M, K] -> (q int8 [M, K], scale float32 [M]).

    scale = absmax / 127 in float32; all-zero rows get scale 1 and q = 0; a row holding NaN or Inf
    gets scale NaN and q = 0, so the NaN reaches that row of any output built from it.
    q = clamp(round_half_even(x / scale), -127, 127) with a true division: kernels match it bitwise.
    """
    m, k = x.shape
    xf = x.float()
    if k == 0:
        return torch.empty((m, 0), dtype=torch.int8, device=x.device), torch.ones(m, device=x.device)
    amax = xf.abs().amax(dim=1)
    finite = torch.isfinite(amax)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    scale = torch.where(finite, scale, torch.full_like(amax, float("nan")))
    q = torch.round(xf / scale[:, None]).clamp_(-127, 127)
    q = torch.where(finite[:, None], q, torch.zeros_like(q))
    return q.to(torch.int8), scale


def exact_int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T exactly, wrapped to int32. float64 holds every partial sum exactly (|sum| < 2^53)."""
    if a.device.type == "cpu":
        acc = a.to(torch.int64) @ b.to(torch.int64).T
    else:  # int64 matmul is CPU-only in torch
        acc = (a.double() @ b.double().T).to(torch.int64)
    return acc.to(torch.int32)


def scaled_epilogue(acc, a_scale, b_scale, bias, out_dtype):
    """The epilogue every int8 kernel fuses: ((acc * a_scale[m]) * b_scale[n]) + bias[n] in float32."""
    y = (acc.float() * a_scale[:, None]) * b_scale[None, :]
    if bias is not None:
        y = y + bias.float()[None, :]
    return y.to(out_dtype)


@register("int8_mm", "reference", ALL_DEVICES)
def int8_mm(a, b):
    return exact_int8_mm(a, b)


@register("int8_scaled_mm", "reference", ALL_DEVICES)
def int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype):
    return scaled_epilogue(exact_int8_mm(a, b), a_scale, b_scale, bias, out_dtype)


@register("int8_scaled_mm_packed", "reference", ALL_DEVICES)
def int8_scaled_mm_packed(a, a_scale, b_packed, b_scale, bias, out_dtype):
    b = packing.unpack_int8(b_packed, b_scale.shape[0], a.shape[1])
    return int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype)


int8_dynamic_linear = register_dynamic_linear("reference", ALL_DEVICES, quantize_rows_int8, int8_scaled_mm_packed)


@register("dequant_mm_int8", "reference", ALL_DEVICES)
def dequant_mm_int8(x, qweight, scales, bias):
    """x @ (qweight * scales[:, None]).T + bias, computed in float32, returned in x.dtype."""
    y = (x.float() @ qweight.float().T) * scales[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _linear_f32(x, w, bias):
    y = x.float() @ w.T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@register("dequant_mm_int4", "reference", ALL_DEVICES)
def dequant_mm_int4(x, qweight, scales, zeros, group_size, bias):
    """x @ dequantize_int4(...).T + bias: weights dequantized in float32, the GEMM in float32."""
    return _linear_f32(x, lowbit.dequantize_int4(qweight, scales, zeros, group_size, x.shape[1]), bias)


@register("lut_mm", "reference", ALL_DEVICES)
def lut_mm(x, indices, codebook, bias):
    """x @ codebook[row, indices].T + bias, in float32, returned in x.dtype."""
    return _linear_f32(x, lowbit.dequantize_codebook(indices, codebook, x.shape[1]), bias)
