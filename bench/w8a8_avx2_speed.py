"""W8A8 on the AVX2 path against FBGEMM's own AVX2 kernels: slimkernels' exact (8-bit activation)
and 7-bit activation (Int8DynamicConfig(act_bits=7)) W8A8 under set_cpu_isa("avx2"), FBGEMM's dynamic
int8 linear (torch.ao quantize_dynamic) forced to AVX2, and FBGEMM on its default path for reference.

    python bench/w8a8_avx2_speed.py [--shape 4096x4096] [--ms 1,8,32,128] [--layers 8] [--reps 5] [--threads N]

FBGEMM_ENABLE_INSTRUCTIONS=AVX2 is set before torch is imported (FBGEMM reads it once); the default
FBGEMM row therefore runs in a subprocess without it. Per-layer time = one pass through a stack of
`--layers` layers of the same shape with different weights (beyond the last-level cache), divided by
the layer count; every repetition times each candidate once, in turn (interleaved), and the table
gives medians (and, with --stat min, the fastest repetition: on a shared machine the least disturbed),
on torch's threads (--threads sets them). Accuracy: each candidate's layer-0 relative error against float64.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if __name__ == "__main__" and "--fbgemm-default" not in sys.argv:
    os.environ["FBGEMM_ENABLE_INSTRUCTIONS"] = "AVX2"  # read once, when FBGEMM first runs

import torch  # noqa: E402
from torch import nn  # noqa: E402

import slimkernels  # noqa: E402
from slimkernels.nn import QuantLinear  # noqa: E402


def fbgemm(linear: nn.Linear) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)[0]


def candidates(isa: str) -> dict:
    """name -> (builder, the ISA the call runs under or None)."""
    return {
        "fbgemm_avx2": (fbgemm, None),
        "sk_w8a8_avx2": (lambda lin: QuantLinear.from_float(lin, slimkernels.Int8DynamicConfig()), isa),
        "sk_w8a8_act7_avx2": (lambda lin: QuantLinear.from_float(lin, slimkernels.Int8DynamicConfig(act_bits=7)), isa),
    }


def measure(shape, ms, layers, reps, names_isa: dict) -> dict:
    n, k = shape
    torch.manual_seed(0)
    floats = [nn.Linear(k, n) for _ in range(layers)]
    stacks = {name: [build(lin) for lin in floats] for name, (build, _) in names_isa.items()}
    times = {m: {name: [] for name in stacks} for m in ms}
    errors = {m: {} for m in ms}
    with torch.inference_mode():
        for m in ms:
            x = torch.randn(m, k)
            exact = x.double() @ floats[0].weight.double().T + floats[0].bias.double()
            for name, stack in stacks.items():
                with slimkernels.use_cpu_isa(names_isa[name][1]):
                    y = stack[0](x)
                errors[m][name] = float((y.double() - exact).norm() / exact.norm())
            for rep in range(reps):
                order = list(stacks)
                order = order[rep % len(order):] + order[:rep % len(order)]
                for name in order:
                    with slimkernels.use_cpu_isa(names_isa[name][1]):
                        start = time.perf_counter()
                        for layer in stacks[name]:
                            layer(x)
                        times[m][name].append((time.perf_counter() - start) * 1e3 / layers)
    return {m: {name: {"ms": statistics.median(t), "min": min(t), "max": max(t), "rel_err": errors[m][name]}
                for name, t in times[m].items()} for m in ms}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x4096", help="NxK")
    parser.add_argument("--ms", default="1,8,32,128")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--stat", choices=("median", "min"), default="median")
    parser.add_argument("--fbgemm-default", action="store_true", help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split("x"))
    ms = [int(v) for v in args.ms.split(",")]
    if args.fbgemm_default:
        print(json.dumps(measure(shape, ms, args.layers, args.reps, {"fbgemm_default": (fbgemm, None)})))
        return 0
    if "avx2" not in _supported():
        raise SystemExit("this CPU has no AVX2")
    results = measure(shape, ms, args.layers, args.reps, candidates("avx2"))
    sub = subprocess.run([sys.executable, os.path.abspath(__file__), "--fbgemm-default", "--shape", args.shape,
                          "--ms", args.ms, "--layers", str(args.layers), "--reps", str(args.reps),
                          "--threads", str(torch.get_num_threads())],
                         capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                               if k != "FBGEMM_ENABLE_INSTRUCTIONS"})
    if sub.returncode == 0:
        for m, row in json.loads(sub.stdout).items():
            results[int(m)].update(row)
    else:
        print(sub.stderr[-2000:], file=sys.stderr)
    names = list(next(iter(results.values())))
    print(f"shape {args.shape}, {args.layers}-layer stacks, {args.reps} reps interleaved, torch threads "
          f"{torch.get_num_threads()}; ms per layer ({args.stat}), [x FBGEMM-AVX2 = its time / this one], rel. error")
    print("| M | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for m in ms:
        key = "ms" if args.stat == "median" else "min"
        fb = results[m]["fbgemm_avx2"][key]
        cells = [f"{r[key]:.3f} [{fb / r[key]:.2f}x] {r['rel_err']:.1e}" for r in results[m].values()]
        print(f"| {m} | " + " | ".join(cells) + " |")
    return 0


def _supported() -> list:
    from slimkernels import _native

    return list(_native._C.supported_isas()) if _native._C is not None else []


if __name__ == "__main__":
    sys.exit(main())
