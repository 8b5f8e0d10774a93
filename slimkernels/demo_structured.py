"""`slimkernels demo`, second table: structured pruning of a small CNN with fine-tuning and distillation.

A CNN trained on scikit-learn's digits loses `RATIO` of the channels of every conv (prune_, which finds
the coupled batchnorm entries and consumer channels from a trace). The pruned model is a smaller plain
torch model: no mask, no hook and no slimkernels op, so it is faster everywhere. It is then fine-tuned
twice from the same start, once on the labels alone and once distilled from the float model (Hinton KD
with temperature), for the same epochs. Each stage prints params, MACs, file size, batch-1 latency and
accuracy.
"""
from __future__ import annotations

import copy
import os
import tempfile

import torch
from torch import nn

from . import load, save
from .distill import Distiller
from .prune import StructuredPruningConfig, count_macs, count_params, prune_

RATIO = 0.5  # of every conv's channels; MACs fall to about (1 - RATIO)^2: 4x fewer
KD = dict(temperature=4.0, alpha=0.5)
FINETUNE_LR = 3e-3


def build_cnn(width: int) -> nn.Module:
    """Four 3x3 conv-bn-relu layers on the 8x8 digit images (width, 2w, 4w, 4w channels), a pool, a linear."""
    a, b, c = width, 2 * width, 4 * width

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, a), *block(a, b), nn.MaxPool2d(2), *block(b, c), *block(c, c),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def run_structured(x_train, y_train, x_test, y_test, *, width: int, epochs: int, finetune_epochs: int, seed: int,
                   progress: bool) -> list[dict]:
    from .demo import accuracy, file_bytes, latency_ms, train

    x_train, x_test = x_train.view(-1, 1, 8, 8), x_test.view(-1, 1, 8, 8)  # the digits are 8x8 images
    example = x_test[:1]
    torch.manual_seed(seed)
    teacher = train(build_cnn(width), x_train, y_train, epochs, seed, progress, desc="training float CNN")

    pruned = copy.deepcopy(teacher)
    prune_(pruned, StructuredPruningConfig(RATIO, importance="l2"), example, progress=False)
    finetuned = train(copy.deepcopy(pruned), x_train, y_train, finetune_epochs, seed, progress, lr=FINETUNE_LR,
                      desc="fine-tuning pruned CNN", decay=True)
    student = copy.deepcopy(pruned)
    distiller = Distiller(teacher, student, kd=KD)
    train(student, x_train, y_train, finetune_epochs, seed, progress, lr=FINETUNE_LR, desc="distilling pruned CNN",
          loss=lambda xb, yb: distiller(xb, labels=yb), params=distiller.trainable_parameters(), decay=True)

    stages = {
        "float CNN": teacher,
        f"pruned {RATIO:.0%} of channels": pruned,
        f"+ fine-tuned {finetune_epochs} epochs": finetuned,
        f"+ distilled {finetune_epochs} epochs (KD)": student,
    }
    rows = []
    for name, model in stages.items():
        model.eval()
        rows.append({
            "stage": name,
            "accuracy": accuracy(model, x_test, y_test),
            "params": count_params(model),
            "macs": count_macs(model, example),
            "file_bytes": file_bytes(model),
            "latency_ms_1": latency_ms(model, example, repeats=100),
        })
    for row in rows:
        row["fewer_macs"] = rows[0]["macs"] / row["macs"]
        row["speedup_1"] = rows[0]["latency_ms_1"] / row["latency_ms_1"]
    # The pruned file rebuilds into a fresh float CNN of the original widths (load narrows it).
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cnn_pruned.safetensors")
        save(student, path)
        reloaded = load(path, build_cnn(width)).eval()
        with torch.inference_mode():
            rows[-1]["save_load_identical"] = torch.equal(reloaded(x_test), student(x_test))
    return rows


def format_structured(rows: list[dict]) -> str:
    from .demo import format_rows

    return format_rows(rows, [
        ("stage", 32, lambda r: r["stage"]),
        ("accuracy", 9, lambda r: f"{r['accuracy'] * 100:.1f}%"),
        ("params", 10, lambda r: f"{r['params'] / 1e3:.0f}k"),
        ("MACs", 9, lambda r: f"{r['macs'] / 1e6:.2f}M"),
        ("fewer", 7, lambda r: f"{r['fewer_macs']:.2f}x"),
        ("file", 10, lambda r: f"{r['file_bytes'] / 1e6:.2f} MB"),
        ("batch 1", 10, lambda r: f"{r['latency_ms_1']:.3f} ms"),
        ("speed-up", 9, lambda r: f"{r['speedup_1']:.2f}x"),
    ])
