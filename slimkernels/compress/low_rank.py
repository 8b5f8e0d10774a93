"""low_rank_: replace nn.Linear (and nn.Conv2d) layers by two thinner ones, LowRankLinear / LowRankConv2d.

One handler (registered for LowRankConfig in passes.HANDLERS) factorizes a layer's weight matrix
(a conv's as [Cout, Cin kh kw]) with slimkernels.quant.low_rank: plain truncated SVD, ASVD (input
columns scaled by mean |x| ^ alpha from calibration data) or SVD-LLM (whitened by the Cholesky factor
of the input Gram matrix, from the Hessian collector GPTQ uses). low_rank_ runs it through
passes.run_pass, so calibration goes block by block through the same runner as GPTQ, each block seeing
the outputs of the already factorized blocks before it.

The rank of a layer comes from exactly one of:
  rank     an int (every layer), or a float in (0, 1): that fraction of the layer's min(N, K)
  energy   the smallest rank keeping that fraction of sum s_i^2 (of the method's scaled matrix)
  params   the fraction of the selected layers' parameters kept. allocation="sensitivity" (default):
           one global budget shared by measured sensitivity; a pre-pass on the float model computes
           every layer's spectrum (with the method's calibration statistics), whose tail sums are the
           exact relative error at every rank, and quant.low_rank.allocate_ranks gives the rank where it
           lowers the summed relative error most per parameter. allocation="uniform": each layer keeps
           that fraction of its own parameters.
A layer whose rank would not save parameters (r (N + K) >= N K, which also costs more FLOPs) stays
dense; its report line says so.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..integrations import on_model_compressed
from ..nn.base import CompressedModule
from ..quant import low_rank as lr
from .calibration import HessianCollector, InputNormCollector, conv_aware, run_calibration
from .config import CompressionConfig, QuantizationConfig, check_config_object
from .passes import describe_layer, handler_for, layer_allocation, register_handler, run_pass
from .report import CompressionReport
from .skip import SkipLayer, candidate_layers, check_layer, layer_features, layer_types, skip_reason

__all__ = ["LowRankConfig", "low_rank_", "low_rank_layer", "allocate_ranks"]

ALLOCATIONS = ("sensitivity", "uniform")


class MeanAbsCollector(InputNormCollector):
    """Per input feature, mean |x| over all rows (ASVD's activation scale); result: float32 [K]."""

    def result(self) -> torch.Tensor:
        return self.mean_abs()


def _fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


@dataclass(frozen=True)
class LowRankConfig(CompressionConfig):
    """Low-rank factorization (low_rank_): each layer becomes LowRankLinear / LowRankConv2d.

    rank / energy / params: exactly one (see the module docstring). rank: an int >= 1, or a float in
      (0, 1) for a fraction of each layer's min(N, K); energy and params: in (0, 1].
    method: "svd", "asvd" or "svd-llm" (the last two need calibration batches in low_rank_; layers no
      data reaches get plain SVD, the report says so).
    allocation: with params=, "sensitivity" (one global budget, ranks by measured error curves) or
      "uniform" (every layer keeps `params` of its own parameters).
    factors: None (float factors) or a quantization config (Int8WeightOnlyConfig(), Int8DynamicConfig(),
      Int4WeightOnlyConfig(group_size=...), ...) both factors are quantized with, round to nearest.
    alpha: ASVD's exponent; damp: SVD-LLM's damping of the Gram matrix (fraction of its mean diagonal).
    conv: also factorize nn.Conv2d layers (groups=1) as a k x k conv to r channels then a 1 x 1 conv.
    min_features: layers with fewer input or output features are left as they are.
    """

    rank: Optional[float] = None
    energy: Optional[float] = None
    params: Optional[float] = None
    method: str = "svd"
    allocation: str = "sensitivity"
    factors: Optional[QuantizationConfig] = None
    alpha: float = lr.ASVD_ALPHA
    damp: float = lr.SVD_LLM_DAMP
    conv: bool = True
    min_features: int = 1

    def __post_init__(self):
        super().__post_init__()
        name = "LowRankConfig"
        given = [f for f in ("rank", "energy", "params") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"{name}: give exactly one of rank=, energy=, params= (got "
                             f"{', '.join(f'{f}={getattr(self, f)!r}' for f in given) if given else 'none'})")
        r = self.rank
        if r is not None and not ((isinstance(r, int) and not isinstance(r, bool) and r >= 1)
                                  or (isinstance(r, float) and 0 < r < 1)):
            raise ValueError(f"{name}.rank must be an int >= 1 or a float in (0, 1) (fraction of min(N, K)), got {r!r}")
        for field_name in ("energy", "params"):
            value = getattr(self, field_name)
            if value is not None and not _fraction(value):
                raise ValueError(f"{name}.{field_name} must be a number in (0, 1], got {value!r}")
        if self.method not in lr.METHODS:
            raise ValueError(f"{name}.method must be one of {lr.METHODS}, got {self.method!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"{name}.allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.factors is not None:
            check_config_object(self.factors, f"{name}.factors")
            if not isinstance(self.factors, QuantizationConfig):
                raise ValueError(f"{name}.factors must be None or a quantization config (Int8WeightOnlyConfig(), ...), "
                                 f"got {self.factors!r}")
            if getattr(self.factors, "method", "rtn") != "rtn":
                raise ValueError(f"{name}.factors are quantized by round to nearest; {self.factors.describe()} asks "
                                 "for GPTQ (method='rtn' there)")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not 0 < self.alpha <= 2:
            raise ValueError(f"{name}.alpha must be in (0, 2], got {self.alpha!r}")
        if not isinstance(self.damp, (int, float)) or isinstance(self.damp, bool) or not 0 <= self.damp < 1:
            raise ValueError(f"{name}.damp must be in [0, 1), got {self.damp!r}")
        if not isinstance(self.conv, bool):
            raise ValueError(f"{name}.conv must be True or False, got {self.conv!r}")

    @property
    def layer_types(self) -> tuple[type, ...]:
        return (nn.Linear, nn.Conv2d) if self.conv else (nn.Linear,)

    def describe(self) -> str:
        amount = (f"rank {self.rank:g}" if self.rank is not None else f"energy {self.energy:g}"
                  if self.energy is not None else f"params {self.params:g} {self.allocation}")
        factors = f" {self.factors.describe()} factors" if self.factors is not None else ""
        return f"{self.method} {amount}{factors}"

    def skip_reason(self, module) -> Optional[str]:
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                return f"grouped conv (groups={module.groups}): low rank takes groups=1 only"
            if module.padding_mode != "zeros":
                return f"padding_mode={module.padding_mode!r} (only zero padding)"
            if isinstance(module.padding, str) and module.padding != "valid":
                total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
                if any(t % 2 for t in total):
                    return f"padding={module.padding!r} pads asymmetrically here"
        if isinstance(self.rank, int) and self.rank > min(layer_features(module)):
            n, k = layer_features(module)[1], layer_features(module)[0]
            return f"rank={self.rank} > min(N, K) = {min(n, k)} for a weight [{n}, {k}]"
        return None

    def collectors(self) -> dict[str, Callable]:
        if self.method == "asvd":
            return {"mean_abs": conv_aware(MeanAbsCollector)}
        if self.method == "svd-llm":
            return {"hessian": conv_aware(HessianCollector)}
        return {}

    def uncalibrated(self):
        return (replace(self, method="svd"), "svd")


def _matrix(module: nn.Module) -> torch.Tensor:
    """The weight as one matrix [N, K] in float32 (a conv's [Cout, Cin kh kw])."""
    w = module.weight.detach().float()
    return w.reshape(w.shape[0], -1)


def _one(stat):
    """A conv's collectors give a list (one per group; groups=1 here), a linear layer's the value."""
    return stat[0] if isinstance(stat, list) else stat


def _rank(module: nn.Module, config: LowRankConfig, spectrum: Callable[[], torch.Tensor]) -> Optional[int]:
    """The layer's rank in the running pass (None: the pass allocated it dense); spectrum() computes the
    singular values, which only energy= needs."""
    n, k = _matrix(module).shape
    allocated = layer_allocation()
    if allocated is not None and module in allocated:
        return allocated[module]
    if config.rank is not None:
        return config.rank if isinstance(config.rank, int) else max(1, round(config.rank * min(n, k)))
    if config.energy is not None:
        return lr.rank_for_energy(spectrum(), config.energy)
    return lr.rank_for_params(n, k, config.params)


@register_handler(LowRankConfig)
def _low_rank(module: nn.Module, config: LowRankConfig, mean_abs=None, hessian=None) -> nn.Module:
    """Factorize `module` (nn.Linear or nn.Conv2d) as `config` says into LowRankLinear / LowRankConv2d."""
    from ..nn.low_rank import LowRankConv2d, LowRankLinear

    w = _matrix(module)
    n, k = w.shape
    stats = dict(mean_abs=_one(mean_abs), gram=_one(hessian), alpha=config.alpha, damp=config.damp)
    rank = _rank(module, config, lambda: lr.spectrum(w, config.method, **stats))
    if rank is None or not lr.saves_parameters(rank, n, k):
        what = "the budget" if rank is None else f"rank {rank}"
        raise SkipLayer(f"stays dense: {what} would not save parameters (r (N + K) >= N K for [{n}, {k}] at r >= "
                        f"{lr.break_even_rank(n, k) + 1})")
    f = lr.factorize(w, rank, config.method, **stats)
    error = float(lr.discarded_energy(f.singular_values)[rank])
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Conv2d):
        new = LowRankConv2d.from_matrices(module, f.up, f.down)
        left = ["conv factors stay float"] if config.factors is not None else []
    else:
        dtype = module.weight.dtype
        new = LowRankLinear.from_factors(f.up.to(dtype), f.down.to(dtype), bias, dtype=dtype)
        left = new.quantize_factors(config.factors) if config.factors is not None else []
    allocated = " allocated" if layer_allocation() is not None else ""
    words = (f"rank {rank}{allocated} of {min(n, k)}, {100 * lr.kept_fraction(rank, n, k):.1f}% of the parameters, "
             f"{config.method} relative error {error:.4f}")
    describe_layer(words + "".join(f" ({why}: float)" for why in left))
    return new


def low_rank_layer(module: nn.Module, config: LowRankConfig, **stats) -> nn.Module:
    """Factorize one nn.Linear / nn.Conv2d with `config`: the shared skip rules (SkipLayer, a ValueError,
    with the reason), then the handler. stats: mean_abs=[K] for asvd, hessian=[K, K] for svd-llm."""
    handler = handler_for(config, "low_rank_layer")
    check_layer(module, config)
    return handler(module, config, **stats)


def _not_a_factor(model: nn.Module, filter_fn):
    """filter_fn, minus the layers inside a compressed module (the factors of an earlier low_rank_)."""
    inside = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, CompressedModule) and name)

    def accept(module, name):
        return not name.startswith(inside) and (filter_fn is None or filter_fn(module, name))

    return accept


