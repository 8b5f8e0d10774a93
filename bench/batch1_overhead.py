"""Batch-1 per-call cost of quantized linear layers: ours (W8A8 / W8A16 with the eager fast path, and
W8A8 through the op as before it) against FBGEMM's dynamic int8 Linear and float nn.Linear.

    python bench/batch1_overhead.py [--threads 1] [--rounds 15] [--calls 200]

Cases: one 768x768 layer and one 128x128 layer (the kernel takes almost nothing there, so its
time is about the per-call overhead; 128: the int4 group) at M = 1; a 12-layer 768/3072 stack (BERT-base MLP shapes, 768->3072->768 x 6)
at M = 1, end to end. Timing: the candidates run interleaved (every round times each of them once
for `calls` calls, in turn), the figure is the median per-call time over the rounds, so a machine
shared with other work slows all candidates alike; read the ratios, not the absolute times. The minimum
over the rounds is printed too: on a heavily shared machine it is the closer estimate of the cost."""
from __future__ import annotations

import argparse
import warnings
import copy
import statistics
import time

import torch
from torch import nn

import slimkernels
from slimkernels import _native
from slimkernels.nn import QuantLinear


def fbgemm(model: nn.Module) -> nn.Module:
    """FBGEMM's dynamic int8 layers, built as ../shared/anchors/peer_cpu_bench.py builds them."""
    seq = model if isinstance(model, nn.Sequential) else nn.Sequential(model)
    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(seq), {nn.Linear}, dtype=torch.qint8)
    return q if isinstance(model, nn.Sequential) else q[0]


def ours(model: nn.Module, mode: str, fast: bool = True) -> nn.Module:
    config = {"w8a8": slimkernels.Int8DynamicConfig(), "w8a16": slimkernels.Int8WeightOnlyConfig(),
              "w4a16": slimkernels.Int4WeightOnlyConfig(group_size=128)}[mode]
    if isinstance(model, nn.Linear):
        q = QuantLinear.from_float(model, config)
    else:
        q = copy.deepcopy(model)
        slimkernels.quantize_(q, config, progress=False)
    if not fast:  # the op path, as every call went before the fast path
        for layer in q.modules():
            if isinstance(layer, QuantLinear):
                layer.__dict__["_fast"] = False
    return q


@torch.inference_mode()
def interleaved(candidates: dict, x: torch.Tensor, rounds: int, calls: int) -> dict:
    for fn in candidates.values():
        for _ in range(20):
            fn(x)
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn(x)
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def case(title: str, float_model: nn.Module, k: int, rounds: int, calls: int) -> list[str]:
    candidates = {
        "float32 nn.Linear": float_model,
        "FBGEMM dynamic int8": fbgemm(float_model),
        "ours W8A8 (fast path)": ours(float_model, "w8a8"),
        "ours W8A8 (op path)": ours(float_model, "w8a8", fast=False),
        "ours W8A16 (fast path)": ours(float_model, "w8a16"),
        "ours int4 g128 (fast path)": ours(float_model, "w4a16"),
    }
    us = interleaved(candidates, torch.randn(1, k), rounds, calls)
    (fb, fb_min), (fp, fp_min) = us["FBGEMM dynamic int8"], us["float32 nn.Linear"]
    lines = [f"\n{title}\n", "| candidate | us per call: median (min) | vs FBGEMM: median (min) | vs float32: median (min) |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {t:.2f} ({t_min:.2f}) | {fb / t:.2f}x ({fb_min / t_min:.2f}x) | {fp / t:.2f}x ({fp_min / t_min:.2f}x) |"
              for name, (t, t_min) in us.items()]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # torch.ao deprecation notices
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), slimkernels ISA {_native.cpu_isa()}, "
          f"rounds {args.rounds} x {args.calls} calls, median per call")
    lines = case("One 768x768 layer, M = 1", nn.Linear(768, 768), 768, args.rounds, args.calls)
    lines += case("One 128x128 layer, M = 1 (about the per-call overhead)", nn.Linear(128, 128), 128, args.rounds,
                  args.calls)
    stack = nn.Sequential(*[nn.Linear(768, 3072) if i % 2 == 0 else nn.Linear(3072, 768) for i in range(12)])
    lines += case("12-layer stack 768->3072->768 x 6, M = 1, end to end", stack, 768, args.rounds,
                  max(1, args.calls // 10))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
