"""Implementations of the int8_mm family: reference, native CPU (packed VNNI layout) and CUDA, and
Triton. Inputs arrive validated and non-empty (see backends/__init__.py); packed layouts are in
quant/packing.py and depend on the device only."""
import torch

from .. import _native
from ..quant import packing
from . import register
from ._common import KIND, cpu_amx, cpu_isa, cuda_stream, f32, pad_k, ptr, threads
from .quantize import ALL_DEVICES, act_qmax, quantize_rows_int8, quantize_rows_int8_cuda, quantize_rows_int8_triton


# ---- reference: the spec ---------------------------------------------------------------------------
def exact_int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T exactly, wrapped to int32. float64 holds every partial sum exactly (|sum| < 2^53)."""
    if a.device.type == "cpu":
        acc = a.to(torch.int64) @ b.to(torch.int64).T
    else:  # int64 matmul is CPU-only in torch
        acc = (a.double() @ b.double().T).to(torch.int64)
    return acc.to(torch.int32)


def scaled_epilogue(acc, a_scale, b_scale, bias, out_dtype):
    """The epilogue every int8 kernel fuses: ((acc * a_scale[m]) * b_scale[n]) + bias[n] in float32."""
    y = (acc.float() * a_scale[:, None]) * b_scale[None, :]
    if bias is not None:
        y = y + bias.float()[None, :]
    return y.to(out_dtype)


@register("int8_mm", "reference", ALL_DEVICES)
def int8_mm_reference(a, b):
    return exact_int8_mm(a, b)


@register("int8_scaled_mm", "reference", ALL_DEVICES)
def int8_scaled_mm_reference(a, a_scale, b, b_scale, bias, out_dtype):
    return scaled_epilogue(exact_int8_mm(a, b), a_scale, b_scale, bias, out_dtype)


@register("int8_scaled_mm_packed", "reference", ALL_DEVICES)
def int8_scaled_mm_packed_reference(a, a_scale, b_packed, b_scale, bias, out_dtype):
    b = packing.unpack_int8(b_packed, b_scale.shape[0], a.shape[1])
    return int8_scaled_mm_reference(a, a_scale, b, b_scale, bias, out_dtype)


def register_dynamic_linear(impl, devices, quantize_rows, scaled_mm_packed):
    """int8_dynamic_linear for an implementation = its own per-token quantize + its packed GEMM. 7-bit
    activations (act_bits=7) are quantized by the reference: the same bits by spec, and these
    implementations' quantize kernels are 8-bit only."""

    @register("int8_dynamic_linear", impl, devices)
    def int8_dynamic_linear(x, w_packed, w_scale, bias, act_bits):
        q, scale = quantize_rows(x) if act_bits == 8 else quantize_rows_int8(x, act_qmax(act_bits))
        return scaled_mm_packed(q, scale, w_packed, w_scale, bias, x.dtype)

    return int8_dynamic_linear


register_dynamic_linear("reference", ALL_DEVICES, quantize_rows_int8, int8_scaled_mm_packed_reference)


# ---- native: CPU and CUDA share the registration, each with its packing and its one GEMM call ------
def register_native_gemm(device, pack, gemm):
    """int8_mm / int8_scaled_mm / int8_scaled_mm_packed as "native" on `device`, given the device's
    packing function and its GEMM call gemm(a, b_packed, n, out_dtype, a_scale, b_scale, bias)."""

    @register("int8_mm", "native", (device,))
    def int8_mm(a, b):
        return gemm(a, pack(b), b.shape[0], torch.int32)

    @register("int8_scaled_mm_packed", "native", (device,))
    def int8_scaled_mm_packed(a, a_scale, b_packed, b_scale, bias, out_dtype):
        return gemm(a, b_packed, b_scale.shape[0], out_dtype, a_scale, b_scale, bias)

    @register("int8_scaled_mm", "native", (device,))
    def int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype):
        return gemm(a, pack(b), b.shape[0], out_dtype, a_scale, b_scale, bias)

    return int8_scaled_mm_packed


