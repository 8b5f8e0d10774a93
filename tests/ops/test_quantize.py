"""The quantize family (quantize_per_token_int8, quantize_per_channel_int8): every implementation
usable here (reference, native on each CPU instruction set, Triton under the interpreter, CUDA)
against the spec (slimkernels.testing.quantize_rows_exact), bit for bit, scales included; then the
native binding itself (row strides, threads, null pointers, argument validation)."""
from __future__ import annotations

import pytest
import torch

import slimkernels
from slimkernels import _native, ops
from slimkernels.backends.quantize import quantize_rows_int8
from slimkernels.testing import (
    SPECIAL_ROWS, assert_same, cases, forced, opcheck, quantize_rows_exact, rand_rows, special_rows,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
dtype_id = lambda d: str(d).split(".")[-1]  # noqa: E731
CASES = cases("quantize_per_token_int8")

# (M, K): one element, long rows (two passes in Triton's interpreter from K = 129), odd K.
SHAPES = [(1, 1), (1, 4096), (3, 17), (7, 33), (64, 1000), (300, 257)]
SMALL_SHAPES = [(1, 1), (4, 33), (3, 128), (7, 300)]


def check_quantize(case, x, what=""):
    """Both ops on x under the case, against the spec; returns (q, scale)."""
    q_ref, s_ref = quantize_rows_exact(x.reshape(-1, x.shape[-1]))
    with forced(case):
        q, s = ops.quantize_per_token_int8(x)
        if x.dim() == 2:
            q_ch, s_ch = ops.quantize_per_channel_int8(x)
            assert_same(q_ch, q_ref, f"{what} per-channel q")
            assert_same(s_ch, s_ref, f"{what} per-channel scale")
    assert_same(s, s_ref, f"{what} scale")
    assert_same(q, q_ref, f"{what} q")
    return q, s


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES)
def test_random(case, dtype):
    for m, k in SMALL_SHAPES if case.small else SHAPES:
        gen = torch.Generator().manual_seed(m * 31 + k)
        check_quantize(case, rand_rows(m, k, dtype, device=case.device, gen=gen, spread=True), f"{(m, k)}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES)
def test_special_rows(case, dtype):
    """Zero, NaN and Inf rows, exact ties (half to even), huge, max finite, subnormal rows."""
    row = SPECIAL_ROWS.index
    for k in (11, 200):  # one block / two passes in Triton's interpreter
        x = special_rows(dtype, k)
        ties = x[row("ties_scale_1")].float()  # the ties really are ties after the cast to dtype
        assert ties[0].item() == 127.0 and ties[1].item() == 0.5 and ties[7].item() == 126.5
        q, s = check_quantize(case, x.to(case.device), f"K={k}")
        q, s = q.cpu(), s.cpu()
        assert q[row("ties_scale_1"), 1:11].tolist() == [0, 2, 2, 0, -2, -2, 126, -126, 4, -4]
        assert q[row("ties_scale_2"), 1:9].tolist() == [0, 2, 2, 0, -2, 126, -126, 4]
        assert (s[:2] == 1).all() and not q[:2].any()  # zero rows: scale 1, q 0
        bad = slice(row("nan"), row("all_nan") + 1)
        assert s[bad].isnan().all() and not q[bad].any()  # NaN / Inf rows: scale NaN, q 0


@pytest.mark.parametrize("case", CASES)
def test_ties_exhaustive(case):
    """v * scale for every v in [-127, 127] in steps of 1/2 (half the values are exact ties)."""
    k = 64 if case.small else 256
    x = torch.linspace(-127, 127, 509)[:k].reshape(1, k).repeat(4, 1) * torch.tensor([[1.0], [0.5], [3.0], [1e-3]])
    x[:, 0] = 127.0 * torch.tensor([1.0, 0.5, 3.0, 1e-3])
    check_quantize(case, x.to(case.device))


@pytest.mark.parametrize("case", CASES)
def test_strided_and_misaligned_views(case):
    gen = torch.Generator().manual_seed(4)
    big = torch.randn(9, 50, generator=gen).to(case.device)
    check_quantize(case, big[:, 2:35], "row-strided")
    check_quantize(case, big[:, 2:35].T, "column-strided")
    check_quantize(case, big[::2, ::3], "both strided")
    m, k = 5, 67  # starts one element into its buffer: no 16/64-byte alignment
    check_quantize(case, torch.randn(1 + m * k, generator=gen)[1:].view(m, k).to(case.device), "misaligned")
    check_quantize(case, big[3:4, 7:40], "one row")


@pytest.mark.parametrize("case", CASES)
def test_empty(case):
    """M = 0 and K = 0 through the ops (dispatch answers them for every implementation)."""
    with forced(case):
        q, s = ops.quantize_per_token_int8(torch.empty(0, 8, device=case.device))
        assert q.shape == (0, 8) and q.dtype == torch.int8 and s.shape == (0,) and s.dtype == torch.float32
        q, s = ops.quantize_per_token_int8(torch.empty(3, 0, dtype=torch.float16, device=case.device))
        assert q.shape == (3, 0) and torch.equal(s.cpu(), torch.ones(3))  # K = 0: an all-zero row
        q, s = ops.quantize_per_token_int8(torch.randn(2, 3, 0, device=case.device))
        assert q.shape == (6, 0) and torch.equal(s.cpu(), torch.ones(6))
        q, s = ops.quantize_per_token_int8(torch.randn(2, 0, 5, device=case.device))
        assert q.shape == (0, 5) and s.shape == (0,)
        q, s = ops.quantize_per_channel_int8(torch.empty(0, 4, device=case.device))
        assert q.shape == (0, 4) and s.shape == (0,)
        q, s = ops.quantize_per_channel_int8(torch.empty(4, 0, dtype=torch.bfloat16, device=case.device))
        assert q.shape == (4, 0) and torch.equal(s.cpu(), torch.ones(4))


@pytest.mark.parametrize("case", CASES)
def test_flattens_batch_dims(case):
    x = torch.randn(2, 3, 8, device=case.device)
    with forced(case):
        q, s = ops.quantize_per_token_int8(x)
        q1, s1 = ops.quantize_per_token_int8(torch.randn(8, device=case.device))
    assert q.shape == (6, 8) and s.shape == (6,)
    assert q1.shape == (1, 8) and s1.shape == (1,)
    assert_same(q, quantize_rows_exact(x.reshape(6, 8))[0])


@pytest.mark.parametrize("case", cases("quantize_per_token_int8", per_isa=False))
def test_opcheck(case):
    gen = torch.Generator().manual_seed(4)
    opcheck(case, torch.ops.slimkernels.quantize_per_token_int8.default,
            (rand_rows(12, 40, gen=gen, device=case.device).view(3, 4, 40),))
    opcheck(case, torch.ops.slimkernels.quantize_per_channel_int8.default,
            (rand_rows(24, 40, torch.bfloat16, gen=gen, device=case.device),))


def test_reference_semantics():
    """The reference implementation's own contract, on values small enough to check by hand."""
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [float("nan"), 1.0], [float("inf"), 1.0]])
    q, s = quantize_rows_int8(x)
    assert s[0] == 1 and q[0].tolist() == [0, 0]
    assert s[1] == torch.tensor(2.0) / 127 and q[1].tolist() == [64, -127]
    assert torch.isnan(s[2]) and q[2].tolist() == [0, 0]
    assert torch.isnan(s[3]) and q[3].tolist() == [0, 0]


