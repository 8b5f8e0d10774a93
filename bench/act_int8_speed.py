"""W4A8 (act="int8") against W4A16 and bf16 / fp32 nn.Linear, per layer of an 8-layer stack larger
than the LLC, every candidate timed in the same rounds (interleaved), median of the rounds.

    python bench/act_int8_speed.py --shape 4096x4096 --ms 1,8,32,128,512 --rounds 7
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python bench/act_int8_speed.py --only bf16,fp32   # torch without AMX

Candidates: bf16 / fp32 nn.Linear; w4a16 and w4a8 g128 on every path this CPU has: "amx" (cpu_amx
auto: AMX tiles where the CPU has them), avx512 (cpu_amx off), avx2 (set_cpu_isa("avx2")).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch
from torch import nn

import slimkernels as sk


def build(shape, layers, seed=0):
    n, k = shape
    torch.manual_seed(seed)
    return [nn.Linear(k, n) for _ in range(layers)]


def quantized(layers, act):
    out = []
    for lin in layers:
        m = nn.Sequential(copy.deepcopy(lin))
        sk.quantize_(m, sk.Int4WeightOnlyConfig(group_size=128, act=act), progress=False)
        out.append(m[0])
    return out


def candidates(layers, only):
    w4a16, w4a8 = quantized(layers, None), quantized(layers, "int8")
    bf16 = [copy.deepcopy(lin).to(torch.bfloat16) for lin in layers]
    isas = sk.info().get("cpu_isas", [])
    found = {
        "fp32": (layers, torch.float32, contextlib.nullcontext),
        "bf16": (bf16, torch.bfloat16, contextlib.nullcontext),
        "w4a16 amx": (w4a16, torch.float32, lambda: sk.use_cpu_amx("auto")),
        "w4a16 avx512": (w4a16, torch.float32, lambda: sk.use_cpu_amx("off")),
        "w4a8 avx512": (w4a8, torch.float32, lambda: sk.use_cpu_amx("off")),
        "w4a16 avx2": (w4a16, torch.float32, lambda: sk.use_cpu_isa("avx2")),
        "w4a8 avx2": (w4a8, torch.float32, lambda: sk.use_cpu_isa("avx2")),
    }
    if isas and "avx512_vnni" not in isas:
        found = {k: v for k, v in found.items() if "avx512" not in k and "amx" not in k}
    return {k: v for k, v in found.items() if not only or k in only}


def time_round(layers, x, ctx, calls):
    with ctx(), torch.inference_mode():
        for lin in layers:  # warm: one pass
            lin(x)
        start = time.perf_counter()
        for i in range(calls):
            layers[i % len(layers)](x)
        return (time.perf_counter() - start) / calls * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="4096x4096")
    p.add_argument("--ms", default="1,8,32,128,512")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--only", default="", help="comma-separated candidate names")
    args = p.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    cands = candidates(build(shape, args.layers), only)
    names = list(cands)
    print(f"{args.shape}, {args.layers} layers, {torch.get_num_threads()} threads, ms per layer (median of "
          f"{args.rounds} interleaved rounds)")
    print("| M | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for m in (int(v) for v in args.ms.split(",")):
        calls = max(args.layers, min(64, int(256 // max(1, m // 8))))
        rounds = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                layers, dtype, ctx = cands[name]
                x = torch.randn(m, shape[1], dtype=dtype)
                rounds[name].append(time_round(layers, x, ctx, calls))
        print(f"| {m} | " + " | ".join(f"{statistics.median(rounds[n]):.3f}" for n in names) + " |", flush=True)


if __name__ == "__main__":
    main()
