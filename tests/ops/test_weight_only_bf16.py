"""bf16 dot products (AVX512-BF16 vdpbf16ps) in the weight-only CPU kernels: dequant_mm_int4, lut_mm
(2- and 4-bit codebooks) and dequant_mm_int8 under slimkernels._switch.use_cpu_bf16.

The path rounds x to bf16 and each decoded weight to bf16 (int8 weights are exact in bf16), then
accumulates exact products in float32. So it is compared with the reference run on those rounded
operands (x rounded to bf16, the reference's float32 weights rounded to bf16), where only the float32
summation order differs: the native CPU bound of slimkernels.testing.linear_bound applies unchanged.
Skipped where the CPU or build has no AVX512-BF16."""
from __future__ import annotations

import pytest
import torch

import slimkernels
from slimkernels import ops
from slimkernels._switch import get_cpu_bf16, set_cpu_bf16, use_cpu_bf16
from slimkernels.backends.dequant_int8 import DEQUANT_INT8_BF16_MIN_M, dequant_mm_int8_reference
from slimkernels.backends.lowbit import LOWBIT_BF16_MIN_M, avx512_bf16_supported, weight_only_isa
from slimkernels.quant import lowbit
from slimkernels.testing import Case, assert_close_linear, make_codebook, make_int4, make_int8_weight, rand_x

pytestmark = pytest.mark.skipif(not avx512_bf16_supported(), reason="no AVX512-BF16 here (CPU or build)")

NATIVE = Case("cpu", "native")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MS = (1, 3, 17, 33)  # tiles straight from the codes (M < 8) and weight rows decoded once (M >= 8)
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.float().bfloat16().float()


def run_bf16(fn, *args, mode="on"):
    with slimkernels.use_backend("native"), use_cpu_bf16(mode):
        return fn(*args)


def check(got, x, w, bias, what):
    """got against x and w [N, K] float32 both rounded to bf16, a float32 GEMM, rounded once to x.dtype."""
    xr, wr = bf16(x), bf16(w)
    y = xr @ wr.T
    if bias is not None:
        y = y + bias.float()
    assert_close_linear(got, y.to(x.dtype), xr, wr, NATIVE, what)


# ---- int4 ---------------------------------------------------------------------------------------------
# (N, K, group_size): groups of 32..128, 96 (not a power of two), per channel with an odd K (rows end
# mid-byte) and K = 201 (a full 32-code chunk pair, then a row end); N = 37 is not a multiple of the tile.
INT4_SHAPES = [(37, 256, 32), (37, 192, 64), (37, 384, 128), (37, 77, 77), (37, 201, 201), (37, 192, 96)]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n,k,group_size", INT4_SHAPES)
def test_int4(dtype, n, k, group_size):
    qweight, scales, zeros = make_int4(n, k, group_size, asym=group_size != 64, seed=k + group_size)
    w = lowbit.dequantize_int4(qweight, scales, zeros, group_size, k)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(k))
    for m in MS:
        x = rand_x(m, k, dtype, seed=m + k)
        for b in (bias, None):
            got = run_bf16(ops.dequant_mm_int4, x, qweight, scales, zeros, group_size, b)
            check(got, x, w, b, f"int4 M={m} N={n} K={k} g={group_size} bias={b is not None}")


# ---- codebooks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("n,k", [(37, 77), (37, 256), (5, 1), (9, 1000)])
def test_lut(dtype, bits, per_row, n, k):
    indices, codebook = make_codebook(n, k, bits, per_row, seed=bits * k + n)
    w = lowbit.dequantize_codebook(indices, codebook, k)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(n))
    for m in MS:
        x = rand_x(m, k, dtype, seed=m + 7 * k)
        got = run_bf16(ops.lut_mm, x, indices, codebook, bias)
        check(got, x, w, bias, f"lut {bits}-bit per_row={per_row} M={m} N={n} K={k}")


def test_lut_3bit_keeps_float32():
    # 3-bit codes have no bf16 pairs: cpu_bf16='on' runs the float32 kernel, bit for bit.
    indices, codebook = make_codebook(37, 77, 3, seed=3)
    x = rand_x(17, 77, seed=3)
    with slimkernels.use_backend("native"), slimkernels.use_cpu_amx("off"):
        with use_cpu_bf16("on"):
            got = ops.lut_mm(x, indices, codebook)
        with use_cpu_bf16("off"):
            expected = ops.lut_mm(x, indices, codebook)
    assert torch.equal(got, expected)


# ---- int8 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n,k", [(37, 77), (33, 256), (5, 1000), (4, 31), (1, 1)])
def test_int8(dtype, n, k):
    qweight, scales = make_int8_weight(n, k, seed=n + k)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(k))
    w = qweight.float() * scales[:, None]
    for m in MS:
        x = rand_x(m, k, dtype, seed=m + k)
        got = run_bf16(ops.dequant_mm_int8, x, qweight, scales, bias)
        # int8 weights are exact in bf16; the scale multiplies the float32 sum as in the reference.
        expected = dequant_mm_int8_reference(bf16(x), qweight, scales, bias).to(dtype)
        assert_close_linear(got, expected, bf16(x), w, NATIVE, f"int8 M={m} N={n} K={k}")


