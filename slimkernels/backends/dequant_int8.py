"""Implementations of the dequant_int8 family (W8A16): reference, native CPU, Triton, and torch's
own kernels. Inputs arrive validated and non-empty (see backends/__init__.py)."""
from typing import Optional

import torch
import torch.nn.functional as F

from .. import _native
from . import register, row_stride
from ._common import KIND, f32, ptr, threads
from .lowbit import weight_only_isa
from .quantize import ALL_DEVICES

# bf16 dot products (AVX512-BF16) under cpu_bf16 "auto" from this many rows of x on, None: never
# (measured 0.55-0.87x the float32 kernel on Intel with AMX; see LOWBIT_BF16_MIN_M and
# bench/results/2026-11-30-weight-only-bf16.md).
DEQUANT_INT8_BF16_MIN_M: Optional[int] = None


@register("dequant_mm_int8", "reference", ALL_DEVICES)
def dequant_mm_int8_reference(x, qweight, scales, bias):
    """The spec: x @ (qweight * scales[:, None]).T + bias, computed in float32, returned in x.dtype."""
    y = (x.float() @ qweight.float().T) * scales[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@register("dequant_mm_int8", "native", ("cpu",), strided_rows=True)
def dequant_mm_int8_cpu(x, qweight, scales, bias):
    m, k = x.shape
    n = qweight.shape[0]
    bias = f32(bias)
    y = torch.empty((m, n), dtype=x.dtype)
    isa, amx = weight_only_isa(m, DEQUANT_INT8_BF16_MIN_M)
    _native.require_cpu().dequant_mm_int8(
        x.data_ptr(), row_stride(x), KIND[x.dtype], qweight.data_ptr(), k, scales.data_ptr(),
        ptr(bias), y.data_ptr(), n, m, n, k, threads(), isa, amx,
    )
    return y


@register("dequant_mm_int8", "triton", ("cuda", "cpu"), strided_rows=True)
def dequant_mm_int8_triton(x, qweight, scales, bias):
    from ..triton.dequant_int8 import dequant_mm_int8

    return dequant_mm_int8(x, qweight, scales, bias)


# torch's own kernels, the fallback where no native kernel is built. On CPU, torch's int8
# weight-only kernel streams int8 weights and wins at small M for float16/bfloat16 inputs (it is far
# slower than MKL with float32 inputs: 16 ms vs 3.6 ms at M=1 on 4096x4096, 2-core EPYC); otherwise
# the weight is dequantized and the float GEMM (MKL, cuBLAS) runs.
INT8PACK_MAX_M = 64  # CPU: from this many rows on, dequantize + MKL beats torch's int8 weight-only kernel
# torch 2.13's CPU _weight_int8pack_mm returns NaN or segfaults when K is not a multiple of 16
# (seen for K = 8, 24, 33, 100, 200), so it only gets shapes it handles.
INT8PACK_K_MULTIPLE = 16


# torch's kernel takes the scales in x's dtype: in float16 those below 2^-14 are subnormal and lose
# precision (1.5% at 1e-6), so such layers take the float path.
FLOAT16_NORMAL_MIN = 2.0 ** -14


def _int8pack_fits(x, scales) -> bool:
    m, k = x.shape
    if x.device.type != "cpu" or m >= INT8PACK_MAX_M or k % INT8PACK_K_MULTIPLE:
        return False
    return x.dtype == torch.bfloat16 or (x.dtype == torch.float16 and bool(scales.abs().min() >= FLOAT16_NORMAL_MIN))


@register("dequant_mm_int8", "torch", ("cpu", "cuda"))
def dequant_mm_int8_torch(x, qweight, scales, bias):
    if _int8pack_fits(x, scales):
        y = torch.ops.aten._weight_int8pack_mm(x, qweight, scales.to(x.dtype))
        return y if bias is None else y + bias.to(x.dtype)
    # int8 values are exact in every float dtype; the scales and bias apply to the GEMM's output in
    # float32, so no scale is rounded to x's dtype.
    y = F.linear(x, qweight.to(x.dtype)).float() * scales
    return (y if bias is None else y + bias.float()).to(x.dtype)
