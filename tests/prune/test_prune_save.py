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


# ---- pruned checkpoints into fresh models of the original architecture ------------------------------
def roundtrip(tmp_path, pruned: nn.Module, fresh: nn.Module, inputs: dict | tuple) -> nn.Module:
    path = tmp_path / "pruned.safetensors"
    slimkernels.save(pruned, path)
    loaded = slimkernels.load(path, fresh).eval()
    args, kwargs = (inputs, {}) if isinstance(inputs, tuple) else ((), inputs)
    with torch.no_grad():
        expected, got = pruned(*args, **kwargs), loaded(*args, **kwargs)
    expected = expected if isinstance(expected, torch.Tensor) else expected[0]
    got = got if isinstance(got, torch.Tensor) else got[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    return loaded


def test_pruned_cnn_loads_into_a_fresh_model(tmp_path, plain):
    model, x = small_cnn(), torch.randn(2, 3, 7, 9)
    slimkernels.prune_(model, slimkernels.StructuredPruningConfig(0.5), x, progress=False)
    assert model[0].out_channels == 4 and model[8].out_features == 12  # the LayerNorm keeps fc's width
    loaded = roundtrip(tmp_path, model, small_cnn(seed=7), (x,))
    plain(loaded)
    assert (loaded[3].in_channels, loaded[3].out_channels, loaded[3].groups) == (4, 4, 4)
    assert loaded[4].num_features == 4 and loaded[8].in_features == 4


def test_pruned_then_quantized_loads_into_the_float_model(tmp_path):
    model, x = small_cnn(), torch.randn(2, 3, 7, 9)
    slimkernels.prune_(model, slimkernels.StructuredPruningConfig(0.5), x, progress=False)
    slimkernels.quantize_(model, slimkernels.Int8DynamicConfig(), progress=False)
    loaded = roundtrip(tmp_path, model, small_cnn(seed=3), (x,))
    assert isinstance(loaded[8], slimkernels.QuantLinear) and loaded[8].in_features == 4


def test_pruned_checkpoint_into_another_model_is_a_clear_error(tmp_path):
    model, x = small_cnn(), torch.randn(1, 3, 5, 5)
    slimkernels.prune_(model, slimkernels.StructuredPruningConfig(0.5), x, progress=False)
    path = tmp_path / "pruned.safetensors"
    slimkernels.save(model, path)
    other = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match=r"tensor '0.weight' is torch.float32 \(4, 3, 3, 3\) in the checkpoint but the model expects"):
        slimkernels.load(path, other)


def test_pruned_resnet18_loads_into_a_fresh_one(tmp_path, torchvision, plain):
    torch.manual_seed(0)
    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    slimkernels.prune_(model, slimkernels.StructuredPruningConfig(0.4, scope="global"), x, progress=False)
    plain(roundtrip(tmp_path, model, torchvision.models.resnet18(num_classes=10), (x,)))


def test_pruned_bert_heads_and_neurons_load_into_a_fresh_one(tmp_path, transformers, plain):
    def bert():
        config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=48, attn_implementation="eager")
        return transformers.BertModel(config).eval()

    torch.manual_seed(0)
    model, batch = bert(), {"input_ids": torch.randint(0, 100, (2, 6))}
    slimkernels.prune_(model, slimkernels.StructuredPruningConfig(0.5), batch, progress=False)
    loaded = roundtrip(tmp_path, model, bert(), batch)
    plain(loaded)
    attention = loaded.encoder.layer[1].attention.self
    assert (attention.num_attention_heads, attention.all_head_size) == (2, 16)
    assert loaded.encoder.layer[1].intermediate.dense.out_features == 24
