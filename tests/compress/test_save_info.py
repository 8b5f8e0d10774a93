"""save(..., info=) / read_info / inspect_checkpoint: the compression info stored with a checkpoint, and what
a checkpoint holds per layer, read from its header alone."""
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import slimkernels
from slimkernels.compress import (
    HashingConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig, LowRankConfig, SparsityConfig, hash_, inspect_checkpoint,
    low_rank_, quantize_, read_info, sparsify_,
)

INFO = {
    "tool": "slimkernels compress", "created": "2026-11-30T16:00:00Z", "model": "tests:mlp",
    "quality_metric": "min cosine vs float", "float": {"bytes": 123456, "quality": 1.0, "latency_ms": 0.25},
    "layers": {"0": {"steps": "w4a16 g32", "bytes": 4000, "float_bytes": 25000, "error": 0.0123, "latency_us": None}},
    "candidates": [{"label": "uniform w4a16", "bytes": 5000, "quality": 0.97, "latency_ms": None, "chosen": False}],
    "chosen": {"label": "budget mix", "bytes": 4500, "quality": 0.98, "latency_ms": 0.2},
}


def compressed_mlp(seed: int = 0) -> nn.Sequential:
    """An MLP of odd widths with one layer per format: w4a16 g32, 2:4 sparse, rank 5 with int8 factors,
    hashed 1/8; the LayerNorm stays float."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(),
                          nn.Linear(40, 24), nn.LayerNorm(24))
    only = lambda name: (lambda module, n: n == name)  # noqa: E731
    quantize_(model, Int4WeightOnlyConfig(group_size=32), filter_fn=only("0"), progress=False)
    sparsify_(model, SparsityConfig(pattern="2:4"), filter_fn=only("2"), progress=False)
    low_rank_(model, LowRankConfig(rank=5, factors=Int8WeightOnlyConfig()), filter_fn=only("4"), progress=False)
    hash_(model, HashingConfig(compression=1 / 8), filter_fn=only("6"), progress=False)
    return model


def fresh_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(),
                         nn.Linear(40, 24), nn.LayerNorm(24))


def file_tensor_bytes(path) -> dict:
    """{name: bytes} of the tensors the file holds, read back through safetensors."""
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name).numel() * f.get_tensor(name).element_size() for name in f.keys()}


@pytest.mark.parametrize("coding", [None, "huffman"])
def test_info_round_trip_and_load_ignores_it(tmp_path, coding):
    model = compressed_mlp()
    x = torch.randn(7, 64)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path, entropy_coding=coding, info=INFO)
    assert read_info(path) == INFO
    loaded = slimkernels.load(path, fresh_mlp())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


def test_no_info_reads_empty(tmp_path):
    path = tmp_path / "m.safetensors"
    slimkernels.save(compressed_mlp(), path)
    assert read_info(path) == {}


def test_info_costs_only_its_json(tmp_path):
    model = compressed_mlp()
    slimkernels.save(model, tmp_path / "a.safetensors")
    slimkernels.save(model, tmp_path / "b.safetensors", info=INFO)
    grown = (tmp_path / "b.safetensors").stat().st_size - (tmp_path / "a.safetensors").stat().st_size
    assert 0 < grown <= len(json.dumps(INFO)) + 64  # the compact JSON, its key, and header padding


@pytest.mark.parametrize("bad, match", [
    ([1, 2], "info must be a dict"),
    ({"x": {1, 2}}, "info must be JSON-able"),
    ({"x": torch.ones(2)}, "info must be JSON-able"),
])
def test_bad_info_is_a_type_error(tmp_path, bad, match):
    with pytest.raises(TypeError, match=match):
        slimkernels.save(compressed_mlp(), tmp_path / "m.safetensors", info=bad)
    assert not (tmp_path / "m.safetensors").exists()


def test_read_info_rejects_foreign_and_corrupt_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.randn(3, 5)}, str(foreign))
    with pytest.raises(ValueError, match="not a slimkernels checkpoint"):
        read_info(foreign)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(torch.randint(0, 256, (300,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_info(garbage)
    with pytest.raises(FileNotFoundError):
        read_info(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("text, match", [("{not json", "corrupt compression info"),
                                         ("[1, 2]", "a JSON object expected")])
def test_read_info_rejects_corrupt_info(tmp_path, text, match):
    path = tmp_path / "m.safetensors"
    slimkernels.save(compressed_mlp(), path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = f.metadata()
    save_file(tensors, str(path), metadata={**metadata, "info": text})
    with pytest.raises(ValueError, match=match):
        read_info(path)


@pytest.mark.parametrize("coding", [None, "huffman"])
def test_inspect_bytes_and_formats(tmp_path, coding):
    model = compressed_mlp(seed=3)
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path, entropy_coding=coding)
    rows = {row["name"]: row for row in inspect_checkpoint(path)}
    assert list(rows) == ["0", "2", "4", "6", "7"]
    stored = file_tensor_bytes(path)
    if coding is None:  # every layer's bytes are its tensors' in the file
        for row in rows.values():
            assert row["bytes"] == sum(stored[t] for t in row["tensors"]) > 0
        assert sorted(t for row in rows.values() for t in row["tensors"]) == sorted(stored)
    else:  # the coded integer tensors are in the blob: all rows together hold the file's tensor bytes
        assert sum(row["bytes"] for row in rows.values()) == sum(stored.values())
    assert rows["0"]["format"] == "w4a16 g32 asym" and rows["0"]["type"] == "QuantLinear"
    assert rows["2"]["format"].startswith("2:4")
    assert rows["4"]["format"].startswith("rank 5") and "w8a16 / w8a16" in rows["4"]["format"]
    assert rows["6"]["format"].startswith("hashed 1/8")
    assert rows["7"]["type"] == "float" and rows["7"]["format"].startswith("float")
    floats = {"0": 96 * 65, "2": 48 * 97, "4": 40 * 49, "6": 24 * 41, "7": 2 * 24}  # weight + bias
    assert {name: row["float_bytes"] for name, row in rows.items()} == {n: 4 * v for n, v in floats.items()}


def test_inspect_tied_weights_and_natural_order(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(*[nn.Linear(6, 6) for _ in range(11)])
    model[10].weight = model[9].weight
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path)
    rows = inspect_checkpoint(path)
    assert [row["name"] for row in rows] == [str(i) for i in range(11)]
    assert rows[10]["bytes"] == 6 * 4  # its bias only: the weight is stored once, as 9.weight
    assert rows[9]["bytes"] == rows[10]["float_bytes"] + 6 * 6 * 4 == math.prod((6, 7)) * 4


def test_inspect_rejects_foreign_file(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.randn(3, 5)}, str(foreign))
    with pytest.raises(ValueError, match="not a slimkernels checkpoint"):
        inspect_checkpoint(foreign)
