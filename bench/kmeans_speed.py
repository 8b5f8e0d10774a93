"""k-means codebook speed and error: slimkernels.quant.codebook.kmeans_codebook against an older version
of the same file (default: the one of git revision 696521e, before the prefix-sum inits; --old torch: this
version's torch path, KMEANS_NATIVE off), in one run.

    PYTHONPATH=. python bench/kmeans_speed.py [--shapes 4096x4096,...] [--bits 3,4] [--old REV|torch] [--repeats 1]

Per case: wall seconds and CPU seconds of the process (time.process_time: on a machine shared with
other jobs the CPU time is the steadier figure; each the best of --repeats), the squared error of the reconstructed weight (relative to
sum w^2), the same weighted by a random positive per-input importance, and the layer output error
|x W^T - x Wq^T|^2 / |x W^T|^2 on 256 correlated random inputs (x = z L, L a random [K, K] mixing)."""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time

import torch

from slimkernels.quant import codebook as new_codebook


class TorchPath:
    """This version of the module with the native fit switched off."""

    @staticmethod
    def kmeans_codebook(*args, **kwargs):
        before, new_codebook.KMEANS_NATIVE = new_codebook.KMEANS_NATIVE, False
        try:
            return new_codebook.kmeans_codebook(*args, **kwargs)
        finally:
            new_codebook.KMEANS_NATIVE = before


def load_old(rev: str):
    if rev == "torch":
        return TorchPath
    source = subprocess.run(["git", "show", f"{rev}:slimkernels/quant/codebook.py"], capture_output=True, text=True,
                            check=True).stdout
    source = source.replace("from .int4", "from slimkernels.quant.int4").replace("from .lowbit", "from slimkernels.quant.lowbit")
    path = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    path.write(source)
    path.close()
    spec = importlib.util.spec_from_file_location("old_codebook", path.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def weight(kind: str, n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(n, k, generator=gen) * 0.02
    if kind == "heavy":  # Student-t with 3 degrees of freedom: outliers tens of sigmas out
        z = torch.randn(n, k, generator=gen)
        chi = (torch.randn(n, k, 3, generator=gen) ** 2).sum(2)
        return z / (chi / 3).sqrt() * 0.02
    if kind == "pruned":  # 90% exact zeros
        w = torch.randn(n, k, generator=gen) * 0.02
        return w * (torch.rand(n, k, generator=gen) > 0.9)
    raise ValueError(kind)


def errors(w, codes, codebook, importance, x):
    deq = torch.gather(codebook.expand(w.shape[0], -1), 1, codes.long())
    diff = (deq - w).double()
    plain = float((diff ** 2).sum() / (w.double() ** 2).sum())
    weighted = float(((diff ** 2) * importance).sum() / ((w.double() ** 2) * importance).sum())
    y = x @ w.T
    out = float(((x @ deq.T - y).double() ** 2).sum() / (y.double() ** 2).sum())
    return plain, weighted, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="4096x4096")
    parser.add_argument("--kinds", default="normal,heavy")
    parser.add_argument("--pers", default="row,layer")
    parser.add_argument("--bits", default="4", help="comma-separated code widths")
    parser.add_argument("--keep-zero", action="store_true")
    parser.add_argument("--old", default="696521e")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-old", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    old = None if args.skip_old else load_old(args.old)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, keep_zero={args.keep_zero}")
    print("| shape | weights | per | bits | version | seconds | CPU seconds | rel. sq. error | weighted | output error |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|")
    for shape in args.shapes.split(","):
        n, k = map(int, shape.split("x"))
        for kind in args.kinds.split(","):
            gen = torch.Generator().manual_seed(0)
            w = weight(kind, n, k, gen)
            importance = torch.rand(1, k, generator=gen).double() + 0.1
            mix = torch.randn(k, k, generator=gen) / k ** 0.5
            x = torch.randn(256, k, generator=gen) @ mix + 0.3 * torch.randn(256, 1, generator=gen)
            for per, bits in ((p, int(b)) for p in args.pers.split(",") for b in args.bits.split(",")):
                for name, module in (("old", old), ("new", new_codebook)):
                    if module is None:
                        continue
                    best, best_cpu = float("inf"), float("inf")
                    for _ in range(args.repeats):
                        start, start_cpu = time.perf_counter(), time.process_time()
                        codes, codebook = module.kmeans_codebook(w, bits, per=per, keep_zero=args.keep_zero)
                        best = min(best, time.perf_counter() - start)
                        best_cpu = min(best_cpu, time.process_time() - start_cpu)
                    plain, weighted, out = errors(w, codes, codebook, importance, x)
                    print(f"| {shape} | {kind} | {per} | {bits} | {name} | {best:.2f} | {best_cpu:.2f} | {plain:.6f} | {weighted:.6f} | {out:.6f} |",
                          flush=True)


if __name__ == "__main__":
    sys.exit(main())
