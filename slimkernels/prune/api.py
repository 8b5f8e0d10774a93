"""prune_: structured pruning in one call. Find the coupled groups (graph.build_groups), score their units
(importance), choose the units to remove per group or across groups, remove them all at once
(shrink.remove_many: groups may share a consumer).

    report = slimkernels.prune_(model, StructuredPruningConfig(0.5, importance="l2"), example_inputs=x)

The result is a plain torch model with smaller nn.Conv2d / nn.Linear / norm layers (no mask, no hook, no
slimkernels op); slimkernels.save records the new shapes so slimkernels.load rebuilds it from the
original architecture.
"""
from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..compress.passes import user_stacklevel
from ..compress.report import CompressionReport, LayerRecord, module_bytes
from .group import Group
from .importance import CRITERIA, ActivationImportance, Importance, TaylorImportance, make_importance

__all__ = ["StructuredPruningConfig", "prune_", "SCOPES", "UNITS"]

SCOPES = ("layer", "global")
UNITS = ("channel", "head", None)


@dataclass(frozen=True)
class StructuredPruningConfig:
    """What prune_ removes.

    ratio: the fraction of units removed, in [0, 1): of each group (scope="layer": round(ratio * size)
      lowest-scoring units of every group), or of all the selected groups' units together
      (scope="global": the round(ratio * total) lowest normalized scores across groups, never taking a
      group below min_keep).
    importance: a criterion name (importance.CRITERIA: "l1", "l2", "bn_scale", "taylor", "apoz",
      "mean_activation", "random") or an Importance object (e.g. a TaylorImportance that accumulated
      gradients in the user's training loop).
    unit: prune only groups of "channel"s (conv filters, linear neurons) or of attention "head"s; None: both.
    protect: module names or fnmatch patterns ("classifier", "features.0.*") whose widths must not change:
      the groups touching them are left as they are. Groups whose units reach a model output are never
      pruned anyway (the graph does not return them).
    min_keep: the fewest units any group keeps (a group may ask for more: Group.min_keep).
    seed: of the "random" criterion.
    approximate: also prune the groups whose units pass through a normalization or reduction over them
      (a transformer's hidden size through its LayerNorms): the outputs then change beyond the removed
      units' own contribution (graph.build_groups(approximate=True); their report lines say so).
    """

    ratio: float
    importance: Union[str, Importance] = "l2"
    scope: str = "layer"
    unit: Optional[str] = None
    protect: tuple = ()
    min_keep: int = 1
    seed: int = 0
    approximate: bool = False

    def __post_init__(self):
        name = "StructuredPruningConfig"
        r = self.ratio
        if not isinstance(r, Real) or isinstance(r, bool) or not 0 <= r < 1:
            raise ValueError(f"{name}.ratio must be a number in [0, 1) (the fraction of units removed), got {r!r}")
        if not isinstance(self.importance, Importance) and self.importance not in CRITERIA:
            raise ValueError(f"{name}.importance must be one of {CRITERIA} or an Importance object, got {self.importance!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"{name}.scope must be one of {SCOPES}, got {self.scope!r}")
        if self.unit not in UNITS:
            raise ValueError(f"{name}.unit must be one of {UNITS} (None: both), got {self.unit!r}")
        protect = (self.protect,) if isinstance(self.protect, str) else self.protect
        if not isinstance(protect, (tuple, list)) or not all(isinstance(p, str) for p in protect):
            raise ValueError(f"{name}.protect must be module names or fnmatch patterns (strings), got {self.protect!r}")
        object.__setattr__(self, "protect", tuple(protect))
        if not isinstance(self.min_keep, Integral) or isinstance(self.min_keep, bool) or self.min_keep < 1:
            raise ValueError(f"{name}.min_keep must be an integer >= 1, got {self.min_keep!r}")
        if not isinstance(self.seed, Integral) or isinstance(self.seed, bool):
            raise ValueError(f"{name}.seed must be an integer, got {self.seed!r}")
        if not isinstance(self.approximate, bool):
            raise ValueError(f"{name}.approximate must be True or False, got {self.approximate!r}")

    @property
    def criterion_name(self) -> str:
        return self.importance if isinstance(self.importance, str) else self.importance.name

    def describe(self) -> str:
        return f"{self.criterion_name}, ratio {self.ratio:g}, {self.scope} scope"


def _protected_by(group: Group, patterns: tuple) -> Optional[str]:
    """The first protect pattern a module of the group matches, or None."""
    names = [group.root, *group.modules(), *group.counters]
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(n, pattern) for n in names if n):
            return pattern
    return None


