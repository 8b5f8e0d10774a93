"""The calibration runner: run a model on calibration data one block at a time and hand each block's
statistics to a pass (GPTQ's input Hessians today; Wanda's input norms, SparseGPT's Hessians,
ASVD/SVD-LLM's activation statistics and activation-based pruning's APoZ use the same runner).

A transformer is a stack of blocks. Running block by block, with each block fed the outputs of the
already-converted blocks before it, keeps memory to one block's worth and lets each block correct for
the error of the earlier ones:

  1. run the model on the calibration batches until the first block, and keep that block's inputs
     (positional and keyword arguments, on the CPU);
  2. for each block: move it to `device`, run it on the kept inputs with forward hooks that feed every
     target layer's collectors, hand the statistics to the pass (`process`), swap in the layers it
     returns, run the converted block again to get the next block's inputs, and move it back where
     it was.

The blocks are the children of the model's largest nn.ModuleList (its `layers`/`h`/`blocks`); a
model without one is a single block fed with the batches themselves. Target layers outside the
blocks (a classifier head, say) see no calibration data: run_calibration returns the names that got
statistics and the pass decides what to do with the others (quantize_ rounds them to nearest and
says so in the report).

What is collected per target layer is chosen by the pass as {stat_name: factory}, each factory called
as factory(layer, device=...) -> Collector. Collectors here:

  HessianCollector         H = 2/n X^T X of the layer's inputs (GPTQ, SparseGPT, SVD-LLM)
  InputRowsCollector       how many input rows, and distinct ones, the layer saw (GPTQ's rank guard)
  InputNormCollector       per input feature: L2 norm over all rows (Wanda), mean square, mean |x| (ASVD)
  ActivationStatsCollector per output feature: fraction of zeros (APoZ) and mean, of the layer's output
                           or of activation(output)
  OutputCollector          the layer's output rows themselves, on the CPU

The collectors over a layer's inputs (Hessian, input rows, input norms) take an nn.Conv2d too, through
conv_aware(factory): its input is unfolded to the rows its weight multiplies (quant.pruning's
unfold_conv_input: [B * L, Cin/g * kh * kw] per group) and fed to one collector per group; the result
is the list of the groups' results.

A Wanda pass, for instance:

    def prune_block(block: BlockStatistics):
        new = {}
        for name, layer in block.layers.items():
            score = layer.weight.abs() * block.results(name)["input_norm"]  # |W_ij| * ||X_j||
            new[name] = prune_rows(layer, score)
        return new

    run_calibration(model, targets, batches, {"input_norm": InputNormCollector}, prune_block)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..quant.hessian import RANK_CHECK_ROWS, DistinctRows, HessianAccumulator


# ---- collectors ------------------------------------------------------------------------------------
class Collector:
    """Accumulates one statistic of one module over a calibration run.

    Built as Collector(module, device=...) (device: where the block runs; None: that of the first
    batch); `add(x, y)` is called on every forward of the module with its input x (the first
    positional tensor, else the first tensor keyword) and its output y (the first element of a tuple
    output); `result()` is what the pass receives. `count` is the number of rows (x.reshape(-1, K)) seen."""

    count: int = 0

    def __init__(self, module: nn.Module, device=None):
        self.device = None if device is None else torch.device(device)

    def add(self, x: torch.Tensor, y: Any) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError


def _rows(t: torch.Tensor, what: str, device, dtype) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point or t.dim() == 0:
        desc = f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"calibration: expected a floating-point {what} tensor [..., features], got {desc}")
    return t.detach().reshape(-1, t.shape[-1]).to(device=device if device is not None else t.device, dtype=dtype)


def layer_input_features(module: nn.Module, who: str) -> int:
    """The K of a layer's weight: in_features, or Cin/groups * kh * kw for an nn.Conv2d."""
    if isinstance(module, nn.Conv2d):
        return module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    in_features = getattr(module, "in_features", None)
    if in_features is None:
        raise TypeError(f"{who}: {type(module).__name__} has no in_features")
    return in_features


class HessianCollector(Collector):
    """H = 2/n X^T X of the module's inputs (quant.hessian.HessianAccumulator); result: float32 [K, K]."""

    def __init__(self, module: nn.Module, device=None, dtype: torch.dtype = torch.float32):
        super().__init__(module, device)
        in_features = layer_input_features(module, "HessianCollector")
        self.accumulator = HessianAccumulator(in_features, device=device, dtype=dtype)

    @property
    def count(self) -> int:
        return self.accumulator.count

    def add(self, x, y=None) -> None:
        self.accumulator.add(x)

    def result(self) -> torch.Tensor:
        return self.accumulator.hessian()


