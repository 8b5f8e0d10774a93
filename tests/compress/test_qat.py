"""prepare_qat_ / convert_: fake quantization with a straight-through estimator, then conversion to
QuantLinear modules whose outputs match the fake-quantized ones."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import (CodebookConfig, FakeQuantLinear, Int4WeightOnlyConfig, Int8DynamicConfig,
                         Int8WeightOnlyConfig, QuantLinear, convert_, prepare_qat_)

CONFIGS = [Int8DynamicConfig(), Int8WeightOnlyConfig(), Int4WeightOnlyConfig(group_size=32),
           Int4WeightOnlyConfig(group_size=-1, symmetric=True), CodebookConfig(bits=4), CodebookConfig(bits=2, per="layer")]
IDS = ["w8a8", "w8a16", "int4-g32", "int4-pc-sym", "kmeans4", "kmeans2-layer"]


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_convert_matches_fake_quantized_outputs(config):
    model = prepare_qat_(_mlp(), config)
    assert isinstance(model[0], FakeQuantLinear) and config.describe() in repr(model)
    x = torch.randn(8, 64)
    with torch.no_grad():
        fake = model(x)
    report = convert_(model)
    assert len(report.converted) == 2 and all(isinstance(model[i], QuantLinear) for i in (0, 2))
    torch.testing.assert_close(model(x), fake, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_training_through_fake_quant_lowers_the_loss(config):
    torch.manual_seed(0)
    teacher = _mlp(seed=1)
    model = prepare_qat_(_mlp(), config)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    x = torch.randn(256, 64)
    target = teacher(x).detach()
    losses = []
    for _ in range(30):
        loss = (model(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)  # STE passes gradients
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    with torch.no_grad():
        fake = model(x)
    convert_(model)
    torch.testing.assert_close(model(x), fake, rtol=1e-4, atol=1e-4)


def test_shares_parameters_and_bad_inputs():
    mlp = _mlp()
    weight = mlp[0].weight
    prepare_qat_(mlp, Int4WeightOnlyConfig(group_size=32))
    assert mlp[0].weight is weight
    with pytest.raises(ValueError, match="round-to-nearest"):
        prepare_qat_(_mlp(), Int4WeightOnlyConfig(method="gptq"))
    with pytest.raises(TypeError, match=r"did you mean Int4WeightOnlyConfig\(\)\?"):
        prepare_qat_(_mlp(), "w4a16")
    with pytest.raises(ValueError, match="call prepare_qat_ first"):
        convert_(_mlp())
