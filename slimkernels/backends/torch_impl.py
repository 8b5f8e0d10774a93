"""Implementations built from kernels that ship inside PyTorch, where they are the best we have.

W8A16 (dequant_mm_int8), the fallback where no native kernel is built: on CPU, torch's int8
weight-only kernel streams int8 weights and wins at small M for float16/bfloat16 inputs (it is far
slower than MKL with float32 inputs: 16 ms vs 3.6 ms at M=1 on 4096x4096, 2-core EPYC); otherwise
the weight is dequantized and the float GEMM (MKL, cuBLAS) runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register

INT8PACK_MAX_M = 64  # CPU: from this many rows on, dequantize + MKL beats torch's int8 weight-only kernel
# torch 2.13's CPU _weight_int8pack_mm returns NaN or segfaults when K is not a multiple of 16
# (seen for K = 8, 24, 33, 100, 200), so it only gets shapes it handles.
INT8PACK_K_MULTIPLE = 16


def _dequant_then_matmul(x, qweight, scales, bias):
    # int8 values are exact in every float dtype; scaling after the GEMM keeps the weights exact.
    y = F.linear(x, qweight.to(x.dtype)) * scales.to(x.dtype)
    return y if bias is None else y + bias.to(x.dtype)


@register("dequant_mm_int8", "torch", ("cpu", "cuda"))
def dequant_mm_int8(x, qweight, scales, bias):
    m = x.shape[0]
    k = x.shape[1]
    half = x.dtype in (torch.float16, torch.bfloat16)
    if x.device.type == "cpu" and half and 0 < m < INT8PACK_MAX_M and k % INT8PACK_K_MULTIPLE == 0:
        y = torch.ops.aten._weight_int8pack_mm(x.contiguous(), qweight.contiguous(), scales.to(x.dtype))
        return y if bias is None else y + bias.to(x.dtype)
    return _dequant_then_matmul(x, qweight, scales, bias)
