"""Weight-only CPU kernels with and without bf16 dot products, against bf16 and fp32 nn.Linear.

Stacks of `--layers` 4096x4096 layers (x goes through every layer of the stack, so each weight is read
once per pass); all entries are timed interleaved, `--reps` rounds, per layer, the median. Entries:
int4 g128, 4-bit codebook (per row) and int8 (W8A16), each on the float32 kernels (cpu_bf16 'off',
AMX off), the bf16 dot-product kernels (cpu_bf16 'on') and, where the CPU has AMX, the AMX tiles
(int4 and codebook; cpu_amx 'on'); torch's bf16 and fp32 nn.Linear. x is float32 for ours and fp32
Linear, bfloat16 for bf16 Linear. `--torch-only` times only the nn.Linear entries (to run in a second
process under ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, so torch's bf16 GEMM does not use AMX).

    PYTHONPATH=. python bench/weight_only_bf16.py --ms 1,8,32,128,512 --reps 5

--clock cpu (the default) times the process's CPU time, not the wall clock: on a shared machine
a descheduled process then loses no time (use it with --threads 1, where a thread waiting on
another does not count either); --clock wall for an idle machine and more threads.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import slimkernels
from slimkernels import ops
from slimkernels._native import _C
from slimkernels._switch import use_cpu_bf16
from slimkernels.testing import make_codebook, make_int4, make_int8_weight


def per_layer_ms(run_layer, layers, x, clock):
    t0 = clock()
    for i in range(layers):
        run_layer(i, x)
    return (clock() - t0) * 1e3 / layers


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--ms", default="1,8,32,128,512")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--torch-only", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    n, k, L = a.n, a.k, a.layers
    torch.manual_seed(0)
    entries = {}
    lin32 = [torch.randn(n, k) * 0.02 for _ in range(L)]
    lin16 = [w.bfloat16() for w in lin32]
    entries["fp32 Linear"] = (lambda i, x: F.linear(x, lin32[i]), torch.float32, {})
    entries["bf16 Linear"] = (lambda i, x: F.linear(x, lin16[i]), torch.bfloat16, {})
    if not a.torch_only:
        int4 = [make_int4(n, k, 128, seed=i) for i in range(L)]
        cb = [make_codebook(n, k, 4, seed=i) for i in range(L)]
        i8 = [make_int8_weight(n, k, seed=i) for i in range(L)]
        amx = bool(_C.amx_bf16_supported())
        kernels = {"int4 g128": lambda i, x: ops.dequant_mm_int4(x, *int4[i], 128),
                   "codebook 4b": lambda i, x: ops.lut_mm(x, *cb[i]),
                   "int8": lambda i, x: ops.dequant_mm_int8(x, *i8[i])}
        for name, fn in kernels.items():
            entries[f"{name} fp32"] = (fn, torch.float32, dict(bf16="off", amx="off"))
            entries[f"{name} bf16"] = (fn, torch.float32, dict(bf16="on", amx="off"))
            if amx and name != "int8":
                entries[f"{name} AMX"] = (fn, torch.float32, dict(bf16="off", amx="on"))
    print(f"# {n}x{k}, {L} layers, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"amx {bool(_C.amx_bf16_supported())}, clock {a.clock}; ms per layer, median of {a.reps}")
    names = list(entries)
    print("| M | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for m in [int(s) for s in a.ms.split(",")]:
        times = {name: [] for name in names}
        xs = {dt: torch.randn(m, k).to(dt) for dt in (torch.float32, torch.bfloat16)}
        for rep in range(a.reps + 1):  # the first round warms up
            for name in names:
                fn, dt, sw = entries[name]
                with slimkernels.use_cpu_amx(sw.get("amx", "auto")), use_cpu_bf16(sw.get("bf16", "auto")):
                    t = per_layer_ms(fn, L, xs[dt], clock)
                if rep:
                    times[name].append(t)
        print(f"| {m} | " + " | ".join(f"{statistics.median(times[x]):.3f}" for x in names) + " |", flush=True)


if __name__ == "__main__":
    main()
