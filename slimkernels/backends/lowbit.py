"""Implementations of the lowbit family (int4 group-wise and 2/3/4-bit codebooks): reference, native
CPU (one kernel for both formats, with AVX-512/AVX2/AMX paths) and CUDA, and Triton. Inputs arrive
validated and non-empty (see backends/__init__.py); layouts in quant/lowbit.py."""
import functools
from typing import Optional

import torch
import torch.nn.functional as F

from .. import _native
from .._switch import CPU_BF16
from ..quant import lowbit
from . import register, row_stride
from ._common import KIND, cpu_amx, cpu_isa, cuda_stream, f32, linear_f32, ptr, threads
from .quantize import ALL_DEVICES, quantize_rows_int8


# ---- reference: the spec ---------------------------------------------------------------------------
@register("dequant_mm_int4", "reference", ALL_DEVICES)
def dequant_mm_int4_reference(x, qweight, scales, zeros, group_size, bias):
    """x @ dequantize_int4(...).T + bias: weights dequantized in float32, the GEMM in float32."""
    return linear_f32(x, lowbit.dequantize_int4(qweight, scales, zeros, group_size, x.shape[1]), bias)


@register("dequant_mm_int4_a8", "reference", ALL_DEVICES)
def dequant_mm_int4_a8_reference(x, qweight, scales, zeros, group_size, bias):
    """x quantized per token (quantize_per_token_int8's spec), exact integer sums per group,
    D[g] = q_g @ xq_g - z_g * sum(xq_g), then in float32, g ascending: acc = acc + s[:, g] * D[g],
    y = acc * sx + bias, returned in x.dtype (the scalar kernel's arithmetic, step by step)."""
    m, k = x.shape
    n, groups = scales.shape
    xq, sx = quantize_rows_int8(x)
    # int64 holds every sum; off the CPU (no integer bmm) float64 does (|sum| < 2^53).
    exact = torch.int64 if x.device.type == "cpu" else torch.float64
    q = lowbit.unpack_codes(qweight, 4, k).to(exact).view(n, groups, group_size).permute(1, 2, 0)  # [G, gs, N]
    xg = xq.to(exact).view(m, groups, group_size).transpose(0, 1)  # [G, M, gs]
    z = torch.full_like(scales, lowbit.INT4_ZERO_SYMMETRIC) if zeros is None else zeros
    d = torch.bmm(xg, q) - xg.sum(-1)[:, :, None] * z.to(exact).T[:, None, :]  # [G, M, N]
    acc = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    for g in range(groups):
        acc = acc + scales[:, g][None, :] * d[g].float()
    y = acc * sx[:, None]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@register("lut_mm", "reference", ALL_DEVICES)
def lut_mm_reference(x, indices, codebook, bias):
    """x @ codebook[row, indices].T + bias, in float32, returned in x.dtype."""
    return linear_f32(x, lowbit.dequantize_codebook(indices, codebook, x.shape[1]), bias)


# ---- native CPU ------------------------------------------------------------------------------------
# bf16 dot products (AVX512-BF16, isa "avx512_bf16") under cpu_bf16 "auto": from this many rows of x
# on, or never when None. None for now: on the one CPU measured (Intel Xeon with AMX, 2 vCPUs) the bf16
# kernels ran at 0.65x (M = 1) to 0.85-1.0x (M = 8..128) of the float32 ones for int4, 4-bit codebooks
# and int8, since vdpbf16ps issues at half the rate of vfmadd231ps there (measured: 1.07 vs 1.80 G
# instructions/s), so its 32 products per instruction buy nothing and the bf16 rounding costs extra
# (bench/results/2026-11-30-weight-only-bf16.md). CPUs where vdpbf16ps issues at the FMA rate (AMD
# Zen 4/5) should gain up to 2x from M = 8: set these from a run of bench/weight_only_bf16.py there.
# With AMX present and cpu_amx "auto", AMX still takes int4 from 6 rows, codebooks from 16 (bf16
# numerics) or 256 (float32-exact) and w8a16 from 16 (csrc/include/slim/lowbit.h, dequant_int8.h).
# 3-bit codebooks have no bf16 path.
LOWBIT_BF16_MIN_M: Optional[int] = None


@functools.lru_cache(maxsize=None)
def avx512_bf16_supported() -> bool:
    """Whether this CPU and build run the weight-only kernels' bf16 dot products: the native ISA
    resolver accepts "avx512_bf16" only then (probed with an empty problem)."""
    C = _native._C
    if C is None:
        return False
    try:
        C.dequant_mm_int8(0, 0, "float32", 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, "avx512_bf16")
    except ValueError:
        return False
    return True


def weight_only_isa(m: int, min_m: Optional[int]):
    """(isa, amx) for a weight-only native CPU call with m rows of x, per the cpu_bf16 switch;
    min_m: the "auto" threshold (None: never)."""
    isa, amx, mode = cpu_isa(), cpu_amx(), CPU_BF16.get()
    # "auto" only while the ISA is automatic: a forced ISA runs that tier's float32 kernels.
    if mode == "off" or (mode == "auto" and (min_m is None or m < min_m or isa != "")):
        return isa, amx
    if mode == "on":
        if not avx512_bf16_supported():
            raise ValueError("cpu_bf16='on': this CPU or build has no AVX512-BF16 (vdpbf16ps); use 'auto' or 'off'")
        if isa not in ("", "avx512_vnni"):
            raise ValueError(f"cpu_bf16='on' needs the avx512_vnni ISA tier, but cpu_isa is forced to {isa!r}")
        return "avx512_bf16", amx  # bf16 numerics: AMX tiles on rounded operands where AMX runs, else vdpbf16ps
    return ("avx512_bf16" if avx512_bf16_supported() else isa), amx


