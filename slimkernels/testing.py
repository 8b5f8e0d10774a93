"""Test helpers (shipped, like torch.testing): which (device, implementation) pairs exist here,
and the worst-case inputs every kernel is checked on. pytest is imported only when needed."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from . import backends

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SLOW_IMPLS = {"triton"}  # on CPU Triton runs in its interpreter: small shapes only


def small_only(device: str, impl: str) -> bool:
    return device == "cpu" and impl in SLOW_IMPLS


def rand_int8(*shape, device="cpu", gen=None):
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen).to(device)


EXTREME_INT8 = ("min", "max", "mix", "signs", "checker")


def extreme_int8(kind: str, *shape, device="cpu", gen=None):
    """Worst cases for int8 dot products: all -128 ("min"), all 127 ("max"), random -128/127
    ("mix"), random picks of -128, 127, -127, 0, 1, -1 ("signs"), and a fixed -128/127 pattern
    ("checker": -128 where the flat index is divisible by 3)."""
    if kind == "min":
        t = torch.full(shape, -128, dtype=torch.int8)
    elif kind == "max":
        t = torch.full(shape, 127, dtype=torch.int8)
    elif kind == "mix":
        t = torch.where(torch.rand(shape, generator=gen) < 0.5, torch.tensor(-128, dtype=torch.int8),
                        torch.tensor(127, dtype=torch.int8))
    elif kind == "signs":
        choices = torch.tensor([-128, 127, -127, 0, 1, -1], dtype=torch.int8)
        t = choices[torch.randint(0, len(choices), shape, generator=gen)]
    elif kind == "checker":
        idx = torch.arange(torch.Size(shape).numel()).reshape(shape)
        t = torch.where(idx % 3 == 0, -128, 127).to(torch.int8)
    else:
        raise ValueError(f"unknown extreme_int8 kind {kind!r}; expected one of {EXTREME_INT8}")
    return t.to(device)


# ==== cases: every implementation of an op usable here, and how a test forces one ===============
# (quantize / int8_mm section; the tests of every family parametrize over `cases(op)`.)
@dataclass(frozen=True)
class Case:
    """One way to run an op: a device, an implementation, for the native CPU kernels the
    instruction set they are forced to, and for the Triton GEMMs optionally the split-K policy."""

    device: str
    impl: str
    cpu_isa: Optional[str] = None
    split_k: Optional[str] = None

    @property
    def small(self) -> bool:
        """Slow here (Triton in its CPU interpreter): small shapes only."""
        return small_only(self.device, self.impl)

    @property
    def id(self) -> str:
        parts = (self.device, self.impl, self.cpu_isa, self.split_k and f"splitk_{self.split_k}")
        return "-".join(p for p in parts if p)


def _usable(op: str, impl: str, device: str) -> bool:
    return impl in backends.registered(op, device)


def cases(op: str, *, reference: bool = True, split_k: bool = False, per_isa: bool = True, impls=None):
    """pytest params, one `Case` each, for every implementation of `op` usable here: "reference";
    "native" on CPU once per instruction set this CPU supports (per_isa=False: once, on the best);
    Triton on CPU when its interpreter is on (tests/conftest.py); every implementation on CUDA,
    marked `gpu` (without a CUDA device, one skipped "cuda" param stands for them). split_k: Triton
    cases once per split-K policy ("never", "always") instead of once with the automatic one.
    impls: only these implementations."""
    import pytest

    from . import _native

    def wanted(impl):
        return (impls is None or impl in impls) and (reference or impl != "reference")

    def expand(device, impl, marks=()):
        isas = list(_native._C.supported_isas()) if device == "cpu" and impl == "native" and per_isa else [None]
        policies = ["never", "always"] if split_k and impl == "triton" else [None]
        for isa in isas:
            for policy in policies:
                case = Case(device, impl, isa, policy)
                yield pytest.param(case, id=case.id, marks=list(marks))

    params = []
    for impl in backends.IMPLEMENTATIONS:
        if wanted(impl) and _usable(op, impl, "cpu"):
            params.extend(expand("cpu", impl))
    registered_cuda = [i for i in backends.registered(op, "cuda", usable=False) if wanted(i)]
    if torch.cuda.is_available():
        for impl in registered_cuda:
            if _usable(op, impl, "cuda"):
                params.extend(expand("cuda", impl, [pytest.mark.gpu]))
    elif [i for i in registered_cuda if i != "reference"]:
        params.append(pytest.param(Case("cuda", "none"), id="cuda",
                                   marks=[pytest.mark.gpu, pytest.mark.skip(reason="needs a CUDA device")]))
    return params


@contextlib.contextmanager
def forced(case: Case):
    """Run the body under the case's implementation (slimkernels.use_backend), CPU instruction set
    (use_cpu_isa; None: the best this CPU has) and split-K policy (slimkernels.triton.use_split_k).
    The switches are per thread: a worker thread enters `forced` itself."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(backends.use_backend(case.impl))
        stack.enter_context(backends.use_cpu_isa(case.cpu_isa))
        if case.split_k is not None:
            from . import triton as slim_triton

            stack.enter_context(slim_triton.use_split_k(case.split_k))
        yield case


