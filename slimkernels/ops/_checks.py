"""Argument checks shared by the fake kernels and the real op bodies: one place, one wording.

Every failure names the argument and what was expected, and raises TypeError (wrong dtype or kind)
or ValueError (wrong shape, device or value).
"""
from typing import Union

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _fail_type(op: str, name: str, expected: str, got: Union[torch.Tensor, object]) -> None:
    desc = f"{got.dtype} tensor of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else repr(got)
    raise TypeError(f"slimkernels.{op}: {name} must be {expected}, got {desc}")


def dtype(op: str, name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        _fail_type(op, name, "a tensor", t)
    if t.dtype not in allowed:
        _fail_type(op, name, " or ".join(str(d) for d in allowed), t)


def ndim(op: str, name: str, t: torch.Tensor, dims: int) -> None:
    if t.dim() != dims:
        raise ValueError(f"slimkernels.{op}: {name} must be {dims}-D, got shape {tuple(t.shape)}")


def shape(op: str, name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"slimkernels.{op}: {name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def same_device(op: str, **tensors) -> None:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"slimkernels.{op}: {name} is on {t.device} but {first_name} is on {first.device}; "
                "all tensors must be on the same device"
            )


def out_dtype(op: str, value: torch.dtype) -> None:
    if value not in FLOAT_DTYPES:
        raise TypeError(f"slimkernels.{op}: out_dtype must be one of {FLOAT_DTYPES}, got {value}")


def int8_pair(op: str, a: torch.Tensor, b: torch.Tensor) -> None:
    dtype(op, "a", a, (torch.int8,))
    dtype(op, "b", b, (torch.int8,))
    ndim(op, "a", a, 2)
    ndim(op, "b", b, 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"slimkernels.{op}: a is [M, K] = {tuple(a.shape)} and b is [N, K] = {tuple(b.shape)}; K must match"
        )
    same_device(op, a=a, b=b)


def scales_and_bias(op: str, a: torch.Tensor, a_scale, b_scale, bias, n: int, dt: torch.dtype) -> None:
    dtype(op, "a_scale", a_scale, (torch.float32,))
    dtype(op, "b_scale", b_scale, (torch.float32,))
    shape(op, "a_scale", a_scale, (a.shape[0],))
    shape(op, "b_scale", b_scale, (n,))
    optional_bias(op, bias, n)
    out_dtype(op, dt)
    same_device(op, a=a, a_scale=a_scale, b_scale=b_scale, bias=bias)


def float_input(op: str, name: str, x: torch.Tensor) -> None:
    dtype(op, name, x, FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"slimkernels.{op}: {name} must have at least 1 dimension, got a scalar")


def group_size(op: str, value: int, k: int) -> None:
    """Group sizes of group-wise quantization: a multiple of 32 dividing K, or K itself (per channel)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"slimkernels.{op}: group_size must be a positive int, got {value!r}")
    if k == 0:
        return
    if k % value != 0:
        raise ValueError(
            f"slimkernels.{op}: group_size={value} does not divide K={k}; pick a group size that divides the "
            "number of input features, or group_size=K for one group per output channel"
        )
    if value != k and value % 32 != 0:
        raise ValueError(f"slimkernels.{op}: group_size must be a multiple of 32 or equal to K={k}, got {value}")


def optional_bias(op: str, value, n: int) -> None:
    """An optional float bias [N]."""
    if value is not None:
        dtype(op, "bias", value, FLOAT_DTYPES)
        shape(op, "bias", value, (n,))
