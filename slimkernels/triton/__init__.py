"""Triton kernels and their launchers, one file per op family.

Importing this package never imports triton: the kernel modules (one per op family: ``quantize``, ``int8_mm``,
``dequant_int8``, ``lowbit``) import it
themselves, so ``import slimkernels.triton`` works on machines without triton. Callers ask
:func:`available` before using a launcher and show :func:`unavailable_reason` when it is False.

Triton runs either on a CUDA device or, with the environment variable ``TRITON_INTERPRET=1`` set
before triton is first imported, on CPU tensors through its interpreter (slow: tests only).
"""

import functools
import os

from .._switch import Switch

# When the GEMM kernels split K across programs (few rows, too few output tiles to fill the GPU):
# "auto" (the heuristic in _common.use_split_k), "always" (whenever M <= 16) or "never".
SPLIT_K = Switch("triton split_k", ("auto", "always", "never"), default="auto")


def set_split_k(policy: str) -> None:
    """Process-wide split-K policy of the Triton GEMMs: \"auto\", \"always\" or \"never\"."""
    SPLIT_K.set(policy)


def get_split_k() -> str:
    return SPLIT_K.get()


def use_split_k(policy: str):
    """Scoped split-K policy, per thread (a context manager)."""
    return SPLIT_K.use(policy)

__all__ = ["available", "unavailable_reason", "interpreting", "set_split_k", "use_split_k", "get_split_k"]


def interpreting() -> bool:
    """True when triton kernels run in the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# The oldest Triton our kernels are tested with. Older ones fail: 3.0 (paired with torch 2.4) cannot
# trace them ("arange's arguments must be of type tl.constexpr"), and 3.2 (torch 2.6) wants a GPU
# driver in its autotuner even under TRITON_INTERPRET=1.
MIN_TRITON = (3, 5)


def _version_tuple(version: str) -> tuple:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str:
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising something else
        return f"triton is not importable ({type(e).__name__}: {e})"
    version = getattr(triton, "__version__", "0")
    if _version_tuple(version) < MIN_TRITON:
        want = ".".join(map(str, MIN_TRITON))
        return (f"triton {version} is older than {want}, the oldest version slimkernels' Triton kernels are tested "
                f"with; pip install 'triton>={want}' (with a torch that pairs with it) to use them")
    return ""


def unavailable_reason() -> str:
    """Why the Triton kernels cannot run here; the empty string when they can."""
    err = _triton_import_error()
    if err:
        return err
    if interpreting():
        return ""
    try:
        import torch

        if torch.cuda.is_available():
            return ""
    except Exception as e:  # pragma: no cover - torch is a hard dependency
        return f"torch is not importable ({type(e).__name__}: {e})"
    return "no CUDA device is available and TRITON_INTERPRET=1 is not set"


def available() -> bool:
    """True when triton is importable and a CUDA device is present or the interpreter is on."""
    return unavailable_reason() == ""
