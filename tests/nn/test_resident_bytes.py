"""One copy of every weight in memory: a compressed model's resident bytes (the unique storages of all the
tensors its modules hold: parameters, buffers, plain tensor attributes) equal its saved bytes (the format's
size, what slimkernels.save writes) within a little per-layer metadata. W8A8 holds its int8 weight only
in the packed layout the kernels read and writes the canonical [N, K] layout when saved."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import ops
from slimkernels.compress import module_bytes
from slimkernels.nn import CompressedModule, QuantLinear, SparseLinear
from slimkernels.quant.packing import int8_packed_shape, pack_int8_plain

CONFIGS = {
    "w8a8": lambda: slimkernels.Int8DynamicConfig(),
    "w8a16": lambda: slimkernels.Int8WeightOnlyConfig(),
    "int4-g32": lambda: slimkernels.Int4WeightOnlyConfig(group_size=32),
    "int4-sym": lambda: slimkernels.Int4WeightOnlyConfig(group_size=32, symmetric=True),
    "codebook4": lambda: slimkernels.CodebookConfig(bits=4),
    "csr": lambda: slimkernels.SparsityConfig(0.8),
    "csr-int8": lambda: slimkernels.SparsityConfig(0.8, values="int8"),
    "2:4": lambda: slimkernels.SparsityConfig(pattern="2:4"),
    "low-rank-w8a8": lambda: slimkernels.LowRankConfig(rank=16, factors=slimkernels.Int8DynamicConfig()),
    "low-rank-float": lambda: slimkernels.LowRankConfig(rank=16),
    "hashed": lambda: slimkernels.HashingConfig(compression=1 / 4),
}


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the unique storages of every tensor the model's modules hold."""
    storages = {}
    for module in model.modules():
        held = [*module._parameters.values(), *module._buffers.values()]
        for value in vars(module).values():
            held += [value] if isinstance(value, torch.Tensor) else list(getattr(value, "tensors", ()) or ())
        for t in held:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(96, 160), nn.ReLU(), nn.Linear(160, 64), nn.ReLU(), nn.Linear(64, 48))


def _compress(model, name):
    config = CONFIGS[name]()
    if isinstance(config, slimkernels.SparsityConfig):
        slimkernels.sparsify_(model, config, progress=False)
        for layer in model.modules():
            if isinstance(layer, SparseLinear):
                layer.dense_from_m = None  # the sparse path (below the crossover a dense copy is kept: a speed policy)
    elif isinstance(config, slimkernels.LowRankConfig):
        slimkernels.low_rank_(model, config, progress=False)
    elif isinstance(config, slimkernels.HashingConfig):
        slimkernels.hash_(model, config, progress=False)
    else:
        slimkernels.quantize_(model, config, progress=False)
    assert any(isinstance(m, CompressedModule) for m in model.modules())
    return model


def _metadata_allowance(model) -> int:
    """The per-layer extras: the NaN weight stand-in, and for W8A8 the packed layout's column sums
    (4 bytes per output channel, rounded up to 16 channels)."""
    extra = 0
    for m in model.modules():
        if isinstance(m, CompressedModule):
            extra += 4
        if isinstance(m, QuantLinear) and m.mode == "w8a8":
            n, k = m.out_features, m.in_features
            extra += int8_packed_shape("cpu", n, k)[0] - n * k
    return extra


@pytest.mark.parametrize("name", CONFIGS)
def test_resident_bytes_are_the_saved_bytes(name):
    model = _compress(_model(), name)
    saved, resident = module_bytes(model), resident_bytes(model)
    assert saved <= resident <= saved + _metadata_allowance(model), (name, saved, resident)
    x = torch.randn(3, 96)
    with torch.inference_mode():
        model(x)  # a forward (and its fast path) adds nothing that stays
    assert resident_bytes(model) == resident


def test_w8a8_holds_its_weight_once():
    layer = QuantLinear.from_float(nn.Linear(768, 768), "w8a8")
    assert set(layer._buffers) == {"weight_scale", "bias", "_weight_anchor"} and "qweight" not in vars(layer)
    assert vars(layer)["packed_weight"].shape == int8_packed_shape("cpu", 768, 768)  # a plain attribute
    weight = 768 * 768
    # before: qweight (N*K) + packed_weight (N*K + 4N); FBGEMM holds N*K
    assert resident_bytes(layer) == weight + 4 * 768 + 4 * 768 + 4 * 768 + 4
    assert list(layer.state_dict()) == ["qweight", "weight_scale", "bias"]  # the canonical layout is what is saved


