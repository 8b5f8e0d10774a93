"""Scratch CPU weight-only low-bit benchmark: our native dequant_mm_int4 (W4 g128; float32 x, and
bfloat16 x on the same layers) and lut_mm (4-bit codebook) against our W8A8 / W8A16 QuantLinear,
FBGEMM dynamic int8, fp32 nn.Linear (MKL) and aten._weight_int4pack_mm_for_cpu (bf16 x), all in one
process. SLIMKERNELS_CPU_AMX=off|on|auto applies as everywhere.

Run from the repo root:  PYTHONPATH=. python bench/scratch_cpu_lowbit.py [--ms 1,8,32,128]
    [--shapes 4096x4096,11008x4096] [--threads 2] [--stack-mb 0] [--reps 15]
Each method runs over its own stack of different layers whose weights together exceed
--stack-mb (default: twice the last-level cache, read from sysfs), so no method is served from the
cache. Passes of the methods are interleaved (noise hits all alike); the figure is the median per-layer
time. GB/s at M = 1 = that method's weight bytes per layer / its time.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn

import slimkernels
from slimkernels import _C, ops
from slimkernels.nn import QuantLinear


def llc_bytes() -> int:
    best = 0
    for i in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{i}/size") as f:
                s = f.read().strip()
        except OSError:
            break
        mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1)
        best = max(best, int(s.rstrip("KM")) * mult)
    return best or 32 << 20


def build(n, k, stack_bytes):
    """Per method: (list of layer callables x -> y, weight bytes per layer)."""
    def count(layer_bytes):
        return max(2, math.ceil(stack_bytes / layer_bytes))

    g = torch.Generator().manual_seed(0)
    methods = {}
    # ours, int4 g128 symmetric: random packed bytes are random codes
    b4 = n * k // 2 + n * (k // 128) * 4
    w4 = [(torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g), torch.rand(n, k // 128, generator=g) * 0.01)
          for _ in range(count(b4))]
    methods["int4 g128"] = ([lambda x, q=q, s=s: ops.dequant_mm_int4(x, q, s, None, 128, None) for q, s in w4], b4)
    # the same layers with bfloat16 activations (converted per call, as for aten int4pack below)
    methods["int4 g128 (bf16 x)"] = ([lambda x, q=q, s=s: ops.dequant_mm_int4(x.to(torch.bfloat16), q, s, None, 128, None)
                                      for q, s in w4], b4)
    bcb = n * k // 2 + n * 16 * 4
    cbs = [(torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g), torch.randn(n, 16, generator=g))
           for _ in range(count(bcb))]
    methods["codebook 4b"] = ([lambda x, i=i, c=c: ops.lut_mm(x, i, c, None) for i, c in cbs], bcb)
    # int8 and float anchors come from float layers, built one at a time
    b8, b32 = n * k + 4 * n, 4 * n * k
    fp32 = [nn.Linear(k, n, bias=False) for _ in range(count(b32))]
    methods["fp32 nn.Linear"] = (fp32, b32)
    mk = lambda: nn.Linear(k, n, bias=False)  # noqa: E731
    methods["ours W8A8"] = ([QuantLinear.from_float(mk(), "w8a8") for _ in range(count(b8))], b8)
    methods["ours W8A16"] = ([QuantLinear.from_float(mk(), "w8a16") for _ in range(count(b8))], b8)
    methods["FBGEMM int8"] = ([torch.ao.quantization.quantize_dynamic(nn.Sequential(mk()), {nn.Linear}, dtype=torch.qint8)
                               for _ in range(count(b8))], b8)
    try:
        tiny = []
        for _ in range(count(b4)):
            packed = torch._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g), 1)
            sz = (torch.rand(k // 128, n, 2, generator=g) * 0.01).to(torch.bfloat16)
            tiny.append(lambda x, p=packed, sz=sz: torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), p, 128, sz))
        tiny[0](torch.randn(1, k))
        methods["aten int4pack (bf16)"] = (tiny, b4)
    except Exception as exc:  # not in this build of torch
        print(f"aten._weight_int4pack_mm_for_cpu unavailable: {exc}")
    return methods


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,8,32,128")
    ap.add_argument("--shapes", default="4096x4096,11008x4096")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stack-mb", type=float, default=0, help="weights per method stack (0: 2 x last-level cache)")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stack = int(args.stack_mb * 2**20) if args.stack_mb else 2 * llc_bytes()
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, isa={_C.cpu_isa()}, "
          f"stack per method >= {stack / 2**20:.0f} MB, median of {args.reps} interleaved passes, ms per layer")
    slimkernels.set_backend("native")
    for shape in args.shapes.split(","):
        n, k = map(int, shape.split("x"))
        methods = build(n, k, stack)
        names = list(methods)
        print(f"\n### (N, K) = ({n}, {k}); layers per stack: " + ", ".join(f"{nm} {len(methods[nm][0])}" for nm in names))
        print("| M | " + " | ".join(names) + " | int4 vs FBGEMM | int4 vs W8A8 | codebook / int4 |")
        print("|---" * (len(names) + 4) + "|")
        gbs = {}
        for m in map(int, args.ms.split(",")):
            x = torch.randn(m, k)
            times = {nm: [] for nm in names}
            with torch.inference_mode():
                for nm in names:  # warm-up: one pass
                    for f in methods[nm][0]:
                        f(x)
                for _ in range(args.reps if m <= 32 else max(5, args.reps // 3)):
                    for nm in names:
                        fns = methods[nm][0]
                        t0 = time.perf_counter()
                        for f in fns:
                            f(x)
                        times[nm].append((time.perf_counter() - t0) / len(fns) * 1e3)
            med = {nm: statistics.median(t) for nm, t in times.items()}
            if m == 1:
                gbs = {nm: methods[nm][1] / (med[nm] * 1e-3) / 1e9 for nm in names}
            i4 = med["int4 g128"]
            print(f"| {m} | " + " | ".join(f"{med[nm]:.3f}" for nm in names)
                  + f" | {med['FBGEMM int8'] / i4:.2f}x | {med['ours W8A8'] / i4:.2f}x | {med['codebook 4b'] / i4:.2f} |",
                  flush=True)
        if gbs:
            print("\nGB/s of weights at M = 1: " + ", ".join(f"{nm} {v:.1f}" for nm, v in gbs.items()))
        del methods


if __name__ == "__main__":
    main()
