"""plan_for_budget: the per-layer mix of compression methods that fits a size (and latency) budget with the
least damage to the model's outputs, for `slimkernels compress --budget`.

    plan = plan_for_budget(model, run, calibration, size=1/6)   # run(model) -> outputs on the calibration data
    print(plan.explain())
    model = plan.compressed                                      # the mix, built from the measured layers
    apply_recipe(model, plan.steps, calibration=calibration)     # or: the same steps by the real passes

How it chooses, in four stages:
  1. statistics: one calibration run over the float model (compress/calibration.py, block by block) collects
     every statistic the candidates ask for (GPTQ's and SVD-LLM's input Hessians, ...). With only one layer
     compressed at a time, every layer's inputs are the float model's, so these statistics are exact for
     stage 2.
  2. sensitivity: each candidate step is applied to ONE layer (convert_layer on a copy of the layer, swapped
     into the model and back: the model is never copied whole), and the model's outputs on the calibration
     data are compared with the float outputs. The error of a (layer, candidate) is the relative squared
     error ||y - y_float||^2 / ||y_float||^2: squared errors of independent perturbations add, so the sum
     over layers predicts the error of a mix (min cosine does not add up, so it is only reported). Its
     bytes are those of the converted layer (compress/report.module_bytes: exact, nothing estimated).
  3. choice: a multiple-choice knapsack, one option per layer (a candidate, or keeping the layer as it is),
     minimizing the summed error with the summed bytes within the budget: dynamic programming over a grid of
     DP_GRID byte cells, each option's bytes rounded UP to whole cells, so the plan never exceeds the budget
     (and gives away at most layers x budget / DP_GRID bytes). A latency budget is met by a Lagrangian
     penalty on each option's measured latency, bisected until the plan's summed latency fits.
  4. verification: the mix is built on a copy of the model from stage 2's converted layers (plan.compressed:
     no layer is converted twice) and its quality and bytes are measured; every uniform candidate (the same
     step on every layer) is measured the same way, for the report's Pareto plot. apply_recipe(model,
     plan.steps) converts the same layers by the real passes instead, which calibrate block by block on
     the outputs of the blocks already compressed (GPTQ, SVD-LLM, SparseGPT): close, not identical.

Latency (only with latency=): each converted layer is timed once, alone, on random inputs of the shape
its calibration inputs had (median of LATENCY_REPEATS calls); the budget is a fraction of the float
layers' summed time, so it speaks for the convertible layers, not the rest of the model.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import run_calibration, set_submodule
from .low_rank import _not_a_factor
from .passes import convert_layer
from .recipe import Step
from .report import module_bytes
from .skip import SkipLayer, candidate_layers

__all__ = ["BudgetPlan", "plan_for_budget", "default_candidates"]

QUALITY_METRIC = "min cosine vs float of the model outputs on the calibration batches"
ERROR_METRIC = "relative squared error of the model outputs on the calibration batches, only this layer compressed"
KEEP = "keep"  # the label of the option that leaves a layer as it is
DP_GRID = 8192  # byte cells of the knapsack (see the module docstring)
LATENCY_REPEATS = 5


def default_candidates() -> list[Step]:
    """The steps tried on every layer when plan_for_budget gets no candidates=: from ~8 bits down to
    ~3 bits a weight, by quantization, codebooks, low rank and 2:4 sparsity."""
    return [
        Step("quantize", {"mode": "w8a16"}),
        Step("quantize", {"mode": "w4a16", "group_size": 128, "method": "gptq"}),
        Step("quantize", {"mode": "codebook", "bits": 4, "codebook": "kmeans", "per": "row", "method": "gptq"}),
        Step("quantize", {"mode": "codebook", "bits": 3, "codebook": "kmeans", "per": "row", "method": "gptq"}),
        Step("low_rank", {"params": 1 / 6, "allocation": "uniform", "method": "svd-llm"}),
        Step("low_rank", {"params": 0.5, "allocation": "uniform", "method": "svd-llm", "factors": {"mode": "w8a16"}}),
        Step("sparsify", {"pattern": "2:4", "method": "sparsegpt", "values": "int8"}),
    ]


@dataclass
class _Option:
    """One way to store one layer: a candidate's index (None: keep the layer as it is), its bytes, the
    model-output error with only this layer changed, and its latency (us; 0 when not measured)."""

    candidate: Optional[int]
    bytes: int
    error: float
    latency_us: float = 0.0


@dataclass
class BudgetPlan:
    """What plan_for_budget chose. steps: {layer name: [Step]} for apply_recipe (layers kept as they are
    are absent); info: the measurements (keys of the `info` saved by `slimkernels compress`: "layers",
    "candidates", "chosen", "float", "budget", "quality_metric"); compressed: a copy of the model with the
    mix (what stage 4 measured; None when the plan was not verified); converted: {(layer name, candidate
    label): the layer as that candidate converted it in stage 2} (build(...) puts them together)."""

    steps: dict
    info: dict
    compressed: Optional[nn.Module] = field(default=None, repr=False)
    converted: dict = field(default_factory=dict, repr=False)

    def build(self, model: nn.Module, choice: dict) -> nn.Module:
        """A copy of `model` whose layers are replaced by copies of the converted layers `choice` names,
        {layer name: candidate label} (a label that did not apply to a layer, or "keep", keeps it)."""
        built = copy.deepcopy(model)
        for name, label in choice.items():
            if (name, label) in self.converted:
                set_submodule(built, name, copy.deepcopy(self.converted[name, label]))
        return built

    def explain(self) -> str:
        """Per layer what it got and why (its error, its bytes, what the next smaller option would have
        cost in error), then the totals against the budget and the measured quality."""
        info, budget = self.info, self.info["budget"]
        layers = info["layers"]
        width = max([len(n) for n in layers] + [5])
        label_width = max([len(v["steps"]) for v in layers.values()] + [6])
        lines = [f"budget: {budget['bytes']:,} B = {budget['bytes'] / info['float']['bytes']:.4f} of the "
                 f"{info['float']['bytes']:,} B float32 of {len(layers)} layers"
                 + (f", latency {budget['latency']:g} of float" if budget.get("latency") is not None else ""),
                 f"{'layer':<{width}}  {'choice':<{label_width}}  {'bytes':>11}  {'float32':>11}  {'error':>9}  why"]
        for name, v in layers.items():
            lines.append(f"{name:<{width}}  {v['steps']:<{label_width}}  {v['bytes']:>11,}  {v['float_bytes']:>11,}  "
                         f"{v['error']:>9.2e}  {v['why']}")
        chosen = info["chosen"]
        lines.append(f"total {chosen['bytes']:,} B = {chosen['bytes'] / info['float']['bytes']:.4f} of float32 "
                     f"({'within' if chosen['bytes'] <= budget['bytes'] else 'OVER'} the budget of {budget['bytes']:,} B); "
                     f"summed layer error {chosen['predicted_error']:.3e}"
                     + (f"; latency {chosen['latency_ms']:.3f} ms (float {info['float']['latency_ms']:.3f} ms)"
                        if chosen.get("latency_ms") is not None else ""))
        if chosen.get("quality") is not None:
            lines.append(f"measured ({info['quality_metric']}): budget mix {chosen['quality']:.5f}")
        fitting = [c for c in info["candidates"] if not c["chosen"] and c["bytes"] <= budget["bytes"]]
        if fitting:
            best = max(fitting, key=lambda c: c["quality"])
            lines.append(f"best uniform method within the budget: {best['label']} {best['quality']:.5f} "
                         f"at {best['bytes']:,} B")
        return "\n".join(lines)


# ---- arguments --------------------------------------------------------------------------------------
def _float32_bytes(module: nn.Module) -> int:
    """What `module` stores with its floating tensors in float32 (the budget's unit)."""
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in module.state_dict().values())


