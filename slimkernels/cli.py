"""The `slimkernels` command: demo, bench, compress, report, info (each with its own --help), and --version."""
from __future__ import annotations

import argparse
import json
import sys

COMMANDS = {
    "demo": "train a small model, compress it every way, print accuracy / size / speed",
    "bench": "our kernels and layers against anchors on real model shapes, timed in one run",
    "compress": "compress a model by a recipe or to a size/latency budget, save it with its report",
    "report": "per-layer format, bytes, accuracy and speed of a compressed file; --plot the trade-off",
    "info": "what is built and usable on this machine (JSON)",
}


def _version() -> str:
    from . import __version__

    return __version__


def _info(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="slimkernels info",
        description="Print, as JSON, what slimkernels can run here: torch version, whether the CPU extension "
                    "is built and its instruction sets (cpu_isa, cpu_isas), AMX, the CUDA extension and its "
                    "architectures, the CUDA device, threads and Triton. Paste it into bug reports.",
    )
    parser.add_argument("--indent", type=int, default=1, help="JSON indent (default 1; 0 for one line)")
    args = parser.parse_args(argv)
    from . import info

    print(json.dumps(info(), indent=args.indent or None))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="slimkernels",
        description="Make neural networks smaller and faster.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<8} {text}" for name, text in COMMANDS.items())
               + "\n\nEach command has its own --help, e.g. `slimkernels bench --help`.",
    )
    parser.add_argument("--version", action="version", version=f"slimkernels {_version()}")
    parser.add_argument("command", choices=list(COMMANDS), help=" | ".join(COMMANDS))
    # Only the options before the command are ours; everything after it belongs to the command.
    split = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    args = parser.parse_args(argv[:split + 1])
    rest = argv[split + 1:]
    if args.command == "demo":
        from .demo import main as run
    elif args.command == "bench":
        from .bench import main as run
    elif args.command == "compress":
        from .compress_cmd import main as run
    elif args.command == "report":
        from .report_cmd import main as run
    else:
        run = _info
    return run(rest)


if __name__ == "__main__":
    raise SystemExit(main())
