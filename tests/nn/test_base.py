"""CompressedModule: the layer-type registry, the `weight` model code reads, repack and validation hooks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkernels import Int4WeightOnlyConfig
from slimkernels.nn import CompressedModule, QuantLinear, layer_type, layer_types
from slimkernels.nn.base import float_dtype


def _linear(k=64, n=32, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias).to(dtype)


def test_registry_lookup_and_unknown_type():
    assert layer_type("QuantLinear") is QuantLinear
    assert layer_types()["QuantLinear"] is QuantLinear and QuantLinear.layer_type_name == "QuantLinear"
    with pytest.raises(ValueError, match=r"unknown compressed layer type 'NoSuchLinear'.*'QuantLinear'"):
        layer_type("NoSuchLinear")
    with pytest.raises(ValueError, match="unknown compressed layer type"):
        layer_type(None)


def test_a_type_name_belongs_to_one_class():
    with pytest.raises(ValueError, match="'QuantLinear' is already registered by slimkernels.nn.quant_linear.QuantLinear"):
        class Impostor(CompressedModule, layer_type="QuantLinear"):
            pass
    assert layer_type("QuantLinear") is QuantLinear

    class Abstract(CompressedModule):  # no layer_type: an intermediate base, not registered
        pass
    assert Abstract not in layer_types().values()


@pytest.mark.parametrize("mode", ["w8a8", "w8a16", "w4a16", "codebook"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weight_reads_like_the_float_weight_it_replaces(mode, dtype):
    lin = _linear(128, 48, dtype=dtype)
    q = QuantLinear.from_float(lin, mode)
    w = q.weight
    assert (w.dtype, w.device, w.shape) == (lin.weight.dtype, lin.weight.device, lin.weight.shape)
    # no [N, K] storage behind it: a zero-stride view of one element
    assert w.stride() == (0, 0) and w.untyped_storage().nbytes() == w.element_size()
    assert not w.requires_grad and torch.isnan(w).all()  # its values are not the weights
    with pytest.raises(RuntimeError):
        w.add_(1)  # and nobody writes into it by accident
    assert q.layer_config()["weight_dtype"] == str(dtype).removeprefix("torch.")
    assert "weight" not in q.state_dict() and "_weight_anchor" not in q.state_dict()


def test_t5_style_weight_access():
    """Hugging Face T5 (T5DenseActDense.forward) casts the hidden states to the output layer's weight
    dtype unless that is int8; with a QuantLinear there it must see the model's float dtype."""

    class DenseActDense(nn.Module):
        def __init__(self):
            super().__init__()
            self.wi, self.wo = nn.Linear(64, 128, bias=False), nn.Linear(128, 64, bias=False)

        def forward(self, hidden_states):
            hidden_states = torch.relu(self.wi(hidden_states))
            if (isinstance(self.wo.weight, torch.Tensor) and hidden_states.dtype != self.wo.weight.dtype
                    and self.wo.weight.dtype != torch.int8):
                hidden_states = hidden_states.to(self.wo.weight.dtype)
            return self.wo(hidden_states)

    torch.manual_seed(0)
    block = DenseActDense().to(torch.bfloat16)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    ref = block(x)
    block.wi, block.wo = (QuantLinear.from_float(m, Int4WeightOnlyConfig(group_size=32)) for m in (block.wi, block.wo))
    assert block.wo.weight.dtype == torch.bfloat16
    out = block(x)
    assert out.dtype == torch.bfloat16
    assert nn.functional.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0) > 0.98


def test_weight_dtype_follows_casts_but_saved_state_keeps_its_dtype():
    q = QuantLinear.from_float(_linear(), "w8a16")
    scale = q.weight_scale.clone()
    q.to(torch.bfloat16)
    assert q.weight.dtype == torch.bfloat16 and q.weight_scale.dtype == torch.float32 and torch.equal(q.weight_scale, scale)
    q.float()
    assert q.weight.dtype == torch.float32 and torch.equal(q.weight_scale, scale)
    q.weight_dtype = "float16"
    assert q.weight.dtype == torch.float16 and q.layer_config()["weight_dtype"] == "float16"
    with pytest.raises(ValueError, match="floating-point"):
        q.weight_dtype = torch.int8
    with pytest.raises(ValueError, match="floating-point"):
        QuantLinear(8, 4, dtype="int8")
    assert float_dtype("torch.bfloat16") is torch.bfloat16


