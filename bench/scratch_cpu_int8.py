"""Scratch CPU W8A8 benchmark: ours (quantize_per_token_int8 + int8_gemm) vs FBGEMM dynamic int8 vs fp32.

Run from the repo root:  python bench/scratch_cpu_int8.py [--ms 1,8,32,128] [--shapes 4096x4096,11008x4096]
Per layer time, median over many passes through a stack of 8 different layers (weights beyond L3),
all three measured in the same process, threads = torch.get_num_threads().
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_C():
    try:
        import slimkernels._C as C  # noqa: F401

        return C
    except Exception:
        import glob

        path = glob.glob(os.path.join(ROOT, "slimkernels", "_C*.so"))[0]
        spec = importlib.util.spec_from_file_location("slimkernels._C", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def load_packing():
    path = os.path.join(ROOT, "slimkernels", "quant", "packing.py")
    spec = importlib.util.spec_from_file_location("slim_packing", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timeit(methods, x, reps):
    """methods: lists of layer callables. Each rep times one pass over every method's stack of layers,
    methods interleaved so that load from other processes on a shared machine hits all of them alike.
    Returns the median time per layer call (ms) of each method."""
    for fns in methods:  # warm-up
        for f in fns:
            f(x)
    times = [[] for _ in methods]
    for _ in range(reps):
        for i, fns in enumerate(methods):
            t0 = time.perf_counter()
            for f in fns:
                f(x)
            times[i].append((time.perf_counter() - t0) / len(fns))
    return [statistics.median(t) * 1e3 for t in times]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,8,32,128")
    ap.add_argument("--shapes", default="4096x4096,11008x4096")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--isa", default="")
    ap.add_argument("--skip-ref", action="store_true", help="only time ours")
    args = ap.parse_args()

    C = load_C()
    P = load_packing()
    nt = torch.get_num_threads()
    isa = args.isa or C.cpu_isa()
    print(f"threads={nt} isa={isa} layers={args.layers}")
    print(f"{'shape (NxK)':>12} {'M':>4} {'ours ms':>9} {'fbgemm ms':>10} {'fp32 ms':>9} {'ours/fbgemm':>11} {'ours/fp32':>9}")
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        n, k = map(int, shape.split("x"))
        lins = [nn.Linear(k, n, bias=False) for _ in range(args.layers)]
        qlins = [] if args.skip_ref else [
            torch.ao.quantization.quantize_dynamic(nn.Sequential(l), {nn.Linear}, dtype=torch.qint8) for l in lins
        ]
        # ours: per-channel symmetric int8 weights, packed
        packs = []
        for l in lins:
            w = l.weight.detach()
            q = torch.empty(n, k, dtype=torch.int8)
            s = torch.empty(n, dtype=torch.float32)
            C.quantize_per_token_int8(w.data_ptr(), k, n, k, "float32", q.data_ptr(), k, s.data_ptr(), nt)
            packs.append((P.pack_int8_cpu(q), s))
        for m in map(int, args.ms.split(",")):
            x = torch.randn(m, k)
            xq = torch.empty(m, k, dtype=torch.int8)
            xs = torch.empty(m, dtype=torch.float32)
            out = torch.empty(m, n, dtype=torch.float32)

            def make_ours(pk, ws):
                def f(x):
                    C.quantize_per_token_int8(x.data_ptr(), k, m, k, "float32", xq.data_ptr(), k, xs.data_ptr(), nt, isa)
                    C.int8_gemm(xq.data_ptr(), k, pk.data_ptr(), m, n, k, out.data_ptr(), n, "float32",
                                xs.data_ptr(), ws.data_ptr(), 0, nt, isa)
                    return out

                return f

            ours = [make_ours(pk, ws) for pk, ws in packs]
            ops = 2.0 * m * n * k
            reps = max(7, min(100, int(1e11 / (ops * args.layers))))
            with torch.inference_mode():
                if args.skip_ref:
                    (t_ours,) = timeit([ours], x, reps)
                    print(f"{shape:>12} {m:>4} {t_ours:9.3f}   ({ops / t_ours / 1e6:.0f} GOP/s)")
                    continue
                t_ours, t_fb, t_fp = timeit([ours, qlins, lins], x, reps)
            print(f"{shape:>12} {m:>4} {t_ours:9.3f} {t_fb:10.3f} {t_fp:9.3f} {t_fb / t_ours:10.2f}x {t_fp / t_ours:8.2f}x"
                  f"   ({ops / t_ours / 1e6:.0f} GOP/s ours, {ops / t_fb / 1e6:.0f} fbgemm)")


if __name__ == "__main__":
    main()
