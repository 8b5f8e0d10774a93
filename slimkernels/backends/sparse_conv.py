"""Implementations of the sparse_conv family (sparse_conv2d): the reference (the spec: the dense
weight unpacked from the CSR, then F.conv2d in float32) and the native CPU kernel (csrc/cpu/sparse_conv*.cpp:
a direct convolution without im2col, AVX-512 / AVX2 / scalar). Inputs arrive validated, non-empty
and NCHW contiguous (ops/sparse_conv.py)."""
import torch
import torch.nn.functional as F

from .. import _native
from . import register
from ._common import KIND, cpu_isa, f32, ptr, threads
from .quantize import ALL_DEVICES

INDEX_KIND = {torch.int16: "int16", torch.int32: "int32"}
VALUE_KIND = {**KIND, torch.int8: "int8"}


@register("sparse_conv2d", "reference", ALL_DEVICES)
def sparse_conv2d_reference(x, row_ptr, col_idx, values, scales, bias, kernel_size, stride, padding, dilation, groups):
    """F.conv2d(x, W, bias) in float32 with W the CSR weight unpacked to [Cout, Cin/groups, kh, kw],
    returned in x.dtype."""
    from ..ops.sparse_conv import dense_weight

    w = dense_weight(row_ptr, col_idx, values, scales, x.shape[1] // groups, kernel_size)
    y = F.conv2d(x.float(), w, None if bias is None else bias.float(), stride, padding, dilation, groups)
    return y.to(x.dtype)


@register("sparse_conv2d", "native", ("cpu",))
def sparse_conv2d_cpu(x, row_ptr, col_idx, values, scales, bias, kernel_size, stride, padding, dilation, groups):
    from ..ops.sparse_conv import conv_out_size

    b, cin, h, w = x.shape
    cout = row_ptr.numel() - 1
    oh, ow = (conv_out_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i]) for i in range(2))
    y = torch.empty((b, cout, oh, ow), dtype=x.dtype)
    bias = f32(bias)
    _native.require_cpu().sparse_conv2d(
        x.data_ptr(), KIND[x.dtype], b, cin, h, w, row_ptr.data_ptr(), ptr(col_idx), INDEX_KIND[col_idx.dtype],
        ptr(values), VALUE_KIND[values.dtype], ptr(scales), ptr(bias), cout, col_idx.numel(), kernel_size, stride,
        padding, dilation, groups, y.data_ptr(), oh, ow, threads(), cpu_isa(),
    )
    return y
