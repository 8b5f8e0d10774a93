"""Implementations built from kernels that ship inside PyTorch, where they are the best we have.

W8A16 (dequant_mm_int8): on CPU, torch's int8 weight-only GEMV kernel streams int8 weights and
wins at small M; from MATMUL_MIN_M rows on, dequantizing once and calling the float GEMM (MKL,
cuBLAS) is faster. The crossover is measured by bench/bench_quant_linear.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register

MATMUL_MIN_M = {"cpu": 64, "cuda": 1}
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
    if x.device.type == "cpu" and 0 < m < MATMUL_MIN_M["cpu"] and k % INT8PACK_K_MULTIPLE == 0:
        y = torch.ops.aten._weight_int8pack_mm(x.contiguous(), qweight.contiguous(), scales.to(x.dtype))
        return y if bias is None else y + bias.to(x.dtype)
    return _dequant_then_matmul(x, qweight, scales, bias)
