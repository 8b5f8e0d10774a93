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

    def __post_init__(self):
        if not isinstance(self.min_features, int) or self.min_features < 1:
            raise ValueError(f"Int8DynamicConfig.min_features must be an int >= 1, got {self.min_features!r}")


@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """W8A16: int8 weights per output channel; activations stay float."""

    min_features: int = 1

    mode = "w8a16"

    def __post_init__(self):
        if not isinstance(self.min_features, int) or self.min_features < 1:
            raise ValueError(f"Int8WeightOnlyConfig.min_features must be an int >= 1, got {self.min_features!r}")