def test_rejects_bad_input():
    with pytest.raises(TypeError, match="x must be"):
        ops.quantize_per_token_int8(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must be"):
        ops.quantize_per_token_int8(torch.ones(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ops.quantize_per_token_int8(torch.tensor(1.0))
    with pytest.raises(ValueError, match="w must be 2-D"):
        ops.quantize_per_channel_int8(torch.ones(2, 3, 4))


# ---- the native CPU binding itself: row strides, threads, null pointers, argument validation -------
C = _native._C
ISAS = list(C.supported_isas()) if C is not None else []
needs_native = pytest.mark.skipif(C is None, reason="slimkernels._C is not built")
KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def run_binding(x, *, threads=1, isa="", ldq=None):
    """_C.quantize_per_token_int8 on x [M, K] (rows at any stride) into a q buffer with ldq >= K
    whose columns past K must stay untouched."""
    m, k = x.shape
    ldq = k if ldq is None else ldq
    qbuf = torch.full((max(m, 1), max(ldq, 1)), 99, dtype=torch.int8)
    scale = torch.full((max(m, 1),), -1.0)
    C.quantize_per_token_int8(x.data_ptr(), x.stride(0) if m > 0 else k, m, k, KIND[x.dtype], qbuf.data_ptr(), ldq,
                              scale.data_ptr(), threads, isa)
    if ldq > k and m > 0:
        assert (qbuf[:m, k:ldq] == 99).all(), "wrote past K"
    return qbuf[:m, :k], scale[:m]


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_binding_strides_and_threads(isa, threads):
    gen = torch.Generator().manual_seed(7)
    for dtype in DTYPES:
        big = rand_rows(300, 270, dtype, gen=gen, spread=True)
        for x, ldq in ((big[:, 2:259], 260), (big[:7, 5:38], 40), (special_rows(dtype, 37), 37)):
            q, s = run_binding(x, threads=threads, isa=isa, ldq=ldq)
            q_ref, s_ref = quantize_rows_exact(x)
            assert_same(s, s_ref, f"{dtype} {tuple(x.shape)} scale")
            assert_same(q, q_ref, f"{dtype} {tuple(x.shape)} q")


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_binding_empty(isa):
    C.quantize_per_token_int8(0, 16, 0, 16, "float32", 0, 16, 0, 1, isa)  # M = 0: a no-op, null pointers allowed
    s = torch.full((3,), -1.0)
    C.quantize_per_token_int8(0, 0, 3, 0, "float32", 0, 0, s.data_ptr(), 1, isa)  # K = 0: scale 1
    assert (s == 1.0).all()


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_binding_7bit_qmax(isa):
    """qmax = 63 (W8A8 act_bits=7): scale = amax / 63, |q| <= 63, ties to even; the reference's bits."""
    gen = torch.Generator().manual_seed(8)
    for dtype in DTYPES:
        for x in (rand_rows(37, 270, dtype, gen=gen, spread=True), special_rows(dtype, 37)):
            qbuf, scale = torch.empty(x.shape, dtype=torch.int8), torch.empty(x.shape[0])
            C.quantize_per_token_int8(x.data_ptr(), x.shape[1], x.shape[0], x.shape[1], KIND[dtype], qbuf.data_ptr(),
                                      x.shape[1], scale.data_ptr(), 2, isa, 63)
            q_ref, s_ref = quantize_rows_int8(x, 63)
            assert_same(scale, s_ref, f"{dtype} scale")
            assert_same(qbuf, q_ref, f"{dtype} q")
            assert qbuf.abs().max() <= 63
    ties = torch.arange(-63, 63.5, 0.5).reshape(1, -1)  # amax 63: scale 1, every other value a tie
    q, s = quantize_rows_int8(ties, 63)
    assert s.item() == 1.0 and torch.equal(q[0].float(), torch.round(ties[0]))


@needs_native
def test_binding_bad_arguments_raise_value_error():
    x, q, sc = torch.ones(2, 8), torch.empty(2, 8, dtype=torch.int8), torch.ones(2)
    good = dict(x=x.data_ptr(), ldx=8, M=2, K=8, x_kind="float32", q=q.data_ptr(), ldq=8, scale=sc.data_ptr(),
                num_threads=1)
    C.quantize_per_token_int8(**good)
    for bad in [dict(M=-1), dict(K=-1), dict(ldx=7), dict(ldq=7), dict(x_kind="int8"), dict(x=0), dict(q=0),
                dict(scale=0), dict(num_threads=0), dict(isa="nope"), dict(qmax=0), dict(qmax=128)]:
        with pytest.raises(ValueError):
            C.quantize_per_token_int8(**{**good, **bad})


@needs_native
def test_cpu_isa_switch():
    """The switch takes the ISAs this CPU has (and None) and rejects the others."""
    before = slimkernels.get_cpu_isa()
    for isa in ("avx512_vnni", "avx2", "scalar"):
        if isa in ISAS:
            with slimkernels.use_cpu_isa(isa):
                assert slimkernels.get_cpu_isa() == isa
        else:
            with pytest.raises(ValueError, match="cannot run"):
                slimkernels.set_cpu_isa(isa)
    assert slimkernels.get_cpu_isa() == before
    with pytest.raises(ValueError, match="unknown slimkernels cpu_isa"):
        slimkernels.set_cpu_isa("avx9000")
