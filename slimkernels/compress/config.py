"""Configs for the passes: frozen dataclasses named for what they produce, validated on creation.

Every config derives from CompressionConfig, which holds what all passes (quantize_, prepare_qat_ and
the coming sparsify_ / prune_ / low_rank_) read from a config:

  min_features          layers with fewer input or output features are left as they are
  describe()            a few words for reports and progress bars
  skip_reason(module)   a config-specific reason to leave a layer as it is (or None); the rules every
                        pass shares (layer type, min_features, meta device, NaN/Inf) live in skip.py
  collectors()          the calibration statistics each target layer needs, {stat_name: factory}
                        (see calibration.py); the handler gets them as keyword arguments
  needs_calibration     True when collectors() asks for anything
  uncalibrated()        (config, note) to use for a layer no calibration data reaches, or None to skip it

A new config is `@dataclass(frozen=True) class MyConfig(CompressionConfig)` declaring its own fields
(min_features among them, so that positional arguments keep their order), calling
super().__post_init__() first in its own __post_init__, and a handler registered for it with
compress.passes.register_handler. Quantization configs derive from QuantizationConfig and name the
QuantLinear format they produce in `mode` (QuantLinear, FakeQuantLinear and checkpoints read it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

from .calibration import HessianCollector, InputNormCollector, InputRowsCollector, conv_aware
from .skip import group_size_reason, layer_features


@dataclass(frozen=True)
class CompressionConfig:
    """Base of every pass config (no fields of its own: subclasses declare theirs, min_features included)."""

    min_features = 1  # the default; subclasses make it a field (no annotation here: it would fix its position)

    def __post_init__(self):
        _check_min_features(type(self).__name__, self.min_features)

    def describe(self) -> str:
        return type(self).__name__

    def skip_reason(self, module) -> Optional[str]:
        """Why this config leaves `module` as it is (checked after the shared rules of skip.py), or None."""
        return None

    def collectors(self) -> dict[str, Callable]:
        """{stat_name: factory(module, device) -> calibration.Collector} per target layer; {} when the
        config needs no calibration data. The handler receives each statistic as `stat_name=value`."""
        return {}

    @property
    def needs_calibration(self) -> bool:
        return bool(self.collectors())

    def uncalibrated(self) -> Optional[tuple["CompressionConfig", str]]:
        """(config, note) for a layer that got no statistics (outside the calibrated blocks): the config
        to use instead and the word the report gives it; None leaves such a layer as it is."""
        return None


@dataclass(frozen=True)
class QuantizationConfig(CompressionConfig):
    """Base of the configs quantize_ and prepare_qat_ take: `mode` names the QuantLinear format."""

    mode = ""  # set by each subclass


@dataclass(frozen=True)
class Int8DynamicConfig(QuantizationConfig):
    """W8A8: int8 weights per output channel, activations quantized per token at run time.

    min_features: layers with fewer input or output features are left in float (tiny layers gain
    nothing and lose the most accuracy).
    act_bits: 8 (default), or 7: activations quantized to |q| <= 63 (scale = amax / 63) on every CPU
    and device alike, which lets CPUs without AVX-512 VNNI (AVX2 only) run the int8 GEMM with
    vpmaddubsw, about 1.6x the exact 8-bit AVX2 path (FBGEMM's AVX2 scheme, torch's reduce_range),
    for half the activation resolution (accuracy on all-MiniLM-L6-v2: bench/results/2026-11-30-w8a8-avx2.md).
    Elsewhere it gains nothing. Saved in the checkpoint; older checkpoints load as 8.
    """

    min_features: int = 1
    act_bits: int = 8

    mode = "w8a8"

    def __post_init__(self):
        super().__post_init__()
        if type(self.act_bits) is not int or self.act_bits not in (7, 8):
            raise ValueError(f"Int8DynamicConfig.act_bits must be 7 or 8, got {self.act_bits!r}")

    def describe(self) -> str:
        return "w8a8" if self.act_bits == 8 else f"w8a8 act{self.act_bits}"


ACTS = (None, "int8")  # the weight-only configs' `act`: float activations, or int8 per token


def _check_act(cls_name: str, act) -> None:
    if act not in ACTS:
        raise ValueError(f"{cls_name}.act must be None (float activations) or 'int8' (activations quantized per "
                         f"token to int8 at run time, integer dot products), got {act!r}")


@dataclass(frozen=True)
class Int8WeightOnlyConfig(QuantizationConfig):
    """W8A16: int8 weights per output channel; activations stay float.

    act: None (float activations) or "int8": activations quantized per token at run time, which is
      W8A8 (the same weights; mode "w8a8", like Int8DynamicConfig).
    """

    min_features: int = 1
    act: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        _check_act("Int8WeightOnlyConfig", self.act)

    @property
    def mode(self) -> str:
        return "w8a8" if self.act == "int8" else "w8a16"

    def describe(self) -> str:
        return self.mode


def _check_min_features(cls_name: str, value) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls_name}.min_features must be an int >= 1, got {value!r}")


class _GPTQKnobs:
    """What the GPTQ-capable configs share: method "rtn" | "gptq", the Hessian collector for GPTQ (and
    the row counts of its rank guard: quant.hessian.thin_calibration_damp) and the round-to-nearest
    fallback for layers no calibration data reaches."""

    def collectors(self) -> dict[str, Callable]:
        return {"hessian": HessianCollector, "input_rows": InputRowsCollector} if self.method == "gptq" else {}

    def uncalibrated(self):
        return (replace(self, method="rtn"), "rtn") if self.method == "gptq" else (self, self.method)


def _check_gptq_knobs(cls_name: str, method, damp, block_size) -> None:
    if method not in ("rtn", "gptq"):
        raise ValueError(f"{cls_name}.method must be 'rtn' or 'gptq', got {method!r}")
    if not isinstance(damp, (int, float)) or isinstance(damp, bool) or not (0 < damp < 1):
        raise ValueError(f"{cls_name}.damp must be in (0, 1), got {damp!r}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"{cls_name}.block_size must be an int >= 1, got {block_size!r}")


@dataclass(frozen=True)
class Int4WeightOnlyConfig(_GPTQKnobs, QuantizationConfig):
    """W4A16: 4-bit weights with a float32 scale (and a 4-bit zero point unless symmetric) per group
    of `group_size` input features; activations stay float.

    group_size: 32, 64, 128, ... (a multiple of 32) or -1 for one group per output channel. Layers
      whose input features are not a multiple of it are left in float (the report says why).
    method: "rtn" (round to nearest) or "gptq" (Frantar et al. 2022: error-compensating, needs
      `calibration` batches in quantize_). damp, block_size and act_order are GPTQ's knobs. Calibrate
      on at least 10 x in_features tokens of varied text: a layer whose calibration inputs span too
      few directions gets a larger damp (and a CalibrationWarning; quant.hessian.thin_calibration_damp).
    act: None (float activations: mode "w4a16") or "int8" (mode "w4a8": the same weights, activations
      quantized per token to int8 at run time as W8A8 does, integer dot products; faster on CPUs
      without bf16 dot products or AMX, at some accuracy: see the README).
    """

    group_size: int = 128
    symmetric: bool = False
    method: str = "rtn"
    min_features: int = 1
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    act: Optional[str] = None

    @property
    def mode(self) -> str:
        return "w4a8" if self.act == "int8" else "w4a16"

    def __post_init__(self):
        super().__post_init__()
        _check_act("Int4WeightOnlyConfig", self.act)
        if not isinstance(self.group_size, int) or not (self.group_size == -1 or (self.group_size > 0 and self.group_size % 32 == 0)):
            raise ValueError(f"Int4WeightOnlyConfig.group_size must be a positive multiple of 32 or -1 (per channel), got {self.group_size!r}")
        _check_gptq_knobs("Int4WeightOnlyConfig", self.method, self.damp, self.block_size)

    def skip_reason(self, module):
        return group_size_reason(module.in_features, self.group_size)

    def describe(self) -> str:
        group = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"{self.mode} {group} {'sym' if self.symmetric else 'asym'} {self.method}"


CODEBOOKS = ("kmeans", "nf4", "pow2")


@dataclass(frozen=True)
class CodebookConfig(_GPTQKnobs, QuantizationConfig):
    """Weight sharing: each weight is a `bits`-bit index into a codebook of 2^bits float values,
    one codebook per output row (per="row") or per layer (per="layer"); activations stay float.

    codebook: "kmeans" (1-D k-means, as in Deep Compression; seeded, deterministic), "nf4" (the
      NormalFloat-4 levels scaled by the absmax; bits=4 only) or "pow2" (0 and +-2^-i levels).
    method: "rtn" (every weight to its nearest entry) or "gptq" (the codebook as fitted, then GPTQ
      picks the codes, pushing each column's error onto the columns not yet assigned; needs
      `calibration` batches in quantize_). damp, block_size and act_order are GPTQ's knobs; the rank
      guard of Int4WeightOnlyConfig applies too.
    keep_zero: the codebook holds an exact 0 that zero weights map to, so a pruned weight stays pruned
      (k-means fits the other 2^bits - 1 entries to the nonzero weights; nf4 and pow2 hold 0 already).
      Deep Compression's prune -> share order needs it.
    """

    bits: int = 4
    codebook: str = "kmeans"
    per: str = "row"
    min_features: int = 1
    seed: int = 0
    method: str = "rtn"
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    keep_zero: bool = False
    act: Optional[str] = None

    mode = "codebook"

    def __post_init__(self):
        super().__post_init__()
        _check_act("CodebookConfig", self.act)
        if self.act is not None:
            raise ValueError(f"CodebookConfig.act={self.act!r}: int8 activations are not supported for codebooks yet; "
                             "use Int4WeightOnlyConfig(act='int8') (W4A8) or leave act=None")
        if self.bits not in (2, 3, 4):
            raise ValueError(f"CodebookConfig.bits must be 2, 3 or 4, got {self.bits!r}")
        if self.codebook not in CODEBOOKS:
            raise ValueError(f"CodebookConfig.codebook must be one of {CODEBOOKS}, got {self.codebook!r}")
        if self.codebook == "nf4" and self.bits != 4:
            raise ValueError(f"CodebookConfig: the nf4 codebook has 16 levels, so bits must be 4, got {self.bits}")
        if self.per not in ("row", "layer"):
            raise ValueError(f"CodebookConfig.per must be 'row' or 'layer', got {self.per!r}")
        _check_gptq_knobs("CodebookConfig", self.method, self.damp, self.block_size)

    def describe(self) -> str:
        return (f"codebook {self.bits}-bit {self.codebook} per {self.per}" + (" gptq" if self.method == "gptq" else "")
                + (" with 0" if self.keep_zero else ""))


SPARSE_BLOCK = (4, 16)  # pattern="block"'s default bn x bk tile: the fastest CPU block at 90% (bench/results/2026-11-30-sparse-cpu.md)
SPARSITY_PATTERNS = ("unstructured", "2:4", "4:8", "block")
SPARSITY_METHODS = ("magnitude", "wanda", "sparsegpt")
SPARSITY_FORMATS = {"unstructured": "csr", "block": "bsr", "2:4": "2:4", "4:8": "4:8"}  # pattern -> SparseLinear format


@dataclass(frozen=True)
class SparsityConfig(CompressionConfig):
    """One-shot pruning (sparsify_): the pruned layers become SparseLinear / SparseConv2d holding only
    their nonzeros.

    sparsity: the fraction of weights pruned, in [0, 1) (N:M patterns: 0.5, the default).
    pattern: "unstructured" (CSR), "2:4" / "4:8" (N:M: m/2 kept in every m consecutive input features)
      or "block" (whole `block` = (rows, cols) tiles, BSR; default SPARSE_BLOCK).
    method: "magnitude" (|w|), "wanda" (|w| x the L2 norm of its input feature over calibration data)
      or "sparsegpt" (OBS: each column's pruned weights compensated on the columns not yet pruned, from
      the layer's input Hessian; damp and block_size as GPTQ's, with its rank guard for thin
      calibration; keep_better: also prune by Wanda's mask and keep whichever has the lower layer output
      error on the damped Hessian). wanda and sparsegpt need calibration batches in sparsify_; layers no
      data reaches are pruned by magnitude (the report says so).
    per: the comparison group of unstructured pruning, "row" (every output row loses the same
      fraction) or "layer".
    scope: "layer" (every layer at `sparsity`) or "global" (one threshold on the scores of all layers:
      |w| for magnitude; for wanda and sparsegpt, Wanda's scores on a calibration pre-pass over the float
      model; then each layer is pruned by its own method at the sparsity that threshold gives it).
    allocation: "uniform", or "owl" (outlier-weighted layerwise sparsity, Yin et al. 2023: from a pre-pass
      like scope="global", each layer's fraction of Wanda scores above owl_factor x its mean; layers with
      more outliers get up to owl_strength less sparsity, others more; the weighted mean stays `sparsity`).
    values: None (the weight's float dtype) or "int8" (per output row, sparse + quantized; sparsegpt
      prunes and quantizes in one pass).
    conv: also prune nn.Conv2d layers (weight [Cout, Cin/g * kh * kw], inputs unfolded).
    min_features: layers with fewer input or output features are left as they are.
    """

    sparsity: float = 0.5
    pattern: str = "unstructured"
    method: str = "magnitude"
    scope: str = "layer"
    values: Optional[str] = None
    block: tuple = SPARSE_BLOCK
    per: str = "row"
    damp: float = 0.01
    block_size: int = 128
    min_features: int = 1
    conv: bool = True
    allocation: str = "uniform"
    owl_strength: float = 0.08
    owl_factor: float = 5.0
    keep_better: bool = True

    def __post_init__(self):
        super().__post_init__()
        name = "SparsityConfig"
        if self.pattern not in SPARSITY_PATTERNS:
            raise ValueError(f"{name}.pattern must be one of {SPARSITY_PATTERNS}, got {self.pattern!r}")
        if self.method not in SPARSITY_METHODS:
            raise ValueError(f"{name}.method must be one of {SPARSITY_METHODS}, got {self.method!r}")
        s = self.sparsity
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0 <= s < 1:
            raise ValueError(f"{name}.sparsity must be a number in [0, 1), got {s!r}")
        nm = self.pattern in ("2:4", "4:8")
        if nm and s != 0.5:
            raise ValueError(f"{name}: pattern {self.pattern!r} prunes exactly half the weights; leave sparsity at 0.5, "
                             f"got {s!r}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"{name}.scope must be 'layer' or 'global', got {self.scope!r}")
        if self.allocation not in ("uniform", "owl"):
            raise ValueError(f"{name}.allocation must be 'uniform' or 'owl', got {self.allocation!r}")
        if nm and (self.scope != "layer" or self.allocation != "uniform"):
            raise ValueError(f"{name}: pattern {self.pattern!r} fixes every layer's sparsity at 0.5; scope='global' and "
                             "allocation='owl' need 'unstructured' or 'block'")
        if self.scope == "global" and self.allocation != "uniform":
            raise ValueError(f"{name}: scope='global' already chooses each layer's sparsity; use allocation='uniform'")
        if self.values not in (None, "int8"):
            raise ValueError(f"{name}.values must be None (float) or 'int8', got {self.values!r}")
        b = self.block
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                      and v > 0 for v in b)):
            raise ValueError(f"{name}.block must be (rows, cols) of positive ints, got {b!r}")
        if isinstance(b, list):
            object.__setattr__(self, "block", tuple(b))
        if self.per not in ("row", "layer"):
            raise ValueError(f"{name}.per must be 'row' or 'layer', got {self.per!r}")
        _check_gptq_knobs(name, "gptq", self.damp, self.block_size)
        if self.pattern == "block" and self.values == "int8" and self.method == "sparsegpt":
            raise ValueError(f"{name}: sparsegpt with int8 values supports the unstructured and N:M patterns; use "
                             "values=None with pattern='block'")
        for field_name in ("conv", "keep_better"):
            if not isinstance(getattr(self, field_name), bool):
                raise ValueError(f"{name}.{field_name} must be True or False, got {getattr(self, field_name)!r}")
        st, fa = self.owl_strength, self.owl_factor
        if not isinstance(st, (int, float)) or isinstance(st, bool) or not 0 <= st < 1:
            raise ValueError(f"{name}.owl_strength must be in [0, 1), got {st!r}")
        if not isinstance(fa, (int, float)) or isinstance(fa, bool) or not fa > 0:
            raise ValueError(f"{name}.owl_factor must be > 0, got {fa!r}")

    @property
    def layer_types(self) -> tuple[type, ...]:
        from torch import nn

        return (nn.Linear, nn.Conv2d) if self.conv else (nn.Linear,)

    @property
    def nm_group(self) -> Optional[int]:
        return {"2:4": 4, "4:8": 8}.get(self.pattern)

    @property
    def format(self) -> str:
        """The SparseLinear format of the pattern: "csr", "bsr", "2:4" or "4:8"."""
        return SPARSITY_FORMATS[self.pattern]

    def describe(self) -> str:
        amount = self.pattern if self.nm_group else f"{self.sparsity * 100:g}% {self.pattern}"
        if self.pattern == "block":
            amount += f" {self.block[0]}x{self.block[1]}"
        words = [amount, self.method]
        if self.scope == "global":
            words.append("global")
        if self.allocation == "owl":
            words.append(f"owl {self.owl_strength:g}")
        if self.values:
            words.append(self.values)
        return " ".join(words)

    def skip_reason(self, module) -> Optional[str]:
        from torch import nn

        k, n = layer_features(module)
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                return f"padding_mode={module.padding_mode!r} (only zero padding)"
            if isinstance(module.padding, str) and self.needs_calibration:
                return f"padding={module.padding!r}: give the padding in pixels to calibrate on unfolded inputs"
        m = self.nm_group
        if m is not None and k % m:
            what = "Cin/groups * kh * kw" if isinstance(module, nn.Conv2d) else "in_features"
            return f"{what}={k} is not a multiple of {m} ({self.pattern})"
        if self.pattern == "block" and (n % self.block[0] or k % self.block[1]):
            return f"block {self.block[0]}x{self.block[1]} does not divide the weight [{n}, {k}]"
        return None

    def collectors(self) -> dict[str, Callable]:
        if self.method == "wanda":
            return {"input_norm": conv_aware(InputNormCollector)}
        if self.method == "sparsegpt":
            return {"hessian": conv_aware(HessianCollector), "input_rows": conv_aware(InputRowsCollector)}
        return {}

    def uncalibrated(self):
        return (replace(self, method="magnitude"), "magnitude")


QUANTIZATION_CONFIGS = (Int8DynamicConfig, Int8WeightOnlyConfig, Int4WeightOnlyConfig, CodebookConfig)
# mode -> its default config (w4a8: Int4WeightOnlyConfig(act="int8"))
_BY_MODE = {config.mode: config for config in (Int8DynamicConfig(), Int8WeightOnlyConfig(), Int4WeightOnlyConfig(),
                                              Int4WeightOnlyConfig(act="int8"), CodebookConfig())}


def config_for_mode(mode: str) -> QuantizationConfig:
    """The default config of a QuantLinear mode: "w8a8", "w8a16", "w4a16", "w4a8" or "codebook"."""
    if mode not in _BY_MODE:
        raise ValueError(f"config_for_mode: mode must be one of {sorted(_BY_MODE)}, got {mode!r}")
    return _BY_MODE[mode]


# ---- "did you mean ...": a config class, or a mode name, where a config object belongs ------------
_SUGGESTIONS = {  # normalized spelling (lower case, letters and digits only) -> what to write instead
    **dict.fromkeys(("w8a8", "int8dynamic", "int8dyn", "dynamic", "int8dynamicactivationint8weight", "a8w8"),
                    ("Int8DynamicConfig()",)),
    "int8": ("Int8DynamicConfig()", "Int8WeightOnlyConfig() for weight-only int8"),
    **dict.fromkeys(("w8a16", "int8weightonly", "int8wo", "int8weight", "a16w8"), ("Int8WeightOnlyConfig()",)),
    **dict.fromkeys(("w4a16", "int4", "int4weightonly", "int4wo", "4bit", "rtn", "a16w4"), ("Int4WeightOnlyConfig()",)),
    "gptq": ("Int4WeightOnlyConfig(method='gptq') (with calibration= batches)",
             "CodebookConfig(method='gptq')"),
    **dict.fromkeys(("codebook", "kmeans", "lut", "weightsharing"), ("CodebookConfig()",)),
    "nf4": ("CodebookConfig(codebook='nf4')",),
    "pow2": ("CodebookConfig(codebook='pow2')",),
    **dict.fromkeys(("sparsity", "sparse", "prune", "pruning", "magnitude", "unstructured"), ("SparsityConfig()",)),
    "wanda": ("SparsityConfig(method='wanda') (with calibration= batches)",),
    "sparsegpt": ("SparsityConfig(method='sparsegpt') (with calibration= batches)",),
    **dict.fromkeys(("24", "48"), ("SparsityConfig(pattern='2:4')", "SparsityConfig(pattern='4:8')")),
}


def config_suggestion(value) -> Optional[str]:
    """What to pass instead of `value` where a config object belongs: "Int8DynamicConfig()" for the
    class Int8DynamicConfig, "Int4WeightOnlyConfig()" for "w4a16" or "int4", ...; None when
    there is no guess."""
    if isinstance(value, type):
        return f"{value.__name__}()" if issubclass(value, CompressionConfig) else None
    if isinstance(value, str):
        key = "".join(ch for ch in value.lower() if ch.isalnum())
        if key.endswith("config"):  # "Int8DynamicConfig": the class name, as a string
            by_name = {cls.__name__.lower(): cls for cls in QUANTIZATION_CONFIGS + (SparsityConfig,)}
            cls = by_name.get(key)
            return f"{cls.__name__}()" if cls is not None else None
        guesses = _SUGGESTIONS.get(key)
        return None if guesses is None else " or ".join(guesses)
    return None


def check_config_object(value, fn: str) -> None:
    """TypeError with a "did you mean" when a pass gets a config class or a string instead of a
    config object (Int8DynamicConfig instead of Int8DynamicConfig(), "w8a8", "int4", ...)."""
    if isinstance(value, type) and issubclass(value, CompressionConfig):
        raise TypeError(f"{fn}: got the class {value.__name__}, not a config object; did you mean {value.__name__}()?")
    if isinstance(value, str):
        guess = config_suggestion(value)
        known = ", ".join(f"{cls.__name__}()" for cls in QUANTIZATION_CONFIGS + (SparsityConfig,))
        hint = f"did you mean {guess}?" if guess else f"configs: {known}"
        raise TypeError(f"{fn}: config must be a config object, not the string {value!r}; {hint}")
