"""The int8_mm family: exact int8 GEMM, the GEMM with the dequantize epilogue fused, a weight packed
once for its device, and W8A8 (per-token activation quantization + packed GEMM) in one op.
Contracts and public functions; implementations in backends/int8_mm.py, packed layouts in
quant/packing.py."""
from typing import Optional

import torch
from torch import Tensor

from ..backends import dispatch
from ..quant.packing import int8_packed_shape, pack_int8, unpack_int8, unpack_int8_cpu
from . import _checks as check
from ._contract import linear_fake, linear_rows, op, weight_only_autograd


def _empty(a, n):
    return a.shape[0] == 0 or a.shape[1] == 0 or n == 0


# ---- int8_mm -------------------------------------------------------------------------------------
def _check_mm(a, b):
    check.int8_pair("int8_mm", a, b)


@op("int8_mm", _check_mm, lambda a, b: a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32))
def int8_mm(a: Tensor, b: Tensor) -> Tensor:
    """a [M, K] int8 @ b [N, K] int8 .T -> int32 [M, N], exact (wrapping mod 2^32 like int32 C)."""
    return dispatch("int8_mm", a.device.type, a, b, empty=_empty(a, b.shape[0]))


# ---- int8_scaled_mm ------------------------------------------------------------------------------
def _check_scaled(a, a_scale, b, b_scale, bias=None, out_dtype=torch.float32):
    check.int8_pair("int8_scaled_mm", a, b)
    check.scales_and_bias("int8_scaled_mm", a, a_scale, b_scale, bias, b.shape[0], out_dtype)


def _fake_scaled(a, a_scale, b, b_scale, bias=None, out_dtype=torch.float32):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


@op("int8_scaled_mm", _check_scaled, _fake_scaled)
def int8_scaled_mm(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, bias: Optional[Tensor] = None,
                   out_dtype: torch.dtype = torch.float32) -> Tensor:
    """((a @ b.T) * a_scale[m] * b_scale[n] + bias[n]) in float32, cast to out_dtype."""
    return dispatch("int8_scaled_mm", a.device.type, a, a_scale, b, b_scale, bias, out_dtype,
                    empty=_empty(a, b.shape[0]))


# ---- int8_prepack / int8_scaled_mm_packed ---------------------------------------------------------
# The packed layout is a function of the device (see quant/packing.py), not of the implementation,
# so a module packed once works with every implementation the switch can select.
def _check_prepack(b):
    check.dtype("int8_prepack", "b", b, (torch.int8,))
    check.ndim("int8_prepack", "b", b, 2)


def _fake_prepack(b):
    return b.new_empty(int8_packed_shape(b.device.type, b.shape[0], b.shape[1]), dtype=torch.int8)


@op("int8_prepack", _check_prepack, _fake_prepack)
def int8_prepack(b: Tensor) -> Tensor:
    """Pack a [N, K] int8 weight once, in the layout the kernels of b's device read."""
    return pack_int8(b)


def int8_unpack(packed: Tensor, n: int, k: int) -> Tensor:
    """The [N, K] int8 weight that int8_prepack packed into `packed`: its exact inverse, a new tensor.

    Every layout is read, whichever device the tensor is on now: the layout is told by the shape (the
    CPU's is flat, the others' [N, Kp], quant/packing.py), so a packed weight moved to another device
    unpacks there before it is repacked for it. Pure torch (traceable); one layout for every CPU ISA."""
    for name, value in (("n", n), ("k", k)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"slimkernels.int8_unpack: {name} must be an int >= 0, got {value!r}")
    check.dtype("int8_unpack", "packed", packed, (torch.int8,))
    shape = tuple(packed.shape)
    if shape == int8_packed_shape("cpu", n, k) or shape == int8_packed_shape("cuda", n, k):
        b = unpack_int8_cpu(packed, n, k) if packed.dim() == 1 else packed[:, :k]
        # never a view: writing into the unpacked weight must not change the packed one behind its column sums
        return b.clone(memory_format=torch.contiguous_format) if b.untyped_storage().data_ptr() == \
            packed.untyped_storage().data_ptr() else b
    raise ValueError(f"slimkernels.int8_unpack: packed has shape {shape}, which is no int8_prepack layout of an "
                     f"[N, K] = [{n}, {k}] weight ({int8_packed_shape('cpu', n, k)} on the CPU, "
                     f"{int8_packed_shape('cuda', n, k)} elsewhere)")


