"""Weight formats of QuantLinear: one class per format, registered by its mode name.

A format object (one per layer, holding that layer's options such as the group size) knows
  layout      buffers(): the saved buffers (name -> shape, dtype, initial fill; None = registered
              but absent, as weight_zero of symmetric int4), `packed`: the derived buffers repack()
              rebuilds (never saved), encode(*parts): the buffers from unpacked tensors
  running     forward(module, x): which op, dequantize(module): the float32 [N, K] weight
  describing  options / config_fields(): the extra layer-config fields (also QuantLinear's keyword
              arguments), summary(): a few words for repr and reports, `description`
  checks      check(module): what load must refuse beyond NaN/Inf (CompressedModule checks those)
  QAT         fit / round / dequantize_parts / fake_quantize_input: the round-to-nearest step
              FakeQuantLinear trains through, in the same arithmetic as the layer it converts to.
The quantization algorithms that choose the tensors (RTN, GPTQ, k-means) run in the passes
(slimkernels.compress.quantize.quantize_layer), not here.

Formats and their saved state (the packed layouts are specified in quant/lowbit.py):
  "w8a8"     dynamic int8: activations quantized per token at run time, weights per output channel,
             one int8 GEMM with the dequantize epilogue fused (int8_dynamic_linear).
             qweight int8 [N, K], weight_scale float32 [N]; packed_weight (int8_prepack, for the
             device the layer is on) is rebuilt on construction, load and device moves.
  "w8a16"    weight-only int8 (dequant_mm_int8): qweight int8 [N, K], weight_scale float32 [N]
  "w4a16"    weight-only int4, group-wise (dequant_mm_int4): qweight uint8 [N, ceil(K/2)],
             weight_scale float32 [N, K/g], weight_zero uint8 [N, K/g] (absent when symmetric)
  "codebook" weight sharing (lut_mm): qweight uint8 [N, ceil(K*bits/8)] packed codes,
             codebook float32 [1 or N, 2^bits]

A new format is a subclass of WeightFormat decorated with @register_format; QuantLinear(...,
mode=<its mode>), QuantLinear.from_parts, save and load then work with it unchanged.
"""
from __future__ import annotations

from typing import ClassVar, NamedTuple, Optional

import torch

from .. import ops
from ..backends.quantize import quantize_rows_int8
from ..ops import _checks
from ..quant import lowbit


class BufferSpec(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype
    fill: float = 0


_FORMATS: dict[str, type["WeightFormat"]] = {}


def register_format(cls: type["WeightFormat"]) -> type["WeightFormat"]:
    """Class decorator: make `cls` the format of QuantLinear mode `cls.mode`."""
    known = _FORMATS.get(cls.mode)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"weight format {cls.mode!r} is already registered by {known.__module__}.{known.__qualname__}")
    _FORMATS[cls.mode] = cls
    return cls


def weight_format(mode) -> type["WeightFormat"]:
    """The format class of a QuantLinear mode."""
    try:
        return _FORMATS[mode]
    except (KeyError, TypeError):
        raise ValueError(f"QuantLinear: mode must be one of {sorted(_FORMATS)}, got {mode!r}") from None


def weight_formats() -> dict[str, type["WeightFormat"]]:
    """Every registered format, by mode (a copy)."""
    return dict(_FORMATS)


