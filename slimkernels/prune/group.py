"""The data a structured-pruning pass works on: groups of coupled channels.

A `Group` is one set of channels that must be removed together: the output channels of a layer and
every place its output tensor flows to (the batchnorm entries, the input channels of the consumers,
the other branches of a residual add, an offset range of a concatenation, the features a flatten
makes of each channel, the heads of an attention block). Each place is a `Member`: one tensor of one
module, one of its dims, and `index`, a LongTensor [group.size, per_unit] saying which entries of that
dim belong to each prunable unit of the group (a channel, or a whole head: per_unit = head_dim times
what a flatten expands each channel into).

`graph.build_groups` finds the groups from a trace of the model; `shrink.remove` removes the units of a
group from every member (smaller plain modules); `importance` scores the units. Keeping these three
apart is what lets a criterion or a schedule be added without touching the tracer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn


@dataclass
class Member:
    """One tensor entry range of one module that a group's units map to.

    role: "out"  the producer's output side (conv/linear weight dim 0, its bias, norm weight/bias/running
                 stats, embedding columns): what the unit *is*;
          "in"   a consumer's input side (conv/linear weight dim 1 of a later layer): what reads the unit.
    param: the attribute holding the tensor ("weight", "bias", "running_mean", ...).
    """

    module_name: str
    module: nn.Module
    param: str
    dim: int
    index: torch.Tensor  # LongTensor [group.size, per_unit]
    role: str  # "out" | "in"
    # The length of `dim` when the group was built (0: unknown). shrink.remove checks it, so a group made
    # stale by another group's removal (a shared consumer) is refused instead of cutting wrong entries.
    extent: int = 0

    def entries(self, units: torch.Tensor) -> torch.Tensor:
        """Sorted indices along `dim` covered by the given units."""
        return self.index[units].flatten().sort().values


@dataclass
class Group:
    """Coupled units, removed together. `size` units; `unit` names what one is ("channel", "head")."""

    members: list[Member]
    size: int
    unit: str = "channel"
    root: str = ""  # the module whose output channels these are (for reports and protection)
    # Modules whose attributes count units (heads) and must be updated when units go:
    # {module_name: {attribute: units_per_value}}, e.g. {"encoder.layer.0.attention.self": {"num_attention_heads": 1}}
    counters: dict = field(default_factory=dict)
    min_keep: int = 1
    note: Optional[str] = None

    def modules(self) -> list[str]:
        return sorted({m.module_name for m in self.members})

    def outputs(self) -> list[Member]:
        return [m for m in self.members if m.role == "out"]

    def inputs(self) -> list[Member]:
        return [m for m in self.members if m.role == "in"]
