"""`slimkernels compress MODEL (--recipe recipe.toml | --budget size=1/6[,latency=0.5]) --out FILE`.

MODEL is a local Hugging Face model folder (AutoModel + AutoTokenizer, local_files_only) or
`package.module:factory`, a callable returning an nn.Module (the current directory is on the import path).
Calibration data: for a text model a UTF-8 file with one sample per line (default:
slimkernels.calibration_text), tokenized in batches; for a factory model a .safetensors file holding a
tensor "input" [B, ...] (or a .npy array), split into batches along B. No pickle is ever read.

A slice of the samples (HELD_OUT_FRACTION, at least one when there are two or more) is held out of
calibration: the quality figure is the min cosine, over those samples, between the float model's output
and the compressed one's (a text model's output mean-pooled over its tokens: the sentence embedding).

Bad input (a model that does not load, an unknown option, a recipe naming an unknown pass or matching
no layer, a budget the search cannot meet) ends with one line on stderr and exit code 2, no traceback.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .bench.timing import median_call_ms

PROG = "slimkernels compress"
DEFAULT_SAMPLES = 128
BATCH_SIZE = 8
MAX_TOKENS = 128  # per text sample, special tokens included
HELD_OUT_FRACTION = 1 / 8
LATENCY_REPEATS = 3
QUALITY_METRIC = "min cosine vs float on held-out calibration samples"
UNITS = {"B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30}


class CommandError(Exception):
    """Bad input to the command: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage and exit; we want one line
        raise CommandError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Compress a model by a recipe (passes per layer-name pattern, see examples/recipe.toml) or "
                    "to a size/latency budget, save it with what was measured (slimkernels report FILE shows it).",
    )
    parser.add_argument("model", metavar="MODEL",
                        help="a local Hugging Face model folder, or package.module:factory (a callable returning "
                             "an nn.Module)")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--recipe", metavar="FILE", help="a TOML recipe: [[rule]] tables of pattern + passes")
    how.add_argument("--budget", metavar="SPEC",
                     help="size=FRACTION|BYTES[,latency=FRACTION]: e.g. size=1/6, size=0.2, size=4MB, "
                          "latency=0.5 (of float's latency)")
    parser.add_argument("--calibration", metavar="FILE",
                        help="text model: UTF-8 text, one sample per line (default: built-in English sentences); "
                             "factory model: .safetensors with a tensor 'input' [B, ...], or .npy")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                        help=f"calibration samples used (default {DEFAULT_SAMPLES})")
    parser.add_argument("--out", required=True, metavar="FILE", help="the compressed model (.safetensors)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--entropy-coding", choices=["huffman"], default=None,
                        help="Huffman-code the integer streams in the file (smallest file)")
    return parser


# ---- the budget -----------------------------------------------------------------------------------
def _fraction(text: str, what: str) -> float:
    match = re.fullmatch(r"\s*([0-9.]+)\s*/\s*([0-9.]+)\s*", text)
    try:
        value = float(match.group(1)) / float(match.group(2)) if match else float(text)
    except (ValueError, ZeroDivisionError):
        raise CommandError(f"--budget {what}: expected a fraction like 1/6 or 0.2, got {text!r}") from None
    if not 0 < value <= 1:
        raise CommandError(f"--budget {what}: a fraction must be in (0, 1], got {text!r}")
    return value


def parse_budget(spec: str) -> dict[str, Any]:
    """"size=1/6,latency=0.5" -> {"size": 0.1667, "latency": 0.5}. size: a fraction of float32's bytes
    (float) or a number of bytes with a unit, "4MB" / "300KiB" (int); latency: a fraction of float's latency."""
    budget: dict[str, Any] = {"size": None, "latency": None}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in budget:
            raise CommandError(f"--budget: expected size=...[,latency=...], got {part!r}")
        if budget[key] is not None:
            raise CommandError(f"--budget: {key} given twice")
        unit = re.fullmatch(r"\s*([0-9.]+)\s*([KMG]I?B|B)\s*", value, re.I)
        if key == "size" and unit:
            try:
                budget[key] = int(float(unit.group(1)) * UNITS[unit.group(2).upper()])
            except ValueError:
                raise CommandError(f"--budget size: cannot read {value!r}") from None
            if budget[key] <= 0:
                raise CommandError(f"--budget size must be > 0 bytes, got {value!r}")
        else:
            budget[key] = _fraction(value, key)
    if budget["size"] is None and budget["latency"] is None:
        raise CommandError("--budget: give size=... and/or latency=...")
    return budget


# ---- the model and its data -----------------------------------------------------------------------
def _import_transformers():
    from .testing import import_torchvision

    try:  # transformers imports torchvision when installed: make a CUDA-built wheel importable on CPU torch
        import_torchvision()
    except ImportError:
        pass
    try:
        import transformers
    except ImportError:
        raise CommandError("a Hugging Face model folder needs transformers: pip install transformers") from None
    return transformers


