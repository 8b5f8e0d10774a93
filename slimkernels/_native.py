"""Loads the native modules and answers what this machine can run.

`_C` (CPU kernels) is always built; `_C_cuda` only when nvcc was found at build time. Neither links
libtorch, so import never depends on the torch version. Missing pieces are reported, not raised, at
import time; code that needs one calls `require_cpu()` / `require_cuda()` for a clear error.
"""
from __future__ import annotations

import importlib
import os


def _try_import(name: str):
    try:
        return importlib.import_module(f"{__package__}.{name}"), None
    except ImportError as exc:  # a source checkout without a build, a wheel built without nvcc
        return None, f"{type(exc).__name__}: {exc}"


_C, _C_ERROR = _try_import("_C")
_C_cuda, _C_CUDA_ERROR = _try_import("_C_cuda")


def _torch_openmp_library() -> str | None:
    """Path of the OpenMP runtime torch loaded (its parallel backend), or None."""
    import torch

    if not torch._C.has_openmp or not os.path.exists("/proc/self/maps"):
        return None
    names = ("libgomp", "libiomp5", "libomp")
    with open("/proc/self/maps") as maps:
        loaded = {line.split()[-1] for line in maps if any(n in line.rsplit("/", 1)[-1] for n in names)}
    torch_dir = os.path.dirname(torch.__file__)
    # Prefer the copy inside torch's own directory: other packages may load a second runtime.
    for path in sorted(loaded, key=lambda p: not p.startswith(torch_dir)):
        if path.startswith("/"):
            return path
    return None


def _share_torch_threads() -> None:
    """Run our CPU kernels' threads on torch's OpenMP team, not a pool of our own: torch's workers
    spin for a while after each parallel op, and a second pool would fight them for the cores.
    SLIMKERNELS_THREADS=own keeps a separate pool."""
    if _C is None or os.environ.get("SLIMKERNELS_THREADS", "") == "own":
        return
    path = _torch_openmp_library()
    if path:
        _C.use_openmp_runtime(path)


_share_torch_threads()


def cpu_available() -> bool:
    return _C is not None


def cuda_native_available() -> bool:
    """The CUDA module is built and a CUDA device is visible to it."""
    if _C_cuda is None:
        return False
    try:
        return _C_cuda.device_count() > 0
    except Exception:  # a driver problem is "not available", never a crash
        return False


def require_cpu():
    if _C is None:
        raise RuntimeError(
            "slimkernels' CPU extension (slimkernels._C) is not built or failed to import "
            f"({_C_ERROR}). Install the package with `pip install .` so that it is compiled, "
            "or select the pure-torch implementation with slimkernels.set_backend('reference')."
        )
    return _C


def require_cuda():
    if _C_cuda is None:
        raise RuntimeError(
            "slimkernels was built without CUDA kernels (slimkernels._C_cuda is missing: "
            f"{_C_CUDA_ERROR}). Rebuild with nvcc on the PATH, or SLIMKERNELS_CUDA=ON to make the "
            "build fail loudly when it cannot compile them."
        )
    return _C_cuda


def cpu_isa() -> str:
    """Best CPU instruction set the kernels will use here ('avx512_vnni', 'avx2', 'scalar')."""
    from .backends import get_cpu_isa

    return get_cpu_isa() or (_C.cpu_isa() if _C is not None else "none")


def info() -> dict:
    """What is built and usable, for `slimkernels info` and bug reports."""
    import torch

    from .backends import get_cpu_amx

    out = {
        "torch": torch.__version__,
        "cpu_extension": _C is not None,
        "cpu_extension_error": _C_ERROR,
        "cpu_isa": cpu_isa(),
        "cpu_isas": list(_C.supported_isas()) if _C is not None else [],
        "cpu_amx_bf16": bool(_C.amx_bf16_supported()) if _C is not None else False,
        "cpu_amx_int8": bool(_C.amx_int8_supported()) if _C is not None else False,
        "cpu_amx": get_cpu_amx(),
        "cuda_extension": _C_cuda is not None,
        "cuda_extension_error": _C_CUDA_ERROR,
        "cuda_archs": _C_cuda.compiled_archs() if _C_cuda is not None else "",
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "cpu_thread_runtime": _C.thread_runtime() if _C is not None else None,
    }
    from .triton import available as _triton_available, unavailable_reason

    out["triton"] = _triton_available()
    if not out["triton"]:
        out["triton_reason"] = unavailable_reason()
    return out
