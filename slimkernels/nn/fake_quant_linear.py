"""FakeQuantLinear: an nn.Linear that trains through the rounding of a QuantLinear mode (QAT).

The forward pass uses the weights (and for w8a8 the activations) exactly as the QuantLinear built
by `to_quant_linear` will see them, quantized then dequantized; the backward pass treats the
rounding as the identity (the straight-through estimator, Bengio et al. 2013), so the float
weights keep learning. Per mode:
  w8a8      weights per output channel and activations per token, int8 symmetric
  w8a16     weights per output channel, int8 symmetric
  w4a16     weights per group, int4 round-to-nearest with the config's group size and symmetry
  codebook  weights snapped to the nearest entry of a codebook fitted once, when the layer is
            prepared (k-means / NF4 / pow2); the codebook stays fixed while the weights train
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backends.quantize import quantize_rows_int8
from .quant_linear import QuantLinear


def _straight_through(value: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """quantized in the forward pass, d/dvalue = identity in the backward pass."""
    return value + (quantized - value).detach()


def fake_quantize_rows_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric int8 quantize + dequantize (the rounding of quantize_per_token_int8)."""
    rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    q, scale = quantize_rows_int8(rows.detach())
    return (q.float() * scale[:, None]).reshape(x.shape).to(x.dtype)


class FakeQuantLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, config=None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if config is None or getattr(config, "mode", None) not in ("w8a8", "w8a16", "w4a16", "codebook"):
            raise ValueError(f"FakeQuantLinear: config must be a slimkernels quantization config, got {config!r}")
        self.config = config
        self.register_buffer("codebook", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config) -> "FakeQuantLinear":
        """Wrap `linear`, sharing its weight and bias Parameters (an optimizer built on them still works)."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, config, device="meta")
        module.weight, module.bias = linear.weight, linear.bias
        if config.mode == "codebook":
            from ..quant.codebook import fit_codebook

            _, codebook = fit_codebook(linear.weight.detach().float(), config.bits, config.codebook, config.per,
                                       seed=config.seed)
            module.codebook = codebook
        return module

    def _quantized_parts(self, w: torch.Tensor):
        """(codes or int8 values, params...) of the current weight, as to_quant_linear stores them."""
        mode, cfg = self.config.mode, self.config
        if mode in ("w8a8", "w8a16"):
            return quantize_rows_int8(w)
        if mode == "w4a16":
            from ..quant.int4 import quantize_int4_rtn

            return quantize_int4_rtn(w, self._group_size(), cfg.symmetric)
        from ..quant.codebook import assign_codes

        return assign_codes(w, self.codebook.to(w.device)), self.codebook

    def _group_size(self) -> int:
        return self.in_features if self.config.group_size == -1 else self.config.group_size

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the converted layer will hold it (float32, no gradient)."""
        w = self.weight.detach().float()
        parts = self._quantized_parts(w)
        if self.config.mode in ("w8a8", "w8a16"):
            q, scale = parts
            return q.float() * scale[:, None]
        if self.config.mode == "w4a16":
            from ..quant.int4 import dequantize_int4_codes

            return dequantize_int4_codes(*parts, self._group_size())
        codes, codebook = parts
        return torch.gather(codebook.expand(codes.shape[0], -1), 1, codes.long())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _straight_through(self.weight, self.quantized_weight().to(self.weight.dtype))
        if self.config.mode == "w8a8":
            x = _straight_through(x, fake_quantize_rows_int8(x))
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def to_quant_linear(self) -> QuantLinear:
        """The QuantLinear whose outputs equal this layer's fake-quantized ones."""
        w = self.weight.detach().float()
        parts = self._quantized_parts(w)
        bias = None if self.bias is None else self.bias.detach()
        mode = self.config.mode
        if mode in ("w8a8", "w8a16"):
            return QuantLinear.from_int8(*parts, bias, mode)
        if mode == "w4a16":
            return QuantLinear.from_int4(*parts, self._group_size(), bias)
        return QuantLinear.from_codebook(*parts, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, qat={self.config.describe()}"