def allocate_ranks(model: nn.Module, config: LowRankConfig, filter_fn=None, calibration=None, device=None,
                   progress: bool = False) -> dict[str, Optional[int]]:
    """{layer name: rank, or None for dense} that low_rank_ uses for params= with allocation="sensitivity"
    ({} otherwise): the layers' spectra on the float model (with the method's calibration statistics; a
    layer no data reaches uses its plain SVD spectrum), then quant.low_rank.allocate_ranks."""
    if config.params is None or config.allocation != "sensitivity":
        return {}
    targets = {name: m for name, m in candidate_layers(model, filter_fn, layer_types(config)).items()
               if skip_reason(m, config) is None}
    spectra: dict[str, torch.Tensor] = {}
    if config.needs_calibration and targets:
        def keep_spectra(block):
            for name, layer in block.layers.items():
                stats = {key: _one(value) for key, value in block.results(name).items()}
                spectra[name] = lr.spectrum(_matrix(layer), config.method, mean_abs=stats.get("mean_abs"),
                                            gram=stats.get("hessian"), alpha=config.alpha, damp=config.damp)

        run_calibration(model, targets, calibration, config.collectors(), keep_spectra, device=device,
                        progress=progress, fn="low_rank_", desc="low_rank_ (spectra)")
    for name in tqdm([n for n in targets if n not in spectra], desc="low_rank_ (spectra)", unit="layer",
                     disable=not progress or len(targets) < 8):
        spectra[name] = lr.spectrum(_matrix(targets[name]), "svd")
    names = list(targets)
    shapes = [tuple(_matrix(targets[n]).shape) for n in names]
    try:
        ranks = lr.allocate_ranks([lr.discarded_energy(spectra[n]) for n in names], shapes, config.params)
    except ValueError as exc:
        raise ValueError(f"low_rank_: {exc}") from None
    return dict(zip(names, ranks))


