"""quantize_ with the low-bit configs: RTN, GPTQ with calibration (block by block), codebooks,
reports and save/load."""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import CodebookConfig, Int4WeightOnlyConfig, QuantLinear
from slimkernels.compress.calibration import find_blocks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # toy_models.py (--import-mode=importlib)
from toy_models import TinyTransformer  # noqa: E402


def _model(seed=0):
    torch.manual_seed(seed)
    m = TinyTransformer().eval()
    with torch.no_grad():  # correlated features, as in trained models, so GPTQ has something to use
        m.embed.weight.copy_(torch.randn(40, 8) @ torch.randn(8, 64))
    return m

def _batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 40, (2, 16), generator=g) for _ in range(n)]

def _output_error(model, ref_model, batches):
    with torch.no_grad():
        return sum((model(b) - ref_model(b)).pow(2).sum().item() for b in batches)

def test_find_blocks():
    name, blocks = find_blocks(_model())
    assert name == "layers" and len(blocks) == 3
    assert find_blocks(nn.Sequential(nn.Linear(3, 3))) is None

@pytest.mark.parametrize("config", [Int4WeightOnlyConfig(group_size=32), CodebookConfig(bits=4)], ids=["rtn", "kmeans"])
def test_uncalibrated_configs(config):
    model, ref = _model(), _model()
    report = slimkernels.quantize_(model, config, progress=False)
    assert len(report.converted) == 7 and report.compression_ratio > 2.5  # the float embedding stays
    assert all(isinstance(m, QuantLinear) for m in model.modules() if isinstance(m, nn.Linear) or isinstance(m, QuantLinear))
    ids = _batches(1)[0]
    cos = nn.functional.cosine_similarity(model(ids).flatten(), ref(ids).flatten(), dim=0)
    assert cos > 0.98

def test_gptq_beats_rtn_and_reports():
    calib, held_out = _batches(8, seed=1), _batches(4, seed=2)
    ref = _model()
    rtn = _model()
    slimkernels.quantize_(rtn, Int4WeightOnlyConfig(group_size=32), progress=False)
    gptq = _model()
    report = slimkernels.quantize_(gptq, Int4WeightOnlyConfig(group_size=32, method="gptq"), calibration=calib,
                                   progress=False)
    assert len(report.converted) == 7
    details = {r.name: r.detail for r in report.layers}
    # 8 distinct tokens' worth of rows for K=64: the rank guard raised the dampening (and said so)
    assert details["layers.0.up"] == "w4a16 g32 asym gptq (calibration rank 8 < K=64: damp 0.01 -> 0.88)"
    assert "-> rtn" in details["head"]  # outside the blocks: no calibration inputs
    assert _output_error(gptq, ref, held_out) < _output_error(rtn, ref, held_out)

def test_codebook_gptq_beats_nearest_entries_and_reports():
    calib, held_out = _batches(8, seed=1), _batches(4, seed=2)
    ref, plain, gptq = _model(), _model(), _model()
    slimkernels.quantize_(plain, CodebookConfig(bits=3), progress=False)
    report = slimkernels.quantize_(gptq, CodebookConfig(bits=3, method="gptq", act_order=True), calibration=calib,
                                   progress=False)
    details = {r.name: r.detail for r in report.layers}
    assert details["layers.0.up"] == "codebook 3-bit kmeans per row gptq (calibration rank 8 < K=64: damp 0.01 -> 0.88)"
    assert "-> rtn" in details["head"]
    # GPTQ keeps each layer's fitted codebook and only changes which entries the weights use
    assert torch.equal(gptq.layers[1].down.codebook, plain.layers[1].down.codebook)
    assert _output_error(gptq, ref, held_out) < _output_error(plain, ref, held_out)
    with pytest.raises(ValueError, match="needs calibration data"):
        slimkernels.quantize_(_model(), CodebookConfig(method="gptq"), progress=False)
    with pytest.raises(ValueError, match="Hessian"):
        QuantLinear.from_float(nn.Linear(8, 4), CodebookConfig(method="gptq"))

@pytest.mark.parametrize("kwargs, match", [({"method": "kmeans"}, "method"), ({"damp": 0.0}, "damp"),
                                           ({"block_size": 0}, "block_size"), ({"damp": True}, "damp")])
def test_gptq_knobs_are_checked(kwargs, match):
    for cls in (Int4WeightOnlyConfig, CodebookConfig):
        with pytest.raises(ValueError, match=f"{cls.__name__}.{match}"):
            cls(**kwargs)

def test_gptq_keyword_inputs_and_no_blocks():
    model = _model()
    calib = [{"ids": b, "scale": 0.5} for b in _batches(3)]
    slimkernels.quantize_(model, Int4WeightOnlyConfig(group_size=32, method="gptq", act_order=True), calibration=calib,
                          progress=False)
    assert isinstance(model.layers[2].down, QuantLinear)
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    report = slimkernels.quantize_(mlp, Int4WeightOnlyConfig(group_size=-1, method="gptq"),
                                   calibration=[torch.randn(8, 64) for _ in range(3)], progress=False)
    assert len(report.converted) == 2 and all(r.detail.startswith("w4a16 per-channel asym gptq") for r in report.layers)

def test_gptq_bad_calibration():
    with pytest.raises(ValueError, match="needs calibration data"):
        slimkernels.quantize_(_model(), Int4WeightOnlyConfig(method="gptq"), progress=False)
    with pytest.raises(ValueError, match="gave no batches"):
        slimkernels.quantize_(_model(), Int4WeightOnlyConfig(group_size=32, method="gptq"), calibration=[], progress=False)
    with pytest.raises((RuntimeError, ValueError, IndexError)):
        slimkernels.quantize_(_model(), Int4WeightOnlyConfig(group_size=32, method="gptq"),
                              calibration=[torch.randn(2, 16)], progress=False)  # floats where ids belong

def test_dead_input_channels_stay_finite():
    mlp = nn.Sequential(nn.Linear(64, 32))
    x = torch.randn(32, 64)
    x[:, 5:9] = 0  # channels no calibration row ever uses: a singular Hessian
    slimkernels.quantize_(mlp, Int4WeightOnlyConfig(group_size=32, method="gptq"), calibration=[x], progress=False)
    assert torch.isfinite(mlp[0].dequantized_weight()).all() and torch.isfinite(mlp(torch.randn(3, 64))).all()

def test_skips_layers_group_does_not_divide():
    mlp = nn.Sequential(nn.Linear(48, 64), nn.Linear(64, 8))
    with pytest.warns(UserWarning, match="not a multiple of group_size=32"):
        report = slimkernels.quantize_(mlp, Int4WeightOnlyConfig(group_size=32), progress=False)
    assert [r.name for r in report.skipped] == ["0"] and [r.name for r in report.converted] == ["1"]

@pytest.mark.parametrize("config", [Int4WeightOnlyConfig(group_size=32), Int4WeightOnlyConfig(group_size=-1, symmetric=True),
                                    CodebookConfig(bits=3, per="layer"), CodebookConfig(bits=4, codebook="nf4")],
                         ids=["int4-g32", "int4-pc-sym", "cb3-layer", "nf4"])
def test_save_load_round_trip(tmp_path, config):
    model = _model()
    slimkernels.quantize_(model, config, progress=False)
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path)
    fresh = slimkernels.load(path, _model(seed=5))
    ids = _batches(1)[0]
    torch.testing.assert_close(fresh(ids), model(ids), rtol=0, atol=0)
