"""quantize_: replace matching nn.Linear layers of a model, in place, by QuantLinear.

The quantization algorithms run here, one handler per config type (registered in passes.HANDLERS):
  Int8DynamicConfig / Int8WeightOnlyConfig  per-channel int8            -> QuantLinear.from_int8
  Int4WeightOnlyConfig                      RTN or GPTQ, group-wise int4 -> QuantLinear.from_int4
  CodebookConfig                            k-means / NF4 / pow2 codebook, codes by nearest entry
                                            or by GPTQ                   -> QuantLinear.from_codebook
quantize_layer(module, config, hessian=None) converts one layer (the shared skip rules of skip.py,
then the handler; SkipLayer for a layer it leaves as it is); QuantLinear.from_float calls it. quantize_
runs it over a model through passes.run_pass: configs that need calibration data (GPTQ) get each
layer's input Hessian (and its row counts) from the block-by-block runner of calibration.py.

GPTQ's rank guard (here, in the handlers): when a layer's calibration inputs span fewer directions than
it has inputs (quant.hessian.hessian_rank), its dampening is raised to 1 - rank/K
(thin_calibration_damp), round-to-nearest is kept if GPTQ still does worse on the damped Hessian, the
layer's report line says so, and the pass gives one CalibrationWarning naming the layers. Calibration
that spans every direction gets GPTQ exactly as configured.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .. import ops
from ..integrations import on_model_compressed
from ..nn import QuantLinear
from ..nn.formats import weight_format
from ..quant.hessian import CALIBRATION_TOKENS_PER_INPUT, hessian_rank, layer_output_error, thin_calibration_damp
from .calibration import CalibrationWarning
from .config import CodebookConfig, CompressionConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, \
    QuantizationConfig
from .passes import HANDLERS, handler_for, note_layer, register_handler, run_pass, set_submodule
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
def _int8(module: nn.Linear, config, hessian: Optional[torch.Tensor] = None, **_stats) -> QuantLinear:
    """Symmetric int8 per output channel (the Hessian, if given, is not used)."""
    w, bias = _weight_and_bias(module)
    qweight, scale = ops.quantize_per_channel_int8(w)
    return QuantLinear.from_parts(config.mode, qweight, scale, bias=bias,
                                  **weight_format(config.mode).options_from_config(config))


THIN_CALIBRATION = "calibration data too thin for GPTQ"
THIN_CALIBRATION_ADVICE = (
    "the calibration inputs of these layers span fewer directions than they have inputs (rank < K: too few or too "
    "repetitive tokens), so GPTQ could fit them at the expense of every other input; their dampening was raised to "
    "1 - rank/K, which keeps GPTQ near round-to-nearest where the data says nothing (and round-to-nearest is kept "
    f"where it still does better). Calibrate on at least {CALIBRATION_TOKENS_PER_INPUT} x K tokens (K = the largest "
    "in_features listed) of varied text like the model's real inputs, not one sentence repeated or lightly varied"
)


def _gptq_damp(config, hessian: torch.Tensor, input_rows) -> tuple[float, Optional[tuple[int, int]]]:
    """GPTQ's dampening for this layer: config.damp, raised by the rank guard
    (quant.hessian.thin_calibration_damp) when its calibration inputs span too few directions.
    Returns (damp, (rank, K) or None when unchanged). input_rows (InputRows) lets a layer with plenty
    of distinct rows skip the eigenvalue decomposition; without it the rank is always computed."""
    distinct = None if input_rows is None else int(input_rows.distinct)
    rank, k = hessian_rank(hessian, distinct)
    damp = thin_calibration_damp(config.damp, rank, k)
    return (damp, (rank, k)) if damp != config.damp else (damp, None)


def _keep_better_than_rtn(w, hessian, damp, gptq_w, rtn_w) -> bool:
    """Whether GPTQ's weight beats round-to-nearest's on the damped Hessian H + damp * mean(diag H) I
    (the data plus a prior over the directions it does not visit): the guard's safety net."""
    h = hessian.to(torch.float32)
    diag = torch.diagonal(h)
    live = diag > 0
    mean_diag = float(diag[live].mean()) if bool(live.any()) else 1.0
    damped = h + torch.eye(h.shape[0], device=h.device) * (damp * mean_diag)
    return layer_output_error(w, gptq_w, damped) <= layer_output_error(w, rtn_w, damped)


