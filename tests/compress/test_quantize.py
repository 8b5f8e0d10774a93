"""quantize_ and save/load on whole models."""
from __future__ import annotations

import copy
import json
import struct

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import Int8DynamicConfig, Int8WeightOnlyConfig, QuantLinear


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.blocks = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 50, bias=False)
        self.head.weight = self.embed.weight  # tied, as in language models
        self.norm = nn.LayerNorm(32)

    def forward(self, ids):
        return self.head(self.norm(self.blocks(self.embed(ids))))


def _model(seed=0):
    torch.manual_seed(seed)
    return Tiny().eval()


@pytest.mark.parametrize("config", [Int8DynamicConfig(), Int8WeightOnlyConfig()])
def test_quantize_converts_and_reports(config):
    model = _model()
    ids = torch.randint(0, 50, (2, 9))
    ref = model(ids)
    report = slimkernels.quantize_(model, config, progress=False)
    assert len(report.converted) == 3 and not report.skipped
    assert all(isinstance(m, QuantLinear) and m.mode == config.mode for m in [model.blocks[0], model.blocks[2], model.head])
    assert report.model_bytes_after < report.model_bytes_before
    out = model(ids)
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999
    assert "converted" in str(report) and json.dumps(report.to_dict())


def test_filter_and_skip_reasons():
    model = _model()
    with torch.no_grad():
        model.blocks[2].weight[0, 0] = float("inf")
    with pytest.warns(UserWarning, match="left blocks.2 in float"):
        report = slimkernels.quantize_(model, Int8DynamicConfig(), filter_fn=lambda m, name: name != "head", progress=False)
    assert {r.name: r.detail for r in report.skipped} == {"blocks.2": "weight holds NaN or Inf"}
    assert isinstance(model.blocks[0], QuantLinear)
    assert type(model.head) is nn.Linear and "head" not in {r.name for r in report.layers}  # filtered out

    with pytest.warns(UserWarning):
        report = slimkernels.quantize_(_model(), Int8DynamicConfig(min_features=33), progress=False)
    assert {r.name for r in report.skipped} == {"blocks.0", "blocks.2", "head"}
    assert all("min_features=33" in r.detail for r in report.skipped)


def test_configs_validate():
    with pytest.raises(ValueError, match="min_features"):
        Int8DynamicConfig(min_features=0)
    with pytest.raises(TypeError, match="no handler"):
        slimkernels.quantize_(_model(), object())


@pytest.mark.parametrize("config", [Int8DynamicConfig(), Int8WeightOnlyConfig()])
def test_save_load_round_trip(tmp_path, config):
    model = _model()
    slimkernels.quantize_(model, config, progress=False)
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path)
    restored = slimkernels.load(path, _model(seed=1))  # different float weights: all must be overwritten
    ids = torch.randint(0, 50, (3, 5))
    torch.testing.assert_close(restored(ids), model(ids), rtol=0, atol=0)
    assert isinstance(restored.head, QuantLinear) and torch.equal(restored.embed.weight, model.embed.weight)


def test_load_rejects_foreign_corrupt_and_mismatched(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a slimkernels checkpoint"):
        slimkernels.load(foreign, _model())

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 10**12) + b"{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        slimkernels.load(garbage, _model())

    model = _model()
    slimkernels.quantize_(model, Int8DynamicConfig(), progress=False)
    good = tmp_path / "good.safetensors"
    slimkernels.save(model, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError):
        slimkernels.load(truncated, _model())

    class Wider(Tiny):
        def __init__(self):
            super().__init__()
            self.blocks[0] = nn.Linear(32, 65)
            self.blocks[2] = nn.Linear(65, 32)

    with pytest.raises(ValueError, match="blocks.0"):
        slimkernels.load(good, Wider())
