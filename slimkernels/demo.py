"""`slimkernels demo`: train a small MLP on scikit-learn's digits, compress it every available way
(quantization and one-shot pruning), and print accuracy, size in memory and on disk, latency and
speed-up against float for each mode. Then train a small CNN on the same images, remove channels
(structured pruning), fine-tune it with and without distillation, and print each stage
(demo_structured.py); and run the Deep Compression pipeline, prune -> share -> Huffman-code, printing
the file size after each stage (deep_compression.py).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from . import (CodebookConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8WeightOnlyConfig, SparsityConfig,
               convert_, load, prepare_qat_, quantize_, save, sparsify_)
from .bench.timing import median_call_ms
from .compress import module_bytes

# The first layer has 64 inputs, so int4 groups are 64 wide (128 would leave it in float).
INT4_RTN = Int4WeightOnlyConfig(group_size=64)
MODES = {
    "float32": None,
    "int8 dynamic (W8A8)": Int8DynamicConfig(),
    "int8 weight-only (W8A16)": Int8WeightOnlyConfig(),
    "int4 g64 RTN (W4A16)": INT4_RTN,
    "int4 g64 GPTQ (W4A16)": Int4WeightOnlyConfig(group_size=64, method="gptq"),
    "int4 g64 QAT, 2 epochs": "qat",
    "4-bit k-means codebook": CodebookConfig(bits=4, codebook="kmeans"),
    "2-bit k-means codebook": CodebookConfig(bits=2, codebook="kmeans"),
}
# One-shot pruning (no fine-tuning): SparseLinear layers hold only the kept weights.
PRUNING_MODES = {
    "50% Wanda (CSR)": SparsityConfig(0.5, method="wanda"),
    "2:4 SparseGPT": SparsityConfig(pattern="2:4", method="sparsegpt"),
    "80% magnitude (CSR)": SparsityConfig(0.8, method="magnitude"),
    "80% magnitude, int8 values": SparsityConfig(0.8, method="magnitude", values="int8"),
}
MODES.update(PRUNING_MODES)
QAT_EPOCHS = 2


def load_digits_split(seed: int):
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SystemExit("the demo trains on scikit-learn's digits: pip install 'slimkernels[demo]'") from exc
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def build_model(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10),
    )


def train(model, x, y, epochs: int, seed: Optional[int], progress: bool, lr: float = 2e-3,
          desc: str = "training float model", loss=None, params=None, decay: bool = False, optimizer=None,
          after_step=None):
    """Adam over minibatches of 128 in train mode (torch's generator reseeded unless seed is None);
    `loss(xb, yb)` replaces cross-entropy of the model's output (distillation), `params` the model's
    parameters and `optimizer` the Adam; `decay` lowers the learning rate linearly to 0 over the run (a
    fine-tuning run then ends settled, not at a random point of its last epoch); `after_step()` runs
    after every step (a pruning schedule). Returns the model in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    opt = optimizer or torch.optim.Adam(model.parameters() if params is None else params, lr=lr)
    steps = epochs * -(-len(x) // 128)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps if decay else 1.0)
    loss = loss or (lambda xb, yb: nn.functional.cross_entropy(model(xb), yb))
    model.train()
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            loss(x[idx], y[idx]).backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
    return model.eval()


@torch.inference_mode()
def latency_ms(model, x, repeats: int = 30) -> float:
    return median_call_ms(lambda: model(x), repeats, warmup=3)


def file_bytes(model) -> int:
    """Size of the model's slimkernels.save file (safetensors with the layer configs in its header)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        save(model, path)
        return os.path.getsize(path)


@torch.inference_mode()
def accuracy(model, x, y) -> float:
    return (model(x).argmax(-1) == y).float().mean().item()


def run(epochs: int = 8, hidden: int = 512, seed: int = 0, progress: bool = True, data=None) -> list[dict]:
    x_train, y_train, x_test, y_test = data or load_digits_split(seed)
    torch.manual_seed(seed)
    float_model = train(build_model(hidden), x_train, y_train, epochs, seed, progress)
    rows = []
    calibration = list(x_train.split(256))
    for name, config in MODES.items():
        model = copy.deepcopy(float_model)
        if config == "qat":  # fine-tune through int4 fake quantization, then convert
            prepare_qat_(model, INT4_RTN)
            train(model.train(), x_train, y_train, QAT_EPOCHS, seed, progress, lr=2e-4, desc="QAT fine-tuning")
            convert_(model, progress=False)
        elif isinstance(config, SparsityConfig):
            sparsify_(model, config, progress=False, calibration=calibration)
        elif config is not None:
            quantize_(model, config, progress=False, calibration=calibration)
        rows.append({
            "mode": name,
            "accuracy": accuracy(model, x_test, y_test),
            "size_bytes": module_bytes(model),
            "file_bytes": file_bytes(model),
            "latency_ms_batch": latency_ms(model, x_test),
            "latency_ms_1": latency_ms(model, x_test[:1]),
            "model": model,
        })
    base = rows[0]
    for row in rows:
        row["speedup_batch"] = base["latency_ms_batch"] / row["latency_ms_batch"]
        row["speedup_1"] = base["latency_ms_1"] / row["latency_ms_1"]
        row["smaller"] = base["file_bytes"] / row["file_bytes"]
    # The deployable artefact: save the W8A8 model, reload it into the float architecture.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits_w8a8.safetensors")
        save(rows[1]["model"], path)
        reloaded = load(path, build_model(hidden))
        same = torch.equal(reloaded(x_test), rows[1]["model"](x_test))
    for row in rows:
        del row["model"]
    rows[1]["save_load_identical"] = same
    return rows


def format_rows(rows: list[dict], columns: list[tuple[str, int, Callable[[dict], str]]]) -> str:
    """A text table: each column is (header, width, cell of a row); the first is left-aligned."""
    def line(cells):
        return "".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, (_, w, _)) in enumerate(zip(cells, columns)))

    head = line([h for h, _, _ in columns])
    return "\n".join([head, "-" * len(head)] + [line([cell(r) for _, _, cell in columns]) for r in rows])


def format_table(rows: list[dict], n_test: int) -> str:
    return format_rows(rows, [
        ("mode", 28, lambda r: r["mode"]),
        ("accuracy", 9, lambda r: f"{r['accuracy'] * 100:.1f}%"),
        ("size", 11, lambda r: f"{r['size_bytes'] / 1e6:.2f} MB"),
        ("file", 10, lambda r: f"{r['file_bytes'] / 1e6:.2f} MB"),
        ("smaller", 8, lambda r: f"{r['smaller']:.2f}x"),
        (f"batch {n_test}", 12, lambda r: f"{r['latency_ms_batch']:.2f} ms"),
        ("speed-up", 9, lambda r: f"{r['speedup_batch']:.2f}x"),
        ("batch 1", 10, lambda r: f"{r['latency_ms_1']:.3f} ms"),
        ("speed-up", 9, lambda r: f"{r['speedup_1']:.2f}x"),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slimkernels demo", description=__doc__)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512, help="width of the three hidden layers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cnn-width", type=int, default=64, help="channels of the CNN's first conv (then 2x, 4x, 4x)")
    parser.add_argument("--cnn-epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=3, help="after structured pruning, with and without KD")
    parser.add_argument("--dc-epochs", type=int, default=30, help="Deep Compression: epochs of each training stage")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the rows as JSON ({'mlp': [...], 'cnn': [...], 'deep_compression': [...]})")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from . import _native

    from .deep_compression import format_deep_compression, run_deep_compression
    from .demo_structured import KD, RATIO, format_structured, run_structured

    data = load_digits_split(args.seed)
    rows = run(args.epochs, args.hidden, args.seed, progress=not args.no_progress, data=data)
    cnn_rows = run_structured(*data, width=args.cnn_width, epochs=args.cnn_epochs,
                              finetune_epochs=args.finetune_epochs, seed=args.seed, progress=not args.no_progress)
    dc_rows = run_deep_compression(*data, epochs=args.dc_epochs, seed=args.seed, progress=not args.no_progress)
    n_test = len(data[3])
    print(f"\nslimkernels demo: MLP 64-{args.hidden}-{args.hidden}-{args.hidden}-10 on scikit-learn digits "
          f"(test set {n_test} images), CPU, {torch.get_num_threads()} threads, ISA {_native.cpu_isa()}\n")
    print(format_table(rows, n_test))
    print(f"\nsave -> load of the W8A8 model gives identical outputs: {rows[1]['save_load_identical']}")
    print("Latency is the median of 30 forwards of the whole model. Layers this small sit in the cache and "
          "take microseconds,\nso batch-1 latency here is mostly per-call overhead (a few us per layer: eager QuantLinear calls its kernel directly), "
          "not kernel speed: `slimkernels bench`\nmeasures the kernels on LLM-sized layers (bench/results/). "
          "The pruned rows are one-shot (no fine-tuning); a pruned layer runs\ndense where its sparse kernel "
          "would be slower (below the measured crossover), and its file still holds only the kept weights.")
    w = args.cnn_width
    print(f"\nStructured pruning: CNN conv{w}-conv{2 * w}-pool-conv{4 * w}-conv{4 * w}-linear on the same images; "
          f"{RATIO:.0%} of every conv's channels removed\n(prune_, L2 importance over each coupled group), then "
          f"fine-tuned {args.finetune_epochs} epochs on the labels, or distilled from the float CNN (KD, T={KD['temperature']:g}, "
          f"alpha={KD['alpha']:g})."
          f"\nThe pruned CNN is plain torch with smaller layers: its speed-up needs no slimkernels kernel.\n")
    print(format_structured(cnn_rows))
    print(f"\nsave -> load of the pruned CNN into a fresh full-width CNN gives identical outputs: "
          f"{cnn_rows[-1]['save_load_identical']}")
    print("\nDeep Compression (Han et al.): an MLP 64-300-100-10 pruned iteratively while it fine-tunes, its kept "
          "weights shared\nthrough k-means codebooks with an exact 0 (centroids fine-tuned), the file Huffman-coded "
          "(save(..., entropy_coding=\"huffman\")).\n")
    print(format_deep_compression(dc_rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mlp": rows, "cnn": cnn_rows, "deep_compression": dc_rows}, f, indent=1)
    return 0
