"""The quantize family: symmetric int8 quantization of activations (per token) and weights (per
output channel). Contracts and public functions; implementations in backends/quantize.py."""
from typing import Tuple

import torch
from torch import Tensor

from ..backends import dispatch
from . import _checks as check
from ._contract import as_rows, flat_rows, op


def _check_tokens(x):
    check.float_input("quantize_per_token_int8", "x", x)


def _fake_tokens(x):
    m, k = flat_rows(x)
    return x.new_empty((m, k), dtype=torch.int8), x.new_empty((m,), dtype=torch.float32)


@op("quantize_per_token_int8", _check_tokens, _fake_tokens)
def quantize_per_token_int8(x: Tensor) -> Tuple[Tensor, Tensor]:
    """x [..., K] float -> (q int8 [M, K], scale float32 [M]), M = product of the leading dims:
    scale = absmax/127 per row (1 for all-zero rows), q = round(x/scale)."""
    rows = as_rows(x)
    return dispatch("quantize_per_token_int8", x.device.type, rows, empty=rows.shape[0] == 0 or rows.shape[1] == 0)


def _check_channels(w):
    check.float_input("quantize_per_channel_int8", "w", w)
    check.ndim("quantize_per_channel_int8", "w", w, 2)


def _fake_channels(w):
    return w.new_empty(w.shape, dtype=torch.int8), w.new_empty((w.shape[0],), dtype=torch.float32)


@op("quantize_per_channel_int8", _check_channels, _fake_channels)
def quantize_per_channel_int8(w: Tensor) -> Tuple[Tensor, Tensor]:
    """w [N, K] float -> (q int8 [N, K], scale float32 [N]), symmetric per output channel (the
    per-token math on rows)."""
    return dispatch("quantize_per_token_int8", w.device.type, w, empty=w.shape[0] == 0 or w.shape[1] == 0)


__all__ = ["quantize_per_token_int8", "quantize_per_channel_int8"]
