"""Quantization-aware training: prepare_qat_ puts fake quantization into a model's linear layers,
you fine-tune it as usual, convert_ turns it into QuantLinear modules with the same outputs.

    prepare_qat_(model, Int4WeightOnlyConfig(group_size=128))
    ... train ...
    report = convert_(model)
"""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn
from tqdm.auto import tqdm

from ..nn.fake_quant_linear import FakeQuantLinear
from .config import CodebookConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig
from .quantize import _set_submodule
from .report import CompressionReport, LayerRecord, module_bytes

QAT_CONFIGS = (Int8DynamicConfig, Int8WeightOnlyConfig, Int4WeightOnlyConfig, CodebookConfig)


def prepare_qat_(model: nn.Module, config, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> nn.Module:
    """Replace matching nn.Linear layers by FakeQuantLinear (sharing their Parameters), in place.
    Int4 QAT rounds to nearest (method="gptq" is a post-training method and is refused here)."""
    if not isinstance(config, QAT_CONFIGS):
        raise TypeError(f"prepare_qat_: config must be one of {[c.__name__ for c in QAT_CONFIGS]}, got {type(config).__name__}")
    if getattr(config, "method", "rtn") != "rtn":
        raise ValueError("prepare_qat_: QAT trains through round-to-nearest; use Int4WeightOnlyConfig(method='rtn')")
    if isinstance(model, nn.Linear):
        raise TypeError("prepare_qat_ works in place on a model's children; wrap a lone nn.Linear in nn.Sequential")
    group_size = getattr(config, "group_size", -1)
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or (filter_fn is not None and not filter_fn(module, name)):
            continue
        if min(module.in_features, module.out_features) < config.min_features:
            continue
        if group_size != -1 and module.in_features % group_size:
            continue  # quantize_ would skip it too; it trains in float
        _set_submodule(model, name, FakeQuantLinear.from_linear(module, config))
    return model


def convert_(model: nn.Module, progress: bool = True) -> CompressionReport:
    """Replace every FakeQuantLinear by the QuantLinear holding its quantized weights, in place."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if not layers:
        raise ValueError("convert_: the model has no FakeQuantLinear layers; call prepare_qat_ first")
    methods = sorted({m.config.describe() for _, m in layers})
    report = CompressionReport(method=f"QAT ({', '.join(methods)})", model_bytes_before=module_bytes(model))
    for name, module in tqdm(layers, desc="convert_", unit="layer", disable=not progress or len(layers) < 8):
        new = module.to_quant_linear()
        report.layers.append(LayerRecord(name, "FakeQuantLinear", "converted", module.config.describe(),
                                         module_bytes(module), module_bytes(new)))
        _set_submodule(model, name, new)
    report.model_bytes_after = module_bytes(model)
    return report
