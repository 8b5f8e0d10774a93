"""CPU backend: our C++ kernels (slimkernels._C) with run-time ISA dispatch.

Threads follow torch.get_num_threads(); SLIMKERNELS_CPU_ISA=avx2|avx512_vnni|scalar forces an ISA;
SLIMKERNELS_CPU_AMX=auto|on|off says when the low-bit kernels run on AMX-BF16 tiles (auto: from 6
rows of x for int4, 16 for 2- and 4-bit codebooks).
"""
from __future__ import annotations

import os

import torch

from .. import _native
from ..quant import lowbit, packing
from . import reference, register
from ._common import KIND, f32, ptr, register_native_gemm


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _isa() -> str:
    return os.environ.get("SLIMKERNELS_CPU_ISA", "")


def _amx() -> str:
    """SLIMKERNELS_CPU_AMX=auto|on|off: low-bit kernels on AMX-BF16 tiles from 6 (int4) or 16
    (codebooks) rows of x / always / never."""
    return os.environ.get("SLIMKERNELS_CPU_AMX", "auto")


def _row_strided(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(t, row stride) for a kernel that reads [R, C] rows at any stride: row-strided views are read
    in place, anything else is copied. A single row's stride means nothing (torch may report any)."""
    rows, cols = t.shape
    if t.stride(1) != 1 or (rows > 1 and t.stride(0) < cols):
        t = t.contiguous()
    return t, (t.stride(0) if rows > 1 else cols)


@register("quantize_per_token_int8", "native", ("cpu",))
def quantize_rows_int8(x):
    m, k = x.shape
    if m == 0 or k == 0:
        return reference.quantize_rows_int8(x)
    C = _native.require_cpu()
    x = x.contiguous()
    q = torch.empty((m, k), dtype=torch.int8)
    scale = torch.empty((m,), dtype=torch.float32)
    C.quantize_per_token_int8(x.data_ptr(), k, m, k, KIND[x.dtype], q.data_ptr(), k, scale.data_ptr(), _threads(), _isa())
    return q, scale


def gemm_packed(a, b_packed, n, out_dtype, a_scale=None, b_scale=None, bias=None):
    """The one call into the CPU GEMM: int32 out when out_dtype is int32, else the fused epilogue."""
    C = _native.require_cpu()
    m, k = a.shape
    a = a.contiguous()
    out = torch.empty((m, n), dtype=out_dtype)
    a_scale, b_scale, bias = f32(a_scale), f32(b_scale), f32(bias)
    C.int8_gemm(
        a.data_ptr(), k, b_packed.data_ptr(), m, n, k, out.data_ptr(), n, KIND[out_dtype],
        ptr(a_scale), ptr(b_scale), ptr(bias), _threads(), _isa(),
    )
    return out


register_native_gemm("cpu", packing.pack_int8_cpu, gemm_packed)


# One native call (quantize into scratch, then the GEMM) rather than the quantize + GEMM composition
# other backends use: at M <= 8 the Python round trips cost more than the quantization itself.
@register("int8_dynamic_linear", "native", ("cpu",))
def int8_dynamic_linear(x, w_packed, w_scale, bias):
    m, k = x.shape
    n = w_scale.shape[0]
    if m == 0 or k == 0 or n == 0:
        return reference.int8_dynamic_linear(x, w_packed, w_scale, bias)
    C = _native.require_cpu()
    x = x.contiguous()
    out = torch.empty((m, n), dtype=x.dtype)
    bias = f32(bias)
    w_packed, w_scale = w_packed.contiguous(), w_scale.contiguous()
    C.int8_dynamic_linear(x.data_ptr(), k, KIND[x.dtype], w_packed.data_ptr(), w_scale.data_ptr(), ptr(bias),
                          m, n, k, out.data_ptr(), n, _threads(), _isa())
    return out


@register("dequant_mm_int8", "native", ("cpu",))
def dequant_mm_int8(x, qweight, scales, bias):
    """W8A16: x [M, K] (validated by the op) @ (qweight * scales[:, None]).T + bias, in x.dtype."""
    m, k = x.shape
    n = qweight.shape[0]
    if m == 0 or n == 0 or k == 0:
        return reference.dequant_mm_int8(x, qweight, scales, bias)
    C = _native.require_cpu()
    x, ldx = _row_strided(x)
    qweight, ldw = _row_strided(qweight)
    scales, bias = f32(scales), f32(bias)
    y = torch.empty((m, n), dtype=x.dtype)
    C.dequant_mm_int8(
        x.data_ptr(), ldx, KIND[x.dtype], qweight.data_ptr(), ldw, scales.data_ptr(),
        ptr(bias), y.data_ptr(), n, m, n, k, _threads(), _isa(),
    )
    return y


def _lowbit_gemm(x, codes, bits, lut_kind, n, *, scales=None, zeros=None, group_size=0, codebook=None, bias=None):
    """The one call into the native low-bit kernel (int4 and codebooks share it); x [M, K] validated
    by the op. Empty problems too, with no Python detour: M or N = 0 write nothing, K = 0 gives the bias."""
    C = _native.require_cpu()
    m, k = x.shape
    x, ldx = _row_strided(x)
    codes = codes.contiguous()
    scales, codebook, bias = f32(scales), f32(codebook), f32(bias)
    zeros = None if zeros is None else zeros.contiguous()
    y = torch.empty((m, n), dtype=x.dtype)
    C.lowbit_gemm(
        x.data_ptr(), ldx, KIND[x.dtype], codes.data_ptr(), bits, lut_kind, ptr(scales), ptr(zeros), group_size,
        ptr(codebook), 0 if codebook is None else codebook.shape[0], ptr(bias), y.data_ptr(), n, m, n, k,
        _threads(), _isa(), _amx(),
    )
    return y


@register("dequant_mm_int4", "native", ("cpu",))
def dequant_mm_int4(x, qweight, scales, zeros, group_size, bias):
    """W4A16 group-wise: x [M, K] @ dequantize_int4(...).T + bias, in x.dtype (layouts: quant/lowbit.py)."""
    return _lowbit_gemm(x, qweight, 4, "int4", qweight.shape[0], scales=scales, zeros=zeros, group_size=group_size,
                        bias=bias)


@register("lut_mm", "native", ("cpu",))
def lut_mm(x, indices, codebook, bias):
    """Codebook weights (2/3/4-bit codes, per-layer or per-row codebook): x @ W.T + bias, in x.dtype."""
    bits = lowbit.bits_from_codebook(codebook.shape[1])
    return _lowbit_gemm(x, indices, bits, "codebook", indices.shape[0], group_size=x.shape[1], codebook=codebook,
                        bias=bias)
