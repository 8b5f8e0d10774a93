"""W8A8 (Int8DynamicConfig) on AMX-INT8 tiles against the AVX-512 VNNI kernel, FBGEMM's dynamic int8
linear and torch's bf16 nn.Linear (oneDNN, AMX-BF16 where present), per layer.

Stacks of `--layers` NxK layers with different weights (each weight read once per pass), every layer
fed the same x [M, K]; the entries are timed interleaved (each round times every entry once, in an
order rotated by one per round), `--reps` rounds, the median per layer. Entries: our W8A8 module
under cpu_amx 'off' (VNNI) and 'on' (AMX-INT8 at every M), FBGEMM (torch.ao quantize_dynamic), bf16
Linear (x in bfloat16). Ours are checked identical under both switches before timing.

    PYTHONPATH=. python bench/w8a8_amx.py --ms 1,8,16,32,64,128,512 --reps 5 --threads 2 --clock wall

--clock cpu times the process's CPU time (a descheduled process loses none: use it with --threads 1
on a shared machine); --clock wall for an idle machine and more threads.
"""
import argparse
import copy
import statistics
import time

import torch
from torch import nn

import slimkernels


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--ms", default="1,8,16,32,64,128,512")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=("cpu", "wall"), default="wall")
    p.add_argument("--min-s", type=float, default=0.05, help="each timed sample lasts at least this long")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    gen = torch.Generator().manual_seed(0)
    floats = []
    for _ in range(a.layers):
        lin = nn.Linear(a.k, a.n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(a.n, a.k, generator=gen) * a.k ** -0.5)
        floats.append(lin.eval().requires_grad_(False))

    def ours(lin):
        s = nn.Sequential(copy.deepcopy(lin))
        slimkernels.quantize_(s, slimkernels.Int8DynamicConfig(), progress=False)
        return s[0]

    w8a8 = [ours(lin) for lin in floats]
    fbgemm = [torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(lin)), {nn.Linear},
                                                     dtype=torch.qint8)[0] for lin in floats]
    bf16 = [copy.deepcopy(lin).to(torch.bfloat16) for lin in floats]
    entries = {  # name: (layers, x dtype, cpu_amx switch or None)
        "W8A8 VNNI": (w8a8, torch.float32, "off"),
        "W8A8 AMX": (w8a8, torch.float32, "on"),
        "FBGEMM dyn int8": (fbgemm, torch.float32, None),
        "bf16 Linear": (bf16, torch.bfloat16, None),
    }
    names = list(entries)

    def one_pass(name, x):
        layers, _, amx = entries[name]
        with slimkernels.use_cpu_amx(amx or "auto"):
            t0 = clock()
            for layer in layers:
                layer(x)
            return clock() - t0

    print(f"N={a.n} K={a.k}, {a.layers} layers, threads {a.threads}, clock {a.clock}, "
          f"ms per layer (median of {a.reps})")
    print("| M | " + " | ".join(names) + " | AMX vs VNNI | AMX vs FBGEMM | AMX vs bf16 |")
    print("|---" * (len(names) + 4) + "|")
    with torch.inference_mode():
        for m in (int(v) for v in a.ms.split(",")):
            x32 = torch.randn(m, a.k, generator=gen)
            with slimkernels.use_cpu_amx("on"):
                y_on = w8a8[0](x32)
            with slimkernels.use_cpu_amx("off"):
                y_off = w8a8[0](x32)
            assert torch.equal(y_on, y_off), "AMX and VNNI results differ"
            xs = {torch.float32: x32, torch.bfloat16: x32.bfloat16()}
            passes = {}
            for name in names:
                x = xs[entries[name][1]]
                one_pass(name, x)  # warm up
                passes[name] = max(1, int(a.min_s / max(one_pass(name, x), 1e-6)))
            times = {name: [] for name in names}
            for r in range(a.reps):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    x = xs[entries[name][1]]
                    t = sum(one_pass(name, x) for _ in range(passes[name]))
                    times[name].append(t * 1e3 / (passes[name] * a.layers))
            med = {name: statistics.median(v) for name, v in times.items()}
            ratios = [med["W8A8 VNNI"] / med["W8A8 AMX"], med["FBGEMM dyn int8"] / med["W8A8 AMX"],
                      med["bf16 Linear"] / med["W8A8 AMX"]]
            print(f"| {m} | " + " | ".join(f"{med[n]:.3f}" for n in names) + " | "
                  + " | ".join(f"{r:.2f}x" for r in ratios) + " |", flush=True)


if __name__ == "__main__":
    main()