def load_model(spec: str) -> tuple[nn.Module, Optional[Any]]:
    """(model in eval mode, tokenizer or None) from a model folder or package.module:factory."""
    path = Path(spec)
    if path.is_dir():
        transformers = _import_transformers()
        try:
            model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 (transformers raises many kinds; the user needs the message)
            raise CommandError(f"cannot load a Hugging Face model from {spec!r}: {str(exc).splitlines()[0]}") from None
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception:  # noqa: BLE001  a model without a tokenizer (vision, audio) takes tensors
            tokenizer = None
        return model.eval(), tokenizer
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"MODEL {spec!r} is neither a folder nor package.module:factory")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CommandError(f"cannot import the factory {spec!r}: {exc}") from None
    if not callable(factory):
        raise CommandError(f"{spec!r} is not callable (a factory returning an nn.Module)")
    model = factory()
    if not isinstance(model, nn.Module):
        raise CommandError(f"the factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model.eval(), None


def _text_samples(path: Optional[str], n: int) -> list[str]:
    if path is None:
        from .compress import calibration_text

        return calibration_text(n)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"--calibration: cannot read {path!r} as UTF-8 text: {exc}") from None
    samples = [line.strip() for line in lines if line.strip()]
    if not samples:
        raise CommandError(f"--calibration: {path!r} has no non-empty line")
    return samples[:n]


def _tensor_samples(path: str, n: int) -> torch.Tensor:
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(path)
            if "input" not in tensors:
                raise CommandError(f"--calibration: {path!r} has no tensor named 'input' (it has {sorted(tensors)})")
            data = tensors["input"]
        elif suffix == ".npy":
            import numpy as np

            data = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            raise CommandError(f"--calibration: a factory model takes a .safetensors file with a tensor 'input' or a "
                               f".npy array, got {path!r}")
    except CommandError:
        raise
    except Exception as exc:  # noqa: BLE001  a corrupt or missing file: its reader's message
        raise CommandError(f"--calibration: cannot read {path!r}: {exc}") from None
    if data.dim() < 1 or data.shape[0] < 1:
        raise CommandError(f"--calibration: 'input' must be [B, ...] with B >= 1, got shape {tuple(data.shape)}")
    return data[:n]


def _split(count: int) -> int:
    """How many of `count` samples are held out for the quality figure."""
    return 0 if count < 2 else max(1, int(count * HELD_OUT_FRACTION))


def calibration_data(tokenizer, path: Optional[str], n: int, factory: bool) -> tuple[Optional[list], list]:
    """(calibration batches or None, held-out batches) of model inputs: dicts for a text model, tensors
    for a factory model. A factory model without --calibration has neither (passes needing data say so)."""
    if factory and path is None:
        return None, []
    if tokenizer is not None:
        samples = _text_samples(path, n)
        held = _split(len(samples))

        def batches(texts):
            out = []
            for i in range(0, len(texts), BATCH_SIZE):
                enc = tokenizer(texts[i: i + BATCH_SIZE], padding=True, truncation=True, max_length=MAX_TOKENS,
                                return_tensors="pt")
                out.append(dict(enc))  # a plain dict: the calibration runner calls dicts as keywords
            return out

        train = samples[:len(samples) - held] or samples
        return batches(train), batches(samples[len(samples) - held:] or samples)
    if path is None:
        raise CommandError("a model without a tokenizer needs --calibration FILE (.safetensors with 'input')")
    data = _tensor_samples(path, n)
    held = _split(data.shape[0])
    train, test = data[:data.shape[0] - held], data[data.shape[0] - held:]
    if held == 0:
        train = test = data
    return list(train.split(BATCH_SIZE)), list(test.split(BATCH_SIZE))


# ---- what the model gives and how fast ------------------------------------------------------------
def _call(model: nn.Module, batch):
    return model(**batch) if isinstance(batch, dict) else model(batch)


