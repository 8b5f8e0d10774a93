"""sparsify_: every method and pattern on the toy transformer, skips, bad input, the report, save/load."""
from __future__ import annotations

import copy
import json
import os
import sys

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import SparseLinear, SparsityConfig
from slimkernels.compress import calibration_text, sparsify_layer
from slimkernels.compress.calibration import CalibrationWarning
from slimkernels.quant.sparse import is_nm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_models import TinyTransformer  # noqa: E402

LINEARS = ["layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down", "layers.2.up", "layers.2.down", "head"]


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyTransformer().eval()


def _batches(n=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 40, (4, 16), generator=gen) for _ in range(n)]


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _dense(module):
    return module.dequantized_weight() if isinstance(module, SparseLinear) else module.weight.detach()


@pytest.mark.filterwarnings("ignore::slimkernels.compress.calibration.CalibrationWarning")
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8", "block"])
def test_every_method_and_pattern(method, pattern):
    model, ids = _model(), torch.randint(0, 40, (3, 11), generator=torch.Generator().manual_seed(7))
    ref = model(ids)
    config = SparsityConfig(pattern=pattern, method=method, block=(8, 1))
    calibration = _batches() if method != "magnitude" else None
    report = slimkernels.sparsify_(model, config, calibration=calibration, progress=False)
    assert [r.name for r in report.converted] == LINEARS and not report.skipped
    for name in LINEARS:
        layer = model.get_submodule(name)
        assert isinstance(layer, SparseLinear) and layer.format == config.format
        w = _dense(layer)
        assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)
        if pattern in ("2:4", "4:8"):
            assert is_nm(w, config.nm_group)
    assert _cos(model(ids), ref) > 0.6
    if method != "magnitude":  # the head is outside the block stack: no data reaches it
        head = next(r for r in report.layers if r.name == "head")
        assert "-> magnitude (no calibration inputs reach this layer)" in head.detail


def test_calibrated_methods_beat_magnitude_on_calibration_like_data():
    ids = torch.cat(_batches())
    ref = _model()(ids)
    cos = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = _model()
        slimkernels.sparsify_(model, SparsityConfig(method=method), calibration=_batches(24, seed=3), progress=False)
        cos[method] = _cos(model(ids), ref)
    assert cos["sparsegpt"] > cos["magnitude"] and cos["wanda"] > cos["magnitude"]


def test_report_content():
    model = _model()
    report = slimkernels.sparsify_(model, SparsityConfig(pattern="2:4"), progress=False)
    assert report.method == "SparsityConfig (2:4 magnitude)"
    first = report.layers[0]
    assert first.detail.startswith("2:4 magnitude: 50.0% zeros") and "2:4 fp32" in first.detail
    assert first.bytes_after < first.bytes_before and report.model_bytes_after < report.model_bytes_before
    assert "converted" in str(report) and json.dumps(report.to_dict())
    # a second pass has nothing left to convert, and says so
    with pytest.warns(UserWarning, match="already compressed"):
        again = slimkernels.sparsify_(model, SparsityConfig(), progress=False)
    assert not again.layers


def test_skips_are_recorded_with_the_reason():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 16), nn.Linear(16, 4))
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="left 0 in float"):
        report = slimkernels.sparsify_(model, SparsityConfig(pattern="2:4"), progress=False)
    assert {r.name: r.detail for r in report.skipped} == {
        "0": "in_features=6 is not a multiple of 4 (2:4)", "3": "weight holds NaN or Inf"}
    assert [r.name for r in report.converted] == ["2"] and isinstance(model[2], SparseLinear)
    with pytest.warns(UserWarning, match="block 4x16 does not divide the weight \\[4, 12\\]"):
        slimkernels.sparsify_(nn.Sequential(nn.Linear(12, 4)), SparsityConfig(pattern="block"), progress=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), "sparsity must be a number in \\[0, 1\\)"),
    (dict(sparsity=-0.1), "sparsity must be a number in \\[0, 1\\)"),
    (dict(pattern="3:4"), "pattern must be one of"),
    (dict(method="obs"), "method must be one of"),
    (dict(pattern="2:4", sparsity=0.7), "leave sparsity at 0.5"),
    (dict(pattern="2:4", scope="global"), "fixes every layer's sparsity"),
    (dict(scope="global", allocation="owl"), "already chooses each layer's sparsity"),
    (dict(values="int4"), "values must be None"),
    (dict(block=(0, 4)), "block must be"),
    (dict(damp=0), "damp must be in \\(0, 1\\)"),
    (dict(method="sparsegpt", pattern="block", values="int8"), "sparsegpt with int8"),
    (dict(owl_strength=1.5), "owl_strength"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparsityConfig(**kwargs)


def test_bad_calls():
    with pytest.raises(TypeError, match="did you mean SparsityConfig\\(\\)"):
        slimkernels.sparsify_(_model(), SparsityConfig)
    with pytest.raises(TypeError, match="did you mean SparsityConfig\\(method='wanda'\\)"):
        slimkernels.sparsify_(_model(), "wanda")
    with pytest.raises(TypeError, match="SparsityConfig, got Int8DynamicConfig"):
        slimkernels.sparsify_(_model(), slimkernels.Int8DynamicConfig())
    for method in ("wanda", "sparsegpt"):
        with pytest.raises(ValueError, match="needs calibration data"):
            slimkernels.sparsify_(_model(), SparsityConfig(method=method))
    with pytest.raises(ValueError, match="needs the layer's input Hessian"):
        sparsify_layer(nn.Linear(8, 8), SparsityConfig(method="sparsegpt"))


def test_scope_global_prunes_the_lowest_magnitudes_of_all_layers():
    model = _model()
    weights = [model.get_submodule(n).weight.detach().clone() for n in LINEARS]
    slimkernels.sparsify_(model, SparsityConfig(sparsity=0.6, scope="global"), progress=False)
    pruned = [_dense(model.get_submodule(n)) for n in LINEARS]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((p == 0).sum()) for p in pruned)
    assert zeros == round(0.6 * total)
    kept = torch.cat([w[p != 0].abs() for w, p in zip(weights, pruned)])
    dropped = torch.cat([w[p == 0].abs() for w, p in zip(weights, pruned)])
    assert dropped.max() <= kept.min()
    assert len({round(float((p == 0).float().mean()), 3) for p in pruned}) > 1  # not uniform