def _floor(group: Group, config: StructuredPruningConfig) -> int:
    return max(config.min_keep, group.min_keep)


def _layer_counts(groups: list[Group], config: StructuredPruningConfig) -> list[int]:
    """Units removed from each group with scope="layer"."""
    counts = []
    for g in groups:
        remove = round(config.ratio * g.size)
        if remove >= g.size:
            raise ValueError(f"prune_: ratio {config.ratio:g} would remove all {g.size} {g.unit}s of {g.root!r} (a layer "
                             f"with zero {g.unit}s); lower the ratio or protect it")
        counts.append(max(0, min(remove, g.size - _floor(g, config))))
    return counts


def _global_selection(groups: list[Group], scores: list[torch.Tensor], config: StructuredPruningConfig) -> list[torch.Tensor]:
    """Units removed from each group with scope="global": the lowest scores over all groups, each group
    keeping at least its floor."""
    total = sum(g.size for g in groups)
    target = round(config.ratio * total)
    room = [g.size - _floor(g, config) for g in groups]
    if target > sum(max(0, r) for r in room):
        raise ValueError(f"prune_: ratio {config.ratio:g} asks to remove {target} of {total} units, but only "
                         f"{sum(max(0, r) for r in room)} can go without leaving a group below min_keep={config.min_keep} "
                         "(or with zero channels); lower the ratio")
    flat = torch.cat([s / s.mean() if s.mean() > 0 else s for s in scores])
    owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
    unit = torch.cat([torch.arange(g.size) for g in groups])
    chosen: list[list[int]] = [[] for _ in groups]
    taken = 0
    for pos in torch.argsort(flat, stable=True).tolist():
        if taken == target:
            break
        i = owner[pos].item()
        if len(chosen[i]) < room[i]:
            chosen[i].append(unit[pos].item())
            taken += 1
    return [torch.tensor(sorted(c), dtype=torch.long) for c in chosen]


def _accumulate_taylor(criterion: TaylorImportance, model: nn.Module, calibration: Iterable, loss_fn: Callable,
                       progress: bool) -> None:
    """criterion.accumulate over loss_fn(model, batch).backward() for each batch (eval mode); the model's
    own .grad tensors are put back afterwards."""
    params = list(model.parameters())
    saved = [p.grad for p in params]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for batch in tqdm(calibration, desc="taylor gradients", unit="batch", disable=not progress):
                for p in params:
                    p.grad = None
                loss = loss_fn(model, batch)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError(f"prune_: loss_fn(model, batch) must return a scalar loss tensor, got "
                                    f"{type(loss).__name__ if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}")
                loss.backward()
                criterion.accumulate(model)
    finally:
        for p, g in zip(params, saved):
            p.grad = g
        model.train(was_training)


def _criterion(config: StructuredPruningConfig, model: nn.Module, groups: list[Group], calibration, loss_fn,
               progress: bool) -> Importance:
    """The config's Importance, with the data it needs gathered."""
    fn = "prune_"
    criterion = make_importance(config.importance, config.seed) if isinstance(config.importance, str) else config.importance
    if isinstance(criterion, ActivationImportance):
        if calibration is not None:
            criterion.collect(model, groups, calibration, progress)
        elif isinstance(config.importance, str):
            raise ValueError(f"{fn}: importance {criterion.name!r} needs calibration data: pass calibration=<iterable of "
                             "model inputs>")
    if isinstance(criterion, TaylorImportance):
        if calibration is not None and loss_fn is not None:
            _accumulate_taylor(criterion, model, calibration, loss_fn, progress)
        elif criterion.batches == 0:
            raise ValueError(f"{fn}: importance 'taylor' needs gradients: pass calibration=<batches> and "
                             "loss_fn=<fn(model, batch) -> loss>, or a TaylorImportance whose accumulate(model) ran after "
                             "each backward of your training loop")
    return criterion


