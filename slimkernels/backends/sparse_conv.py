"""Implementations of the sparse_conv family (sparse_conv2d): the reference (the spec: the dense
weight unpacked from the CSR, then F.conv2d in float32) and the native CPU kernel (csrc/cpu/sparse_conv*.cpp:
a direct convolution without im2col, AVX-512 / AVX2 / scalar). Inputs arrive validated and non-empty;
x is NCHW contiguous, or NHWC contiguous with channels_last=True, and y is returned the same way
(ops/sparse_conv.py)."""
import torch
import torch.nn.functional as F

from .. import _native
from . import register
from ._common import KIND, cpu_isa, f32, ptr, threads
from .quantize import ALL_DEVICES

INDEX_KIND = {torch.int16: "int16", torch.int32: "int32"}
VALUE_KIND = {**KIND, torch.int8: "int8"}


@register("sparse_conv2d", "reference", ALL_DEVICES)
def sparse_conv2d_reference(x, row_ptr, col_idx, values, scales, bias, kernel_size, stride, padding, dilation, groups,
                            channels_last):
    """F.conv2d(x, W, bias) in float32 with W the CSR weight unpacked to [Cout, Cin/groups, kh, kw],
    returned in x.dtype."""
    from ..ops.sparse_conv import dense_weight

    x = x.permute(0, 3, 1, 2) if channels_last else x
    w = dense_weight(row_ptr, col_idx, values, scales, x.shape[1] // groups, kernel_size)
    y = F.conv2d(x.float(), w, None if bias is None else bias.float(), stride, padding, dilation, groups).to(x.dtype)
    return y.permute(0, 2, 3, 1).contiguous() if channels_last else y.contiguous()


@register("sparse_conv2d", "native", ("cpu",))
def sparse_conv2d_cpu(x, row_ptr, col_idx, values, scales, bias, kernel_size, stride, padding, dilation, groups,
                      channels_last):
    from ..ops.sparse_conv import conv_out_size

    b, cin, h, w = (x.shape[0], x.shape[3], x.shape[1], x.shape[2]) if channels_last else x.shape
    cout = row_ptr.numel() - 1
    oh, ow = (conv_out_size(size, kernel_size[i], stride[i], padding[i], dilation[i]) for i, size in enumerate((h, w)))
    y = torch.empty((b, oh, ow, cout) if channels_last else (b, cout, oh, ow), dtype=x.dtype)
    bias = f32(bias)
    _native.require_cpu().sparse_conv2d(
        x.data_ptr(), KIND[x.dtype], channels_last, b, cin, h, w, row_ptr.data_ptr(), ptr(col_idx), INDEX_KIND[col_idx.dtype],
        ptr(values), VALUE_KIND[values.dtype], ptr(scales), ptr(bias), cout, col_idx.numel(), kernel_size, stride,
        padding, dilation, groups, y.data_ptr(), oh, ow, threads(), cpu_isa(),
    )
    return y
