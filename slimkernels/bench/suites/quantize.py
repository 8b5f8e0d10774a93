"""Suite of the quantize family: per-token (per-row) symmetric int8 quantization of activations x [M, K],
the first half of every w8a8 layer. No weights: x stays in cache, as a layer's input does."""
from __future__ import annotations

import functools
import warnings

import torch

from ..registry import Case, EntrySpec, Inputs, Work, register


def _bytes(i: Inputs) -> int:
    return i.fsize * i.m * i.k + i.m * i.k + 4 * i.m  # read x, write q and the scales


def _ours(i: Inputs) -> Work:
    from ... import ops

    return Work([functools.partial(ops.quantize_per_token_int8, i.x)], _bytes(i), ops=i.m * i.k)


def _per_row_eager(x: torch.Tensor):
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12) / 127.0
    return torch.round(x.float() / scale).clamp_(-127, 127).to(torch.int8), scale


def _torch_per_row(i: Inputs) -> Work:
    return Work([functools.partial(_per_row_eager, i.x)], _bytes(i), ops=i.m * i.k)


def _per_tensor_dynamic(x: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice for quantized tensors
        return torch.quantize_per_tensor_dynamic(x, torch.quint8, False)


def _fbgemm_per_tensor(i: Inputs) -> Work:
    return Work([functools.partial(_per_tensor_dynamic, i.x)], i.fsize * i.m * i.k + i.m * i.k, ops=i.m * i.k)


@register("quantize", family="quantize", op="quantize_per_token_int8", default=False, weights=False, description=(
    "per-token int8 quantization of x [M, K] (in cache; one case per K): ops.quantize_per_token_int8 once "
    "per implementation usable on the device; anchors: the same formula in eager torch ops (per row) and, "
    "on CPU, FBGEMM's per-tensor dynamic quantization (torch.quantize_per_tensor_dynamic, what FBGEMM "
    "dynamic int8 does to x inside its call)"))
def quantize(case: Case) -> list[EntrySpec]:
    specs: list[EntrySpec] = []
    for impl in case.implementations("quantize_per_token_int8"):
        specs += case.ours(f"ours:{impl}", f"ours_{impl}", _ours, impl=impl, backend=impl, skip_large_reference=False)
    specs += case.anchor("eager per-row", "eager_per_row", _torch_per_row)
    if case.device == "cpu":
        specs += case.anchor("fbgemm per-tensor", "fbgemm_per_tensor", _fbgemm_per_tensor)
    return specs
