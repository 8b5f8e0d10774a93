"""How an op family declares its ops: one decorator turns a typed Python function (argument checks,
then `dispatch`) into a `torch.library` custom op with a fake kernel, and returns the public typed
function that calls the registered op (so torch.compile, export and opcheck see the op)."""
import functools
import inspect
from typing import Callable, Tuple

import torch
from torch import Tensor

from ..backends import dispatch

LIB = "slimkernels"


def op(name: str, check: Callable, fake: Callable):
    """Decorator: the function becomes `torch.ops.slimkernels.<name>` (schema from its type hints,
    defaults included). `check(*args)` validates the arguments before the body and before `fake`
    (the fake kernel), so eager calls and traced ones fail alike. The returned public function keeps
    the signature and docstring, and has the op's definition as `.opdef` (for register_autograd)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def body(*args, **kwargs):
            check(*args, **kwargs)
            return fn(*args, **kwargs)

        def checked_fake(*args, **kwargs):
            check(*args, **kwargs)
            return fake(*args, **kwargs)

        signature = inspect.signature(fn)
        # torch < 2.5 infers schemas with int/float/bool/None defaults only: an op with a dtype
        # default gets a schema without defaults, and its public function fills them in.
        kept = list(signature.parameters.values())
        if any(isinstance(p.default, torch.dtype) for p in kept):
            kept = [p.replace(default=inspect.Parameter.empty) for p in kept]
        body.__signature__ = signature.replace(parameters=kept)
        opdef = torch.library.custom_op(f"{LIB}::{name}", mutates_args=())(body)
        opdef.register_fake(checked_fake)
        handle = getattr(getattr(torch.ops, LIB), name).default  # looked up once: a per-call lookup costs us

        if kept == list(signature.parameters.values()):
            @functools.wraps(fn)
            def public(*args, **kwargs):
                return handle(*args, **kwargs)
        else:
            @functools.wraps(fn)
            def public(*args, **kwargs):
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                return handle(*bound.args)

        public.opdef = opdef
        return public

    return deco


def flat_rows(x: Tensor) -> Tuple[int, int]:
    """(M, K) of x [..., K] with the leading dims flattened; works for K == 0 too."""
    return int(torch.Size(x.shape[:-1]).numel()), x.shape[-1]


def as_rows(x: Tensor) -> Tensor:
    if x.dim() == 2:
        return x
    # reshape(-1, K) cannot infer -1 when K == 0, so name M explicitly.
    return x.reshape(flat_rows(x))


def linear_rows(op_name: str, x: Tensor, n: int, *weights) -> Tensor:
    """Run a linear-like op on x [..., K] flattened to rows; the result is [..., n]. M, N or K = 0 is
    an empty problem, answered by the reference."""
    rows = as_rows(x)
    empty = rows.shape[0] == 0 or rows.shape[1] == 0 or n == 0
    y = dispatch(op_name, x.device.type, rows, *weights, empty=empty)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n)


def linear_fake(n_of: Callable) -> Callable:
    """Fake kernel of a linear-like op: [..., N] in x.dtype, N = n_of(*args)."""

    def fake(x, *rest):
        return x.new_empty((*x.shape[:-1], n_of(x, *rest)))

    return fake


def weight_only_autograd(opdef, dequantize: Callable, n_weight_args: int) -> None:
    """Autograd of a weight-only op(x, *weights, bias): the weights are frozen integers or codes, so
    only x and bias get gradients (distillation and fine-tuning around quantized layers); the
    backward dequantizes the weight with `dequantize(*weights, K)`."""

    def setup(ctx, inputs, output):
        ctx.k = inputs[0].shape[-1]
        ctx.weight_args = inputs[1:1 + n_weight_args]
        bias = inputs[-1]
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def backward(ctx, grad):
        w = dequantize(*ctx.weight_args, ctx.k)
        grad_x = (grad.float() @ w).to(grad.dtype)
        grad_bias = None if ctx.bias_dtype is None else as_rows(grad).float().sum(0).to(ctx.bias_dtype)
        return (grad_x,) + (None,) * n_weight_args + (grad_bias,)

    opdef.register_autograd(backward, setup_context=setup)
