"""Which layers a pass leaves as they are, and why: the rules every pass shares, written once.

A pass (quantize_, prepare_qat_, sparsify_, and the coming prune_ / low_rank_) considers the layers
`candidate_layers` returns (exactly nn.Linear, or exactly one of config.layer_types when the config has
them: sparsify_'s takes nn.Conv2d too; accepted by filter_fn) and leaves one as it is, with the reason
recorded, when `skip_reason(module, config)` gives one:

  1. it is not of one of those types;
  2. it has fewer input or output features than config.min_features (a conv: Cin/groups * kh * kw
     and Cout);
  3. its weight is on the meta device (no values to work on);
  4. its weight holds NaN or Inf;
  5. the config's own rule, config.skip_reason(module) (e.g. a group size that does not divide
     in_features: group_size_reason below).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


class SkipLayer(ValueError):
    """A layer a pass leaves as it is; the message is the recorded reason. Raised by skip checks and
    handlers, caught by the passes (a ValueError for callers that convert one layer by hand)."""


def group_size_reason(in_features: int, group_size: int) -> Optional[str]:
    """Why groups of `group_size` input features (-1: one group per row) do not fit, or None."""
    if group_size != -1 and in_features % group_size:
        return f"in_features={in_features} is not a multiple of group_size={group_size}"
    return None


def layer_types(config) -> tuple[type, ...]:
    """The layer types `config`'s pass converts: config.layer_types, or (nn.Linear,)."""
    return tuple(getattr(config, "layer_types", None) or (nn.Linear,))


def layer_features(module: nn.Module) -> tuple[int, int]:
    """(input features, output features) of a linear layer, or of a conv's weight matrix
    (Cin/groups * kh * kw, Cout)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return module.in_channels // module.groups * kh * kw, module.out_channels
    return module.in_features, module.out_features


def skip_reason(module: nn.Module, config) -> Optional[str]:
    """The reason `config`'s pass leaves `module` as it is (the rules of the module docstring), or None."""
    types = layer_types(config)
    if not isinstance(module, types):
        return f"{type(module).__name__} is not an {' or '.join('nn.' + t.__name__ for t in types)}"
    min_features = getattr(config, "min_features", 1)
    smallest = min(layer_features(module))
    if smallest < min_features:
        return f"{smallest} features < min_features={min_features}"
    if module.weight.device.type == "meta":
        return "weight is on the meta device (no values to compress)"
    if not torch.isfinite(module.weight.detach()).all():
        return "weight holds NaN or Inf"
    own = getattr(config, "skip_reason", None)
    return own(module) if own is not None else None


def check_layer(module: nn.Module, config) -> None:
    """Raise SkipLayer(reason) when skip_reason gives one."""
    reason = skip_reason(module, config)
    if reason is not None:
        raise SkipLayer(reason)


def candidate_layers(model: nn.Module, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
                     types: tuple[type, ...] = (nn.Linear,)) -> dict[str, nn.Module]:
    """name -> layer for the layers of `model` of exactly one of `types` (plain nn.Linear by default;
    subclasses, e.g. an already fake-quantized layer, are not candidates) that filter_fn(module, name)
    accepts (all, by default), in module order."""
    return {name: m for name, m in model.named_modules()
            if type(m) in types and (filter_fn is None or filter_fn(m, name))}


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def nothing_to_do_reason(model: nn.Module, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> str:
    """Why `candidate_layers(model, filter_fn)` is empty, in words for a warning and a report: the
    model is already compressed, prepared for QAT, filter_fn rejected every layer, its linear layers
    are nn.Linear subclasses, or it has none."""
    from ..nn.base import CompressedModule
    from ..nn.fake_quant_linear import FakeQuantLinear

    modules = list(model.named_modules())
    linears = [name for name, m in modules if type(m) is nn.Linear]
    compressed = [(name, m) for name, m in modules if isinstance(m, CompressedModule)]
    fake = [name for name, m in modules if isinstance(m, FakeQuantLinear)]
    subclassed = [(name, m) for name, m in modules
                  if isinstance(m, nn.Linear) and type(m) is not nn.Linear and not isinstance(m, FakeQuantLinear)]
    reasons = []
    if linears:
        reasons.append(f"filter_fn accepted none of its {len(linears)} nn.Linear layers ({_names(linears)})")
    if compressed:
        kinds: dict[str, int] = {}
        for _, m in compressed:
            summary = getattr(m, "format_summary", None)
            kind = f"{type(m).__name__} {summary()}" if callable(summary) else type(m).__name__
            kinds[kind] = kinds.get(kind, 0) + 1
        what = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
        reasons.append(f"it is already compressed ({what}){'' if linears else ' and has no nn.Linear left'}; to "
                       "compress it another way, start again from the float model")
    if fake:
        reasons.append(f"it is prepared for QAT ({len(fake)} FakeQuantLinear layers: {_names(fake)}); "
                       "call convert_(model) to turn them into QuantLinear")
    if subclassed:
        types = sorted({type(m).__name__ for _, m in subclassed})
        reasons.append(f"its {len(subclassed)} linear layers are subclasses of nn.Linear ({', '.join(types)}), "
                       "which passes leave alone (their forward may do more than a linear map)")
    if not reasons:
        reasons.append("it has no nn.Linear layers")
    return "nothing to convert: " + "; ".join(reasons)
