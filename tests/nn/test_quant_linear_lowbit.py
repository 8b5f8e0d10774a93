"""QuantLinear's low-bit modes (w4a16, codebook): drop-in equivalence, state, compile, bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import CodebookConfig, Int4WeightOnlyConfig, QuantLinear
from slimkernels.quant import lowbit

CONFIGS = [
    Int4WeightOnlyConfig(group_size=32),
    Int4WeightOnlyConfig(group_size=64, symmetric=True),
    Int4WeightOnlyConfig(group_size=-1),
    CodebookConfig(bits=4, codebook="kmeans"),
    CodebookConfig(bits=3, codebook="kmeans", per="layer"),
    CodebookConfig(bits=2, codebook="pow2"),
    CodebookConfig(bits=4, codebook="nf4", per="layer"),
]
IDS = [c.describe().replace(" ", "-") for c in CONFIGS]


def _linear(k=128, n=40, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def _sqnr_db(ref, got):
    ref, got = ref.float(), got.float()
    return (10 * torch.log10(ref.pow(2).mean() / (ref - got).pow(2).mean())).item()


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_equals_its_dequantized_weight(config, dtype):
    lin = _linear()
    q = QuantLinear.from_float(lin, config)
    x = torch.randn(3, 5, 128).to(dtype)
    expected = (x.float() @ q.dequantized_weight().T + q.bias).to(dtype)
    got = q(x)
    assert got.dtype == dtype and got.shape == (3, 5, 40)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("config,floor_db", [
    (Int4WeightOnlyConfig(group_size=32), 17), (Int4WeightOnlyConfig(group_size=-1), 14),
    (CodebookConfig(bits=4), 19), (CodebookConfig(bits=2), 6),
])
def test_close_to_float_linear(config, floor_db):
    lin = _linear(256, 64)
    x = torch.randn(16, 256)
    with torch.no_grad():
        assert _sqnr_db(lin(x), QuantLinear.from_float(lin, config)(x)) > floor_db


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_state_dict_round_trip(config):
    q = QuantLinear.from_float(_linear(), config)
    sd = q.state_dict()
    assert "packed_weight" not in sd
    fresh = QuantLinear.from_layer_config(q.layer_config())
    fresh.load_state_dict(sd)
    x = torch.randn(4, 128)
    torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)


def test_bytes_and_repr():
    q = QuantLinear.from_float(_linear(256, 64, bias=False), Int4WeightOnlyConfig(group_size=128))
    sd = q.state_dict()
    assert sd["qweight"].shape == (64, 128) and sd["qweight"].dtype == torch.uint8
    assert sd["weight_scale"].shape == (64, 2) and sd["weight_zero"].shape == (64, 2)
    assert "w4a16 g128 asym" in repr(q)
    sym = QuantLinear.from_float(_linear(256, 64), Int4WeightOnlyConfig(symmetric=True))
    assert "weight_zero" not in sym.state_dict()
    cb = QuantLinear.from_float(_linear(256, 64), CodebookConfig(bits=3, per="layer"))
    assert cb.codebook.shape == (1, 8) and cb.qweight.shape == (64, 96) and "codebook 3-bit per layer" in repr(cb)


@pytest.mark.parametrize("config", [Int4WeightOnlyConfig(group_size=32), CodebookConfig(bits=4)], ids=["int4", "codebook"])
def test_torch_compile_fullgraph_and_grad(config):
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 16))
    slimkernels.quantize_(model, config, progress=False)
    x = torch.randn(4, 64)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)
    # gradients reach the activations (distillation / fine-tuning around frozen quantized layers)
    xg = x.clone().requires_grad_()
    model(xg).sum().backward()
    w0, w1 = model[0].dequantized_weight(), model[2].dequantized_weight()
    h = x @ w0.T + model[0].bias
    expected = ((h > 0).float() * (torch.ones(4, 16) @ w1)) @ w0
    torch.testing.assert_close(xg.grad, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", [Int4WeightOnlyConfig(), CodebookConfig()], ids=["int4", "codebook"])
def test_half_model_keeps_float32_state(config):
    q = QuantLinear.from_float(_linear(), config)
    q.half()
    state = q.state_dict()
    assert all(state[k].dtype == torch.float32 for k in ("weight_scale", "codebook", "bias") if k in state)
    assert q(torch.randn(2, 128).half()).dtype == torch.float16


def test_bad_inputs():
    with pytest.raises(ValueError, match="does not divide K=100"):
        QuantLinear(100, 8, mode="w4a16", group_size=64)
    with pytest.raises(ValueError, match="multiple of 32"):
        Int4WeightOnlyConfig(group_size=48)
    with pytest.raises(ValueError, match="bits must be 4"):
        CodebookConfig(bits=3, codebook="nf4")
    with pytest.raises(ValueError, match="needs the layer's input Hessian"):
        QuantLinear.from_float(_linear(), Int4WeightOnlyConfig(method="gptq"))
    q = QuantLinear.from_float(_linear(), Int4WeightOnlyConfig(group_size=64))
    sd = q.state_dict()
    sd["weight_zero"] = torch.full_like(sd["weight_zero"], 200)
    with pytest.raises(ValueError, match="zero points lie in 0..15"):
        q.load_state_dict(sd)
    sd = QuantLinear.from_float(_linear(), CodebookConfig()).state_dict()
    sd["codebook"][0, 3] = float("nan")
    with pytest.raises(ValueError, match="codebook holds NaN"):
        QuantLinear.from_layer_config({"mode": "codebook", "in_features": 128, "out_features": 40, "bias": True,
                                       "bits": 4, "per": "row"}).load_state_dict(sd)
    with pytest.raises(ValueError, match="codes must lie in"):
        lowbit.pack_codes(torch.full((2, 4), 16), 4)
