"""quantize_: replace matching nn.Linear layers of a model, in place, by QuantLinear.

The handler registry maps a config type to the function that converts one layer,
handler(module, config, hessian=None); a handler raises SkipLayer(reason) for a layer it cannot
take, and the pass records the reason instead of failing. Configs that need calibration data (GPTQ)
get each layer's input Hessian from compress/calibration.py, which runs the model block by block.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..nn import QuantLinear
from .calibration import calibrated_quantize
from .config import CodebookConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig
from .report import CompressionReport, LayerRecord, module_bytes


class SkipLayer(Exception):
    """Raised by a handler for a layer it leaves as it is; the message is the recorded reason."""


HANDLERS: dict[type, Callable[[nn.Module, object], nn.Module]] = {}


def register_handler(config_type: type):
    def deco(fn):
        HANDLERS[config_type] = fn
        return fn

    return deco


def _quantize_linear(module: nn.Module, config, hessian: Optional[torch.Tensor] = None) -> nn.Module:
    if not isinstance(module, nn.Linear):
        raise SkipLayer(f"{type(module).__name__} is not an nn.Linear")
    smallest = min(module.in_features, module.out_features)
    if smallest < config.min_features:
        raise SkipLayer(f"{smallest} features < min_features={config.min_features}")
    if module.weight.device.type == "meta":
        raise SkipLayer("weight is on the meta device (no values to quantize)")
    if not torch.isfinite(module.weight.detach()).all():
        raise SkipLayer("weight holds NaN or Inf")
    group_size = getattr(config, "group_size", -1)
    if group_size != -1 and module.in_features % group_size:
        raise SkipLayer(f"in_features={module.in_features} is not a multiple of group_size={group_size}")
    return QuantLinear.from_float(module, config, hessian=hessian)


for _config_type in (Int8DynamicConfig, Int8WeightOnlyConfig, Int4WeightOnlyConfig, CodebookConfig):
    register_handler(_config_type)(_quantize_linear)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@torch.no_grad()
def quantize_(
    model: nn.Module,
    config,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    progress: bool = True,
    calibration: Optional[Iterable] = None,
    device: Optional[torch.device | str] = None,
) -> CompressionReport:
    """Replace the nn.Linear layers of `model` that `filter_fn(module, name)` accepts (all, by
    default) by QuantLinear modules built with `config`. Returns a CompressionReport.

    calibration: batches of model inputs (each called as model(*batch) for a tuple/list,
      model(**batch) for a dict, model(batch) otherwise); required by configs that need data
      (Int4WeightOnlyConfig(method="gptq")), ignored by the others.
    device: where calibrated passes run each block (e.g. "cuda" for a model kept on the CPU);
      default: where the block is."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise TypeError(f"quantize_: no handler for config {type(config).__name__}; known: {[c.__name__ for c in HANDLERS]}")
    if isinstance(model, nn.Linear):
        raise TypeError("quantize_ works in place on a model's children; wrap a lone nn.Linear in nn.Sequential")
    if getattr(config, "needs_calibration", False) and calibration is None:
        raise ValueError(f"quantize_: {config.describe()} needs calibration data: pass calibration=<iterable of model inputs>")
    report = CompressionReport(method=f"{type(config).__name__} ({config.describe()})", model_bytes_before=module_bytes(model))
    targets = {
        name: m for name, m in model.named_modules()
        if type(m) is nn.Linear and (filter_fn is None or filter_fn(m, name))
    }

    def convert(name: str, module: nn.Linear, hessian: Optional[torch.Tensor] = None) -> nn.Module:
        before = module_bytes(module)
        used, detail = config, config.describe()
        if getattr(config, "needs_calibration", False) and hessian is None:
            # Outside the calibrated blocks no inputs were seen: round to nearest instead.
            used, detail = replace(config, method="rtn"), detail + " -> rtn (no calibration inputs reach this layer)"
        try:
            new = handler(module, used, hessian=hessian)
        except SkipLayer as why:
            report.layers.append(LayerRecord(name, type(module).__name__, "skipped", str(why), before, before))
            warnings.warn(f"quantize_: left {name} in float: {why}", stacklevel=3)
            return module
        report.layers.append(LayerRecord(name, type(module).__name__, "converted", detail, before, module_bytes(new)))
        return new

    if getattr(config, "needs_calibration", False):
        calibrated_quantize(model, targets, calibration, convert, lambda name, new: _set_submodule(model, name, new),
                            device=device, progress=progress)
    else:
        for name, module in tqdm(list(targets.items()), desc="quantize_", unit="layer", disable=not progress or len(targets) < 8):
            _set_submodule(model, name, convert(name, module))
    report.model_bytes_after = module_bytes(model)
    return report
