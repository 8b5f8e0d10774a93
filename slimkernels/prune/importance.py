"""Importance criteria: how much each unit (channel, neuron, head) of a coupled Group matters.

A criterion is an `Importance`; `importance(group)` gives a float32 tensor [group.size], higher = more
important. Scores are built the same way for every criterion:

  1. each member the criterion can read gives a score per entry along its `dim` (a weight row's norm,
     a BatchNorm scale, an input channel's activation statistic);
  2. the entries of each unit are summed (member.index [size, per_unit]) into one score per unit;
  3. each member's unit scores are divided by their mean (so a layer of large weights does not drown
     one of small weights; an all-zero member stays zero), and the group's score is the mean over its
     members.

A group's score therefore has mean 1 (unless it is all zero), which is what lets prune_'s global scope
rank units of different groups against each other.

Criteria (CRITERIA, by name in StructuredPruningConfig.importance):
  "l1", "l2"         the L1 / L2 norm of each weight entry over its other dims (conv/linear/embedding
                     weights, producers' out rows and consumers' in columns alike; biases and norm
                     layers are left out)
  "bn_scale"         |gamma| of the group's BatchNorm layers (network slimming, Liu et al. 2017; train
                     with bn_l1_penalty for sparse scales); a group without one is an error
  "taylor"           first-order Taylor, |w * dL/dw| summed over the unit's parameters and accumulated
                     over batches (Molchanov et al. 2019): TaylorImportance.accumulate(model) after each
                     backward
  "apoz"             1 - the average percentage of zeros of the unit's activation as its consumers read
                     it (network trimming, Hu et al. 2016), from calibration batches
  "mean_activation"  the mean |activation| the consumers read, from calibration batches
  "random"           a seeded random baseline
"""
from __future__ import annotations

import weakref
from numbers import Real
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..compress.calibration import _as_call
from .group import Group, Member

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "apoz", "mean_activation", "random")

__all__ = [
    "CRITERIA", "Importance", "MagnitudeImportance", "BNScaleImportance", "TaylorImportance",
    "ActivationImportance", "RandomImportance", "make_importance", "bn_l1_penalty", "unit_scores",
]


def _other_dims(t: torch.Tensor, dim: int) -> list[int]:
    return [d for d in range(t.dim()) if d != dim]


def unit_scores(member: Member, entry_scores: torch.Tensor) -> torch.Tensor:
    """Per-entry scores along member.dim -> one score per unit (the unit's entries summed)."""
    entries = member.index.max().item() + 1 if member.index.numel() else 0
    if entry_scores.dim() != 1 or entry_scores.shape[0] < entries:
        raise ValueError(f"importance: member {member.module_name}.{member.param} (dim {member.dim}) has "
                         f"{tuple(entry_scores.shape)} entry scores but its index reaches entry {entries - 1}")
    return entry_scores.to(torch.float32)[member.index].sum(1)


def _normalized(scores: torch.Tensor) -> torch.Tensor:
    mean = scores.mean()
    return scores / mean if mean > 0 else torch.zeros_like(scores)


def _group_name(group: Group) -> str:
    return repr(group.root or ", ".join(group.modules()))


