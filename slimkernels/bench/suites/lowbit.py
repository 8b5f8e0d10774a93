"""Suite of the lowbit family: low-bit weight-only layers (int4 group-wise, 4-bit codebooks) against
float layers, torch's own int4 weight-only kernel (tinygemm) and our int8 path."""
from __future__ import annotations

import functools

import torch

from ..registry import Case, EntrySpec, Inputs, Work, register
from ..stacks import Stack
from .int8_mm import float_anchors, int8_layers

LOWBIT_GROUP = 128  # the group size every int4 entry uses (ours and tinygemm)


def lowbit_linears(stack: Stack, mode: str) -> list:
    """QuantLinear w4a16 / w4a8 (RTN, g128, asymmetric) or codebook (4-bit, per row) layers. The codebook's
    values do not change the time, so it is random rather than fitted (k-means on hundreds of MB of
    weights would dominate the run)."""
    from ...compress import Int4WeightOnlyConfig
    from ...nn import QuantLinear

    def build():
        if mode in ("w4a16", "w4a8"):
            config = Int4WeightOnlyConfig(group_size=LOWBIT_GROUP, act="int8" if mode == "w4a8" else None)
            return [QuantLinear.from_float(l, config) for l in stack.float_linears()]
        gen = torch.Generator().manual_seed(7)
        out = []
        for b in stack.biases:
            codes = torch.randint(0, 16, (stack.n, stack.k), generator=gen, dtype=torch.uint8)
            codebook = torch.randn(stack.n, 16, generator=gen).sort(dim=1).values * 0.02
            out.append(QuantLinear.from_codebook(codes.to(stack.device), codebook.to(stack.device), b))
        return out

    return stack.form(("lowbit", mode), build)


def tinygemm(stack: Stack) -> list:
    """torch's int4 weight-only kernel (aten._weight_int4pack_mm, _for_cpu on CPU), g128, as
    functions of x; its weight layout is made by torch's own packing op from our w4a16 layers."""
    from ...quant.lowbit import unpack_codes

    def build():
        out = []
        for lin in lowbit_linears(stack, "w4a16"):
            q = unpack_codes(lin.qweight, 4, stack.k)
            w_scale = lin.weight_scale
            zeros = lin.weight_zero.float()
            # tinygemm dequantizes w = (q - 8) * s + zero_point: our (q - z) * s means zero_point = (8 - z) * s.
            sz = torch.stack([w_scale, (8 - zeros) * w_scale], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
            if stack.device == "cpu":
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
                out.append(lambda x, p=packed, sz=sz: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, LOWBIT_GROUP, sz))
            else:
                hi_lo = ((q[:, ::2] << 4) | q[:, 1::2]).contiguous()  # torch's order: even k in the high nibble
                packed = torch.ops.aten._convert_weight_to_int4pack(hi_lo, 8)
                out.append(lambda x, p=packed, sz=sz: torch.ops.aten._weight_int4pack_mm(x, p, LOWBIT_GROUP, sz))
        return out

    return stack.form("tinygemm", build)


def _lowbit_layers(mode: str):
    def build(i: Inputs) -> Work:
        m, n, k = i.m, i.n, i.k
        calls = [functools.partial(l, i.x) for l in lowbit_linears(i.stack, mode)]
        meta = 5 * n * (k // LOWBIT_GROUP) if mode != "codebook" else 64 * n  # scales + zeros / the codebook rows
        return Work(calls, i.fsize * (m * k + m * n) + n * ((k + 1) // 2) + meta + 4 * n)

    return build


def _tinygemm(i: Inputs) -> Work:
    xb = i.x.to(torch.bfloat16)
    m, n, k = i.m, i.n, i.k
    calls = [functools.partial(f, xb) for f in tinygemm(i.stack)]
    return Work(calls, 2 * (m * k + m * n) + n * k // 2 + 4 * n * (k // LOWBIT_GROUP))


@register("lowbit", family="lowbit", op="QuantLinear (low-bit)", aliases=("weight_only",), description=(
    "low-bit weight-only layers: QuantLinear w4a16 (int4 g128, asymmetric), w4a8 (the same weights, int8 "
    "per-token activations) and 4-bit codebook (per row), plus w8a8, through the default dispatch, against float nn.Linear, torch's int4 weight-only kernel "
    "(tinygemm, g128, bf16 x on CPU) and, on CPU, FBGEMM dynamic int8"))
def lowbit(case: Case) -> list[EntrySpec]:
    k = case.k
    group_skip = None if k % LOWBIT_GROUP == 0 else f"K={k} is not a multiple of the group size {LOWBIT_GROUP}"
    specs: list[EntrySpec] = []
    for mode, op in (("w4a16", "dequant_mm_int4"), ("w4a8", "dequant_mm_int4_a8"), ("codebook", "lut_mm"),
                     ("w8a8", "int8_dynamic_linear")):
        impl = case.resolve(op)
        build = int8_layers(mode) if mode == "w8a8" else _lowbit_layers(mode)
        specs += case.ours(f"{mode}:{impl}", f"{mode}_{impl}", build, impl=impl,
                           skip=group_skip if mode in ("w4a16", "w4a8") else None, isa=mode != "w8a8",
                           amx=mode not in ("w8a8", "w4a8"))
    specs += float_anchors(case)
    label = "tinygemm int4 (bf16)" if case.device == "cpu" else "tinygemm int4"
    kernel = "_weight_int4pack_mm_for_cpu" if case.device == "cpu" else "_weight_int4pack_mm"
    missing = None if hasattr(torch.ops.aten, kernel) else f"torch {torch.__version__} has no aten.{kernel}"
    return specs + case.anchor(label, "tinygemm", _tinygemm, skip=group_skip or missing)
