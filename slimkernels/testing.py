"""Test helpers (shipped, like torch.testing): which (device, implementation) pairs exist here,
and the worst-case inputs every kernel is checked on. pytest is imported only when needed."""
from __future__ import annotations

import torch

from . import backends

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SLOW_IMPLS = {"triton"}  # on CPU Triton runs in its interpreter: small shapes only


def impl_params(op: str, include_reference: bool = False):
    """pytest params (device, impl) for every implementation of `op` usable here."""
    import pytest

    params = []
    for device in DEVICES:
        for impl in backends.implementations(op, device):
            if impl == "reference" and not include_reference:
                continue
            marks = [pytest.mark.gpu] if device == "cuda" else []
            params.append(pytest.param(device, impl, id=f"{device}-{impl}", marks=marks))
    if not params:
        params.append(pytest.param("cpu", "none", marks=pytest.mark.skip(reason=f"no implementation of {op} beyond the reference")))
    return params


def small_only(device: str, impl: str) -> bool:
    return device == "cpu" and impl in SLOW_IMPLS


def rand_int8(*shape, device="cpu", gen=None):
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen).to(device)


def extreme_int8(kind: str, *shape, device="cpu"):
    """Worst cases for int8 dot products: all -128, all 127, and alternating extremes."""
    if kind == "min":
        t = torch.full(shape, -128, dtype=torch.int8)
    elif kind == "max":
        t = torch.full(shape, 127, dtype=torch.int8)
    else:
        t = torch.where(torch.rand(shape) < 0.5, torch.tensor(-128, dtype=torch.int8), torch.tensor(127, dtype=torch.int8))
    return t.to(device)
