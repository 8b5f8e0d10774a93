"""Physically remove the units of a group: smaller tensors in plain torch modules, size attributes fixed.

`keep_entries` narrows one tensor of one module (the only place that does); `remove` / `remove_many`
take units out of groups from `graph.build_groups`; `zero_units` zeroes units in place, which makes a
model whose outputs `remove` must then keep exactly.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .group import Group

__all__ = ["keep_entries", "remove", "remove_many", "zero_units"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM_FEATURES = (nn.modules.batchnorm._NormBase,)  # BatchNorm*, InstanceNorm*, SyncBatchNorm


def _fix_sizes(module: nn.Module, param: str, dim: int, new: int) -> None:
    """Update the attributes that describe the width of `module` after `param` got `new` entries
    along `dim`. Idempotent: attributes are set from the new size, so each tensor may be narrowed
    in any order."""
    if isinstance(module, _CONV_T):
        if param == "weight" and dim == 0:
            module.in_channels = new
        elif param == "weight" and dim == 1:
            module.out_channels = new * module.groups
    elif isinstance(module, _CONV):
        if param == "weight" and dim == 0 and new != module.out_channels:
            if module.groups > 1:  # whole conv groups go: channels per group stay
                per_group = module.out_channels // module.groups
                if new % per_group:
                    raise ValueError(f"keep_entries: {type(module).__name__} with groups={module.groups} keeps "
                                     f"{per_group} output channels per group; {new} is not a multiple")
                module.groups = new // per_group
                module.in_channels = module.groups * module.weight.shape[1]
            module.out_channels = new
        elif param == "weight" and dim == 1:
            module.in_channels = new * module.groups
    elif isinstance(module, nn.Linear):
        if param == "weight":
            if dim == 0:
                module.out_features = new
            else:
                module.in_features = new
    elif isinstance(module, _NORM_FEATURES):
        module.num_features = new
    elif isinstance(module, nn.GroupNorm):
        if new != module.num_channels:
            per_group = module.num_channels // module.num_groups
            if new % per_group:
                raise ValueError(f"keep_entries: GroupNorm with {per_group} channels per group cannot keep {new} "
                                 "channels (not a multiple)")
            module.num_groups = new // per_group
            module.num_channels = new
    elif isinstance(module, nn.LayerNorm) or type(module).__name__ == "RMSNorm" and hasattr(module, "normalized_shape"):
        shape = list(module.normalized_shape)
        shape[dim] = new
        module.normalized_shape = tuple(shape)
    elif isinstance(module, nn.Embedding):
        if dim == 1:
            module.embedding_dim = new
        else:
            module.num_embeddings = new
    elif isinstance(module, nn.PReLU):
        module.num_parameters = new


def keep_entries(module: nn.Module, param: str, dim: int, keep: torch.Tensor) -> None:
    """Keep only the entries `keep` (sorted LongTensor of indices) of `module.<param>` along `dim`,
    in place: a parameter becomes a new nn.Parameter (requires_grad kept), a buffer a new buffer, and
    the module's size attributes follow (Conv in/out_channels and groups, Linear in/out_features,
    norm num_features / normalized_shape / num_channels and num_groups, Embedding embedding_dim,
    PReLU num_parameters)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"keep_entries: module must be an nn.Module, got {type(module).__name__}")
    tensor = getattr(module, param, None)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"keep_entries: {type(module).__name__} has no tensor named {param!r}")
    if not -tensor.dim() <= dim < tensor.dim():
        raise ValueError(f"keep_entries: dim {dim} is out of range for {param} of shape {tuple(tensor.shape)}")
    dim = dim % tensor.dim()
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    size = tensor.shape[dim]
    if keep.numel() and (keep.min() < 0 or keep.max() >= size):
        raise ValueError(f"keep_entries: indices must lie in [0, {size}) for {param} dim {dim}")
    if keep.numel() > 1 and not bool((keep[1:] > keep[:-1]).all()):
        raise ValueError("keep_entries: keep must be sorted and without repeats")
    with torch.no_grad():
        narrowed = tensor.detach().index_select(dim, keep.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, param, nn.Parameter(narrowed, requires_grad=tensor.requires_grad))
    elif param in module._buffers:
        module._buffers[param] = narrowed
    else:
        setattr(module, param, narrowed)
    _fix_sizes(module, param, dim, narrowed.shape[dim])


