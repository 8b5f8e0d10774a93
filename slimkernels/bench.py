"""`slimkernels bench`: our kernels against the anchors of BENCHMARKING.md, in one run, as one table.

    python -m slimkernels.bench                       # cuda if available, else cpu
    python -m slimkernels.bench --shapes small --quick
    python -m slimkernels.bench --device cpu --m 1,8,32 --threads 2 --json run.json

Two suites, the same ones the pytest-benchmark files in bench/ run (they import the shape lists,
the weight stacks, the entry builders and the table from here):

  int8_mm       the int8 GEMM with fused epilogue: ours = ops.int8_scaled_mm_packed after
                ops.int8_prepack, once per implementation usable on the device; anchors: CPU fp32
                F.linear (MKL) and FBGEMM dynamic int8 (quantize_dynamic); GPU bf16 F.linear and
                torch._int_mm (int8 GEMM only, refuses M <= 16).
  quant_linear  end-to-end layers: QuantLinear w8a8 / w8a16 (default dispatch) against float
                nn.Linear (fp32 on CPU, bf16 on GPU) and, on CPU, FBGEMM dynamic int8.
  weight_only   low-bit layers: QuantLinear w4a16 (int4 g128, asymmetric) and 4-bit codebook
                (per row) against float nn.Linear, torch's int4 weight-only kernel (tinygemm:
                aten._weight_int4pack_mm[_for_cpu], g128) and our int8 paths (w8a8, and on CPU
                FBGEMM dynamic int8), the comparison of the issue's goals.

Method (BENCHMARKING.md): every case times a stack of layers with distinct weights whose int8
copies together exceed the last-level cache (CPU L3) or L2 (GPU) several times over, cycling
through the stack so that every call reads its weight from memory; times are per layer. CPU: median
of single calls after a warm-up pass. GPU: triton.testing.do_bench median over whole-stack passes
(CUDA events), and for small M also CUDA-graph replays, which remove launch overhead. The
memory-bound floor of each entry is the bytes it must move (inputs read once, output written once)
divided by a copy bandwidth measured in the same run (read + write bytes of a large copy).
Speed-up = anchor time / our time, always from the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

# ---- shapes (BENCHMARKING.md) ------------------------------------------------------------------------
# (N, K) of y = x @ W.T with W [N, K].
LLAMA_NK = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336)]
LLAMA70_NK = [(8192, 8192), (28672, 8192)]
BERT_NK = [(768, 768), (3072, 768), (768, 3072), (384, 384), (1536, 384)]
FULL_NK = LLAMA_NK + LLAMA70_NK + BERT_NK
SMALL_NK = [(4096, 4096), (11008, 4096), (768, 768), (3072, 768)]
SHAPE_SETS = {"small": SMALL_NK, "full": FULL_NK}

CPU_M = (1, 8, 32, 128, 512)
GPU_M = (1, 4, 16, 32, 64, 128, 512, 2048, 8192)
CPU_M_QUICK = (1, 32)
GPU_M_QUICK = (1, 16, 128, 2048)

SUITES = ("int8_mm", "quant_linear", "weight_only")
SUITE_OP = {"int8_mm": "int8_scaled_mm_packed", "quant_linear": "QuantLinear", "weight_only": "QuantLinear (low-bit)"}
LOWBIT_GROUP = 128  # the group size every weight_only entry uses (int4 ours and tinygemm)

# The pure-torch reference of int8_scaled_mm_packed unpacks the weight and multiplies in int64
# (~0.5 s for one 4096x4096 layer at M=1 on the 2-core CPU): it is timed only up to this many
# multiply-adds per layer, unless asked for (--include-reference).
REFERENCE_MAX_MACS = 2**26
# Int8 bytes the stack of distinct weights must hold, in multiples of the cache it must defeat.
CPU_CACHE_MULTIPLE = 4  # 4 x 32 MB L3 = 8 layers of 4096x4096 int8 (BENCHMARKING.md's stack)
GPU_CACHE_MULTIPLE = 3
MIN_LAYERS, MAX_LAYERS = 2, 512
GPU_GRAPH_MAX_M = 128  # CUDA-graph replays are timed for M up to this (launch overhead matters)
MIN_SAMPLES = 5

ENV_SHAPES = "SLIMKERNELS_BENCH_SHAPES"  # small | full
ENV_M = "SLIMKERNELS_BENCH_M"  # e.g. "1,8,32"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_shapes(device: str) -> str:
    """The short list on CPU (2 cores, minutes per shape), every listed shape on GPU."""
    return os.environ.get(ENV_SHAPES) or ("small" if device == "cpu" else "full")


def shape_list(shapes: str) -> list[tuple[int, int]]:
    """'small', 'full', or an explicit list '4096x4096,768x3072' -> [(N, K), ...]."""
    if shapes in SHAPE_SETS:
        return list(SHAPE_SETS[shapes])
    out = []
    for item in shapes.split(","):
        try:
            n, k = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--shapes: expected small, full or a list like 4096x4096,768x3072; got {shapes!r}") from None
        out.append((n, k))
    return out


def m_list(device: str, quick: bool = False, override: Optional[str] = None) -> list[int]:
    override = override or os.environ.get(ENV_M)
    if override:
        try:
            ms = [int(v) for v in override.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--m: expected a comma-separated list of integers, got {override!r}") from None
        if not ms or min(ms) < 1:
            raise ValueError(f"--m: every M must be >= 1, got {override!r}")
        return ms
    if device == "cpu":
        return list(CPU_M_QUICK if quick else CPU_M)
    return list(GPU_M_QUICK if quick else GPU_M)


# ---- the machine -------------------------------------------------------------------------------------
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
    """What a recorded number needs next to it: machine, threads, ISA, versions, what is built."""
    from . import __version__, _native

    return {
        "device": device,
        "device_name": device_name(device),
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "cpu_isa": _native.cpu_isa(),
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


# ---- timing ------------------------------------------------------------------------------------------
def cycle(calls: list[Callable[[], object]]) -> Callable[[], object]:
    """One callable that runs the next layer of the stack each time it is called."""
    it = itertools.cycle(calls)
    return lambda: next(it)()


def warm_up(fn: Callable[[], object], layers: int, budget_s: float) -> float:
    """Call fn (a cycle over the stack) a few times, up to one pass; return seconds per call.

    A full pass is not needed: cycling, every later call reads a weight last touched `layers`
    calls earlier, which the cache no longer holds, however many calls are timed.
    """
    deadline = time.perf_counter() + budget_s / 4
    times = []
    while len(times) < layers:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 and time.perf_counter() >= deadline:
            break
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def plan_rounds(seconds_per_call: float, budget_s: float, max_rounds: int = 20000) -> int:
    """Single-call rounds for a CPU timing: about budget_s of calls, at least MIN_SAMPLES."""
    return max(MIN_SAMPLES, min(max_rounds, math.ceil(budget_s / max(seconds_per_call, 1e-7))))


def time_cpu(calls: list[Callable[[], object]], budget_s: float = 1.0) -> list[float]:
    """Seconds of single layer calls, cycling through the stack, after a short warm-up."""
    fn = cycle(calls)
    rounds = plan_rounds(warm_up(fn, len(calls), budget_s), budget_s)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _do_bench(fn: Callable[[], object], quick: bool) -> float:
    """Median milliseconds of fn on the current CUDA stream (CUDA events)."""
    warmup, rep = (10, 40) if quick else (25, 100)
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    fn()  # fallback without triton: events around each call, median
    torch.cuda.synchronize()
    times = []
    deadline = time.perf_counter() + rep / 1e3
    while time.perf_counter() < deadline or len(times) < MIN_SAMPLES:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cuda_graph(step: Callable[[], object], reps: int) -> "torch.cuda.CUDAGraph":
    """Capture `reps` runs of step (a pass over the stack) into one graph, after side-stream warm-up."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            step()
    torch.cuda.synchronize()
    return graph