class Importance:
    """Base of the criteria. A subclass gives `entry_scores(member)`: a float tensor with one score per
    entry of member.dim of the member's tensor, or None when the criterion does not read that member."""

    name = "importance"
    needs: str = ""  # words on what a group needs for this criterion (the error when no member counts)

    def entry_scores(self, member: Member) -> Optional[torch.Tensor]:
        raise NotImplementedError(type(self).__name__)

    def __call__(self, group: Group) -> torch.Tensor:
        if not isinstance(group, Group):
            raise TypeError(f"{self.name} importance: expected a Group, got {type(group).__name__}")
        parts = []
        for member in group.members:
            scores = self.entry_scores(member)
            if scores is not None:
                parts.append(_normalized(unit_scores(member, scores.detach().cpu())))
        if not parts:
            members = ", ".join(f"{m.module_name}.{m.param} ({type(m.module).__name__}, {m.role})" for m in group.members)
            raise ValueError(f"{self.name} importance: group {_group_name(group)} has nothing this criterion reads "
                             f"({self.needs}); its members: {members}")
        return torch.stack(parts).mean(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _tensor(member: Member) -> Optional[torch.Tensor]:
    t = getattr(member.module, member.param, None)
    return t if isinstance(t, torch.Tensor) else None


class MagnitudeImportance(Importance):
    """"l1" (p=1) or "l2" (p=2): the p-norm of each weight entry (a conv filter, a linear row, or a
    consumer's input column) over the weight's other dims."""

    needs = "a conv, linear or embedding weight"

    def __init__(self, p: int = 2):
        if p not in (1, 2):
            raise ValueError(f"MagnitudeImportance: p must be 1 or 2, got {p!r}")
        self.p, self.name = p, f"l{p}"

    def entry_scores(self, member: Member) -> Optional[torch.Tensor]:
        w = _tensor(member)
        if member.param != "weight" or w is None or w.dim() < 2:
            return None  # biases and norm scales: not a filter's magnitude
        return torch.linalg.vector_norm(w.detach().float(), ord=self.p, dim=_other_dims(w, member.dim))


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


class BNScaleImportance(Importance):
    """"bn_scale": |gamma| of the group's BatchNorm output members (network slimming)."""

    name = "bn_scale"
    needs = "a BatchNorm layer with a learned scale (affine=True) among its outputs; use 'l1' or 'l2' for it"

    def entry_scores(self, member: Member) -> Optional[torch.Tensor]:
        if member.role != "out" or member.param != "weight" or not _is_batchnorm(member.module):
            return None
        gamma = _tensor(member)
        return None if gamma is None else gamma.detach().float().abs()


def bn_l1_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """strength * sum |gamma| over every BatchNorm scale of `model`: the term network slimming adds to
    the training loss so that the scales of unneeded channels go to zero ("bn_scale" then prunes them).

        loss = criterion(model(x), y) + slimkernels.prune.bn_l1_penalty(model, 1e-4)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"bn_l1_penalty: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(strength, Real) or isinstance(strength, bool) or not strength >= 0:
        raise ValueError(f"bn_l1_penalty: strength must be a number >= 0, got {strength!r}")
    scales = [m.weight for m in model.modules() if _is_batchnorm(m) and m.weight is not None]
    if not scales:
        raise ValueError("bn_l1_penalty: the model has no BatchNorm layer with a learned scale (affine=True)")
    return strength * sum(gamma.abs().sum() for gamma in scales)


class TaylorImportance(Importance):
    """"taylor": first-order Taylor importance, |w * dL/dw| of every parameter entry of the unit, summed
    over the batches seen. Call `accumulate(model)` after each loss.backward() (prune_ does it itself
    from calibration batches and a loss_fn); `reset()` forgets what was accumulated (do it after the
    model was pruned: the shapes changed)."""

    name = "taylor"
    needs = "accumulated gradients of its parameters: call accumulate(model) after each loss.backward()"

    def __init__(self):
        self._sums: "weakref.WeakKeyDictionary[nn.Module, dict[str, torch.Tensor]]" = weakref.WeakKeyDictionary()
        self.batches = 0

    def reset(self) -> None:
        self._sums = weakref.WeakKeyDictionary()
        self.batches = 0

    @torch.no_grad()
    def accumulate(self, model: nn.Module) -> None:
        """Add |w * w.grad| of every parameter of `model` that has a gradient now."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"TaylorImportance.accumulate: model must be an nn.Module, got {type(model).__name__}")
        seen_grad = False
        for module_name, module in model.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if p.grad is None:
                    continue
                seen_grad = True
                score = (p.detach() * p.grad.detach()).abs().float()
                sums = self._sums.setdefault(module, {})
                if name in sums and sums[name].shape != score.shape:
                    raise ValueError(f"TaylorImportance.accumulate: {module_name}.{name} is {tuple(score.shape)} now but "
                                     f"was {tuple(sums[name].shape)} in earlier batches (the model was pruned): call "
                                     "reset() before accumulating on the pruned model")
                sums[name] = sums[name] + score if name in sums else score.clone()
        if not seen_grad:
            raise ValueError("TaylorImportance.accumulate: no parameter of the model has a gradient; call it after "
                             "loss.backward()")
        self.batches += 1

    def entry_scores(self, member: Member) -> Optional[torch.Tensor]:
        score = self._sums.get(member.module, {}).get(member.param)
        if score is None:
            return None
        current = _tensor(member)
        if current is not None and current.shape != score.shape:
            raise ValueError(f"taylor importance: {member.module_name}.{member.param} is {tuple(current.shape)} but the "
                             f"gradients were accumulated at {tuple(score.shape)}: call reset() and accumulate again")
        return score.sum(_other_dims(score, member.dim)) if score.dim() > 1 else score


def _reads_input_channels(member: Member) -> bool:
    """Whether the member's weight dim is its module's input channels, one entry per input channel/feature
    (so an activation statistic of the module's input maps onto it entry for entry)."""
    m = member.module
    if member.role != "in" or member.param != "weight" or member.dim != 1:
        return False
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and m.groups == 1


class _InputChannelStats:
    """Per input channel of one module over the calibration batches: the fraction of zeros and mean |x|
    (channel dim 1 of a conv's input, the last dim of a linear's)."""

    def __init__(self, module: nn.Module, batch_mask: list):
        self.channel_dim = 1 if isinstance(module, nn.modules.conv._ConvNd) else -1
        self.batch_mask = batch_mask  # [the current batch's [B, T] token mask, or None], shared by all hooks
        self.zeros = self.abs_sum = None
        self.count = 0

    def __call__(self, _module, args, kwargs) -> None:
        x = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if x is None or not x.is_floating_point():
            return
        mask = self.batch_mask[0]
        if mask is not None and self.channel_dim == -1 and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            x = x[mask.to(device=x.device, dtype=torch.bool)]  # padding positions are not the unit's activations
        rows = x.detach().movedim(self.channel_dim, -1).reshape(-1, x.shape[self.channel_dim]).double()
        if self.zeros is None:
            self.zeros, self.abs_sum = rows.new_zeros(rows.shape[1]), rows.new_zeros(rows.shape[1])
        self.zeros += (rows == 0).sum(0)
        self.abs_sum += rows.abs().sum(0)
        self.count += rows.shape[0]


class ActivationImportance(Importance):
    """"apoz" (score 1 - the fraction of zeros) or "mean_activation" (mean |x|) of each unit's activation
    as the group's consumers (its "in" members: linear layers and ungrouped convs) read it, from a
    calibration run: `collect(model, groups, calibration)` (prune_ calls it). For keyword batches with
    an "attention_mask" (Hugging Face), the [B, T, C] inputs of the consumers count only the real tokens."""

    KINDS = ("apoz", "mean_activation")

    def __init__(self, kind: str = "apoz"):
        if kind not in self.KINDS:
            raise ValueError(f"ActivationImportance: kind must be one of {self.KINDS}, got {kind!r}")
        self.name = kind
        self.needs = ("a linear or ungrouped conv layer reading its channels that calibration inputs reached "
                      "(collect(model, groups, calibration) first)")
        self._stats: "weakref.WeakKeyDictionary[nn.Module, torch.Tensor]" = weakref.WeakKeyDictionary()

    @torch.no_grad()
    def collect(self, model: nn.Module, groups: Sequence[Group], calibration: Iterable, progress: bool = False) -> None:
        """Run `model` on every calibration batch (model(*batch) for a tuple/list, model(**batch) for a
        mapping, model(batch) otherwise; in eval mode) with a forward pre-hook on each consumer of the
        groups, keeping the per-input-channel statistic. Hooks are removed when it returns."""
        batch_mask = [None]
        consumers = {m.module: _InputChannelStats(m.module, batch_mask) for g in groups for m in g.members
                     if _reads_input_channels(m)}
        if not consumers:
            return
        handles = [module.register_forward_pre_hook(stats, with_kwargs=True) for module, stats in consumers.items()]
        was_training = model.training
        model.eval()
        batches = 0
        try:
            for batch in tqdm(calibration, desc=f"{self.name} statistics", unit="batch", disable=not progress):
                args, kwargs = _as_call(batch)
                mask = kwargs.get("attention_mask")
                batch_mask[0] = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
                model(*args, **kwargs)
                batches += 1
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        if not batches:
            raise ValueError(f"{self.name} importance: the calibration iterable gave no batches")
        for module, stats in consumers.items():
            if stats.count:
                value = 1 - stats.zeros / stats.count if self.name == "apoz" else stats.abs_sum / stats.count
                self._stats[module] = value.float()

    def entry_scores(self, member: Member) -> Optional[torch.Tensor]:
        if not _reads_input_channels(member):
            return None
        return self._stats.get(member.module)


class RandomImportance(Importance):
    """"random": uniform random scores from a seeded generator (a baseline for the other criteria)."""

    name = "random"
    needs = ""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, group: Group) -> torch.Tensor:
        if not isinstance(group, Group):
            raise TypeError(f"random importance: expected a Group, got {type(group).__name__}")
        return torch.rand(group.size, generator=self.generator)


_FACTORIES: dict[str, Callable[[int], Importance]] = {
    "l1": lambda seed: MagnitudeImportance(1),
    "l2": lambda seed: MagnitudeImportance(2),
    "bn_scale": lambda seed: BNScaleImportance(),
    "taylor": lambda seed: TaylorImportance(),
    "apoz": lambda seed: ActivationImportance("apoz"),
    "mean_activation": lambda seed: ActivationImportance("mean_activation"),
    "random": lambda seed: RandomImportance(seed),
}


def make_importance(name: str, seed: int = 0) -> Importance:
    """The criterion called `name` (one of CRITERIA); seed is for "random"."""
    if name not in _FACTORIES:
        raise ValueError(f"importance must be one of {CRITERIA} or an Importance object, got {name!r}")
    return _FACTORIES[name](seed)