def opcheck(case: Case, op, args) -> None:
    """torch.library.opcheck of `op` on `args` under `case` (forced). The AOT-dispatch check traces
    the fake kernel and the autograd registration, which do not depend on the implementation: it
    runs for the reference only (it is the slow part, Triton's interpreter twice over)."""
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if case.impl == "reference":
        utils += ("test_aot_dispatch_dynamic",)
    with forced(case):
        torch.library.opcheck(op, args, test_utils=utils)


# ==== int8 generators and exact references (quantize / int8_mm section) ============================
def rand_rows(m: int, k: int, dtype=torch.float32, *, device="cpu", gen=None, spread: bool = False):
    """Random float activations [m, k]; spread: row magnitudes from 1e-3 to 1e3."""
    x = torch.randn(m, k, generator=gen)
    if spread and m:
        x = x * torch.logspace(-3, 3, m)[:, None]
    return x.to(dtype).to(device)


def int8_scaled_inputs(m: int, n: int, k: int, *, device="cpu", gen=None, bias: bool = True):
    """(a int8 [m, k], a_scale [m], b int8 [n, k], b_scale [n], bias [n] or None), scales as dynamic
    quantization makes them."""
    a, b = rand_int8(m, k, device=device, gen=gen), rand_int8(n, k, device=device, gen=gen)
    a_scale = (torch.rand(m, generator=gen) * 4 + 0.05) / 127
    b_scale = (torch.rand(n, generator=gen) * 0.5 + 0.01) / 127
    bias_t = torch.randn(n, generator=gen) * 3 if bias else None
    return a, a_scale.to(device), b, b_scale.to(device), None if bias_t is None else bias_t.to(device)


