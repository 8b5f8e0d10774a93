"""W8A8 with 7-bit activations (Int8DynamicConfig(act_bits=7), QuantLinear mode "w8a8" option act_bits):
the layer's output is the spec's (activations quantized to |q| <= 63, exact integer GEMM, the same
epilogue) under every implementation and CPU instruction set, through the op and the eager fast path;
the option is saved in checkpoints (older ones load as 8), and QAT rounds the activations alike."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import _native, ops
from slimkernels.backends.quantize import quantize_rows_int8
from slimkernels.nn import QuantLinear
from slimkernels.testing import int8_mm_exact, scaled_epilogue_exact

ISAS = list(_native._C.supported_isas()) if _native._C is not None else []


def _layer(act_bits, k=70, n=24, seed=0):
    torch.manual_seed(seed)
    return QuantLinear.from_float(nn.Linear(k, n), slimkernels.Int8DynamicConfig(act_bits=act_bits))


def _spec(layer, x, act_bits):
    """The layer's output by the spec: per-token quantization to |q| <= 2^(act_bits-1) - 1, exact GEMM."""
    q, s = quantize_rows_int8(x.reshape(-1, x.shape[-1]), (1 << (act_bits - 1)) - 1)
    w = ops.int8_unpack(layer.packed_weight, layer.out_features, layer.in_features)
    y = scaled_epilogue_exact(int8_mm_exact(q, w), s, layer.weight_scale, layer.bias, x.dtype)
    return y.reshape(*x.shape[:-1], layer.out_features)


@pytest.mark.parametrize("isa", ISAS + ["reference"])
def test_same_bits_on_every_isa_and_path(isa):
    layer = _layer(7)
    assert layer.format.act_bits == 7 and layer.format.summary() == "w8a8 act7"
    gen = torch.Generator().manual_seed(1)
    for shape in [(1, 70), (5, 70), (2, 13, 70)]:
        x = torch.randn(shape, generator=gen) * 3
        x[..., 0] = 0.0  # a zero column, and one row all zero
        x.reshape(-1, 70)[-1] = 0.0
        expected = _spec(layer, x, 7)
        if isa == "reference":
            with slimkernels.use_backend("reference"):
                got = layer(x)
        else:
            with slimkernels.use_cpu_isa(isa):
                with torch.inference_mode():
                    got = layer(x)  # the eager fast path
                got_op = layer(x.clone().requires_grad_()).detach()  # autograd: the op
            assert torch.equal(got_op, expected), (isa, shape)
        assert torch.equal(got, expected), (isa, shape)


def test_7_bits_change_the_result_and_stay_close():
    gen = torch.Generator().manual_seed(2)
    layer7, layer8 = _layer(7, seed=3), _layer(8, seed=3)
    x = torch.randn(16, 70, generator=gen)
    y7, y8 = layer7(x), layer8(x)
    exact = x @ layer8.format.dequantize(layer8).T + layer8.bias
    assert not torch.equal(y7, y8)
    err7, err8 = (y7 - exact).norm() / exact.norm(), (y8 - exact).norm() / exact.norm()
    assert err8 < err7 < 0.05


def test_saved_in_the_checkpoint_and_old_checkpoints_load_as_8(tmp_path):
    model = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 16))
    torch.manual_seed(4)
    slimkernels.quantize_(model, slimkernels.Int8DynamicConfig(act_bits=7))
    assert [m.format.act_bits for m in model if isinstance(m, QuantLinear)] == [7, 7]
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path)
    loaded = slimkernels.load(path, nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 16)))
    assert loaded[0].format.act_bits == 7 and loaded[0].layer_config()["act_bits"] == 7
    x = torch.randn(3, 48)
    assert torch.equal(loaded(x), model(x))
    # a layer config without act_bits (checkpoints written before the option) builds an 8-bit layer
    cfg = {k: v for k, v in loaded[0].layer_config().items() if k != "act_bits"}
    old = QuantLinear.from_layer_config(json.loads(json.dumps(cfg)))
    assert old.format.act_bits == 8 and old.format.summary() == "w8a8"


def test_qat_rounds_activations_to_7_bits():
    layer = _layer(7)
    x = torch.randn(4, 70)
    q, s = quantize_rows_int8(x, 63)
    assert torch.equal(layer.format.fake_quantize_input(x), q.float() * s[:, None])
    assert q.abs().max() == 63


def test_bad_act_bits_are_refused():
    for bad in (6, 9, 8.0, "7", None):
        with pytest.raises(ValueError, match="act_bits"):
            slimkernels.Int8DynamicConfig(act_bits=bad)
        with pytest.raises(ValueError, match="act_bits"):
            QuantLinear(8, 4, mode="w8a8", act_bits=bad)
    assert slimkernels.Int8DynamicConfig(act_bits=7).describe() == "w8a8 act7"
    assert slimkernels.Int8DynamicConfig().describe() == "w8a8"
