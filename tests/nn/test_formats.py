"""The weight formats of QuantLinear as strategy objects: buffers, encode, forward, dequantize, config
fields, summary, load checks, repack, the QAT rounding step, and the format registry."""
from __future__ import annotations

import pytest
import torch

from slimkernels import CodebookConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, QuantLinear
from slimkernels.backends.quantize import quantize_rows_int8
from slimkernels.nn import WeightFormat, register_format, weight_format, weight_formats
from slimkernels.nn.formats import W8A8
from slimkernels.quant import lowbit
from slimkernels.testing import make_codebook, make_int4, make_int8_weight

N, K = 24, 128

# (mode, options, unpacked parts [from_parts order], the packed buffers the layer must store)


def _int8(mode):
    qweight, scale = make_int8_weight(N, K, seed=1)
    return mode, {}, (qweight, scale), {"qweight": qweight, "weight_scale": scale}


def _int4(group_size, asym):
    qweight, scales, zeros = make_int4(N, K, group_size, asym, seed=2)
    parts = (lowbit.unpack_codes(qweight, 4, K), scales, zeros)
    return "w4a16", {"group_size": group_size, "symmetric": not asym}, parts, \
        {"qweight": qweight, "weight_scale": scales, "weight_zero": zeros}


def _codebook(bits, per_row):
    indices, codebook = make_codebook(N, K, bits, per_row, seed=3)
    return "codebook", {"bits": bits, "per": "row" if per_row else "layer"}, \
        (lowbit.unpack_codes(indices, bits, K), codebook), {"qweight": indices, "codebook": codebook}


CASES = {
    "w8a8": _int8("w8a8"), "w8a16": _int8("w8a16"), "int4-g32-asym": _int4(32, True), "int4-g128-sym": _int4(128, False),
    "cb4-row": _codebook(4, True), "cb3-layer": _codebook(3, False), "cb2-row": _codebook(2, True),
}
SUMMARIES = {"w8a8": "w8a8", "w8a16": "w8a16", "int4-g32-asym": "w4a16 g32 asym", "int4-g128-sym": "w4a16 per-channel sym",
             "cb4-row": "codebook 4-bit per row", "cb3-layer": "codebook 3-bit per layer", "cb2-row": "codebook 2-bit per row"}


@pytest.mark.parametrize("case", CASES)
def test_buffers_are_what_the_layer_registers_and_saves(case):
    mode, options, _, _ = CASES[case]
    fmt = weight_format(mode)(K, N, **options)
    q = QuantLinear(K, N, True, mode, **options)
    assert q.format.config_fields() == fmt.config_fields() == options
    specs = fmt.buffers()
    saved = q.state_dict()
    expected = [name for name, spec in specs.items() if spec is not None] + ["bias"]
    assert list(saved) == expected  # state_dict order: the format's buffers, then bias
    for name, spec in specs.items():
        if spec is None:
            assert getattr(q, name) is None
        else:
            assert (tuple(saved[name].shape), saved[name].dtype) == (spec.shape, spec.dtype)
            assert bool((saved[name] == spec.fill).all())
    for name in fmt.packed:  # derived, never saved
        assert name not in saved and getattr(q, name) is not None


@pytest.mark.parametrize("case", CASES)
def test_from_parts_stores_the_packed_tensors_and_computes_with_them(case):
    mode, options, parts, packed = CASES[case]
    bias = torch.randn(N)
    q = QuantLinear.from_parts(mode, *parts, bias=bias)
    assert q.format.config_fields() == options and q.format_summary() == SUMMARIES[case]
    for name, value in packed.items():
        got = getattr(q, name)
        assert (got is None and value is None) or torch.equal(got, value)
    w = q.format.dequantize_parts(parts)
    assert torch.equal(q.dequantized_weight(), w)  # packing loses nothing
    x = torch.randn(5, K)
    if mode == "w8a8":  # the activations are rounded per token too (the reference implementation: the spec)
        qx, sx = quantize_rows_int8(x)
        x = qx.float() * sx[:, None]
    torch.testing.assert_close(q(x), x @ w.T + bias, rtol=1e-4, atol=1e-4)


def test_named_constructors_are_from_parts():
    for case, build in [("w8a16", lambda p, b: QuantLinear.from_int8(*p, b, "w8a16")),
                        ("int4-g32-asym", lambda p, b: QuantLinear.from_int4(*p, 32, b)),
                        ("cb3-layer", lambda p, b: QuantLinear.from_codebook(*p, b))]:
        mode, _, parts, _ = CASES[case]
        a, b = build(parts, None), QuantLinear.from_parts(mode, *parts)
        assert a.layer_config() == b.layer_config()
        assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.mark.parametrize("config", [Int8DynamicConfig(), Int8WeightOnlyConfig(), Int4WeightOnlyConfig(group_size=32),
                                    Int4WeightOnlyConfig(group_size=-1, symmetric=True), CodebookConfig(bits=3)],
                         ids=["w8a8", "w8a16", "int4-g32", "int4-pc-sym", "cb3"])
