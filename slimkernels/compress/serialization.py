"""save / load a compressed model: one safetensors file, its layer config in the header metadata.

No pickle anywhere: safetensors holds only raw tensors and a JSON header. `load` takes the float
architecture, converts the recorded layers to their compressed modules (without re-quantizing),
then fills every tensor after checking its name, shape and dtype.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..nn import QuantLinear

FORMAT = "slimkernels"
VERSION = 1


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write every parameter and buffer of `model` plus the config of its compressed layers."""
    layers = {name: m.layer_config() for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    tensors, aliases, first_by_ptr = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in first_by_ptr:  # tied weights: safetensors stores a storage once
            aliases[name] = first_by_ptr[key]
            continue
        first_by_ptr[key] = name
        tensors[name] = t.detach().contiguous().cpu()
    metadata = {"format": FORMAT, "version": str(VERSION), "layers": json.dumps(layers), "aliases": json.dumps(aliases)}
    save_file(tensors, os.fspath(path), metadata=metadata)


def _read_metadata(path: str) -> dict:
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a slimkernels checkpoint (no '{FORMAT}' format tag in its metadata)")
    if meta.get("version") != str(VERSION):
        raise ValueError(f"{path}: slimkernels checkpoint version {meta.get('version')!r}, this version reads {VERSION}")
    try:
        return {"layers": json.loads(meta["layers"]), "aliases": json.loads(meta.get("aliases", "{}"))}
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: corrupt slimkernels metadata ({exc})") from exc


def _convert_layer(model: nn.Module, name: str, cfg: dict) -> None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"checkpoint has a compressed layer {name!r} that the model does not have") from None
    if not isinstance(cfg, dict) or not {"type", "mode", "in_features", "out_features", "bias"} <= cfg.keys():
        raise ValueError(f"checkpoint layer {name!r} has a malformed config: {cfg!r}")
    if cfg.get("type") != "QuantLinear":
        raise ValueError(f"checkpoint layer {name!r} has unknown type {cfg.get('type')!r}")
    if isinstance(module, QuantLinear) and module.layer_config() == cfg:
        return
    if type(module) is not nn.Linear:
        raise ValueError(f"checkpoint layer {name!r} is a QuantLinear but the model has a {type(module).__name__} there")
    if (module.in_features, module.out_features, module.bias is not None) != (cfg["in_features"], cfg["out_features"], cfg["bias"]):
        raise ValueError(
            f"checkpoint layer {name!r} is {cfg['in_features']}->{cfg['out_features']} (bias={cfg['bias']}) but the model's "
            f"is {module.in_features}->{module.out_features} (bias={module.bias is not None})"
        )
    try:
        new = QuantLinear.from_layer_config(cfg, device=module.weight.device)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint layer {name!r} has an invalid config {cfg}: {exc}") from None
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Fill `model` (the float architecture, or one already converted) from a checkpoint written
    by `save`. Returns the model, converted in place."""
    path = os.fspath(path)
    meta = _read_metadata(path)
    for name, cfg in meta["layers"].items():
        _convert_layer(model, name, cfg)
    try:
        tensors = load_file(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read tensors ({exc})") from exc
    for alias, original in meta["aliases"].items():
        if original not in tensors:
            raise ValueError(f"{path}: tensor {alias!r} is recorded as tied to {original!r}, which the file lacks")
        tensors[alias] = tensors[original]
    expected = model.state_dict()
    for name, t in expected.items():
        if name not in tensors:
            raise ValueError(f"{path}: checkpoint is missing tensor {name!r}")
        got = tensors[name]
        if got.dtype != t.dtype or got.shape != t.shape:
            raise ValueError(
                f"{path}: tensor {name!r} is {got.dtype} {tuple(got.shape)} in the checkpoint but the model "
                f"expects {t.dtype} {tuple(t.shape)}"
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"{path}: checkpoint has tensors the model does not: {unexpected[:5]}")
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)
    return model