def _group_bytes(model: nn.Module, group: Group) -> int:
    return sum(module_bytes(model.get_submodule(name)) for name in group.modules())


def prune_(
    model: nn.Module,
    config: StructuredPruningConfig,
    example_inputs: Any,
    *,
    calibration: Optional[Iterable] = None,
    loss_fn: Optional[Callable[[nn.Module, Any], torch.Tensor]] = None,
    filter_fn: Optional[Callable[[Group], bool]] = None,
    progress: bool = True,
) -> CompressionReport:
    """Remove config.ratio of the units of `model`'s coupled groups, in place; returns a CompressionReport
    with one line per group (its root module, kept/total units, the criterion).

    example_inputs: what the model is traced with (a tensor, or a tuple of positional inputs).
    calibration: batches for the data-driven criteria. "apoz"/"mean_activation": model inputs
      (model(*batch) for a tuple/list, model(**batch) for a mapping, model(batch) otherwise).
      "taylor": anything loss_fn takes.
    loss_fn(model, batch) -> scalar loss: for "taylor" (e.g. lambda m, b: F.cross_entropy(m(b[0]), b[1])).
    filter_fn(group) -> bool: prune only the groups it accepts (e.g. lambda g: fnmatch(g.root, "*intermediate.dense")).
    A model the tracer cannot follow raises the tracer's error; nothing is changed then."""
    from .graph import build_groups
    from .shrink import remove_many

    fn = "prune_"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, StructuredPruningConfig):
        raise TypeError(f"{fn}: config must be a StructuredPruningConfig, got {type(config).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"{fn}: loss_fn must be a callable fn(model, batch) -> loss, got {type(loss_fn).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"{fn}: filter_fn must be a callable fn(group) -> bool, got {type(filter_fn).__name__}")
    if calibration is not None and not isinstance(calibration, (list, tuple)):
        calibration = list(calibration)

    report = CompressionReport(method=f"StructuredPruningConfig ({config.describe()})", model_bytes_before=module_bytes(model))
    selected: list[Group] = []
    for group in build_groups(model, example_inputs, approximate=config.approximate):
        if config.unit is not None and group.unit != config.unit:
            continue
        if filter_fn is not None and not filter_fn(group):
            continue
        pattern = _protected_by(group, config.protect)
        if pattern is not None:
            size = _group_bytes(model, group)
            report.layers.append(LayerRecord(group.root, group.unit, "skipped", f"protected ({pattern!r})", size, size))
            continue
        selected.append(group)
    if not selected:
        report.note = "nothing pruned: no prunable group " + ("is left unprotected" if report.layers else
                                                               "passed the unit / filter_fn selection")
        report.model_bytes_after = report.model_bytes_before
        warnings.warn(f"{fn}: {report.note}", stacklevel=user_stacklevel())
        return report

    criterion = _criterion(config, model, selected, calibration, loss_fn, progress)
    scores = [criterion(g) for g in tqdm(selected, desc=f"{fn} scores", unit="group", disable=not progress)]
    if config.scope == "layer":
        drops = [torch.argsort(s, stable=True)[:count].sort().values
                 for s, count in zip(scores, _layer_counts(selected, config))]
    else:
        drops = _global_selection(selected, scores, config)

    # All groups at once: groups may share a member (a consumer of two concatenated producers), and
    # removing one group at a time would make the others stale.
    before = [_group_bytes(model, g) for g in selected]
    kept = [g.size - units.numel() for g, units in zip(selected, drops)]
    remove_many(model, [(g, units) for g, units in zip(selected, drops) if units.numel()])
    for group, size, units, bytes_before in zip(selected, kept, drops, before):
        total = size + units.numel()
        detail = f"{size}/{total} {group.unit}s kept ({criterion.name})" + (", approximate" if group.note else "")
        report.layers.append(LayerRecord(group.root, group.unit, "converted", detail, bytes_before,
                                         _group_bytes(model, group)))
    report.model_bytes_after = module_bytes(model)
    return report
