"""LowRankLinear / LowRankConv2d: forward == the factors applied, exact at full rank, the SVD error,
quantized factors (int8 / W8A8 / int4), weight for model code, save/load of every variant, compile, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkernels
from slimkernels import LowRankConv2d, LowRankLinear, QuantLinear
from slimkernels.compress import Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig


def _linear(k=45, n=37, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def _x(m, k, seed=1):
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed))


def _factor_matrix(layer):
    return layer.dequantized_weight() if isinstance(layer, QuantLinear) else layer.weight.detach()


@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_is_exact(bias):
    lin = _linear(bias=bias)
    lr = LowRankLinear.from_float(lin, min(37, 45))
    x = _x(3, 45)
    torch.testing.assert_close(lr(x), lin(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lr.dequantized_weight(), lin.weight.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [1, 5, 20])
def test_forward_applies_the_factors_and_error_is_the_discarded_spectrum(rank):
    lin = _linear(k=29, n=51)
    lr = LowRankLinear.from_float(lin, rank)
    x = _x(7, 29).reshape(7, 1, 29)  # leading dims kept
    u, v = lr.up.weight.detach(), lr.down.weight.detach()
    torch.testing.assert_close(lr(x), F.linear(F.linear(x, v), u, lin.bias), rtol=1e-5, atol=1e-5)
    s = torch.linalg.svdvals(lin.weight.detach().double())
    error = (lin.weight.detach().double() - lr.dequantized_weight().double()).square().sum()
    torch.testing.assert_close(error, s[rank:].square().sum(), rtol=1e-4, atol=1e-9)
    assert tuple(u.shape) == (51, rank) and tuple(v.shape) == (rank, 29)


def test_weight_for_model_code_and_repr():
    lin = _linear()
    lr = LowRankLinear.from_float(lin.to(torch.bfloat16), 8)
    assert lr.weight.dtype == torch.bfloat16 and tuple(lr.weight.shape) == (37, 45)
    torch.testing.assert_close(lr.weight.float(), lr.dequantized_weight(), rtol=1e-2, atol=1e-2)
    text = repr(lr)
    assert "rank=8" in text and f"kept={100 * 8 * (37 + 45) / (37 * 45):.1f}% of the parameters" in text
    assert lr.kept_fraction == pytest.approx(8 * 82 / (37 * 45))
    x = _x(2, 45).bfloat16()
    assert lr(x).dtype == torch.bfloat16


@pytest.mark.parametrize("factors,tol", [("w8a16", 0.02), (Int8DynamicConfig(), 0.05),
                                         (Int4WeightOnlyConfig(group_size=32), 0.25)])
def test_quantized_factors(factors, tol):
    lin = _linear(k=64, n=48)
    ref = LowRankLinear.from_float(lin, 32)
    lr = LowRankLinear.from_float(lin, 32, factors=factors)
    assert isinstance(lr.down, QuantLinear) and isinstance(lr.up, QuantLinear)
    x = _x(5, 64)
    # forward == the quantized factors applied, in turn
    torch.testing.assert_close(lr(x), lr.up(lr.down(x)))
    rel = (lr(x) - ref(x)).norm() / ref(x).norm()
    assert rel < tol
    torch.testing.assert_close(lr.dequantized_weight(), _factor_matrix(lr.up) @ _factor_matrix(lr.down))
    assert "factors" in lr.format_summary()


def test_int4_factor_that_does_not_fit_stays_float():
    lin = _linear(k=64, n=48)
    lr = LowRankLinear.from_float(lin, 20)  # r = 20 is no multiple of 32: the up factor cannot be int4 g32
    left = lr.quantize_factors(Int4WeightOnlyConfig(group_size=32))
    assert isinstance(lr.down, QuantLinear) and type(lr.up) is nn.Linear
    assert len(left) == 1 and left[0].startswith("up:")


@pytest.mark.parametrize("factors", [None, "w8a16", "w8a8", Int4WeightOnlyConfig(group_size=32, symmetric=True)])
def test_save_load_round_trip(tmp_path, factors):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 40))
    fresh = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 40))
    model[0] = LowRankLinear.from_float(model[0], 32, factors=factors)
    model[2] = LowRankLinear.from_float(model[2], 32, factors=factors)
    x = _x(4, 64)
    expected = model(x)
    path = tmp_path / "lr.safetensors"
    slimkernels.save(model, path)
    slimkernels.load(path, fresh)
    assert isinstance(fresh[0], LowRankLinear) and type(fresh[0].down) is type(model[0].down)
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    slimkernels.load(path, fresh)  # into the converted model again
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_load_refuses_nan_factor(tmp_path):
    from safetensors.torch import load_file, save_file

    model = nn.Sequential(LowRankLinear.from_float(_linear(), 4))
    path = tmp_path / "lr.safetensors"
    slimkernels.save(model, path)
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    tensors["0.down.weight"][0, 0] = float("nan")
    save_file(tensors, path, metadata=meta)
    with pytest.raises(ValueError, match="NaN"):
        slimkernels.load(path, nn.Sequential(_linear()))


@pytest.mark.parametrize("factors", [None, "w8a16"])
def test_torch_compile_fullgraph(factors):
    lr = LowRankLinear.from_float(_linear(k=32, n=24), 8, factors=factors)
    x = _x(3, 32)
    eager = lr(x)
    compiled = torch.compile(lr, fullgraph=True)
    torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)


def test_factors_train():
    lr = LowRankLinear.from_float(_linear(), 6)
    lr(_x(4, 45)).square().sum().backward()
    assert lr.up.weight.grad is not None and lr.down.weight.grad is not None


def test_bad_input():
    lin = _linear()
    for rank in (0, -1, 38, 2.5, True):
        with pytest.raises(ValueError, match="rank must be an int in"):
            LowRankLinear.from_float(lin, rank)
    with pytest.raises(TypeError, match="nn.Linear"):
        LowRankLinear.from_float(nn.Conv2d(3, 4, 3), 2)
    with pytest.raises(ValueError, match="disagree on r"):
        LowRankLinear.from_factors(torch.randn(5, 3), torch.randn(4, 7))
    with pytest.raises(ValueError, match="bias"):
        LowRankLinear.from_factors(torch.randn(5, 3), torch.randn(3, 7), torch.randn(4))
    with pytest.raises(ValueError, match="45 features"):
        LowRankLinear.from_float(lin, 4)(_x(2, 44))


# ---- LowRankConv2d -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 1, 1, 1), (3, 2, 0, 1), ((1, 3), 1, (0, 2), 2), (1, 1, 0, 1)])
def test_conv_forward_is_the_two_convs(kernel, stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, kernel, stride, padding, dilation)
    k = conv.weight[0].numel()
    x = torch.randn(2, 6, 9, 11)
    full = LowRankConv2d.from_float(conv, min(10, k))
    torch.testing.assert_close(full(x), conv(x), rtol=1e-4, atol=1e-4)
    lr = LowRankConv2d.from_float(conv, 3)
    ref = F.conv2d(F.conv2d(x, lr.down.weight, None, conv.stride, conv.padding, conv.dilation), lr.up.weight, conv.bias)
    torch.testing.assert_close(lr(x), ref, rtol=1e-5, atol=1e-5)
    s = torch.linalg.svdvals(conv.weight.detach().double().reshape(10, -1))
    err = (conv.weight.detach().double() - lr.dequantized_weight().double()).square().sum()
    torch.testing.assert_close(err, s[3:].square().sum(), rtol=1e-4, atol=1e-9)
    assert tuple(lr.weight.shape) == tuple(conv.weight.shape)
    assert tuple(lr.down.weight.shape[:2]) == (3, 6) and tuple(lr.up.weight.shape) == (10, 3, 1, 1)


def test_conv_save_load_and_compile(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding="same"), nn.ReLU())
    fresh = nn.Sequential(nn.Conv2d(4, 8, 3, padding="same"), nn.ReLU())
    model[0] = LowRankConv2d.from_float(model[0], 5)
    x = torch.randn(1, 4, 7, 7)
    expected = model(x)
    slimkernels.save(model, tmp_path / "c.safetensors")
    slimkernels.load(tmp_path / "c.safetensors", fresh)
    assert isinstance(fresh[0], LowRankConv2d) and fresh[0].rank == 5
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.compile(fresh, fullgraph=True)(x), expected, rtol=1e-5, atol=1e-5)
    assert "rank=5" in repr(fresh[0])


def test_conv_bad_input():
    with pytest.raises(ValueError, match="grouped"):
        LowRankConv2d.from_float(nn.Conv2d(4, 8, 3, groups=2), 2)
    with pytest.raises(ValueError, match="rank must be an int in"):
        LowRankConv2d.from_float(nn.Conv2d(4, 8, 3), 9)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        LowRankConv2d.from_float(nn.Linear(4, 4), 2)
