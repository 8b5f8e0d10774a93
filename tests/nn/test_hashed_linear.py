"""HashedLinear: forward against F.linear on the materialized virtual weight, `.weight`, training (the
buckets learn), save/load through slimkernels.save/load, casts, compile, repr and bad arguments."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkernels
from slimkernels.backends.hashed import virtual_weight
from slimkernels.nn import HashedLinear, layer_type


def make(k=37, n=23, buckets=101, seed=5, bias=True):
    torch.manual_seed(0)
    return HashedLinear(k, n, buckets, seed=seed, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 37), (5, 37), (2, 20, 37), (0, 37)])
def test_forward_matches_materialized_weight(shape, bias):
    layer = make(bias=bias)
    x = torch.randn(*shape)
    w = virtual_weight(layer.buckets.detach(), 5, 23, 37)
    ref = F.linear(x, w, None if layer.bias is None else layer.bias.detach())
    assert torch.allclose(layer(x), ref, atol=1e-5)


def test_weight_is_the_virtual_weight_and_differentiable():
    layer = make()
    w = layer.weight
    assert w.shape == (23, 37) and w.dtype == torch.float32
    assert torch.equal(w.detach(), virtual_weight(layer.buckets.detach(), 5, 23, 37))
    w.sum().backward()
    assert layer.buckets.grad is not None and layer.buckets.grad.abs().sum() > 0


def test_training_reaches_the_buckets():
    torch.manual_seed(1)
    teacher = nn.Linear(16, 8)
    layer = HashedLinear(16, 8, 64, seed=3)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(256, 16)
    target = teacher(x).detach()
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = F.mse_loss(layer(x), target)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_save_load_roundtrip(tmp_path):
    model = nn.Sequential(nn.Linear(37, 23), nn.ReLU(), nn.Linear(23, 4))
    slimkernels.hash_(model, slimkernels.HashingConfig(compression=0.25, seed=9), progress=False)
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path)
    fresh = slimkernels.load(path, nn.Sequential(nn.Linear(37, 23), nn.ReLU(), nn.Linear(23, 4)))
    assert isinstance(fresh[0], HashedLinear) and fresh[0].seed == 9 and fresh[0].num_buckets == model[0].num_buckets
    x = torch.randn(3, 37)
    assert torch.equal(fresh(x), model(x))
    # what the checkpoint stores: buckets and bias only, no weight
    assert set(model[0].state_dict()) == {"buckets", "bias"}
    assert layer_type("HashedLinear") is HashedLinear


def test_casts_and_repr():
    layer = make()
    x = torch.randn(4, 37)
    ref = layer(x)
    half = make().to(torch.bfloat16)
    assert half.weight.dtype == torch.bfloat16
    assert half(x.bfloat16()).dtype == torch.bfloat16
    assert torch.allclose(half(x.bfloat16()).float(), ref, atol=0.1, rtol=0.05)
    text = repr(layer)
    assert "num_buckets=101" in text and "seed=5" in text and "% of the weights" in text


def test_compiles_without_graph_breaks():
    layer = make()
    x = torch.randn(4, 37)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x), layer(x), atol=1e-5)


def test_from_float():
    lin = nn.Linear(40, 30)
    layer = HashedLinear.from_float(lin)
    assert layer.num_buckets == round(40 * 30 / 8) and layer.weight_dtype == torch.float32
    with pytest.raises(TypeError, match="nn.Linear"):
        HashedLinear.from_float(nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("kwargs, words", [
    ({"num_buckets": 0}, "num_buckets must be"), ({"seed": -1}, "seed must be"), ({"seed": 2**32}, "seed must be"),
    ({"in_features": -1}, "in_features must be"), ({"bias": "yes"}, "bias must be"),
])
def test_bad_arguments(kwargs, words):
    args = {"in_features": 8, "out_features": 4, "num_buckets": 10, **kwargs}
    with pytest.raises(ValueError, match=words):
        HashedLinear(**args)


def test_bad_input_and_state():
    layer = make()
    with pytest.raises(ValueError, match="expected input with 37 features"):
        layer(torch.randn(2, 36))
    with pytest.raises(TypeError, match="x must be"):
        layer(torch.ones(2, 37, dtype=torch.int64))
    state = layer.state_dict()
    state["buckets"] = torch.full_like(state["buckets"], float("nan"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        make().load_state_dict(state)
