"""SparseLinear as a drop-in nn.Linear: equivalence for every format and value dtype, the dense fallback
and its policy, state and checkpoints (only nonzeros stored; corrupt files refused), casts, compile,
autograd, the `weight` stand-in, bad input."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import slimkernels
from slimkernels import backends
from slimkernels.nn import SparseLinear, layer_type
from slimkernels.nn import sparse_linear as sl
from slimkernels.quant import sparse as layout
from slimkernels.testing import DEVICES, Case, linear_bound

N, K = 16, 24  # divisible by 8 (4:8) and by the block shapes below, both ways (models chain K -> N -> K)
FORMATS = [("csr", None), ("bsr", (4, 1)), ("bsr", (2, 4)), ("2:4", None), ("4:8", None)]
FORMAT_IDS = ["csr", "bsr4x1", "bsr2x4", "2:4", "4:8"]
VALUES = ["float32", "float16", "bfloat16", "int8"]
X_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def pruned_weight(n, k, fmt, block=None, sparsity=0.75, values="float32", seed=0, device="cpu"):
    """A random weight [n, k] pruned to `fmt` (zeros = pruned) with an all-zero row; float values are
    made representable in `values` so the layer holds exactly this weight."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    score = torch.rand(n, k, generator=gen)
    if fmt == "csr":
        keep = score >= sparsity
    elif fmt == "bsr":
        bn, bk = block
        keep = (torch.rand(n // bn, k // bk, generator=gen) >= sparsity).repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    else:
        keep = layout.nm_mask(w, sl.NM_GROUP[fmt], score=score)
    w = w * keep
    w[1] = 0  # an all-zero output row
    if values != "int8":
        w = w.to(getattr(torch, values)).float()
    return w.to(device)


def make_layer(fmt, block, values="float32", bias=True, seed=0, device="cpu", **kw):
    w = pruned_weight(N, K, fmt, block, values=values, seed=seed, device=device, **kw)
    b = torch.randn(N, generator=torch.Generator().manual_seed(seed + 1)).to(device) if bias else None
    return SparseLinear.from_dense(w, b, format=fmt, values=values, block=block), w, b


def check_close(got, ref, x, w, device="cpu", what=""):
    """Within the CPU "torch" bound of slimkernels.testing (float32 sums in any order, plus rounding in
    x's dtype for half inputs), which covers every implementation of the sparse ops and F.linear."""
    assert got.dtype == ref.dtype and got.shape == ref.shape, what
    x2, g2, r2 = x.reshape(-1, x.shape[-1]), got.reshape(-1, got.shape[-1]), ref.reshape(-1, ref.shape[-1])
    bound = linear_bound(r2, x2, w, Case(device, "torch"))
    err = (g2.detach().cpu().double() - r2.detach().cpu().double()).abs()
    assert bool((err <= bound).all()), f"{what}: worst error / bound {(err / bound).max().item():.3g}"


def reference(x, w, b):
    """nn.Linear with weight w (float32), output rounded once to x.dtype."""
    y = F.linear(x.float(), w.float(), None if b is None else b.float())
    return y.to(x.dtype)


# ---- equivalence ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_dtype", X_DTYPES, ids=str)
@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_matches_pruned_linear(device, fmt, block, values, x_dtype):
    layer, w, b = make_layer(fmt, block, values, device=device)
    layer.dense_from_m = None  # the sparse kernels at every M
    x = torch.randn(2, 3, K, device=device).to(x_dtype)
    with torch.no_grad():
        got = layer(x)
    assert got.dtype == x_dtype and got.shape == (2, 3, N)
    stored = layer.dequantized_weight()
    if values == "int8":
        # The spec of int8 values: w ~ value * scale[n], rounding to nearest (error <= scale / 2), zeros kept.
        assert bool((stored[w == 0] == 0).all())
        assert bool(((stored - w).abs() <= layer.scales[:, None] / 2 * 1.0001).all())
    else:
        assert torch.equal(stored, w)
    check_close(got, reference(x, stored, b), x, stored, device, f"{fmt} {values}")


@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_int8_values_close_to_float_layer(fmt, block):
    """int8 values against the float pruned layer: |dy| <= |x| @ (scale / 2 on the kept entries).T."""
    layer, w, b = make_layer(fmt, block, "int8")
    x = torch.randn(5, K)
    bound = x.abs() @ ((w != 0) * layer.scales[:, None] / 2).T * 1.0001 + 1e-5
    assert bool(((layer(x) - reference(x, w, b)).abs() <= bound).all())


@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_leading_shapes_and_empty_batches(fmt, block):
    layer, w, b = make_layer(fmt, block)
    for dense_from_m in (None, 2):  # sparse kernels only; dense from M = 2
        layer.dense_from_m = dense_from_m
        for shape in [(K,), (1, K), (5, K), (3, 4, 5, K), (0, K), (2, 0, K)]:
            x = torch.randn(shape)
            y = layer(x)
            assert y.shape == (*shape[:-1], N)
            check_close(y, reference(x, w, b), x, w, what=f"{fmt} {shape}")


def test_odd_shapes_csr():
    w = pruned_weight(7, 13, "csr", sparsity=0.6)
    b = torch.randn(7)
    layer = SparseLinear.from_dense(w, b)
    layer.dense_from_m = None
    x = torch.randn(3, 13)
    check_close(layer(x), reference(x, w, b), x, w)


def test_all_zero_layer_and_no_bias():
    w = torch.zeros(6, 8)
    layer = SparseLinear.from_dense(w)
    assert layer.nnz == 0 and layer.sparsity == 1.0 and layer.values.numel() == 0
    assert torch.equal(layer(torch.randn(3, 8)), torch.zeros(3, 6))


def test_from_float_packs_the_layer_zeros():
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.copy_(pruned_weight(N, K, "csr"))
    layer = SparseLinear.from_float(lin)
    assert layer.format == "csr" and layer.values.dtype == torch.float32 and layer.weight_dtype == torch.float32
    x = torch.randn(4, K)
    check_close(layer(x), lin(x).detach(), x, lin.weight)


def test_from_float_with_a_config_delegates_to_the_pass(monkeypatch):
    try:
        from slimkernels.compress.config import SparsityConfig
        from slimkernels.compress import sparsify  # noqa: F401
    except ImportError:
        pass
    else:
        lin = nn.Linear(K, N).to(torch.bfloat16)
        layer = SparseLinear.from_float(lin, SparsityConfig(sparsity=0.5, pattern="2:4"))
        assert isinstance(layer, SparseLinear) and layer.format == "2:4" and layer.weight_dtype == torch.bfloat16
    monkeypatch.setitem(sys.modules, "slimkernels.compress.sparsify", None)  # a version without the pass
    with pytest.raises(NotImplementedError, match="compress.sparsify"):
        SparseLinear.from_float(nn.Linear(8, 4), config=object())


# ---- the dense fallback and its policy --------------------------------------------------------------
@pytest.mark.parametrize("values", ["float32", "int8"])
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_dense_fallback_gives_the_sparse_numbers(fmt, block, values):
    layer, w, b = make_layer(fmt, block, values)
    x = torch.randn(6, K)
    layer.dense_from_m = None
    sparse = layer(x)
    assert layer._dense_weight is None
    layer.dense_from_m = 4  # unpacked per call at M >= 4
    assert layer._dense_weight is None
    torch.testing.assert_close(layer(x), sparse, rtol=1e-5, atol=1e-5)
    layer.dense_from_m = 1  # always dense: the dense weight is kept
    assert layer._dense_weight is not None and layer._dense_weight.dtype == torch.float32
    torch.testing.assert_close(layer(x), sparse, rtol=1e-5, atol=1e-5)
    layer.dense_from_m = "auto"
    assert layer.dense_from_m == sl.dense_from_m(fmt, values, layer.stored_sparsity, "cpu")


def test_dense_from_m_reads_the_crossover_table():
    pick = sl.dense_from_m
    points = sl.CROSSOVER[("csr", "fp32")]
    (s0, m0), (s1, m1) = points[0], points[-1]
    assert pick("csr", "float32", 0.5, "cpu") == 1  # below the first point: never wins, always dense
    assert pick("csr", torch.float32, s0, "cpu") == m0 + 1
    assert pick("csr", "float32", 0.99, "cpu") == m1 + 1  # above the last point: the last
    between = pick("csr", "float32", (s0 + s1) / 2, "cpu")
    assert m0 + 1 <= between <= m1 + 1
    assert pick("2:4", "float16", 0.5, "cpu") == sl.CROSSOVER[("2:4", "fp16")][0][1] + 1
    assert pick("csr", "int8", 0.9, torch.device("cpu")) >= 1
    assert pick("csr", "float32", 0.9, "cuda") is None  # not measured on GPU yet: always sparse
    with pytest.raises(ValueError, match="values must be one of"):
        pick("csr", "float64", 0.9, "cpu")


def test_policy_words():
    keep = torch.zeros(20, 40, dtype=torch.bool)
    keep.view(-1)[:80] = True  # exactly 90% sparse
    layer = SparseLinear.from_dense(torch.randn(20, 40) * keep)
    assert layer.sparsity == pytest.approx(0.9) and layer.format_summary() == "csr fp32 90.0%"
    m = layer.dense_from_m
    assert layer.policy == f"csr fp32 90.0% (sparse up to M={m - 1}, dense above)"
    half = SparseLinear.from_dense(torch.randn(20, 40) * (torch.arange(40) % 2 == 0))
    assert half.dense_from_m == 1 and half._dense_weight is not None
    assert half.policy == "runs dense: 50% unstructured is below the CSR crossover"
    half.dense_from_m = None
    assert half.policy == "csr fp32 50.0% (sparse at every M)" and half._dense_weight is None


def test_summaries_and_repr():
    layer, w, _ = make_layer("bsr", (4, 1), "int8")
    summary = layer.format_summary()
    assert summary.startswith("bsr 4x1 int8 ") and summary.endswith("%")
    layer16, _, _ = make_layer("2:4", None, "bfloat16")
    assert layer16.format_summary() == "2:4 bf16"
    text = repr(layer)
    for words in ("in_features=24", "out_features=16", "bias=True", "pattern=block 4x1", "format=bsr",
                  "values=int8", f"stored_bytes={layer.stored_bytes}", f"sparsity={100 * layer.sparsity:.1f}%"):
        assert words in text, (words, text)
    assert layer.nnz == int((layer.dequantized_weight() != 0).sum())
    assert layer16.pattern == "2:4" and make_layer("csr", None)[0].pattern == "unstructured"


# ---- state and checkpoints ------------------------------------------------------------------------
STATE_KEYS = {"csr": {"row_ptr", "col_idx", "values"}, "bsr": {"row_ptr", "col_idx", "values"},
              "2:4": {"values", "indices"}, "4:8": {"values", "indices"}}


@pytest.mark.parametrize("values", ["float16", "int8"])
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_state_dict_round_trip(fmt, block, values):
    layer, _, _ = make_layer(fmt, block, values)
    sd = layer.state_dict()
    assert set(sd) == STATE_KEYS[fmt] | {"bias"} | ({"scales"} if values == "int8" else set())
    cfg = json.loads(json.dumps(layer.layer_config()))  # what a checkpoint header holds
    fresh = layer_type(cfg["type"]).from_layer_config(cfg)
    fresh.load_state_dict(sd)
    x = torch.randn(3, K)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    assert fresh.layer_config() == layer.layer_config()


def test_empty_layer_is_valid_and_zero():
    for fmt, block in FORMATS:
        nnz = 0 if fmt in sl.NM_GROUP else 7
        layer = SparseLinear(K, N, format=fmt, values="int8", nnz=nnz, block=block)
        layer.validate_state()
        assert torch.equal(layer(torch.randn(2, K)), torch.zeros(2, N))


def model_of(fmt, block, values="float32", seed=0, sparsity=0.75):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(K, N), nn.ReLU(), nn.Linear(N, K, bias=False))
    with torch.no_grad():
        for i, lin in ((0, model[0]), (2, model[2])):
            w = pruned_weight(lin.out_features, lin.in_features, fmt, block, sparsity, values, seed=seed + i)
            model[i] = SparseLinear.from_dense(w, lin.bias, format=fmt, values=values, block=block)
    return model


def float_model():
    return nn.Sequential(nn.Linear(K, N), nn.ReLU(), nn.Linear(N, K, bias=False))


@pytest.mark.parametrize("values", ["float32", "int8"])
@pytest.mark.parametrize("fmt,block", FORMATS, ids=FORMAT_IDS)
def test_save_load_into_a_fresh_float_model(tmp_path, fmt, block, values):
    model = model_of(fmt, block, values)
    path = tmp_path / "m.safetensors"
    slimkernels.save(model, path)
    loaded = slimkernels.load(path, float_model())
    assert isinstance(loaded[0], SparseLinear) and isinstance(loaded[2], SparseLinear)
    assert loaded[0].layer_config() == model[0].layer_config()
    x = torch.randn(5, K)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    slimkernels.load(path, loaded)  # into the converted model again


def test_file_size_scales_with_nnz(tmp_path):
    n, k = 64, 256
    sizes, nnz = {}, {}
    for sparsity in (0.5, 0.9):
        model = nn.Sequential(SparseLinear.from_dense(pruned_weight(n, k, "csr", sparsity=sparsity)))
        nnz[sparsity] = model[0].values.numel()
        slimkernels.save(model, tmp_path / f"{sparsity}.safetensors")
        sizes[sparsity] = os.path.getsize(tmp_path / f"{sparsity}.safetensors")
    per_nonzero = 4 + 2  # float32 value + int16 column index
    assert abs((sizes[0.5] - sizes[0.9]) - (nnz[0.5] - nnz[0.9]) * per_nonzero) < 64  # headers differ by a few digits
    dense = nn.Sequential(nn.Linear(k, n))
    slimkernels.save(dense, tmp_path / "dense.safetensors")
    assert sizes[0.9] < 0.2 * os.path.getsize(tmp_path / "dense.safetensors")


def rewrite(path, change_tensors=None, change_layers=None):
    """Rewrite checkpoint `path` with its tensors and layer configs changed (a corrupt or hostile file)."""
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    if change_tensors:
        change_tensors(tensors)
    if change_layers:
        layers = json.loads(meta["layers"])
        change_layers(layers)
        meta["layers"] = json.dumps(layers)
    save_file(tensors, path, metadata=meta)


def _set(name, fn):
    def change(tensors):
        tensors[name] = fn(tensors[name].clone())
    return change


def _poke(t, index, value):
    t.view(-1)[index] = value
    return t


CORRUPTIONS = {
    "row_ptr not monotone": ("csr", _set("0.row_ptr", lambda t: _poke(t, 3, int(t[-1]) + 5)), None, "row_ptr"),
    "row_ptr negative": ("csr", _set("0.row_ptr", lambda t: _poke(t, 2, -4)), None, "row_ptr"),
    "row_ptr end": ("csr", _set("0.row_ptr", lambda t: _poke(t, -1, int(t[-1]) - 1)), None, "row_ptr"),
    "col_idx out of range": ("csr", _set("0.col_idx", lambda t: _poke(t, 0, K + 3)), None, "col_idx"),
    "col_idx negative": ("csr", _set("0.col_idx", lambda t: _poke(t, 0, -1)), None, "col_idx"),
    "col_idx repeated": ("csr", _set("0.col_idx", lambda t: _poke(t, 1, int(t[0]))), None, "col_idx"),
    "bsr block column out of range": ("bsr", _set("0.col_idx", lambda t: _poke(t, 0, K)), None, "col_idx"),
    "NaN values": ("csr", _set("0.values", lambda t: _poke(t, 0, float("nan"))), None, "values"),
    "Inf scales": ("csr-int8", _set("0.scales", lambda t: _poke(t, 0, float("inf"))), None, "scales"),
    "nnz in header vs tensors": ("csr", None, lambda layers: layers["0"].update(nnz=layers["0"]["nnz"] - 1), "col_idx"),
    "N:M positions not increasing": ("2:4", _set("0.indices", lambda t: t.zero_()), None, "increasing"),
    "4:8 positions not increasing": ("4:8", _set("0.indices", lambda t: t.fill_(0xFF)), None, "increasing"),
    "N:M NaN values": ("4:8", _set("0.values", lambda t: _poke(t, 5, float("inf"))), None, "values"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoints_are_refused(tmp_path, case):
    fmt, change_tensors, change_layers, names = CORRUPTIONS[case]
    values = "int8" if fmt.endswith("int8") else "float32"
    fmt = fmt.removesuffix("-int8")
    block = (2, 4) if fmt == "bsr" else None
    path = tmp_path / "m.safetensors"
    slimkernels.save(model_of(fmt, block, values), path)
    rewrite(path, change_tensors, change_layers)
    with pytest.raises(ValueError, match=names):
        slimkernels.load(path, float_model())
    if change_layers is None:  # the same tensors through load_state_dict
        layer = model_of(fmt, block, values)[0]
        state = {key.removeprefix("0."): t for key, t in load_file(path).items() if key.startswith("0.")}
        layer.dense_from_m = 1  # a kept dense weight must not outlive the refused state either
        with pytest.raises(ValueError, match=names):
            layer.load_state_dict(state)
        if names != "values" and names != "scales":  # refused indices leave an empty, valid layer behind
            layer.validate_state()
            x = torch.randn(3, K)
            for dense_from_m in (None, 1):
                layer.dense_from_m = dense_from_m
                assert torch.equal(layer(x), layer.bias.expand(3, N))


# ---- casts, devices, compile, autograd, model code ------------------------------------------------------
@pytest.mark.parametrize("dense_from_m", [None, 1])
def test_half_keeps_the_stored_dtypes(dense_from_m):
    layer, w, b = make_layer("csr", None, "int8")
    layer.dense_from_m = dense_from_m
    values, scales = layer.values.clone(), layer.scales.clone()
    layer.half()
    assert layer.values.dtype == torch.int8 and torch.equal(layer.values, values)
    assert layer.scales.dtype == torch.float32 and torch.equal(layer.scales, scales)
    assert layer.bias.dtype == torch.float32
    assert layer.weight.dtype == torch.float16 and layer.weight.shape == (N, K)
    x = torch.randn(4, K).half()
    y = layer(x)
    assert y.dtype == torch.float16
    check_close(y, reference(x, layer.dequantized_weight(), b), x, layer.dequantized_weight())
    layer.float()  # back: the kept dense weight is rebuilt from the stored values, not cast back
    if dense_from_m == 1:
        assert torch.equal(layer._dense_weight, layer.dequantized_weight())


def test_move_repacks_for_the_device():
    half, _, _ = make_layer("csr", None, sparsity=0.5)
    half.dense_from_m = "auto"
    assert half.dense_from_m == 1 and half._dense_weight is not None  # 50% on CPU: runs dense
    half.to("meta")
    assert half._dense_weight is None and half.dense_from_m is None  # repacked for the new device
    assert half.weight.device.type == "meta"


def test_weight_stand_in_for_model_code():
    layer, _, _ = make_layer("2:4", None, "float16")
    assert layer.weight.shape == (N, K) and layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu"
    bf = SparseLinear.from_dense(pruned_weight(N, K, "csr").bfloat16())
    assert bf.weight.dtype == torch.bfloat16 and bf.values.dtype == torch.bfloat16
    assert SparseLinear.matches_float(nn.Linear(K, N), layer.layer_config())
    assert not SparseLinear.matches_float(nn.Linear(K, N, bias=False), layer.layer_config())
    assert not SparseLinear.matches_float(nn.Linear(K + 8, N), layer.layer_config())


@pytest.mark.parametrize("fmt,block,dense_from_m", [("csr", None, None), ("csr", None, 1), ("2:4", None, 3),
                                                    ("bsr", (4, 1), None)])
def test_torch_compile_fullgraph(fmt, block, dense_from_m):
    model = model_of(fmt, block)
    for layer in (model[0], model[2]):
        layer.dense_from_m = dense_from_m
    x = torch.randn(4, K)
    eager = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dense_from_m", [None, 1, 3])
@pytest.mark.parametrize("fmt,block", [("csr", None), ("bsr", (2, 4)), ("4:8", None)], ids=["csr", "bsr2x4", "4:8"])
def test_backward_to_input_and_bias(fmt, block, dense_from_m):
    layer, w, b = make_layer(fmt, block)
    layer.dense_from_m = dense_from_m
    layer.bias.requires_grad_()
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    x = torch.randn(2, 3, K, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    grad = torch.randn(2, 3, N)
    layer(x).backward(grad)
    lin(x2).backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, lin.bias.grad, rtol=1e-5, atol=1e-5)


# ---- bad input ------------------------------------------------------------------------------------
def test_bad_constructor_arguments():
    cases = [
        (dict(format="coo"), "format must be one of"),
        (dict(values="float64"), "values must be one of"),
        (dict(format="2:4", in_features=30), "divisible by 4"),
        (dict(format="4:8", in_features=28), "divisible by 8"),
        (dict(format="bsr"), "needs block"),
        (dict(format="bsr", block=(5, 4)), "must divide"),
        (dict(format="bsr", block=(0, 4)), "positive ints"),
        (dict(format="csr", block=(4, 4)), "block goes with format 'bsr' only"),
        (dict(nnz=N * K + 1), "do not fit"),
        (dict(format="bsr", block=(4, 4), nnz=N * K // 16 + 1), "do not fit"),
        (dict(nnz=-1), "non-negative int"),
        (dict(format="2:4", nnz=5), "nnz is fixed"),
        (dict(in_features=0), "positive ints"),
    ]
    for kwargs, message in cases:
        args = {"in_features": K, "out_features": N, **kwargs}
        with pytest.raises(ValueError, match=message):
            SparseLinear(**args)


def test_bad_from_dense_arguments():
    w = pruned_weight(N, K, "csr")
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        SparseLinear.from_dense(bad)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        SparseLinear.from_dense(bad)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        SparseLinear.from_dense(torch.randn(N, K), format="2:4")
    with pytest.raises(ValueError, match="not 4:8 sparse"):
        SparseLinear.from_dense(torch.randn(N, K), format="4:8")
    with pytest.raises(ValueError, match="divisible by 4"):
        SparseLinear.from_dense(torch.zeros(N, 10), format="2:4")
    with pytest.raises(ValueError, match="needs block"):
        SparseLinear.from_dense(w, format="bsr")
    with pytest.raises(ValueError, match="must divide"):
        SparseLinear.from_dense(w, format="bsr", block=(5, 1))
    with pytest.raises(ValueError, match="format must be"):
        SparseLinear.from_dense(w, format="2:8")
    with pytest.raises(ValueError, match="values must be one of"):
        SparseLinear.from_dense(w, values="int4")
    with pytest.raises(ValueError, match="bias must be"):
        SparseLinear.from_dense(w, torch.zeros(N + 1))
    with pytest.raises(ValueError, match="2-D float"):
        SparseLinear.from_dense(w.long())
    with pytest.raises(ValueError, match="bias holds NaN"):
        SparseLinear.from_dense(w, torch.full((N,), float("nan")))
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        SparseLinear.from_float(nn.Conv2d(3, 3, 1))


def test_bad_forward_input_and_settings():
    layer, _, _ = make_layer("csr", None)
    with pytest.raises(ValueError, match="expected input with 24 features"):
        layer(torch.randn(2, K - 1))
    with pytest.raises(TypeError, match="x must be"):
        layer(torch.randn(2, K, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be"):
        layer(torch.ones(2, K, dtype=torch.int32))
    for value in (0, -3, 2.5, True, "dense"):
        with pytest.raises(ValueError, match="dense_from_m must be"):
            layer.dense_from_m = value
