"""QuantLinear: a drop-in nn.Linear with quantized weights, one class for every weight format.

Modes and the state each keeps (what state_dict and checkpoints hold; layouts in quant/lowbit.py):
  "w8a8"     dynamic int8: activations quantized per token at run time, weights per output channel,
             one int8 GEMM with the dequantize epilogue fused (int8_dynamic_linear).
             qweight int8 [N, K], weight_scale float32 [N]
  "w8a16"    weight-only int8 (dequant_mm_int8): qweight int8 [N, K], weight_scale float32 [N]
  "w4a16"    weight-only int4, group-wise (dequant_mm_int4): qweight uint8 [N, ceil(K/2)],
             weight_scale float32 [N, K/g], weight_zero uint8 [N, K/g] (absent when symmetric)
  "codebook" weight sharing (lut_mm): qweight uint8 [N, ceil(K*bits/8)] packed codes,
             codebook float32 [1 or N, 2^bits]
and bias float32 [N] or None. The w8a8 device-specific packed weight is rebuilt on construction, on
a move to another device and after load_state_dict; it is never saved.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..ops import _checks
from ..quant import lowbit

MODES = {
    "w8a8": "int8 per-token activations x int8 per-channel weights",
    "w8a16": "int8 per-channel weights, float activations",
    "w4a16": "int4 group-wise weights, float activations",
    "codebook": "codebook-indexed weights, float activations",
}
_FLOAT32_STATE = ("weight_scale", "codebook", "bias")


def _mode_of(config) -> str:
    return config if isinstance(config, str) else getattr(config, "mode", None)


def _need_hessian(hessian) -> None:
    if hessian is None:
        raise ValueError("QuantLinear.from_float: GPTQ needs the layer's input Hessian; pass hessian= or use "
                         "slimkernels.quantize_(model, config, calibration=batches)")


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "w8a8", device=None, *,
                 group_size: int = 128, symmetric: bool = False, bits: int = 4, per: str = "row"):
        """An empty layer of the given format (filled by from_float, load_state_dict or slimkernels.load).
        group_size/symmetric apply to "w4a16" (group_size -1 = per channel); bits/per to "codebook"."""
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"QuantLinear: mode must be one of {sorted(MODES)}, got {mode!r}")
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"QuantLinear: in_features and out_features must be positive, got {in_features}, {out_features}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        n, k = out_features, in_features
        self.group_size = self.symmetric = self.bits = self.per = None
        if mode in ("w8a8", "w8a16"):
            self.register_buffer("qweight", torch.zeros(n, k, dtype=torch.int8, device=device))
            self.register_buffer("weight_scale", torch.ones(n, dtype=torch.float32, device=device))
        elif mode == "w4a16":
            self.group_size = k if group_size in (-1, None) else group_size
            _checks.group_size("QuantLinear", self.group_size, k)
            self.symmetric = bool(symmetric)
            groups = k // self.group_size
            self.register_buffer("qweight", torch.zeros(n, lowbit.packed_row_bytes(k, 4), dtype=torch.uint8, device=device))
            self.register_buffer("weight_scale", torch.ones(n, groups, dtype=torch.float32, device=device))
            zeros = None if self.symmetric else torch.full((n, groups), 8, dtype=torch.uint8, device=device)
            self.register_buffer("weight_zero", zeros)
        else:
            if bits not in lowbit.CODE_BITS or per not in ("row", "layer"):
                raise ValueError(f"QuantLinear: codebook mode needs bits in {lowbit.CODE_BITS} and per in ('row', 'layer'), got {bits!r}, {per!r}")
            self.bits, self.per = bits, per
            self.register_buffer("qweight", torch.zeros(n, lowbit.packed_row_bytes(k, bits), dtype=torch.uint8, device=device))
            self.register_buffer("codebook", torch.zeros(n if per == "row" else 1, 1 << bits, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(n, dtype=torch.float32, device=device) if bias else None)
        self.register_buffer("packed_weight", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._after_load())
        self._repack()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_float(cls, linear: nn.Linear, config="w8a8", hessian: torch.Tensor | None = None) -> "QuantLinear":
        """Quantize `linear`. `config` is a mode name ("w8a8", "w8a16", "w4a16", "codebook": default
        settings) or a config object (Int8DynamicConfig, Int8WeightOnlyConfig, Int4WeightOnlyConfig,
        CodebookConfig). GPTQ (method="gptq" in Int4WeightOnlyConfig or CodebookConfig) needs the layer's
        input Hessian (quant.gptq.HessianAccumulator); quantize_(..., calibration=...) computes it for you."""
        from ..compress.config import CodebookConfig, Int4WeightOnlyConfig

        mode = _mode_of(config)
        if mode not in MODES:
            raise ValueError(f"QuantLinear.from_float: mode must be one of {sorted(MODES)} (or a config with one), got {config!r}")
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantLinear.from_float expects an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        if not torch.isfinite(weight).all():
            raise ValueError("QuantLinear.from_float: the weight holds NaN or Inf values; they cannot be quantized")
        bias = None if linear.bias is None else linear.bias.detach()
        w = weight.float()
        if mode in ("w8a8", "w8a16"):
            qweight, scale = ops.quantize_per_channel_int8(w)
            return cls.from_int8(qweight, scale, bias, mode)
        if mode == "w4a16":
            cfg = config if isinstance(config, Int4WeightOnlyConfig) else Int4WeightOnlyConfig()
            group_size = w.shape[1] if cfg.group_size == -1 else cfg.group_size
            if cfg.method == "gptq":
                from ..quant.gptq import gptq_quantize_int4

                _need_hessian(hessian)
                codes, scales, zeros = gptq_quantize_int4(w, hessian, group_size, cfg.symmetric, block_size=cfg.block_size,
                                                          damp=cfg.damp, act_order=cfg.act_order)
            else:
                from ..quant.int4 import quantize_int4_rtn

                codes, scales, zeros = quantize_int4_rtn(w, group_size, cfg.symmetric)
            return cls.from_int4(codes, scales, zeros, group_size, bias)
        from ..quant.codebook import fit_codebook

        cfg = config if isinstance(config, CodebookConfig) else CodebookConfig()
        if cfg.method == "gptq":
            _need_hessian(hessian)
        # The codebook is fitted to the float weights either way; GPTQ then chooses the codes.
        codes, codebook = fit_codebook(w, cfg.bits, cfg.codebook, cfg.per, seed=cfg.seed)
        if cfg.method == "gptq":
            from ..quant.gptq import gptq_quantize_codebook

            codes = gptq_quantize_codebook(w, hessian, codebook, block_size=cfg.block_size, damp=cfg.damp,
                                           act_order=cfg.act_order)
        return cls.from_codebook(codes, codebook, bias)

    @classmethod
    def from_int8(cls, qweight, scale, bias=None, mode="w8a8") -> "QuantLinear":
        """From int8 weights [N, K] and float32 per-channel scales [N]."""
        n, k = qweight.shape
        module = cls(k, n, bias is not None, mode, device=qweight.device)
        module.qweight.copy_(qweight)
        module.weight_scale.copy_(scale)
        return module._finish(bias)

    @classmethod
    def from_int4(cls, codes, scales, zeros, group_size: int, bias=None) -> "QuantLinear":
        """From unpacked 4-bit codes uint8 [N, K] (0..15), scales float32 [N, G], zeros uint8 [N, G]
        or None (symmetric, zero point 8): w = (codes - zeros) * scales per group."""
        n, k = codes.shape
        module = cls(k, n, bias is not None, "w4a16", device=codes.device, group_size=group_size, symmetric=zeros is None)
        module.qweight.copy_(lowbit.pack_codes(codes, 4))
        module.weight_scale.copy_(scales)
        if zeros is not None:
            module.weight_zero.copy_(zeros)
        return module._finish(bias)

    @classmethod
    def from_codebook(cls, codes, codebook, bias=None) -> "QuantLinear":
        """From unpacked codes uint8 [N, K] and a codebook float32 [1 or N, 2^bits]."""
        n, k = codes.shape
        bits = lowbit.bits_from_codebook(codebook.shape[1])
        per = "layer" if codebook.shape[0] == 1 and n != 1 else "row"
        module = cls(k, n, bias is not None, "codebook", device=codes.device, bits=bits, per=per)
        module.qweight.copy_(lowbit.pack_codes(codes, bits))
        module.codebook.copy_(codebook)
        return module._finish(bias)

    @classmethod
    def from_layer_config(cls, cfg: dict, device=None) -> "QuantLinear":
        """An empty layer from layer_config()'s dict (checkpoint loading)."""
        extra = {key: cfg[key] for key in ("group_size", "symmetric", "bits", "per") if cfg.get(key) is not None}
        return cls(cfg["in_features"], cfg["out_features"], cfg["bias"], cfg["mode"], device=device, **extra)

    def _finish(self, bias) -> "QuantLinear":
        if bias is not None:
            self.bias.copy_(bias.float())
        self._after_load()
        return self

    # ---- state ----------------------------------------------------------------------------------
    def _after_load(self) -> None:
        """Checks a checkpoint can't smuggle in (values the ops don't re-check per call), then repack."""
        for name in _FLOAT32_STATE:
            t = getattr(self, name, None)
            if t is not None and not torch.isfinite(t).all():
                raise ValueError(f"QuantLinear: {name} holds NaN or Inf")
        zeros = getattr(self, "weight_zero", None)
        if zeros is not None and zeros.numel() and int(zeros.max()) > 15:
            raise ValueError(f"QuantLinear: weight_zero holds {int(zeros.max())}; 4-bit zero points lie in 0..15")
        self._repack()

    def _repack(self) -> None:
        self.packed_weight = ops.int8_prepack(self.qweight) if self.mode == "w8a8" else None

    def _apply(self, fn, recurse=True):
        # Scales, codebooks and bias are float32 by contract: model.half() changes the activation
        # dtype, not ours, so a dtype cast keeps the float32 values and takes only the new device.
        kept = {name: getattr(self, name) for name in _FLOAT32_STATE if getattr(self, name, None) is not None}
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
        """The float32 weight [N, K] this module multiplies by."""
        if self.mode == "w4a16":
            return lowbit.dequantize_int4(self.qweight, self.weight_scale, self.weight_zero, self.group_size, self.in_features)
        if self.mode == "codebook":
            return lowbit.dequantize_codebook(self.qweight, self.codebook, self.in_features)
        return self.qweight.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear: expected input with {self.in_features} features, got shape {tuple(x.shape)}")
        if self.mode == "w8a8":
            return ops.int8_dynamic_linear(x, self.packed_weight, self.weight_scale, self.bias)
        if self.mode == "w8a16":
            return ops.dequant_mm_int8(x, self.qweight, self.weight_scale, self.bias)
        if self.mode == "w4a16":
            return ops.dequant_mm_int4(x, self.qweight, self.weight_scale, self.weight_zero, self.group_size, self.bias)
        return ops.lut_mm(x, self.qweight, self.codebook, self.bias)

    def layer_config(self) -> dict:
        """What a checkpoint records to rebuild this module without re-quantizing."""
        cfg = {"type": "QuantLinear", "mode": self.mode, "in_features": self.in_features,
               "out_features": self.out_features, "bias": self.bias is not None}
        if self.mode == "w4a16":
            cfg.update(group_size=self.group_size, symmetric=self.symmetric)
        elif self.mode == "codebook":
            cfg.update(bits=self.bits, per=self.per)
        return cfg

    def format_summary(self) -> str:
        """A few words on the weight format, e.g. 'w4a16 g128 asym' or 'codebook 4-bit per row'."""
        if self.mode == "w4a16":
            group = "per-channel" if self.group_size == self.in_features else f"g{self.group_size}"
            return f"w4a16 {group} {'sym' if self.symmetric else 'asym'}"
        if self.mode == "codebook":
            return f"codebook {self.bits}-bit per {self.per}"
        return self.mode

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"mode={self.format_summary()} ({MODES[self.mode]})")