class CalibrationWarning(UserWarning):
    """A pass's warning about its calibration data (too little or too repetitive for a layer)."""


class InputRows(NamedTuple):
    """What InputRowsCollector saw: rows in all, distinct rows (at least that many if saturated)."""

    rows: int
    distinct: int
    saturated: bool


class InputRowsCollector(Collector):
    """Rows of the module's inputs, and distinct rows among them (quant.hessian.DistinctRows), up to
    `limit` distinct ones (default RANK_CHECK_ROWS x in_features: past it the rank guard of GPTQ has
    no use for the exact number); result: InputRows. Costs one pass over the rows per batch, next to
    the K times larger Hessian update."""

    def __init__(self, module: nn.Module, device=None, limit: Optional[int] = None):
        super().__init__(module, device)
        in_features = layer_input_features(module, "InputRowsCollector")
        self.counter = DistinctRows(in_features, limit=RANK_CHECK_ROWS * in_features if limit is None else limit)

    @property
    def count(self) -> int:
        return self.counter.rows

    def add(self, x, y=None) -> None:
        self.counter.add(_rows(x, "input", self.device, x.dtype if isinstance(x, torch.Tensor) else None))

    def result(self) -> InputRows:
        return InputRows(self.counter.rows, self.counter.distinct, self.counter.saturated)


class InputNormCollector(Collector):
    """Per input feature j, over all rows x of the module's inputs (sums kept in float64):
    result() = ||X_j||_2 as float32 [K] (Wanda's activation norm); also mean_square() (the second
    moment, sum x_j^2 / n) and mean_abs() (sum |x_j| / n, ASVD's activation scale)."""

    def __init__(self, module: nn.Module, device=None):
        super().__init__(module, device)
        self.sum_squares: Optional[torch.Tensor] = None
        self.sum_abs: Optional[torch.Tensor] = None

    def add(self, x, y=None) -> None:
        rows = _rows(x, "input", self.device, torch.float64)
        if self.sum_squares is None:
            self.sum_squares = rows.new_zeros(rows.shape[1])
            self.sum_abs = rows.new_zeros(rows.shape[1])
        self.sum_squares += rows.square().sum(0)
        self.sum_abs += rows.abs().sum(0)
        self.count += rows.shape[0]

    def _check(self) -> None:
        if self.count == 0:
            raise ValueError("InputNormCollector: no calibration rows were added (did the layer run?)")

    def result(self) -> torch.Tensor:
        self._check()
        return self.sum_squares.sqrt().to(torch.float32)

    def mean_square(self) -> torch.Tensor:
        self._check()
        return (self.sum_squares / self.count).to(torch.float32)

    def mean_abs(self) -> torch.Tensor:
        self._check()
        return (self.sum_abs / self.count).to(torch.float32)


@dataclass
class ActivationStats:
    """Per output feature: apoz, the fraction of rows where it is zero (|a| <= threshold), and mean."""

    apoz: torch.Tensor  # float32 [N]
    mean: torch.Tensor  # float32 [N]
    rows: int


class ActivationStatsCollector(Collector):
    """APoZ (Hu et al. 2016, "average percentage of zeros") and mean of the module's output, per output
    feature, over all rows. activation: applied to the output first (e.g. torch.relu for a Linear
    followed by a ReLU; None: the output as is). threshold: |a| <= threshold counts as zero. Pass
    options with functools.partial(ActivationStatsCollector, activation=torch.relu)."""

    def __init__(self, module: nn.Module, device=None, activation: Optional[Callable] = None, threshold: float = 0.0):
        super().__init__(module, device)
        self.activation, self.threshold = activation, float(threshold)
        self.zeros: Optional[torch.Tensor] = None
        self.sum: Optional[torch.Tensor] = None

    def add(self, x, y) -> None:
        a = y if self.activation is None else self.activation(y)
        rows = _rows(a, "output", self.device, torch.float64)
        if self.zeros is None:
            self.zeros = rows.new_zeros(rows.shape[1])
            self.sum = rows.new_zeros(rows.shape[1])
        self.zeros += (rows.abs() <= self.threshold).sum(0)
        self.sum += rows.sum(0)
        self.count += rows.shape[0]

    def result(self) -> ActivationStats:
        if self.count == 0:
            raise ValueError("ActivationStatsCollector: no calibration rows were added (did the layer run?)")
        return ActivationStats((self.zeros / self.count).to(torch.float32), (self.sum / self.count).to(torch.float32),
                               self.count)


