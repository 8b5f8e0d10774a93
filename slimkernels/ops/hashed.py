"""The hashed family (HashedNets weight sharing, Chen et al. 2015): a virtual weight W [N, K] whose
entries are read from a small bucket array through a hash of their position and a sign hash
(specified in backends/hashed.py and csrc/include/slim/hashed.h), never stored.

  hashed_linear(x, buckets, seed, out_features, in_features, bias)  x @ W.T + bias, W never materialized
  hashed_weight(buckets, seed, out_features, in_features)            W itself, float32 [N, K]
  hashed_bucket_grad(grad_w, num_buckets, seed)                      the buckets' gradient given dL/dW

Trainable: the gradient of hashed_linear and hashed_weight reaches the buckets (grad_buckets[b] = sum of
sign * dL/dW[n, k] over the entries bucket b feeds, dL/dW = grad.T @ x for the linear op), x and the bias.
Contracts and public functions here; implementations in backends/hashed.py.
"""
from typing import Optional

import torch
from torch import Tensor

from ..backends import dispatch
from . import _checks as check
from ._contract import as_rows, linear_fake, linear_rows, op

MAX_BUCKETS = 2**31 - 1  # the native kernels gather with signed 32-bit indices
SEED_LIMIT = 2**32


def _check_int(op_name: str, name: str, value, low: int, high: Optional[int] = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value >= high):
        span = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"slimkernels.{op_name}: {name} must be an int {span}, got {value!r}")


def _check_buckets(op_name: str, name: str, buckets) -> None:
    check.dtype(op_name, name, buckets, check.FLOAT_DTYPES)
    check.ndim(op_name, name, buckets, 1)
    if buckets.numel() < 1:
        raise ValueError(f"slimkernels.{op_name}: {name} must hold at least 1 bucket, got none")
    if buckets.numel() > MAX_BUCKETS:
        raise ValueError(f"slimkernels.{op_name}: {name} holds {buckets.numel()} buckets, more than {MAX_BUCKETS}")


def _check_weight(op_name, buckets, seed, out_features, in_features):
    _check_buckets(op_name, "buckets", buckets)
    _check_int(op_name, "seed", seed, 0, SEED_LIMIT)
    _check_int(op_name, "out_features", out_features, 0)
    _check_int(op_name, "in_features", in_features, 0)


# ---- hashed_linear -------------------------------------------------------------------------------------
def _check_linear(x, buckets, seed, out_features, in_features, bias=None):
    op_name = "hashed_linear"
    check.float_input(op_name, "x", x)
    _check_weight(op_name, buckets, seed, out_features, in_features)
    if x.shape[-1] != in_features:
        raise ValueError(f"slimkernels.{op_name}: x has {x.shape[-1]} features (shape {tuple(x.shape)}) but the "
                         f"weight is [out_features={out_features}, in_features={in_features}]")
    check.optional_bias(op_name, bias, out_features)
    check.same_device(op_name, x=x, buckets=buckets, bias=bias)


@op("hashed_linear", _check_linear, linear_fake(lambda x, buckets, seed, n, *_: n))
def hashed_linear(x: Tensor, buckets: Tensor, seed: int, out_features: int, in_features: int,
                  bias: Optional[Tensor] = None) -> Tensor:
    """x [..., K] @ W.T + bias -> [..., N] in x.dtype, W [N, K] the hashed virtual weight of `buckets`
    ([B], float) under `seed` (an int in [0, 2**32)); float32 accumulation. W is never materialized by
    the native CPU kernel (hashes in registers, buckets gathered from cache)."""
    return linear_rows("hashed_linear", x, out_features, buckets, seed, out_features, in_features, bias)


# ---- hashed_weight -------------------------------------------------------------------------------------
def _check_weight_op(buckets, seed, out_features, in_features):
    _check_weight("hashed_weight", buckets, seed, out_features, in_features)


