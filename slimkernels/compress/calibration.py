"""Calibrated quantization (GPTQ), one block of the model at a time.

A transformer is a stack of blocks; GPTQ quantizes each block's linear layers from the Hessian of
their inputs, H = 2/n X^T X, over calibration data. Running block by block, with each block fed the
outputs of the already-quantized blocks before it, keeps memory to one block's worth and lets each
block correct for the error of the earlier ones:

  1. run the model on the calibration batches until the first block, and keep that block's inputs
     (positional and keyword arguments, on the CPU);
  2. for each block: move it to `device`, run it on the kept inputs with hooks that accumulate every
     target layer's Hessian, quantize those layers, run the quantized block again to get the next
     block's inputs, and move it back where it was.

The blocks are the children of the model's largest nn.ModuleList (its `layers`/`h`/`blocks`); a
model without one is a single block fed with the batches themselves. Target layers outside the
blocks (a classifier head, say) see no calibration data and are quantized by round-to-nearest; the
report says so.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..quant.gptq import HessianAccumulator


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
    """A calibration batch as call arguments: a dict is keywords, a tuple/list positionals, else one input."""
    if isinstance(batch, dict):
        return (), batch
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
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


def calibrated_quantize(
    model: nn.Module,
    targets: dict[str, nn.Linear],
    calibration: Iterable,
    quantize_layer: Callable[[str, nn.Linear, torch.Tensor | None], nn.Module],
    replace: Callable[[str, nn.Module], None],
    device: torch.device | str | None = None,
    progress: bool = True,
) -> None:
    """Quantize `targets` (name -> layer of `model`) with `quantize_layer(name, layer, hessian)`
    block by block as described above; `replace(name, new)` swaps a layer in. Layers outside the
    blocks get hessian=None."""
    found = find_blocks(model)
    if found is None:
        prefix, blocks = "", [model]
        inputs = [_to(_as_call(batch), "cpu") for batch in calibration]
    else:
        prefix, blocks = found[0] + ".", list(found[1])
        inputs = capture_inputs(model, blocks[0], calibration)
    if not inputs:
        raise ValueError("quantize_: the calibration iterable gave no batches (GPTQ needs input data)")

    done: set[str] = set()
    for index, block in enumerate(tqdm(blocks, desc="gptq", unit="block", disable=not progress)):
        block_prefix = f"{prefix}{index}." if found is not None else ""
        home = _block_device(block)
        run_on = torch.device(device) if device is not None else home
        block.to(run_on)
        layers = {name: targets[block_prefix + name] for name, m in block.named_modules()
                  if block_prefix + name in targets and targets[block_prefix + name] is m}
        hessians = {name: HessianAccumulator(m.in_features, device=run_on) for name, m in layers.items()}
        handles = [m.register_forward_hook(lambda _m, args, _out, acc=hessians[name]: acc.add(args[0]))
                   for name, m in layers.items()]
        try:
            with torch.no_grad():
                for args, kwargs in inputs:
                    block(*_to(args, run_on), **_to(kwargs, run_on))
        finally:
            for h in handles:
                h.remove()
        for name, layer in layers.items():
            if hessians[name].count == 0:
                raise ValueError(f"quantize_: layer {block_prefix + name} saw no calibration rows (is it used in forward?)")
            replace(block_prefix + name, quantize_layer(block_prefix + name, layer, hessians[name].hessian()))
            done.add(block_prefix + name)
        if found is not None and index + 1 < len(blocks):
            with torch.no_grad():
                inputs = [_next_inputs(args, kwargs, block(*_to(args, run_on), **_to(kwargs, run_on)))
                          for args, kwargs in inputs]
        block.to(home)
    for name, layer in targets.items():
        if name not in done:
            replace(name, quantize_layer(name, layer, None))