def _budget_bytes(size, float_bytes: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise TypeError(f"plan_for_budget: size must be a fraction of the float32 bytes (0 < size <= 1) or an int "
                        f"number of bytes, got {size!r}")
    if isinstance(size, int):
        if size < 1:
            raise ValueError(f"plan_for_budget: size in bytes must be >= 1, got {size}")
        return size
    if not 0 < size <= 1:
        raise ValueError(f"plan_for_budget: size as a fraction of the float32 bytes must be in (0, 1], got {size!r} "
                         "(give an int for a number of bytes)")
    return int(size * float_bytes)


def _check_candidates(candidates) -> list[Step]:
    if candidates is None:
        return default_candidates()
    candidates = list(candidates)
    if not candidates:
        raise ValueError("plan_for_budget: candidates is empty; give Step(...) objects or None for the defaults")
    for step in candidates:
        if not isinstance(step, Step):
            raise TypeError(f"plan_for_budget: candidates must be slimkernels.compress.recipe.Step objects, got "
                            f"{type(step).__name__} ({step!r})")
        if step.pass_name not in ("quantize", "sparsify", "low_rank", "hash"):
            raise ValueError(f"plan_for_budget: a candidate converts one layer; {step.pass_name!r} is not such a pass "
                             "(quantize, sparsify, low_rank, hash)")
        step.config()  # the options' errors now, not after the statistics
    labels = [step.describe() for step in candidates]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"plan_for_budget: candidates repeat {', '.join(map(repr, repeated))}; give each once")
    return candidates


