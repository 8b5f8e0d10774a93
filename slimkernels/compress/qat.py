"""Quantization-aware training: prepare_qat_ puts fake quantization into a model's linear layers,
you fine-tune it as usual, convert_ turns it into QuantLinear modules with the same outputs.

    prepare_qat_(model, Int4WeightOnlyConfig(group_size=128))
    ... train ...
    report = convert_(model)
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

from torch import nn
from tqdm.auto import tqdm

from ..integrations import on_model_compressed
from ..nn.fake_quant_linear import FakeQuantLinear
from .config import QUANTIZATION_CONFIGS, CompressionConfig, check_config_object
from .passes import set_submodule, user_stacklevel, warn_skipped
from .report import CompressionReport, LayerRecord, module_bytes
from .skip import candidate_layers, nothing_to_do_reason, skip_reason

QAT_CONFIGS = QUANTIZATION_CONFIGS


def prepare_qat_(model: nn.Module, config, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> nn.Module:
    """Replace matching nn.Linear layers by FakeQuantLinear (sharing their Parameters), in place.
    Layers quantize_ would leave in float (skip.py's rules: min_features, meta device, NaN/Inf weights,
    a group size that does not divide in_features) train in float; a warning gives each one's reason.
    Int4 QAT rounds to nearest (method="gptq" is a post-training method and is refused here)."""
    check_config_object(config, "prepare_qat_")
    if not isinstance(config, QAT_CONFIGS):
        what = "a CompressionConfig of another pass" if isinstance(config, CompressionConfig) else "not a CompressionConfig"
        raise TypeError(f"prepare_qat_: config must be one of {[c.__name__ for c in QAT_CONFIGS]}, got "
                        f"{type(config).__name__} ({what})")
    if getattr(config, "method", "rtn") != "rtn":
        raise ValueError("prepare_qat_: QAT trains through round-to-nearest; use Int4WeightOnlyConfig(method='rtn')")
    if isinstance(model, nn.Linear):
        raise TypeError("prepare_qat_ works in place on a model's children; wrap a lone nn.Linear in nn.Sequential")
    candidates = candidate_layers(model, filter_fn)
    if not candidates:
        warnings.warn(f"prepare_qat_: {nothing_to_do_reason(model, filter_fn)}", stacklevel=user_stacklevel())
    for name, module in candidates.items():
        why = skip_reason(module, config)
        if why is not None:
            warn_skipped("prepare_qat_", name, why, stacklevel=3)
            continue
        set_submodule(model, name, FakeQuantLinear.from_linear(module, config))
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
        set_submodule(model, name, new)
    report.model_bytes_after = module_bytes(model)
    on_model_compressed(model, report=report)  # a transformers model records it for save_pretrained
    return report
