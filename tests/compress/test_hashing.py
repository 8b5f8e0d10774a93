"""hash_ (HashingConfig): which layers it converts, the bucket averaging (the least-squares fit of the
virtual weight to the trained one), the report, fine-tuning afterwards, and bad configs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkernels
from slimkernels.backends.hashed import hash_index, virtual_weight
from slimkernels.compress.hashing import HashingConfig, average_into_buckets, hash_, hash_layer
from slimkernels.nn import HashedLinear


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 5))


def test_buckets_are_the_sign_corrected_means():
    w = torch.randn(13, 29)
    count, seed = 50, 7
    buckets = average_into_buckets(w, count, seed)
    bucket, sign = hash_index(13, 29, seed, count)
    for b in range(count):
        members = (w * sign)[bucket == b]
        expect = members.mean() if members.numel() else torch.tensor(0.0)
        assert torch.allclose(buckets[b], expect, atol=1e-6)
    # the mean is the least-squares choice: any nudge of a bucket makes the fit worse
    err = (virtual_weight(buckets, seed, 13, 29) - w).norm()
    nudged = buckets.clone()
    nudged[3] += 0.01
    assert (virtual_weight(nudged, seed, 13, 29) - w).norm() > err


def test_hash_converts_filtered_layers_and_reports():
    model = mlp()
    x = torch.randn(8, 30)
    report = hash_(model, HashingConfig(compression=0.25, seed=3), filter_fn=lambda m, name: name != "4",
                   progress=False)
    assert isinstance(model[0], HashedLinear) and isinstance(model[2], HashedLinear) and type(model[4]) is nn.Linear
    assert model[2].num_buckets == 400 and model[0].seed == 3
    assert len(report.converted) == 2
    assert "relative weight error" in str(report)
    assert model(x).shape == (8, 5)


def test_default_config_is_one_eighth():
    model = mlp()
    slimkernels.hash_(model, progress=False)
    assert model[2].num_buckets == 200


def test_fine_tuning_recovers_the_float_outputs():
    model = mlp()
    x = torch.randn(512, 30)
    target = model(x).detach()
    hash_(model, HashingConfig(compression=0.5), progress=False)
    before = F.mse_loss(model(x), target).item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * before


def test_hash_layer_keeps_bias_and_dtype():
    lin = nn.Linear(20, 10).to(torch.bfloat16)
    layer = hash_layer(lin, HashingConfig(compression=0.3))
    assert torch.equal(layer.bias.detach(), lin.bias.detach().float())
    assert layer.weight_dtype == torch.bfloat16 and layer.num_buckets == 60


@pytest.mark.parametrize("kwargs, words", [
    ({"compression": 0}, "compression must be"), ({"compression": 1.0}, "compression must be"),
    ({"compression": "1/8"}, "compression must be"), ({"seed": -3}, "seed must be"), ({"min_features": 0}, "min_features"),
])
def test_bad_config(kwargs, words):
    with pytest.raises(ValueError, match=words):
        HashingConfig(**kwargs)


def test_bad_pass_arguments():
    with pytest.raises(TypeError, match="HashingConfig"):
        hash_(mlp(), slimkernels.SparsityConfig(), progress=False)
    with pytest.raises(TypeError, match="did you mean HashingConfig()"):
        hash_(mlp(), HashingConfig, progress=False)
    with pytest.warns(UserWarning, match="hash_"):
        report = hash_(mlp(), filter_fn=lambda m, name: False, progress=False)
    assert not report.converted
