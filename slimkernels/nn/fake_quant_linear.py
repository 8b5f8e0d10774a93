"""FakeQuantLinear: an nn.Linear that trains through the rounding of a QuantLinear format (QAT).

The forward pass uses the weights (and for w8a8 the activations) exactly as the QuantLinear built
by `to_quant_linear` will see them, quantized then dequantized; the backward pass treats the
rounding as the identity (the straight-through estimator, Bengio et al. 2013), so the float
weights keep learning. The rounding step is the format's (nn/formats.py: round, dequantize_parts,
fake_quantize_input, fit), chosen by the config's mode:
  w8a8      weights per output channel and activations per token, int8 symmetric (act_bits=7: |q| <= 63)
  w8a16     weights per output channel, int8 symmetric
  w4a16     weights per group, int4 round-to-nearest with the config's group size and symmetry
  w4a8      as w4a16, and activations per token as w8a8
  codebook  weights snapped to the nearest entry of a codebook fitted once, when the layer is
            prepared (k-means / NF4 / pow2); the codebook stays fixed (a buffer) while the weights train
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .formats import WeightFormat, fake_quantize_rows_int8, weight_format, weight_formats
from .quant_linear import QuantLinear

__all__ = ["FakeQuantLinear", "fake_quantize_rows_int8"]


def _straight_through(value: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """quantized in the forward pass, d/dvalue = identity in the backward pass."""
    return value + (quantized - value).detach()


class FakeQuantLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, config=None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if config is None or getattr(config, "mode", None) not in weight_formats():
            raise ValueError(f"FakeQuantLinear: config must be a slimkernels quantization config, got {config!r}")
        fmt = weight_format(config.mode)
        self.config = config
        self.format: WeightFormat = fmt(in_features, out_features, **fmt.options_from_config(config))
        self._state_names: tuple[str, ...] = ()

    @classmethod
    def from_linear(cls, linear: nn.Linear, config) -> "FakeQuantLinear":
        """Wrap `linear`, sharing its weight and bias Parameters (an optimizer built on them still works)."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, config, device="meta")
        module.weight, module.bias = linear.weight, linear.bias
        state = module.format.fit(linear.weight.detach().float(), config)
        for name, value in state.items():  # e.g. the fitted codebook: saved with the model, fixed in training
            module.register_buffer(name, value)
        module._state_names = tuple(state)
        return module

    def _rounded(self):
        """The format's unpacked tensors of the current weight, as to_quant_linear stores them."""
        state = {name: getattr(self, name) for name in self._state_names}
        return self.format.round(self.weight.detach().float(), state)

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the converted layer will hold it (float32, no gradient)."""
        return self.format.dequantize_parts(self._rounded())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _straight_through(self.weight, self.quantized_weight().to(self.weight.dtype))
        xq = self.format.fake_quantize_input(x)
        if xq is not None:
            x = _straight_through(x, xq)
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def to_quant_linear(self) -> QuantLinear:
        """The QuantLinear whose outputs equal this layer's fake-quantized ones."""
        bias = None if self.bias is None else self.bias.detach()
        return QuantLinear.from_parts(self.format.mode, *self._rounded(), bias=bias, dtype=self.weight.dtype,
                                      **self.format.config_fields())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, qat={self.config.describe()}"
