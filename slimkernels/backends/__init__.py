"""Which implementation runs an op: the registry, the defaults table, dispatch and the switches.

Every op has several implementations ("reference" = pure torch, the spec; "native" = our C++ or
CUDA C++ kernels; "triton"; "torch" = a kernel that ships inside PyTorch). Each op family has one
file here (`backends/<family>.py`) that registers all of its implementations. The op body (in
`slimkernels/ops/<family>.py`) validates its arguments, then calls `dispatch`, which

  * answers empty problems (M, N or K = 0) with the reference, so no kernel sees them;
  * hands every tensor over contiguous, except a row-strided `x` (unit column stride) to
    implementations registered with `strided_rows=True`, which read it in place;
  * runs the forced implementation if the user set one, else the first available entry of the
    defaults table for the device.

The switches (documented in the README), each process-wide with `set_*`, scoped per thread with
`use_*`, and read from the environment once at import:
    slimkernels.set_backend("reference")      # SLIMKERNELS_BACKEND; None restores the defaults
    slimkernels.set_cpu_isa("avx2")           # SLIMKERNELS_CPU_ISA: avx512_vnni | avx2 | scalar | None
    slimkernels.set_cpu_amx("off")            # SLIMKERNELS_CPU_AMX: auto | on | off
"""
import importlib
import os
from typing import Callable, Dict, Optional, Tuple

import torch

from .._switch import Switch

IMPLEMENTATIONS = ("reference", "native", "triton", "torch")
FAMILIES = ("quantize", "int8_mm", "dequant_int8", "lowbit", "sparse", "sparse_conv", "hashed", "low_rank")  # one file each, here and in ops/

# op name -> implementation name -> device type -> (function, reads row-strided x in place)
_REGISTRY: Dict[str, Dict[str, Dict[str, Tuple[Callable, bool]]]] = {}

# Default order per device, best first; the first implementation that has the op and is available
# wins. CPU: the native kernels beat every alternative at every M measured (1..512 on Llama
# shapes: bench/results/2026-11-23-epyc2c-int8.md); "torch" is the fallback for ops without one.
# CUDA: provisional until a GPU session measures it (bench/gpu_session.sh): Triton first (its
# logic is tested on CPU under the interpreter), then the CUDA C++ kernels, then torch.
DEFAULT_ORDER: Dict[str, Tuple[str, ...]] = {
    "cpu": ("native", "torch", "reference"),
    "cuda": ("triton", "native", "torch", "reference"),
}

BACKEND = Switch("backend", IMPLEMENTATIONS + (None,), env="SLIMKERNELS_BACKEND")
CPU_ISAS = ("avx512_vnni", "avx2", "scalar")


def _isa_supported(isa: Optional[str]) -> None:
    from .. import _native

    if isa is not None and _native._C is not None and isa not in _native._C.supported_isas():
        raise ValueError(f"this CPU cannot run the {isa!r} kernels; it supports {list(_native._C.supported_isas())}")


CPU_ISA = Switch("cpu_isa", CPU_ISAS + (None,), env="SLIMKERNELS_CPU_ISA", check=_isa_supported)
CPU_AMX = Switch("cpu_amx", ("auto", "on", "off"), default="auto", env="SLIMKERNELS_CPU_AMX")


def set_backend(name: Optional[str]) -> None:
    """Force one implementation for every op (None: back to the measured defaults)."""
    BACKEND.set(name)


def get_backend() -> Optional[str]:
    return BACKEND.get()


def use_backend(name: Optional[str]):
    """Scoped version of set_backend, per thread."""
    return BACKEND.use(name)


def set_cpu_isa(isa: Optional[str]) -> None:
    """Force the CPU kernels' instruction set ("avx512_vnni", "avx2", "scalar"); None: the best
    this CPU has. Forcing one the CPU lacks raises ValueError."""
    CPU_ISA.set(isa)


def get_cpu_isa() -> Optional[str]:
    return CPU_ISA.get()


def use_cpu_isa(isa: Optional[str]):
    """Scoped version of set_cpu_isa, per thread."""
    return CPU_ISA.use(isa)


def set_cpu_amx(mode: str) -> None:
    """When the CPU kernels run on AMX tiles: "auto" (where the CPU has AMX: W8A8 / int8_mm on AMX-INT8
    from 4 rows of x; on AMX-BF16 int4 from 6 rows, w8a16 from 16, 2- and 4-bit codebooks from 256, or
    16 under cpu_bf16 "on"), "on" (always, where it has) or "off". Integer results are the same either
    way."""
    CPU_AMX.set(mode)


def get_cpu_amx() -> str:
    return CPU_AMX.get()


def use_cpu_amx(mode: str):
    """Scoped version of set_cpu_amx, per thread."""
    return CPU_AMX.use(mode)


