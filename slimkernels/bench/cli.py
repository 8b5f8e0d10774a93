"""`slimkernels bench` / `python -m slimkernels.bench`: every selected suite on every shape and M, one
table per (suite, shape), optionally every row as JSON."""
from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Optional

import torch

from . import registry
from .machine import default_device, environment, measure_bandwidth
from .runner import run_case
from .shapes import CPU_M_QUICK, ENV_M, ENV_SHAPES, GPU_M_QUICK, default_shapes, m_list, shape_list
from .stacks import get_stack, release_stack
from .table import format_table, write_json


def _suite_help() -> str:
    lines = []
    for s in registry.suites():
        alias = f" (alias {', '.join(s.aliases)})" if s.aliases else ""
        head = f"{s.name}{alias}{'' if s.default else ' [not in default]'}: "
        lines += textwrap.wrap(head + s.description, 100, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slimkernels bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time slimkernels' kernels and layers against anchors (fp32 MKL / FBGEMM int8 / torch's "
                    "int4 kernel on CPU; bf16 cuBLAS / torch._int_mm on GPU) in one run, on weight stacks larger "
                    "than the cache, and print per-layer times, speed-ups (anchor time / ours) and the memory "
                    "floor. Method, shapes and recording results: bench/README.md in the source repository.",
        epilog="suites (--suite; `--list` prints them too):\n" + _suite_help(),
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--shapes", default=None,
                   help="small | full | NxK list like 4096x4096,768x3072 "
                        f"(default: ${ENV_SHAPES}, else small on cpu and full on cuda)")
    p.add_argument("--m", default=None, help=f"comma-separated M (tokens), overriding the device's list (or ${ENV_M})")
    p.add_argument("--suite", default="default",
                   help="default (the suites not marked [not in default]) | all | a comma-separated list of "
                        f"suites: {', '.join(registry.names())}")
    p.add_argument("--list", action="store_true", help="print the suites and exit")
    p.add_argument("--threads", type=int, default=None, help="torch (and our CPU kernels') threads")
    p.add_argument("--json", default=None, metavar="PATH", help="write every row plus the environment here")
    p.add_argument("--quick", action="store_true",
                   help=f"fewer M (cpu {','.join(map(str, CPU_M_QUICK))}; cuda {','.join(map(str, GPU_M_QUICK))}) "
                        "and shorter timings; the stacks still exceed the cache")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls per CPU entry and case (default 1, quick 0.25)")
    p.add_argument("--repeats", type=int, default=1, metavar="R",
                   help="time the entries of each case in turn, R rounds of budget/R seconds each, and report "
                        "the median round: noise from other jobs hits every entry alike (default 1)")
    p.add_argument("--layers", type=int, default=None,
                   help="layers per weight stack (default: enough for 4x the CPU's last-level cache, 3x the GPU's L2)")
    p.add_argument("--isa", default=None, metavar="LIST",
                   help="CPU ISAs our native entries run on, e.g. avx2 or avx512_vnni,avx2,scalar (default: every "
                        "one this CPU has but scalar; rows other than the best are tagged [isa])")
    p.add_argument("--amx", default=None, metavar="LIST",
                   help="AMX modes of our native low-bit entries: auto | on | off, or a list like off,on for a row "
                        "each (tagged [amx-off], ...; default: the process's mode, SLIMKERNELS_CPU_AMX or auto)")
    p.add_argument("--act-dtype", default=None, metavar="LIST",
                   help="activation dtypes of our entries, e.g. fp32,bf16 (default: fp32 on cpu, bf16 on cuda, the "
                        "anchors' dtype; other dtypes are extra rows tagged [bf16], ...)")
    p.add_argument("--include-reference", action="store_true",
                   help="also time the pure-torch reference above the size where it is skipped (slow)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _fail(message: str) -> int:
    print(f"slimkernels bench: {message}", file=sys.stderr)
    return 2


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    command = "slimkernels bench " + " ".join(argv) if argv is not None else " ".join(["python -m slimkernels.bench"] + sys.argv[1:])
    if args.list:
        print(_suite_help())
        return 0
    device = args.device or default_device()
    if device == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda but torch sees no CUDA device")
    for flag, value in (("--threads", args.threads), ("--repeats", args.repeats), ("--layers", args.layers)):
        if value is not None and value < 1:
            return _fail(f"{flag} must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        shapes = shape_list(args.shapes or default_shapes(device))
        ms = m_list(device, args.quick, args.m)
        suites = registry.select(args.suite)
        options = registry.parse_options(args.isa, args.amx, args.act_dtype, args.include_reference)
    except ValueError as exc:
        return _fail(str(exc))
    budget = args.budget if args.budget is not None else (0.25 if args.quick else 1.0)

    from tqdm import tqdm

    env = environment(device)
    amx = f", amx {env['cpu_amx']}" if device == "cpu" and env["cpu_amx_bf16"] else ""
    print(f"slimkernels bench: {env['device_name']} ({device}), {env['threads']} threads, cpu isa {env['cpu_isa']}{amx}, "
          f"native cpu={'yes' if env['native_cpu'] else 'no'} cuda={'yes' if env['native_cuda'] else 'no'}, "
          f"torch {env['torch']}")
    if device == "cpu" and not env["native_cpu"]:
        print("note: slimkernels._C is not built: 'ours' on CPU is the pure-torch reference, timed only on small "
              "problems; these numbers say nothing about our kernels.")
    load = env["loadavg_1min"]
    if device == "cpu" and load is not None and load > max(0.5, 0.25 * (env["cpu_count"] or 1)):
        print(f"warning: load average {load:.1f} before starting ({env['cpu_count']} cpus): other jobs share the "
              "cores; OpenMP anchors (MKL, FBGEMM) then stall in multiples of the scheduler tick. Record numbers "
              "on an idle machine, or interleave the entries (--repeats).")
    bandwidth = measure_bandwidth(device, args.quick)
    names = [s.name for s in suites]
    print(f"copy bandwidth (read + write): {bandwidth / 1e9:.1f} GB/s; shapes {shapes}; M {ms}; suites {names}",
          flush=True)

    # (N, K) -> the suites that run on it (a suite without weights runs once per K)
    seen: set = set()
    plan = []
    for n, k in shapes:
        todo = [s for s in suites if (s.name, s.shape_key(n, k)) not in seen]
        seen.update((s.name, s.shape_key(n, k)) for s in todo)
        plan.append((n, k, todo))
    rows: list[dict] = []
    bar = tqdm(total=sum(len(todo) for _, _, todo in plan) * len(ms), unit="case", disable=args.no_progress,
               file=sys.stderr)
    try:
        for n, k, todo in plan:
            if not todo:
                continue
            stack = get_stack(n, k, device, args.layers)
            shape_rows: list[dict] = []
            for suite in todo:
                for m in ms:
                    bar.set_description(f"{suite.name} {n}x{k} M={m}")
                    shape_rows += run_case(suite, stack, m, bandwidth, budget, args.quick, options, args.repeats)
                    bar.update(1)
            rows += shape_rows
            tqdm.write(format_table(shape_rows, {device: bandwidth}), file=sys.stdout)
            release_stack()
    finally:
        bar.close()
        release_stack()

    if args.json:
        write_json(args.json, env, command, rows, bandwidth_Bps=bandwidth, shapes=shapes, m=ms, suites=names,
                   budget_s=budget, repeats=args.repeats)
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0
