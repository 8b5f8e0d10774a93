"""The machine a number was taken on: CPU/GPU names, cache sizes, the copy-bandwidth probe and the
environment dictionary recorded next to every run."""
from __future__ import annotations

import functools
import os
import platform
import statistics
import time

import torch


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def llc_bytes() -> int:
    """Size of the CPU's last-level cache (sysfs), 32 MiB when it cannot be read."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip().upper()
            mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best or 32 * 1024**2


def gpu_l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 0) or 50 * 1024**2)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else cpu_name()


def environment(device: str) -> dict:
    """What a recorded number needs next to it: machine, threads, ISA, AMX, versions, what is built."""
    from .. import __version__, _native
    from ..backends import get_cpu_amx

    c = _native._C
    return {
        "device": device,
        "device_name": device_name(device),
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "cpu_isa": _native.cpu_isa(),
        "cpu_isas": list(c.supported_isas()) if c is not None else [],
        "cpu_amx_bf16": bool(c.amx_bf16_supported()) if c is not None else False,
        "cpu_amx_int8": bool(c.amx_int8_supported()) if c is not None else False,
        "cpu_amx": get_cpu_amx(),
        "native_cpu": _native.cpu_available(),
        "native_cuda": _native.cuda_native_available(),
        "quantized_engine": torch.backends.quantized.engine,
        "llc_bytes": llc_bytes(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "slimkernels": __version__,
        "python": platform.python_version(),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


@functools.lru_cache(maxsize=None)
def measure_bandwidth(device: str, quick: bool = False) -> float:
    """Bytes per second of a large copy (read + write counted), with the current threads."""
    if device == "cuda":
        from .timing import do_bench

        numel = 2**28  # 1 GiB of float32
        src = torch.ones(numel, device="cuda")
        dst = torch.empty_like(src)
        ms = do_bench(lambda: dst.copy_(src), quick)
        del src, dst
        torch.cuda.empty_cache()
        return 2 * numel * 4 / (ms * 1e-3)
    numel = max(2**26, 8 * llc_bytes() // 4)  # >= 256 MiB and 8x the LLC
    src = torch.ones(numel)
    dst = torch.empty_like(src)
    dst.copy_(src)
    dst.copy_(src)
    times = []
    for _ in range(4 if quick else 10):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * numel * 4 / statistics.median(times)
