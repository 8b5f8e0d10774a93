"""prune_ and StructuredPruningConfig: validation, unit selection per layer and globally, and whole
models (small CNN/MLP; torchvision ResNet-18 and tiny Hugging Face BERT when installed)."""
import fnmatch

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkernels
from slimkernels.prune import (
    CRITERIA, Group, Member, StructuredPruningConfig, TaylorImportance, count_macs, count_params, prune_,
)
from slimkernels.prune.api import _global_selection, _layer_counts


# ---- the config -------------------------------------------------------------------------------------
def test_config_is_frozen_and_validated():
    config = StructuredPruningConfig(0.25, importance="l1", scope="global", protect="stem", min_keep=2)
    assert config.protect == ("stem",) and config.describe() == "l1, ratio 0.25, global scope"
    with pytest.raises(Exception):
        config.ratio = 0.5
    assert StructuredPruningConfig(0.5, importance=TaylorImportance()).criterion_name == "taylor"
    assert slimkernels.StructuredPruningConfig is StructuredPruningConfig and slimkernels.prune_ is prune_


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "0.5", None, True])
def test_config_rejects_ratios_outside_0_1(ratio):
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)"):
        StructuredPruningConfig(ratio)


@pytest.mark.parametrize("kwargs, match", [
    ({"importance": "l3"}, r"importance must be one of \('l1', 'l2', 'bn_scale', 'taylor', 'apoz', 'mean_activation', 'random'\)"),
    ({"scope": "model"}, "scope must be one of"),
    ({"unit": "neuron"}, "unit must be one of"),
    ({"protect": [1, 2]}, "protect must be module names"),
    ({"min_keep": 0}, "min_keep must be an integer >= 1"),
    ({"min_keep": 1.5}, "min_keep must be an integer >= 1"),
])
def test_config_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuredPruningConfig(0.5, **kwargs)


# ---- choosing units ---------------------------------------------------------------------------------
def toy_group(size: int, root: str, min_keep: int = 1) -> Group:
    lin = nn.Linear(2, size)
    return Group([Member(root, lin, "weight", 0, torch.arange(size)[:, None], "out")], size=size, root=root,
                 min_keep=min_keep)


def test_layer_counts_round_clamp_and_refuse_zero():
    groups = [toy_group(10, "a"), toy_group(3, "b"), toy_group(4, "c", min_keep=3)]
    assert _layer_counts(groups, StructuredPruningConfig(0.5)) == [5, 2, 1]
    assert _layer_counts(groups, StructuredPruningConfig(0.0)) == [0, 0, 0]
    assert _layer_counts(groups, StructuredPruningConfig(0.5, min_keep=8)) == [2, 0, 0]
    with pytest.raises(ValueError, match="ratio 0.9 would remove all 3 channels of 'b'.*zero channels"):
        _layer_counts(groups, StructuredPruningConfig(0.9))


def test_global_selection_takes_the_lowest_normalized_scores():
    groups = [toy_group(4, "a"), toy_group(4, "b")]
    scores = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 10.0, 10.0, 10.0]) * torch.tensor([0.1, 1.3, 1.3, 1.3])]
    # normalized: a -> [0.4, 0.8, 1.2, 1.6], b -> [0.1, 1.3, 1.3, 1.3]: the 3 lowest are b0, a0, a1
    chosen = _global_selection(groups, scores, StructuredPruningConfig(3 / 8, scope="global"))
    assert [c.tolist() for c in chosen] == [[0, 1], [0]]


def test_global_selection_respects_min_keep_and_says_when_it_cannot():
    groups = [toy_group(4, "a"), toy_group(6, "b")]
    scores = [torch.tensor([0.1, 0.1, 0.1, 4.0]), torch.tensor([1.0, 1.1, 1.2, 1.3, 1.4, 1.5])]
    chosen = _global_selection(groups, scores, StructuredPruningConfig(0.5, scope="global", min_keep=2))
    assert [c.tolist() for c in chosen] == [[0, 1], [0, 1, 2]]  # a2 is low too, but a keeps 2
    with pytest.raises(ValueError, match="asks to remove 8 of 10 units, but only 6 can go"):
        _global_selection(groups, scores, StructuredPruningConfig(0.8, scope="global", min_keep=2))


# ---- MACs -------------------------------------------------------------------------------------------
def test_count_macs_by_the_formulas_and_no_hooks_left():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.Conv2d(8, 6, (1, 3), stride=(1, 2)), nn.Flatten(), nn.Linear(6 * 7 * 4, 5)).train()
    conv1 = 8 * 7 * 9 * 3 * 9
    depthwise = 8 * 7 * 9 * 1 * 9
    conv3 = 6 * 7 * 4 * 8 * 3  # 9 columns, kernel 3, stride 2 -> 4
    linear = 6 * 7 * 4 * 5
    assert count_macs(model, torch.randn(1, 3, 7, 9)) == conv1 + depthwise + conv3 + linear
    assert count_macs(model, (torch.randn(3, 3, 7, 9),)) == 3 * (conv1 + depthwise + conv3 + linear)
    assert model.training and not any(m._forward_hooks for m in model.modules())
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def test_count_macs_of_linear_rows():
    model = nn.Sequential(nn.Linear(10, 4), nn.GELU(), nn.Linear(4, 3))
    assert count_macs(model, torch.randn(2, 5, 10)) == 10 * (10 * 4 + 4 * 3)
    with pytest.raises(TypeError, match="count_macs: model must be an nn.Module"):
        count_macs(lambda x: x, torch.randn(1))