def gemm_cpu(a, b_packed, n, out_dtype, a_scale=None, b_scale=None, bias=None):
    """The one call into the CPU GEMM: int32 out when out_dtype is int32, else the fused epilogue."""
    m, k = a.shape
    out = torch.empty((m, n), dtype=out_dtype)
    a_scale, b_scale, bias = f32(a_scale), f32(b_scale), f32(bias)
    _native.require_cpu().int8_mm(
        a.data_ptr(), k, b_packed.data_ptr(), m, n, k, out.data_ptr(), n, KIND[out_dtype],
        ptr(a_scale), ptr(b_scale), ptr(bias), threads(), cpu_isa(), cpu_amx(),
    )
    return out


def gemm_cuda(a, b_plain, n, out_dtype, a_scale=None, b_scale=None, bias=None):
    """b_plain is [N, Kp] with Kp % 16 == 0 (packing.pack_int8_plain); a is zero-padded to Kp."""
    kp = b_plain.shape[1]
    a = pad_k(a, kp)
    if a.data_ptr() % 16:  # the kernel reads 16-byte chunks: copy a misaligned view
        a = a.clone()
    m = a.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    a_scale, b_scale, bias = f32(a_scale), f32(b_scale), f32(bias)
    with torch.cuda.device(a.device):
        _native.require_cuda().int8_mm(
            a.data_ptr(), kp, b_plain.data_ptr(), kp, m, n, kp, out.data_ptr(), n, KIND[out_dtype],
            ptr(a_scale), ptr(b_scale), ptr(bias), cuda_stream(a.device),
        )
    return out


register_native_gemm("cpu", packing.pack_int8_cpu, gemm_cpu)
_scaled_mm_packed_cuda = register_native_gemm("cuda", packing.pack_int8_plain, gemm_cuda)
register_dynamic_linear("native", ("cuda",), quantize_rows_int8_cuda, _scaled_mm_packed_cuda)


# One native call (quantize into scratch, then the GEMM) rather than the quantize + GEMM composition
# other backends use: at M <= 8 the Python round trips cost more than the quantization itself.
@register("int8_dynamic_linear", "native", ("cpu",))
def int8_dynamic_linear_cpu(x, w_packed, w_scale, bias, act_bits):
    m, k = x.shape
    n = w_scale.shape[0]
    out = torch.empty((m, n), dtype=x.dtype)
    bias = f32(bias)
    _native.require_cpu().int8_dynamic_linear(x.data_ptr(), k, KIND[x.dtype], w_packed.data_ptr(), w_scale.data_ptr(),
                                              ptr(bias), m, n, k, out.data_ptr(), n, threads(), cpu_isa(),
                                              act_qmax(act_bits), cpu_amx())
    return out


# ---- Triton (on CUDA; on CPU only under the interpreter) --------------------------------------------
TRITON_DEVICES = ("cuda", "cpu")


def _gemm_triton(a, b, out_dtype, a_scale=None, b_scale=None, bias=None):
    from ..triton.int8_mm import int8_mm

    return int8_mm(a, b, f32(a_scale), f32(b_scale), f32(bias), out_dtype)


@register("int8_mm", "triton", TRITON_DEVICES)
def int8_mm_triton(a, b):
    return _gemm_triton(a, b, torch.int32)


@register("int8_scaled_mm", "triton", TRITON_DEVICES)
def int8_scaled_mm_triton(a, a_scale, b, b_scale, bias, out_dtype):
    return _gemm_triton(a, b, out_dtype, a_scale, b_scale, bias)


@register("int8_scaled_mm_packed", "triton", TRITON_DEVICES)
def int8_scaled_mm_packed_triton(a, a_scale, b_packed, b_scale, bias, out_dtype):
    n = b_scale.shape[0]
    if b_packed.device.type == "cpu":  # interpreter runs only: the CPU layout is not the plain one
        return _gemm_triton(a, packing.unpack_int8_cpu(b_packed, n, a.shape[1]), out_dtype, a_scale, b_scale, bias)
    return _gemm_triton(pad_k(a, b_packed.shape[1]), b_packed, out_dtype, a_scale, b_scale, bias)


register_dynamic_linear("triton", TRITON_DEVICES, quantize_rows_int8_triton, int8_scaled_mm_packed_triton)