@torch.no_grad()
def low_rank_(
    model: nn.Module,
    config: LowRankConfig,
    calibration: Optional[Iterable] = None,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    progress: bool = True,
    device: Optional[torch.device | str] = None,
) -> CompressionReport:
    """Factorize the nn.Linear (and, with config.conv, nn.Conv2d) layers of `model` that
    `filter_fn(module, name)` accepts (all, by default) into LowRankLinear / LowRankConv2d, in place.
    Returns a CompressionReport: per layer its rank, kept parameters and relative error (for svd-llm,
    the relative output error on the calibration data); layers left dense with the reason.

    calibration: batches of model inputs (model(*batch) for a tuple/list, model(**batch) for a mapping,
      model(batch) otherwise); required by method="asvd" / "svd-llm". Every row counts, padding included.
    device: where calibrated passes run each block; default: where the block is."""
    fn = "low_rank_"
    check_config_object(config, fn)
    if not isinstance(config, LowRankConfig):
        raise TypeError(f"{fn}: config must be a LowRankConfig, got {type(config).__name__}")
    if config.needs_calibration and calibration is None:
        raise ValueError(f"{fn}: {config.describe()} needs calibration data: pass calibration=<iterable of model "
                         "inputs> (slimkernels.compress.calibration_text() gives English sentences to tokenize)")
    if calibration is not None and not isinstance(calibration, (list, tuple)):
        calibration = list(calibration)  # read twice when a pre-pass allocates the ranks
    filter_fn = _not_a_factor(model, filter_fn)
    too_small = {name: reason for name, m in candidate_layers(model, filter_fn, layer_types(config)).items()
                 if (reason := skip_reason(m, config)) is not None and reason.startswith("rank=")}
    if too_small:
        name, reason = next(iter(too_small.items()))
        raise ValueError(f"{fn}: {reason} (layer {name!r}; {len(too_small)} layers in all): rank must be in "
                         "[1, min(N, K)] of every selected layer (filter_fn, or a fractional rank=)")
    by_name = allocate_ranks(model, config, filter_fn, calibration, device, progress)
    ranks = {model.get_submodule(name): r for name, r in by_name.items()} if by_name else None
    report = run_pass(model, config, fn, filter_fn=filter_fn, progress=progress, calibration=calibration,
                      device=device, allocation=ranks)
    on_model_compressed(model, config=None, report=report)
    return report