@torch.no_grad()
def model_output(model: nn.Module, batch) -> torch.Tensor:
    """One row per sample, float32 [B, D]: the model's output (logits, else last_hidden_state, else the
    tensor), mean-pooled over the tokens of a [B, T, C] output when the batch has an attention_mask."""
    from .distill import default_output

    out = default_output(_call(model, batch)).float()
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is not None and out.dim() == 3 and out.shape[:2] == mask.shape:
        weights = mask.unsqueeze(-1).to(out.dtype)
        out = (out * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return out.reshape(out.shape[0], -1)


def min_cosine(reference: list[torch.Tensor], model: nn.Module, batches: list) -> Optional[float]:
    if not batches:
        return None
    got = torch.cat([model_output(model, b) for b in batches])
    return float(F.cosine_similarity(got, torch.cat(reference), dim=1).min())


@torch.no_grad()
def latency_ms(model: nn.Module, batch) -> Optional[float]:
    """Median wall time of one forward on `batch` (after one warm-up call), in ms."""
    if batch is None:
        return None
    return median_call_ms(lambda: _call(model, batch), LATENCY_REPEATS)


# ---- the command ----------------------------------------------------------------------------------
def _layer_info(model: nn.Module, reports, plan: dict) -> dict[str, dict]:
    """{layer: steps, bytes, float_bytes} from the plan and the passes' reports."""
    from .compress import module_bytes

    first_bytes: dict[str, int] = {}
    for report in reports:
        for record in report.layers:
            first_bytes.setdefault(record.name, record.bytes_before)
    layers = {}
    for name, steps in plan.items():
        try:
            now = module_bytes(model.get_submodule(name))
        except AttributeError:  # a layer structured pruning removed
            now = 0
        layers[name] = {"steps": " + ".join(s.describe() for s in steps), "bytes": now,
                        "float_bytes": first_bytes.get(name, now)}
    return layers


def _save(model: nn.Module, out: str, entropy_coding: Optional[str], info: dict) -> None:
    from .compress import save

    if "info" in inspect.signature(save).parameters:
        save(model, out, entropy_coding=entropy_coding, info=info)
    else:  # an older save: the model without what was measured
        save(model, out, entropy_coding=entropy_coding)


def run(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    from .compress import CompressionReport, module_bytes
    from .compress.recipe import Recipe, apply_recipe

    if args.samples < 1:
        raise CommandError(f"--samples must be >= 1, got {args.samples}")
    progress = not args.no_progress
    recipe = Recipe.from_toml(args.recipe) if args.recipe else None  # a bad recipe fails before the model loads
    budget = parse_budget(args.budget) if args.budget else None
    model, tokenizer = load_model(args.model)
    factory = not Path(args.model).is_dir()
    calibration, held_out = calibration_data(tokenizer, args.calibration, args.samples, factory)
    float_bytes = module_bytes(model)
    reference = [model_output(model, b) for b in held_out]
    timing_batch = held_out[0] if held_out else None
    float_latency = latency_ms(model, timing_batch)

    info: dict[str, Any] = {"tool": PROG, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "model": args.model, "quality_metric": QUALITY_METRIC,
                            "float": {"bytes": float_bytes, "quality": 1.0, "latency_ms": float_latency}}
    reports: list[CompressionReport] = []
    if recipe is not None:
        plan = recipe.plan(model)
        info["recipe"] = recipe.to_dict()
        needs_teacher = any(s.pass_name == "distill" for steps in plan.values() for s in steps)
        if needs_teacher and not calibration:
            raise CommandError("the recipe's distill step fine-tunes on the calibration samples: give --calibration")
        teacher = copy.deepcopy(model) if needs_teacher else None  # distill: the float model is the teacher
        reports = apply_recipe(model, plan, calibration=calibration, teacher=teacher, train_data=calibration,
                               progress=progress)
        for report in reports:
            say(str(report))
    else:
        try:
            from .compress.budget import plan_for_budget
        except ImportError:
            raise CommandError("--budget: the budget search (slimkernels.compress.budget) is not in this build; "
                               "use --recipe") from None

        def outputs(m: nn.Module) -> torch.Tensor:  # what the search compares: outputs on the calibration data
            return torch.cat([model_output(m, b) for b in calibration or []])

        if not calibration:
            raise CommandError("--budget measures each layer on calibration data: give --calibration FILE")
        budget_plan = plan_for_budget(model, outputs, calibration, size=budget["size"], latency=budget["latency"],
                                      progress=progress)
        plan = budget_plan.steps
        if budget_plan.compressed is not None:  # the search applied its plan to a copy already
            model = budget_plan.compressed
        else:
            reports = apply_recipe(model, plan, calibration=calibration, progress=progress)
        say(budget_plan.explain())
        info.update({k: v for k, v in budget_plan.info.items() if k not in ("tool", "float")})
        info["budget"] = {**budget_plan.info.get("budget", {}), **budget}
    model.eval()

    measured = {"label": "recipe" if recipe is not None else "budget mix", "bytes": module_bytes(model),
                "quality": min_cosine(reference, model, held_out), "latency_ms": latency_ms(model, timing_batch)}
    info["chosen"] = {**measured, **info.get("chosen", {})}  # the search's own figures, where it has them
    info["chosen"]["held_out_quality"] = measured["quality"]
    layers = info.setdefault("layers", {})
    for name, entry in _layer_info(model, reports, plan).items():
        for key, value in entry.items():
            layers.setdefault(name, {}).setdefault(key, value)
    if recipe is not None:
        info["candidates"] = [{**info["chosen"], "chosen": True}]
    _save(model, args.out, args.entropy_coding, info)
    size = os.path.getsize(args.out)
    quality = "" if measured["quality"] is None else f"; {QUALITY_METRIC}: {measured['quality']:.4f}"
    say(f"wrote {args.out}: {size / 1e6:.3f} MB, float32 {float_bytes / 1e6:.3f} MB "
        f"({float_bytes / size:.2f}x smaller){quality}")


def main(argv: list[str]) -> int:
    """Exit codes: 0 done, 2 bad input (one line on stderr)."""
    try:
        args = _parser().parse_args(argv)
        run(args, print)
    except CommandError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:  # the passes' and the recipe's bad-input errors
        message = " ".join(str(exc).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    return 0
