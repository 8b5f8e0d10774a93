"""CUDA backend: our CUDA C++ kernels (slimkernels._C_cuda), launched on torch's current stream.

The kernels read K in 16-byte chunks: weights are packed with K padded to 16 (quant/packing.py) and
activations are zero-padded here when K is not a multiple of 16.
"""
from __future__ import annotations

import torch

from .. import _native
from ..quant import packing
from . import reference, register
from ._common import KIND, f32, pad_k, ptr, register_dynamic_linear, register_native_gemm


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
