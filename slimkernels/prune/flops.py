"""Multiply-accumulates and parameters of a model: what structured pruning is measured by.

count_macs counts the layers that hold the weights (forward hooks, removed before it returns):
  conv     out_channels * (output positions) * in_channels / groups * prod(kernel_size)   per sample
  linear   in_features * out_features                                                   per row
Everything else (norms, activations, additions, the attention score matmuls of a transformer) is left
out: it is small next to these for the CNNs and MLPs pruned here, and unchanged in kind by pruning.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..compress.calibration import _as_call

__all__ = ["count_macs", "count_params"]


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() // module.out_features * module.in_features * module.out_features
    # a conv: every output element is one dot product of in_channels / groups * kernel entries
    return output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of one forward of `model` on `example_inputs` (a tensor, a tuple/list of positional inputs,
    or a mapping of keyword inputs) in eval mode, summed over the nn.Linear and nn.Conv1d/2d/3d layers;
    a batch of one gives the per-sample figure."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_macs: model must be an nn.Module, got {type(model).__name__}")
    total = 0

    def hook(module, _args, output):
        nonlocal total
        out = output[0] if isinstance(output, (tuple, list)) else output
        total += _layer_macs(module, out)

    counted = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    was_training = model.training
    model.eval()
    try:
        args, kwargs = _as_call(example_inputs)
        model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    """Number of parameter entries of `model` (tied parameters counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_params: model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())
