"""slimkernels._C: the native CPU int8 GEMM and per-token quantization, every ISA against torch.

Integer results bit-exact (int64 reference reduced mod 2^32); float outputs equal to the torch
reference computed the same way in float32 ((acc * a_scale) * b_scale + bias), rounded once.
"""
from __future__ import annotations

import glob
import importlib.util
import os

import pytest
import torch


def _load_native():
    try:
        import slimkernels._C as C

        return C
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        paths = glob.glob(os.path.join(root, "slimkernels", "_C*.so"))
        if not paths:
            pytest.skip("slimkernels._C is not built", allow_module_level=True)
        spec = importlib.util.spec_from_file_location("slimkernels._C", paths[0])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


C = _load_native()
from slimkernels.quant.packing import pack_int8_cpu  # noqa: E402

ISAS = C.supported_isas()
KINDS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def test_isa_queries():
    assert C.cpu_isa() == ISAS[0]
    assert ISAS[-1] == "scalar"
    assert set(ISAS) <= {"avx512_vnni", "avx2", "scalar"}


# ---------------------------------------------------------------------------------------------- gemm


def ref_acc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int32 accumulator, exact: int64 product reduced mod 2^32."""
    return (a.to(torch.int64) @ b.to(torch.int64).T).to(torch.int32)


def ref_out(acc, a_scale, b_scale, bias, kind):
    v = (acc.to(torch.float32) * a_scale[:, None]) * b_scale[None, :]
    if bias is not None:
        v = v + bias[None, :]
    return v.to(KINDS[kind])


def run_gemm(a, b, *, kind="int32", a_scale=None, b_scale=None, bias=None, threads=1, isa="", lda=None, ldc=None,
             packed=None):
    """a: [M, K] int8 (possibly a strided view), b: [N, K] int8. Returns out [M, N] (view of a padded buffer)."""
    m, k = a.shape
    n = b.shape[0]
    if packed is None:
        packed = pack_int8_cpu(b)
    lda = a.stride(0) if lda is None else lda
    ldc = n if ldc is None else ldc
    dtype = torch.int32 if kind == "int32" else KINDS[kind]
    buf = torch.full((max(m, 1), max(ldc, 1)), 7, dtype=dtype)  # sentinel outside [:, :n]
    C.int8_gemm(a.data_ptr(), lda, packed.data_ptr(), m, n, k, buf.data_ptr(), ldc, kind,
                0 if a_scale is None else a_scale.data_ptr(), 0 if b_scale is None else b_scale.data_ptr(),
                0 if bias is None else bias.data_ptr(), threads, isa)
    if ldc > n and m > 0:
        assert (buf[:m, n:ldc] == 7).all(), "wrote past N"
    return buf[:m, :n]


def rand_i8(*shape, gen=None):
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen)


SHAPES = [  # (M, N, K)
    (1, 16, 4), (1, 1, 1), (1, 33, 13), (2, 1, 7), (17, 33, 13), (3, 47, 64), (9, 48, 100), (8, 49, 4),
    (5, 97, 129), (1, 300, 520), (16, 144, 256), (64, 300, 520), (31, 17, 1),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_int32_random(isa, shape, threads):
    m, n, k = shape
    g = torch.Generator().manual_seed(m * 1000003 + n * 1009 + k)
    a, b = rand_i8(m, k, gen=g), rand_i8(n, k, gen=g)
    out = run_gemm(a, b, threads=threads, isa=isa)
    assert torch.equal(out, ref_acc(a, b))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("pattern", ["all_min", "all_max", "min_max", "mixed"])
def test_gemm_int32_extremes(isa, pattern):
    m, n, k = 11, 37, 1030
    if pattern == "all_min":  # -128 * -128 everywhere: the case a saturating u8 x s8 kernel gets wrong
        a, b = torch.full((m, k), -128, dtype=torch.int8), torch.full((n, k), -128, dtype=torch.int8)
    elif pattern == "all_max":
        a, b = torch.full((m, k), 127, dtype=torch.int8), torch.full((n, k), 127, dtype=torch.int8)
    elif pattern == "min_max":
        a, b = torch.full((m, k), -128, dtype=torch.int8), torch.full((n, k), 127, dtype=torch.int8)
    else:
        g = torch.Generator().manual_seed(5)
        choices = torch.tensor([-128, 127, -127, 0, 1, -1], dtype=torch.int8)
        a = choices[torch.randint(0, 6, (m, k), generator=g)]
        b = choices[torch.randint(0, 6, (n, k), generator=g)]
    for threads in (1, 2):
        assert torch.equal(run_gemm(a, b, threads=threads, isa=isa), ref_acc(a, b))


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_int32_wraps_mod_2_32(isa):
    # K large enough that -128 * -128 sums exceed 2^31: must wrap exactly like the int64 reference mod 2^32.
    m, n, k = 2, 20, 140000
    a, b = torch.full((m, k), -128, dtype=torch.int8), torch.full((n, k), -128, dtype=torch.int8)
    b[3, :] = 127
    out = run_gemm(a, b, threads=2, isa=isa)
    ref = ref_acc(a, b)
    assert (a.to(torch.int64) @ b.to(torch.int64).T).abs().max() > 2**31
    assert torch.equal(out, ref)


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_strided_a_and_c(isa):
    g = torch.Generator().manual_seed(1)
    m, n, k = 13, 35, 22
    big = rand_i8(m, k + 9, gen=g)
    a = big[:, 3:3 + k]  # lda = k + 9 > K, offset start
    b = rand_i8(n, k, gen=g)
    for threads in (1, 2):
        out = run_gemm(a, b, isa=isa, threads=threads, ldc=n + 5)
        assert torch.equal(out, ref_acc(a, b))


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_empty(isa):
    g = torch.Generator().manual_seed(2)
    b = rand_i8(5, 8, gen=g)
    packed = pack_int8_cpu(b)
    out = torch.full((1, 5), 3, dtype=torch.int32)
    # M == 0 and N == 0: no-op (null pointers allowed)
    C.int8_gemm(0, 8, packed.data_ptr(), 0, 5, 8, 0, 5, "int32", 0, 0, 0, 1, isa)
    C.int8_gemm(0, 8, 0, 3, 0, 8, 0, 0, "float32", 0, 0, 0, 2, isa)
    C.int8_gemm(0, 8, packed.data_ptr(), 0, 5, 8, out.data_ptr(), 5, "float32", 0, 0, 0, 1, isa)
    assert (out == 3).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["int32", "float32", "float16", "bfloat16"])
def test_gemm_k_zero(isa, kind):
    m, n = 3, 20
    a = torch.zeros(m, 0, dtype=torch.int8)
    b = torch.zeros(n, 0, dtype=torch.int8)
    a_scale = torch.rand(m) + 0.5
    b_scale = torch.rand(n) + 0.5
    bias = torch.randn(n)
    out = run_gemm(a, b, kind=kind, a_scale=a_scale, b_scale=b_scale, bias=bias, isa=isa, lda=0)
    if kind == "int32":
        assert torch.equal(out, torch.zeros(m, n, dtype=torch.int32))
    else:
        assert torch.equal(out, ref_out(torch.zeros(m, n, dtype=torch.int32), a_scale, b_scale, bias, kind))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 33, 13), (17, 50, 64), (64, 300, 520)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_float_out(isa, kind, with_bias, shape, threads):
    m, n, k = shape
    g = torch.Generator().manual_seed(n * 7 + k)
    a, b = rand_i8(m, k, gen=g), rand_i8(n, k, gen=g)
    a_scale = torch.rand(m, generator=g) * 0.02 + 1e-4
    b_scale = torch.rand(n, generator=g) * 0.01 + 1e-4
    bias = torch.randn(n, generator=g) * 3 if with_bias else None
    out = run_gemm(a, b, kind=kind, a_scale=a_scale, b_scale=b_scale, bias=bias, threads=threads, isa=isa)
    ref = ref_out(ref_acc(a, b), a_scale, b_scale, bias, kind)
    assert out.dtype == ref.dtype
    assert torch.equal(out, ref)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_gemm_half_rounding_edges(isa, kind):
    # Scales that push results into fp16 overflow / subnormal range and exact rounding ties.
    g = torch.Generator().manual_seed(11)
    m, n, k = 6, 40, 24
    a, b = rand_i8(m, k, gen=g), rand_i8(n, k, gen=g)
    a_scale = torch.tensor([1.0, 1e-7, 300.0, 2.0**-20, 1.0 / 3.0, 65504.0 / 200000.0])
    b_scale = torch.logspace(-9, 3, n)
    b_scale[0] = float("inf")  # inf * 0 -> NaN must stay NaN; inf * x -> inf
    bias = torch.randn(n, generator=g)
    out = run_gemm(a, b, kind=kind, a_scale=a_scale, b_scale=b_scale, bias=bias, isa=isa)
    ref = ref_out(ref_acc(a, b), a_scale, b_scale, bias, kind)
    nan = ref.isnan()
    assert torch.equal(out.isnan(), nan)
    assert torch.equal(out[~nan], ref[~nan])


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_isas_agree_large(isa):
    g = torch.Generator().manual_seed(3)
    m, n, k = 37, 200, 1001
    a, b = rand_i8(m, k, gen=g), rand_i8(n, k, gen=g)
    assert torch.equal(run_gemm(a, b, isa=isa, threads=2), ref_acc(a, b))


# ------------------------------------------------------------------------------------------ quantize


def ref_quantize(x: torch.Tensor):
    xf = x.float()
    amax = xf.abs().amax(dim=1) if xf.shape[1] > 0 else torch.zeros(xf.shape[0])
    finite = torch.isfinite(xf).all(dim=1)
    scale = amax / 127.0
    scale = torch.where(amax == 0, torch.ones_like(scale), scale)
    scale = torch.where(finite, scale, torch.full_like(scale, float("nan")))
    q = torch.round(xf / scale[:, None]).clamp(-127, 127)
    q = torch.where(torch.isnan(q), torch.zeros_like(q), q)
    return q.to(torch.int8), scale


def run_quantize(x, *, threads=1, isa="", ldq=None):
    m, k = x.shape
    ldq = k if ldq is None else ldq
    qbuf = torch.full((max(m, 1), max(ldq, 1)), 99, dtype=torch.int8)
    scale = torch.full((max(m, 1),), -1.0)
    C.quantize_per_token_int8(x.data_ptr(), x.stride(0) if m > 0 else k, m, k,
                              {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[x.dtype],
                              qbuf.data_ptr(), ldq, scale.data_ptr(), threads, isa)
    if ldq > k and m > 0:
        assert (qbuf[:m, k:ldq] == 99).all(), "wrote past K"
    return qbuf[:m, :k], scale[:m]


def assert_quant_equal(x, q, s):
    rq, rs = ref_quantize(x)
    assert torch.equal(s.isnan(), rs.isnan())
    ok = ~rs.isnan()
    assert torch.equal(s[ok], rs[ok])
    assert torch.equal(q, rq)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (1, 4096), (3, 17), (7, 33), (64, 1000), (300, 257)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2])
def test_quantize_random(isa, dtype, shape, threads):
    g = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    x = (torch.randn(shape, generator=g) * torch.logspace(-3, 3, shape[0])[:, None]).to(dtype)
    q, s = run_quantize(x, threads=threads, isa=isa)
    assert_quant_equal(x, q, s)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_quantize_special_rows(isa, dtype):
    k = 37
    g = torch.Generator().manual_seed(9)
    rows = torch.randn(12, k, generator=g)
    rows[0] = 0.0  # zero row -> scale 1, q 0
    rows[1, 5] = float("nan")
    rows[2, 36] = float("inf")
    rows[3, 0] = -float("inf")
    rows[4] *= 1e30 if dtype != torch.float16 else 1e4  # huge
    rows[5] *= 1e-30 if dtype != torch.float16 else 1e-6  # tiny (fp16: subnormal)
    rows[6] = -0.0
    rows[7] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5] * 7 + [127.0, -127.0])  # exact .5 ties after division
    rows[8, 3] = 3.4e38 if dtype != torch.float16 else 65504.0  # max finite
    rows[9] = torch.arange(k, dtype=torch.float32) - 18  # scale = 18/127: many near-ties
    rows[10] *= 1e-39 if dtype == torch.float32 else 1.0  # float32 subnormals
    rows[11, :] = 1.0
    rows[11, 0] = -1.0
    x = rows.to(dtype)
    for threads in (1, 2):
        q, s = run_quantize(x, threads=threads, isa=isa)
        assert_quant_equal(x, q, s)
        assert s[0] == 1.0 and (q[0] == 0).all()
        assert s[1].isnan() and s[2].isnan() and s[3].isnan()
        assert (q[1:4] == 0).all()


@pytest.mark.parametrize("isa", ISAS)
def test_quantize_ties_exhaustive(isa):
    # Values v * scale where v hits half-integers exactly: round half to even must match torch.
    k = 256
    x = torch.linspace(-127, 127, 509)[:k].reshape(1, k).repeat(4, 1) * torch.tensor([[1.0], [0.5], [3.0], [1e-3]])
    x[:, 0] = 127.0 * torch.tensor([1.0, 0.5, 3.0, 1e-3])
    q, s = run_quantize(x, isa=isa)
    assert_quant_equal(x, q, s)


@pytest.mark.parametrize("isa", ISAS)
def test_quantize_strided_and_empty(isa):
    g = torch.Generator().manual_seed(4)
    big = torch.randn(9, 50, generator=g)
    x = big[:, 2:35]
    q, s = run_quantize(x, isa=isa, ldq=40)
    assert_quant_equal(x, q, s)
    # M == 0: no-op; K == 0: scale 1 (an all-zero row)
    C.quantize_per_token_int8(0, 16, 0, 16, "float32", 0, 16, 0, 1, isa)
    s = torch.full((3,), -1.0)
    C.quantize_per_token_int8(0, 0, 3, 0, "float32", 0, 0, s.data_ptr(), 1, isa)
    assert (s == 1.0).all()


# ------------------------------------------------------------------------------------- bad arguments


def test_bad_arguments_raise_value_error():
    a = torch.ones(2, 8, dtype=torch.int8)
    packed = pack_int8_cpu(torch.ones(3, 8, dtype=torch.int8))
    out = torch.empty(2, 3, dtype=torch.float32)
    sc = torch.ones(3)
    good = dict(a=a.data_ptr(), lda=8, packed=packed.data_ptr(), M=2, N=3, K=8, out=out.data_ptr(), ldc=3,
                out_kind="float32", a_scale=sc.data_ptr(), b_scale=sc.data_ptr(), bias=0, num_threads=1)
    C.int8_gemm(**good)
    bads = [dict(M=-1), dict(N=-1), dict(K=-2), dict(lda=7), dict(ldc=2), dict(out_kind="int8"), dict(a_scale=0),
            dict(b_scale=0), dict(out=0), dict(a=0), dict(packed=0), dict(num_threads=0), dict(isa="avx9000")]
    for b in bads:
        with pytest.raises(ValueError):
            C.int8_gemm(**{**good, **b})
    with pytest.raises(ValueError, match="lda"):
        C.int8_gemm(**{**good, "lda": 7})
    x = torch.ones(2, 8)
    q = torch.empty(2, 8, dtype=torch.int8)
    goodq = dict(x=x.data_ptr(), ldx=8, M=2, K=8, x_kind="float32", q=q.data_ptr(), ldq=8, scale=sc.data_ptr(),
                 num_threads=1)
    C.quantize_per_token_int8(**goodq)
    for b in [dict(M=-1), dict(K=-1), dict(ldx=7), dict(ldq=7), dict(x_kind="int8"), dict(x=0), dict(q=0),
              dict(scale=0), dict(num_threads=0), dict(isa="nope")]:
        with pytest.raises(ValueError):
            C.quantize_per_token_int8(**{**goodq, **b})


def test_unsupported_isa_raises():
    for name in ("avx512_vnni", "avx2", "scalar"):
        if name not in ISAS:
            with pytest.raises(ValueError):
                C.int8_gemm(0, 0, 0, 0, 0, 0, 0, 0, "int32", 0, 0, 0, 1, name)


def test_concurrent_python_threads():
    # Several Python threads calling at once must neither deadlock nor mix results.
    import threading

    g = torch.Generator().manual_seed(8)
    cases = [(rand_i8(24, 300, gen=g), rand_i8(160, 300, gen=g)) for _ in range(4)]
    refs = [ref_acc(a, b) for a, b in cases]
    errors = []

    def work(i):
        a, b = cases[i]
        packed = pack_int8_cpu(b)
        for _ in range(20):
            if not torch.equal(run_gemm(a, b, threads=2, packed=packed), refs[i]):
                errors.append(i)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts)
    assert not errors
