"""Structured pruning: coupled-channel groups, importance criteria, physical removal, schedules.

    groups = build_groups(model, example_inputs)             # graph.py: what must be removed together
    report = prune_(model, StructuredPruningConfig(0.5, importance="l2"), example_inputs)   # api.py
    count_macs(model, example_inputs)                         # flops.py
    schedule = PruningSchedule(model, SparsityConfig(0.8), kind="gradual", start=0, end=1000)  # schedule.py
    ... schedule.step() after each optimizer step ...; schedule.convert()
"""
from .api import SCOPES, UNITS, StructuredPruningConfig, prune_
from .flops import count_macs, count_params
from .graph import UnsupportedOperation, build_groups
from .group import Group, Member
from .importance import (
    CRITERIA, ActivationImportance, BNScaleImportance, Importance, MagnitudeImportance, RandomImportance,
    TaylorImportance, bn_l1_penalty, make_importance,
)
from .schedule import KINDS as SCHEDULE_KINDS
from .schedule import PruningSchedule, StructuredPruningSchedule, gradual_sparsity, iterative_sparsity
from .shrink import keep_entries, remove, remove_many, zero_units

__all__ = [
    "prune_", "StructuredPruningConfig", "SCOPES", "UNITS", "Group", "Member", "build_groups", "UnsupportedOperation",
    "remove", "remove_many", "keep_entries", "zero_units", "count_macs", "count_params", "CRITERIA", "Importance",
    "MagnitudeImportance", "BNScaleImportance", "TaylorImportance", "ActivationImportance", "RandomImportance",
    "make_importance", "bn_l1_penalty", "PruningSchedule", "StructuredPruningSchedule", "SCHEDULE_KINDS",
    "gradual_sparsity", "iterative_sparsity",
]
