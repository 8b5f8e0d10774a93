"""The `slimkernels` command: demo, bench, info."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="slimkernels",
        description="Make neural networks smaller and faster.",
        epilog="Each command has its own --help, e.g. `slimkernels bench --help`.",
    )
    parser.add_argument("command", choices=["demo", "bench", "info"], help=(
        "demo: train a small model, compress it every way, print accuracy/size/speed; "
        "bench: our kernels against the anchors on real model shapes; "
        "info: what is built and usable on this machine"))
    args, rest = parser.parse_known_args(argv[:1])
    rest = argv[1:]
    if args.command == "demo":
        from .demo import main as run
    elif args.command == "bench":
        from .bench import main as run
    else:
        from . import info

        print(json.dumps(info(), indent=1))
        return 0
    return run(rest)


if __name__ == "__main__":
    raise SystemExit(main())
