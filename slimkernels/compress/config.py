"""Configs for the passes: dataclasses named for what they produce, validated on creation."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Int8DynamicConfig:
    """W8A8: int8 weights per output channel, activations quantized per token at run time.

    min_features: layers with fewer input or output features are left in float (tiny layers gain
    nothing and lose the most accuracy).
    """

    min_features: int = 1

    mode = "w8a8"
    needs_calibration = False

    def __post_init__(self):
        _check_min_features("Int8DynamicConfig", self.min_features)

    def describe(self) -> str:
        return "w8a8"


@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """W8A16: int8 weights per output channel; activations stay float."""

    min_features: int = 1

    mode = "w8a16"
    needs_calibration = False

    def __post_init__(self):
        _check_min_features("Int8WeightOnlyConfig", self.min_features)

    def describe(self) -> str:
        return "w8a16"


def _check_min_features(cls_name: str, value) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls_name}.min_features must be an int >= 1, got {value!r}")


def _check_gptq_knobs(cls_name: str, method, damp, block_size) -> None:
    if method not in ("rtn", "gptq"):
        raise ValueError(f"{cls_name}.method must be 'rtn' or 'gptq', got {method!r}")
    if not isinstance(damp, (int, float)) or isinstance(damp, bool) or not (0 < damp < 1):
        raise ValueError(f"{cls_name}.damp must be in (0, 1), got {damp!r}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"{cls_name}.block_size must be an int >= 1, got {block_size!r}")


@dataclass(frozen=True)
class Int4WeightOnlyConfig:
    """W4A16: 4-bit weights with a float32 scale (and a 4-bit zero point unless symmetric) per group
    of `group_size` input features; activations stay float.

    group_size: 32, 64, 128, ... (a multiple of 32) or -1 for one group per output channel. Layers
      whose input features are not a multiple of it are left in float (the report says why).
    method: "rtn" (round to nearest) or "gptq" (Frantar et al. 2022: error-compensating, needs
      `calibration` batches in quantize_). damp, block_size and act_order are GPTQ's knobs.
    """

    group_size: int = 128
    symmetric: bool = False
    method: str = "rtn"
    min_features: int = 1
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False

    mode = "w4a16"

    def __post_init__(self):
        _check_min_features("Int4WeightOnlyConfig", self.min_features)
        if not isinstance(self.group_size, int) or not (self.group_size == -1 or (self.group_size > 0 and self.group_size % 32 == 0)):
            raise ValueError(f"Int4WeightOnlyConfig.group_size must be a positive multiple of 32 or -1 (per channel), got {self.group_size!r}")
        _check_gptq_knobs("Int4WeightOnlyConfig", self.method, self.damp, self.block_size)

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq"

    def describe(self) -> str:
        group = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"w4a16 {group} {'sym' if self.symmetric else 'asym'} {self.method}"


CODEBOOKS = ("kmeans", "nf4", "pow2")


@dataclass(frozen=True)
class CodebookConfig:
    """Weight sharing: each weight is a `bits`-bit index into a codebook of 2^bits float values,
    one codebook per output row (per="row") or per layer (per="layer"); activations stay float.

    codebook: "kmeans" (1-D k-means, as in Deep Compression; seeded, deterministic), "nf4" (the
      NormalFloat-4 levels scaled by the absmax; bits=4 only) or "pow2" (0 and +-2^-i levels).
    method: "rtn" (every weight to its nearest entry) or "gptq" (the codebook as fitted, then GPTQ
      picks the codes, pushing each column's error onto the columns not yet assigned; needs
      `calibration` batches in quantize_). damp, block_size and act_order are GPTQ's knobs.
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

    mode = "codebook"

    def __post_init__(self):
        _check_min_features("CodebookConfig", self.min_features)
        if self.bits not in (2, 3, 4):
            raise ValueError(f"CodebookConfig.bits must be 2, 3 or 4, got {self.bits!r}")
        if self.codebook not in CODEBOOKS:
            raise ValueError(f"CodebookConfig.codebook must be one of {CODEBOOKS}, got {self.codebook!r}")
        if self.codebook == "nf4" and self.bits != 4:
            raise ValueError(f"CodebookConfig: the nf4 codebook has 16 levels, so bits must be 4, got {self.bits}")
        if self.per not in ("row", "layer"):
            raise ValueError(f"CodebookConfig.per must be 'row' or 'layer', got {self.per!r}")
        _check_gptq_knobs("CodebookConfig", self.method, self.damp, self.block_size)

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq"

    def describe(self) -> str:
        return f"codebook {self.bits}-bit {self.codebook} per {self.per}" + (" gptq" if self.method == "gptq" else "")
