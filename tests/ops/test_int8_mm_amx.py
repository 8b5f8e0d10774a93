"""int8_mm on AMX-INT8 tiles (csrc/cpu/int8_mm_amx.cpp), forced with amx='on' at every M: bit-exact
against the exact int64 product mod 2**32 and the float32 epilogue, and identical to the AVX-512
VNNI kernel (amx='off'), through the binding (threads 1 and 2, every output kind, K and N tails,
worst-case values), the ops and the W8A8 QuantLinear (eager fast path and op). Skipped only where
the CPU, OS or build cannot run AMX-INT8; the switch's errors are checked everywhere."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import slimkernels
from slimkernels import _native, ops
from slimkernels.nn import QuantLinear
from slimkernels.quant.packing import pack_int8_cpu
from slimkernels.testing import assert_same, extreme_int8, int8_mm_exact, rand_int8, scaled_epilogue_exact

C = _native._C
AMX_INT8 = C is not None and bool(C.amx_int8_supported())
needs_amx_int8 = pytest.mark.skipif(not AMX_INT8, reason="no AMX-INT8 here (CPU, OS or build)")
needs_native = pytest.mark.skipif(C is None, reason="native CPU extension not built")

OUT_KINDS = {torch.int32: "int32", torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# M across the 16-row A tiles and the 32-row step; N across the 16-column panels and panel pairs; K
# across the 64-k step (K % 4 != 0 too: 4, 60 | 64 | 68, 200).
MS, NS, KS = (1, 15, 16, 17, 33, 100), (1, 15, 17, 48, 100), (4, 60, 64, 68, 200)
# Large enough that two threads split the work (int8_mm.cpp runs small problems on one thread).
THREADED = [(100, 300, 520), (129, 200, 1001), (64, 130, 4100)]


def native_mm(a, b, out_dtype=torch.int32, a_scale=None, b_scale=None, bias=None, *, threads=1, amx="on",
              isa="avx512_vnni"):
    """The binding as backends/int8_mm.gemm_cpu calls it, with threads, ISA and amx explicit."""
    m, k = a.shape
    n = b.shape[0]
    out, packed = torch.empty((m, n), dtype=out_dtype), pack_int8_cpu(b)  # alive during the call
    p = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    C.int8_mm(a.data_ptr(), a.stride(0), packed.data_ptr(), m, n, k, out.data_ptr(), n,
              OUT_KINDS[out_dtype], p(a_scale), p(b_scale), p(bias), threads, isa, amx)
    return out


def scaled_inputs(m, n, gen):
    a_scale = (torch.rand(m, generator=gen) * 4 + 0.05) / 127
    b_scale = (torch.rand(n, generator=gen) * 0.5 + 0.01) / 127
    return a_scale, b_scale, torch.randn(n, generator=gen) * 3


@needs_amx_int8
@pytest.mark.parametrize("threads", [1, 2])
def test_amx_int32_and_epilogues_bit_exact(threads):
    shapes = list(itertools.product(MS, NS, KS)) + THREADED
    for m, n, k in shapes:
        gen = torch.Generator().manual_seed(m * 1000003 + n * 1009 + k)
        a, b = rand_int8(m, k, gen=gen), rand_int8(n, k, gen=gen)
        acc = int8_mm_exact(a, b)
        assert_same(native_mm(a, b, threads=threads), acc, f"int32 {(m, n, k)}")
        a_scale, b_scale, bias = scaled_inputs(m, n, gen)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for bias_ in (bias, None) if dtype is torch.float32 else (bias,):
                got = native_mm(a, b, dtype, a_scale, b_scale, bias_, threads=threads)
                assert_same(got, scaled_epilogue_exact(acc, a_scale, b_scale, bias_, dtype),
                            f"{dtype} bias={bias_ is not None} {(m, n, k)}")


@needs_amx_int8
@pytest.mark.parametrize("threads", [1, 2])
def test_amx_worst_case_values(threads):
    # Weights at -128/127, activations at -127/127 (what per-token quantization makes) and the
    # all -128 corner: the largest sums, exact (tdpbssd does not saturate).
    gen = torch.Generator().manual_seed(3)
    for (m, n, k), (kind_a, kind_b) in itertools.product(
            [(17, 48, 200), (33, 100, 1030), (100, 300, 520)],
            [("min", "min"), ("max", "min"), ("mix", "mix"), ("signs", "signs"), ("checker", "checker")]):
        a = extreme_int8(kind_a, m, k, gen=gen)
        if kind_a == "mix":
            a = a.clamp(min=-127)  # -127/127
        b = extreme_int8(kind_b, n, k, gen=gen)
        acc = int8_mm_exact(a, b)
        assert_same(native_mm(a, b, threads=threads), acc, f"{kind_a} x {kind_b} {(m, n, k)}")
        a_scale, b_scale, bias = scaled_inputs(m, n, gen)
        assert_same(native_mm(a, b, torch.bfloat16, a_scale, b_scale, bias, threads=threads),
                    scaled_epilogue_exact(acc, a_scale, b_scale, bias, torch.bfloat16), f"{kind_a} x {kind_b}")


@needs_amx_int8
def test_amx_wraps_mod_2_32():
    m, n, k = 17, 20, 140_000  # 16384 * K > 2**31 - 1
    a = torch.full((m, k), -128, dtype=torch.int8)
    b = torch.full((n, k), -128, dtype=torch.int8)
    b[1, ::7] = 127
    ref = int8_mm_exact(a, b)
    assert ref[0, 0].item() < 0  # really wrapped
    assert_same(native_mm(a, b, threads=2), ref)


@needs_amx_int8
def test_amx_matches_vnni_and_row_strided_a():
    gen = torch.Generator().manual_seed(11)
    for m, n, k in [(1, 33, 13), (40, 70, 300), (129, 200, 1001)]:
        a_big, b = rand_int8(m, k + 9, gen=gen), rand_int8(n, k, gen=gen)
        a = a_big[:, 3:3 + k]  # lda = K + 9, start not aligned
        a_scale, b_scale, bias = scaled_inputs(m, n, gen)
        for dtype in OUT_KINDS:
            args = (a, b, dtype) + (() if dtype is torch.int32 else (a_scale, b_scale, bias))
            assert_same(native_mm(*args, threads=2, amx="on"), native_mm(*args, threads=2, amx="off"),
                        f"{dtype} {(m, n, k)}")


@needs_amx_int8
def test_amx_ops_and_dynamic_linear_under_the_switch():
    gen = torch.Generator().manual_seed(5)
    m, n, k = 37, 50, 200
    a, b = rand_int8(m, k, gen=gen), rand_int8(n, k, gen=gen)
    a_scale, b_scale, bias = scaled_inputs(m, n, gen)
    x = torch.randn(m, k, generator=gen)
    w_packed = ops.int8_prepack(b)
    with slimkernels.use_backend("native"), slimkernels.use_cpu_isa("avx512_vnni"):
        results = {}
        for amx in ("on", "off"):
            with slimkernels.use_cpu_amx(amx):
                results[amx] = (ops.int8_mm(a, b), ops.int8_scaled_mm(a, a_scale, b, b_scale, bias, torch.float16),
                                ops.int8_dynamic_linear(x, w_packed, b_scale, bias))
    assert_same(results["on"][0], int8_mm_exact(a, b))
    for on, off in zip(results["on"], results["off"]):
        assert_same(on, off)


def _w8a8_model(gen):
    model = nn.Sequential(nn.Linear(96, 130), nn.ReLU(), nn.Linear(130, 70, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    slimkernels.quantize_(model, slimkernels.Int8DynamicConfig(), progress=False)
    assert all(isinstance(mod, QuantLinear) for mod in (model[0], model[2]))
    return model


@needs_amx_int8
@pytest.mark.parametrize("rows", [1, 20, 65])
def test_w8a8_quant_linear_amx_on_off_identical(rows):
    gen = torch.Generator().manual_seed(rows)
    model = _w8a8_model(gen)
    x = torch.randn(rows, 96, generator=gen)
    outs = {}
    for amx in ("on", "off", "auto"):
        with slimkernels.use_cpu_amx(amx), slimkernels.use_cpu_isa("avx512_vnni"):
            with torch.no_grad():
                fast = model(x)  # the eager fast path (FastPath)
                op = model(x.T.contiguous().T)  # not contiguous: through the op
            outs[amx] = (fast, op)
    for amx in ("off", "auto"):
        for got, ref in zip(outs[amx], outs["on"]):
            assert_same(got, ref, f"amx={amx} vs on")


@needs_native
def test_amx_switch_errors():
    a, b = rand_int8(3, 8), rand_int8(5, 8)
    with pytest.raises(ValueError, match="amx"):
        native_mm(a, b, amx="yes")
    with pytest.raises(ValueError, match="amx='on' needs AMX-INT8"):
        native_mm(a, b, amx="on", isa="avx2" if "avx2" in C.supported_isas() else "scalar")
    assert_same(native_mm(a, b, amx="off", isa="scalar"), int8_mm_exact(a, b))
    if not AMX_INT8:
        with pytest.raises(ValueError, match="amx='on' needs AMX-INT8"):
            native_mm(a, b, amx="on", isa=C.cpu_isa())


@needs_native
def test_info_reports_amx_int8():
    assert _native.info()["cpu_amx_int8"] is AMX_INT8