@pytest.mark.parametrize("n,k", [(1, 1), (17, 33), (33, 13), (48, 100)])
def test_w8a8_saves_reads_and_assigns_the_canonical_weight(n, k):
    gen = torch.Generator().manual_seed(n * 31 + k)
    q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    scale = torch.rand(n, generator=gen) / 100 + 1e-3
    layer = QuantLinear.from_int8(q, scale, torch.randn(n, generator=gen))
    assert torch.equal(layer.state_dict()["qweight"], q) and torch.equal(layer.qweight, q)
    torch.testing.assert_close(layer.dequantized_weight(), q.float() * scale[:, None], rtol=0, atol=0)
    other = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    layer.qweight = other  # assignment packs it
    assert torch.equal(layer.qweight, other) and torch.equal(layer.packed_weight, ops.int8_prepack(other))
    with pytest.raises(ValueError, match=r"QuantLinear: qweight must be torch.int8 \(%d, %d\)" % (n, k)):
        layer.qweight = other.to(torch.int16)
    with pytest.raises(ValueError, match=r"QuantLinear: qweight must be torch.int8"):
        layer.qweight = torch.zeros(n + 1, k, dtype=torch.int8)


def test_w8a8_load_state_dict_checks_and_assign():
    source = QuantLinear.from_float(nn.Linear(40, 24), "w8a8")
    x = torch.randn(5, 40)
    state = source.state_dict()
    target = QuantLinear(40, 24, mode="w8a8")
    target.load_state_dict(state)
    assert torch.equal(target(x), source(x)) and torch.equal(target.qweight, source.qweight)

    missing = target.load_state_dict({k: v for k, v in state.items() if k != "qweight"}, strict=False)
    assert missing.missing_keys == ["qweight"] and missing.unexpected_keys == []  # as torch reports any buffer
    with pytest.raises(RuntimeError, match="Missing key.*qweight"):
        target.load_state_dict({k: v for k, v in state.items() if k != "qweight"})
    with pytest.raises(RuntimeError, match=r"size mismatch for qweight: copying torch.int8 \(24, 41\)"):
        target.load_state_dict({**state, "qweight": torch.zeros(24, 41, dtype=torch.int8)})
    with pytest.raises(RuntimeError, match=r"size mismatch for qweight: copying torch.float32"):
        target.load_state_dict({**state, "qweight": state["qweight"].float()})
    with pytest.raises(RuntimeError, match="Unexpected key.*packed_weight"):
        target.load_state_dict({**state, "packed_weight": source.packed_weight})

    # built on the meta device, filled with assign=True (transformers' from_pretrained does this)
    meta = QuantLinear(40, 24, mode="w8a8", device="meta")
    meta.load_state_dict(state, assign=True)
    assert meta.packed_weight.device.type == "cpu" and torch.equal(meta.packed_weight, source.packed_weight)
    assert torch.equal(meta.qweight, source.qweight)


def test_w8a8_save_load_round_trip_bit_exact(tmp_path):
    model = _compress(_model(), "w8a8")
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path)
    restored = slimkernels.load(path, _model(seed=1))
    x = torch.randn(7, 96)
    assert torch.equal(restored(x), model(x))
    for (ka, a), (kb, b) in zip(model.state_dict().items(), restored.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    assert resident_bytes(restored) == resident_bytes(model)
    slimkernels.save(model, tmp_path / "h.safetensors", entropy_coding="huffman")  # codes the int8 weights too
    again = slimkernels.load(tmp_path / "h.safetensors", _model(seed=2))
    assert torch.equal(again(x), model(x))


def test_w8a8_layout_follows_the_device():
    layer = QuantLinear.from_float(nn.Linear(37, 21), "w8a8")
    q, x = layer.qweight, torch.randn(4, 37)
    y = layer(x)
    # a packed weight left in another device's layout (as a move leaves it) is relaid out by repack
    vars(layer)["packed_weight"] = pack_int8_plain(q)
    layer.repack()
    assert layer.packed_weight.shape == int8_packed_shape("cpu", 21, 37) and torch.equal(layer.qweight, q)
    assert torch.equal(layer(x), y)
    layer.to("meta")
    assert layer.packed_weight.shape == int8_packed_shape("meta", 21, 37)
    layer.to_empty(device="cpu")
    assert layer.packed_weight.shape == int8_packed_shape("cpu", 21, 37)
    layer.half()  # a cast keeps the int8 weight
    assert layer.packed_weight.dtype == torch.int8 and layer.weight.dtype == torch.float16


def test_copies_and_pickles_keep_the_weight():
    layer = QuantLinear.from_float(nn.Linear(40, 24), "w8a8")
    x = torch.randn(2, 40)
    y = layer(x)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert torch.equal(twin(x), y) and torch.equal(twin.qweight, layer.qweight)
        assert twin.packed_weight.data_ptr() != layer.packed_weight.data_ptr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_w8a8_moves_to_cuda_and_back():
    layer = QuantLinear.from_float(nn.Linear(40, 24), "w8a8")
    q, x = layer.qweight, torch.randn(3, 40)
    layer.cuda()
    assert layer.packed_weight.shape == int8_packed_shape("cuda", 24, 40) and torch.equal(layer.qweight.cpu(), q)
    torch.testing.assert_close(layer(x.cuda()).cpu(), layer.cpu()(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.qweight, q)
