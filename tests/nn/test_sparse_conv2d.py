"""SparseConv2d: a drop-in nn.Conv2d over a CSR weight. Conversion (from_float / from_dense) against the
float conv, the dense path below the crossover, checkpoints (only nonzeros stored, rebuilt from a fresh
float model), hostile checkpoints, torch.compile, casts and device moves, the `weight` stand-in."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels.nn import SparseConv2d
from slimkernels.nn import sparse_conv as module_file


def pruned_conv(cin=8, cout=12, k=3, sparsity=0.9, seed=0, **kw) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, **kw)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) >= sparsity)
        conv.weight[0] = 0  # a fully zero output channel
    return conv.eval()


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=2, dilation=2), dict(groups=4, padding=1),
                                dict(padding="same"), dict(padding="valid", bias=False), dict(groups=8, padding=1)],
                         ids=["pad1", "s2p2d2", "groups4", "same", "valid_nobias", "depthwise"])
def test_from_float_matches_the_conv(kw):
    cout = 8 if kw.get("groups") == 8 else 12
    conv = pruned_conv(cout=cout, **kw)
    layer = SparseConv2d.from_float(conv)
    assert not layer.runs_dense()
    x = torch.randn(3, 8, 11, 13)
    with torch.no_grad():
        close(layer(x), conv(x))
        close(layer(x[0]), conv(x[0]))  # unbatched
        y = layer(x.contiguous(memory_format=torch.channels_last))
        assert y.is_contiguous(memory_format=torch.channels_last)
        close(y, conv(x))
        ops_y = slimkernels.ops.sparse_conv2d(x.contiguous(memory_format=torch.channels_last), layer.row_ptr,
                                              layer.col_idx, layer.values, layer.scales, layer.bias,
                                              list(layer.kernel_size), list(layer.stride), list(layer.padding),
                                              list(layer.dilation), layer.groups)
        close(ops_y, conv(x))  # the sparse kernel itself, whatever the layer runs for channels_last
    close(layer.dequantized_weight(), conv.weight.detach())


def test_values_int8_and_half():
    conv = pruned_conv()
    x = torch.randn(2, 8, 9, 9)
    ref = conv(x).detach()
    for values, stored, tol in (("int8", torch.int8, 3e-2), (torch.float16, torch.float16, 3e-3),
                                ("bfloat16", torch.bfloat16, 3e-2)):
        layer = SparseConv2d.from_float(conv, values=values)
        assert layer.values.dtype == stored
        assert (layer.scales is not None) == (values == "int8")
        close(layer(x), ref, tol * ref.abs().max().item())


def test_dense_below_the_crossover():
    conv = pruned_conv(sparsity=0.3)
    layer = SparseConv2d.from_float(conv)
    assert layer.sparsity < module_file.DENSE_BELOW_SPARSITY and layer.runs_dense() and layer.runs_dense(True)
    assert layer.dense_weight is not None and "runs=dense conv2d (NCHW)" in repr(layer)
    assert "dense_weight" not in layer.state_dict()
    x = torch.randn(2, 8, 9, 9)
    close(layer(x), conv(x).detach())
    close(layer(x.contiguous(memory_format=torch.channels_last)), conv(x).detach())
    # sparse for NCHW, dense for channels_last: too few taps per input channel to pay for the transpose
    big = pruned_conv(cin=64, cout=16, k=1, sparsity=0.95)
    sparse = SparseConv2d.from_float(big)
    assert "runs=sparse_conv2d (NCHW), dense conv2d (channels_last)" in repr(sparse)
    x = torch.randn(2, 64, 5, 5)
    close(sparse(x), big(x).detach())
    close(sparse(x.contiguous(memory_format=torch.channels_last)), big(x).detach())
    deep = SparseConv2d.from_float(pruned_conv(cin=8, cout=64, k=3, sparsity=0.96))
    assert not deep.runs_dense() and not deep.runs_dense(True) and deep.dense_weight is None


def test_extra_repr_and_properties():
    layer = SparseConv2d.from_float(pruned_conv(), values="int8")
    text = repr(layer)
    for word in ("pattern=unstructured", "sparsity=", "format=CSR", "values=int8"):
        assert word in text
    assert abs(layer.sparsity - (1 - layer.nnz / (12 * 8 * 9))) < 1e-12
    w = layer.weight
    assert w.shape == (12, 8, 3, 3) and w.dtype == torch.float32 and w.device.type == "cpu"


def test_save_load_round_trip(tmp_path):
    conv = pruned_conv(cin=16, cout=32, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(32, 4, 1))
    x = torch.randn(2, 16, 10, 10)
    model[0] = SparseConv2d.from_float(conv, values="int8")
    expected = model(x).detach()
    path = tmp_path / "sparse.safetensors"
    slimkernels.save(model, path)
    stored = {k: v.numel() for k, v in model.state_dict().items() if k.startswith("0.")}
    assert stored["0.values"] == stored["0.col_idx"] == model[0].nnz < 32 * 16 * 9 * 0.2
    fresh = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 1))
    slimkernels.load(path, fresh)
    assert isinstance(fresh[0], SparseConv2d) and fresh[0].values.dtype == torch.int8
    torch.testing.assert_close(fresh(x), expected)
    slimkernels.load(path, fresh)  # into the converted model: the same layer, kept
    torch.testing.assert_close(fresh(x), expected)


def test_load_refuses_a_mismatched_model(tmp_path):
    model = nn.Sequential(SparseConv2d.from_float(pruned_conv(padding=1)))
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path)
    with pytest.raises(ValueError, match="does not replace"):
        slimkernels.load(path, nn.Sequential(nn.Conv2d(8, 12, 3, padding=0)))


@pytest.mark.parametrize("tensor,corrupt,match", [
    ("col_idx", lambda t: t.fill_(200), "col_idx must lie in"),
    ("col_idx", lambda t: t.copy_(t.flip(0)), "strictly increasing"),
    ("row_ptr", lambda t: t.copy_(t.flip(0)), "row_ptr"),
    ("values", lambda t: t.fill_(float("nan")), "NaN"),
])
def test_hostile_state_is_refused(tensor, corrupt, match):
    layer = SparseConv2d.from_float(pruned_conv())
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    corrupt(state[tensor])
    fresh = SparseConv2d(**{k: v for k, v in layer.config_fields().items()})
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(state)


def test_compile_fullgraph_and_autograd():
    conv = pruned_conv(padding=1)
    layer = SparseConv2d.from_float(conv)
    x = torch.randn(2, 8, 9, 9)
    compiled = torch.compile(layer, fullgraph=True)
    close(compiled(x), conv(x).detach())
    xs, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    layer.bias.requires_grad_()
    layer(xs).square().sum().backward()
    conv(xd).square().sum().backward()
    close(xs.grad, xd.grad, 1e-4)
    close(layer.bias.grad, conv.bias.grad, 1e-4)


def test_casts_keep_the_format():
    layer = SparseConv2d.from_float(pruned_conv(padding=1), values="int8")
    layer.half()
    assert layer.weight.dtype == torch.float16
    assert layer.values.dtype == torch.int8 and layer.scales.dtype == torch.float32 and layer.bias.dtype == torch.float32
    x = torch.randn(1, 8, 7, 7, dtype=torch.float16)
    assert layer(x).dtype == torch.float16
    layer.to("cpu")
    assert layer.values.device.type == "cpu"


def test_empty_layer_from_config_and_bad_arguments():
    layer = SparseConv2d.from_float(pruned_conv())
    cfg = layer.layer_config()
    empty = SparseConv2d.from_layer_config(cfg)
    assert empty.values.shape == layer.values.shape and empty.col_idx.dtype == layer.col_idx.dtype
    with pytest.raises(ValueError, match="groups"):
        SparseConv2d(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="kernel_size"):
        SparseConv2d(4, 4, (3, 3, 3))
    with pytest.raises(ValueError, match="padding"):
        SparseConv2d(4, 4, 3, padding=-1)
    with pytest.raises(ValueError, match="values"):
        SparseConv2d(4, 4, 3, values="int4")
    with pytest.raises(ValueError, match="nnz"):
        SparseConv2d(4, 4, 1, nnz=17)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        SparseConv2d.from_float(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d.from_float(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="asymmetrically"):
        SparseConv2d.from_float(nn.Conv2d(3, 3, 4, padding="same"))
    with pytest.raises(ValueError, match="sparsify_"):
        SparseConv2d.from_float(nn.Conv2d(3, 3, 3), config=object())
    with pytest.raises(ValueError, match="4-D"):
        SparseConv2d.from_dense(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        SparseConv2d.from_dense(torch.full((2, 2, 1, 1), float("inf")))
    with pytest.raises(ValueError, match="expected input"):
        layer(torch.randn(1, 3, 5, 5))


def test_all_zero_layer():
    conv = pruned_conv(sparsity=1.0, padding=1)
    layer = SparseConv2d.from_float(conv)
    assert layer.nnz == 0 and layer.sparsity == 1.0
    x = torch.randn(2, 8, 5, 5)
    close(layer(x), conv(x).detach())