def graph_reps(layers: int) -> int:
    return max(1, math.ceil(40 / layers))


@functools.lru_cache(maxsize=None)
def measure_bandwidth(device: str, quick: bool = False) -> float:
    """Bytes per second of a large copy (read + write counted), with the current threads."""
    if device == "cuda":
        numel = 2**28  # 1 GiB of float32
        src = torch.ones(numel, device="cuda")
        dst = torch.empty_like(src)
        ms = _do_bench(lambda: dst.copy_(src), quick)
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


# ---- weight stacks -----------------------------------------------------------------------------------
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

    Float weights (fp32 on CPU, bf16 on GPU) are made once; the int8, packed, FBGEMM and QuantLinear
    forms are derived from them on first use, so a run builds only what it times.
    """

    def __init__(self, n: int, k: int, device: str, layers: Optional[int] = None, seed: int = 0):
        self.n, self.k, self.device = n, k, device
        self.layers = layers or stack_layers(n, k, device)
        self.dtype = float_dtype(device)
        gen = torch.Generator(device=device).manual_seed(seed)
        self.weights = [
            (torch.randn(n, k, generator=gen, device=device) * k**-0.5).to(self.dtype) for _ in range(self.layers)
        ]
        self.biases = [torch.randn(n, generator=gen, device=device) * 0.1 for _ in range(self.layers)]
        self._cache: dict = {}

    def _get(self, key, build):
        if key not in self._cache:
            with torch.inference_mode():
                self._cache[key] = build()
        return self._cache[key]

    def int8(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(qweight int8 [N, K], scale float32 [N]) per layer, symmetric per output channel."""
        from . import ops

        return self._get("int8", lambda: [ops.quantize_per_channel_int8(w.float()) for w in self.weights])

    def packed(self) -> list[torch.Tensor]:
        from . import ops

        return self._get("packed", lambda: [ops.int8_prepack(q) for q, _ in self.int8()])

    def float_linears(self) -> list[nn.Linear]:
        def build():
            out = []
            for w, b in zip(self.weights, self.biases):
                lin = nn.Linear(self.k, self.n, bias=True, device="meta", dtype=self.dtype)
                lin.weight = nn.Parameter(w, requires_grad=False)
                lin.bias = nn.Parameter(b.to(self.dtype), requires_grad=False)
                out.append(lin.eval())
            return out

        return self._get("float_linears", build)

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

        return self._get(("fbgemm", bias), build)

    def quant_linears(self, mode: str) -> list[nn.Module]:
        from .nn import QuantLinear

        return self._get(("quant_linear", mode), lambda: [QuantLinear.from_float(l, mode) for l in self.float_linears()])

    def lowbit_linears(self, mode: str) -> list[nn.Module]:
        """QuantLinear w4a16 (RTN, g128, asymmetric) or codebook (4-bit, per row) layers. The
        codebook's values do not change the time, so it is random rather than fitted (k-means on
        hundreds of MB of weights would dominate the run)."""
        from .compress import Int4WeightOnlyConfig
        from .nn import QuantLinear

        def build():
            if mode == "w4a16":
                return [QuantLinear.from_float(l, Int4WeightOnlyConfig(group_size=LOWBIT_GROUP)) for l in self.float_linears()]
            gen = torch.Generator().manual_seed(7)
            out = []
            for b in self.biases:
                codes = torch.randint(0, 16, (self.n, self.k), generator=gen, dtype=torch.uint8)
                codebook = torch.randn(self.n, 16, generator=gen).sort(dim=1).values * 0.02
                out.append(QuantLinear.from_codebook(codes.to(self.device), codebook.to(self.device), b))
            return out

        return self._get(("lowbit", mode), build)

    def tinygemm(self) -> list[Callable]:
        """torch's int4 weight-only kernel (aten._weight_int4pack_mm, _for_cpu on CPU), g128,
        as functions of x; its weight layout is made by torch's own packing op."""

        from .quant.lowbit import unpack_codes

        def build():
            out = []
            for lin in self.lowbit_linears("w4a16"):
                q = unpack_codes(lin.qweight, 4, self.k)
                w_scale = lin.weight_scale
                zeros = lin.weight_zero.float()
                # tinygemm dequantizes w = (q - 8) * s + zero_point: our (q - z) * s means zero_point = (8 - z) * s.
                sz = torch.stack([w_scale, (8 - zeros) * w_scale], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
                if self.device == "cpu":
                    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
                    out.append(lambda x, p=packed, sz=sz: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, LOWBIT_GROUP, sz))
                else:
                    hi_lo = ((q[:, ::2] << 4) | q[:, 1::2]).contiguous()  # torch's order: even k in the high nibble
                    packed = torch.ops.aten._convert_weight_to_int4pack(hi_lo, 8)
                    out.append(lambda x, p=packed, sz=sz: torch.ops.aten._weight_int4pack_mm(x, p, LOWBIT_GROUP, sz))
            return out

        return self._get("tinygemm", build)

    def int_mm_weights(self) -> list[torch.Tensor]:
        """[K, N] column-major views of the int8 weights, the layout torch._int_mm wants."""
        return self._get("int_mm", lambda: [q.t() for q, _ in self.int8()])

    def nbytes(self, form: str = "int8") -> int:
        per = {"int8": 1, "float": torch.finfo(self.dtype).bits // 8}[form]
        return self.layers * self.n * self.k * per


_STACK: Optional[Stack] = None


def get_stack(n: int, k: int, device: str) -> Stack:
    """The stack for (N, K, device); one is kept at a time (they are hundreds of MB)."""
    global _STACK
    if _STACK is None or (_STACK.n, _STACK.k, _STACK.device) != (n, k, device):
        _STACK = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        _STACK = Stack(n, k, device)
    return _STACK


def release_stack() -> None:
    global _STACK
    _STACK = None
    gc.collect()


# ---- what is compared --------------------------------------------------------------------------------
@dataclasses.dataclass
class EntrySpec:
    """One timed thing of a case, known before any weight is built (pytest parametrizes on these)."""

    suite: str
    name: str  # shown in tables: "ours:native", "fp32 F.linear", ...
    id: str  # pytest id part: "ours_native", "fp32_linear", ...
    kind: str  # "ours" | "anchor"
    backend: Optional[str] = None  # forced through slimkernels.use_backend while timing; None: default
    skip: Optional[str] = None  # why it is not timed here
    isa: Optional[str] = None  # CPU only: force this ISA of the native kernels (SLIMKERNELS_CPU_ISA)


@dataclasses.dataclass
class Entry:
    spec: EntrySpec
    calls: list  # one callable per layer of the stack
    bytes: int  # bytes one call must move (inputs read once, output written once)
    ops: int  # multiply-adds x 2


def ours_implementations(op: str, device: str) -> list[str]:
    """Implementations of `op` worth timing on `device` (Triton on CPU is the interpreter: never)."""
    from .backends import implementations

    return [i for i in implementations(op, device) if not (device == "cpu" and i == "triton")]


def _reference_skip(impl: str, n: int, k: int, m: int, include_reference: bool) -> Optional[str]:
    if impl == "reference" and not include_reference and m * n * k > REFERENCE_MAX_MACS:
        return (f"the pure-torch reference is not timed above {REFERENCE_MAX_MACS} multiply-adds per layer "
                "(--include-reference times it)")
    return None


def lesser_isas(device: str) -> list[str]:
    """CPU ISAs below the best one (e.g. avx2 on an AVX-512 machine), timed as extra rows so one run
    also shows what an AVX2-only machine gets; the scalar fallback is never worth timing."""
    from . import _native

    if device != "cpu" or _native._C is None:
        return []
    return [isa for isa in _native._C.supported_isas()[1:] if isa != "scalar"]


def entry_specs(suite: str, device: str, n: int, k: int, m: int, include_reference: bool = False) -> list[EntrySpec]:
    from .backends import resolve

    specs: list[EntrySpec] = []
    if suite == "int8_mm":
        for impl in ours_implementations("int8_scaled_mm_packed", device):
            specs.append(EntrySpec(suite, f"ours:{impl}", f"ours_{impl}", "ours", impl,
                                   _reference_skip(impl, n, k, m, include_reference)))
            if impl == "native":
                specs += [EntrySpec(suite, f"ours:native[{isa}]", f"ours_native_{isa}", "ours", impl, isa=isa)
                          for isa in lesser_isas(device)]
        if device == "cpu":
            specs.append(EntrySpec(suite, "fp32 F.linear", "fp32_linear", "anchor"))
            specs.append(EntrySpec(suite, "fbgemm dyn int8", "fbgemm_dyn", "anchor"))
        else:
            specs.append(EntrySpec(suite, "bf16 F.linear", "bf16_linear", "anchor"))
            specs.append(EntrySpec(suite, "torch._int_mm", "int_mm", "anchor",
                                   skip=None if m > 16 else "torch._int_mm refuses M <= 16"))
    elif suite == "quant_linear":
        for mode, op in (("w8a8", "int8_dynamic_linear"), ("w8a16", "dequant_mm_int8")):
            impl = resolve(op, device)  # the default dispatch: what a user gets
            specs.append(EntrySpec(suite, f"{mode}:{impl}", f"{mode}_{impl}", "ours", None,
                                   _reference_skip(impl, n, k, m, include_reference)))
            if impl == "native":
                specs += [EntrySpec(suite, f"{mode}:native[{isa}]", f"{mode}_native_{isa}", "ours", None, isa=isa)
                          for isa in lesser_isas(device)]
        if device == "cpu":
            specs.append(EntrySpec(suite, "fp32 nn.Linear", "fp32_linear", "anchor"))
            specs.append(EntrySpec(suite, "fbgemm dyn int8", "fbgemm_dyn", "anchor"))
        else:
            specs.append(EntrySpec(suite, "bf16 nn.Linear", "bf16_linear", "anchor"))
    elif suite == "weight_only":
        group_skip = None if k % LOWBIT_GROUP == 0 else f"K={k} is not a multiple of the group size {LOWBIT_GROUP}"
        for mode, op in (("w4a16", "dequant_mm_int4"), ("codebook", "lut_mm"), ("w8a8", "int8_dynamic_linear")):
            impl = resolve(op, device)
            skip = (group_skip if mode == "w4a16" else None) or _reference_skip(impl, n, k, m, include_reference)
            specs.append(EntrySpec(suite, f"{mode}:{impl}", f"{mode}_{impl}", "ours", None, skip))
            if impl == "native" and mode != "w8a8":
                specs += [EntrySpec(suite, f"{mode}:native[{isa}]", f"{mode}_native_{isa}", "ours", None,
                                    skip if mode == "w4a16" else None, isa=isa)
                          for isa in lesser_isas(device)]
        if device == "cpu":
            specs.append(EntrySpec(suite, "fp32 nn.Linear", "fp32_linear", "anchor"))
            specs.append(EntrySpec(suite, "fbgemm dyn int8", "fbgemm_dyn", "anchor"))
            specs.append(EntrySpec(suite, "tinygemm int4 (bf16)", "tinygemm", "anchor", skip=group_skip))
        else:
            specs.append(EntrySpec(suite, "bf16 nn.Linear", "bf16_linear", "anchor"))
            specs.append(EntrySpec(suite, "tinygemm int4", "tinygemm", "anchor", skip=group_skip))
    else:
        raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
    return specs


def build_entry(spec: EntrySpec, stack: Stack, m: int) -> Entry:
    """The per-layer callables of one entry on `stack` with M rows of input, and its byte count."""
    from . import ops
    from .quant.packing import int8_packed_shape

    n, k, dev, dt = stack.n, stack.k, stack.device, stack.dtype
    fsize = torch.finfo(dt).bits // 8
    gen = torch.Generator(device=dev).manual_seed(1000 + m)
    x = torch.randn(m, k, generator=gen, device=dev).to(dt)
    macs2 = 2 * m * n * k
    name = spec.id
    if spec.suite == "int8_mm":
        if name.startswith("ours_"):
            with torch.inference_mode():
                a, a_scale = ops.quantize_per_token_int8(x)
            packed = stack.packed()
            scales = [s for _, s in stack.int8()]
            calls = [functools.partial(ops.int8_scaled_mm_packed, a, a_scale, p, s, None, dt) for p, s in zip(packed, scales)]
            pnumel = math.prod(int8_packed_shape(dev, n, k))
            return Entry(spec, calls, m * k + 4 * m + pnumel + 4 * n + m * n * fsize, macs2)
        if name in ("fp32_linear", "bf16_linear"):
            calls = [functools.partial(F.linear, x, w) for w in stack.weights]
            return Entry(spec, calls, fsize * (m * k + n * k + m * n), macs2)
        if name == "fbgemm_dyn":
            return Entry(spec, [functools.partial(l, x) for l in stack.fbgemm(bias=False)], 4 * m * k + n * k + 4 * n + 4 * m * n, macs2)
        if name == "int_mm":
            a = torch.randint(-127, 128, (m, k), generator=gen, device=dev, dtype=torch.int8)
            calls = [functools.partial(torch._int_mm, a, w) for w in stack.int_mm_weights()]
            return Entry(spec, calls, m * k + n * k + 4 * m * n, macs2)
    elif spec.suite in ("quant_linear", "weight_only"):  # whole layers (with bias) of every kind
        mode = name.split("_", 1)[0]
        if mode in ("w8a8", "w8a16"):
            calls = [functools.partial(l, x) for l in stack.quant_linears(mode)]
            return Entry(spec, calls, fsize * (m * k + m * n) + n * k + 8 * n, macs2)
        if mode in ("w4a16", "codebook"):
            calls = [functools.partial(l, x) for l in stack.lowbit_linears(mode)]
            meta = 5 * n * (k // LOWBIT_GROUP) if mode == "w4a16" else 64 * n  # scales + zeros / the codebook rows
            return Entry(spec, calls, fsize * (m * k + m * n) + n * ((k + 1) // 2) + meta + 4 * n, macs2)
        if name in ("fp32_linear", "bf16_linear"):
            calls = [functools.partial(l, x) for l in stack.float_linears()]
            return Entry(spec, calls, fsize * (m * k + n * k + m * n + n), macs2)
        if name == "fbgemm_dyn":
            return Entry(spec, [functools.partial(l, x) for l in stack.fbgemm(bias=True)], 4 * m * k + n * k + 8 * n + 4 * m * n, macs2)
        if name == "tinygemm":
            xb = x.to(torch.bfloat16)
            calls = [functools.partial(f, xb) for f in stack.tinygemm()]
            return Entry(spec, calls, 2 * (m * k + m * n) + n * k // 2 + 4 * n * (k // LOWBIT_GROUP), macs2)
    raise ValueError(f"no builder for entry {spec.suite}/{spec.id}")


@contextlib.contextmanager
def _backend_ctx(spec: EntrySpec):
    from .backends import use_backend

    previous = os.environ.get("SLIMKERNELS_CPU_ISA")
    if spec.isa:
        os.environ["SLIMKERNELS_CPU_ISA"] = spec.isa
    try:
        with use_backend(spec.backend):
            yield
    finally:
        if spec.isa:
            if previous is None:
                os.environ.pop("SLIMKERNELS_CPU_ISA", None)
            else:
                os.environ["SLIMKERNELS_CPU_ISA"] = previous


# ---- running one case --------------------------------------------------------------------------------
def time_entry(entry: Entry, device: str, m: int, budget_s: float, quick: bool) -> dict:
    """Time one entry; per-layer microseconds in 'time_us' (graph replay on GPU where taken)."""
    layers = len(entry.calls)
    out: dict = {}
    with torch.inference_mode(), _backend_ctx(entry.spec):
        if device == "cpu":
            times = time_cpu(entry.calls, budget_s)
            out.update(time_us=statistics.median(times) * 1e6, min_us=min(times) * 1e6, samples=len(times),
                       timing="median of single calls")
            return out

        def step():
            for call in entry.calls:
                call()

        plain = _do_bench(step, quick) * 1e3 / layers
        out.update(plain_us=plain, time_us=plain, timing="do_bench median")
        if m <= GPU_GRAPH_MAX_M:
            reps = graph_reps(layers)
            try:
                graph = cuda_graph(step, reps)
                out["graph_us"] = _do_bench(graph.replay, quick) * 1e3 / (reps * layers)
                out.update(time_us=out["graph_us"], timing="cuda-graph replay, do_bench median")
                del graph
            except Exception as exc:  # a kernel that cannot be captured is reported, not fatal
                out["graph_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                torch.cuda.synchronize()
    return out


def run_case(suite: str, stack: Stack, m: int, bandwidth: float, budget_s: float, quick: bool,
             include_reference: bool) -> list[dict]:
    rows = []
    for spec in entry_specs(suite, stack.device, stack.n, stack.k, m, include_reference):
        row = {"suite": suite, "op": SUITE_OP[suite], "device": stack.device, "N": stack.n, "K": stack.k, "M": m,
               "layers": stack.layers, "name": spec.name, "id": spec.id, "kind": spec.kind}
        if spec.skip:
            rows.append({**row, "status": "skipped", "reason": spec.skip})
            continue
        try:
            entry = build_entry(spec, stack, m)
            timing = time_entry(entry, stack.device, m, budget_s, quick)
        except Exception as exc:  # an anchor missing from this torch build, a kernel error: recorded
            rows.append({**row, "status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        floor_us = entry.bytes / bandwidth * 1e6
        t = timing["time_us"]
        rows.append({**row, "status": "ok", **timing, "bytes": entry.bytes, "ops": entry.ops,
                     "floor_us": floor_us, "x_floor": t / floor_us, "gbps": entry.bytes / t / 1e3,
                     "tops": entry.ops / t / 1e6})
        del entry
    return rows


# ---- the table ---------------------------------------------------------------------------------------
def fmt_time(us: Optional[float]) -> str:
    if us is None:
        return "-"
    if us < 1000:
        return f"{us:.1f} us"
    if us < 1e6:
        return f"{us / 1e3:.2f} ms"
    return f"{us / 1e6:.2f} s"


def _render(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body]


def _short(name: str) -> str:
    """Column label: 'ours:native' -> 'native', 'w8a8:native' -> 'w8a8', 'w8a8:native[avx2]' ->
    'w8a8[avx2]', 'fp32 F.linear' -> 'fp32'."""
    if name.startswith("ours:"):
        return name[5:]
    isa = name[name.index("["):] if name.endswith("]") else ""
    return name.split(":")[0].split(" ")[0] + isa


def format_table(rows: list[dict], bandwidth: Optional[dict] = None) -> str:
    """One block per (suite, device, N, K): a line per M with each time, speed-ups and the floor.

    Speed-up columns ('<ours> vs <anchor>') are anchor_time / our_time (> 1: ours is faster). 'floor' is the memory-bound
    floor of the first 'ours' entry (bytes / copy bandwidth); 'x floor' is time / floor (1.0 = at the
    memory floor; larger = that many times slower than moving the bytes). A '*' marks a time taken
    without CUDA-graph replay in a case where other entries were replayed.
    """
    out: list[str] = []
    notes: dict[str, str] = {}
    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        blocks.setdefault((r["suite"], r["device"], r["N"], r["K"]), []).append(r)
    for (suite, device, n, k), brows in blocks.items():
        names: list[str] = []
        kinds: dict[str, str] = {}
        for r in brows:
            if r["name"] not in names:
                names.append(r["name"])
                kinds[r["name"]] = r["kind"]
        ours = [nm for nm in names if kinds[nm] == "ours"]
        anchors = [nm for nm in names if kinds[nm] == "anchor"]
        layers = brows[0]["layers"]
        bw = f", copy {bandwidth[device] / 1e9:.1f} GB/s" if bandwidth and device in bandwidth else ""
        out.append(f"\n{SUITE_OP[suite]} on {device}: N={n} K={k}  ({layers} layers, "
                   f"{layers * n * k / 1e6:.0f} MB int8{bw}); per layer")
        header = (["M"] + names + [f"{_short(o)} vs {_short(a)}" for o in ours for a in anchors] + ["floor"]
                  + [f"{_short(o)} x floor" for o in ours])
        body = []
        for m in sorted({r["M"] for r in brows}):
            by = {r["name"]: r for r in brows if r["M"] == m}
            graphed = any("graph_us" in r for r in by.values())
            cells = [str(m)]
            for nm in names:
                r = by.get(nm)
                if r is None:
                    cells.append("")
                elif r["status"] == "ok":
                    cells.append(fmt_time(r["time_us"]) + ("*" if graphed and "graph_us" not in r else ""))
                else:
                    tag = "skip" if r["status"] == "skipped" else "error"
                    cells.append(tag)
                    notes.setdefault(f"{nm}: {r['reason']}", tag)
            for o in ours:
                for a in anchors:
                    ro, ra = by.get(o), by.get(a)
                    ok = ro and ra and ro["status"] == ra["status"] == "ok"
                    cells.append(f"{ra['time_us'] / ro['time_us']:.2f}x" if ok else "-")
            first = next((by[o] for o in ours if o in by and by[o]["status"] == "ok"), None)
            cells.append(fmt_time(first["floor_us"]) if first else "-")
            for o in ours:
                r = by.get(o)
                cells.append(f"{r['x_floor']:.2f}" if r and r["status"] == "ok" else "-")
            body.append(cells)
        out.extend(_render(header, body))
    if notes:
        out.append("")
        out.extend(f"  {tag}: {text}" for text, tag in notes.items())
    return "\n".join(out)


# ---- the command -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slimkernels bench",
        description="Time slimkernels' int8 GEMM and QuantLinear against the anchors of BENCHMARKING.md "
                    "(fp32 MKL / FBGEMM int8 on CPU, bf16 cuBLAS / torch._int_mm on GPU) in one run.",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--shapes", default=None,
                   help="small | full | NxK list like 4096x4096,768x3072 "
                        f"(default: ${ENV_SHAPES}, else small on cpu and full on cuda)")
    p.add_argument("--m", default=None, help="comma-separated M (tokens), overriding the device's list")
    p.add_argument("--suite", default="all", help=f"all or a comma-separated subset of {','.join(SUITES)}")
    p.add_argument("--threads", type=int, default=None, help="torch (and our CPU kernels') threads")
    p.add_argument("--json", default=None, metavar="PATH", help="write every row plus the environment here")
    p.add_argument("--quick", action="store_true",
                   help=f"fewer M (cpu {','.join(map(str, CPU_M_QUICK))}; cuda {','.join(map(str, GPU_M_QUICK))}) "
                        "and shorter timings; the stacks still exceed the cache")
    p.add_argument("--budget", type=float, default=None, help="seconds of timed calls per CPU entry (default 1, quick 0.25)")
    p.add_argument("--include-reference", action="store_true",
                   help="also time the pure-torch reference above the size where it is skipped (slow)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    command = "slimkernels bench " + " ".join(argv) if argv is not None else " ".join(["python -m slimkernels.bench"] + sys.argv[1:])
    device = args.device or default_device()
    if device == "cuda" and not torch.cuda.is_available():
        print("slimkernels bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print("slimkernels bench: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        shapes = shape_list(args.shapes or default_shapes(device))
        ms = m_list(device, args.quick, args.m)
        suites = list(SUITES) if args.suite == "all" else [s.strip() for s in args.suite.split(",")]
        bad = [s for s in suites if s not in SUITES]
        if bad:
            raise ValueError(f"--suite: unknown {bad}; expected all or some of {SUITES}")
    except ValueError as exc:
        print(f"slimkernels bench: {exc}", file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else (0.25 if args.quick else 1.0)

    import slimkernels  # noqa: F401  (registers every op and backend)
    from tqdm import tqdm

    env = environment(device)
    print(f"slimkernels bench: {env['device_name']} ({device}), {env['threads']} threads, cpu isa {env['cpu_isa']}, "
          f"native cpu={'yes' if env['native_cpu'] else 'no'} cuda={'yes' if env['native_cuda'] else 'no'}, "
          f"torch {env['torch']}")
    if device == "cpu" and not env["native_cpu"]:
        print("note: slimkernels._C is not built: 'ours' on CPU is the pure-torch reference, timed only on small "
              "problems; these numbers say nothing about our kernels.")
    load = env["loadavg_1min"]
    if device == "cpu" and load is not None and load > max(0.5, 0.25 * (env["cpu_count"] or 1)):
        print(f"warning: load average {load:.1f} before starting ({env['cpu_count']} cpus): other jobs share the "
              "cores; OpenMP anchors (MKL, FBGEMM) then stall in multiples of the scheduler tick. Record numbers "
              "on an idle machine.")
    bandwidth = measure_bandwidth(device, args.quick)
    print(f"copy bandwidth (read + write): {bandwidth / 1e9:.1f} GB/s; shapes {shapes}; M {ms}; suites {suites}",
          flush=True)

    rows: list[dict] = []
    bar = tqdm(total=len(shapes) * len(suites) * len(ms), unit="case", disable=args.no_progress, file=sys.stderr)
    try:
        for n, k in shapes:
            bar.set_description(f"{n}x{k} building stack")
            stack = get_stack(n, k, device)
            shape_rows: list[dict] = []
            for suite in suites:
                for m in ms:
                    bar.set_description(f"{suite} {n}x{k} M={m}")
                    shape_rows += run_case(suite, stack, m, bandwidth, budget, args.quick, args.include_reference)
                    bar.update(1)
            rows += shape_rows
            tqdm.write(format_table(shape_rows, {device: bandwidth}), file=sys.stdout)
            release_stack()
    finally:
        bar.close()
        release_stack()

    if args.json:
        record = {**env, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": command, "bandwidth_Bps": bandwidth, "shapes": shapes, "m": ms, "suites": suites,
                  "budget_s": budget, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