class WeightFormat:
    """One weight format; an instance describes one layer's ([N, K] = [out_features, in_features])."""

    mode: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()  # extra layer-config fields = QuantLinear keyword arguments
    packed: ClassVar[tuple[str, ...]] = ()  # derived, unsaved buffers that repack() sets

    def __init__(self, in_features: int, out_features: int):
        self.in_features, self.out_features = in_features, out_features

    # ---- layout -----------------------------------------------------------------------------------
    def buffers(self) -> dict[str, Optional[BufferSpec]]:
        """The saved buffers, in state_dict order (QuantLinear adds bias after them)."""
        raise NotImplementedError

    def encode(self, *parts: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
        """The saved buffers from the unpacked tensors of QuantLinear.from_parts (same order as round())."""
        raise NotImplementedError

    @classmethod
    def fields_from_parts(cls, *parts: torch.Tensor) -> dict:
        """in_features, out_features and the options the unpacked tensors imply. Default: the first
        part is [N, K]."""
        n, k = parts[0].shape
        return {"in_features": k, "out_features": n}

    # ---- running ----------------------------------------------------------------------------------
    def forward(self, module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self, module) -> torch.Tensor:
        """The float32 [N, K] weight the layer multiplies by."""
        raise NotImplementedError

    def repack(self, module) -> None:
        """Rebuild the `packed` buffers of `module` from its saved ones."""

    def check(self, module) -> None:
        """Raise ValueError for loaded values the ops do not re-check per call (NaN/Inf in float
        state is checked for every format by CompressedModule.validate_state)."""

    # ---- describing -------------------------------------------------------------------------------
    def config_fields(self) -> dict:
        return {name: getattr(self, name) for name in self.options}

    def summary(self) -> str:
        """A few words on the format, e.g. 'w4a16 g128 asym' or 'codebook 4-bit per row'."""
        return self.mode

    # ---- QAT: the round-to-nearest step FakeQuantLinear trains through ------------------------------------
    @classmethod
    def default_config(cls):
        """The pass config of this format with default settings (QuantLinear.from_float(linear, mode))."""
        raise ValueError(f"QuantLinear: format {cls.mode!r} has no default quantization config")

    @classmethod
    def options_from_config(cls, config) -> dict:
        return {name: getattr(config, name) for name in cls.options}

    def fit(self, w: torch.Tensor, config) -> dict[str, torch.Tensor]:
        """State fitted once when QAT prepares the layer and kept fixed while it trains (buffers of
        the FakeQuantLinear). Default: none."""
        return {}

    def round(self, w: torch.Tensor, state: dict) -> tuple:
        """The unpacked tensors (from_parts order) of float32 weight w [N, K], rounded to nearest."""
        raise NotImplementedError(f"format {self.mode!r} has no round-to-nearest step (QAT)")

    def dequantize_parts(self, parts: tuple) -> torch.Tensor:
        """float32 [N, K] from round()'s tensors: the values `dequantize` gives once they are encoded."""
        raise NotImplementedError(f"format {self.mode!r} has no round-to-nearest step (QAT)")

    def fake_quantize_input(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The activations as the layer's op rounds them, or None when it keeps them float."""
        return None


class _Int8PerChannel(WeightFormat):
    def buffers(self):
        n, k = self.out_features, self.in_features
        return {"qweight": BufferSpec((n, k), torch.int8), "weight_scale": BufferSpec((n,), torch.float32, 1)}

    def encode(self, qweight, scale):
        return {"qweight": qweight, "weight_scale": scale}

    def dequantize(self, module):
        return module.qweight.float() * module.weight_scale[:, None]

    def round(self, w, state):
        return quantize_rows_int8(w)

    def dequantize_parts(self, parts):
        q, scale = parts
        return q.float() * scale[:, None]


@register_format
class W8A8(_Int8PerChannel):
    mode = "w8a8"
    description = "int8 per-token activations x int8 per-channel weights"
    packed = ("packed_weight",)

    def forward(self, module, x):
        return ops.int8_dynamic_linear(x, module.packed_weight, module.weight_scale, module.bias)

    def repack(self, module):
        module.packed_weight = ops.int8_prepack(module.qweight)

    @classmethod
    def default_config(cls):
        from ..compress.config import Int8DynamicConfig

        return Int8DynamicConfig()

    def fake_quantize_input(self, x):
        return fake_quantize_rows_int8(x)


@register_format
class W8A16(_Int8PerChannel):
    mode = "w8a16"
    description = "int8 per-channel weights, float activations"

    def forward(self, module, x):
        return ops.dequant_mm_int8(x, module.qweight, module.weight_scale, module.bias)

    @classmethod
    def default_config(cls):
        from ..compress.config import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()


@register_format
class W4A16(WeightFormat):
    mode = "w4a16"
    description = "int4 group-wise weights, float activations"
    options = ("group_size", "symmetric")

    def __init__(self, in_features, out_features, group_size: int = 128, symmetric: bool = False):
        """group_size -1 (or None): one group per output channel."""
        super().__init__(in_features, out_features)
        self.group_size = in_features if group_size in (-1, None) else group_size
        _checks.group_size("QuantLinear", self.group_size, in_features)
        self.symmetric = bool(symmetric)

    def buffers(self):
        n, k = self.out_features, self.in_features
        groups = k // self.group_size
        zero = None if self.symmetric else BufferSpec((n, groups), torch.uint8, lowbit.INT4_ZERO_SYMMETRIC)
        return {"qweight": BufferSpec((n, lowbit.packed_row_bytes(k, 4)), torch.uint8),
                "weight_scale": BufferSpec((n, groups), torch.float32, 1), "weight_zero": zero}

    def encode(self, codes, scales, zeros):
        return {"qweight": lowbit.pack_codes(codes, 4), "weight_scale": scales, "weight_zero": zeros}

    @classmethod
    def fields_from_parts(cls, codes, scales, zeros):
        fields = super().fields_from_parts(codes)
        k, groups = codes.shape[1], scales.shape[-1]
        if groups and k % groups == 0:
            fields["group_size"] = k // groups
        return {**fields, "symmetric": zeros is None}

    def forward(self, module, x):
        return ops.dequant_mm_int4(x, module.qweight, module.weight_scale, module.weight_zero, self.group_size, module.bias)

    def dequantize(self, module):
        return lowbit.dequantize_int4(module.qweight, module.weight_scale, module.weight_zero, self.group_size,
                                      self.in_features)

    def check(self, module):
        zeros = module.weight_zero
        if zeros is not None and zeros.numel() and int(zeros.max()) > 15:
            raise ValueError(f"QuantLinear: weight_zero holds {int(zeros.max())}; 4-bit zero points lie in 0..15")

    def summary(self):
        group = "per-channel" if self.group_size == self.in_features else f"g{self.group_size}"
        return f"w4a16 {group} {'sym' if self.symmetric else 'asym'}"

    @classmethod
    def default_config(cls):
        from ..compress.config import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig()

    def round(self, w, state):
        from ..quant.int4 import quantize_int4_rtn

        return quantize_int4_rtn(w, self.group_size, self.symmetric)

    def dequantize_parts(self, parts):
        from ..quant.int4 import dequantize_int4_codes

        return dequantize_int4_codes(*parts, self.group_size)


@register_format
class Codebook(WeightFormat):
    mode = "codebook"
    description = "codebook-indexed weights, float activations"
    options = ("bits", "per")

    def __init__(self, in_features, out_features, bits: int = 4, per: str = "row"):
        super().__init__(in_features, out_features)
        if bits not in lowbit.CODE_BITS or per not in ("row", "layer"):
            raise ValueError(f"QuantLinear: codebook mode needs bits in {lowbit.CODE_BITS} and per in ('row', 'layer'), "
                             f"got {bits!r}, {per!r}")
        self.bits, self.per = bits, per

    def buffers(self):
        n, k = self.out_features, self.in_features
        return {"qweight": BufferSpec((n, lowbit.packed_row_bytes(k, self.bits)), torch.uint8),
                "codebook": BufferSpec((n if self.per == "row" else 1, 1 << self.bits), torch.float32)}

    def encode(self, codes, codebook):
        return {"qweight": lowbit.pack_codes(codes, self.bits), "codebook": codebook}

    @classmethod
    def fields_from_parts(cls, codes, codebook):
        fields = super().fields_from_parts(codes)
        n = fields["out_features"]
        return {**fields, "bits": lowbit.bits_from_codebook(codebook.shape[1]),
                "per": "layer" if codebook.shape[0] == 1 and n != 1 else "row"}

    def forward(self, module, x):
        return ops.lut_mm(x, module.qweight, module.codebook, module.bias)

    def dequantize(self, module):
        return lowbit.dequantize_codebook(module.qweight, module.codebook, self.in_features)

    def summary(self):
        return f"codebook {self.bits}-bit per {self.per}"

    @classmethod
    def default_config(cls):
        from ..compress.config import CodebookConfig

        return CodebookConfig()

    def fit(self, w, config):
        # fitted once (k-means / NF4 / pow2 on the weights as prepared); QAT keeps it fixed
        from ..quant.codebook import fit_codebook

        _, codebook = fit_codebook(w, config.bits, config.codebook, config.per, seed=config.seed,
                                   keep_zero=config.keep_zero)
        return {"codebook": codebook}

    def round(self, w, state):
        from ..quant.codebook import assign_codes

        codebook = state["codebook"]
        return assign_codes(w, codebook.to(w.device)), codebook

    def dequantize_parts(self, parts):
        codes, codebook = parts
        return torch.gather(codebook.to(codes.device).expand(codes.shape[0], -1), 1, codes.long())


def fake_quantize_rows_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric int8 quantize + dequantize (the rounding of quantize_per_token_int8)."""
    rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    q, scale = quantize_rows_int8(rows.detach())
    return (q.float() * scale[:, None]).reshape(x.shape).to(x.dtype)
