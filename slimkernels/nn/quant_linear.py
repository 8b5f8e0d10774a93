"""QuantLinear: a drop-in nn.Linear with int8 weights.

Modes:
  "w8a8"  dynamic: activations quantized per token at run time, weights per output channel, one
          int8 GEMM with the dequantize epilogue fused (int8_dynamic_linear).
  "w8a16" weight-only: activations stay float, int8 weights dequantized inside the matmul
          (dequant_mm_int8).
State (what state_dict and checkpoints hold): qweight int8 [N, K], weight_scale float32 [N],
bias float32 [N] or None. The device-specific packed weight is rebuilt on construction, on a move
to another device and after load_state_dict; it is never saved.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops

MODES = {
    "w8a8": "int8 per-token activations x int8 per-channel weights",
    "w8a16": "int8 per-channel weights, float activations",
}


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "w8a8", device=None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"QuantLinear: mode must be one of {sorted(MODES)}, got {mode!r}")
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"QuantLinear: in_features and out_features must be positive, got {in_features}, {out_features}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        self.register_buffer("packed_weight", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._repack())
        self._repack()

    @classmethod
    def from_float(cls, linear: nn.Linear, config="w8a8") -> "QuantLinear":
        """Quantize `linear` (weights per output channel, symmetric). `config` is a mode name or a
        config object with a `mode` attribute (Int8DynamicConfig, Int8WeightOnlyConfig)."""
        mode = config if isinstance(config, str) else getattr(config, "mode", None)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantLinear.from_float expects an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        if not torch.isfinite(weight).all():
            raise ValueError("QuantLinear.from_float: the weight holds NaN or Inf values; they cannot be quantized")
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, mode, device=weight.device)
        qweight, scale = ops.quantize_per_channel_int8(weight.float())
        module.qweight.copy_(qweight)
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach().float())
        module._repack()
        return module

    def _repack(self) -> None:
        self.packed_weight = ops.int8_prepack(self.qweight) if self.mode == "w8a8" else None

    def _apply(self, fn, recurse=True):
        # Scales and bias are float32 by contract: model.half() changes the activation dtype, not
        # ours, so a dtype cast keeps the float32 values and takes only the new device.
        kept = {name: getattr(self, name) for name in ("weight_scale", "bias") if getattr(self, name) is not None}
        device = self.qweight.device
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = getattr(self, name)
            if after.dtype != torch.float32:
                setattr(self, name, before.to(after.device))
        if self.qweight.device != device:
            self._repack()
        return self

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this module multiplies by."""
        return self.qweight.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear: expected input with {self.in_features} features, got shape {tuple(x.shape)}")
        if self.mode == "w8a16":
            return ops.dequant_mm_int8(x, self.qweight, self.weight_scale, self.bias)
        return ops.int8_dynamic_linear(x, self.packed_weight, self.weight_scale, self.bias)

    def layer_config(self) -> dict:
        """What a checkpoint records to rebuild this module without re-quantizing."""
        return {"type": "QuantLinear", "mode": self.mode, "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"mode={self.mode} ({MODES[self.mode]})")
