"""quantize_: replace matching nn.Linear layers of a model, in place, by QuantLinear.

The quantization algorithms run here, one handler per config type (registered in passes.HANDLERS):
  Int8DynamicConfig / Int8WeightOnlyConfig  per-channel int8            -> QuantLinear.from_int8
  Int4WeightOnlyConfig                      RTN or GPTQ, group-wise int4 -> QuantLinear.from_int4
  CodebookConfig                            k-means / NF4 / pow2 codebook, codes by nearest entry
                                            or by GPTQ                   -> QuantLinear.from_codebook
quantize_layer(module, config, hessian=None) converts one layer (the shared skip rules of skip.py,
then the handler; SkipLayer for a layer it leaves as it is); QuantLinear.from_float calls it. quantize_
runs it over a model through passes.run_pass: configs that need calibration data (GPTQ) get each
layer's input Hessian from the block-by-block runner of calibration.py.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .. import ops
from ..nn import QuantLinear
from .config import CodebookConfig, CompressionConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, \
    QuantizationConfig
from .passes import HANDLERS, handler_for, register_handler, run_pass, set_submodule
from .report import CompressionReport
from .skip import SkipLayer, check_layer

__all__ = ["quantize_", "quantize_layer", "register_handler", "HANDLERS", "SkipLayer"]

_set_submodule = set_submodule  # the old private name (qat.py used it)


def _weight_and_bias(module: nn.Linear):
    weight = module.weight.detach().float()
    return weight, None if module.bias is None else module.bias.detach()


def _need_hessian(config, hessian) -> None:
    if hessian is None:
        raise ValueError(f"quantize_layer: GPTQ ({config.describe()}) needs the layer's input Hessian; pass hessian= "
                         "(quant.hessian.HessianAccumulator) or use slimkernels.quantize_(model, config, calibration=batches)")


@register_handler(Int8DynamicConfig)
@register_handler(Int8WeightOnlyConfig)
def _int8(module: nn.Linear, config, hessian: Optional[torch.Tensor] = None) -> QuantLinear:
    """Symmetric int8 per output channel (the Hessian, if given, is not used)."""
    w, bias = _weight_and_bias(module)
    qweight, scale = ops.quantize_per_channel_int8(w)
    return QuantLinear.from_int8(qweight, scale, bias, config.mode)


@register_handler(Int4WeightOnlyConfig)
def _int4(module: nn.Linear, config: Int4WeightOnlyConfig, hessian: Optional[torch.Tensor] = None) -> QuantLinear:
    """Group-wise int4 by round-to-nearest, or by GPTQ from the layer's input Hessian."""
    w, bias = _weight_and_bias(module)
    group_size = w.shape[1] if config.group_size == -1 else config.group_size
    if config.method == "gptq":
        from ..quant.gptq import gptq_quantize_int4

        _need_hessian(config, hessian)
        codes, scales, zeros = gptq_quantize_int4(w, hessian, group_size, config.symmetric, block_size=config.block_size,
                                                  damp=config.damp, act_order=config.act_order)
    else:
        from ..quant.int4 import quantize_int4_rtn

        codes, scales, zeros = quantize_int4_rtn(w, group_size, config.symmetric)
    return QuantLinear.from_int4(codes, scales, zeros, group_size, bias)


@register_handler(CodebookConfig)
def _codebook(module: nn.Linear, config: CodebookConfig, hessian: Optional[torch.Tensor] = None) -> QuantLinear:
    """A codebook fitted to the float weights; codes by nearest entry, or chosen by GPTQ (codebook kept)."""
    from ..quant.codebook import fit_codebook

    if config.method == "gptq":
        _need_hessian(config, hessian)
    w, bias = _weight_and_bias(module)
    codes, codebook = fit_codebook(w, config.bits, config.codebook, config.per, seed=config.seed)
    if config.method == "gptq":
        from ..quant.gptq import gptq_quantize_codebook

        codes = gptq_quantize_codebook(w, hessian, codebook, block_size=config.block_size, damp=config.damp,
                                       act_order=config.act_order)
    return QuantLinear.from_codebook(codes, codebook, bias)


def quantize_layer(module: nn.Module, config, hessian: Optional[torch.Tensor] = None) -> nn.Module:
    """Quantize one layer with `config`: the shared skip rules (skip.py: raises SkipLayer, a ValueError,
    with the reason), then the config's handler. hessian: the layer's input Hessian 2/n X^T X, which
    GPTQ configs need (quant.hessian.HessianAccumulator; quantize_(..., calibration=...) computes it)."""
    handler = handler_for(config, "quantize_layer")
    check_layer(module, config)
    return handler(module, config) if hessian is None else handler(module, config, hessian=hessian)


def _check_quantization_config(config) -> None:
    handler_for(config, "quantize_")
    if isinstance(config, CompressionConfig) and not isinstance(config, QuantizationConfig):
        raise TypeError(f"quantize_: {type(config).__name__} is not a quantization config (QuantizationConfig); "
                        "use the pass it belongs to")


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
    default) by QuantLinear modules built with `config`. Returns a CompressionReport; layers left
    in float (skip.py's rules) are recorded with the reason and warned about.

    calibration: batches of model inputs (each called as model(*batch) for a tuple/list,
      model(**batch) for a dict, model(batch) otherwise); required by configs that need data
      (method="gptq"), ignored by the others. Layers outside the model's block stack see no
      calibration data and are rounded to nearest (the report says so).
    device: where calibrated passes run each block (e.g. "cuda" for a model kept on the CPU);
      default: where the block is."""
    _check_quantization_config(config)
    return run_pass(model, config, "quantize_", filter_fn=filter_fn, progress=progress, calibration=calibration,
                    device=device)
