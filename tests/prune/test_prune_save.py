"""slimkernels.save / load of structurally pruned models: the recorded shapes, loading a pruned checkpoint
into a fresh model of the original architecture, and records that are corrupt or belong elsewhere."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import slimkernels


def small_cnn(width: int = 8, hidden: int = 12, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, groups=width), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU(),
        nn.Linear(hidden, 5),
    ).eval()


def metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_save_records_every_module_shape_and_size(tmp_path):
    model = small_cnn()
    slimkernels.save(model, tmp_path / "m.safetensors")
    record = json.loads(metadata(tmp_path / "m.safetensors")["modules"])
    assert record["0"]["tensors"] == {"weight": [8, 3, 3, 3], "bias": [8]}
    assert record["0"]["attrs"]["out_channels"] == 8 and record["3"]["attrs"]["groups"] == 8
    assert record["1"]["tensors"]["running_mean"] == [8] and record["1"]["attrs"]["num_features"] == 8
    assert record["9"]["attrs"]["normalized_shape"] == [12]
    assert "2" not in record  # a ReLU has no tensor and no size


def test_unpruned_checkpoints_load_as_before(tmp_path):
    model = small_cnn()
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path)
    fresh = slimkernels.load(path, small_cnn(seed=1))
    x = torch.randn(2, 3, 7, 9)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def rewrite_metadata(src, dst, **changes):
    meta = {**metadata(src), **changes}
    save_file(load_file(str(src)), str(dst), metadata=meta)


@pytest.mark.parametrize("record, match", [
    ("[1, 2]", "corrupt module shape record .expected a mapping"),
    ('{"0": {"tensors": {"weight": [8, -3]}}}', "corrupt module shape record for '0'"),
    ('{"0": {"tensors": {"weight": "8x3"}}}', "corrupt module shape record for '0'"),
    ('{"0": {"shapes": {}}}', "corrupt module shape record for '0'"),
    ('{"0": {"attrs": {"out_channels": 2.5}}}', "corrupt module shape record for '0'"),
    ('{"0": {"tensors": {}, "compressed": "yes"}}', "corrupt module shape record for '0'"),
    ("{not json", "corrupt slimkernels metadata"),
])
def test_corrupt_shape_records_are_value_errors(tmp_path, record, match):
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    slimkernels.save(small_cnn(), good)
    rewrite_metadata(good, bad, modules=record)
    with pytest.raises(ValueError, match=match):
        slimkernels.load(bad, small_cnn())


def test_a_wider_checkpoint_is_the_usual_shape_error(tmp_path):
    path = tmp_path / "wide.safetensors"
    slimkernels.save(small_cnn(width=10), path)
    with pytest.raises(ValueError, match=r"tensor '0.weight' is torch.float32 \(10, 3, 3, 3\) in the checkpoint"):
        slimkernels.load(path, small_cnn(width=8))


def test_checkpoints_without_a_shape_record_still_load(tmp_path):
    model, path, old = small_cnn(), tmp_path / "m.safetensors", tmp_path / "old.safetensors"
    slimkernels.save(model, path)
    meta = metadata(path)
    del meta["modules"]
    save_file(load_file(str(path)), str(old), metadata=meta)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(slimkernels.load(old, small_cnn(seed=3))(x), model(x), rtol=0, atol=0)
