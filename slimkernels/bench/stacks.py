"""Weight stacks beyond the cache: for one (N, K), enough layers with distinct weights that their int8
copies hold several times the CPU's last-level cache (or the GPU's L2); the timed function cycles
through them, so every call reads its weight from memory."""
from __future__ import annotations

import gc
import math
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from .machine import gpu_l2_bytes, llc_bytes

# Int8 bytes the stack of distinct weights must hold, in multiples of the cache it must defeat.
CPU_CACHE_MULTIPLE = 4  # 4 x 32 MB L3 = 8 layers of 4096x4096 int8
GPU_CACHE_MULTIPLE = 3
MIN_LAYERS, MAX_LAYERS = 2, 512


def stack_layers(n: int, k: int, device: str) -> int:
    """Distinct weights needed so that their int8 copies exceed the cache several times over."""
    if device == "cuda":
        target = GPU_CACHE_MULTIPLE * gpu_l2_bytes()
    else:
        target = CPU_CACHE_MULTIPLE * llc_bytes()
    return max(MIN_LAYERS, min(MAX_LAYERS, math.ceil(target / (n * k))))


def float_dtype(device: str) -> torch.dtype:
    return torch.float32 if device == "cpu" else torch.bfloat16


class Stack:
    """`layers` distinct random weights of one (N, K) on one device, and every form the suites time.

    Float weights (fp32 on CPU, bf16 on GPU) and biases are drawn on first use; every other form
    (int8, packed, FBGEMM, QuantLinear, a suite's own) is derived from them on first use through
    `form`, so a run builds only what it times. A suite keeps its own forms in its own file:
    `stack.form("my_form", lambda: [...])`.
    """

    def __init__(self, n: int, k: int, device: str, layers: Optional[int] = None, seed: int = 0):
        self.n, self.k, self.device = n, k, device
        self.layers = layers or stack_layers(n, k, device)
        self.dtype = float_dtype(device)
        self.seed = seed
        self._floats: Optional[tuple[list, list]] = None
        self._cache: dict = {}

    def _draw(self) -> tuple[list, list]:
        if self._floats is None:
            gen = torch.Generator(device=self.device).manual_seed(self.seed)
            n, k, dev = self.n, self.k, self.device
            weights = [(torch.randn(n, k, generator=gen, device=dev) * k**-0.5).to(self.dtype) for _ in range(self.layers)]
            biases = [torch.randn(n, generator=gen, device=dev) * 0.1 for _ in range(self.layers)]
            self._floats = (weights, biases)
        return self._floats

    @property
    def weights(self) -> list[torch.Tensor]:
        return self._draw()[0]

    @property
    def biases(self) -> list[torch.Tensor]:
        return self._draw()[1]

    def form(self, key, build: Callable[[], object]):
        """The cached form `key` of the stack, built (under inference mode) on first use."""
        if key not in self._cache:
            with torch.inference_mode():
                self._cache[key] = build()
        return self._cache[key]

    # ---- forms several suites share ------------------------------------------------------------------
    def int8(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(qweight int8 [N, K], scale float32 [N]) per layer, symmetric per output channel."""
        from .. import ops

        return self.form("int8", lambda: [ops.quantize_per_channel_int8(w.float()) for w in self.weights])

    def packed(self) -> list[torch.Tensor]:
        from .. import ops

        return self.form("packed", lambda: [ops.int8_prepack(q) for q, _ in self.int8()])

    def float_linears(self, dtype: Optional[torch.dtype] = None) -> list[nn.Linear]:
        """nn.Linear layers with bias, in the stack's float dtype or in `dtype` (a copy)."""
        dtype = dtype or self.dtype

        def build():
            out = []
            for w, b in zip(self.weights, self.biases):
                lin = nn.Linear(self.k, self.n, bias=True, device="meta", dtype=dtype)
                lin.weight = nn.Parameter(w.to(dtype), requires_grad=False)
                lin.bias = nn.Parameter(b.to(dtype), requires_grad=False)
                out.append(lin.eval())
            return out

        return self.form("float_linears" if dtype == self.dtype else ("float_linears", dtype), build)

    def fbgemm(self, bias: bool) -> list[nn.Module]:
        """FBGEMM dynamic int8 layers (torch.ao quantize_dynamic, qint8), CPU only."""

        def build():
            out = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
                for w, b in zip(self.weights, self.biases):
                    lin = nn.Linear(self.k, self.n, bias=bias)
                    lin.weight.data.copy_(w)
                    if bias:
                        lin.bias.data.copy_(b)
                    seq = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)
                    out.append(seq[0])
            return out

        return self.form(("fbgemm", bias), build)

    def quant_linears(self, mode: str) -> list[nn.Module]:
        """QuantLinear layers of an int8 mode ("w8a8", "w8a16") from the float layers."""
        from ..nn import QuantLinear

        return self.form(("quant_linear", mode), lambda: [QuantLinear.from_float(l, mode) for l in self.float_linears()])

    def int_mm_weights(self) -> list[torch.Tensor]:
        """[K, N] column-major views of the int8 weights, the layout torch._int_mm wants."""
        return self.form("int_mm", lambda: [q.t() for q, _ in self.int8()])

    def nbytes(self, form: str = "int8") -> int:
        per = {"int8": 1, "float": torch.finfo(self.dtype).bits // 8}[form]
        return self.layers * self.n * self.k * per


_STACK: Optional[Stack] = None


def get_stack(n: int, k: int, device: str, layers: Optional[int] = None) -> Stack:
    """The stack for (N, K, device[, layers]); one is kept at a time (they are hundreds of MB)."""
    global _STACK
    want = layers or stack_layers(n, k, device)
    if _STACK is None or (_STACK.n, _STACK.k, _STACK.device, _STACK.layers) != (n, k, device, want):
        _STACK = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        _STACK = Stack(n, k, device, want)
    return _STACK


def release_stack() -> None:
    global _STACK
    _STACK = None
    gc.collect()
