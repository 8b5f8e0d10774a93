"""Suites of the int8_mm family: the int8 GEMM with fused epilogue (`int8_mm`) and the end-to-end
int8 layers (`quant_linear`: QuantLinear w8a8, whose forward is quantize + this GEMM, and w8a16)."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..registry import Case, EntrySpec, Inputs, Work, register


# ---- int8_mm: the kernel -----------------------------------------------------------------------------
def _ours_packed(i: Inputs) -> Work:
    from ... import ops
    from ...quant.packing import int8_packed_shape

    a, a_scale = ops.quantize_per_token_int8(i.x)
    scales = [s for _, s in i.stack.int8()]
    calls = [functools.partial(ops.int8_scaled_mm_packed, a, a_scale, p, s, None, i.dtype)
             for p, s in zip(i.stack.packed(), scales)]
    pnumel = math.prod(int8_packed_shape(i.device, i.n, i.k))
    return Work(calls, i.m * i.k + 4 * i.m + pnumel + 4 * i.n + i.m * i.n * i.fsize)


def _f_linear(i: Inputs) -> Work:
    calls = [functools.partial(F.linear, i.x, w) for w in i.stack.weights]
    return Work(calls, i.fsize * (i.m * i.k + i.n * i.k + i.m * i.n))


def _fbgemm_no_bias(i: Inputs) -> Work:
    m, n, k = i.m, i.n, i.k
    return Work([functools.partial(l, i.x) for l in i.stack.fbgemm(bias=False)], 4 * m * k + n * k + 4 * n + 4 * m * n)


def _int_mm(i: Inputs) -> Work:
    a = torch.randint(-127, 128, (i.m, i.k), generator=i.gen, device=i.device, dtype=torch.int8)
    calls = [functools.partial(torch._int_mm, a, w) for w in i.stack.int_mm_weights()]
    return Work(calls, i.m * i.k + i.n * i.k + 4 * i.m * i.n)


@register("int8_mm", family="int8_mm", op="int8_scaled_mm_packed", description=(
    "the int8 GEMM with fused dequantize epilogue: ops.int8_scaled_mm_packed after ops.int8_prepack, "
    "activations quantized beforehand, once per implementation usable on the device; anchors: CPU fp32 "
    "F.linear (MKL) and FBGEMM dynamic int8 (no bias); GPU bf16 F.linear and torch._int_mm (refuses M <= 16)"))
def int8_mm(case: Case) -> list[EntrySpec]:
    specs: list[EntrySpec] = []
    for impl in case.implementations("int8_scaled_mm_packed"):
        specs += case.ours(f"ours:{impl}", f"ours_{impl}", _ours_packed, impl=impl, backend=impl)
    if case.device == "cpu":
        specs += case.anchor("fp32 F.linear", "fp32_linear", _f_linear)
        specs += case.anchor("fbgemm dyn int8", "fbgemm_dyn", _fbgemm_no_bias)
    else:
        specs += case.anchor("bf16 F.linear", "bf16_linear", _f_linear)
        specs += case.anchor("torch._int_mm", "int_mm", _int_mm,
                             skip=None if case.m > 16 else "torch._int_mm refuses M <= 16")
    return specs


# ---- quant_linear: whole int8 layers (with bias) -----------------------------------------------------
def int8_layers(mode: str):
    """Builder of QuantLinear layers of an int8 mode (w8a8 | w8a16): int8 weights, float x and y."""

    def build(i: Inputs) -> Work:
        calls = [functools.partial(l, i.x) for l in i.stack.quant_linears(mode)]
        return Work(calls, i.fsize * (i.m * i.k + i.m * i.n) + i.n * i.k + 8 * i.n)

    return build


def float_layers(i: Inputs) -> Work:
    """Float nn.Linear layers with bias (fp32 on CPU, bf16 on GPU)."""
    calls = [functools.partial(l, i.x) for l in i.stack.float_linears()]
    return Work(calls, i.fsize * (i.m * i.k + i.n * i.k + i.m * i.n + i.n))


def fbgemm_layers(i: Inputs) -> Work:
    """FBGEMM dynamic int8 layers with bias (quantize_dynamic, qint8): x quantized inside the call."""
    m, n, k = i.m, i.n, i.k
    return Work([functools.partial(l, i.x) for l in i.stack.fbgemm(bias=True)], 4 * m * k + n * k + 8 * n + 4 * m * n)


def float_anchors(case: Case) -> list[EntrySpec]:
    """The layer anchors every layer suite shares: float nn.Linear, and on CPU FBGEMM dynamic int8."""
    if case.device == "cpu":
        return case.anchor("fp32 nn.Linear", "fp32_linear", float_layers) + \
            case.anchor("fbgemm dyn int8", "fbgemm_dyn", fbgemm_layers)
    return case.anchor("bf16 nn.Linear", "bf16_linear", float_layers)


@register("quant_linear", family="int8_mm", op="QuantLinear", description=(
    "end-to-end int8 layers: QuantLinear w8a8 (quantize per token + int8 GEMM) and w8a16 (int8 weights, "
    "float x) through the default dispatch, against float nn.Linear (fp32 on CPU, bf16 on GPU) and, on "
    "CPU, FBGEMM dynamic int8 (with bias)"))
def quant_linear(case: Case) -> list[EntrySpec]:
    specs: list[EntrySpec] = []
    for mode, op in (("w8a8", "int8_dynamic_linear"), ("w8a16", "dequant_mm_int8")):
        impl = case.resolve(op)  # the default dispatch: what a user gets
        specs += case.ours(f"{mode}:{impl}", f"{mode}_{impl}", int8_layers(mode), impl=impl)
    return specs + float_anchors(case)