def _note_thin(config, rank_k, damp: float, fell_back: bool) -> None:
    rank, k = rank_k
    detail = f"calibration rank {rank} < K={k}: damp {config.damp:g} -> {damp:.2f}"
    detail += ", kept rtn" if fell_back else ""
    note_layer(THIN_CALIBRATION, detail, THIN_CALIBRATION_ADVICE, CalibrationWarning)


@register_handler(Int4WeightOnlyConfig)
def _int4(module: nn.Linear, config: Int4WeightOnlyConfig, hessian: Optional[torch.Tensor] = None,
          input_rows=None) -> QuantLinear:
    """Group-wise int4 by round-to-nearest, or by GPTQ from the layer's input Hessian (with the rank
    guard: thin calibration data raises the dampening, and RTN is kept if it still does better)."""
    from ..quant.int4 import dequantize_int4_codes, quantize_int4_rtn

    w, bias = _weight_and_bias(module)
    group_size = w.shape[1] if config.group_size == -1 else config.group_size
    if config.method == "gptq":
        from ..quant.gptq import gptq_quantize_int4

        _need_hessian(config, hessian)
        damp, thin = _gptq_damp(config, hessian, input_rows)
        parts = gptq_quantize_int4(w, hessian, group_size, config.symmetric, block_size=config.block_size,
                                   damp=damp, act_order=config.act_order)
        if thin is not None:
            rtn = quantize_int4_rtn(w, group_size, config.symmetric)
            keep = _keep_better_than_rtn(w, hessian, damp, dequantize_int4_codes(*parts, group_size),
                                         dequantize_int4_codes(*rtn, group_size))
            parts = parts if keep else rtn
            _note_thin(config, thin, damp, not keep)
        codes, scales, zeros = parts
    else:
        codes, scales, zeros = quantize_int4_rtn(w, group_size, config.symmetric)
    return QuantLinear.from_parts(config.mode, codes, scales, zeros, bias=bias, group_size=group_size)  # w4a16 / w4a8


@register_handler(CodebookConfig)
def _codebook(module: nn.Linear, config: CodebookConfig, hessian: Optional[torch.Tensor] = None,
              input_rows=None) -> QuantLinear:
    """A codebook fitted to the float weights; codes by nearest entry, or chosen by GPTQ (codebook kept;
    the rank guard as for int4)."""
    from ..quant.codebook import fit_codebook

    if config.method == "gptq":
        _need_hessian(config, hessian)
    w, bias = _weight_and_bias(module)
    codes, codebook = fit_codebook(w, config.bits, config.codebook, config.per, seed=config.seed,
                                   keep_zero=config.keep_zero)
    if config.method == "gptq":
        from ..quant.gptq import gptq_quantize_codebook

        damp, thin = _gptq_damp(config, hessian, input_rows)
        gptq_codes = gptq_quantize_codebook(w, hessian, codebook, block_size=config.block_size, damp=damp,
                                            act_order=config.act_order)
        if thin is not None:
            def values(c):
                return torch.gather(codebook.to(c.device).expand(c.shape[0], -1), 1, c.long())

            keep = _keep_better_than_rtn(w, hessian, damp, values(gptq_codes), values(codes))
            _note_thin(config, thin, damp, not keep)
            codes = gptq_codes if keep else codes
        else:
            codes = gptq_codes
    return QuantLinear.from_codebook(codes, codebook, bias)


def quantize_layer(module: nn.Module, config, hessian: Optional[torch.Tensor] = None, **stats) -> nn.Module:
    """Quantize one layer with `config`: the shared skip rules (skip.py: raises SkipLayer, a ValueError,
    with the reason), then the config's handler. hessian: the layer's input Hessian 2/n X^T X, which
    GPTQ configs need (quant.hessian.HessianAccumulator; quantize_(..., calibration=...) computes it).
    stats: further calibration statistics for the handler, e.g. input_rows=InputRows(...) (GPTQ's rank
    guard then skips the eigenvalue decomposition of H for a layer with plenty of distinct rows)."""
    handler = handler_for(config, "quantize_layer")
    check_layer(module, config)
    if hessian is not None:
        stats["hessian"] = hessian
    return handler(module, config, **stats)


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
    report = run_pass(model, config, "quantize_", filter_fn=filter_fn, progress=progress, calibration=calibration,
                      device=device)
    on_model_compressed(model, config=config, report=report)  # a transformers model records it for save_pretrained
    return report