# ---- contract: strided rows, empty batches, threads ---------------------------------------------------
def test_strided_rows_empty_batch_and_threads():
    qweight, scales, zeros = make_int4(37, 256, 32, seed=1)
    q8, s8 = make_int8_weight(37, 256, seed=1)
    indices, codebook = make_codebook(37, 256, 4, seed=1)
    calls = {"int4": lambda x: ops.dequant_mm_int4(x, qweight, scales, zeros, 32),
             "int8": lambda x: ops.dequant_mm_int8(x, q8, s8), "lut": lambda x: ops.lut_mm(x, indices, codebook)}
    wide = rand_x(33, 300, seed=2)
    threads = torch.get_num_threads()
    for name, call in calls.items():
        strided = run_bf16(call, wide[:, :256])  # row stride 300, read in place
        assert torch.equal(strided, run_bf16(call, wide[:, :256].contiguous())), name
        try:
            torch.set_num_threads(1)
            one = run_bf16(call, wide[:, :256])
        finally:
            torch.set_num_threads(threads)
        torch.testing.assert_close(one, strided, rtol=1e-6, atol=1e-5, msg=name)
        empty = run_bf16(call, wide[:0, :256])
        assert empty.shape == (0, 37), name


# ---- the switch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["int4", "int8", "lut"])
def test_auto_threshold(op):
    # 'auto' (with the ISA automatic and AMX off) is the float32 path below the op's threshold and the
    # bf16 path from it on, bit for bit; a threshold of None keeps the float32 path at every M.
    if op == "int4":
        qweight, scales, zeros = make_int4(37, 256, 32, seed=4)
        call, min_m = (lambda x: ops.dequant_mm_int4(x, qweight, scales, zeros, 32)), LOWBIT_BF16_MIN_M
    elif op == "int8":
        q8, s8 = make_int8_weight(37, 256, seed=4)
        call, min_m = (lambda x: ops.dequant_mm_int8(x, q8, s8)), DEQUANT_INT8_BF16_MIN_M
    else:
        indices, codebook = make_codebook(37, 256, 2, seed=4)
        call, min_m = (lambda x: ops.lut_mm(x, indices, codebook)), LOWBIT_BF16_MIN_M
    expected = [(1, "off"), (64, "off")] if min_m is None else [(min_m - 1, "off"), (min_m, "on")]
    with slimkernels.use_cpu_amx("off"):
        for m, expected_mode in expected:
            x = rand_x(m, 256, seed=m)
            assert torch.equal(run_bf16(call, x, mode="auto"), run_bf16(call, x, mode=expected_mode)), m
        # A forced ISA runs its float32 kernels under 'auto'.
        x = rand_x(70, 256, seed=5)
        with slimkernels.use_cpu_isa("avx512_vnni"):
            assert torch.equal(run_bf16(call, x, mode="auto"), run_bf16(call, x, mode="off"))


def test_weight_only_isa_choice():
    # The per-call choice (isa, amx) for each switch setting and threshold.
    with slimkernels.use_cpu_amx("auto"), slimkernels.use_cpu_isa(None):
        with use_cpu_bf16("auto"):
            assert weight_only_isa(7, 8) == ("", "auto")
            assert weight_only_isa(8, 8) == ("avx512_bf16", "auto")  # AMX, where present, still comes first
            assert weight_only_isa(512, None) == ("", "auto")
            with slimkernels.use_cpu_isa("avx512_vnni"):
                assert weight_only_isa(512, 8) == ("avx512_vnni", "auto")
        with use_cpu_bf16("on"):
            assert weight_only_isa(1, None) == ("avx512_bf16", "auto")  # the tiles, on rounded operands
        with use_cpu_bf16("off"):
            assert weight_only_isa(512, 1) == ("", "auto")


def test_on_takes_rounded_amx_tiles():
    # 'on' means bf16 numerics: from the AMX threshold (cpu_amx 'auto') the tiles run on bf16-rounded
    # x and weights, below it (or with cpu_amx 'off') the vdpbf16ps kernels; both meet the same bound.
    qweight, scales, zeros = make_int4(37, 256, 32, seed=6)
    w = lowbit.dequantize_int4(qweight, scales, zeros, 32, 256)
    x = rand_x(17, 256, seed=6)
    call = lambda: ops.dequant_mm_int4(x, qweight, scales, zeros, 32)  # noqa: E731
    for amx in ("off", "auto"):
        with slimkernels.use_cpu_amx(amx):
            check(run_bf16(call), x, w, None, f"int4 cpu_bf16='on' cpu_amx={amx!r}")


def test_switch_validation():
    before = get_cpu_bf16()
    with pytest.raises(ValueError, match="cpu_bf16"):
        set_cpu_bf16("yes")
    with pytest.raises(ValueError, match="cpu_bf16"):
        with use_cpu_bf16("always"):
            pass
    assert get_cpu_bf16() == before
    q8, s8 = make_int8_weight(4, 64, seed=8)
    x = rand_x(2, 64, seed=8)
    with slimkernels.use_backend("native"), use_cpu_bf16("on"), slimkernels.use_cpu_isa("avx2"):
        with pytest.raises(ValueError, match="cpu_bf16='on' needs the avx512_vnni"):
            ops.dequant_mm_int8(x, q8, s8)


def test_quant_linear_eager_fast_path_follows_cpu_bf16():
    # The eager fast path must not bypass a forced bf16 path: same bits as the op under "on".
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(96, 40))
    slimkernels.quantize_(model, slimkernels.Int4WeightOnlyConfig(group_size=32), progress=False)
    x = torch.randn(3, 96)
    with torch.inference_mode(), slimkernels.use_cpu_bf16("on"):
        eager = model(x)
        with slimkernels.use_backend("native"):
            through_op = slimkernels.ops.dequant_mm_int4(x, model[0].qweight, model[0].weight_scale,
                                                         model[0].weight_zero, 32, model[0].bias)
    assert torch.equal(eager, through_op)