# ---- measuring ------------------------------------------------------------------------------------
@torch.no_grad()
def _outputs(run: Callable, model: nn.Module) -> torch.Tensor:
    out = run(model)
    if not isinstance(out, torch.Tensor) or out.numel() == 0:
        raise TypeError(f"plan_for_budget: run(model) must return a non-empty Tensor of outputs, got "
                        f"{type(out).__name__}")
    return out.detach().float().reshape(out.shape[0], -1) if out.dim() > 1 else out.detach().float().reshape(1, -1)


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out - reference).square().sum() / reference.square().sum().clamp(min=1e-30))


def _min_cosine(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(out, reference, dim=1).min())


def _layer_statistics(model, targets, configs, calibration, progress) -> dict[str, dict]:
    """{layer: {stat: value}} of the float model for every statistic any candidate asks for."""
    wanted: dict[str, Callable] = {}
    for config in configs:
        for stat, make in config.collectors().items():
            wanted.setdefault(stat, make)  # one statistic per name: the passes share collectors by name
    if not wanted:
        return {}
    if calibration is None:
        raise ValueError("plan_for_budget: the candidates need calibration data (GPTQ, SVD-LLM, SparseGPT, ...): "
                         "pass calibration=<list of model inputs>")
    stats: dict[str, dict] = {}

    def keep(block):
        for name in block.layers:
            stats[name] = block.results(name)

    run_calibration(model, targets, calibration, wanted, keep, progress=progress, fn="plan_for_budget",
                    desc="budget: statistics")
    return stats


def _convert(layer: nn.Module, config, stats: Optional[dict]) -> Optional[nn.Module]:
    """`config` applied to a copy of `layer` (a pass's fallback when no data reached it), or None when the
    config leaves this layer as it is."""
    wanted = config.collectors()
    if wanted and stats is None:
        fallback = config.uncalibrated()
        if fallback is None:
            return None
        config, wanted = fallback[0], {}
    try:
        return convert_layer(copy.deepcopy(layer), config, **{k: stats[k] for k in wanted})
    except SkipLayer:
        return None


