"""QuantLinear's eager fast path (nn/formats.py FastPath): in eager CPU float32 inference the layers of
every mode call the native kernel straight from forward. It must give the op's exact bits, and step
aside (the op runs) whenever the op is needed: autograd, torch.compile / export / jit tracing, tensor
subclasses and modes, forced backends, other dtypes / devices / layouts, empty inputs, changed buffers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import _native
from slimkernels.nn import QuantLinear
from slimkernels.nn.formats import FastPath

pytestmark = pytest.mark.skipif(_native._C is None, reason="the native CPU extension is not built")
MODES = ["w8a8", "w8a16", "w4a16", "codebook"]
OPS = {"w8a8": "int8_dynamic_linear", "w8a16": "dequant_mm_int8", "w4a16": "dequant_mm_int4", "codebook": "lut_mm"}
CONFIGS = {"w4a16": lambda: slimkernels.Int4WeightOnlyConfig(group_size=32),
           "codebook": lambda: slimkernels.CodebookConfig(bits=3, per="layer")}
ISAS = list(_native._C.supported_isas()) if _native._C is not None else []


def _layer(mode, k=96, n=40, bias=True, seed=0):
    torch.manual_seed(seed)
    return QuantLinear.from_float(nn.Linear(k, n, bias=bias), CONFIGS[mode]() if mode in CONFIGS else mode)


def _op_path(layer, x):
    """The layer's output through the op (the fast path off for this call)."""
    fast = layer.__dict__.get("_fast")
    layer.__dict__["_fast"] = False
    try:
        return layer(x)
    finally:
        layer.__dict__.pop("_fast")
        if fast is not None:
            layer.__dict__["_fast"] = fast


class _Calls:
    """Counts calls of the op the layer's format runs (so a test sees which path ran)."""

    def __init__(self, monkeypatch, mode):
        import slimkernels.nn.formats as formats

        name = OPS[mode]
        original, self.count = getattr(formats.ops, name), 0

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(formats.ops, name, counted)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1, 96), (3, 96), (2, 5, 96), (96,), (9, 96)])
def test_same_bits_as_the_op(mode, isa, shape, monkeypatch):
    for bias in (True, False):
        layer = _layer(mode, bias=bias, seed=len(shape))
        x = torch.randn(shape)
        calls = _Calls(monkeypatch, mode)
        with slimkernels.use_cpu_isa(isa), torch.inference_mode():
            got = layer(x)
            assert calls.count == 0  # the fast path ran
            expected = _op_path(layer, x)
            assert calls.count == 1
        assert got.shape == (*shape[:-1], 40) and got.dtype == torch.float32
        assert torch.equal(got, expected), (mode, isa, shape, bias)
        monkeypatch.undo()


@pytest.mark.parametrize("mode", MODES)
def test_steps_aside_for_what_needs_the_op(mode, monkeypatch):
    layer = _layer(mode)
    x = torch.randn(4, 96)
    calls = _Calls(monkeypatch, mode)
    expected = _op_path(layer, x)
    calls.count = 0
    cases = {
        "float16": lambda: layer(x.half()),
        "bfloat16": lambda: layer(x.bfloat16()),
        "strided": lambda: layer(torch.randn(96, 4).T),
        "empty": lambda: layer(torch.randn(0, 96)),
        "grad": lambda: layer(x.clone().requires_grad_()),
    }
    for what, call in cases.items():
        before = calls.count
        call()
        assert calls.count == before + 1, what
    with slimkernels.use_backend("reference"), torch.inference_mode():
        before = calls.count
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
        assert calls.count == before + 1, "a forced backend"
    with torch.inference_mode():
        before = calls.count
        layer(x)
        assert calls.count == before  # and back on the fast path
    with pytest.raises(ValueError, match="expected input with 96 features"):
        layer(torch.randn(2, 95))
    with pytest.raises(ValueError, match="expected input with 96 features, got shape"):
        layer(torch.randn(()))


def test_autograd_through_bias_and_frozen_scales_take_the_op():
    layer = _layer("w8a8")
    x = torch.randn(3, 96)
    layer.bias.requires_grad_()
    layer(x).sum().backward()
    torch.testing.assert_close(layer.bias.grad, torch.full((40,), 3.0))
    layer.bias.requires_grad_(False)
    layer.weight_scale.requires_grad_()
    with pytest.raises(RuntimeError, match="no gradient for w_scale"):
        layer(x).sum().backward()


def test_tracing_modes_and_subclasses_take_the_op(monkeypatch):
    layer = _layer("w8a8")
    x = torch.randn(2, 96)
    calls = _Calls(monkeypatch, "w8a8")
    traced = torch.jit.trace(layer, x, check_trace=False)
    assert calls.count >= 1 and "slimkernels" in str(traced.graph)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    before = calls.count
    with Seen(), torch.no_grad():
        layer(x)
    with torch.device("cpu"), torch.no_grad():  # a torch function mode
        layer(x)
    assert calls.count == before + 2
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = layer(mode.from_tensor(x))
    assert fake.shape == (2, 40)


def test_compiled_graph_keeps_the_op():
    layer = _layer("w8a8")
    x = torch.randn(3, 96)
    with torch.no_grad():
        expected = layer(x)
        gm = torch.export.export(layer, (x,)).module()
        assert "slimkernels.int8_dynamic_linear" in str(gm.graph)
        assert torch.equal(gm(x), expected)


def test_buffer_changes_rebuild_the_fast_path():
    layer = _layer("w8a8")
    x = torch.randn(2, 96)
    with torch.no_grad():
        layer(x)
        first = layer._fast
        assert isinstance(first, FastPath)
        other = _layer("w8a8", seed=1)
        layer.load_state_dict(other.state_dict())  # repacks: a new packed weight
        assert torch.equal(layer(x), other(x)) and layer._fast is not first
        layer.weight_scale = other.weight_scale * 2
        torch.testing.assert_close(layer(x), _op_path(layer, x), rtol=0, atol=0)
        layer.bias.data = torch.randn(40)  # a storage swapped under the same tensor: read per call
        torch.testing.assert_close(layer(x), _op_path(layer, x), rtol=0, atol=0)
        layer.weight_scale = torch.ones(3)  # wrong shape: no fast path, the op names the problem
        with pytest.raises(ValueError, match="slimkernels.int8_dynamic_linear"):
            layer(x)
        assert layer._fast is False
        layer.weight_scale = other.weight_scale
        layer.to("meta")
        assert layer(x.to("meta")).device.type == "meta"
