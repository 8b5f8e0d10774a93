"""Triton backend: the kernels in slimkernels/triton, on CUDA (or on CPU under TRITON_INTERPRET=1)."""
from __future__ import annotations

import torch

from ..quant import packing
from . import reference, register
from ._common import f32, is_empty_problem, pad_k, register_dynamic_linear

DEVICES = ("cuda", "cpu")


@register("quantize_per_token_int8", "triton", DEVICES)
def quantize_rows_int8(x):
    from ..triton.quantize import quantize_per_token_int8

    if x.shape[0] == 0 or x.shape[1] == 0:
        return reference.quantize_rows_int8(x)
    return quantize_per_token_int8(x.contiguous())


def _gemm(a, b, out_dtype, a_scale=None, b_scale=None, bias=None):
    from ..triton.int8_gemm import int8_gemm

    return int8_gemm(a.contiguous(), b.contiguous(), f32(a_scale), f32(b_scale), f32(bias), out_dtype)


@register("int8_mm", "triton", DEVICES)
def int8_mm(a, b):
    if is_empty_problem(a, b.shape[0]):
        return reference.int8_mm(a, b)
    return _gemm(a, b, torch.int32)


@register("int8_scaled_mm", "triton", DEVICES)
def int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype):
    if is_empty_problem(a, b.shape[0]):
        return reference.int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype)
    return _gemm(a, b, out_dtype, a_scale, b_scale, bias)


@register("int8_scaled_mm_packed", "triton", DEVICES)
def int8_scaled_mm_packed(a, a_scale, b_packed, b_scale, bias, out_dtype):
    n = b_scale.shape[0]
    if is_empty_problem(a, n):
        return reference.int8_scaled_mm_packed(a, a_scale, b_packed, b_scale, bias, out_dtype)
    if b_packed.device.type == "cpu":  # interpreter runs only: the CPU layout is not the plain one
        return _gemm(a, packing.unpack_int8_cpu(b_packed, n, a.shape[1]), out_dtype, a_scale, b_scale, bias)
    return _gemm(pad_k(a, b_packed.shape[1]), b_packed, out_dtype, a_scale, b_scale, bias)


register_dynamic_linear("triton", DEVICES, quantize_rows_int8, int8_scaled_mm_packed)


@register("dequant_mm_int8", "triton", DEVICES)
def dequant_mm_int8(x, qweight, scales, bias):
    from ..triton.dequant_int8 import dequant_mm_int8 as launch

    if is_empty_problem(x, qweight.shape[0]):
        return reference.dequant_mm_int8(x, qweight, scales, bias)
    return launch(x.contiguous(), qweight.contiguous(), scales.contiguous(),
                  None if bias is None else bias.contiguous())


@register("dequant_mm_int4", "triton", DEVICES)
def dequant_mm_int4(x, qweight, scales, zeros, group_size, bias):
    from ..triton.lowbit_mm import dequant_mm_int4 as launch

    if is_empty_problem(x, qweight.shape[0]):
        return reference.dequant_mm_int4(x, qweight, scales, zeros, group_size, bias)
    return launch(x.contiguous(), qweight.contiguous(), scales.contiguous(),
                  None if zeros is None else zeros.contiguous(), group_size,
                  None if bias is None else bias.contiguous())


@register("lut_mm", "triton", DEVICES)
def lut_mm(x, indices, codebook, bias):
    from ..triton.lowbit_mm import lut_mm as launch

    if is_empty_problem(x, indices.shape[0]):
        return reference.lut_mm(x, indices, codebook, bias)
    return launch(x.contiguous(), indices.contiguous(), codebook.contiguous(),
                  None if bias is None else bias.contiguous())