def test_rounding_step_matches_the_encoded_layer(config):
    """QAT trains through round + dequantize_parts; the layer it converts to must hold the same values."""
    torch.manual_seed(0)
    w = torch.randn(N, K)
    fmt_cls = weight_format(config.mode)
    fmt = fmt_cls(K, N, **fmt_cls.options_from_config(config))
    state = fmt.fit(w, config)
    assert set(state) == ({"codebook"} if config.mode == "codebook" else set())
    parts = fmt.round(w, state)
    q = QuantLinear.from_parts(config.mode, *parts, **fmt.config_fields())
    assert torch.equal(q.dequantized_weight(), fmt.dequantize_parts(parts))
    assert (q.dequantized_weight() - w).abs().max() < w.abs().max() / 2


def test_activation_rounding_belongs_to_w8a8_only():
    x = torch.randn(4, K)
    for mode, fmt_cls in weight_formats().items():
        if mode in ("w8a16", "w4a16", "codebook"):
            assert fmt_cls.fake_quantize_input(None, x) is None
    xq = W8A8(K, N).fake_quantize_input(x)
    assert xq.shape == x.shape and not torch.equal(xq, x) and (xq - x).abs().max() <= x.abs().max() / 127


def test_repr_and_default_configs():
    assert repr(QuantLinear(K, N, mode="w4a16", group_size=64)).endswith(
        "mode=w4a16 g64 asym (int4 group-wise weights, float activations))")
    defaults = {mode: type(cls.default_config()) for mode, cls in weight_formats().items()
                if mode in ("w8a8", "w8a16", "w4a16", "codebook")}
    assert defaults == {"w8a8": Int8DynamicConfig, "w8a16": Int8WeightOnlyConfig, "w4a16": Int4WeightOnlyConfig,
                        "codebook": CodebookConfig}
    assert QuantLinear.from_float(torch.nn.Linear(256, N), "w4a16").format_summary() == "w4a16 g128 asym"


def test_load_checks_and_shape_checks():
    mode, options, parts, _ = CASES["int4-g32-asym"]
    q = QuantLinear.from_parts(mode, *parts)
    sd = q.state_dict()
    sd["weight_zero"] = torch.full_like(sd["weight_zero"], 16)
    with pytest.raises(ValueError, match="weight_zero holds 16; 4-bit zero points lie in 0..15"):
        q.load_state_dict(sd)
    codes, scales, zeros = parts
    # [N, 1] scales would broadcast into [N, 4]: refused, not copied
    with pytest.raises(ValueError, match=r"weight_scale has shape \(24, 1\), expected \(24, 4\)"):
        QuantLinear.from_parts(mode, codes, scales[:, :1], zeros, group_size=32)
    with pytest.raises(ValueError, match=r"weight_zero has shape None, expected \(24, 4\)"):
        QuantLinear.from_parts(mode, codes, scales, None, symmetric=False)
    with pytest.raises(ValueError, match="holds NaN"):
        QuantLinear.from_int8(torch.zeros(2, 4, dtype=torch.int8), torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="codebook mode needs bits"):
        QuantLinear(K, N, mode="codebook", bits=5)


def test_format_registry():
    assert {"w8a8", "w8a16", "w4a16", "codebook"} <= set(weight_formats())
    assert weight_format("w4a16").options == ("group_size", "symmetric")
    with pytest.raises(ValueError, match=r"mode must be one of \[.*'codebook'.*\], got 'w2a2'"):
        weight_format("w2a2")
    with pytest.raises(ValueError, match="'w8a8' is already registered"):
        @register_format
        class Again(WeightFormat):
            mode = "w8a8"


def test_format_options_read_as_layer_attributes():
    from torch import nn

    import slimkernels

    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 16))
    slimkernels.quantize_(model, slimkernels.Int4WeightOnlyConfig(group_size=32), progress=False)
    assert (model[0].group_size, model[0].symmetric, model[0].bits, model[0].per) == (32, False, None, None)
    model = nn.Sequential(nn.Linear(64, 32))
    slimkernels.quantize_(model, slimkernels.CodebookConfig(bits=3, codebook="pow2"), progress=False)
    assert (model[0].group_size, model[0].bits, model[0].per) == (None, 3, "row")
