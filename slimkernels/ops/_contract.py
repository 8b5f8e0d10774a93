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
        opdef.slim_name, opdef.slim_arg_names = name, tuple(signature.parameters)  # for the autograd helpers
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


FROZEN_WEIGHT_HINT = (
    "the quantized weight is frozen: its integer codes have no gradient, and the float tensors that "
    "dequantize them (scales, zero points, codebooks) are treated as constants. Gradients flow to the "
    "input and the bias only. To train the weights, fine-tune the float model with prepare_qat_ "
    "(FakeQuantLinear) and convert_ it; to adapt a quantized model, train float layers (an adapter, "
    "LoRA) beside the frozen quantized ones"
)


SPARSE_WEIGHT_HINT = (
    "the sparse weight is frozen: its stored values and indices get no gradient. Gradients flow to the input "
    "and the bias only. To train a pruned model, fine-tune the float model with its pruning mask applied "
    "before sparsify_, or train float layers (an adapter, LoRA) beside the frozen sparse ones"
)


def frozen_weight_error(op_name: str, names, hint: str = FROZEN_WEIGHT_HINT) -> RuntimeError:
    """The error an op's backward raises when a gradient is asked for its frozen (quantized or sparse) weight."""
    return RuntimeError(f"slimkernels.{op_name}: no gradient for {', '.join(names)}: {hint}")


def weight_only_autograd(opdef, dequantize: Callable, n_weight_args: int, hint: str = FROZEN_WEIGHT_HINT) -> None:
    """Autograd of a linear-like op(x, *weights, bias) over a quantized weight: the weights are frozen
    integers or codes (and the float tensors that dequantize them), so only x and bias get gradients
    (distillation, adapters and fine-tuning around quantized layers): grad_x = grad @ W with
    W = `dequantize(*weights, K)` in float32, grad_bias = grad summed over rows. A weight argument
    that requires grad (say a scale buffer set to requires_grad_()) makes the backward raise a
    RuntimeError naming it and saying what to do instead (frozen_weight_error), not return None
    silently. For ops whose forward also rounds x (W8A8), the gradient of that rounding is taken as
    the identity (straight-through estimator): grad_x is the gradient of x @ W.T + bias."""
    op_name, weight_names = opdef.slim_name, opdef.slim_arg_names[1:1 + n_weight_args]

    def setup(ctx, inputs, output):
        ctx.k = inputs[0].shape[-1]
        ctx.weight_args = inputs[1:1 + n_weight_args]
        bias = inputs[-1]
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def backward(ctx, grad):
        asked = [name for name, needs in zip(weight_names, ctx.needs_input_grad[1:1 + n_weight_args]) if needs]
        if asked:
            raise frozen_weight_error(op_name, asked, hint)
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            w = dequantize(*ctx.weight_args, ctx.k)
            grad_x = (grad.float() @ w).to(grad.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[-1]:
            grad_bias = as_rows(grad).float().sum(0).to(ctx.bias_dtype)
        return (grad_x,) + (None,) * n_weight_args + (grad_bias,)

    opdef.register_autograd(backward, setup_context=setup)
