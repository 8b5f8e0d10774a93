"""QuantLinear: a drop-in nn.Linear with quantized weights.

The weight format is a strategy object (`layer.format`, one class per mode in nn/formats.py:
"w8a8", "w8a16", "w4a16", "w4a8", "codebook") that knows the saved buffers, the op forward calls, how to
dequantize, the extra layer-config fields, the summary, the load checks and the repack. QuantLinear
itself is format-agnostic: it registers the format's buffers plus `bias` (float32 [N] or None), checks
the input, and gets the rest of its life cycle (layer config, checkpoints, `weight` for model code,
validation after load, repack on device moves, dtype-preserving casts) from CompressedModule.

Training around it: every mode is differentiable in its input, so adapters, distillation and
fine-tuning of float layers around frozen quantized ones work; the gradient is that of an nn.Linear
holding dequantized_weight() (for w8a8 the per-token rounding of the input is straight-through).
`bias` is a float32 buffer: `layer.bias.requires_grad_()` to train it. The quantized weight is frozen:
the layer has no Parameters, torch refuses requires_grad_() on its integer buffers, and a float buffer
of it (weight_scale, codebook) set to require grad makes the backward raise an error saying so (train
the weights with prepare_qat_ / FakeQuantLinear instead).

Building one:
  QuantLinear.from_float(linear, config)   quantize an nn.Linear: config is a pass config
      (Int8DynamicConfig, ..., CodebookConfig) or a mode name for its default settings. The
      algorithm (RTN, GPTQ, k-means) runs in slimkernels.compress.quantize.quantize_layer.
  QuantLinear.from_int8 / from_int4 / from_codebook / from_parts   from tensors already quantized
      (unpacked codes in; the packed buffers are stored).
  QuantLinear(in_features, out_features, bias, mode, **options)   an empty layer, for load_state_dict.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import CompressedModule
from .formats import WeightFormat, weight_format


def _default_config(config):
    return weight_format(config).default_config() if isinstance(config, str) else config


class QuantLinear(CompressedModule, layer_type="QuantLinear"):
    required_config_keys = ("mode", "in_features", "out_features", "bias")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "w8a8", device=None, *,
                 dtype=None, **options):
        """An empty layer of format `mode` (filled by from_float, load_state_dict or slimkernels.load).
        `options` are the format's (w4a16: group_size=128 (-1 = per channel), symmetric=False;
        codebook: bits=4, per="row"). dtype: the float dtype of the weight it replaces (`weight.dtype`)."""
        super().__init__(device=device, dtype=dtype)
        fmt = weight_format(mode)
        unknown = sorted(set(options) - set(fmt.options))
        if unknown:
            raise TypeError(f"QuantLinear: mode {mode!r} takes options {list(fmt.options)}, got {unknown}")
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"QuantLinear: in_features and out_features must be positive ints, got {name}={value!r}")
        self.in_features, self.out_features = in_features, out_features
        self.format: WeightFormat = fmt(in_features, out_features, **options)
        packed = self.format.packed_state()
        for name, spec in self.format.buffers().items():
            value = None if spec is None else torch.full(spec.shape, spec.fill, dtype=spec.dtype, device=device)
            if name in packed:  # held only packed, as a plain attribute (CompressedModule.packed_state)
                self.__dict__[packed[name].held] = packed[name].pack(value)
            else:
                self.register_buffer(name, value)
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        for name in self.format.packed:
            if name not in self._buffers and name not in self.__dict__:
                self.register_buffer(name, None, persistent=False)

    @property
    def mode(self) -> str:
        return self.format.mode

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    # The format's options as attributes, as the layer had them before formats were objects
    # (None where the format has no such option).
    group_size = property(lambda self: getattr(self.format, "group_size", None))
    symmetric = property(lambda self: getattr(self.format, "symmetric", None))
    bits = property(lambda self: getattr(self.format, "bits", None))
    per = property(lambda self: getattr(self.format, "per", None))

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_float(cls, linear: nn.Linear, config="w8a8", hessian: Optional[torch.Tensor] = None) -> "QuantLinear":
        """Quantize `linear`. `config` is a config object (Int8DynamicConfig, Int8WeightOnlyConfig,
        Int4WeightOnlyConfig, CodebookConfig) or a mode name ("w8a8", "w8a16", "w4a16", "w4a8", "codebook")
        for that config's defaults. GPTQ (method="gptq") needs the layer's input Hessian
        (quant.hessian.HessianAccumulator); quantize_(..., calibration=...) computes it for you.
        Runs slimkernels.compress.quantize.quantize_layer; a layer it would skip is a ValueError here."""
        from ..compress import quantize as passes

        config = _default_config(config)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantLinear.from_float expects an nn.Linear, got {type(linear).__name__}")
        try:
            module = passes.quantize_layer(linear, config, hessian=hessian)
        except passes.SkipLayer as why:
            what = config.describe() if hasattr(config, "describe") else repr(config)
            raise ValueError(f"QuantLinear.from_float: cannot quantize this layer with {what}: {why}") from None
        if isinstance(module, CompressedModule):
            module.weight_dtype = linear.weight.dtype  # what model code reading layer.weight.dtype expects
        return module

    @classmethod
    def from_parts(cls, mode: str, *parts: torch.Tensor, bias: Optional[torch.Tensor] = None, dtype=None,
                   **options) -> "QuantLinear":
        """A layer of format `mode` from its unpacked tensors (the order of the format's round(), e.g.
        w4a16: codes, scales, zeros). Shapes and options the tensors imply are read from them;
        `options` given here take precedence."""
        fmt = weight_format(mode)
        fields = {**fmt.fields_from_parts(*parts), **options}
        module = cls(bias=bias is not None, mode=mode, device=parts[0].device, dtype=dtype, **fields)
        packed = module.packed_state()
        with torch.no_grad():
            for name, value in module.format.encode(*parts).items():
                if name in packed and value is not None:
                    module.store_packed(name, value)  # ValueError naming the buffer on a wrong shape
                    continue
                buffer = getattr(module, name)
                if (value is None) != (buffer is None) or (value is not None and value.shape != buffer.shape):
                    got = None if value is None else tuple(value.shape)
                    want = None if buffer is None else tuple(buffer.shape)
                    raise ValueError(f"QuantLinear.from_parts ({module.format.summary()}): {name} has shape {got}, "
                                     f"expected {want}")
                if value is not None:
                    buffer.copy_(value)
            if bias is not None:
                if bias.shape != module.bias.shape:
                    raise ValueError(f"QuantLinear.from_parts: bias has shape {tuple(bias.shape)}, expected {tuple(module.bias.shape)}")
                module.bias.copy_(bias.float())
        module.validate_state()
        module.repack()
        return module

    @classmethod
    def from_int8(cls, qweight, scale, bias=None, mode="w8a8", *, dtype=None) -> "QuantLinear":
        """From int8 weights [N, K] and float32 per-channel scales [N] ("w8a8" or "w8a16")."""
        return cls.from_parts(mode, qweight, scale, bias=bias, dtype=dtype)

    @classmethod
    def from_int4(cls, codes, scales, zeros, group_size: int, bias=None, *, dtype=None) -> "QuantLinear":
        """From unpacked 4-bit codes uint8 [N, K] (0..15), scales float32 [N, G], zeros uint8 [N, G]
        or None (symmetric, zero point 8): w = (codes - zeros) * scales per group."""
        return cls.from_parts("w4a16", codes, scales, zeros, bias=bias, dtype=dtype, group_size=group_size)

    @classmethod
    def from_codebook(cls, codes, codebook, bias=None, *, dtype=None) -> "QuantLinear":
        """From unpacked codes uint8 [N, K] and a codebook float32 [1 or N, 2^bits]."""
        return cls.from_parts("codebook", codes, codebook, bias=bias, dtype=dtype)

    @classmethod
    def matches_float(cls, module: nn.Module, cfg: dict) -> bool:
        return type(module) is nn.Linear and (module.in_features, module.out_features, module.bias is not None) == (
            cfg["in_features"], cfg["out_features"], cfg["bias"])

    # ---- state ----------------------------------------------------------------------------------
    def config_fields(self) -> dict:
        return {"mode": self.mode, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, **self.format.config_fields()}

    def packed_state(self):
        fmt = self.__dict__.get("format")  # absent while __init__ runs
        return {} if fmt is None else fmt.packed_state()

    def validate_state(self) -> None:
        super().validate_state()
        self.format.check(self)

    def repack(self) -> None:
        self.format.repack(self)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight [N, K] this module multiplies by."""
        return self.format.dequantize(self)

    _fast = None  # the format's FastPath for the buffers as they are (False: none); reset when they change

    def _state_changed(self) -> None:
        self.__dict__.pop("_fast", None)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_fast", None)  # pointers into this object's tensors: copies and pickles build their own
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # compiled, exported and jit-traced graphs keep the op
        if not torch.compiler.is_compiling() and torch._C._get_tracing_state() is None:
            fast = self._fast
            if fast is None:
                fast = self.__dict__["_fast"] = self.format.fast_path(self) or False
            if fast:
                y = fast(x)
                if y is not None:
                    return y
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear: expected input with {self.in_features} features, got shape {tuple(x.shape)}")
        return self.format.forward(self, x)

    def format_summary(self) -> str:
        """A few words on the weight format, e.g. 'w4a16 g128 asym' or 'codebook 4-bit per row'."""
        return self.format.summary()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"mode={self.format.summary()} ({self.format.description})")
