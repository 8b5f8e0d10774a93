"""CUDA backend: our CUDA C++ kernels (slimkernels._C_cuda), launched on torch's current stream.

The kernels read K in 16-byte chunks: weights are packed with K padded to 16 (quant/packing.py) and
activations are zero-padded here when K is not a multiple of 16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _native
from ..quant import lowbit, packing
from . import reference, register
from ._common import KIND, f32, is_empty_problem, pad_k, ptr, register_dynamic_linear, register_native_gemm


def _stream(device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


@register("quantize_per_token_int8", "native", ("cuda",))
def quantize_rows_int8(x):
    m, k = x.shape
    if m == 0 or k == 0:
        return reference.quantize_rows_int8(x)
    C = _native.require_cuda()
    x = x.contiguous()
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    with torch.cuda.device(x.device):
        C.quantize_per_token_int8(x.data_ptr(), k, m, k, KIND[x.dtype], q.data_ptr(), k, scale.data_ptr(), _stream(x.device))
    return q, scale


def gemm_plain(a, b_plain, n, out_dtype, a_scale=None, b_scale=None, bias=None):
    """b_plain is [N, Kp] with Kp % 16 == 0 (packing.pack_int8_plain)."""
    C = _native.require_cuda()
    kp = b_plain.shape[1]
    a = pad_k(a, kp).contiguous()
    if a.data_ptr() % 16:  # a sliced view: copy to an aligned buffer
        a = a.clone()
    m = a.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    a_scale, b_scale, bias = f32(a_scale), f32(b_scale), f32(bias)
    with torch.cuda.device(a.device):
        C.int8_gemm(
            a.data_ptr(), kp, b_plain.data_ptr(), kp, m, n, kp, out.data_ptr(), n, KIND[out_dtype],
            ptr(a_scale), ptr(b_scale), ptr(bias), _stream(a.device),
        )
    return out


int8_scaled_mm_packed = register_native_gemm("cuda", packing.pack_int8_plain, gemm_plain)
register_dynamic_linear("native", ("cuda",), quantize_rows_int8, int8_scaled_mm_packed)


# ---- weight-only low-bit: dequant_mm_int4 and lut_mm (canonical layouts, quant/lowbit.py) ---------
# Provisional until measured on a GPU (bench/gpu_session.sh): M <= LOWBIT_GEMV_MAX_M runs the
# fused GEMV (weights read once, dequantized in registers); larger M dequantizes into an [N, K]
# scratch in x's dtype and calls torch's matmul (cuBLAS tensor cores). The GEMV's own ceiling is
# _C_cuda.lowbit_gemv_max_m (8).
LOWBIT_GEMV_MAX_M = 8


def _lowbit_linear(x, n, bias, gemv, dequantize):
    """Shared body: gemv(x, ldx, out, bias_f32, stream) for small M, else dequantize(w, stream) + F.linear."""
    m, k = x.shape
    if x.stride(1) != 1 or (m > 1 and x.stride(0) < k):
        x = x.contiguous()
    stream = _stream(x.device)
    with torch.cuda.device(x.device):
        if m <= LOWBIT_GEMV_MAX_M:
            out = torch.empty((m, n), dtype=x.dtype, device=x.device)
            gemv(x, x.stride(0) if m > 1 else k, out, f32(bias), stream)
            return out
        w = torch.empty((n, k), dtype=x.dtype, device=x.device)
        dequantize(w, stream)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


@register("dequant_mm_int4", "native", ("cuda",))
def dequant_mm_int4(x, qweight, scales, zeros, group_size, bias):
    n, k = qweight.shape[0], x.shape[1]
    if is_empty_problem(x, n):
        return reference.dequant_mm_int4(x, qweight, scales, zeros, group_size, bias)
    C = _native.require_cuda()
    qweight, scales = qweight.contiguous(), scales.contiguous()
    zeros = None if zeros is None else zeros.contiguous()

    def gemv(x, ldx, out, bias32, stream):
        C.dequant_mm_int4_gemv(x.data_ptr(), ldx, x.shape[0], k, KIND[x.dtype], qweight.data_ptr(), scales.data_ptr(),
                               ptr(zeros), group_size, n, ptr(bias32), out.data_ptr(), n, stream)

    def dequantize(w, stream):
        C.dequantize_int4(qweight.data_ptr(), scales.data_ptr(), ptr(zeros), group_size, n, k, w.data_ptr(), k,
                          KIND[w.dtype], stream)

    return _lowbit_linear(x, n, bias, gemv, dequantize)


@register("lut_mm", "native", ("cuda",))
def lut_mm(x, indices, codebook, bias):
    n, k = indices.shape[0], x.shape[1]
    if is_empty_problem(x, n):
        return reference.lut_mm(x, indices, codebook, bias)
    C = _native.require_cuda()
    bits = lowbit.bits_from_codebook(codebook.shape[1])
    indices, codebook = indices.contiguous(), codebook.contiguous()
    rows = codebook.shape[0]

    def gemv(x, ldx, out, bias32, stream):
        C.lut_mm_gemv(x.data_ptr(), ldx, x.shape[0], k, KIND[x.dtype], indices.data_ptr(), codebook.data_ptr(), rows,
                      bits, n, ptr(bias32), out.data_ptr(), n, stream)

    def dequantize(w, stream):
        C.dequantize_codebook(indices.data_ptr(), codebook.data_ptr(), rows, bits, n, k, w.data_ptr(), k,
                              KIND[w.dtype], stream)

    return _lowbit_linear(x, n, bias, gemv, dequantize)
