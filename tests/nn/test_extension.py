"""New module types and weight formats plug in without an edit of serialization.py or QuantLinear:
a toy format and two toy layer types (one replacing nn.Conv2d), registered here, round-trip through
slimkernels.save / load; and the checks load makes with the registry."""
from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import slimkernels
from slimkernels import CodebookConfig, Int4WeightOnlyConfig, QuantLinear
from slimkernels.compress import serialization
from slimkernels.nn import CompressedModule, WeightFormat, layer_type, register_format
from slimkernels.nn.formats import BufferSpec


# ---- a toy weight format: float16 weights --------------------------------------------------------------
@register_format
class ToyHalfWeights(WeightFormat):
    mode = "toy-fp16"
    description = "float16 weights (a test format)"

    def buffers(self):
        return {"qweight": BufferSpec((self.out_features, self.in_features), torch.float16)}

    def encode(self, w):
        return {"qweight": w.half()}

    def forward(self, module, x):
        return F.linear(x, module.qweight.to(x.dtype), None if module.bias is None else module.bias.to(x.dtype))

    def dequantize(self, module):
        return module.qweight.float()

    def round(self, w, state):
        return (w.half(),)

    def dequantize_parts(self, parts):
        return parts[0].float()


# ---- a toy layer type: low rank, trainable factors ---------------------------------------------------------
class ToyLowRankLinear(CompressedModule, layer_type="tests.ToyLowRankLinear"):
    required_config_keys = ("in_features", "out_features", "rank", "bias")

    def __init__(self, in_features, out_features, rank, bias=True, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.up = nn.Parameter(torch.zeros(out_features, rank, device=device))
        self.down = nn.Parameter(torch.zeros(rank, in_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_float(cls, linear, rank):
        u, s, vh = torch.linalg.svd(linear.weight.detach().float(), full_matrices=False)
        module = cls(linear.in_features, linear.out_features, rank, linear.bias is not None, dtype=linear.weight.dtype)
        with torch.no_grad():
            module.up.copy_(u[:, :rank] * s[:rank])
            module.down.copy_(vh[:rank])
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    @classmethod
    def matches_float(cls, module, cfg):
        return type(module) is nn.Linear and (module.in_features, module.out_features, module.bias is not None) == (
            cfg["in_features"], cfg["out_features"], cfg["bias"])

    def config_fields(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.bias is not None}

    @property
    def weight_shape(self):
        return (self.out_features, self.in_features)

    def dequantized_weight(self):
        return (self.up @ self.down).float()

    def forward(self, x):
        return F.linear(F.linear(x, self.down.to(x.dtype)), self.up.to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))


# ---- a toy layer type replacing nn.Conv2d: int8 per-output-channel weights ------------------------------------
class ToyInt8Conv2d(CompressedModule, layer_type="tests.ToyInt8Conv2d"):
    required_config_keys = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "bias")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = list(kernel_size), list(stride), list(padding)
        self.register_buffer("qweight", torch.zeros(out_channels, in_channels, *kernel_size, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_channels, device=device))
        self.register_buffer("bias", torch.zeros(out_channels, device=device) if bias else None)
        self.repacks = 0

    @classmethod
    def from_float(cls, conv, config=None):
        w = conv.weight.detach().float()
        scale = w.flatten(1).abs().amax(1).clamp_min(1e-12) / 127
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.bias is not None, dtype=conv.weight.dtype)
        module.qweight.copy_(torch.round(w / scale[:, None, None, None]).to(torch.int8))
        module.weight_scale.copy_(scale)
        if conv.bias is not None:
            module.bias.copy_(conv.bias.detach())
        return module

    @classmethod
    def matches_float(cls, module, cfg):
        return type(module) is nn.Conv2d and module.groups == 1 and (
            module.in_channels, module.out_channels, list(module.kernel_size), list(module.stride),
            list(module.padding), module.bias is not None) == tuple(cfg[k] for k in cls.required_config_keys)

    def config_fields(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "kernel_size": self.kernel_size,
                "stride": self.stride, "padding": self.padding, "bias": self.bias is not None}

    @property
    def weight_shape(self):
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def repack(self):
        self.repacks = getattr(self, "repacks", 0) + 1

    def validate_state(self):
        super().validate_state()
        if bool((self.weight_scale <= 0).any()):
            raise ValueError("ToyInt8Conv2d: weight_scale must be positive")

    def dequantized_weight(self):
        return self.qweight.float() * self.weight_scale[:, None, None, None]

    def forward(self, x):
        w = self.dequantized_weight().to(x.dtype)
        return F.conv2d(x, w, None if self.bias is None else self.bias.to(x.dtype), self.stride, self.padding)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 64, bias=False)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(h)))))


def _net(seed=0):
    torch.manual_seed(seed)
    return Net().eval()


def _compressed(seed=0):
    net = _net(seed)
    net.conv = ToyInt8Conv2d.from_float(net.conv)
    net.fc1 = QuantLinear.from_parts("toy-fp16", net.fc1.weight.detach(), bias=net.fc1.bias.detach())
    net.fc2 = ToyLowRankLinear.from_float(net.fc2, rank=8)
    net.head = QuantLinear.from_float(net.head, CodebookConfig(bits=3))
    return net


def test_serialization_names_no_layer_type():
    source = inspect.getsource(serialization)
    assert "QuantLinear" not in source and "nn.Linear" not in source and "Conv2d" not in source


