"""Pruning schedules that run inside your own training loop: masks that grow while the model fine-tunes,
then a convert() into the sparse modules.

    schedule = PruningSchedule(model, SparsityConfig(sparsity=0.8), kind="gradual", start=100, end=1000,
                               frequency=100, optimizer=opt)
    for step in range(total_steps):
        loss = ...; loss.backward(); opt.step(); opt.zero_grad()
        if not schedule.done:
            schedule.step()
    report = schedule.convert()        # SparseLinear / SparseConv2d (or dense with zeros: sparse_modules=False)

Kinds (each call of step() is one training step t = 0, 1, 2, ...; the masks are updated at the steps
start, start + frequency, ... up to `end`, and at `end`):
  "one_shot"   the final sparsity at `start` (end defaults to start); fine-tune after it.
  "iterative"  the classic magnitude recipe (Han et al. 2015): every update prunes the same fraction of
               the weights still there, s_k = 1 - (1 - s_f)^(k / n) at the k-th of n updates, the model
               fine-tuning in between.
  "gradual"    Zhu & Gupta's cubic ramp (2017): s_t = s_f + (s_i - s_f) (1 - (t - start) / (end - start))^3,
               s_i = initial_sparsity.
The layers, the pattern and how sparsity is compared come from a SparsityConfig (its `sparsity` is the
final one): "unstructured" (per row or per layer, or one global magnitude threshold with
scope="global"), "block" tiles and "2:4" / "4:8" N:M (ramped by the fraction of groups held to the
pattern; see prune/masks.py). Pruning is by magnitude: the weights that trained smallest go first, and a
weight once pruned stays pruned.

Keeping the masks during fine-tuning, on the nn.Parameter itself (so a FakeQuantLinear that
prepare_qat_ builds on the same Parameter, before or after the schedule, is masked alike):
  - a gradient hook zeroes the gradient of every pruned weight;
  - the pruned weights are set back to zero after every optimizer step: by a post-step hook of
    `optimizer` when you pass it (and its momentum / Adam moments at pruned positions are cleared at
    each update, so they cannot revive them), and by step() / apply_masks() otherwise. Without
    `optimizer=`, call step() right after optimizer.step(); once the schedule is done, call
    apply_masks() there instead (momentum would otherwise move pruned weights off zero).
Stepping past `end` is an error (RuntimeError): the schedule is over, its masks stay in force until
convert().

With QAT: prepare_qat_(model, Int4WeightOnlyConfig(...)) and the schedule may come in either order;
train; then schedule.convert() (the FakeQuantLinear layers keep the zeros in their shared weight and stay
FakeQuantLinear) and convert_(model). Round-to-nearest int8 and int4 keep a zero weight exactly zero:
symmetric formats encode it as the zero code, slimkernels' asymmetric int4 rounds its zero point to an
integer code z and stores 0 as q = z, dequantized (z - z) * s = 0. Codebook formats keep it only if
the codebook holds 0 (convert() checks and warns). Calling convert_(model) before schedule.convert() works
too (convert() then only drops the hooks, and checks the zeros of the QuantLinear).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..compress.calibration import set_submodule
from ..compress.config import SparsityConfig
from ..compress.passes import user_stacklevel, warn_skipped
from ..compress.report import CompressionReport, LayerRecord, module_bytes
from ..compress.skip import skip_reason
from ..nn.base import CompressedModule
from ..nn.fake_quant_linear import FakeQuantLinear
from ..quant.pruning import NM_PATTERNS
from ..quant.sparse import is_nm
from .api import StructuredPruningConfig, prune_
from .masks import grow_masks, weight_matrix

KINDS = ("one_shot", "iterative", "gradual")

__all__ = ["PruningSchedule", "StructuredPruningSchedule", "KINDS", "gradual_sparsity", "iterative_sparsity",
           "update_steps"]


def gradual_sparsity(step: int, start: int, end: int, initial: float, final: float) -> float:
    """Zhu & Gupta's cubic ramp at `step` (initial before start, final from end on)."""
    progress = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def iterative_sparsity(update: int, updates: int, final: float) -> float:
    """The sparsity after the update-th of `updates` updates that each prune the same fraction of the
    weights left: 1 - (1 - final)^(update / updates)."""
    return 1.0 - (1.0 - final) ** (update / updates)


def update_steps(start: int, end: int, frequency: int) -> list[int]:
    """The steps at which masks are updated: start, start + frequency, ... (up to end), and end."""
    steps = list(range(start, end + 1, frequency))
    return steps if steps[-1] == end else steps + [end]


