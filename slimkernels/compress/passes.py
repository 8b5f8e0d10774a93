"""What every pass shares: the handler registry and the loop that applies a config to a model.

A handler converts one layer for one config type:

    @register_handler(MyConfig)
    def _my_handler(module: nn.Linear, config: MyConfig, **stats) -> nn.Module: ...

It is called only for layers that pass the shared skip rules (skip.py) and the config's own
skip_reason; it may still raise SkipLayer(reason) to leave a layer as it is. `stats` holds the
calibration statistics the config's collectors() asked for (e.g. hessian=H for GPTQ), by stat name;
none when the config needs no calibration or the layer got none (then the config's uncalibrated()
fallback is used instead). A handler tells the pass about a layer with note_layer (GPTQ's rank guard
does): inside run_pass the note joins the layer's report line and one warning per kind of note at the
end of the pass, naming every layer; outside a pass it is a warning right away.
convert_layer(module, config, **stats) is that call for one layer, and run_pass the whole loop (candidates, calibration block by block, report, warnings) that quantize_
uses and sparsify_ / prune_ / low_rank_ will.
"""
from __future__ import annotations

import sys
import time
import warnings
from contextvars import ContextVar
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..nn.base import CompressedModule
from .calibration import BlockStatistics, run_calibration, set_submodule
from .config import check_config_object
from .report import CompressionReport, LayerRecord, module_bytes
from .skip import SkipLayer, candidate_layers, check_layer, layer_types, nothing_to_do_reason

Handler = Callable[..., nn.Module]
NOTED_LAYERS_SHOWN = 12  # a pass's warning about a kind of note names this many layers, then counts the rest
# (kind, detail, advice, category) tuples of the layer run_pass is converting; None outside a pass
_LAYER_NOTES: ContextVar[Optional[list]] = ContextVar("slimkernels_layer_notes", default=None)
HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type):
    """Decorator: register fn(module, config, **stats) -> nn.Module as the handler of `config_type`
    (and of its subclasses that have no handler of their own)."""

    def deco(fn):
        HANDLERS[config_type] = fn
        return fn

    return deco


def handler_for(config, fn: str = "quantize_") -> Handler:
    """The handler registered for type(config) or its nearest base; TypeError when there is none
    (with a "did you mean Int8DynamicConfig()" for a config class or a mode name)."""
    check_config_object(config, fn)
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


