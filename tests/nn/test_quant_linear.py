"""QuantLinear as a drop-in nn.Linear: equivalence, dtypes, shapes, state, compile, bad input."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import QuantLinear
from slimkernels.backends.quantize import quantize_rows_int8
from slimkernels.testing import DEVICES

MODES = ["w8a8", "w8a16"]


def _linear(k, n, bias=True, device="cpu", seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias).to(device)


def _sqnr_db(ref, got):
    ref, got = ref.float(), got.float()
    return (10 * torch.log10(ref.pow(2).mean() / (ref - got).pow(2).mean())).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_float_linear(device, mode, dtype, bias):
    lin = _linear(96, 40, bias, device)
    q = QuantLinear.from_float(lin, mode)
    x = torch.randn(2, 7, 96, device=device)
    with torch.no_grad():
        ref = lin(x)
        got = q(x.to(dtype))
    assert got.dtype == dtype and got.shape == (2, 7, 40)
    # int8 per-channel weights (and per-token activations) keep ~35-45 dB of signal.
    assert _sqnr_db(ref, got) > (30 if mode == "w8a8" else 35)


@pytest.mark.parametrize("mode", MODES)
def test_equals_dequantized_math(mode):
    """The module computes exactly what its int8 tensors say (reference backend = the spec)."""
    lin = _linear(64, 24)
    q = QuantLinear.from_float(lin, mode)
    x = torch.randn(5, 64)
    w = q.dequantized_weight()
    if mode == "w8a16":
        expected = x @ w.T + q.bias
    else:
        qa, sa = quantize_rows_int8(x)  # the reference implementation: the spec
        expected = (qa.float() @ q.qweight.float().T) * sa[:, None] * q.weight_scale + q.bias
    torch.testing.assert_close(q(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_leading_shapes_and_empty_batch(mode):
    q = QuantLinear.from_float(_linear(32, 8), mode)
    for shape in [(32,), (1, 32), (3, 4, 5, 32), (0, 32), (2, 0, 32)]:
        y = q(torch.randn(shape))
        assert y.shape == (*shape[:-1], 8)


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip_repacks(mode):
    q = QuantLinear.from_float(_linear(48, 20), mode)
    sd = q.state_dict()
    assert set(sd) == {"qweight", "weight_scale", "bias"}  # the packed weight is never saved
    fresh = QuantLinear(48, 20, True, mode)
    fresh.load_state_dict(sd)
    x = torch.randn(3, 48)
    torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)


def test_half_keeps_float32_scales():
    q = QuantLinear.from_float(_linear(32, 8), "w8a8")
    scale = q.weight_scale.clone()
    q.half()
    assert q.weight_scale.dtype == torch.float32 and torch.equal(q.weight_scale, scale)
    assert q(torch.randn(2, 32).half()).dtype == torch.float16


@pytest.mark.parametrize("mode", MODES)
def test_torch_compile_fullgraph(mode):
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    slimkernels.quantize_(model, slimkernels.Int8DynamicConfig() if mode == "w8a8" else slimkernels.Int8WeightOnlyConfig(), progress=False)
    x = torch.randn(4, 32)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)


def test_extra_repr_is_readable():
    text = repr(QuantLinear.from_float(_linear(16, 4), "w8a8"))
    assert "in_features=16" in text and "w8a8" in text and "int8" in text


def test_bad_inputs():
    lin = _linear(16, 4)
    with pytest.raises(ValueError, match="mode must be one of"):
        QuantLinear.from_float(lin, "w3a3")
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        QuantLinear.from_float(nn.Conv2d(3, 3, 1), "w8a8")
    bad = copy.deepcopy(lin)
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        QuantLinear.from_float(bad, "w8a8")
    q = QuantLinear.from_float(lin, "w8a8")
    with pytest.raises(ValueError, match="expected input with 16 features"):
        q(torch.randn(2, 15))
    with pytest.raises(TypeError, match="x must be"):
        q(torch.randn(2, 16, dtype=torch.float64))


def test_nan_activation_row_gives_nan_row_only():
    q = QuantLinear.from_float(_linear(16, 4), "w8a8")
    x = torch.randn(3, 16)
    x[1, 2] = float("nan")
    y = q(x)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES)
def test_move_between_devices_repacks(mode):
    q = QuantLinear.from_float(_linear(64, 32), mode)
    x = torch.randn(3, 64)
    y_cpu = q(x)
    q.cuda()
    y_gpu = q(x.cuda()).cpu()
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-4, atol=1e-4)
    q.cpu()
    torch.testing.assert_close(q(x), y_cpu, rtol=0, atol=0)
