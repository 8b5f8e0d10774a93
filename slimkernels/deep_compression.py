"""Deep Compression (Han, Mao & Dally, ICLR 2016) on a LeNet-300-100-style MLP: prune, share, code.

    rows = run_deep_compression(x_train, y_train, x_test, y_test, epochs=30, seed=0, progress=True)
    print(format_deep_compression(rows))

The stages, each measured by the size of its slimkernels.save file (header and metadata included) and
its test accuracy:
  float32   the MLP (inputs -> 300 -> 100 -> 10) trained with Adam
  pruned    iterative magnitude pruning with fine-tuning (slimkernels.PruningSchedule, kind="iterative",
            each layer to its own sparsity, or one global threshold), stored as SparseLinear CSR layers
            (float32 values, int16 indices)
  shared    k-means weight sharing per layer (a codebook with an exact 0 for the pruned weights and
            2^bits - 1 centroids fitted to the kept ones), then centroid fine-tuning: the gradients of the
            weights that share a centroid summed into it, the index map fixed (SharedWeightLinear); stored
            as codebook QuantLinear layers (packed codes + codebook), which run on slimkernels' lut_mm
  huffman   the same model saved with entropy_coding="huffman": its codes Huffman-coded (the pruned
            zeros as run lengths, the others as code words); reloaded into a fresh float MLP to measure
            its accuracy (lossless: the same as "shared")
"""
from __future__ import annotations

import copy
import os
import tempfile
from typing import Optional

import torch
from torch import nn

from .compress.config import SparsityConfig
from .compress.serialization import load, save
from .demo import accuracy, train
from .nn import QuantLinear, SparseLinear
from .prune import PruningSchedule
from .quant.codebook import kmeans_codebook

HIDDEN = (300, 100)  # LeNet-300-100
STAGES = ("float32", "pruned", "shared", "huffman")
# Defaults that reach >= 30x at <= 0.5 point on the demo's digits (bench/results/2026-11-30-deep-compression.md):
# fractions pruned and codebook bits of the 64x300, 300x100 and 100x10 layers.
SPARSITY = (0.9, 0.97, 0.75)
BITS = (3, 3, 4)


def build_lenet(inputs: int = 64, hidden: tuple = HIDDEN, classes: int = 10) -> nn.Sequential:
    """LeNet-300-100 style MLP: inputs -> 300 -> 100 -> classes with ReLUs."""
    sizes = (inputs, *hidden)
    layers = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], classes))


class SharedWeightLinear(nn.Module):
    """A linear layer whose weight is codebook[codes]: the codes (the index map) are fixed, the codebook
    entries are trained. Autograd of the lookup sums the gradients of all the weights that share an entry
    into it (Deep Compression's centroid fine-tuning). The entry `zero_entry` (the pruned weights) stays
    exactly 0. `to_quant_linear()` gives the codebook QuantLinear that stores and runs it."""

    def __init__(self, codes: torch.Tensor, codebook: torch.Tensor, bias: Optional[torch.Tensor],
                 zero_entry: Optional[int] = None):
        super().__init__()
        if codes.dim() != 2 or codebook.dim() != 1 or int(codes.max()) >= len(codebook):
            raise ValueError(f"SharedWeightLinear: codes [N, K] must index the codebook [E], got codes "
                             f"{tuple(codes.shape)} up to {int(codes.max())} and codebook {tuple(codebook.shape)}")
        self.register_buffer("codes", codes.to(torch.long))
        self.codebook = nn.Parameter(codebook.detach().float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())
        self.zero_entry = zero_entry
        if zero_entry is not None:
            if float(codebook[zero_entry]) != 0:
                raise ValueError(f"SharedWeightLinear: zero_entry {zero_entry} holds "
                                 f"{float(codebook[zero_entry])}, not 0")
            keep = torch.ones_like(self.codebook)
            keep[zero_entry] = 0
            self.codebook.register_hook(lambda grad: grad * keep)  # no gradient: Adam never moves it

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, seed: int = 0) -> "SharedWeightLinear":
        """k-means weight sharing of a (pruned) nn.Linear: one codebook for the layer with an exact 0 entry
        that its zero weights map to (quant.codebook.kmeans_codebook(keep_zero=True))."""
        codes, codebook = kmeans_codebook(linear.weight.detach(), bits, per="layer", seed=seed, keep_zero=True)
        zero = int((codebook[0] == 0).nonzero()[0])
        return cls(codes, codebook[0], linear.bias, zero_entry=zero)

    def weight(self) -> torch.Tensor:
        return self.codebook[self.codes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight(), self.bias)

    def to_quant_linear(self) -> QuantLinear:
        bias = None if self.bias is None else self.bias.detach()
        return QuantLinear.from_codebook(self.codes.to(torch.uint8), self.codebook.detach()[None], bias)


