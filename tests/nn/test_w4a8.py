"""QuantLinear mode "w4a8" (Int4WeightOnlyConfig(act="int8")): w4a16's weights with per-token int8
activations. The layer equals the op on its buffers, the eager fast path gives the op's bits, save /
load round-trips, quantize_ and prepare_qat_ / convert_ produce it, and `act` is validated."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import CodebookConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig, QuantLinear, ops
from slimkernels.compress.config import config_for_mode
from slimkernels.nn.formats import fake_quantize_rows_int8

CONFIGS = [Int4WeightOnlyConfig(group_size=32, act="int8"), Int4WeightOnlyConfig(group_size=128, symmetric=True, act="int8"),
           Int4WeightOnlyConfig(group_size=-1, act="int8")]
IDS = ["g32", "g128-sym", "per-channel"]


def _linear(k=256, n=40, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_mode_and_weights(config):
    lin = _linear()
    q = QuantLinear.from_float(lin, config)
    w4a16 = QuantLinear.from_float(lin, Int4WeightOnlyConfig(group_size=config.group_size, symmetric=config.symmetric))
    assert q.mode == "w4a8" and config.mode == "w4a8" and "w4a8" in q.format_summary()
    for name in ("qweight", "weight_scale", "weight_zero"):  # the same weights as w4a16
        a, b = getattr(q, name), getattr(w4a16, name)
        assert (a is None and b is None) or torch.equal(a, b)
    x = torch.randn(3, 5, 256)
    with torch.no_grad():
        expected = ops.dequant_mm_int4_a8(x, q.qweight, q.weight_scale, q.weight_zero, q.format.group_size, q.bias)
        torch.testing.assert_close(q(x), expected, rtol=0, atol=0)
        # close to the float layer through the same weights (int8 activations cost a little)
        ref = w4a16(x)
        assert ((q(x) - ref).pow(2).mean() / ref.pow(2).mean()).item() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    q = QuantLinear.from_float(_linear(), CONFIGS[0])
    x = torch.randn(4, 256)
    with torch.no_grad():
        got = q(x.to(dtype))
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), q(x.to(dtype).float()), rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(slimkernels._native._C is None, reason="the native CPU extension is not built")
def test_fast_path_same_bits_as_the_op():
    q = QuantLinear.from_float(_linear(), CONFIGS[0])
    for shape in ((1, 256), (3, 256), (2, 5, 256)):
        x = torch.randn(shape)
        with torch.inference_mode():
            fast = q(x)
            q.__dict__["_fast"] = False
            try:
                op = q(x)
            finally:
                q.__dict__.pop("_fast")
        assert torch.equal(fast, op)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_save_load_round_trip(config, tmp_path):
    model = nn.Sequential(_linear(256, 128), nn.ReLU(), _linear(128, 24, seed=1))
    fresh = nn.Sequential(_linear(256, 128), nn.ReLU(), _linear(128, 24, seed=1))
    slimkernels.quantize_(model, config)
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path)
    loaded = slimkernels.load(path, fresh)
    assert loaded[0].mode == "w4a8" and loaded[2].mode == "w4a8"
    x = torch.randn(6, 256)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_quantize_report_and_gptq():
    model = nn.Sequential(_linear(256, 128), nn.ReLU(), _linear(128, 24, seed=1))
    report = slimkernels.quantize_(model, Int4WeightOnlyConfig(group_size=32, act="int8", method="gptq"),
                                   calibration=[torch.randn(64, 256) for _ in range(8)])
    assert "w4a8" in str(report)
    assert all(m.mode == "w4a8" for m in model if isinstance(m, QuantLinear))


def test_qat_rounds_the_input_like_the_layer():
    model = nn.Sequential(_linear())
    slimkernels.prepare_qat_(model, CONFIGS[0])
    x = torch.randn(4, 256)
    fake = model[0]
    assert torch.equal(fake.format.fake_quantize_input(x), fake_quantize_rows_int8(x))
    slimkernels.convert_(model)
    assert isinstance(model[0], QuantLinear) and model[0].mode == "w4a8"


def test_compile_keeps_the_op():
    q = QuantLinear.from_float(_linear(), CONFIGS[0])
    x = torch.randn(4, 256)
    with torch.no_grad():
        eager = q(x)
        torch.testing.assert_close(torch.compile(q, fullgraph=True)(x), eager, rtol=1e-6, atol=1e-6)


def test_act_field():
    assert Int4WeightOnlyConfig().mode == "w4a16" and Int8WeightOnlyConfig().mode == "w8a16"
    assert Int8WeightOnlyConfig(act="int8").mode == "w8a8"
    assert config_for_mode("w4a8") == Int4WeightOnlyConfig(act="int8")
    model = nn.Sequential(_linear())
    slimkernels.quantize_(model, Int8WeightOnlyConfig(act="int8"))
    assert model[0].mode == "w8a8"
    for cls in (Int4WeightOnlyConfig, Int8WeightOnlyConfig):
        with pytest.raises(ValueError, match=r"\.act must be None"):
            cls(act="int4")
    with pytest.raises(ValueError, match="not supported for codebooks yet"):
        CodebookConfig(act="int8")