class OutputCollector(Collector):
    """The module's output rows [n, N] (the first max_rows of them, if given), kept on the CPU in the
    output's dtype; result() concatenates them."""

    def __init__(self, module: nn.Module, device=None, max_rows: Optional[int] = None):
        super().__init__(module, device)
        self.max_rows = max_rows
        self.parts: list[torch.Tensor] = []

    def add(self, x, y) -> None:
        rows = _rows(y, "output", "cpu", y.dtype if isinstance(y, torch.Tensor) else None)
        if self.max_rows is not None:
            rows = rows[: max(0, self.max_rows - self.count)]
        if rows.shape[0]:
            self.parts.append(rows)
            self.count += rows.shape[0]

    def result(self) -> torch.Tensor:
        if not self.parts:
            raise ValueError("OutputCollector: no calibration rows were added (did the layer run?)")
        return torch.cat(self.parts)


class UnfoldedConvCollector(Collector):
    """For an nn.Conv2d: its input unfolded to the rows its weight multiplies, one `inner` collector per
    group (inner(module, device=...) sees rows [B * L, Cin/g * kh * kw]); result: the list of the groups'
    results. Use conv_aware(factory) to get this for convs and `factory` itself for other layers."""

    def __init__(self, module: nn.Conv2d, device=None, inner: Callable[..., Collector] = HessianCollector):
        super().__init__(module, device)
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"UnfoldedConvCollector: expected an nn.Conv2d, got {type(module).__name__}")
        self.conv = module
        self.groups = [inner(module, device=device) for _ in range(module.groups)]

    @property
    def count(self) -> int:
        return self.groups[0].count

    def add(self, x, y=None) -> None:
        from ..quant.pruning import unfold_conv_input

        c = self.conv
        rows = unfold_conv_input(x.detach(), c.kernel_size, c.stride, c.padding, c.dilation, c.groups)
        for collector, group_rows in zip(self.groups, rows):
            collector.add(group_rows, None)

    def result(self) -> list:
        return [c.result() for c in self.groups]


def conv_aware(factory: Callable[..., Collector]) -> Callable[..., Collector]:
    """A collector factory that builds UnfoldedConvCollector(module, inner=factory) for an nn.Conv2d and
    factory(module) for any other layer."""

    def make(module: nn.Module, device=None) -> Collector:
        if isinstance(module, nn.Conv2d):
            return UnfoldedConvCollector(module, device=device, inner=factory)
        return factory(module, device=device)

    make.__name__ = f"conv_aware({getattr(factory, '__name__', 'collector')})"
    return make


# ---- blocks and inputs -----------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised by the hook on the first block once its inputs are captured."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(name, ModuleList) of the model's block stack: the ModuleList holding the most parameters."""
    best, best_count = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module):
            count = sum(p.numel() for p in module.parameters())
            if count > best_count:
                best, best_count = (name, module), count
    return best


def _as_call(batch) -> tuple[tuple, dict]:
    """A calibration batch as call arguments: a mapping is keywords (a tokenizer's BatchEncoding is
    one, though not a dict), a tuple/list positionals, else one input."""
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _next_inputs(args: tuple, kwargs: dict, out) -> tuple[tuple, dict]:
    """The next block's inputs: this block's, with the hidden states replaced by its output."""
    hidden = _to(out[0] if isinstance(out, (tuple, list)) else out, "cpu")
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    key = "hidden_states" if "hidden_states" in kwargs else next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    return args, {**kwargs, key: hidden}


def capture_inputs(model: nn.Module, first_block: nn.Module, batches: Iterable) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) each calibration batch gives `first_block`, kept on the CPU."""
    captured = []

    def hook(_module, args, kwargs):
        captured.append((_to(args, "cpu"), _to(kwargs, "cpu")))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            args, kwargs = _as_call(batch)
            try:
                model(*args, **kwargs)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _block_device(block: nn.Module) -> torch.device:
    for t in list(block.parameters()) + list(block.buffers()):
        return t.device
    return torch.device("cpu")


def _first_tensor(args: tuple, kwargs: dict):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule `name` ("a.b.c", relative to root) by `new`."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def _feed(collectors: Mapping[str, Collector]):
    """A forward hook (with_kwargs=True) that adds the module's input and output to `collectors`."""

    def hook(_module, args, kwargs, output):
        x = _first_tensor(args, kwargs)
        y = output[0] if isinstance(output, (tuple, list)) else output
        for c in collectors.values():
            c.add(x, y)

    return hook


