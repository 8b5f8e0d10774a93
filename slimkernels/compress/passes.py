"""What every pass shares: the handler registry and the loop that applies a config to a model.

A handler converts one layer for one config type:

    @register_handler(MyConfig)
    def _my_handler(module: nn.Linear, config: MyConfig, **stats) -> nn.Module: ...

It is called only for layers that pass the shared skip rules (skip.py) and the config's own
skip_reason; it may still raise SkipLayer(reason) to leave a layer as it is. `stats` holds the
calibration statistics the config's collectors() asked for (e.g. hessian=H for GPTQ), by stat name;
none when the config needs no calibration or the layer got none (then the config's uncalibrated()
fallback is used instead). convert_layer(module, config, **stats) is that call for one layer, and
run_pass the whole loop (candidates, calibration block by block, report, warnings) that quantize_
uses and sparsify_ / prune_ / low_rank_ will.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..nn.base import CompressedModule
from .calibration import BlockStatistics, run_calibration, set_submodule
from .report import CompressionReport, LayerRecord, module_bytes
from .skip import SkipLayer, candidate_layers, check_layer

Handler = Callable[..., nn.Module]
HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type):
    """Decorator: register fn(module, config, **stats) -> nn.Module as the handler of `config_type`
    (and of its subclasses that have no handler of their own)."""

    def deco(fn):
        HANDLERS[config_type] = fn
        return fn

    return deco


def handler_for(config, fn: str = "quantize_") -> Handler:
    """The handler registered for type(config) or its nearest base; TypeError when there is none."""
    for cls in type(config).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    raise TypeError(f"{fn}: no handler for config {type(config).__name__}; known: {[c.__name__ for c in HANDLERS]}")


def convert_layer(module: nn.Module, config, **stats) -> nn.Module:
    """The shared skip rules, then config's handler: the converted layer, or SkipLayer(reason)."""
    handler = handler_for(config, "convert_layer")
    check_layer(module, config)
    new = handler(module, config, **stats)
    weight = getattr(module, "weight", None)
    if isinstance(new, CompressedModule) and isinstance(weight, torch.Tensor):
        new.weight_dtype = weight.dtype  # model code reads layer.weight.dtype (e.g. Hugging Face T5)
    return new


def _describe(config) -> str:
    describe = getattr(config, "describe", None)
    return describe() if describe is not None else type(config).__name__


def warn_skipped(fn: str, name: str, why, stacklevel: int = 5) -> None:
    """The warning every pass gives for a layer it leaves as it is (stacklevel 5: the pass's caller
    when called from a pass's per-layer helper)."""
    warnings.warn(f"{fn}: left {name} in float: {why}", stacklevel=stacklevel)


@torch.no_grad()
def run_pass(
    model: nn.Module,
    config,
    fn: str,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    progress: bool = True,
    calibration: Optional[Iterable] = None,
    device: torch.device | str | None = None,
) -> CompressionReport:
    """Apply `config` in place to the candidate layers of `model` (skip.candidate_layers) through its
    handler, calibrating block by block (calibration.run_calibration) when the config asks for
    statistics. `fn` names the pass in messages. Returns the CompressionReport."""
    handler_for(config, fn)  # fail early on a config nobody handles
    if isinstance(model, nn.Linear):
        raise TypeError(f"{fn} works in place on a model's children; wrap a lone nn.Linear in nn.Sequential")
    needs_calibration = bool(getattr(config, "needs_calibration", False))
    if needs_calibration and calibration is None:
        raise ValueError(f"{fn}: {_describe(config)} needs calibration data: pass calibration=<iterable of model inputs>")
    report = CompressionReport(method=f"{type(config).__name__} ({_describe(config)})", model_bytes_before=module_bytes(model))
    targets = candidate_layers(model, filter_fn)

    def convert(name: str, module: nn.Module, stats: dict) -> nn.Module:
        before = module_bytes(module)
        used, detail = config, _describe(config)
        if needs_calibration and not stats:
            # Outside the calibrated blocks no inputs were seen: the config's fallback, or skip.
            fallback = getattr(config, "uncalibrated", lambda: None)()
            if fallback is None:
                why = "no calibration inputs reach this layer"
                report.layers.append(LayerRecord(name, type(module).__name__, "skipped", why, before, before))
                warn_skipped(fn, name, why)
                return module
            used, note = fallback
            detail += f" -> {note} (no calibration inputs reach this layer)"
        try:
            new = convert_layer(module, used, **stats)
        except SkipLayer as why:
            report.layers.append(LayerRecord(name, type(module).__name__, "skipped", str(why), before, before))
            warn_skipped(fn, name, why)
            return module
        report.layers.append(LayerRecord(name, type(module).__name__, "converted", detail, before, module_bytes(new)))
        return new

    if needs_calibration:
        def process(block: BlockStatistics) -> dict[str, nn.Module]:
            return {name: convert(name, layer, block.results(name)) for name, layer in block.layers.items()}

        desc = getattr(config, "method", None) or fn
        calibrated = run_calibration(model, targets, calibration, config.collectors(), process, device=device,
                                     progress=progress, fn=fn, desc=desc)
        for name, module in targets.items():
            if name not in calibrated:
                set_submodule(model, name, convert(name, module, {}))
    else:
        for name, module in tqdm(list(targets.items()), desc=fn, unit="layer", disable=not progress or len(targets) < 8):
            set_submodule(model, name, convert(name, module, {}))
    report.model_bytes_after = module_bytes(model)
    return report
