"""The CUDA C++ low-bit kernels (dequant_mm_int4, lut_mm; csrc/cuda/lowbit_gemm.cu) against the reference.

GPU tests carry the `gpu` mark and skip without CUDA. They cover both paths the backend picks by M
(the fused GEMV for M <= LOWBIT_GEMV_MAX_M, dequantize + torch matmul above), every code width and
int4 variant, awkward shapes (odd N and K, K not a multiple of the 32-code span or the 1024-code
chunk, rows whose byte length is not a multiple of the vector load), all three activation dtypes,
bias, strided x, a side stream and CUDA graph capture. The argument checks of the raw bindings run
without a GPU whenever slimkernels._C_cuda was built.
"""
from __future__ import annotations

import pytest
import torch

import slimkernels
from slimkernels import _native, ops
from slimkernels.backends import cuda as cuda_backend
from slimkernels.backends import reference
from slimkernels.quant import lowbit
from slimkernels.testing import impl_params

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
M_VALUES = [1, 2, 4, 8, 16, 64, 300]
# Largest error allowed, relative to the largest |reference| of the output: the GEMV accumulates in
# float32 (summation order differs); the large-M path rounds W to x's dtype before the matmul.
REL_TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# (N, K, group_size): odd N; K % 32 != 0 and odd K (per-channel only); several 1024-code chunks;
# K = 1000 / 77 give row byte lengths that are not multiples of 16 (the byte-load path).
INT4_SHAPES = [(37, 256, 32), (129, 512, 128), (65, 192, 64), (33, 77, 77), (300, 4096, 128), (17, 1000, 1000),
               (8, 2048, 2048), (1, 3072, 32)]
# (N, K): row bytes multiple of the span for some widths only; odd K; K < 32; several chunks.
LUT_SHAPES = [(37, 77), (64, 1024), (129, 4099), (9, 1000), (3, 5), (40, 2048)]


def _cuda_native(op):
    params = [p for p in impl_params(op) if p.values == ("cuda", "native")]
    return params or [pytest.param("cuda", "native", marks=pytest.mark.skip(reason="needs CUDA and slimkernels._C_cuda"))]


def _int4_weights(n, k, group_size, asymmetric, gen, device):
    groups = k // group_size
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    scales = torch.rand(n, groups, generator=gen) * 0.02 + 1e-3
    zeros = torch.randint(0, 16, (n, groups), generator=gen, dtype=torch.uint8) if asymmetric else None
    qweight = lowbit.pack_codes(codes, 4)
    return qweight.to(device), scales.to(device), None if zeros is None else zeros.to(device)


def _lut_weights(n, k, bits, per_row, gen, device):
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen, dtype=torch.uint8)
    codebook = torch.randn(n if per_row else 1, 1 << bits, generator=gen) * 0.05
    return lowbit.pack_codes(codes, bits).to(device), codebook.to(device)


def _inputs(m, k, n, dtype, bias, gen, device):
    x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    b = (torch.randn(n, generator=gen) * 0.1).to(device) if bias else None
    return x, b


def _assert_close(got, expected, dtype, what):
    assert got.dtype == expected.dtype == dtype and got.shape == expected.shape, what
    scale = expected.float().abs().max().item() if expected.numel() else 0.0
    err = (got.float() - expected.float()).abs().max().item() if expected.numel() else 0.0
    assert err <= REL_TOL[dtype] * max(scale, 1e-6), f"{what}: max error {err:.3g} vs max |ref| {scale:.3g}"