def _check_packed_shape(op_name: str, name: str, packed: Tensor, n: int, k: int) -> None:
    expected = int8_packed_shape(packed.device.type, n, k)
    if tuple(packed.shape) != expected:
        raise ValueError(
            f"slimkernels.{op_name}: {name} has shape {tuple(packed.shape)} but a weight of N={n} (from the scales) "
            f"and K={k} (from the activations) packs to {expected} on {packed.device.type}; pack it with "
            "slimkernels.ops.int8_prepack on the device it is used on"
        )


def _check_scaled_packed(a, a_scale, b_packed, b_scale, bias=None, out_dtype=torch.float32):
    op_name = "int8_scaled_mm_packed"
    check.dtype(op_name, "a", a, (torch.int8,))
    check.ndim(op_name, "a", a, 2)
    check.dtype(op_name, "b_packed", b_packed, (torch.int8,))
    check.dtype(op_name, "b_scale", b_scale, (torch.float32,))
    check.ndim(op_name, "b_scale", b_scale, 1)
    check.same_device(op_name, a=a, b_packed=b_packed)
    _check_packed_shape(op_name, "b_packed", b_packed, b_scale.shape[0], a.shape[1])
    check.scales_and_bias(op_name, a, a_scale, b_scale, bias, b_scale.shape[0], out_dtype)


def _fake_scaled_packed(a, a_scale, b_packed, b_scale, bias=None, out_dtype=torch.float32):
    return a.new_empty((a.shape[0], b_scale.shape[0]), dtype=out_dtype)


@op("int8_scaled_mm_packed", _check_scaled_packed, _fake_scaled_packed)
def int8_scaled_mm_packed(a: Tensor, a_scale: Tensor, b_packed: Tensor, b_scale: Tensor,
                          bias: Optional[Tensor] = None, out_dtype: torch.dtype = torch.float32) -> Tensor:
    """int8_scaled_mm with a weight from int8_prepack (N = len(b_scale), K = a.shape[1])."""
    return dispatch("int8_scaled_mm_packed", a.device.type, a, a_scale, b_packed, b_scale, bias, out_dtype,
                    empty=_empty(a, b_scale.shape[0]))


# ---- int8_dynamic_linear (W8A8 in one op) -----------------------------------------------------------
ACT_BITS = (7, 8)


def _check_dynamic(x, w_packed, w_scale, bias=None, act_bits=8):
    op_name = "int8_dynamic_linear"
    if type(act_bits) is not int or act_bits not in ACT_BITS:
        raise ValueError(f"{op_name}: act_bits must be 7 or 8, got {act_bits!r}")
    check.float_input(op_name, "x", x)
    check.dtype(op_name, "w_packed", w_packed, (torch.int8,))
    check.dtype(op_name, "w_scale", w_scale, (torch.float32,))
    check.ndim(op_name, "w_scale", w_scale, 1)
    check.optional_bias(op_name, bias, w_scale.shape[0])
    check.same_device(op_name, x=x, w_packed=w_packed, w_scale=w_scale, bias=bias)
    _check_packed_shape(op_name, "w_packed", w_packed, w_scale.shape[0], x.shape[-1])


@op("int8_dynamic_linear", _check_dynamic, linear_fake(lambda x, w_packed, w_scale, *_: w_scale.shape[0]))
def int8_dynamic_linear(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None,
                        act_bits: int = 8) -> Tensor:
    """W8A8 linear: quantize x [..., K] per token, int8 GEMM against a weight from int8_prepack,
    fused epilogue; [..., N] in x.dtype. Equal to quantize_per_token_int8 + int8_scaled_mm_packed.

    act_bits=7 quantizes the activations to |q| <= 63 (scale = amax / 63) instead of 127, on every
    device and instruction set alike (the result does not depend on the CPU): half the activation
    resolution, for the AVX2 kernel's vpmaddubsw path, about 1.6x its exact 8-bit path (FBGEMM's
    AVX2 scheme, torch's reduce_range). The products stay exact integer dot products either way.

    Differentiable in x and bias; the weight is frozen (w_packed is integer, and a w_scale that
    requires grad makes the backward raise a RuntimeError that says so). grad_x = grad @ W with W = unpack(w_packed) * w_scale,
    the dequantized weight: the per-token rounding of x is taken as the identity in the backward pass
    (the straight-through estimator, the usual convention for training through quantized
    activations), so grad_x is the gradient of x @ W.T + bias; grad_bias = grad summed over tokens."""
    return linear_rows("int8_dynamic_linear", x, w_scale.shape[0], w_packed, w_scale, bias, act_bits)


