"""Suite of the dequant_int8 family: W8A16 layers (int8 weights, float activations), once per
implementation, against float layers and torch's own int8 weight-only path."""
from __future__ import annotations

import functools

from ..registry import DTYPE_TAG, Case, EntrySpec, Inputs, Work, register
from .int8_mm import int8_layers


def _direct(i: Inputs) -> Work:
    """The native CPU implementation called without the op layer (no checks, no torch.library
    dispatch, no module): the kernel's own time, as the old raw-binding column had it."""
    from ...backends.dequant_int8 import dequant_mm_int8_cpu

    calls = [functools.partial(dequant_mm_int8_cpu, i.x, l.qweight, l.weight_scale, l.bias)
             for l in i.stack.quant_linears("w8a16")]
    return Work(calls, i.fsize * (i.m * i.k + i.m * i.n) + i.n * i.k + 8 * i.n)


def _float_layers(i: Inputs) -> Work:
    """Float nn.Linear layers with bias in x's dtype (the stack's, or a --act-dtype variant's)."""
    calls = [functools.partial(l, i.x) for l in i.stack.float_linears(i.dtype)]
    return Work(calls, i.fsize * (i.m * i.k + i.n * i.k + i.m * i.n + i.n))


@register("dequant_int8", family="dequant_int8", op="QuantLinear w8a16", default=False, description=(
    "W8A16 layers (QuantLinear w8a16: int8 weights, float x) once per implementation of dequant_mm_int8 "
    "usable on the device, and on CPU the native kernel called directly (no op layer); anchors: float "
    "nn.Linear and torch's own int8 weight-only path (aten._weight_int8pack_mm for bf16/fp16 x below 64 "
    "rows, else dequantize + F.linear), both in x's dtype (--act-dtype adds rows)"))
def dequant_int8(case: Case) -> list[EntrySpec]:
    specs: list[EntrySpec] = []
    for impl in case.implementations("dequant_mm_int8"):
        if impl == "torch":
            continue  # torch's kernels: an anchor below
        specs += case.ours(f"ours:{impl}", f"ours_{impl}", int8_layers("w8a16"), impl=impl, backend=impl)
        if impl == "native" and case.device == "cpu":
            specs += case.ours("ours:native-direct", "ours_native_direct", _direct, impl=impl, isa=False)
    for dt in case.dtypes():
        tag = DTYPE_TAG[dt]
        specs += case.anchor(f"{tag} nn.Linear", f"{tag}_linear", _float_layers, dtype=dt)
    specs += case.anchor("torch w8a16", "torch_w8a16", int8_layers("w8a16"), backend="torch", dtypes=True)
    return specs
