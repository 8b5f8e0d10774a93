"""HashedLinear: a drop-in nn.Linear whose weight is virtual (HashedNets, Chen et al. 2015): entry (n, k)
is sign(n, k) * buckets[bucket(n, k)], both from a hash of the entry's position and a seed
(ops/hashed.py; the hash is specified in backends/hashed.py and csrc/include/slim/hashed.h). Only the
buckets (a trainable nn.Parameter of num_buckets floats), the bias and the seed are stored; the weight
is computed inside the kernel, never materialized in forward.

Trainable: gradients reach the buckets (and the bias), so a layer converted from a trained nn.Linear
(slimkernels.compress.hashing.hash_, which averages each bucket's weights) or built from scratch
trains like any layer. `.weight` is the materialized virtual weight (computed on each read, in the
layer's weight dtype, differentiable in the buckets) for model code that reads it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops
from ..ops import _checks
from ..ops.hashed import MAX_BUCKETS, SEED_LIMIT
from .base import CompressedModule


def _check_int(name: str, value, low: int, high=None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value >= high):
        span = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"HashedLinear: {name} must be an int {span}, got {value!r}")


class HashedLinear(CompressedModule, layer_type="HashedLinear"):
    """y = x @ W.T + bias with W [out_features, in_features] the hashed virtual weight of `buckets`."""

    required_config_keys = ("in_features", "out_features", "num_buckets", "seed", "bias")

    def __init__(self, in_features: int, out_features: int, num_buckets: int, seed: int = 0, bias: bool = True,
                 device=None, dtype=None):
        """An untrained layer: buckets and bias drawn as nn.Linear draws its weight and bias
        (uniform in +-1/sqrt(in_features)), so a HashedLinear trained from scratch starts like one."""
        super().__init__(device=device, dtype=dtype)
        _check_int("in_features", in_features, 0)
        _check_int("out_features", out_features, 0)
        _check_int("num_buckets", num_buckets, 1, MAX_BUCKETS + 1)
        _check_int("seed", seed, 0, SEED_LIMIT)
        if not isinstance(bias, bool):
            raise ValueError(f"HashedLinear: bias must be True or False, got {bias!r}")
        self.in_features, self.out_features, self.seed = in_features, out_features, seed
        bound = 1 / math.sqrt(in_features) if in_features else 0.0
        self.buckets = nn.Parameter(torch.empty(num_buckets, device=device).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features, device=device).uniform_(-bound, bound)) if bias else None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_float(cls, linear: nn.Linear, config=None, **kwargs) -> "HashedLinear":
        """Convert a trained `linear`: each bucket becomes the mean of the (sign-corrected) weights it
        stands for, to be fine-tuned. config: a HashingConfig (default: 1/8 of the weights)."""
        from ..compress.hashing import HashingConfig, hash_layer

        if not isinstance(linear, nn.Linear):
            raise TypeError(f"HashedLinear.from_float expects an nn.Linear, got {type(linear).__name__}")
        return hash_layer(linear, HashingConfig() if config is None else config)

    @classmethod
    def matches_float(cls, module: nn.Module, cfg: dict) -> bool:
        return type(module) is nn.Linear and (module.in_features, module.out_features, module.bias is not None) == (
            cfg["in_features"], cfg["out_features"], cfg["bias"])

    # ---- state ----------------------------------------------------------------------------------
    def config_fields(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "num_buckets": self.num_buckets,
                "seed": self.seed, "bias": self.bias is not None}

    @property
    def num_buckets(self) -> int:
        return self.buckets.numel()

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def compression(self) -> float:
        """Stored weights (buckets) / virtual weights (N * K)."""
        return self.num_buckets / max(1, self.out_features * self.in_features)

    def validate_state(self) -> None:
        super().validate_state()
        if self.buckets.dim() != 1:
            raise ValueError(f"HashedLinear: buckets must be 1-D, got shape {tuple(self.buckets.shape)}")

    def dequantized_weight(self) -> torch.Tensor:
        """The virtual weight [out_features, in_features] in float32."""
        return ops.hashed_weight(self.buckets, self.seed, self.out_features, self.in_features)

    @property
    def weight(self) -> torch.Tensor:
        """The virtual weight, materialized on each read (in the layer's weight dtype; gradients flow to
        the buckets). Forward never builds it."""
        return self.dequantized_weight().to(self.weight_dtype)

    # ---- running --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.float_input("HashedLinear", "x", x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"HashedLinear: expected input with {self.in_features} features, got shape {tuple(x.shape)}")
        return ops.hashed_linear(x, self.buckets, self.seed, self.out_features, self.in_features, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"num_buckets={self.num_buckets} ({100 * self.compression:.3g}% of the weights), seed={self.seed}")
