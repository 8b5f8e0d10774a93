"""One handler per config type (slimkernels.compress.quantize): each runs its algorithm and builds the
QuantLinear from the packed tensors, exactly as the quant/ functions produce them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkernels import CodebookConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, QuantLinear, ops
from slimkernels.compress import HANDLERS, quantize_layer, register_handler
from slimkernels.quant import codebook as cbk
from slimkernels.quant import gptq, hessian, int4


def _linear(k=128, n=40, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def _hessian(k=128, rows=256, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, k, generator=gen) * torch.linspace(0.2, 3, k)) @ (torch.randn(k, k, generator=gen) / k ** 0.5)
    acc = hessian.HessianAccumulator(k)
    acc.add(x)
    return acc.hessian()


def _same(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("config", [Int8DynamicConfig(), Int8WeightOnlyConfig()], ids=["w8a8", "w8a16"])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_handler(config, bias):
    lin = _linear(bias=bias)
    q = quantize_layer(lin, config)
    qweight, scale = ops.quantize_per_channel_int8(lin.weight.detach().float())
    _same(q, QuantLinear.from_int8(qweight, scale, lin.bias.detach() if bias else None, config.mode))
    assert q.mode == config.mode and (q.bias is None) == (not bias)
    assert HANDLERS[Int8DynamicConfig] is HANDLERS[Int8WeightOnlyConfig]
    _same(quantize_layer(lin, config, hessian=_hessian()), q)  # a Hessian changes nothing for int8


@pytest.mark.parametrize("group_size, symmetric", [(32, False), (-1, True), (128, False)])
def test_int4_handler_rtn(group_size, symmetric):
    lin = _linear()
    q = quantize_layer(lin, Int4WeightOnlyConfig(group_size=group_size, symmetric=symmetric))
    g = 128 if group_size == -1 else group_size
    codes, scales, zeros = int4.quantize_int4_rtn(lin.weight.detach().float(), g, symmetric)
    _same(q, QuantLinear.from_int4(codes, scales, zeros, g, lin.bias.detach()))
    assert q.mode == "w4a16"


@pytest.mark.parametrize("act_order", [False, True])
def test_int4_handler_gptq(act_order):
    lin, h = _linear(), _hessian()
    config = Int4WeightOnlyConfig(group_size=32, method="gptq", act_order=act_order, block_size=64, damp=0.02)
    q = quantize_layer(lin, config, hessian=h)
    parts = gptq.gptq_quantize_int4(lin.weight.detach().float(), h, 32, False, block_size=64, damp=0.02,
                                    act_order=act_order)
    _same(q, QuantLinear.from_int4(*parts, 32, lin.bias.detach()))
    with pytest.raises(ValueError, match="needs the layer's input Hessian"):
        quantize_layer(lin, config)


@pytest.mark.parametrize("kind, bits, per", [("kmeans", 4, "row"), ("kmeans", 2, "layer"), ("nf4", 4, "row"),
                                             ("pow2", 3, "layer")])
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_codebook_handler(kind, bits, per, method):
    lin, h = _linear(), _hessian()
    config = CodebookConfig(bits=bits, codebook=kind, per=per, method=method, seed=3, act_order=True)
    q = quantize_layer(lin, config, hessian=h if method == "gptq" else None)
    w = lin.weight.detach().float()
    codes, codebook = cbk.fit_codebook(w, bits, kind, per, seed=3)
    if method == "gptq":
        codes = gptq.gptq_quantize_codebook(w, h, codebook, act_order=True)
    _same(q, QuantLinear.from_codebook(codes, codebook, lin.bias.detach()))
    assert q.mode == "codebook"


def test_codebook_gptq_without_hessian_fails_before_fitting():
    with pytest.raises(ValueError, match="needs the layer's input Hessian"):
        quantize_layer(_linear(), CodebookConfig(method="gptq"))


def test_from_float_runs_quantize_layer():
    lin, h = _linear(), _hessian()
    for config in (Int8DynamicConfig(), Int4WeightOnlyConfig(group_size=64), CodebookConfig(bits=3)):
        _same(QuantLinear.from_float(lin, config), quantize_layer(lin, config))
    config = Int4WeightOnlyConfig(group_size=64, method="gptq")
    _same(QuantLinear.from_float(lin, config, hessian=h), quantize_layer(lin, config, hessian=h))


def test_subclass_configs_find_their_base_handler_and_registration_overrides():
    class MyInt4(Int4WeightOnlyConfig):
        pass

    lin = _linear()
    _same(quantize_layer(lin, MyInt4(group_size=32)), quantize_layer(lin, Int4WeightOnlyConfig(group_size=32)))

    calls = []

    @register_handler(MyInt4)
    def _mine(module, config, hessian=None):
        calls.append(config)
        return nn.Identity()

    try:
        assert isinstance(quantize_layer(lin, MyInt4()), nn.Identity) and len(calls) == 1
        with pytest.raises(ValueError, match="not a multiple of group_size"):  # the shared rules run first
            quantize_layer(nn.Linear(48, 8), MyInt4(group_size=32))
        assert len(calls) == 1
    finally:
        HANDLERS.pop(MyInt4)
    with pytest.raises(TypeError, match="quantize_layer: no handler for config object"):
        quantize_layer(lin, object())