def test_new_format_and_layer_types_round_trip(tmp_path):
    net = _compressed()
    x = torch.randn(2, 3, 4, 4)
    y = net(x)
    path = tmp_path / "toy.safetensors"
    slimkernels.save(net, path)
    with safe_open(str(path), framework="pt") as f:
        layers = json.loads(f.metadata()["layers"])
    assert {name: cfg["type"] for name, cfg in layers.items()} == {
        "conv": "tests.ToyInt8Conv2d", "fc1": "QuantLinear", "fc2": "tests.ToyLowRankLinear", "head": "QuantLinear"}
    assert layers["fc1"]["mode"] == "toy-fp16" and layers["conv"]["kernel_size"] == [3, 3]

    restored = slimkernels.load(path, _net(seed=1))  # other float weights: every tensor is overwritten
    assert [type(m) for m in (restored.conv, restored.fc1, restored.fc2, restored.head)] == [
        ToyInt8Conv2d, QuantLinear, ToyLowRankLinear, QuantLinear]
    assert restored.conv.repacks == 2  # after construction and after load_state_dict
    assert restored.conv.weight.shape == (8, 3, 3, 3) and restored.fc1.format.summary() == "toy-fp16"
    torch.testing.assert_close(restored(x), y, rtol=0, atol=0)

    # the format's buffers keep their dtype through casts; the weight dtype follows them
    restored.double()
    assert restored.fc1.qweight.dtype == torch.float16 and restored.fc1.weight.dtype == torch.float64
    assert restored.fc2.up.dtype == torch.float64  # a parameter, not saved format state: it is cast

    # an already converted model loads in place, keeping its modules
    again = _compressed(seed=2)
    conv = again.conv
    slimkernels.load(path, again)
    assert again.conv is conv
    torch.testing.assert_close(again(x), y, rtol=0, atol=0)


def test_load_checks_use_the_registry(tmp_path):
    net = _compressed()
    path = tmp_path / "toy.safetensors"
    slimkernels.save(net, path)

    def rewrite(edit, name="edited"):
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata())
        layers = json.loads(meta["layers"])
        edit(layers)
        meta["layers"] = json.dumps(layers)
        out = tmp_path / f"{name}.safetensors"
        save_file(load_file(str(path)), str(out), metadata=meta)
        return out

    bad = rewrite(lambda layers: layers["fc2"].update(type="NoSuchLinear"))
    with pytest.raises(ValueError, match=r"'fc2' has unknown compressed layer type 'NoSuchLinear'; known types: .*'tests.ToyLowRankLinear'"):
        slimkernels.load(bad, _net())
    bad = rewrite(lambda layers: layers["conv"].pop("stride"))
    with pytest.raises(ValueError, match=r"'conv' has a malformed config: .*lacks \['stride'\]"):
        slimkernels.load(bad, _net())
    bad = rewrite(lambda layers: layers.update(conv=["not", "a", "dict"]))
    with pytest.raises(ValueError, match="'conv' has a malformed config"):
        slimkernels.load(bad, _net())
    bad = rewrite(lambda layers: layers["head"].update(mode="w2a2"))
    with pytest.raises(ValueError, match=r"'head' has an invalid config .*mode must be one of"):
        slimkernels.load(bad, _net())

    class ConvIsLinear(Net):
        def __init__(self):
            super().__init__()
            self.conv = nn.Linear(3, 8)

    with pytest.raises(ValueError, match=r"'conv' is a tests.ToyInt8Conv2d .* but the model has Linear\(.*\) there"):
        slimkernels.load(path, ConvIsLinear())

    other = _net()
    other.head = QuantLinear.from_float(other.head, "w8a16")
    with pytest.raises(ValueError, match=r"'head' is .*'codebook'.* but the model has a QuantLinear .*'w8a16'.* there"):
        slimkernels.load(path, other)

    sd_only = rewrite(lambda layers: layers["conv"].update(padding=[0, 0]))  # config says padding 0, model 1
    with pytest.raises(ValueError, match="'conv' is a tests.ToyInt8Conv2d"):
        slimkernels.load(sd_only, _net())


def test_layer_validation_runs_on_load(tmp_path):
    net = _compressed()
    with torch.no_grad():
        net.conv.weight_scale[0] = -1.0
    path = tmp_path / "neg.safetensors"
    slimkernels.save(net, path)
    with pytest.raises(ValueError, match="weight_scale must be positive"):
        slimkernels.load(path, _net())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_old_checkpoint_without_weight_dtype(tmp_path, dtype):
    """Checkpoints written before the weight dtype was recorded: the float module's dtype is used."""
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).to(dtype)
    slimkernels.quantize_(model, Int4WeightOnlyConfig(group_size=32), progress=False)
    path = tmp_path / "new.safetensors"
    slimkernels.save(model, path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    layers = json.loads(meta["layers"])
    for cfg in layers.values():
        cfg.pop("weight_dtype")
    assert layers["0"] == {"type": "QuantLinear", "mode": "w4a16", "in_features": 64, "out_features": 32, "bias": True,
                           "group_size": 32, "symmetric": False}
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata={**meta, "layers": json.dumps(layers)})
    fresh = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).to(dtype)
    slimkernels.load(old, fresh)
    assert fresh[0].weight.dtype == dtype and fresh[0].layer_config()["weight_dtype"] == str(dtype)[6:]
    x = torch.randn(3, 64, dtype=dtype)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_registered_types_are_looked_up_by_name():
    assert layer_type("tests.ToyInt8Conv2d") is ToyInt8Conv2d and layer_type("tests.ToyLowRankLinear") is ToyLowRankLinear
