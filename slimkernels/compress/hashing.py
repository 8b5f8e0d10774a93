"""hash_: convert trained nn.Linear layers into HashedLinear (HashedNets weight sharing), in place.

Each layer's weight [N, K] is replaced by `round(compression * N * K)` buckets through the hash of
backends/hashed.py: a bucket becomes the mean of the weights mapped to it, sign-corrected (sign * w),
which is the least-squares fit of the virtual weight to the trained one. That is a starting point, not
the end: collisions average unrelated weights, so fine-tune the model afterwards (gradients reach the
buckets; with a distillation loss from the float model where one is at hand: slimkernels.distill).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..backends.hashed import hash_index
from ..ops.hashed import MAX_BUCKETS, SEED_LIMIT
from .config import CompressionConfig, check_config_object
from .passes import describe_layer, register_handler, run_pass
from .report import CompressionReport

__all__ = ["HashingConfig", "hash_", "hash_layer"]


@dataclass(frozen=True)
class HashingConfig(CompressionConfig):
    """Hashed weight sharing (hash_): each converted layer keeps `compression` of its weights as buckets.

    compression: stored buckets / weights, in (0, 1) (1/8: an eighth of the parameters).
    seed: the hash seed, an int in [0, 2**32) (the same for every layer: each has its own buckets).
    min_features: layers with fewer input or output features are left as they are.
    """

    compression: float = 1 / 8
    seed: int = 0
    min_features: int = 1

    def __post_init__(self):
        super().__post_init__()
        c = self.compression
        if not isinstance(c, (int, float)) or isinstance(c, bool) or not 0 < c < 1:
            raise ValueError(f"HashingConfig.compression must be a number in (0, 1) (stored buckets / weights), got {c!r}")
        s = self.seed
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < SEED_LIMIT:
            raise ValueError(f"HashingConfig.seed must be an int in [0, 2**32), got {s!r}")

    def describe(self) -> str:
        return f"hashed {100 * self.compression:.3g}%"

    def num_buckets(self, out_features: int, in_features: int) -> int:
        return min(MAX_BUCKETS, max(1, round(self.compression * out_features * in_features)))


@torch.no_grad()
def average_into_buckets(weight: torch.Tensor, num_buckets: int, seed: int) -> torch.Tensor:
    """Buckets float32 [num_buckets]: the mean of sign * w over the entries each bucket stands for (0 for
    a bucket no entry maps to)."""
    n, k = weight.shape
    bucket, sign = hash_index(n, k, seed, num_buckets, weight.device)
    flat = bucket.reshape(-1)
    sums = torch.zeros(num_buckets, device=weight.device).index_add_(0, flat, (weight.float() * sign).reshape(-1))
    counts = torch.bincount(flat, minlength=num_buckets).clamp(min=1)
    return sums / counts


def hash_layer(linear: nn.Linear, config: HashingConfig) -> nn.Module:
    """One nn.Linear -> HashedLinear under `config` (buckets averaged from its weight, its bias kept)."""
    from ..nn.hashed_linear import HashedLinear

    n, k = linear.out_features, linear.in_features
    count = config.num_buckets(n, k)
    w = linear.weight.detach()
    layer = HashedLinear(k, n, count, seed=config.seed, bias=linear.bias is not None, device=w.device,
                         dtype=w.dtype)
    with torch.no_grad():
        layer.buckets.copy_(average_into_buckets(w, count, config.seed))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        err = float((layer.dequantized_weight() - w.float()).norm() / w.float().norm().clamp(min=1e-30))
    describe_layer(f"{count} buckets for {n}x{k} weights, relative weight error {err:.3f} before fine-tuning")
    return layer


@register_handler(HashingConfig)
def _hash(module: nn.Module, config: HashingConfig) -> nn.Module:
    return hash_layer(module, config)


def hash_(model: nn.Module, config: Optional[HashingConfig] = None,
          filter_fn: Optional[Callable[[nn.Module, str], bool]] = None, progress: bool = True) -> CompressionReport:
    """Replace the nn.Linear layers of `model` that `filter_fn(module, name)` accepts (all, by default)
    with HashedLinear layers holding `config.compression` of their weights (default HashingConfig():
    1/8), in place; returns the CompressionReport (per layer its buckets and the weight error before
    fine-tuning). Fine-tune the model afterwards: the buckets are trainable parameters."""
    fn = "hash_"
    config = HashingConfig() if config is None else config
    check_config_object(config, fn)
    if not isinstance(config, HashingConfig):
        raise TypeError(f"{fn}: config must be a HashingConfig, got {type(config).__name__}")
    return run_pass(model, config, fn, filter_fn=filter_fn, progress=progress)