def user_stacklevel() -> int:
    """The stacklevel that makes a warning issued by the caller of this function point at the first
    frame outside slimkernels and torch (the user's call of the pass, however deep the pass runs)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("slimkernels.", "torch.")):
        frame, level = frame.f_back, level + 1
    return level


def note_layer(kind: str, detail: str, advice: str, category: type[Warning] = UserWarning) -> None:
    """For handlers: something the pass should say about the layer it is converting. `kind` groups the
    notes of a pass into one warning ("{fn}: {kind} in N layers: name (detail), ...; {advice}");
    `detail` is about this layer and also goes into its report line. Outside run_pass (quantize_layer,
    QuantLinear.from_float) it is a warning right away."""
    notes = _LAYER_NOTES.get()
    if notes is None:
        warnings.warn(f"{kind}: {detail}; {advice}", category, stacklevel=user_stacklevel())
    else:
        notes.append((kind, detail, advice, category))


def describe_layer(detail: str) -> None:
    """For handlers: words on the layer just converted for its report line only (no warning), e.g. the
    sparsity it reached and its format; ignored outside run_pass."""
    notes = _LAYER_NOTES.get()
    if notes is not None:
        notes.append((None, detail, "", None))


def warn_skipped(fn: str, name: str, why, stacklevel: int = 5) -> None:
    """The warning every pass gives for a layer it leaves as it is (stacklevel 5: the pass's caller
    when called from a pass's per-layer helper)."""
    warnings.warn(f"{fn}: left {name} in float: {why}", stacklevel=stacklevel)


# Per-layer values a pass chose before converting (sparsify_'s allocated sparsities, low_rank_'s ranks),
# {module: value}, visible to its handler through layer_allocation() while run_pass runs.
_ALLOCATION: ContextVar[Optional[dict]] = ContextVar("slimkernels_layer_allocation", default=None)


def layer_allocation() -> Optional[dict]:
    """The {module: value} the running pass was given (run_pass(allocation=...)), or None."""
    return _ALLOCATION.get()


def run_pass(
    model: nn.Module,
    config,
    fn: str,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    progress: bool = True,
    calibration: Optional[Iterable] = None,
    device: torch.device | str | None = None,
    allocation: Optional[dict] = None,
) -> CompressionReport:
    """Apply `config` in place to the candidate layers of `model` (skip.candidate_layers) through its
    handler, calibrating block by block (calibration.run_calibration) when the config asks for
    statistics. `fn` names the pass in messages; `allocation` ({module: value}) is what the handler reads
    from layer_allocation(). Returns the CompressionReport."""
    token = _ALLOCATION.set(allocation)
    try:
        return _run_pass(model, config, fn, filter_fn, progress, calibration, device)
    finally:
        _ALLOCATION.reset(token)


@torch.no_grad()
def _run_pass(model, config, fn, filter_fn, progress, calibration, device) -> CompressionReport:
    handler_for(config, fn)  # fail early on a config nobody handles
    if isinstance(model, nn.Linear):
        raise TypeError(f"{fn} works in place on a model's children; wrap a lone nn.Linear in nn.Sequential")
    needs_calibration = bool(getattr(config, "needs_calibration", False))
    if needs_calibration and calibration is None:
        raise ValueError(f"{fn}: {_describe(config)} needs calibration data: pass calibration=<iterable of model inputs>")
    report = CompressionReport(method=f"{type(config).__name__} ({_describe(config)})", model_bytes_before=module_bytes(model))
    targets = candidate_layers(model, filter_fn, layer_types(config))
    if not targets:
        # An already-compressed model, a filter_fn that matches nothing, ...: say why nothing happened.
        report.note = nothing_to_do_reason(model, filter_fn)
        report.model_bytes_after = report.model_bytes_before
        warnings.warn(f"{fn}: {report.note}", stacklevel=user_stacklevel())
        return report
    pass_notes: dict[str, tuple[str, type, list[str]]] = {}  # kind -> (advice, category, "name (detail)"s)

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
        notes: list = []
        token = _LAYER_NOTES.set(notes)
        start = time.perf_counter()
        try:
            new = convert_layer(module, used, **stats)
        except SkipLayer as why:
            report.layers.append(LayerRecord(name, type(module).__name__, "skipped", str(why), before, before,
                                             time.perf_counter() - start))
            warn_skipped(fn, name, why)
            return module
        finally:
            _LAYER_NOTES.reset(token)
        for kind, note, advice, category in notes:
            detail += f" ({note})" if kind is not None else f": {note}"
            if kind is None:  # describe_layer: the report line only
                continue
            pass_notes.setdefault(kind, (advice, category, []))[2].append(f"{name} ({note})")
        seconds = time.perf_counter() - start
        report.layers.append(LayerRecord(name, type(module).__name__, "converted", detail, before, module_bytes(new),
                                         seconds))
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
    for kind, (advice, category, layers) in pass_notes.items():
        shown = ", ".join(layers[:NOTED_LAYERS_SHOWN])
        if len(layers) > NOTED_LAYERS_SHOWN:
            shown += f", and {len(layers) - NOTED_LAYERS_SHOWN} more (the report has every layer)"
        warnings.warn(f"{fn}: {kind} in {len(layers)} layer{'s' if len(layers) > 1 else ''}: {shown}; {advice}",
                      category, stacklevel=user_stacklevel())
    if not report.converted:
        report.note = f"nothing converted: every one of the {len(report.skipped)} candidate layers was left as it is " \
                      "(the reasons are in the report and the warnings)"
    report.model_bytes_after = module_bytes(model)
    return report