@pytest.mark.parametrize("device,impl", _cuda_native("dequant_mm_int4"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", M_VALUES)
def test_int4_matches_reference(device, impl, dtype, m):
    gen = torch.Generator().manual_seed(m)
    for i, (n, k, g) in enumerate(INT4_SHAPES):
        asymmetric, bias = i % 2 == 0, i % 3 != 1
        qweight, scales, zeros = _int4_weights(n, k, g, asymmetric, gen, device)
        x, b = _inputs(m, k, n, dtype, bias, gen, device)
        expected = reference.dequant_mm_int4(x, qweight, scales, zeros, g, b)
        with slimkernels.use_backend(impl):
            got = ops.dequant_mm_int4(x, qweight, scales, zeros, g, b)
        _assert_close(got, expected, dtype, f"M={m} N={n} K={k} g={g} asym={asymmetric} bias={bias}")


@pytest.mark.parametrize("device,impl", _cuda_native("lut_mm"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", M_VALUES)
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lut_matches_reference(device, impl, dtype, m, bits):
    gen = torch.Generator().manual_seed(10 * m + bits)
    for i, (n, k) in enumerate(LUT_SHAPES):
        per_row, bias = i % 2 == 1, i % 3 != 2
        indices, codebook = _lut_weights(n, k, bits, per_row, gen, device)
        x, b = _inputs(m, k, n, dtype, bias, gen, device)
        expected = reference.lut_mm(x, indices, codebook, b)
        with slimkernels.use_backend(impl):
            got = ops.lut_mm(x, indices, codebook, b)
        _assert_close(got, expected, dtype, f"M={m} N={n} K={k} bits={bits} per_row={per_row} bias={bias}")


@pytest.mark.parametrize("device,impl", _cuda_native("dequant_mm_int4"))
@pytest.mark.parametrize("m", [cuda_backend.LOWBIT_GEMV_MAX_M, cuda_backend.LOWBIT_GEMV_MAX_M + 1])
def test_both_sides_of_the_gemv_threshold(device, impl, m):
    # The largest M the GEMV takes and the smallest M the dequantize path takes, in float32.
    gen = torch.Generator().manual_seed(3)
    qweight, scales, zeros = _int4_weights(70, 640, 64, True, gen, device)
    x, b = _inputs(m, 640, 70, torch.float32, True, gen, device)
    with slimkernels.use_backend(impl):
        got = ops.dequant_mm_int4(x, qweight, scales, zeros, 64, b)
    _assert_close(got, reference.dequant_mm_int4(x, qweight, scales, zeros, 64, b), torch.float32, f"M={m}")


@pytest.mark.parametrize("device,impl", _cuda_native("dequant_mm_int4"))
@pytest.mark.parametrize("m", [1, 5, 33])
def test_strided_and_batched_x(device, impl, m):
    gen = torch.Generator().manual_seed(4)
    n, k = 45, 320
    qweight, scales, zeros = _int4_weights(n, k, 32, False, gen, device)
    indices, codebook = _lut_weights(n, k, 3, True, gen, device)
    wide = torch.randn(m, k + 9, generator=gen).to(device=device, dtype=torch.bfloat16)
    cases = {
        "column slice": wide[:, 5:5 + k],                                  # row stride k + 9
        "transposed": wide[:, :k].t().contiguous().t(),                    # stride(1) != 1
        "3-d": torch.randn(2, m, k, generator=gen).to(device=device, dtype=torch.bfloat16),
    }
    for name, x in cases.items():
        with slimkernels.use_backend(impl):
            got4 = ops.dequant_mm_int4(x, qweight, scales, None, 32, None)
            got_lut = ops.lut_mm(x, indices, codebook, None)
        x2 = x.reshape(-1, k)
        _assert_close(got4.reshape(-1, n), reference.dequant_mm_int4(x2, qweight, scales, None, 32, None), torch.bfloat16, name)
        _assert_close(got_lut.reshape(-1, n), reference.lut_mm(x2, indices, codebook, None), torch.bfloat16, name)


@pytest.mark.parametrize("device,impl", _cuda_native("dequant_mm_int4"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_extremes(device, impl, dtype):
    # Codes and zero points at 0 and 15 (|q - z| = 15), tiny and large scales, large activations.
    n, k, g = 19, 512, 32
    for m in (1, 3, 40):
        codes = torch.where(torch.arange(n * k).reshape(n, k) % 3 == 0, 15, 0).to(torch.uint8)
        zeros = torch.where(torch.arange(n * (k // g)).reshape(n, -1) % 2 == 0, 0, 15).to(torch.uint8)
        # |w| <= 15 * 10^top, |x| <= amp: float16 outputs stay below its 65504 limit
        top, amp = (0, 1.0) if dtype == torch.float16 else (1, 100.0)
        scales = torch.logspace(-6, top, n * (k // g)).reshape(n, -1)
        qweight = lowbit.pack_codes(codes, 4).to(device)
        x = (torch.linspace(-1, 1, m * k).reshape(m, k) * amp).to(device, dtype)
        for z in (zeros.to(device), None):
            expected = reference.dequant_mm_int4(x, qweight, scales.to(device), z, g, None)
            with slimkernels.use_backend(impl):
                got = ops.dequant_mm_int4(x, qweight, scales.to(device), z, g, None)
            assert torch.isfinite(got).all()
            _assert_close(got, expected, dtype, f"extremes M={m} zeros={z is not None}")


@pytest.mark.parametrize("device,impl", _cuda_native("lut_mm"))
def test_empty_problems(device, impl):
    gen = torch.Generator().manual_seed(5)
    indices, codebook = _lut_weights(7, 64, 2, False, gen, device)
    qweight, scales, zeros = _int4_weights(7, 64, 32, True, gen, device)
    x0 = torch.randn(0, 64, device=device)
    with slimkernels.use_backend(impl):
        assert ops.lut_mm(x0, indices, codebook).shape == (0, 7)
        assert ops.dequant_mm_int4(x0, qweight, scales, zeros, 32).shape == (0, 7)


@pytest.mark.parametrize("device,impl", _cuda_native("dequant_mm_int4"))
def test_side_stream_and_graph_capture(device, impl):
    gen = torch.Generator().manual_seed(6)
    n, k = 96, 1024
    qweight, scales, zeros = _int4_weights(n, k, 128, True, gen, device)
    indices, codebook = _lut_weights(n, k, 4, False, gen, device)
    xs = {m: torch.randn(m, k, generator=gen).to(device=device, dtype=torch.float16) for m in (2, 24)}

    def run(x):
        return (ops.dequant_mm_int4(x, qweight, scales, zeros, 128, None), ops.lut_mm(x, indices, codebook, None))

    expected = {m: (reference.dequant_mm_int4(x, qweight, scales, zeros, 128, None),
                    reference.lut_mm(x, indices, codebook, None)) for m, x in xs.items()}
    side = torch.cuda.Stream()
    with slimkernels.use_backend(impl):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            on_side = {m: run(x) for m, x in xs.items()}
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        for m in xs:
            for got, exp in zip(on_side[m], expected[m]):
                _assert_close(got, exp, torch.float16, f"side stream M={m}")

        # Warm up on a side stream (as torch.cuda.graph requires), capture, replay with new inputs.
        static = {m: x.clone() for m, x in xs.items()}
        with torch.cuda.stream(side):
            for x in static.values():
                run(x)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = {m: run(x) for m, x in static.items()}
        for m, x in xs.items():
            static[m].copy_(x * 0.5)
        graph.replay()
        torch.cuda.synchronize()
        for m, x in xs.items():
            exp = (reference.dequant_mm_int4(x * 0.5, qweight, scales, zeros, 128, None),
                   reference.lut_mm(x * 0.5, indices, codebook, None))
            for got, e in zip(outs[m], exp):
                _assert_close(got, e, torch.float16, f"graph replay M={m}")


@pytest.mark.parametrize("device,impl", _cuda_native("lut_mm"))
def test_opcheck(device, impl):
    gen = torch.Generator().manual_seed(7)
    indices, codebook = _lut_weights(11, 70, 3, True, gen, device)
    qweight, scales, zeros = _int4_weights(11, 64, 32, True, gen, device)
    x = torch.randn(3, 70, generator=gen).to(device)
    x4 = torch.randn(3, 64, generator=gen).to(device)
    with slimkernels.use_backend(impl):
        torch.library.opcheck(torch.ops.slimkernels.lut_mm, (x, indices, codebook, None))
        torch.library.opcheck(torch.ops.slimkernels.dequant_mm_int4, (x4, qweight, scales, zeros, 32, None))


# ---- argument checks of the raw bindings: they throw before touching a device -----------------------
needs_module = pytest.mark.skipif(_native._C_cuda is None, reason="slimkernels._C_cuda was not built")


@needs_module
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(M=_native._C_cuda.lowbit_gemv_max_m + 1 if _native._C_cuda else 9), "M <= "),
        (dict(group_size=48), "group_size"),
        (dict(group_size=0), "group_size"),
        (dict(ldx=100), "ldx"),
        (dict(ldo=10), "ldo"),
        (dict(K=-1), "K must be"),
        (dict(N=1 << 30), "N must be"),
        (dict(x_kind="int8"), "x_kind"),
        (dict(scales=0), "scales"),
    ],
)
def test_int4_binding_rejects(kwargs, match):
    args = dict(x=16, ldx=128, M=1, K=128, x_kind="float16", qweight=16, scales=16, zeros=0, group_size=32, N=16,
                bias=0, out=16, ldo=16, stream=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        _native._C_cuda.dequant_mm_int4_gemv(**args)


@needs_module
@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(bits=5), "bits"), (dict(codebook_rows=3), "codebook_rows"), (dict(codebook=0), "codebook"),
     (dict(indices=0), "codes pointer")],
)
def test_lut_binding_rejects(kwargs, match):
    args = dict(x=16, ldx=64, M=2, K=64, x_kind="bfloat16", indices=16, codebook=16, codebook_rows=1, bits=4, N=8,
                bias=0, out=16, ldo=8, stream=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        _native._C_cuda.lut_mm_gemv(**args)


@needs_module
def test_dequantize_binding_rejects():
    with pytest.raises(ValueError, match="ldw"):
        _native._C_cuda.dequantize_int4(16, 16, 0, 32, 4, 64, 16, 32, "float32", 0)
    with pytest.raises(ValueError, match="w_kind"):
        _native._C_cuda.dequantize_codebook(16, 16, 1, 2, 4, 64, 16, 64, "float64", 0)