def _input_rows(model, run, targets) -> dict[str, int]:
    """Rows of each layer's first input during run(model) (the shape its latency is timed at)."""
    rows: dict[str, int] = {}

    def hook(name):
        def record(module, args):
            if args and isinstance(args[0], torch.Tensor):
                rows.setdefault(name, args[0].numel() // args[0].shape[-1])
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in targets.items()]
    try:
        _outputs(run, model)
    finally:
        for h in handles:
            h.remove()
    return rows


@torch.inference_mode()
def _latency_us(module: nn.Module, rows: int, like: torch.Tensor) -> float:
    x = torch.randn(rows, like.shape[1], dtype=like.dtype, device=like.device)
    from ..bench.timing import median_call_ms  # lazily: slimkernels.bench imports the package

    return median_call_ms(lambda: module(x), LATENCY_REPEATS) * 1e3


# ---- choosing -------------------------------------------------------------------------------------
def _cells(nbytes: int, capacity: int) -> int:
    return -(-nbytes * DP_GRID // capacity)  # rounded up: a plan within DP_GRID cells is within the budget


def _knapsack(options: list[list[_Option]], capacity: int, penalty: float = 0.0) -> Optional[list[int]]:
    """Per layer the index of its option minimizing sum(error + penalty * latency) with
    sum(bytes) <= capacity (DP over DP_GRID cells); None when no choice fits."""
    best = torch.zeros(DP_GRID + 1, dtype=torch.float64)  # best[g]: least cost of the layers so far in <= g cells
    picks = []
    for layer_options in options:
        new = torch.full_like(best, math.inf)
        pick = torch.full((DP_GRID + 1,), -1, dtype=torch.int32)
        for j, option in enumerate(layer_options):
            w = _cells(option.bytes, capacity)
            if w > DP_GRID:
                continue
            cost = torch.full_like(best, math.inf)
            cost[w:] = best[: DP_GRID + 1 - w] + (option.error + penalty * option.latency_us)
            better = cost < new
            new = torch.where(better, cost, new)
            pick[better] = j
        best = new
        picks.append(pick)
    if not math.isfinite(float(best[DP_GRID])):
        return None
    g, chosen = DP_GRID, []
    for layer_options, pick in zip(reversed(options), reversed(picks)):
        j = int(pick[g])
        chosen.append(j)
        g -= _cells(layer_options[j].bytes, capacity)
    return chosen[::-1]


def _choose(options: list[list[_Option]], capacity: int, latency_cap: Optional[float]) -> list[int]:
    """The knapsack's choice; with a latency cap, the smallest penalty on latency whose choice meets it."""
    chosen = _knapsack(options, capacity)
    if chosen is None:  # the rounding to cells can refuse a budget the smallest options just meet
        chosen = [min(range(len(o)), key=lambda j: o[j].bytes) for o in options]
    if latency_cap is None:
        return chosen

    def latency(choice):
        return sum(o[j].latency_us for o, j in zip(options, choice))

    if latency(chosen) <= latency_cap:
        return chosen
    low, high = 0.0, max(max(x.error for x in o) for o in options) / max(latency_cap, 1e-9) + 1e-12
    fast = _knapsack(options, capacity, high)
    while latency(fast) > latency_cap and high < 1e12:
        low, high = high, high * 10
        fast = _knapsack(options, capacity, high)
    if latency(fast) > latency_cap:
        raise ValueError(f"plan_for_budget: no mix within the size budget meets the latency budget of "
                         f"{latency_cap:.1f} us; the fastest reachable is {latency(fast):.1f} us")
    for _ in range(40):  # bisect the penalty: the least-error choice that still meets the cap
        middle = (low + high) / 2
        choice = _knapsack(options, capacity, middle)
        if latency(choice) <= latency_cap:
            high, fast = middle, choice
        else:
            low = middle
    return fast


def _why(options: list[_Option], j: int, labels: list[str]) -> str:
    """Why option j of a layer: the error the best smaller option would have added, for how many bytes saved."""
    mine = options[j]
    smaller = [o for o in options if o.bytes < mine.bytes]
    if not smaller:
        return "the smallest option"
    best = min(smaller, key=lambda o: o.error)
    return (f"best smaller: {_label(best, labels)} would save {mine.bytes - best.bytes:,} B for "
            f"+{best.error - mine.error:.2e} error")


def _label(option: _Option, labels: list[str]) -> str:
    return KEEP if option.candidate is None else labels[option.candidate]


# ---- the search -----------------------------------------------------------------------------------
def plan_for_budget(model: nn.Module, run: Callable[[nn.Module], torch.Tensor], calibration: Optional[Iterable],
                    size=None, latency: Optional[float] = None, candidates: Optional[Sequence[Step]] = None,
                    progress: bool = True, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
                    verify: bool = True) -> BudgetPlan:
    """Choose per layer one of `candidates` (default: default_candidates()) or keeping it, so that the
    convertible layers (nn.Linear accepted by filter_fn, not inside a compressed module) fit `size` and
    `latency` with the least predicted error (module docstring). The model is left as it is.

    run: run(model) -> Tensor, the model's outputs on the calibration data ([samples, ...]; the quality
      signal: its relative squared error ranks the options, its per-sample min cosine is reported).
    calibration: the batches the passes calibrate on (a list of model inputs, as quantize_ takes them).
    size: a fraction in (0, 1] of the convertible layers' float32 bytes, or an int number of bytes.
    latency: a fraction (> 0) of the convertible layers' float latency, measured per layer (module docstring).
    verify: build the mix (plan.compressed) and measure it and the uniform candidates (stage 4).
    ValueError when no mix reaches the budget, naming the closest reachable size."""
    if size is None and latency is None:
        raise ValueError("plan_for_budget: give size= (fraction of float32 bytes, or bytes) and/or latency=")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float)) or latency <= 0):
        raise ValueError(f"plan_for_budget: latency must be a fraction > 0 of the float latency, got {latency!r}")
    if not callable(run):
        raise TypeError(f"plan_for_budget: run must be callable as run(model) -> Tensor, got {type(run).__name__}")
    candidates = _check_candidates(candidates)
    configs = [step.config() for step in candidates]
    labels = [step.describe() for step in candidates]
    if calibration is not None and not isinstance(calibration, (list, tuple)):
        calibration = list(calibration)  # read by the statistics and again by the verification
    targets = candidate_layers(model, _not_a_factor(model, filter_fn))
    if not targets:
        raise ValueError("plan_for_budget: the model has no nn.Linear layer to compress (or filter_fn took none)")
    float_bytes = {name: _float32_bytes(m) for name, m in targets.items()}
    total_float = sum(float_bytes.values())
    capacity = _budget_bytes(size, total_float) if size is not None else sum(module_bytes(m) for m in targets.values())

    reference = _outputs(run, model)
    stats = _layer_statistics(model, targets, configs, calibration, progress)
    rows = _input_rows(model, run, targets) if latency is not None else {}
    options: list[list[_Option]] = []
    converted: dict[tuple[str, int], nn.Module] = {}  # (layer, candidate) -> its converted copy
    bar = tqdm(total=len(targets) * len(configs), desc="budget: sensitivity", unit="try", disable=not progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the passes' per-layer notes; stage 4's real passes give them
        for name, layer in targets.items():
            like = layer.weight
            keep = _Option(None, module_bytes(layer), 0.0,
                           _latency_us(layer, rows.get(name, 1), like) if latency is not None else 0.0)
            layer_options = [keep]
            for i, config in enumerate(configs):
                bar.update()
                new = _convert(layer, config, stats.get(name))
                if new is None:
                    continue
                set_submodule(model, name, new)
                try:
                    error = _relative_error(_outputs(run, model), reference)
                finally:
                    set_submodule(model, name, layer)
                converted[name, i] = new
                layer_options.append(_Option(i, module_bytes(new), error,
                                             _latency_us(new, rows.get(name, 1), like) if latency is not None else 0.0))
            options.append(layer_options)
    bar.close()

    smallest = sum(min(o.bytes for o in layer_options) for layer_options in options)
    if smallest > capacity:
        raise ValueError(f"plan_for_budget: the size budget of {capacity:,} B ({capacity / total_float:.4f} of the "
                         f"{total_float:,} B float32 of {len(targets)} layers) cannot be met: the smallest candidate of "
                         f"every layer totals {smallest:,} B ({smallest / total_float:.4f}), the closest reachable size")
    float_latency = sum(o[0].latency_us for o in options) if latency is not None else None
    chosen = _choose(options, capacity, None if latency is None else latency * float_latency)

    names = list(targets)
    picked = [layer_options[j] for layer_options, j in zip(options, chosen)]
    steps = {name: [candidates[o.candidate]] for name, o in zip(names, picked) if o.candidate is not None}
    ms = (lambda us: us / 1e3) if latency is not None else (lambda us: None)
    info = {
        "tool": "slimkernels compress",
        "budget": {"size": size if isinstance(size, float) else None, "bytes": capacity, "latency": latency},
        "quality_metric": QUALITY_METRIC,
        "error_metric": ERROR_METRIC,
        "float": {"bytes": total_float, "quality": 1.0, "latency_ms": ms(float_latency or 0.0)},
        "layers": {name: {"steps": _label(o, labels), "bytes": o.bytes, "float_bytes": float_bytes[name],
                          "error": o.error, "latency_us": o.latency_us if latency is not None else None,
                          "why": _why(layer_options, j, labels),
                          "options": [{"steps": _label(x, labels), "bytes": x.bytes, "error": x.error}
                                      for x in layer_options]}
                   for name, o, layer_options, j in zip(names, picked, options, chosen)},
        "candidates": [],
        "chosen": {"label": "budget mix", "bytes": sum(o.bytes for o in picked), "quality": None,
                   "predicted_error": sum(o.error for o in picked),
                   "latency_ms": ms(sum(o.latency_us for o in picked))},
    }
    plan = BudgetPlan(steps, info, converted={(name, labels[i]): m for (name, i), m in converted.items()})
    if not verify:
        return plan
    info["candidates"] = _uniform_candidates(model, run, reference, targets, options, converted, labels, ms)
    compressed = plan.build(model, {name: info["layers"][name]["steps"] for name in names})
    out = _outputs(run, compressed)
    measured = sum(module_bytes(compressed.get_submodule(name)) for name in names)
    info["chosen"].update(quality=_min_cosine(out, reference), error=_relative_error(out, reference), bytes=measured)
    info["candidates"].append({**info["chosen"], "chosen": True})
    if measured > capacity:
        raise AssertionError(f"plan_for_budget: the mix takes {measured:,} B, over the budget of {capacity:,} B")
    plan.compressed = compressed
    return plan


def _uniform_candidates(model, run, reference, targets, options, converted, labels, ms) -> list[dict]:
    """Each candidate on every layer it applies to (stage 2's converted layers swapped in together):
    label, bytes, quality (min cosine), error, latency."""
    out = []
    for i, label in enumerate(labels):
        swapped = {name: converted[name, i] for name in targets if (name, i) in converted}
        if not swapped:
            continue
        for name, new in swapped.items():
            set_submodule(model, name, new)
        try:
            outputs = _outputs(run, model)
        finally:
            for name, layer in targets.items():
                set_submodule(model, name, layer)
        per_layer = [next((o for o in layer_options if o.candidate == i), layer_options[0]) for layer_options in options]
        out.append({"label": f"uniform {label}", "bytes": sum(o.bytes for o in per_layer),
                    "quality": _min_cosine(outputs, reference), "error": _relative_error(outputs, reference),
                    "latency_ms": ms(sum(o.latency_us for o in per_layer)), "chosen": False})
    return out