# ---- the runner ------------------------------------------------------------------------------------
@dataclass
class BlockStatistics:
    """What a pass gets for one block: its target layers (full name -> module) and their collectors
    (full name -> {stat_name: Collector}); results(name) gives {stat_name: collector.result()}."""

    index: int  # the block's index in the stack (0 for a model without one)
    prefix: str  # the block's name with a trailing dot, "layers.3." ("" for a model without blocks)
    block: nn.Module
    device: torch.device  # where the block ran
    layers: dict[str, nn.Module]
    collectors: dict[str, dict[str, Collector]] = field(default_factory=dict)

    def results(self, name: str) -> dict[str, Any]:
        """{stat_name: value} of one target layer (computed on each call: take them once per layer)."""
        return {stat: c.result() for stat, c in self.collectors[name].items()}

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """{layer_name: {stat_name: value}} of every target layer of the block."""
        return {name: self.results(name) for name in self.layers}


Process = Callable[[BlockStatistics], Optional[Mapping[str, nn.Module]]]


def run_calibration(
    model: nn.Module,
    targets: Mapping[str, nn.Module],
    calibration: Iterable,
    collectors: Mapping[str, Callable[..., Collector]],
    process: Process,
    device: torch.device | str | None = None,
    progress: bool = True,
    fn: str = "calibrate",
    desc: Optional[str] = None,
) -> set[str]:
    """Run `model` block by block on `calibration` (batches called as model(*batch) for a tuple/list,
    model(**batch) for a dict, model(batch) otherwise) as the module docstring says.

    targets: full name -> module of `model` whose statistics the pass needs.
    collectors: {stat_name: factory}; every target layer inside a block gets factory(layer, device=...)
      for each entry, fed by a forward hook.
    process(BlockStatistics) -> {full name: new module} (or None): called once per block after it ran;
      the returned modules replace those layers before the block runs again to feed the next one.
    device: where each block runs (e.g. "cuda" for a model kept on the CPU); default: where it is.
    Returns the names of the targets that got statistics (those inside the blocks).
    fn names the caller in errors, desc the progress bar (default fn)."""
    found = find_blocks(model)
    if found is None:
        prefix, blocks = "", [model]
        inputs = [_to(_as_call(batch), "cpu") for batch in calibration]
    else:
        prefix, blocks = found[0] + ".", list(found[1])
        inputs = capture_inputs(model, blocks[0], calibration)
    if not inputs:
        raise ValueError(f"{fn}: the calibration iterable gave no batches (a calibrated pass needs input data)")

    done: set[str] = set()
    for index, block in enumerate(tqdm(blocks, desc=desc or fn, unit="block", disable=not progress)):
        block_prefix = f"{prefix}{index}." if found is not None else ""
        home = _block_device(block)
        run_on = torch.device(device) if device is not None else home
        block.to(run_on)
        layers = {block_prefix + name: m for name, m in block.named_modules()
                  if block_prefix + name in targets and targets[block_prefix + name] is m}
        stats = BlockStatistics(index, block_prefix, block, run_on, layers,
                                {name: {stat: make(m, device=run_on) for stat, make in collectors.items()}
                                 for name, m in layers.items()})

        handles = [m.register_forward_hook(_feed(stats.collectors[name]), with_kwargs=True) for name, m in layers.items()]
        try:
            with torch.no_grad():
                for args, kwargs in inputs:
                    block(*_to(args, run_on), **_to(kwargs, run_on))
        finally:
            for h in handles:
                h.remove()
        for name, cols in stats.collectors.items():
            if any(c.count == 0 for c in cols.values()):
                raise ValueError(f"{fn}: layer {name} saw no calibration rows (is it used in forward?)")
        for name, new in (process(stats) or {}).items():
            if name not in layers:
                raise ValueError(f"{fn}: process returned {name!r}, not a target layer of block {block_prefix or 'model'}")
            set_submodule(block, name[len(block_prefix):], new)
        done.update(layers)
        del stats
        if found is not None and index + 1 < len(blocks):
            with torch.no_grad():
                inputs = [_next_inputs(args, kwargs, block(*_to(args, run_on), **_to(kwargs, run_on)))
                          for args, kwargs in inputs]
        block.to(home)
    return done