def _units(group: Group, units, what: str) -> torch.Tensor:
    if not isinstance(group, Group):
        raise TypeError(f"{what}: group must be a slimkernels.prune.group.Group, got {type(group).__name__}")
    units = torch.as_tensor(units, dtype=torch.long).flatten()
    if units.numel() and (units.min() < 0 or units.max() >= group.size):
        raise ValueError(f"{what}: units must lie in [0, {group.size}) for the group of {group.root!r}")
    return units.unique()


def zero_units(group: Group, units) -> None:
    """Zero the entries of `units` in every "out" member of `group` (producer rows and biases, norm
    scales, shifts and running statistics), in place: those units then contribute nothing downstream
    (through zero-preserving activations), so `remove` must leave the outputs unchanged."""
    units = _units(group, units, "zero_units")
    if not units.numel():
        return
    with torch.no_grad():
        for m in group.outputs():
            tensor = getattr(m.module, m.param)
            tensor.index_fill_(m.dim, m.entries(units).to(tensor.device), 0)


def remove_many(model: nn.Module, plan: Iterable[tuple]) -> None:
    """Remove units from several groups at once: plan = [(group, units), ...]. Groups of one model
    may share members (a consumer reading two concatenated producers, a tied weight); removing them
    one `remove` at a time makes the later ones stale, removing them together does not."""
    plan = [(g, _units(g, u, "remove")) for g, u in plan]
    drop: dict[tuple, set] = {}  # (id(module), param, dim) -> entries to remove
    where: dict[tuple, tuple] = {}
    for group, units in plan:
        if group.size - units.numel() < max(group.min_keep, 1):
            raise ValueError(f"remove: removing {units.numel()} of the {group.size} {group.unit}s of the group of "
                             f"{group.root!r} would leave fewer than {max(group.min_keep, 1)}")
        for m in group.members:
            tensor = getattr(m.module, m.param)
            if m.extent and tensor.shape[m.dim] != m.extent:
                raise ValueError(f"remove: the group of {group.root!r} is stale: {m.module_name}.{m.param} has "
                                 f"{tensor.shape[m.dim]} entries along dim {m.dim}, the group was built with "
                                 f"{m.extent} (another removal changed it); rebuild the groups with "
                                 "build_groups, or remove several groups together with remove_many")
            key = (id(m.module), m.param, m.dim)
            drop.setdefault(key, set()).update(m.entries(units).tolist())
            where[key] = (m.module, m.param, m.dim)
    replaced: dict[int, tuple] = {}  # a tensor shared by modules (tied weights) is narrowed once
    for key, entries in drop.items():
        module, param, dim = where[key]
        tensor = getattr(module, param)
        old, new = replaced.get(id(tensor), (None, None))
        if old is tensor:
            setattr(module, param, new)
            _fix_sizes(module, param, dim, new.shape[dim])
            continue
        size = tensor.shape[dim]
        keep = torch.tensor([i for i in range(size) if i not in entries], dtype=torch.long)
        if not keep.numel():
            raise ValueError(f"remove: no entries of {param} of {type(module).__name__} would be left")
        keep_entries(module, param, dim, keep)
        replaced[id(tensor)] = (tensor, getattr(module, param))  # the old tensor kept alive: ids stay unique
    for group, units in plan:
        for name, attrs in group.counters.items():
            module = model.get_submodule(name)
            for attr, per_unit in attrs.items():
                setattr(module, attr, getattr(module, attr) - per_unit * units.numel())
        _renumber(group, units, drop)


def _renumber(group: Group, units: torch.Tensor, drop: dict) -> None:
    """The group after its units went: the remaining units, indices into the narrowed tensors."""
    gone = set(units.tolist())
    keep_units = torch.tensor([u for u in range(group.size) if u not in gone], dtype=torch.long)
    for m in group.members:
        removed = torch.tensor(sorted(drop[(id(m.module), m.param, m.dim)]), dtype=torch.long)
        index = m.index[keep_units]
        m.index = index - torch.searchsorted(removed, index)  # each entry moves down past the removed ones
        if m.extent:
            m.extent -= removed.numel()
    group.size = keep_units.numel()


def remove(model: nn.Module, group: Group, units) -> None:
    """Remove `units` (indices in [0, group.size)) from every member of `group`, in place: smaller
    nn.Parameters, module size attributes and the group's head counters updated. The group itself is
    renumbered to the units that remain; other groups sharing a member with it become stale (and are
    refused), so use `remove_many` to remove from several groups of one build."""
    remove_many(model, [(group, units)])