def test_repack_after_construction_load_and_device_move(monkeypatch):
    state = QuantLinear.from_float(_linear(32, 8), "w8a8").state_dict()
    calls = []
    original = QuantLinear.repack
    monkeypatch.setattr(QuantLinear, "repack", lambda self: (calls.append(self.qweight.device.type), original(self)))
    q = QuantLinear(32, 8, mode="w8a8")
    assert calls == ["cpu"] and q.packed_weight is not None  # after construction
    q.load_state_dict(state)
    assert calls == ["cpu", "cpu"]  # after load_state_dict
    q.half()
    assert calls == ["cpu", "cpu"]  # a cast is no move
    q.to("meta")
    assert calls == ["cpu", "cpu", "meta"] and q.packed_weight.device.type == "meta"  # a move repacks


def test_w8a8_packed_weight_is_rebuilt_not_moved():
    q = QuantLinear.from_float(_linear(32, 8), "w8a8")
    assert torch.equal(q.packed_weight, torch.ops.slimkernels.int8_prepack(q.qweight))
    x = torch.randn(3, 32)
    y = q(x)
    q.to("meta").to_empty(device="cpu")  # moved away and back: rebuilt from qweight
    assert "packed_weight" not in q.state_dict()
    q.load_state_dict(QuantLinear.from_float(_linear(32, 8), "w8a8").state_dict())
    torch.testing.assert_close(q(x), y, rtol=0, atol=0)


def test_validation_runs_after_load():
    q = QuantLinear.from_float(_linear(), "w8a16")
    for name in ("weight_scale", "bias"):
        sd = q.state_dict()
        sd[name] = sd[name].clone()
        sd[name][0] = float("inf")
        with pytest.raises(ValueError, match=f"QuantLinear: {name} holds NaN or Inf"):
            QuantLinear(64, 32, mode="w8a16").load_state_dict(sd)


def test_layer_config_round_trip_and_old_configs():
    q = QuantLinear.from_float(_linear(dtype=torch.float16), "w8a8")
    cfg = q.layer_config()
    assert cfg == {"type": "QuantLinear", "mode": "w8a8", "in_features": 64, "out_features": 32, "bias": True,
                   "weight_dtype": "float16"}
    fresh = QuantLinear.from_layer_config(cfg)
    assert fresh.layer_config() == cfg and fresh.weight.dtype == torch.float16
    old = {k: v for k, v in cfg.items() if k != "weight_dtype"}  # written before the weight dtype was recorded
    assert QuantLinear.from_layer_config(old).weight.dtype == torch.float32
    assert QuantLinear.from_layer_config(old, dtype=torch.bfloat16).weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"lacks \['mode'\]"):
        QuantLinear.from_layer_config({"in_features": 4, "out_features": 4, "bias": True})
    with pytest.raises(ValueError, match="has type 'SparseLinear'"):
        QuantLinear.from_layer_config({**cfg, "type": "SparseLinear"})
    with pytest.raises(TypeError, match="takes options"):
        QuantLinear.from_layer_config({**cfg, "group_size": 32})


def test_matches_float():
    cfg = QuantLinear.from_float(_linear(64, 32), "w8a16").layer_config()
    assert QuantLinear.matches_float(_linear(64, 32), cfg)
    assert not QuantLinear.matches_float(_linear(64, 33), cfg)
    assert not QuantLinear.matches_float(_linear(64, 32, bias=False), cfg)
    assert not QuantLinear.matches_float(nn.Conv2d(64, 32, 1), cfg)
