"""Small helpers the device backends share: dtype names, empty-problem shortcuts, K padding."""
from __future__ import annotations

import torch
import torch.nn.functional as F

KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int32: "int32"}


def is_empty_problem(a: torch.Tensor, n: int) -> bool:
    """M == 0, N == 0 or K == 0: answered by the reference without touching a kernel."""
    return a.shape[0] == 0 or n == 0 or a.shape[1] == 0


def pad_k(a: torch.Tensor, kp: int) -> torch.Tensor:
    """Zero-pad the reduction dim to kp (zeros add nothing to a dot product)."""
    return a if a.shape[1] == kp else F.pad(a, (0, kp - a.shape[1]))


def f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def register_native_gemm(device: str, pack, gemm):
    """Register int8_mm / int8_scaled_mm / int8_scaled_mm_packed as "native" on `device`, given the
    device's packing function and its one GEMM call gemm(a, b_packed, n, out_dtype, a_scale, b_scale, bias).
    Empty problems go to the reference (no kernel launch for M, N or K = 0). Returns the packed op."""
    from . import reference, register

    @register("int8_mm", "native", (device,))
    def int8_mm(a, b):
        if is_empty_problem(a, b.shape[0]):
            return reference.int8_mm(a, b)
        return gemm(a, pack(b), b.shape[0], torch.int32)

    @register("int8_scaled_mm_packed", "native", (device,))
    def int8_scaled_mm_packed(a, a_scale, b_packed, b_scale, bias, out_dtype):
        n = b_scale.shape[0]
        if is_empty_problem(a, n):
            return reference.int8_scaled_mm_packed(a, a_scale, b_packed, b_scale, bias, out_dtype)
        return gemm(a, b_packed, n, out_dtype, a_scale, b_scale, bias)

    @register("int8_scaled_mm", "native", (device,))
    def int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype):
        return int8_scaled_mm_packed(a, a_scale, pack(b), b_scale, bias, out_dtype)

    return int8_scaled_mm_packed


def register_dynamic_linear(impl: str, devices: tuple[str, ...], quantize_rows, scaled_mm_packed):
    """int8_dynamic_linear for an implementation = its own per-token quantize + its packed GEMM."""
    from . import register

    @register("int8_dynamic_linear", impl, devices)
    def int8_dynamic_linear(x, w_packed, w_scale, bias):
        q, scale = quantize_rows(x)
        return scaled_mm_packed(q, scale, w_packed, w_scale, bias, x.dtype)

    return int8_dynamic_linear
