#!/usr/bin/env python3
"""llama.cpp's CPU kernels (ggml Q4_0 / Q8_0 / Q4_K, in the CPU_REPACK layouts llama.cpp uses on x86) against
slimkernels' weight-only int4 g128 / 4-bit codebook / W8A8 and FBGEMM dynamic int8, in one process,
interleaved.

Per-layer time = one pass through a stack of L layers [N, K] (different weights, beyond the LLC) on
the same x [M, K], divided by L; each repetition times every candidate once, in an order rotated by
one per repetition; the table gives the median (and min..max) over repetitions. Error = layer 0's
relative Frobenius error against the float64 product with the original float32 weight.

  bash bench/llamacpp/build.sh /tmp/ggml_bench          # builds ggml (llama-cpp-python's sdist) + our shim
  python bench/llamacpp_compare.py --lib /tmp/ggml_bench/libggml_bench.so [--ms 1,8,32,128] [--reps 7]
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import torch
import torch.nn as nn

import slimkernels
from slimkernels.bench.machine import cpu_name

# ggml type id, and whether its CPU_REPACK layout is used (Q8_0's crashed in ggml here: plain layout)
GGML_TYPES = {"ggml Q4_0": (2, True), "ggml Q8_0": (8, False), "ggml Q4_K": (12, True)}


class GgmlStack:
    def __init__(self, lib, type_id: int, weights: torch.Tensor, m: int, threads: int, repack: bool):
        layers, n, k = weights.shape
        self.lib, self.n, self.m = lib, n, m
        w = weights.contiguous()
        self.handle = lib.gb_create(type_id, layers, n, k, m, w.data_ptr(), threads, int(repack))
        if not self.handle:
            raise RuntimeError("ggml stack could not be created")
        self.repacked = bool(lib.gb_repacked(self.handle))
        self.layers = layers

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None):
        if self.lib.gb_run(self.handle, x.data_ptr(), out.data_ptr() if out is not None else None):
            raise RuntimeError("ggml compute failed")

    def close(self):
        self.lib.gb_free(self.handle)


def load_lib(path: str):
    lib = ctypes.CDLL(path)
    lib.gb_create.restype = ctypes.c_void_p
    lib.gb_create.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.gb_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.gb_repacked.argtypes = [ctypes.c_void_p]
    lib.gb_free.argtypes = [ctypes.c_void_p]
    return lib


def torch_stack(weights: torch.Tensor, config=None, dtype=torch.float32) -> list[nn.Module]:
    layers = []
    for w in weights:
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data.copy_(w)
        model = nn.Sequential(lin).to(dtype)
        if config is not None:
            slimkernels.quantize_(model, config, progress=False)
        layers.append(model[0])
    return layers


def fbgemm_stack(weights: torch.Tensor) -> list[nn.Module]:
    from torch.ao.quantization import quantize_dynamic

    return [quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)[0] for lin in torch_stack(weights)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", required=True, help="libggml_bench.so from bench/llamacpp/build.sh")
    p.add_argument("--shape", default="4096x4096", help="NxK")
    p.add_argument("--ms", default="1,8,32,128")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--no-repack", action="store_true",
                   help="ggml's plain layout (no CPU_REPACK buffer)")
    p.add_argument("--skip-ggml", action="store_true", help="only ours and the torch anchors (a control run)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n, k = map(int, args.shape.split("x"))
    ms = [int(m) for m in args.ms.split(",")]
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(args.layers, n, k, generator=gen) / k ** 0.5
    lib = load_lib(args.lib)

    ours = {
        "slimkernels int4 g128": torch_stack(weights, slimkernels.Int4WeightOnlyConfig(group_size=128)),
        "slimkernels int4 g32": torch_stack(weights, slimkernels.Int4WeightOnlyConfig(group_size=32)),
        "slimkernels W8A8": torch_stack(weights, slimkernels.Int8DynamicConfig()),
        "FBGEMM dynamic int8": fbgemm_stack(weights),
        "fp32 nn.Linear": torch_stack(weights),
        "bf16 nn.Linear": torch_stack(weights, dtype=torch.bfloat16),
    }
    print(f"# {cpu_name()}, torch {torch.__version__}, threads {args.threads}, {n}x{k} x {args.layers} layers, "
          f"ggml {'plain layout' if args.no_repack else 'CPU_REPACK layouts where it has them'}")
    print("| candidate | M | median us/layer | min..max | vs FBGEMM | rel. error |")
    print("|---|---|---|---|---|---|")
    keep = []
    with torch.inference_mode():
        for m in ms:
            x = torch.randn(m, k, generator=gen)
            exact = (x.double() @ weights[0].double().T)
            runs = {}
            errors = {}
            for name, stack in ours.items():
                xin = x.to(torch.bfloat16) if name.startswith("bf16") else x
                runs[name] = (lambda s=stack, xin=xin: [layer(xin) for layer in s])
                errors[name] = ((stack[0](xin).double() - exact).norm() / exact.norm()).item()
            ggml = {} if args.skip_ggml else {name: GgmlStack(lib, t, weights, m, args.threads, repack and not args.no_repack)
                    for name, (t, repack) in GGML_TYPES.items()}
            y0 = torch.empty(m, n)
            for name, stack in ggml.items():
                runs[name] = (lambda s=stack: s(x))
                stack(x, y0)
                errors[name] = ((y0.double() - exact).norm() / exact.norm()).item()
            names = list(runs)
            times = {name: [] for name in names}
            for fn in runs.values():
                fn()  # warm-up
            for rep in range(args.reps):
                order = names[rep % len(names):] + names[:rep % len(names)]
                for name in order:
                    t0 = time.perf_counter()
                    runs[name]()
                    times[name].append((time.perf_counter() - t0) / args.layers * 1e6)
            base = statistics.median(times["FBGEMM dynamic int8"])
            for name in names:
                med = statistics.median(times[name])
                tag = f" (repacked: {ggml[name].repacked})" if name in ggml else ""
                print(f"| {name}{tag} | {m} | {med:.0f} | {min(times[name]):.0f}..{max(times[name]):.0f} | "
                      f"{base / med:.2f}x | {errors[name]:.4f} |", flush=True)
            keep.extend(ggml.values())  # freed at exit: freeing a repacked (AMX) stack then building another crashed


if __name__ == "__main__":
    main()
