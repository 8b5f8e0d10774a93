"""One kind of user switch for every run-time choice (backend, CPU ISA, AMX, Triton split-K).

A switch has a process-wide value (`set`), a scoped per-thread override (`use`, a context manager)
and an optional environment variable that is read once, when the switch is created at import.
`get` is a dictionary-free attribute read on the hot path.
"""
import contextlib
import os
import threading
from typing import Callable, Optional, Sequence


class Switch:
    def __init__(self, name: str, choices: Sequence[Optional[str]], default: Optional[str] = None,
                 env: Optional[str] = None, check: Optional[Callable[[Optional[str]], None]] = None):
        self.name, self.choices, self.default, self.env = name, tuple(choices), default, env
        self._check_extra = check
        self._local = threading.local()
        self._value = default
        if env and os.environ.get(env):
            self.set(os.environ[env])

    def check(self, value: Optional[str]) -> Optional[str]:
        if value not in self.choices:
            source = f" (from the environment variable {self.env})" if self.env and os.environ.get(self.env) == value else ""
            raise ValueError(f"unknown slimkernels {self.name} {value!r}{source}; expected one of {self.choices}")
        if self._check_extra is not None:
            self._check_extra(value)
        return value

    def set(self, value: Optional[str]) -> None:
        """Process-wide value; `None`/the default restores the automatic choice."""
        self._value = self.check(value)

    def get(self) -> Optional[str]:
        scoped = getattr(self._local, "value", _UNSET)
        return self._value if scoped is _UNSET else scoped

    @contextlib.contextmanager
    def use(self, value: Optional[str]):
        """Scoped override for the current thread."""
        self.check(value)
        previous = getattr(self._local, "value", _UNSET)
        self._local.value = value
        try:
            yield
        finally:
            self._local.value = previous


_UNSET = object()


# ---- the weight-only CPU kernels' bf16 dot products ----------------------------------------------
# (AVX512-BF16 vdpbf16ps; backends/lowbit.py and backends/dequant_int8.py read it.) "auto": on CPUs
# that have them, while cpu_isa is automatic, from the measured number of rows of x on (thresholds
# LOWBIT_BF16_MIN_M and DEQUANT_INT8_BF16_MIN_M; None = never, the case on the CPUs measured so far);
# x is rounded to bf16 there. "on": at every M, instead of AMX too (ValueError where the CPU or build
# lacks them, or another ISA is forced). "off": never, the float32 kernels everywhere.
# SLIMKERNELS_CPU_BF16 sets it at import.
CPU_BF16 = Switch("cpu_bf16", ("auto", "on", "off"), default="auto", env="SLIMKERNELS_CPU_BF16")


def set_cpu_bf16(mode: str) -> None:
    """When the weight-only CPU kernels (int8, int4, codebooks) use bf16 dot products: "auto", "on", "off"."""
    CPU_BF16.set(mode)


def get_cpu_bf16() -> str:
    return CPU_BF16.get()


def use_cpu_bf16(mode: str):
    """Scoped version of set_cpu_bf16, per thread."""
    return CPU_BF16.use(mode)
