"""The dequant_int8 family: weight-only int8 (W8A16), x in float, weights int8 per output channel.
Contract and public function; implementations in backends/dequant_int8.py."""
from typing import Optional

import torch
from torch import Tensor

from . import _checks as check
from ._contract import linear_fake, linear_rows, op, weight_only_autograd


def _check(x, qweight, scales, bias=None):
    op_name = "dequant_mm_int8"
    check.float_input(op_name, "x", x)
    check.dtype(op_name, "qweight", qweight, (torch.int8,))
    check.ndim(op_name, "qweight", qweight, 2)
    if x.shape[-1] != qweight.shape[1]:
        raise ValueError(
            f"slimkernels.{op_name}: x has K={x.shape[-1]} features but qweight is [N, K] = {tuple(qweight.shape)}"
        )
    check.dtype(op_name, "scales", scales, (torch.float32,))
    check.shape(op_name, "scales", scales, (qweight.shape[0],))
    check.optional_bias(op_name, bias, qweight.shape[0])
    check.same_device(op_name, x=x, qweight=qweight, scales=scales, bias=bias)


@op("dequant_mm_int8", _check, linear_fake(lambda x, qweight, *_: qweight.shape[0]))
def dequant_mm_int8(x: Tensor, qweight: Tensor, scales: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Weight-only int8 (W8A16): x [..., K] @ (qweight [N, K] * scales[:, None]).T + bias -> [..., N]
    in x.dtype."""
    return linear_rows("dequant_mm_int8", x, qweight.shape[0], qweight, scales, bias)


def dequantize_int8(qweight: Tensor, scales: Tensor, _k: int = 0) -> Tensor:
    """The float32 weight [N, K] of a W8A16 layer."""
    return qweight.float() * scales[:, None]


weight_only_autograd(dequant_mm_int8.opdef, dequantize_int8, 2)

__all__ = ["dequant_mm_int8"]
