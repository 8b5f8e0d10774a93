"""`slimkernels bench`: our kernels and layers against anchors timed in the same run, as one table.

    python -m slimkernels.bench                       # cuda if available, else cpu
    python -m slimkernels.bench --shapes small --quick
    python -m slimkernels.bench --device cpu --m 1,8,32 --threads 2 --json run.json
    python -m slimkernels.bench --list                # the suites

The harness, one module per job:

  shapes.py    the (N, K) shape lists of real models and the M lists
  machine.py   CPU/GPU names, cache sizes, the copy-bandwidth probe, the environment record
  stacks.py    weight stacks beyond the cache (Stack: float weights and the forms derived from them)
  timing.py    CPU medians of single calls, GPU do_bench and CUDA-graph replays
  registry.py  the suite registry: Suite, Case, EntrySpec, Work, @register, Options
  suites/      one file per op family, each registering its suites
  runner.py    one case of one suite -> rows (timed, skipped, error)
  table.py     rows -> the printed table, the JSON record
  cli.py       the command line (this package's __main__, and `slimkernels bench`)

The pytest-benchmark files in bench/ (repository root) run the same suites from the same registry.
Method (bench/README.md): every case times a stack of layers with distinct weights whose int8 copies
together exceed the last-level cache (CPU) or L2 (GPU) several times over, cycling through the stack
so that every call reads its weight from memory; times are per layer. Speed-up = anchor time / our
time, from the same run.
"""
from .cli import build_parser, main
from .machine import cpu_name, default_device, device_name, environment, gpu_l2_bytes, llc_bytes, measure_bandwidth
from .registry import (
    REFERENCE_MAX_MACS, Case, Entry, EntrySpec, Inputs, Options, Suite, Work, get as get_suite, register,
    select as select_suites, suites,
)
from .runner import run_case
from .shapes import (
    BERT_NK, CPU_M, CPU_M_QUICK, FULL_NK, GPU_M, GPU_M_QUICK, LLAMA70_NK, LLAMA_NK, SHAPE_SETS, SMALL_NK,
    default_shapes, m_list, shape_list,
)
from .stacks import Stack, float_dtype, get_stack, release_stack, stack_layers
from .table import fmt_time, format_table
from .timing import GPU_GRAPH_MAX_M, cuda_graph, cycle, do_bench, graph_reps, plan_rounds, time_cpu, warm_up

__all__ = [
    "main", "build_parser", "register", "suites", "get_suite", "select_suites", "Suite", "Case", "EntrySpec",
    "Entry", "Inputs", "Work", "Options", "run_case", "Stack", "get_stack", "release_stack", "format_table",
    "environment", "measure_bandwidth", "shape_list", "m_list",
]