def _file_bytes(model: nn.Module, directory: str, name: str, entropy_coding=None) -> tuple[int, str]:
    path = os.path.join(directory, name)
    save(model, path, entropy_coding=entropy_coding)
    return os.path.getsize(path), path


def _zeros(model: nn.Module) -> tuple[float, tuple]:
    """Fraction of zero weights over the model's linear layers, and in each of them."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    total = float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))
    return total, tuple(float((w == 0).float().mean()) for w in weights)


def _per_layer(name: str, value, valid, expected: str) -> tuple:
    """One `name` value per linear layer of the MLP: a single value for all, or a sequence of one per layer."""
    layers = len(HIDDEN) + 1
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * layers
    if len(values) != layers or not all(valid(v) for v in values):
        raise ValueError(f"run_deep_compression: {name} must be {expected}, or a tuple of {layers} such values (one "
                         f"per linear layer, input layer first), got {value!r}")
    return values


def run_deep_compression(x_train, y_train, x_test, y_test, *, epochs: int = 30, seed: int = 0, progress: bool = True,
                         sparsity=SPARSITY, bits=BITS, prune_rounds: int = 5, prune_epochs: Optional[int] = None,
                         share_epochs: Optional[int] = None, prune_lr: float = 2e-3,
                         weight_decay: float = 1e-3) -> list[dict]:
    """The pipeline on (x_train, y_train) -> one row per stage (STAGES): {"stage", "accuracy",
    "file_bytes", "smaller" (than the float32 file), "zeros" (fraction of zero weights), "layer_zeros" (that
    fraction in each linear layer, input layer first), "detail"}.

    epochs: float training; prune_epochs (default 2 * epochs): fine-tuning (Adam at prune_lr with L2
    `weight_decay`, which the paper found to help retraining) while `sparsity` is reached in `prune_rounds`
    iterative magnitude steps, the last round followed by as much fine-tuning as each round had.
    sparsity: one number (one global magnitude threshold over the layers) or a tuple of one per linear
    layer, input layer first (each layer pruned to its own fraction, as the paper's 92% / 91% / 74%; the
    default prunes the 300x100 layer, the biggest here, hardest and the output layer least).
    share_epochs (default epochs // 2): centroid fine-tuning of the `bits`-bit codebooks (bits: one number
    or a tuple of one per layer)."""
    sparsities = _per_layer("sparsity", sparsity, lambda s: isinstance(s, (int, float)) and not isinstance(s, bool)
                            and 0 < s < 1, "a number in (0, 1)")
    layer_bits = _per_layer("bits", bits, lambda b: b in (2, 3, 4) and not isinstance(b, bool),
                            "2, 3 or 4 (codebook QuantLinear)")
    for name, value in (("epochs", epochs), ("prune_rounds", prune_rounds)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"run_deep_compression: {name} must be an int >= 1, got {value!r}")
    for name, value in (("prune_lr", prune_lr), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or \
                (name == "prune_lr" and value == 0):
            raise ValueError(f"run_deep_compression: {name} must be a number {'> 0' if name == 'prune_lr' else '>= 0'}, "
                             f"got {value!r}")
    prune_epochs = 2 * epochs if prune_epochs is None else prune_epochs
    share_epochs = max(1, epochs // 2) if share_epochs is None else share_epochs
    torch.manual_seed(seed)
    model = build_lenet(x_train.shape[1], HIDDEN, int(y_train.max()) + 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def record(stage, net, size, detail):
            zeros, layer_zeros = (_zeros(net) if stage in ("float32", "pruned") else
                                  (rows[-1]["zeros"], rows[-1]["layer_zeros"]))
            rows.append({"stage": stage, "accuracy": accuracy(net, x_test, y_test), "file_bytes": size,
                         "zeros": zeros, "layer_zeros": layer_zeros, "detail": detail})

        train(model, x_train, y_train, epochs, None, progress, lr=2e-3, desc="float32 training")
        record("float32", model, _file_bytes(model, tmp, "float.safetensors")[0], f"{epochs} epochs Adam")

        # Iterative pruning: prune_rounds updates, fine-tuning in between and after the last.
        steps_per_epoch = -(-len(x_train) // 128)
        round_steps = max(1, prune_epochs * steps_per_epoch // (prune_rounds + 1))
        opt = torch.optim.Adam(model.parameters(), lr=prune_lr, weight_decay=weight_decay)
        iterative = prune_rounds > 1
        timing = dict(kind="iterative" if iterative else "one_shot", start=0, frequency=round_steps, optimizer=opt,
                      end=(prune_rounds - 1) * round_steps if iterative else None)
        if isinstance(sparsity, (int, float)):  # one global magnitude threshold
            schedules = [PruningSchedule(model, SparsityConfig(sparsity, scope="global"), **timing)]
        else:  # one schedule per layer, each pruning its own layer to its own sparsity
            names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
            schedules = [PruningSchedule(model, SparsityConfig(s, per="layer"), **timing,
                                         filter_fn=lambda module, name, own=own: name == own)
                         for own, s in zip(names, sparsities)]

        def advance():
            for schedule in schedules:
                if not schedule.done:
                    schedule.step()

        advance()  # the first update, at step 0
        train(model, x_train, y_train, prune_epochs, None, progress, desc="pruning + fine-tuning", optimizer=opt,
              after_step=advance)
        for schedule in schedules:
            schedule.convert(sparse_modules=False, progress=False)  # dense layers holding zeros, hooks dropped
        sparse = copy.deepcopy(model)  # stored as SparseLinear CSR: only the kept weights
        for i, module in enumerate(sparse):
            if isinstance(module, nn.Linear):
                sparse[i] = SparseLinear.from_dense(module.weight.detach(), module.bias.detach(), format="csr")
        target = (f"{sparsity:.0%} (global magnitude)" if isinstance(sparsity, (int, float)) else
                  "/".join(f"{s:.0%}" for s in sparsities) + " (per layer)")
        record("pruned", model, _file_bytes(sparse, tmp, "pruned.safetensors")[0],
               f"{prune_rounds} rounds to {target}, {prune_epochs} epochs fine-tuning (L2 {weight_decay:g}), CSR")

        # Weight sharing with centroid fine-tuning, then the codebook QuantLinear.
        linear_indices = [i for i, module in enumerate(model) if isinstance(module, nn.Linear)]
        for i, b in zip(linear_indices, layer_bits):
            model[i] = SharedWeightLinear.from_linear(model[i], b, seed=seed)
        train(model, x_train, y_train, share_epochs, None, progress, lr=1e-4, desc="centroid fine-tuning",
              params=[p for p in model.parameters() if p.requires_grad])
        for i, module in enumerate(model):
            if isinstance(module, SharedWeightLinear):
                model[i] = module.to_quant_linear()
        record("shared", model, _file_bytes(model, tmp, "shared.safetensors")[0],
               f"{'/'.join(map(str, layer_bits)) if not isinstance(bits, int) else bits}-bit k-means per layer with an exact 0, {share_epochs} epochs centroid fine-tuning")

        size, path = _file_bytes(model, tmp, "huffman.safetensors", entropy_coding="huffman")
        reloaded = load(path, build_lenet(x_train.shape[1], HIDDEN, int(y_train.max()) + 1))
        record("huffman", reloaded, size, "entropy_coding='huffman', reloaded into a fresh float MLP")
    for row in rows:
        row["smaller"] = rows[0]["file_bytes"] / row["file_bytes"]
    return rows


def format_deep_compression(rows: list[dict]) -> str:
    """The rows of run_deep_compression as a table."""
    from .demo import format_rows

    return format_rows(rows, [
        ("stage", 10, lambda r: r["stage"]),
        ("accuracy", 9, lambda r: f"{r['accuracy'] * 100:.2f}%"),
        ("file", 12, lambda r: f"{r['file_bytes']:,d} B"),
        ("smaller", 9, lambda r: f"{r['smaller']:.1f}x"),
        ("zeros", 8, lambda r: f"{r['zeros'] * 100:.1f}%"),
        ("  detail", 0, lambda r: "  " + r["detail"]),
    ])
