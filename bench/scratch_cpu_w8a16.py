"""Scratch CPU W8A16 benchmark: our native dequant_mm_int8 vs fp32 nn.Linear (MKL), same process.

Run from the repo root:  PYTHONPATH=. python bench/scratch_cpu_w8a16.py [--ms 1,8,32,128]
    [--shapes 4096x4096,11008x4096] [--dtype float32] [--isa ""] [--reps 30]
Per layer time, median over many passes through a stack of 8 different layers (weights beyond the
32 MB L3), passes of ours and of fp32 interleaved, threads = torch.get_num_threads().
"ours" calls the public op slimkernels.ops.dequant_mm_int8 under use_backend("native");
"raw" calls the binding directly (no torch.library dispatch).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

import slimkernels
from slimkernels import _C, ops

KIND = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
LAYERS = 8


def median_ms(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3 / LAYERS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,8,32,128")
    ap.add_argument("--shapes", default="4096x4096,11008x4096")
    ap.add_argument("--dtype", default="float32", choices=list(KIND.values()))
    ap.add_argument("--isa", default="")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads first (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dt = getattr(torch, args.dtype)
    nt = torch.get_num_threads()
    print(f"threads={nt} isa={args.isa or _C.cpu_isa()} x dtype={args.dtype} torch={torch.__version__}, "
          f"{LAYERS} layers per pass, per-layer median of {args.reps} passes")
    print("| (N, K) | M | ours (op) ms | raw binding ms | fp32 nn.Linear ms | fp32 / ours | weight bytes / raw time, GB/s |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        n, k = map(int, shape.split("x"))
        lins = [nn.Linear(k, n, bias=True) for _ in range(LAYERS)]
        qw = [torch.randint(-127, 128, (n, k), dtype=torch.int8) for _ in range(LAYERS)]
        sc = [torch.rand(n) * 0.01 + 1e-3 for _ in range(LAYERS)]
        bs = [l.bias.detach().clone() for l in lins]
        for m in map(int, args.ms.split(",")):
            x32 = torch.randn(m, k)
            x = x32.to(dt)
            y = torch.empty(m, n, dtype=dt)

            def ours():
                with slimkernels.use_backend("native"):
                    for i in range(LAYERS):
                        ops.dequant_mm_int8(x, qw[i], sc[i], bs[i])

            def raw():
                for i in range(LAYERS):
                    _C.dequant_mm_int8(x.data_ptr(), k, KIND[dt], qw[i].data_ptr(), k, sc[i].data_ptr(),
                                       bs[i].data_ptr(), y.data_ptr(), n, m, n, k, nt, args.isa)

            @torch.no_grad()
            def fp32():
                for i in range(LAYERS):
                    lins[i](x32)

            for f in (ours, raw, fp32):  # warm-up
                f(); f()
            to, tr, tf = [], [], []
            reps = max(5, args.reps if m <= 32 else args.reps // 3)
            for _ in range(reps):  # interleave so noise hits all three alike
                to.append(median_ms(ours, 1)); tr.append(median_ms(raw, 1)); tf.append(median_ms(fp32, 1))
            o, r, f = statistics.median(to), statistics.median(tr), statistics.median(tf)
            gbs = n * k / (r * 1e-3) / 1e9
            print(f"| {n}x{k} | {m} | {o:.3f} | {r:.3f} | {f:.3f} | {f / o:.2f}x | {gbs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
