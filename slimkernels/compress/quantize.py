"""quantize_: replace matching nn.Linear layers of a model, in place, by QuantLinear.

The handler registry maps a config type to the function that converts one layer; a handler raises
SkipLayer(reason) for a layer it cannot take, and the pass records the reason instead of failing.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..nn import QuantLinear
from .config import Int8DynamicConfig, Int8WeightOnlyConfig
from .report import CompressionReport, LayerRecord, module_bytes


class SkipLayer(Exception):
    """Raised by a handler for a layer it leaves as it is; the message is the recorded reason."""


HANDLERS: dict[type, Callable[[nn.Module, object], nn.Module]] = {}


def register_handler(config_type: type):
    def deco(fn):
        HANDLERS[config_type] = fn
        return fn

    return deco


def _int8_linear(module: nn.Module, config) -> nn.Module:
    if not isinstance(module, nn.Linear):
        raise SkipLayer(f"{type(module).__name__} is not an nn.Linear")
    smallest = min(module.in_features, module.out_features)
    if smallest < config.min_features:
        raise SkipLayer(f"{smallest} features < min_features={config.min_features}")
    if module.weight.device.type == "meta":
        raise SkipLayer("weight is on the meta device (no values to quantize)")
    if not torch.isfinite(module.weight.detach()).all():
        raise SkipLayer("weight holds NaN or Inf")
    return QuantLinear.from_float(module, config)


register_handler(Int8DynamicConfig)(_int8_linear)
register_handler(Int8WeightOnlyConfig)(_int8_linear)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@torch.no_grad()
def quantize_(
    model: nn.Module,
    config,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    progress: bool = True,
) -> CompressionReport:
    """Replace the nn.Linear layers of `model` that `filter_fn(module, name)` accepts (all, by
    default) by QuantLinear modules built with `config`. Returns a CompressionReport."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise TypeError(f"quantize_: no handler for config {type(config).__name__}; known: {[c.__name__ for c in HANDLERS]}")
    if isinstance(model, nn.Linear):
        raise TypeError("quantize_ works in place on a model's children; wrap a lone nn.Linear in nn.Sequential")
    report = CompressionReport(method=f"{type(config).__name__} ({config.mode})", model_bytes_before=module_bytes(model))
    targets = [
        (name, m) for name, m in model.named_modules()
        if type(m) is nn.Linear and (filter_fn is None or filter_fn(m, name))
    ]
    for name, module in tqdm(targets, desc="quantize_", unit="layer", disable=not progress or len(targets) < 8):
        before = module_bytes(module)
        try:
            new = handler(module, config)
        except SkipLayer as why:
            report.layers.append(LayerRecord(name, type(module).__name__, "skipped", str(why), before, before))
            warnings.warn(f"quantize_: left {name} in float: {why}", stacklevel=2)
            continue
        _set_submodule(model, name, new)
        report.layers.append(LayerRecord(name, type(module).__name__, "converted", config.mode, before, module_bytes(new)))
    report.model_bytes_after = module_bytes(model)
    return report
