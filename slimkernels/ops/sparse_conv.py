"""The sparse_conv family: 2-D convolution with a sparse weight, `sparse_conv2d`. The weight
[Cout, Cin/groups, kh, kw] is stored as CSR over output channels of W [Cout, Cin/groups * kh * kw]
(columns in (cin, r, s) order = weight.reshape(Cout, -1)), in the layout of quant/sparse.py (values
float32/float16/bfloat16, or int8 with per-output-channel scales). Contract and public function here;
implementations in backends/sparse_conv.py.

Memory format: the output has x's (NCHW in, NCHW out; channels_last in, channels_last out). The
implementations get x contiguous as NCHW [B, C, H, W], or, for a channels_last x, as the NHWC tensor
[B, H, W, C] that its memory is (`channels_last=True`, no copy), and return y the same way.

As for spmm_csr, the contents of the index tensors are checked once where untrusted tensors come in
(quant.sparse.validate_csr: at pack time and at load); the native kernel re-checks the row pointers
and the column indices (O(Cout + nnz) per call), so a hostile tensor is a ValueError, never a bad read.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backends import dispatch
from ..quant import sparse as layout
from . import _checks as check
from ._contract import SPARSE_WEIGHT_HINT, frozen_weight_error, op
from .sparse import _check_compressed_rows, _check_values

OP = "sparse_conv2d"
CONV_ARGS = ("kernel_size", "stride", "padding", "dilation")


def _check_pair(name: str, value, low: int) -> None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        raise ValueError(f"slimkernels.{OP}: {name} must be a list of 2 ints, got {value!r}")
    if min(value) < low:
        raise ValueError(f"slimkernels.{OP}: {name} must be >= {low}, got {list(value)}")


def conv_out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    """Output length of one spatial dim (floor((size + 2 pad - dil (k - 1) - 1) / stride) + 1)."""
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _out_shape(x, row_ptr, kernel_size, stride, padding, dilation) -> tuple:
    oh, ow = (conv_out_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i]) for i in range(2))
    return (x.shape[0], row_ptr.shape[0] - 1, oh, ow)


def is_channels_last(x: Tensor) -> bool:
    """Whether x [B, C, H, W] is laid out channels_last (and not also plainly contiguous)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _check(x, row_ptr, col_idx, values, scales, bias, kernel_size, stride, padding, dilation, groups):
    _check_compressed_rows(OP, x, row_ptr, col_idx, values)
    check.ndim(OP, "x", x, 4)
    cout = row_ptr.numel() - 1
    _check_values(OP, values, scales, cout, (col_idx.numel(),))
    check.ndim(OP, "values", values, 1)
    check.optional_bias(OP, bias, cout)
    check.same_device(OP, x=x, row_ptr=row_ptr, col_idx=col_idx, values=values, scales=scales, bias=bias)
    for name, value, low in zip(CONV_ARGS, (kernel_size, stride, padding, dilation), (1, 1, 0, 1)):
        _check_pair(name, value, low)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"slimkernels.{OP}: groups must be a positive int, got {groups!r}")
    cin = x.shape[1]
    if cout < 1 or cin < 1:
        raise ValueError(f"slimkernels.{OP}: needs at least one input and one output channel, got Cin={cin}, "
                         f"Cout={cout} (row_ptr has Cout + 1 entries)")
    if cin % groups or cout % groups:
        raise ValueError(f"slimkernels.{OP}: groups={groups} must divide the input channels of x ({cin}) and the "
                         f"output channels ({cout})")
    shape = _out_shape(x, row_ptr, kernel_size, stride, padding, dilation)
    if min(shape[2:]) < 1:
        raise ValueError(f"slimkernels.{OP}: x of spatial size {tuple(x.shape[2:])} with padding {list(padding)} is "
                         f"smaller than the kernel {list(kernel_size)} dilated by {list(dilation)}")


def _fake(x, row_ptr, col_idx, values, scales, bias, kernel_size, stride, padding, dilation, groups):
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    shape = _out_shape(x, row_ptr, kernel_size, stride, padding, dilation)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


@op(OP, _check, _fake)
def sparse_conv2d(x: Tensor, row_ptr: Tensor, col_idx: Tensor, values: Tensor, scales: Optional[Tensor],
                  bias: Optional[Tensor], kernel_size: List[int], stride: List[int], padding: List[int],
                  dilation: List[int], groups: int) -> Tensor:
    """y = conv2d(x, W, bias, stride, padding, dilation, groups) in x.dtype and x's memory format, with W
    [Cout, Cin/groups, kh, kw] in CSR over output channels of W.reshape(Cout, -1) (row_ptr int32
    [Cout + 1], col_idx int16/int32 [nnz] in [0, Cin/groups*kh*kw), values [nnz]; int8 values times
    scales[co]). x [B, Cin, H, W] float32/float16/bfloat16; kernel_size, stride, padding, dilation are
    [h, w] pairs. float32 accumulation. Layout: slimkernels.quant.sparse."""
    channels_last = is_channels_last(x)
    xin = x.permute(0, 2, 3, 1) if channels_last else x.contiguous()
    y = dispatch(OP, x.device.type, xin, row_ptr, col_idx, values, scales, bias, list(kernel_size), list(stride),
                 list(padding), list(dilation), groups, channels_last, empty=x.shape[0] == 0)
    return y.permute(0, 3, 1, 2) if channels_last else y


def dense_weight(row_ptr, col_idx, values, scales, cin_per_group: int, kernel_size) -> Tensor:
    """The float32 weight [Cout, Cin/groups, kh, kw] the CSR tensors hold (the spec of the op's W)."""
    kh, kw = kernel_size
    w = layout.unpack_csr(row_ptr, col_idx, values, scales, cin_per_group * kh * kw)
    return w.reshape(-1, cin_per_group, kh, kw)


# ---- autograd: the weight is frozen (as weight_only_autograd for the linear ops) --------------------
_WEIGHT_ARGS = ("row_ptr", "col_idx", "values", "scales")


def _setup(ctx, inputs, output):
    x, row_ptr, col_idx, values, scales, bias, kernel_size, stride, padding, dilation, groups = inputs
    ctx.x_shape = tuple(x.shape)
    ctx.weight_args = (row_ptr, col_idx, values, scales)
    ctx.conv = (list(kernel_size), list(stride), list(padding), list(dilation), groups)
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _backward(ctx, grad):
    asked = [name for name, needs in zip(_WEIGHT_ARGS, ctx.needs_input_grad[1:5]) if needs]
    if asked:
        raise frozen_weight_error(OP, asked, SPARSE_WEIGHT_HINT)
    kernel_size, stride, padding, dilation, groups = ctx.conv
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = dense_weight(*ctx.weight_args, ctx.x_shape[1] // groups, kernel_size)
        grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, w, grad.float(), stride, padding, dilation, groups)
        grad_x = grad_x.to(grad.dtype)
    if ctx.bias_dtype is not None and ctx.needs_input_grad[5]:
        grad_bias = grad.float().sum((0, 2, 3)).to(ctx.bias_dtype)
    return (grad_x, None, None, None, None, grad_bias) + (None,) * 5


sparse_conv2d.opdef.register_autograd(_backward, setup_context=_setup)

__all__ = ["sparse_conv2d"]