def dequantize_packed_int8(w_packed: Tensor, w_scale: Tensor, k: int) -> Tensor:
    """The float32 weight [N, K] of a packed W8A8 weight (any device's layout) and its scales."""
    return unpack_int8(w_packed, w_scale.shape[0], k).float() * w_scale[:, None]


class _WithoutActBits:
    """int8_dynamic_linear's opdef as weight_only_autograd expects it, (x, *weights, bias): the trailing
    act_bits (an int, no gradient) is dropped from the inputs it sees, and from needs_input_grad and
    padded back into the gradients when autograd tracks it (only when the call passed a non-default
    act_bits, as torch 2.13 does)."""

    def __init__(self, opdef):
        self.opdef, self.slim_name, self.slim_arg_names = opdef, opdef.slim_name, opdef.slim_arg_names[:-1]

    def register_autograd(self, backward, setup_context):
        n_args = len(self.opdef.slim_arg_names)

        def setup(ctx, inputs, output):
            setup_context(ctx, inputs[:n_args - 1], output)

        def backward_with_act_bits(ctx, grad):
            if len(ctx.needs_input_grad) < n_args:
                return backward(ctx, grad)
            return (*backward(_NeedsView(ctx), grad), None)

        self.opdef.register_autograd(backward_with_act_bits, setup_context=setup)


class _NeedsView:
    """ctx with needs_input_grad of the arguments before act_bits (every other attribute forwarded)."""

    def __init__(self, ctx):
        self.__dict__["_ctx"] = ctx
        self.__dict__["needs_input_grad"] = ctx.needs_input_grad[:-1]

    def __getattr__(self, name):
        return getattr(self._ctx, name)


weight_only_autograd(_WithoutActBits(int8_dynamic_linear.opdef), dequantize_packed_int8, 2)


# ---- autograd of int8_scaled_mm / int8_scaled_mm_packed ------------------------------------------------
# The int8 operands are integer tensors: torch refuses requires_grad on them ("only Tensors of floating
# point and complex dtype can require gradients"), so autograd never asks for their gradient. The float
# arguments get exact gradients of y = (acc * a_scale[m]) * b_scale[n] + bias[n], acc = a @ b.T the
# int32 product the forward used (recomputed in the backward only when a scale needs a gradient).
def _scaled_autograd(opdef, unpacked) -> None:
    def setup(ctx, inputs, output):
        a, a_scale, b, b_scale, bias, _out_dtype = inputs
        ctx.save_for_backward(a, a_scale, b, b_scale)
        ctx.bias_dtype = None if bias is None else bias.dtype

    def backward(ctx, grad):
        a, a_scale, b, b_scale = ctx.saved_tensors
        needs = ctx.needs_input_grad
        g = grad.float()
        grad_a_scale = grad_b_scale = grad_bias = None
        if needs[1] or needs[3]:
            acc = int8_mm(a, unpacked(b, b_scale.shape[0], a.shape[1])).float()
            if needs[1]:
                grad_a_scale = (g * acc * b_scale[None, :]).sum(1)
            if needs[3]:
                grad_b_scale = (g * acc * a_scale[:, None]).sum(0)
        if ctx.bias_dtype is not None and needs[4]:
            grad_bias = g.sum(0).to(ctx.bias_dtype)
        return None, grad_a_scale, None, grad_b_scale, grad_bias, None

    opdef.register_autograd(backward, setup_context=setup)


_scaled_autograd(int8_scaled_mm.opdef, lambda b, n, k: b)
_scaled_autograd(int8_scaled_mm_packed.opdef, unpack_int8)


__all__ = ["int8_mm", "int8_scaled_mm", "int8_prepack", "int8_unpack", "int8_scaled_mm_packed", "int8_dynamic_linear"]