@pytest.mark.filterwarnings("ignore::slimkernels.compress.calibration.CalibrationWarning")
@pytest.mark.parametrize("config", [SparsityConfig(method="wanda", scope="global", sparsity=0.6),
                                    SparsityConfig(method="sparsegpt", allocation="owl", owl_factor=2.0, owl_strength=0.2)])
def test_allocations_keep_the_average(config):
    model = _model()
    slimkernels.sparsify_(model, config, calibration=_batches(), progress=False)
    blocks = LINEARS[:-1]  # the head gets no data: it stays at config.sparsity
    ws = [_dense(model.get_submodule(n)) for n in blocks]
    assert sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws) == pytest.approx(config.sparsity, abs=2e-3)


def test_int8_values():
    model, ids = _model(), torch.randint(0, 40, (2, 9))
    ref = model(ids)
    with pytest.warns(CalibrationWarning):  # 96 calibration tokens for K = 128 inputs
        slimkernels.sparsify_(model, SparsityConfig(method="sparsegpt", pattern="2:4", values="int8"),
                              calibration=_batches(), progress=False)
    layer = model.layers[0].up
    assert layer.values.dtype == torch.int8 and "int8" in layer.format_summary()
    assert _cos(model(ids), ref) > 0.8


def test_save_load_round_trip(tmp_path):
    model, ids = _model(), torch.randint(0, 40, (2, 9))
    slimkernels.sparsify_(model, SparsityConfig(method="wanda", pattern="2:4"), calibration=_batches(), progress=False)
    out = model(ids)
    path = tmp_path / "sparse.safetensors"
    slimkernels.save(model, path)
    fresh = slimkernels.load(path, _model(seed=5))
    assert isinstance(fresh.layers[1].down, SparseLinear)
    torch.testing.assert_close(fresh(ids), out)


def test_sparsify_layer_and_from_float():
    linear = nn.Linear(32, 12)
    layer = SparseLinear.from_float(linear, SparsityConfig(sparsity=0.75))
    assert isinstance(layer, SparseLinear) and int((_dense(layer) == 0).sum()) == round(0.75 * 32) * 12
    h = torch.eye(32) * 2
    layer = sparsify_layer(linear, SparsityConfig(method="sparsegpt", pattern="4:8"), hessian=h)
    assert is_nm(_dense(layer), 8)
    norm = torch.ones(32)
    layer = sparsify_layer(linear, SparsityConfig(method="wanda"), input_norm=norm)
    torch.testing.assert_close(_dense(layer), _dense(SparseLinear.from_float(linear, SparsityConfig())))


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 16, 1)])
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x.mean((2, 3)))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_conv_layers(method):
    torch.manual_seed(0)
    model = _ConvNet().eval()
    images = [torch.randn(2, 3, 10, 10) for _ in range(3)]
    report = slimkernels.sparsify_(model, SparsityConfig(method=method), calibration=images, progress=False)
    convs = ["stem", "layers.0", "layers.1"]
    assert {r.name for r in report.converted} == set(convs) | {"head"}
    assert all(isinstance(model.get_submodule(name), slimkernels.nn.SparseConv2d) for name in convs)
    # the sparse model computes what the float model with the same zeros computes
    dense = _ConvNet().eval()
    for name in convs + ["head"]:
        layer = model.get_submodule(name)
        dense.get_submodule(name).weight.data.copy_(layer.dequantized_weight().reshape(layer.weight_shape))
        dense.get_submodule(name).bias.data.copy_(layer.bias)
    x = torch.randn(3, 3, 10, 10)
    torch.testing.assert_close(model(x), dense(x), rtol=1e-4, atol=1e-4)
    conv_free = slimkernels.sparsify_(_ConvNet(), SparsityConfig(conv=False), progress=False)
    assert [r.name for r in conv_free.layers] == ["head"]


def test_calibration_text():
    sentences = calibration_text(40)
    assert len(sentences) == len(set(sentences)) == 40 and sentences == calibration_text(40)
    assert all(s[0].isupper() and s.endswith(".") and 6 <= len(s.split()) <= 40 for s in sentences)
    assert calibration_text(5, seed=1) != sentences[:5]
    with pytest.raises(ValueError, match="positive int"):
        calibration_text(0)