@dataclass
class _MaskedLayer:
    """One pruned layer: its name, the Parameter the masks act on, the keep mask (None: nothing pruned
    yet) and the gradient hook's handle."""

    name: str
    weight: nn.Parameter
    keep: Optional[torch.Tensor] = None
    grad_hook: object = None


def _check_int(fn: str, name: str, value, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{fn}: {name} must be an int >= {low}, got {value!r}")
    return value


class _StepSchedule:
    """What every schedule shares: its kind, steps and updates, step() counting the training steps, the
    amount pruned at each update (a sparsity, or a structured ratio) and the error past the end.
    Subclasses define _update(amount) and may check things before each step (_before_step)."""

    def __init__(self, final: float, kind: str, start: int, end: Optional[int], frequency: int, initial: float):
        fn = type(self).__name__
        if kind not in KINDS:
            raise ValueError(f"{fn}: kind must be one of {KINDS}, got {kind!r}")
        start = _check_int(fn, "start", start, 0)
        frequency = _check_int(fn, "frequency", frequency, 1)
        if kind == "one_shot":
            if end is not None and end != start:
                raise ValueError(f"{fn}: a one_shot schedule prunes once, at start={start}; leave end=None, got "
                                 f"end={end!r}")
            end = start
        else:
            if end is None:
                raise ValueError(f"{fn}: a {kind} schedule needs end (the step of its last update)")
            end = _check_int(fn, "end", end, 0)
            if start >= end:
                raise ValueError(f"{fn}: start must be < end for a {kind} schedule, got start={start}, end={end}")
        if not isinstance(initial, (int, float)) or isinstance(initial, bool) or not 0 <= initial <= final:
            raise ValueError(f"{fn}: the initial amount (initial_sparsity) must be a number in [0, final {final:g}], "
                             f"got {initial!r}")
        if initial and kind != "gradual":
            raise ValueError(f"{fn}: initial_sparsity is the gradual ramp's s_i; a {kind} schedule starts from 0")
        self.kind, self.start, self.end, self.frequency = kind, start, end, frequency
        self._initial, self._final = float(initial), float(final)
        self._updates = [start] if kind == "one_shot" else update_steps(start, end, frequency)
        self.step_count = 0
        self._amount = 0.0  # of the last update

    @property
    def done(self) -> bool:
        """Whether every update has been made (step() past `end` is an error)."""
        return self.step_count > self.end

    def _target(self, step: int) -> float:
        """The amount (sparsity or ratio) an update made at `step` prunes to."""
        if self.kind == "one_shot":
            return self._final
        if self.kind == "gradual":
            return gradual_sparsity(step, self.start, self.end, self._initial, self._final)
        made = sum(1 for t in self._updates if t <= step)
        return iterative_sparsity(made, len(self._updates), self._final)

    def step(self) -> bool:
        """One training step: at an update step, prune to the schedule's amount at this step. Returns
        whether the model was pruned. RuntimeError once the schedule is done."""
        fn = f"{type(self).__name__}.step"
        self._check_open("step")
        if self.done:
            raise RuntimeError(f"{fn}: the schedule ended at step {self.end} (schedule.done); stop calling step(), or "
                               f"build the schedule with a later end. {self._after_end}")
        self._before_step()
        pruned = self.step_count in self._updates
        if pruned:
            self._update(self._target(self.step_count))
        self._after_step()
        self.step_count += 1
        return pruned

    _after_end = ""

    def _check_open(self, fn: str) -> None:
        """Raise when the schedule can no longer be used (converted)."""

    def _before_step(self) -> None:
        pass

    def _after_step(self) -> None:
        pass

    def _update(self, amount: float) -> None:
        raise NotImplementedError

    def _settings(self) -> dict:
        return {"kind": self.kind, "start": self.start, "end": self.end, "frequency": self.frequency,
                "initial": self._initial, "final": self._final}

    def _check_settings(self, state, fn: str, needed: tuple = ()) -> None:
        if not isinstance(state, dict) or any(key not in state for key in ("step_count", *needed)):
            raise ValueError(f"{fn}: expected a dict from {type(self).__name__}.state_dict(), got "
                             f"{type(state).__name__}")
        for key, value in self._settings().items():
            if state.get(key) != value:
                raise ValueError(f"{fn}: the saved schedule has {key}={state.get(key)!r}, this one {value!r}; "
                                 "build the schedule with the settings it was saved with")


class PruningSchedule(_StepSchedule):
    """Masks that grow with the training steps (see the module docstring for the kinds, the masks'
    upkeep and QAT).

    model: the nn.Module to prune in place. config: a SparsityConfig (method="magnitude"; its sparsity is
      the final sparsity; pattern, per, scope, block, conv, min_features, values as in sparsify_).
    kind: "one_shot", "iterative" or "gradual". start, end: the first and last update steps (end > start
      for iterative and gradual; one_shot: end None or start). frequency: steps between updates (>= 1).
    initial_sparsity: gradual's s_i (in [0, final]).
    optimizer: the torch optimizer training the model; masks are re-applied after each of its steps.
    filter_fn(module, name): which nn.Linear / nn.Conv2d layers to prune (all, by default).
    """

    def __init__(self, model: nn.Module, config: Optional[SparsityConfig] = None, kind: str = "gradual",
                 start: int = 0, end: Optional[int] = None, frequency: int = 1, initial_sparsity: float = 0.0,
                 optimizer: Optional[torch.optim.Optimizer] = None,
                 filter_fn: Optional[Callable[[nn.Module, str], bool]] = None):
        fn = "PruningSchedule"
        if not isinstance(model, nn.Module):
            raise TypeError(f"{fn}: model must be an nn.Module, got {type(model).__name__}")
        config = SparsityConfig() if config is None else config
        if not isinstance(config, SparsityConfig):
            raise TypeError(f"{fn}: config must be a SparsityConfig, got {type(config).__name__}")
        if config.method != "magnitude":
            raise ValueError(f"{fn}: schedules prune by magnitude (the weights as they train); got method="
                             f"{config.method!r}: use SparsityConfig(method='magnitude'), or sparsify_ for one-shot "
                             "wanda / sparsegpt")
        if config.allocation != "uniform":
            raise ValueError(f"{fn}: allocation={config.allocation!r} needs calibration data; schedules take "
                             "allocation='uniform' (scope='global' gives one magnitude threshold over the layers)")
        super().__init__(config.sparsity, kind, start, end, frequency, initial_sparsity)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{fn}: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")

        self.model, self.config = model, config
        self._converted = False
        self._layers, self._skipped = self._find_layers(model, config, filter_fn)
        for layer in self._layers:
            layer.grad_hook = layer.weight.register_hook(self._gradient_hook(layer))
        self.optimizer = optimizer
        self._optimizer_hook = None if optimizer is None else optimizer.register_step_post_hook(
            lambda *_: self.apply_masks())

    # ---- layers ----------------------------------------------------------------------------------------
    @staticmethod
    def _find_layers(model: nn.Module, config: SparsityConfig, filter_fn):
        """([_MaskedLayer], {name: why skipped}); ValueError when the pattern does not fit a layer or no
        layer is left to prune."""
        types = config.layer_types
        layers, skipped, misfit = [], {}, []
        for name, module in model.named_modules():
            fake_quant = isinstance(module, FakeQuantLinear) and nn.Linear in types
            if not (type(module) in types or fake_quant) or (filter_fn is not None and not filter_fn(module, name)):
                continue
            own = config.skip_reason(module)
            if own is not None:
                misfit.append(f"{name} ({own})")
                continue
            why = skip_reason(module, config)
            if why is not None:
                skipped[name] = why
                warn_skipped("PruningSchedule", name, why, stacklevel=user_stacklevel())
                continue
            owner = next((layer.name for layer in layers if layer.weight is module.weight), None)
            if owner is not None:  # tied weights: one mask, kept through the first layer holding them
                skipped[name] = f"shares its weight with {owner} (masked there; stays dense at convert)"
                continue
            layers.append(_MaskedLayer(name, module.weight))
        if misfit:
            raise ValueError(f"PruningSchedule: {config.describe()} does not fit {len(misfit)} layer(s): "
                             f"{', '.join(misfit)}; leave them out with filter_fn=lambda module, name: ...")
        if not layers:
            what = " or ".join("nn." + t.__name__ for t in types)
            why = f"; skipped: {skipped}" if skipped else (" that filter_fn accepts" if filter_fn else "")
            raise ValueError(f"PruningSchedule: the model has no {what} layer to prune{why}")
        return layers, skipped

    @staticmethod
    def _gradient_hook(layer: _MaskedLayer):
        def zero_pruned(grad: torch.Tensor) -> torch.Tensor:
            return grad if layer.keep is None else grad.masked_fill(~layer.keep, 0)

        return zero_pruned

    def _check_layers(self, fn: str) -> None:
        """Each masked Parameter must still be its layer's weight (convert_, sparsify_ or a structured
        prune replaces layers; the masks would then act on a Parameter nothing uses)."""
        for layer in self._layers:
            module = self.model.get_submodule(layer.name)
            if getattr(module, "weight", None) is not layer.weight:
                raise RuntimeError(f"PruningSchedule.{fn}: layer {layer.name} no longer holds the weight this schedule "
                                   f"masks (it is now a {type(module).__name__}; convert_, sparsify_ or a structured "
                                   "prune replaced it); finish the schedule first, then schedule.convert() and "
                                   "convert_(model)")

    def _check_open(self, fn: str) -> None:
        if self._converted:
            raise RuntimeError(f"PruningSchedule.{fn}: the schedule was converted; its masks and hooks are gone")

    # ---- state ---------------------------------------------------------------------------------------------
    @property
    def sparsity(self) -> float:
        """The target sparsity of the last update (0 before the first)."""
        return self._amount

    @property
    def final_sparsity(self) -> float:
        return self._final

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """{layer name: keep mask (bool, the weight's shape)} of the layers pruned so far."""
        return {layer.name: layer.keep for layer in self._layers if layer.keep is not None}

    def layer_sparsities(self) -> dict[str, float]:
        """{layer name: fraction of its weight that is zero}, measured."""
        return {layer.name: float((layer.weight == 0).sum()) / layer.weight.numel() for layer in self._layers}

    def target_sparsity(self, step: int) -> float:
        """The sparsity the schedule prunes to at an update made at `step`."""
        return self._target(step)

    # ---- the loop ----------------------------------------------------------------------------------------
    _after_end = ("The masks stay in force until convert(); without optimizer=, call apply_masks() after each "
                  "optimizer step while you keep fine-tuning.")

    def _before_step(self) -> None:
        self._check_layers("step")

    def _after_step(self) -> None:
        self.apply_masks()

    @torch.no_grad()
    def _update(self, sparsity: float) -> None:
        """Grow the masks to `sparsity`."""
        c = self.config
        keeps = grow_masks([layer.weight for layer in self._layers], [layer.keep for layer in self._layers], sparsity,
                           c.pattern, c.per, c.scope, c.block)
        for layer, keep in zip(self._layers, keeps):
            layer.keep = keep
        self._amount = sparsity
        self._clear_optimizer_state()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Set every pruned weight back to zero."""
        for layer in self._layers:
            if layer.keep is not None:
                layer.weight.masked_fill_(~layer.keep, 0)

    @torch.no_grad()
    def _clear_optimizer_state(self) -> None:
        """Zero the optimizer's per-weight state (momentum, Adam moments) at pruned positions, so that
        nothing pushes a pruned weight after its mask is set."""
        if self.optimizer is None:
            return
        for layer in self._layers:
            for value in self.optimizer.state.get(layer.weight, {}).values():
                if layer.keep is not None and isinstance(value, torch.Tensor) and value.shape == layer.weight.shape:
                    value.masked_fill_(~layer.keep, 0)

    # ---- resume ------------------------------------------------------------------------------------------
    def _settings(self) -> dict:
        return {**super()._settings(), "pattern": self.config.pattern}

    def state_dict(self) -> dict:
        """What resuming needs: the settings (checked on load), the step count, the sparsity and the masks."""
        masks = {layer.name: None if layer.keep is None else layer.keep.clone() for layer in self._layers}
        return {**self._settings(), "step_count": self.step_count, "sparsity": self._amount, "masks": masks}

    def load_state_dict(self, state: dict) -> None:
        """Resume from state_dict() on a schedule built with the same settings over the same layers (the
        model's weights come from its own state_dict); the pruned weights are zeroed again."""
        fn = "PruningSchedule.load_state_dict"
        self._check_open("load_state_dict")
        self._check_settings(state, fn, ("masks", "sparsity"))
        names = [layer.name for layer in self._layers]
        if sorted(state["masks"]) != sorted(names):
            raise ValueError(f"{fn}: the saved masks are for layers {sorted(state['masks'])}, this schedule prunes "
                             f"{sorted(names)}")
        for layer in self._layers:
            keep = state["masks"][layer.name]
            if keep is not None and (keep.dtype != torch.bool or keep.shape != layer.weight.shape):
                raise ValueError(f"{fn}: the mask of {layer.name} must be a bool tensor of shape "
                                 f"{tuple(layer.weight.shape)}, got {keep.dtype} {tuple(keep.shape)}")
        for layer in self._layers:
            keep = state["masks"][layer.name]
            layer.keep = None if keep is None else keep.to(layer.weight.device)
        self.step_count = int(state["step_count"])
        self._amount = float(state["sparsity"])
        self.apply_masks()
        self._clear_optimizer_state()

    # ---- the end -----------------------------------------------------------------------------------------
    def remove_hooks(self) -> None:
        """Drop the gradient and optimizer hooks (convert() does it)."""
        for layer in self._layers:
            if layer.grad_hook is not None:
                layer.grad_hook.remove()
                layer.grad_hook = None
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
            self._optimizer_hook = None

    @torch.no_grad()
    def convert(self, sparse_modules: bool = True, progress: bool = True) -> CompressionReport:
        """End the schedule: zero the pruned weights a last time, drop the hooks and, with sparse_modules,
        replace each pruned nn.Linear / nn.Conv2d by SparseLinear / SparseConv2d.from_dense (which run dense
        where the sparse kernel would be slower: their dense_from_m / runs_dense). A FakeQuantLinear keeps
        its zeros in its weight and stays one (convert_(model) next); a layer convert_ already made a
        QuantLinear is checked and left. sparse_modules=False leaves dense layers holding zeros.
        Returns the CompressionReport, a line per layer."""
        self._check_open("convert")
        if not self.done:
            warnings.warn(f"PruningSchedule.convert: the schedule is at step {self.step_count} of {self.end}, sparsity "
                          f"{self._amount:.3f} of {self.final_sparsity:g}", stacklevel=user_stacklevel())
        self.apply_masks()
        self.remove_hooks()
        self._converted = True
        report = CompressionReport(method=f"PruningSchedule ({self.kind}, {self.config.describe()})",
                                   model_bytes_before=module_bytes(self.model))
        moved = []  # layers whose quantized weight is not zero where pruned
        for layer in tqdm(self._layers, desc="convert", unit="layer", disable=not progress or len(self._layers) < 8):
            module = self.model.get_submodule(layer.name)
            before = module_bytes(module)
            zeros = f"{100 * float((weight_matrix(layer.weight) == 0).float().mean()):.1f}% zeros"
            if isinstance(module, (FakeQuantLinear, CompressedModule)):
                fake = isinstance(module, FakeQuantLinear)
                quantized = module.quantized_weight() if fake else module.dequantized_weight()
                keep = weight_matrix(layer.keep) if layer.keep is not None else None
                if keep is not None and bool((weight_matrix(quantized)[~keep] != 0).any()):
                    moved.append(layer.name)
                what = ("FakeQuantLinear kept, convert_(model) next" if fake
                        else f"already a {type(module).__name__} (convert_ ran first)")
                detail = f"{zeros}, {what}"
                new = module
            elif sparse_modules:
                new = self._sparse_module(module)
                summary = getattr(new, "policy", None) or getattr(new, "format_summary", lambda: type(new).__name__)()
                detail = f"{zeros}, {summary}"
                set_submodule(self.model, layer.name, new)
            else:
                detail, new = f"{zeros}, dense", module
            report.layers.append(LayerRecord(layer.name, type(module).__name__, "converted", detail, before,
                                             module_bytes(new)))
        for name, why in self._skipped.items():
            size = module_bytes(self.model.get_submodule(name))
            report.layers.append(LayerRecord(name, type(self.model.get_submodule(name)).__name__, "skipped", why,
                                             size, size))
        if not sparse_modules:
            report.note = ("sparse_modules=False: the pruned layers stay dense nn.Linear / nn.Conv2d holding zeros (no "
                           "memory or speed gain yet; SparseLinear.from_float / SparseConv2d.from_float pack them)")
        if moved:
            warnings.warn(f"PruningSchedule.convert: quantization moved pruned weights off zero in {moved} (a codebook "
                          "without a zero entry?); the sparsity there is lost", stacklevel=user_stacklevel())
        report.model_bytes_after = module_bytes(self.model)
        return report

    def _sparse_module(self, module: nn.Module) -> nn.Module:
        from ..nn import SparseConv2d, SparseLinear
        from ..nn.sparse_conv import resolve_padding

        weight = module.weight.detach()
        bias = None if module.bias is None else module.bias.detach()
        c = self.config
        if isinstance(module, nn.Conv2d):
            return SparseConv2d.from_dense(weight, bias, module.stride, resolve_padding(module), module.dilation,
                                           module.groups, c.values)
        fmt = c.format
        m = NM_PATTERNS.get(c.pattern)
        if m is not None and not is_nm(weight, m):  # converted before the ramp reached every group
            fmt = "csr"
        return SparseLinear.from_dense(weight, bias, format=fmt, values=c.values,
                                       block=c.block if fmt == "bsr" else None)


class StructuredPruningSchedule(_StepSchedule):
    """prune_ driven by step(): the model physically shrinks at each update while it fine-tunes.

    config: a StructuredPruningConfig; its ratio is the final fraction of each group's original units
      removed (scope="layer"; with scope="global", of all selected units). At an update to ratio r_t, prune_
      removes the fraction 1 - (1 - r_t) / (1 - r_prev) of the units left, so the ratios compound to r_t
      (up to a unit of rounding per update and group).
    example_inputs: what prune_ traces the model with (re-traced at each update). calibration, loss_fn,
      filter_fn(group): passed to prune_ (data-driven criteria are scored on the current model).
    on_prune(model): called after each update. Pruning replaces the pruned layers' Parameters, so an
      optimizer (and an LR scheduler) holding the old ones must be rebuilt there, e.g.
      `on_prune=lambda m: opt_box.__setitem__(0, torch.optim.SGD(m.parameters(), lr))`; without on_prune,
      the first update warns. step() also returns True when it pruned.
    kind, start, end, frequency: as PruningSchedule's (the ratio ramps as its sparsity does).
    """

    def __init__(self, model: nn.Module, config, example_inputs, kind: str = "gradual", start: int = 0,
                 end: Optional[int] = None, frequency: int = 1, *, calibration=None, loss_fn=None, filter_fn=None,
                 on_prune: Optional[Callable[[nn.Module], None]] = None, progress: bool = False):
        fn = "StructuredPruningSchedule"
        if not isinstance(model, nn.Module):
            raise TypeError(f"{fn}: model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(config, StructuredPruningConfig):
            raise TypeError(f"{fn}: config must be a StructuredPruningConfig (masks: PruningSchedule with a "
                            f"SparsityConfig), got {type(config).__name__}")
        if on_prune is not None and not callable(on_prune):
            raise TypeError(f"{fn}: on_prune must be a callable fn(model), got {type(on_prune).__name__}")
        super().__init__(config.ratio, kind, start, end, frequency, 0.0)
        self.model, self.config, self.example_inputs = model, config, example_inputs
        self.calibration, self.loss_fn, self.filter_fn = calibration, loss_fn, filter_fn
        self.on_prune, self.progress = on_prune, progress
        self.reports: list[CompressionReport] = []

    @property
    def ratio(self) -> float:
        """The ratio of the last update (0 before the first)."""
        return self._amount

    @property
    def final_ratio(self) -> float:
        return self._final

    def target_ratio(self, step: int) -> float:
        return self._target(step)

    def _update(self, ratio: float) -> None:
        step_ratio = 1.0 - (1.0 - ratio) / (1.0 - self._amount)
        if step_ratio > 0:
            report = prune_(self.model, replace(self.config, ratio=step_ratio), self.example_inputs,
                            calibration=self.calibration, loss_fn=self.loss_fn, filter_fn=self.filter_fn,
                            progress=self.progress)
            self.reports.append(report)
        self._amount = ratio
        if self.on_prune is not None:
            self.on_prune(self.model)
        elif step_ratio > 0 and len(self.reports) == 1:
            warnings.warn("StructuredPruningSchedule: the pruned layers have new, smaller Parameters; an optimizer "
                          "built on the old ones no longer trains them: rebuild it after each update (pass "
                          "on_prune=fn(model), or check step()'s return value)", stacklevel=user_stacklevel())

    def state_dict(self) -> dict:
        """The settings, the step count and the ratio reached; the pruned model itself is saved with
        slimkernels.save (which records its new shapes) and loaded with slimkernels.load."""
        return {**self._settings(), "step_count": self.step_count, "ratio": self._amount}

    def load_state_dict(self, state: dict) -> None:
        """Resume on a schedule built with the same settings over the model loaded as it was saved."""
        self._check_settings(state, "StructuredPruningSchedule.load_state_dict", ("ratio",))
        self.step_count, self._amount = int(state["step_count"]), float(state["ratio"])