def int8_mm_exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T of int8 tensors exactly: the int64 product taken mod 2**32, as int32 (on a's device).
    float64 holds every partial sum exactly (|sum| <= 2**14 * K < 2**53) and multiplies fast."""
    acc = (a.cpu().double() @ b.cpu().double().T).to(torch.int64)
    return (torch.remainder(acc + 2**31, 2**32) - 2**31).to(torch.int32).to(a.device)


def scaled_epilogue_exact(acc, a_scale, b_scale, bias, out_dtype) -> torch.Tensor:
    """The epilogue of every int8 GEMM, each step a float32 operation rounded once:
    ((acc * a_scale[m]) * b_scale[n]) + bias[n], then one cast to out_dtype."""
    y = (acc.cpu().float() * a_scale.cpu().float()[:, None]) * b_scale.cpu().float()[None, :]
    if bias is not None:
        y = y + bias.cpu().float()[None, :]
    return y.to(out_dtype).to(acc.device)


def quantize_rows_exact(x: torch.Tensor):
    """The per-row symmetric int8 spec on x [M, K]: scale = amax / 127 in float32 (1 for an all-zero
    row, NaN for a row holding NaN or Inf), q = clamp(round_half_even(x / scale), -127, 127) with a
    true division (0 in NaN rows). Returns (q int8, scale float32) on x's device."""
    xf = x.detach().cpu().float()
    m, k = xf.shape
    if k == 0:
        q, scale = torch.zeros((m, 0), dtype=torch.int8), torch.ones(m)
    else:
        amax = xf.abs().amax(dim=1)  # NaN propagates
        finite = torch.isfinite(amax)
        scale = torch.where(amax == 0, torch.ones_like(amax), amax / 127)
        scale = torch.where(finite, scale, torch.full_like(amax, float("nan")))
        q = torch.round(xf / scale[:, None]).clamp(-127, 127)
        q = torch.where(finite[:, None], q, torch.zeros_like(q)).to(torch.int8)
    return q.to(x.device), scale.to(x.device)


# Rows of special_rows(), by name (index = position).
SPECIAL_ROWS = ("zero", "neg_zero", "nan", "pos_inf", "neg_inf", "all_nan", "ties_scale_1", "ties_scale_2",
                "ties_scale_2m10", "huge", "max_finite", "tiny", "very_small", "neg_amax", "near_ties", "ones")


def special_rows(dtype, k: int, gen=None) -> torch.Tensor:
    """The rows every per-row quantizer gets wrong first (names in SPECIAL_ROWS), [16, k] in dtype,
    k >= 11. Each row starts with its special values and is filled with random values inside its own
    range. Ties: amax 127 (scale 1) with k + 0.5 values, amax 254 (scale 2) with odd values, amax
    127 * 2**-10 with (k + 0.5) * 2**-10 values: exact ties after the division, rounded half to even."""
    if k < 11:
        raise ValueError("special_rows needs k >= 11")
    nan, inf = float("nan"), float("inf")
    fmax = torch.finfo(dtype).max
    big = {torch.float16: 6.0e4}.get(dtype, 3.0e38)
    tiny = {torch.float16: 3.0e-6, torch.bfloat16: 2.0e-39}.get(dtype, 1.0e-40)  # subnormals
    small = 1.0e-4 if dtype == torch.float16 else 1.0e-30
    gen = gen if gen is not None else torch.Generator().manual_seed(k)
    s = 2.0 ** -10

    def row(head, fill):
        r = fill * (torch.rand(k, generator=gen) * 2 - 1)
        r[: len(head)] = torch.tensor(head, dtype=torch.float32)
        return r

    rows = {
        "zero": torch.zeros(k),
        "neg_zero": -torch.zeros(k),
        "nan": row([1.0, nan, -2.0], 1.0),
        "pos_inf": row([inf, 1.0], 1.0),
        "neg_inf": row([2.0, -inf], 1.0),
        "all_nan": torch.full((k,), nan),
        "ties_scale_1": row([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5, -3.5], 100.0),
        "ties_scale_2": row([-254.0, 1.0, 3.0, 5.0, -1.0, -3.0, 253.0, -253.0, 7.0], 200.0),
        "ties_scale_2m10": row([127 * s, 0.5 * s, 1.5 * s, -2.5 * s, 10.5 * s, -99.5 * s], 100 * s),
        "huge": row([big, -big / 3, big / 254], big),
        "max_finite": row([1.0, -fmax], 1.0),
        "tiny": row([tiny, -tiny / 2], tiny),
        "very_small": row([small], small),
        "neg_amax": row([-5.0], 5.0),
        "near_ties": torch.arange(k, dtype=torch.float32) - k // 2,  # scale (k // 2) / 127: many near-ties
        "ones": torch.cat([torch.tensor([-1.0]), torch.ones(k - 1)]),
    }
    assert tuple(rows) == SPECIAL_ROWS
    return torch.stack(list(rows.values())).to(dtype)


def assert_same(got: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Bit for bit (NaN equal to NaN), with the same dtype, shape and device type."""
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype}, expected {expected.dtype}"
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    assert got.device.type == expected.device.type, f"{what}: on {got.device}, expected {expected.device}"
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


# ==== weight-only linear ops: generators and the tolerance (dequant_int8 / lowbit section) ========
# Weights are drawn on the CPU from a seeded generator, then moved to `device`, so every device sees
# the same values.
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_x(m: int, k: int, dtype=torch.float32, *, seed: int = 0, device="cpu", scale: float = 1.0):
    """Activations x [m, k]: standard normal times `scale`, in dtype."""
    return (torch.randn(m, k, generator=_gen(seed + 1000)) * scale).to(dtype).to(device)


def _decades(shape, decades, gen):
    lo, hi = decades
    return 10.0 ** (lo + (hi - lo) * torch.rand(shape, generator=gen))


def make_int8_weight(n: int, k: int, *, seed: int = 0, device="cpu", scale_decades=None):
    """W8A16 weights: (qweight int8 [n, k], scales float32 [n]). Scales in [1e-3, 0.021), or spread
    log-uniformly over scale_decades=(lo, hi) (powers of ten)."""
    gen = _gen(seed)
    qweight = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    scales = torch.rand(n, generator=gen) * 0.02 + 1e-3 if scale_decades is None else _decades(n, scale_decades, gen)
    return qweight.to(device), scales.float().to(device)


def make_int4(n: int, k: int, group_size: int, asym: bool = True, *, seed: int = 0, device="cpu", codes=None,
              scale_decades=None):
    """int4 group-wise weights in the layout of slimkernels.quant.lowbit: (qweight uint8
    [n, ceil(k/2)], scales float32 [n, k/group_size], zeros uint8 (0..15) of the same shape or None
    (symmetric)). Scales in [0.01, 0.11), or log-uniform over scale_decades; codes: use these [n, k]
    codes (0..15) instead of random ones."""
    from .quant import lowbit

    gen = _gen(seed)
    groups = k // group_size
    if codes is None:
        codes = torch.randint(0, 16, (n, k), generator=gen)
    if scale_decades is None:
        scales = torch.rand(n, groups, generator=gen) * 0.1 + 0.01
    else:
        scales = _decades((n, groups), scale_decades, gen)
    zeros = torch.randint(0, 16, (n, groups), generator=gen, dtype=torch.uint8) if asym else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(lowbit.pack_codes(codes, 4)), to(scales.float()), to(zeros)


def make_codebook(n: int, k: int, bits: int, per_row: bool = True, *, seed: int = 0, device="cpu",
                  spread: float = 1.0):
    """Codebook weights: (indices uint8, the packed `bits`-bit codes [n, ceil(k*bits/8)], codebook
    float32 [n if per_row else 1, 2**bits], standard normal times `spread`)."""
    from .quant import lowbit

    gen = _gen(seed)
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen)
    codebook = torch.randn(n if per_row else 1, 1 << bits, generator=gen) * spread
    return lowbit.pack_codes(codes, bits).to(device), codebook.float().to(device)


# One rounding step of the output kind, relative to |y| (2**-23, 2**-10, 2**-7: twice the unit
# roundoff), and the unit roundoff of a value cast to the kind.
OUT_STEP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
# Absolute floor: float16's subnormal spacing (results that small round in absolute terms).
ABS_FLOOR = {torch.float32: 1e-30, torch.float16: 2.0**-24, torch.bfloat16: 1e-30}
# CUDA native and torch (cuBLAS on the dequantized weight, in x's dtype, with its reduced-precision
# reductions): the largest error relative to the largest |reference| of the whole output.
CUDA_MAX_REL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def linear_bound(ref: torch.Tensor, x: torch.Tensor, w: torch.Tensor, case: "Case") -> torch.Tensor:
    """Per-element bound on |got - ref| for y = x @ w.T (+ bias) computed by `case`'s implementation,
    where ref is the reference (float32 GEMM on the float32 weight w [N, K], rounded once to
    x.dtype), S = |x| @ |w|.T, u the unit roundoff of x.dtype:

    * native CPU (and the reference): 1e-5 * S (a float32 sum in another order) + one output step
      * |ref| (a sum that differs in its last bit can round the other way once the bias is added
      or the output is narrowed);
    * Triton: (u_w + K * 2**-24) * S + two output steps * |ref|: the decoded weight is cast to
      x.dtype (u_w = u, 0 for float32), the float32 accumulation runs in another order, and the
      result is rounded by the kernel and by the reference;
    * torch on CPU: 1e-5 * S + 4u * S + one output step * |ref|: for float16/bfloat16 x, the
      product, the scale cast to x.dtype, the scaling and the bias are each rounded in x.dtype;
    * native and torch on CUDA: CUDA_MAX_REL * max|ref| (cuBLAS may reduce in x.dtype).
    Plus ABS_FLOOR."""
    dtype = ref.dtype
    r = ref.detach().cpu().double().abs()
    floor = ABS_FLOOR[dtype]
    if case.device == "cuda" and case.impl in ("native", "torch"):
        top = r.max().item() if r.numel() else 0.0
        return torch.full_like(r, CUDA_MAX_REL[dtype] * max(top, 1e-6))
    s = x.detach().cpu().double().abs() @ w.detach().cpu().double().abs().T
    u = UNIT_ROUNDOFF[dtype] if dtype != torch.float32 else 0.0
    if case.impl == "triton":
        return (u + x.shape[1] * 2.0**-24) * s + 2 * OUT_STEP[dtype] * r + floor
    if case.impl == "torch":
        return (1e-5 + 4 * u) * s + OUT_STEP[dtype] * r + floor
    return 1e-5 * s + OUT_STEP[dtype] * r + floor


def assert_close_linear(got: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, w: torch.Tensor, case: "Case",
                        what: str = "") -> None:
    """got (case's implementation) against ref (the reference) for x [M, K] @ w [N, K].T, w the
    float32 weight, within linear_bound; dtype, shape and device type must match too."""
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype}, expected {ref.dtype}"
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
    assert got.device.type == case.device, f"{what}: on {got.device}, expected {case.device}"
    bound = linear_bound(ref, x, w, case)
    err = (got.detach().cpu().double() - ref.detach().cpu().double()).abs()
    ok = err <= bound  # NaN errors fail
    if not ok.all():
        worst = torch.nan_to_num(err / bound, nan=float("inf")).max().item()
        where = tuple(int(i) for i in (~ok).nonzero()[0])
        raise AssertionError(f"{what}: {int((~ok).sum())} elements outside the bound, worst ratio {worst:.3g}, "
                             f"first at {where}: got {got[where].item()!r}, expected {ref[where].item()!r}")


# ==== optional model zoos ==========================================================================
def import_torchvision():
    """torchvision, importable on a CPU-only torch: a CUDA-built torchvision wheel cannot load its native
    library there, and its import then fails registering fake kernels for two ops (torchvision::nms,
    qnms) whose schemas that library would have defined; so, when the library does not load, define the
    two schemas first (once). Raises ImportError when torchvision is not installed (tests skip on it)."""
    import ctypes
    import glob
    import importlib.util
    import os

    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ImportError("torchvision is not installed")
    global _TORCHVISION_LIB
    if _TORCHVISION_LIB is None and not hasattr(torch.ops.torchvision, "nms"):
        native = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so"))
        try:  # what torchvision does itself; a library that loads defines the schemas
            for path in native:
                ctypes.CDLL(path)
        except OSError:
            pass
        if not hasattr(torch.ops.torchvision, "nms"):
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
            _TORCHVISION_LIB = lib  # kept alive: the definitions last as long as the library object
    import torchvision

    return torchvision


_TORCHVISION_LIB = None