def register(op: str, impl: str, devices: Tuple[str, ...] = ("cpu", "cuda"), strided_rows: bool = False):
    """Decorator: `fn` implements `op` on `devices` as implementation `impl`. strided_rows: fn reads
    its first argument (x rows) at any row stride, so dispatch does not copy row-strided views."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLEMENTATIONS}")

    def deco(fn: Callable) -> Callable:
        per_device = _REGISTRY.setdefault(op, {}).setdefault(impl, {})
        for device in devices:
            per_device[device] = (fn, strided_rows)
        _DEFAULT_CACHE.clear()
        return fn

    return deco


def _available(impl: str, device: str) -> bool:
    from .. import _native
    from .. import triton as slim_triton

    if impl == "native":
        return _native.cpu_available() if device == "cpu" else _native.cuda_native_available()
    if impl == "triton":
        # On CPU Triton only runs under its interpreter (tests), never by default.
        return slim_triton.available() and (device == "cuda" or slim_triton.interpreting())
    return True


def registered(op: str, device: str, usable: bool = True) -> list:
    """Every implementation of `op` registered for `device` (usable=True: only those that can run
    here now, e.g. Triton on CPU only under its interpreter), in IMPLEMENTATIONS order. A forced
    backend (set_backend) may name any of these."""
    impls = _REGISTRY.get(op, {})
    return [i for i in IMPLEMENTATIONS if device in impls.get(i, {}) and (not usable or _available(i, device))]


def implementations(op: str, device: str) -> list:
    """Implementations of `op` that the defaults table lets run on `device` right now, best first."""
    impls = _REGISTRY.get(op, {})
    order = DEFAULT_ORDER.get(device, ("reference",))
    return [i for i in order if device in impls.get(i, {}) and _available(i, device)]


# (op, device, TRITON_INTERPRET) -> (function, strided_rows): what is built and importable does
# not change while a process runs, and this keeps the per-call cost of dispatch to a lookup.
_DEFAULT_CACHE: Dict[tuple, Tuple[Callable, bool]] = {}


def _default(op: str, device: str) -> Tuple[Callable, bool]:
    key = (op, device, os.environ.get("TRITON_INTERPRET"))
    hit = _DEFAULT_CACHE.get(key)
    if hit is None:
        usable = implementations(op, device)
        if not usable:
            raise NotImplementedError(f"slimkernels::{op} has no implementation for device {device!r}")
        hit = _DEFAULT_CACHE[key] = _REGISTRY[op][usable[0]][device]
    return hit


def resolve(op: str, device: str) -> str:
    """The implementation `op` runs on `device` now (forced or default)."""
    forced = BACKEND.get()
    if forced is None:
        return implementations(op, device)[0]
    impls = _REGISTRY.get(op, {})
    if device not in impls.get(forced, {}):
        have = sorted(i for i, devices in impls.items() if device in devices)
        raise NotImplementedError(f"slimkernels::{op} has no {forced!r} implementation on {device}; it has {have}")
    if not _available(forced, device):
        why = ""
        if forced == "triton":
            from .. import triton as slim_triton

            why = f": {slim_triton.unavailable_reason() or 'on CPU Triton runs only under TRITON_INTERPRET=1'}"
        elif forced == "native":
            from .. import _native

            why = f": {_native._C_ERROR if device == 'cpu' else _native._C_CUDA_ERROR or 'no CUDA device'}"
        raise RuntimeError(f"the {forced!r} implementation of slimkernels::{op} is not available on {device}{why}")
    return forced


def row_stride(x: torch.Tensor) -> Optional[int]:
    """Row stride at which a kernel can read the rows of x [R, C] in place (unit column stride,
    rows that don't overlap), or None when x must be copied. A single row's stride means nothing
    (torch may report any), so it is C."""
    rows, cols = x.shape
    if x.stride(1) != 1 and cols > 1:
        return None
    if rows <= 1:
        return cols
    return x.stride(0) if x.stride(0) >= cols else None


def _contiguous(args: tuple, strided_rows: bool) -> tuple:
    out = list(args)
    for i, a in enumerate(out):
        if isinstance(a, torch.Tensor) and not a.is_contiguous():
            if i == 0 and strided_rows and row_stride(a) is not None:
                continue
            out[i] = a.contiguous()
    return tuple(out)


def dispatch(op: str, device: str, *args, empty: bool = False):
    """Run `op` on `device`; empty=True (M, N or K = 0, decided by the op's contract) runs the
    reference, which answers without a kernel."""
    if empty:
        return _REGISTRY[op]["reference"][device][0](*args)
    forced = BACKEND.get()
    fn, strided_rows = _default(op, device) if forced is None else _REGISTRY[op][resolve(op, device)][device]
    return fn(*_contiguous(args, strided_rows))


def load_families() -> None:
    """Import every family's implementations (each registers itself)."""
    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}")
