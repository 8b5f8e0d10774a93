"""The skip rules every pass shares (slimkernels.compress.skip): quantize_ and prepare_qat_ leave the same
layers in float, for the same recorded reasons."""
from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from slimkernels import FakeQuantLinear, Int4WeightOnlyConfig, Int8DynamicConfig, QuantLinear, prepare_qat_, quantize_
from slimkernels.compress import SkipLayer, candidate_layers, check_layer, quantize_layer, skip_reason

CONFIG = Int4WeightOnlyConfig(group_size=32, min_features=8)
REASONS = {
    "small": "4 features < min_features=8",
    "meta": "weight is on the meta device (no values to compress)",
    "nan": "weight holds NaN or Inf",
    "inf": "weight holds NaN or Inf",
    "odd": "in_features=48 is not a multiple of group_size=32",
}


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.good = nn.Linear(64, 64)
        self.small = nn.Linear(64, 4)
        self.meta = nn.Linear(64, 64, device="meta")
        self.nan = nn.Linear(64, 64)
        self.inf = nn.Linear(64, 64)
        self.odd = nn.Linear(48, 64)
        self.conv = nn.Conv1d(4, 4, 1)  # never a candidate
        with torch.no_grad():
            self.nan.weight[3, 5] = float("nan")
            self.inf.weight[0, 0] = -float("inf")


def test_each_rule_with_its_reason():
    model = Mixed()
    for name, reason in REASONS.items():
        assert skip_reason(getattr(model, name), CONFIG) == reason
        with pytest.raises(SkipLayer, match=re.escape(reason)):
            check_layer(getattr(model, name), CONFIG)
    assert skip_reason(model.good, CONFIG) is None
    assert skip_reason(model.conv, CONFIG) == "Conv1d is not an nn.Linear"
    # the group size is Int4's own rule (config.skip_reason); int8 takes the layer
    assert skip_reason(model.odd, Int8DynamicConfig()) is None
    assert CONFIG.skip_reason(model.odd) == REASONS["odd"] and Int8DynamicConfig().skip_reason(model.odd) is None
    assert skip_reason(model.odd, Int4WeightOnlyConfig(group_size=-1)) is None


def test_quantize_layer_raises_skip_layer_a_value_error():
    model = Mixed()
    with pytest.raises(ValueError, match="weight holds NaN or Inf"):
        quantize_layer(model.nan, CONFIG)
    with pytest.raises(SkipLayer, match="Conv1d is not an nn.Linear"):
        quantize_layer(model.conv, CONFIG)
    assert isinstance(quantize_layer(model.good, CONFIG), QuantLinear)


def test_quantize_and_prepare_qat_skip_the_same_layers_for_the_same_reasons():
    with pytest.warns(UserWarning) as quantize_warnings:
        report = quantize_(Mixed(), CONFIG, progress=False)
    assert {r.name: r.detail for r in report.skipped} == REASONS
    assert [r.name for r in report.converted] == ["good"]
    assert sorted(str(w.message) for w in quantize_warnings) == sorted(
        f"quantize_: left {name} in float: {why}" for name, why in REASONS.items())

    model = Mixed()
    with pytest.warns(UserWarning) as qat_warnings:
        prepare_qat_(model, CONFIG)
    assert sorted(str(w.message) for w in qat_warnings) == sorted(
        f"prepare_qat_: left {name} in float: {why}" for name, why in REASONS.items())
    assert isinstance(model.good, FakeQuantLinear)
    assert all(type(getattr(model, name)) is nn.Linear for name in REASONS)
    assert isinstance(model.conv, nn.Conv1d)


def test_prepare_qat_without_skips_is_silent():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_qat_(model, Int4WeightOnlyConfig(group_size=32))
    assert isinstance(model[0], FakeQuantLinear) and isinstance(model[2], FakeQuantLinear)


def test_candidates_are_plain_linears_the_filter_accepts():
    model = nn.Sequential(nn.Linear(8, 8), FakeQuantLinear(8, 8, config=Int8DynamicConfig()), nn.Linear(8, 8), nn.ReLU())
    assert list(candidate_layers(model)) == ["0", "2"]
    assert list(candidate_layers(model, lambda m, name: name != "0")) == ["2"]
