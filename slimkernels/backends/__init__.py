"""Which implementation runs an op: the registry, the defaults table and the one switch.

Every op has several implementations ("reference" = pure torch, the spec; "native" = our C++ or
CUDA C++ kernels; "triton"; "torch" = a kernel that ships inside PyTorch). The op body calls
`dispatch(op, device, ...)`, which runs the forced implementation if the user set one, else the
first available entry of the defaults table for that device.

The switch (documented in the README):
    slimkernels.set_backend("reference")          # process-wide; None restores the defaults
    with slimkernels.use_backend("triton"): ...   # scoped
    SLIMKERNELS_BACKEND=native python ...         # environment, read at import
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable

IMPLEMENTATIONS = ("reference", "native", "triton", "torch")

# op name -> implementation name -> device type -> function
_REGISTRY: dict[str, dict[str, dict[str, Callable]]] = {}

# Default order per device, best first; the first implementation that has the op and is available
# wins. CPU: the native kernels beat every alternative at every M measured (1..512 on Llama
# shapes: bench/results/2026-11-23-epyc2c-int8.md); "torch" is the fallback for ops without one.
# CUDA: provisional until a GPU session measures it (bench/gpu_session.sh): Triton first (its
# logic is tested on CPU under the interpreter), then the CUDA C++ kernels, then torch.
DEFAULT_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("native", "torch", "reference"),
    "cuda": ("triton", "native", "torch", "reference"),
}

_state = threading.local()
_global_forced: str | None = os.environ.get("SLIMKERNELS_BACKEND") or None


def _check_name(name: str | None) -> None:
    if name is not None and name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown slimkernels backend {name!r}; expected one of {IMPLEMENTATIONS} or None")


_check_name(_global_forced)


def set_backend(name: str | None) -> None:
    """Force one implementation for every op (None: back to the measured defaults)."""
    global _global_forced
    _check_name(name)
    _global_forced = name


def get_backend() -> str | None:
    return getattr(_state, "forced", None) or _global_forced


@contextlib.contextmanager
def use_backend(name: str | None):
    """Scoped version of set_backend, per thread."""
    _check_name(name)
    previous = getattr(_state, "forced", None)
    _state.forced = name
    try:
        yield
    finally:
        _state.forced = previous


def register(op: str, impl: str, devices: tuple[str, ...] = ("cpu", "cuda")):
    """Decorator: `fn` implements `op` on `devices` as implementation `impl`."""
    _check_name(impl)

    def deco(fn: Callable) -> Callable:
        per_device = _REGISTRY.setdefault(op, {}).setdefault(impl, {})
        for device in devices:
            per_device[device] = fn
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
        return slim_triton.available() and (device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    return True


def implementations(op: str, device: str) -> list[str]:
    """Implementations of `op` usable on `device` right now, best first."""
    impls = _REGISTRY.get(op, {})
    order = DEFAULT_ORDER.get(device, ("reference",))
    return [i for i in order if device in impls.get(i, {}) and _available(i, device)]


# (op, device, TRITON_INTERPRET) -> (implementation name, function): what is built and importable
# does not change while a process runs, and this keeps the per-call cost of dispatch to a lookup.
_DEFAULT_CACHE: dict[tuple[str, str, str | None], tuple[str, Callable]] = {}


def _default(op: str, device: str) -> tuple[str, Callable]:
    key = (op, device, os.environ.get("TRITON_INTERPRET"))
    hit = _DEFAULT_CACHE.get(key)
    if hit is None:
        usable = implementations(op, device)
        if not usable:
            raise NotImplementedError(f"slimkernels::{op} has no implementation for device {device!r}")
        hit = _DEFAULT_CACHE[key] = (usable[0], _REGISTRY[op][usable[0]][device])
    return hit


def resolve(op: str, device: str) -> str:
    forced = get_backend()
    impls = _REGISTRY.get(op, {})
    if forced is not None:
        if device not in impls.get(forced, {}):
            have = sorted(i for i, devices in impls.items() if device in devices)
            raise NotImplementedError(
                f"slimkernels::{op} has no {forced!r} implementation on {device}; it has {have}"
            )
        if not _available(forced, device):
            raise RuntimeError(f"the {forced!r} implementation of slimkernels::{op} is not available on {device}")
        return forced
    return _default(op, device)[0]


def dispatch(op: str, device: str, *args):
    if get_backend() is None:
        return _default(op, device)[1](*args)
    return _REGISTRY[op][resolve(op, device)][device](*args)
