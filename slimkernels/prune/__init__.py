"""Structured pruning: coupled-channel groups, importance criteria, physical removal, schedules."""
from .api import SCOPES, UNITS, StructuredPruningConfig, prune_
from .flops import count_macs, count_params
from .group import Group, Member
from .importance import (
    CRITERIA, ActivationImportance, BNScaleImportance, Importance, MagnitudeImportance, RandomImportance,
    TaylorImportance, bn_l1_penalty, make_importance,
)

__all__ = [
    "prune_", "StructuredPruningConfig", "SCOPES", "UNITS", "Group", "Member", "count_macs", "count_params",
    "CRITERIA", "Importance", "MagnitudeImportance", "BNScaleImportance", "TaylorImportance", "ActivationImportance",
    "RandomImportance", "make_importance", "bn_l1_penalty",
]