def _weight_fake(buckets, seed, out_features, in_features):
    return buckets.new_empty((out_features, in_features), dtype=torch.float32)


@op("hashed_weight", _check_weight_op, _weight_fake)
def hashed_weight(buckets: Tensor, seed: int, out_features: int, in_features: int) -> Tensor:
    """The virtual weight W [out_features, in_features] in float32 (for model code that reads a weight,
    large batches, and checks)."""
    empty = out_features == 0 or in_features == 0
    return dispatch("hashed_weight", buckets.device.type, buckets, seed, out_features, in_features, empty=empty)


# ---- hashed_bucket_grad ----------------------------------------------------------------------------------
def _check_bucket_grad(grad_w, num_buckets, seed):
    op_name = "hashed_bucket_grad"
    check.dtype(op_name, "grad_w", grad_w, check.FLOAT_DTYPES)
    check.ndim(op_name, "grad_w", grad_w, 2)
    _check_int(op_name, "num_buckets", num_buckets, 1, MAX_BUCKETS + 1)
    _check_int(op_name, "seed", seed, 0, SEED_LIMIT)


def _bucket_grad_fake(grad_w, num_buckets, seed):
    return grad_w.new_empty((num_buckets,), dtype=torch.float32)


@op("hashed_bucket_grad", _check_bucket_grad, _bucket_grad_fake)
def hashed_bucket_grad(grad_w: Tensor, num_buckets: int, seed: int) -> Tensor:
    """grad_buckets float32 [num_buckets]: sign * grad_w[n, k] summed into the bucket each entry of the
    virtual weight [N, K] = grad_w.shape reads (the adjoint of hashed_weight)."""
    empty = grad_w.numel() == 0
    return dispatch("hashed_bucket_grad", grad_w.device.type, grad_w, num_buckets, seed, empty=empty)


# ---- autograd ------------------------------------------------------------------------------------------
def _bucket_grad_as(grad_w: Tensor, buckets_meta: tuple) -> Tensor:
    num_buckets, seed, dtype = buckets_meta
    return hashed_bucket_grad(grad_w, num_buckets, seed).to(dtype)


def _linear_setup(ctx, inputs, output):
    x, buckets, seed, out_features, in_features, bias = inputs
    ctx.save_for_backward(x, buckets)
    ctx.seed, ctx.n, ctx.k = seed, out_features, in_features
    ctx.bias_dtype = None if bias is None else bias.dtype


def _linear_backward(ctx, grad):
    x, buckets = ctx.saved_tensors
    grad_x = grad_buckets = grad_bias = None
    rows = as_rows(grad).float()
    if ctx.needs_input_grad[0]:
        w = hashed_weight(buckets, ctx.seed, ctx.n, ctx.k)
        grad_x = (grad.float() @ w).to(x.dtype)
    if ctx.needs_input_grad[1]:
        # dL/dW = grad.T @ x, materialized ([N, K] float32: fine for layers one trains), then scattered.
        grad_w = rows.T @ as_rows(x).float()
        grad_buckets = _bucket_grad_as(grad_w, (buckets.numel(), ctx.seed, buckets.dtype))
    if ctx.bias_dtype is not None and ctx.needs_input_grad[5]:
        grad_bias = rows.sum(0).to(ctx.bias_dtype)
    return grad_x, grad_buckets, None, None, None, grad_bias


def _weight_setup(ctx, inputs, output):
    buckets, seed, _, _ = inputs
    ctx.meta = (buckets.numel(), seed, buckets.dtype)


def _weight_backward(ctx, grad):
    grad_buckets = _bucket_grad_as(grad, ctx.meta) if ctx.needs_input_grad[0] else None
    return grad_buckets, None, None, None


hashed_linear.opdef.register_autograd(_linear_backward, setup_context=_linear_setup)
hashed_weight.opdef.register_autograd(_weight_backward, setup_context=_weight_setup)

__all__ = ["hashed_linear", "hashed_weight", "hashed_bucket_grad"]
