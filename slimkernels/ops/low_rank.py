"""The low_rank family: a linear layer whose weight is the product of two thin factors, W = U V
(LowRankLinear, slimkernels/nn/low_rank.py).

  low_rank_linear(x, v, u, bias)   (x @ v.T) @ u.T + bias, x [..., K], v [r, K], u [N, r] -> [..., N]

Trainable: gradients reach x, both factors and the bias (through the reference math: t = x v^T
recomputed, grad_u = grad^T t, grad_t = grad u, grad_v = grad_t^T x, grad_x = grad_t v).
Contract and public function here; implementations in backends/low_rank.py.
"""
from typing import Optional

from torch import Tensor

from . import _checks as check
from ._contract import as_rows, linear_fake, linear_rows, op


def _check_linear(x, v, u, bias=None):
    op_name = "low_rank_linear"
    check.float_input(op_name, "x", x)
    for name, factor in (("v", v), ("u", u)):
        check.dtype(op_name, name, factor, check.FLOAT_DTYPES)
        check.ndim(op_name, name, factor, 2)
    rank = v.shape[0]
    if rank < 1:
        raise ValueError(f"slimkernels.{op_name}: the rank r = v.shape[0] must be >= 1, got v of shape {tuple(v.shape)}")
    if v.shape[1] != x.shape[-1]:
        raise ValueError(f"slimkernels.{op_name}: x has {x.shape[-1]} features (shape {tuple(x.shape)}) but v is "
                         f"[r, K] = {tuple(v.shape)}")
    if u.shape[1] != rank:
        raise ValueError(f"slimkernels.{op_name}: u must be [N, r] with r = {rank} (v's rows), got shape "
                         f"{tuple(u.shape)}")
    check.optional_bias(op_name, bias, u.shape[0])
    check.same_device(op_name, x=x, v=v, u=u, bias=bias)


@op("low_rank_linear", _check_linear, linear_fake(lambda x, v, u, *_: u.shape[0]))
def low_rank_linear(x: Tensor, v: Tensor, u: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """(x [..., K] @ v.T) @ u.T + bias -> [..., N] in x.dtype: v [r, K], u [N, r], bias [N] or None, any
    float dtypes; float32 accumulation, the rank-r intermediate kept in float32. On CPU at small M the
    native kernel reads each factor once with the intermediate in cache (backends/low_rank.py)."""
    return linear_rows("low_rank_linear", x, u.shape[0], v, u, bias)


# ---- autograd ------------------------------------------------------------------------------------------
def _setup(ctx, inputs, output):
    x, v, u, bias = inputs
    ctx.save_for_backward(x, v, u)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad):
    x, v, u = ctx.saved_tensors
    rows, g = as_rows(x).float(), as_rows(grad).float()
    grad_t = g @ u.float()  # [M, r]
    grad_x = grad_v = grad_u = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = (grad_t @ v.float()).reshape(x.shape).to(x.dtype)
    if ctx.needs_input_grad[1]:
        grad_v = (grad_t.T @ rows).to(v.dtype)
    if ctx.needs_input_grad[2]:
        grad_u = (g.T @ (rows @ v.float().T)).to(u.dtype)
    if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
        grad_bias = g.sum(0).to(ctx.bias_dtype)
    return grad_x, grad_v, grad_u, grad_bias


low_rank_linear.opdef.register_autograd(_backward, setup_context=_setup)

__all__ = ["low_rank_linear"]