def _lowbit_cpu(x, codes, bits, lut_kind, n, *, scales=None, zeros=None, group_size=0, codebook=None, bias=None):
    """The one call into the native low-bit kernel (int4 and codebooks share it)."""
    m, k = x.shape
    bias = f32(bias)
    y = torch.empty((m, n), dtype=x.dtype)
    isa, amx = weight_only_isa(m, LOWBIT_BF16_MIN_M) if bits != 3 else (cpu_isa(), cpu_amx())
    _native.require_cpu().lowbit_mm(
        x.data_ptr(), row_stride(x), KIND[x.dtype], codes.data_ptr(), bits, lut_kind, ptr(scales), ptr(zeros),
        group_size, ptr(codebook), 0 if codebook is None else codebook.shape[0], ptr(bias), y.data_ptr(), n, m, n, k,
        threads(), isa, amx,
    )
    return y


@register("dequant_mm_int4", "native", ("cpu",), strided_rows=True)
def dequant_mm_int4_cpu(x, qweight, scales, zeros, group_size, bias):
    return _lowbit_cpu(x, qweight, 4, "int4", qweight.shape[0], scales=scales, zeros=zeros, group_size=group_size,
                       bias=bias)


@register("lut_mm", "native", ("cpu",), strided_rows=True)
def lut_mm_cpu(x, indices, codebook, bias):
    bits = lowbit.bits_from_codebook(codebook.shape[1])
    return _lowbit_cpu(x, indices, bits, "codebook", indices.shape[0], group_size=x.shape[1], codebook=codebook,
                       bias=bias)


@register("dequant_mm_int4_a8", "native", ("cpu",), strided_rows=True)
def dequant_mm_int4_a8_cpu(x, qweight, scales, zeros, group_size, bias):
    m, k = x.shape
    n = qweight.shape[0]
    bias = f32(bias)
    y = torch.empty((m, n), dtype=x.dtype)
    _native.require_cpu().dequant_mm_int4_a8(x.data_ptr(), row_stride(x), KIND[x.dtype], qweight.data_ptr(),
                                             scales.data_ptr(), ptr(zeros), group_size, ptr(bias), y.data_ptr(), n,
                                             m, n, k, threads(), cpu_isa())
    return y


# ---- native CUDA -----------------------------------------------------------------------------------
# Provisional until measured on a GPU (bench/gpu_session.sh): M <= LOWBIT_GEMV_MAX_M runs the
# fused GEMV (weights read once, dequantized in registers); larger M dequantizes into an [N, K]
# scratch in x's dtype and calls torch's matmul (cuBLAS tensor cores). The GEMV's own ceiling is
# _C_cuda.lowbit_gemv_max_m (8).
LOWBIT_GEMV_MAX_M = 8


def _lowbit_cuda(x, n, bias, gemv, dequantize):
    """gemv(x, ldx, out, bias_f32, stream) for small M, else dequantize(w, stream) + F.linear."""
    m = x.shape[0]
    stream = cuda_stream(x.device)
    with torch.cuda.device(x.device):
        if m <= LOWBIT_GEMV_MAX_M:
            out = torch.empty((m, n), dtype=x.dtype, device=x.device)
            gemv(x, row_stride(x), out, f32(bias), stream)
            return out
        w = torch.empty((n, x.shape[1]), dtype=x.dtype, device=x.device)
        dequantize(w, stream)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


@register("dequant_mm_int4", "native", ("cuda",), strided_rows=True)
def dequant_mm_int4_cuda(x, qweight, scales, zeros, group_size, bias):
    n, k = qweight.shape[0], x.shape[1]
    C = _native.require_cuda()

    def gemv(x, ldx, out, bias32, stream):
        C.dequant_mm_int4_gemv(x.data_ptr(), ldx, x.shape[0], k, KIND[x.dtype], qweight.data_ptr(), scales.data_ptr(),
                               ptr(zeros), group_size, n, ptr(bias32), out.data_ptr(), n, stream)

    def dequantize(w, stream):
        C.dequantize_int4(qweight.data_ptr(), scales.data_ptr(), ptr(zeros), group_size, n, k, w.data_ptr(), k,
                          KIND[w.dtype], stream)

    return _lowbit_cuda(x, n, bias, gemv, dequantize)


@register("lut_mm", "native", ("cuda",), strided_rows=True)
def lut_mm_cuda(x, indices, codebook, bias):
    n, k = indices.shape[0], x.shape[1]
    C = _native.require_cuda()
    bits = lowbit.bits_from_codebook(codebook.shape[1])
    rows = codebook.shape[0]

    def gemv(x, ldx, out, bias32, stream):
        C.lut_mm_gemv(x.data_ptr(), ldx, x.shape[0], k, KIND[x.dtype], indices.data_ptr(), codebook.data_ptr(), rows,
                      bits, n, ptr(bias32), out.data_ptr(), n, stream)

    def dequantize(w, stream):
        C.dequantize_codebook(indices.data_ptr(), codebook.data_ptr(), rows, bits, n, k, w.data_ptr(), k,
                              KIND[w.dtype], stream)

    return _lowbit_cuda(x, n, bias, gemv, dequantize)


# ---- Triton ------------------------------------------------------------------------------------------
@register("dequant_mm_int4", "triton", ("cuda", "cpu"), strided_rows=True)
def dequant_mm_int4_triton(x, qweight, scales, zeros, group_size, bias):
    from ..triton.lowbit import dequant_mm_int4

    return dequant_mm_int4(x, qweight, scales, zeros, group_size, bias)


@register("lut_mm", "triton", ("cuda", "cpu"), strided_rows=True)
def lut_mm_triton(x, indices, codebook, bias):
    from ..triton.lowbit import lut_mm

    return lut_mm(x, indices, codebook, bias)
