"""sparsify_: prune the nn.Linear (and nn.Conv2d) layers of a model, in place, into SparseLinear
(and SparseConv2d) modules that store only their nonzeros.

One handler (registered for SparsityConfig in passes.HANDLERS) prunes a layer's weight matrix with
quant/pruning.py (magnitude, Wanda, SparseGPT; unstructured, N:M or block) and packs it:
  unstructured -> SparseLinear.from_dense(format="csr"), block -> "bsr" with block=, 2:4 / 4:8 -> "2:4" / "4:8";
  a conv's weight [Cout, Cin/g, kh, kw] is pruned as g matrices [Cout/g, Cin/g * kh * kw] against its
  unfolded inputs, then SparseConv2d.from_dense.
sparsify_layer(module, config, **stats) converts one layer; sparsify_ runs it over a model through
passes.run_pass (calibration block by block for wanda's input norms and sparsegpt's Hessians).

Per-layer sparsities (scope="global", allocation="owl") are chosen before the pass, on the float model:
magnitude scores from the weights; Wanda scores (also for sparsegpt, whose own scores depend on the
pruning order) from one calibration pre-pass collecting every layer's input norms (layers no data
reaches stay at config.sparsity: their |w| does not compare with Wanda's scores). For pattern="block"
a tile's score is the sum of its entries' scores. No layer gets more than MAX_LAYER_SPARSITY.

SparseGPT's guards (as GPTQ's in quantize.py): a layer whose calibration inputs span too few directions
gets a larger dampening (quant.hessian.thin_calibration_damp), and with keep_better the layer is also
pruned by Wanda's mask (|w| * sqrt(diag H), the same ranking as |w| * ||x||) and the result with the lower
output error on the damped Hessian is kept (the report line says which).
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ..integrations import on_model_compressed
from ..quant import pruning
from ..quant.hessian import CALIBRATION_TOKENS_PER_INPUT
from ..quant.sparse import row_scales_int8
from .calibration import CalibrationWarning, InputNormCollector, conv_aware, run_calibration
from .config import SparsityConfig, check_config_object
from .passes import describe_layer, handler_for, layer_allocation, note_layer, register_handler, run_pass
from .quantize import _gptq_damp, _keep_better_than_rtn
from .report import CompressionReport
from .skip import candidate_layers, check_layer, layer_types, skip_reason

__all__ = ["sparsify_", "sparsify_layer", "SparsityConfig", "allocate_sparsity"]


MAX_LAYER_SPARSITY = 0.99  # an allocation never prunes a whole layer away
THIN_CALIBRATION = "calibration data too thin for SparseGPT"
THIN_CALIBRATION_ADVICE = (
    "the calibration inputs of these layers span fewer directions than they have inputs (rank < K), so SparseGPT's "
    "compensation could fit them at the expense of other inputs; their dampening was raised to 1 - rank/K (and "
    f"Wanda's mask kept where it still did better). Calibrate on at least {CALIBRATION_TOKENS_PER_INPUT} x K tokens "
    "of varied text (slimkernels.compress.calibration_text() gives English sentences when you have none)"
)


def layer_sparsity(module: nn.Module, config: SparsityConfig) -> float:
    """The sparsity of `module` in the running pass: its allocated one, else config.sparsity."""
    allocated = layer_allocation()
    return config.sparsity if not allocated else allocated.get(module, config.sparsity)


def _matrices(module: nn.Module) -> torch.Tensor:
    """The weight as per-group matrices [g, N/g, K] (g = 1 for a linear layer), float32."""
    w = module.weight.detach().to(torch.float32)
    if isinstance(module, nn.Conv2d):
        return pruning.conv_weight_groups(w, module.groups)
    return w[None]


def _per_group(stat, groups: int) -> list:
    """A statistic per group: a conv's collectors give lists, a linear layer's one value (InputRows is a
    tuple, hence list only)."""
    if stat is None:
        return [None] * groups
    return list(stat) if isinstance(stat, list) else [stat]


def _with_int8(w: torch.Tensor, values: Optional[str]) -> torch.Tensor:
    """w as the int8 packing will store it (per-row grid of its own amax) when values="int8"."""
    return w if values != "int8" else pruning.round_int8_rows(w, row_scales_int8(w))


def _prune_matrix(w, config: SparsityConfig, sparsity: float, per: str, input_norm=None, hessian=None,
                  input_rows=None) -> tuple[torch.Tensor, Optional[str]]:
    """(pruned w, what the guard did or None) for one weight matrix [N, K]."""
    if config.method == "magnitude":
        score = pruning.magnitude_score(w)
    elif config.method == "wanda":
        if input_norm is None:
            raise ValueError("sparsify_layer: method='wanda' needs the layer's input norms; pass input_norm= "
                             "(calibration.InputNormCollector) or use sparsify_(model, config, calibration=batches)")
        score = pruning.wanda_score(w, input_norm)
    else:
        if hessian is None:
            raise ValueError("sparsify_layer: method='sparsegpt' needs the layer's input Hessian; pass hessian= "
                             "(quant.hessian.HessianAccumulator) or use sparsify_(model, config, calibration=batches)")
        return _sparsegpt(w, config, sparsity, per, hessian, input_rows)
    return w * pruning.pattern_mask(score, config.pattern, sparsity, per, config.block), None


def _sparsegpt(w, config: SparsityConfig, sparsity: float, per: str, hessian, input_rows):
    damp, thin = _gptq_damp(config, hessian, input_rows)
    pruned = pruning.sparsegpt_prune(w, hessian, sparsity, config.pattern, config.block_size, damp, config.values,
                                     per, config.block)
    note = None if thin is None else f"calibration rank {thin[0]} < K={thin[1]}: damp {config.damp:g} -> {damp:.2f}"
    if config.keep_better:
        norm = torch.diagonal(hessian).clamp(min=0).sqrt()  # proportional to ||X_j||: Wanda's ranking
        mask = pruning.pattern_mask(pruning.wanda_score(w, norm), config.pattern, sparsity, per, config.block)
        wanda = _with_int8(w * mask, config.values)
        if not _keep_better_than_rtn(w, hessian, damp, pruned, wanda):
            pruned = wanda
            note = (note + ", " if note else "") + "kept wanda (lower error on the damped Hessian)"
    return pruned, note


@register_handler(SparsityConfig)
def _sparsify(module: nn.Module, config: SparsityConfig, input_norm=None, hessian=None, input_rows=None) -> nn.Module:
    """Prune `module` (nn.Linear or nn.Conv2d) with `config` and pack it as SparseLinear / SparseConv2d."""
    from ..nn import SparseConv2d, SparseLinear

    sparsity = layer_sparsity(module, config)
    per = "layer" if config.scope == "global" else config.per
    mats = _matrices(module)
    g = mats.shape[0]
    notes, pruned = [], []
    for w, norm, h, rows in zip(mats, _per_group(input_norm, g), _per_group(hessian, g), _per_group(input_rows, g)):
        p, note = _prune_matrix(w, config, sparsity, per, norm, h, rows)
        pruned.append(p)
        if note:
            notes.append(note)
    weight = torch.stack(pruned).reshape(module.weight.shape).to(module.weight.dtype)
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Conv2d):
        new = SparseConv2d.from_dense(weight, bias, stride=module.stride, padding=module.padding, dilation=module.dilation,
                                  groups=module.groups, values=config.values)
    else:
        block = config.block if config.pattern == "block" else None
        new = SparseLinear.from_dense(weight, bias, format=config.format, values=config.values, block=block)
    if notes:
        thin = [n for n in notes if n.startswith("calibration rank")]
        note_layer(THIN_CALIBRATION if thin else "SparseGPT kept Wanda's mask", notes[0],
                   THIN_CALIBRATION_ADVICE if thin else "SparseGPT's compensation did worse than Wanda's mask on the "
                   "damped Hessian of these layers (too little calibration data for the layer's size)",
                   CalibrationWarning)
    zeros = float((weight == 0).sum()) / max(weight.numel(), 1)
    summary = getattr(new, "policy", None) or getattr(new, "format_summary", lambda: type(new).__name__)()
    allocated = "" if sparsity == config.sparsity else f" (allocated {100 * sparsity:.1f}%)"
    describe_layer(f"{100 * zeros:.1f}% zeros{allocated}, {summary}")
    return new


def sparsify_layer(module: nn.Module, config: SparsityConfig, **stats) -> nn.Module:
    """Prune one nn.Linear / nn.Conv2d with `config`: the shared skip rules (skip.py; SkipLayer, a
    ValueError, with the reason), then the handler. stats: calibration statistics, input_norm=[K]
    for wanda, hessian=[K, K] (and input_rows=InputRows) for sparsegpt; a conv takes a list with one per
    group. SparseLinear.from_float(linear, config) calls this."""
    handler = handler_for(config, "sparsify_layer")
    check_layer(module, config)
    return handler(module, config, **stats)


# ---- per-layer sparsity before the pass ---------------------------------------------------------------
def _comparable(score: torch.Tensor, config: SparsityConfig) -> torch.Tensor:
    """A layer's scores as the pass compares them: per entry, or per tile for pattern="block"."""
    if config.pattern != "block":
        return score
    bn, bk = config.block
    n, k = score.shape
    return score.reshape(n // bn, bn, k // bk, bk).sum((1, 3))


def allocate_sparsity(model: nn.Module, config: SparsityConfig, filter_fn=None, calibration=None, device=None,
                      progress: bool = False) -> dict[str, float]:
    """{layer name: sparsity} that sparsify_ uses for scope="global" / allocation="owl" (see the module
    docstring); {} for a uniform config. Layers the pass would skip are left out."""
    if config.scope == "layer" and config.allocation == "uniform":
        return {}
    targets = {name: m for name, m in candidate_layers(model, filter_fn, layer_types(config)).items()
               if skip_reason(m, config) is None}
    norms: dict[str, list] = {}
    if config.method != "magnitude" and targets:
        def keep_norms(block):
            for name in block.layers:
                norms[name] = _per_group(block.results(name)["input_norm"], 1 if not isinstance(
                    block.layers[name], nn.Conv2d) else block.layers[name].groups)

        run_calibration(model, targets, calibration, {"input_norm": conv_aware(InputNormCollector)}, keep_norms,
                        device=device, progress=progress, fn="sparsify_", desc="sparsify_ (scores)")
    if norms:  # scores of uncalibrated layers (|w| alone) do not compare with Wanda's: they keep config.sparsity
        targets = {name: m for name, m in targets.items() if name in norms}
    scores = []
    for name, module in targets.items():
        mats = _matrices(module)
        if name in norms:
            score = torch.cat([pruning.wanda_score(w, nrm) for w, nrm in zip(mats, norms[name])])
        else:
            score = pruning.magnitude_score(mats.reshape(-1, mats.shape[-1]))
        scores.append(_comparable(score, config))
    if config.scope == "global":
        sparsities = pruning.global_sparsities(scores, config.sparsity)
    else:
        ratios = [pruning.outlier_ratio(s, config.owl_factor) for s in scores]
        sparsities = pruning.owl_sparsities(ratios, [s.numel() for s in scores], config.sparsity, config.owl_strength)
    sparsities = [min(s, MAX_LAYER_SPARSITY) for s in sparsities]
    return dict(zip(targets, sparsities))


@torch.no_grad()
def sparsify_(
    model: nn.Module,
    config: SparsityConfig,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    calibration: Optional[Iterable] = None,
    progress: bool = True,
    device: Optional[torch.device | str] = None,
) -> CompressionReport:
    """Prune the nn.Linear (and, with config.conv, nn.Conv2d) layers of `model` that
    `filter_fn(module, name)` accepts (all, by default) into SparseLinear / SparseConv2d modules, in
    place. Returns a CompressionReport: per layer the zeros reached, the format and bytes before/after;
    layers left as they are (skip.py's rules, a K the N:M group does not divide, a block that does not
    divide the weight) with the reason, also warned about.

    calibration: batches of model inputs (model(*batch) for a tuple/list, model(**batch) for a mapping,
      model(batch) otherwise); required by method="wanda" / "sparsegpt". Layers outside the model's
      block stack see none and are pruned by magnitude (the report says so).
      Every row a layer receives counts, padding tokens included: batches without padding (one
      sentence each, or sentences of one length) give cleaner statistics.
    device: where calibrated passes run each block; default: where the block is."""
    fn = "sparsify_"
    check_config_object(config, fn)
    if not isinstance(config, SparsityConfig):
        raise TypeError(f"{fn}: config must be a SparsityConfig, got {type(config).__name__} (quantization configs "
                        "go to slimkernels.quantize_)")
    if config.needs_calibration and calibration is None:
        raise ValueError(f"{fn}: {config.describe()} needs calibration data: pass calibration=<iterable of model "
                         "inputs> (slimkernels.compress.calibration_text() gives English sentences to tokenize)")
    if calibration is not None and not isinstance(calibration, (list, tuple)):
        calibration = list(calibration)  # read twice when a pre-pass allocates the sparsities
    by_name = allocate_sparsity(model, config, filter_fn, calibration, device, progress)
    allocated = {model.get_submodule(name): s for name, s in by_name.items()}
    report = run_pass(model, config, fn, filter_fn=filter_fn, progress=progress, calibration=calibration,
                      device=device, allocation=allocated)
    # The layers are recorded for save_pretrained; the config is not: integrations.config_to_dict takes
    # quantization configs only (a SparsityConfig there needs its config registry to know it).
    on_model_compressed(model, config=None, report=report)
    return report
