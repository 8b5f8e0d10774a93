"""save / load a compressed model: one safetensors file, its layer configs in the header metadata.

No pickle anywhere: safetensors holds only raw tensors and a JSON header. `save` records
`layer_config()` of every CompressedModule (slimkernels.nn.base) by its module name. `load` takes
the float architecture (or one already converted), looks each recorded layer's "type" up in the
registry of layer types, asks that class whether the float module there is one it replaces
(`matches_float`), swaps in `from_layer_config(cfg)` (an empty module: nothing is re-quantized),
then fills every tensor after checking its name, shape and dtype. Nothing here knows a layer type:
a new CompressedModule subclass saves and loads once it is registered.

Structurally pruned models (slimkernels.prune) have smaller plain layers than their architecture builds.
`save` also records, per module, the shapes of its own tensors (for a compressed layer: of the float
weight and bias it replaces) and its integer size attributes (out_features, groups, num_features,
normalized_shape, the head counts of an attention block, ...). When the plain modules of a checkpoint
are narrower than the model's, `load` takes it for a pruned one: it narrows the model's modules to the
recorded shapes first (prune.shrink.keep_entries keeping the leading entries; the values come from the
file right after) and sets the recorded size attributes, so a pruned (and then perhaps quantized)
checkpoint loads into a fresh float model of the original architecture. Checkpoints without this
record, or with no narrower plain module, load as before (and a wider or reshaped tensor is the same
error as before).

`save(..., entropy_coding="huffman")` stores the integer tensors of the compressed layers Huffman-coded
(compress/entropy.py): one uint8 tensor holds their streams, the metadata entry "entropy" describes them.
`load` sees that entry, checks every coded tensor's dtype and shape against the model's before decoding
it (so the declared counts are bounded by the model) and reports corrupt streams as ValueError.

`save(..., info={...})` stores a JSON-able dict (what `slimkernels compress` measured: per-layer errors and
latencies, the candidates it tried) as JSON under the metadata key "info"; `read_info` reads it back, `load`
ignores it. `inspect` describes a checkpoint's layers from its header alone (no model, no tensor data).
"""
from __future__ import annotations

import json
import math
import os
import re

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..integrations import on_model_compressed
from . import entropy
from ..nn.base import CompressedModule, layer_type
from .calibration import set_submodule

FORMAT = "slimkernels"
VERSION = 1


ENTROPY_CODINGS = (None, "huffman")
INFO_KEY = "info"  # the metadata key of save(..., info=)


def save(model: nn.Module, path: str | os.PathLike, entropy_coding: str | None = None,
         info: dict | None = None) -> None:
    """Write every parameter and buffer of `model` plus the config of its compressed layers.

    entropy_coding: None (default: every tensor as it is in memory) or "huffman": the integer tensors of
    the compressed layers (codes, indices, int8 values) Huffman-coded (compress/entropy.py), for the
    smallest file; load decodes them, losslessly.
    info: a JSON-able dict stored with the file (read back by `read_info`, ignored by `load`): what
    `slimkernels compress` measured, for `slimkernels report`."""
    if entropy_coding not in ENTROPY_CODINGS:
        raise ValueError(f"save: entropy_coding must be one of {ENTROPY_CODINGS}, got {entropy_coding!r}")
    if info is not None and not isinstance(info, dict):
        raise TypeError(f"save: info must be a dict (JSON-able) or None, got {type(info).__name__}")
    try:
        info_json = None if info is None else _json(info)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save: info must be JSON-able (dicts, lists, str, numbers, bool, None): {exc}") from None
    layers = {name: m.layer_config() for name, m in model.named_modules() if isinstance(m, CompressedModule)}
    tensors, aliases, first_by_ptr = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in first_by_ptr:  # tied weights: safetensors stores a storage once
            aliases[name] = first_by_ptr[key]
            continue
        first_by_ptr[key] = name
        tensors[name] = t.detach().contiguous().cpu()
    metadata = {"format": FORMAT, "version": str(VERSION), "layers": _json(layers), "aliases": _json(aliases)}
    shapes = _module_shapes(model)
    if not all(entry.get("compressed") for entry in shapes.values()):  # load narrows plain modules only
        metadata["modules"] = _json(shapes)
    if entropy_coding == "huffman":
        metadata["entropy"] = _json(_entropy_code(model, tensors))
    if info_json is not None:
        metadata[INFO_KEY] = info_json
    save_file(tensors, os.fspath(path), metadata=metadata)


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"))  # no spaces: the header is part of the file's size


def _entropy_code(model: nn.Module, tensors: dict) -> dict:
    """Move the integer tensors of the compressed layers out of `tensors` into one Huffman-coded byte
    tensor (entropy.BLOB_NAME); returns their descriptions, in the blob's order."""
    entries, parts = {}, []
    for prefix, module in model.named_modules():
        if not isinstance(module, CompressedModule):
            continue
        layouts = entropy.packed_code_layouts(module)
        for local, _ in module._own_state():
            name = f"{prefix}.{local}" if prefix else local
            t = tensors.get(name)
            if t is None or t.dtype not in entropy.INT_DTYPES.values():
                continue  # a float tensor, or tied to one stored elsewhere
            entries[name], data = entropy.encode_tensor(t, *layouts.get(local, (None, None)))
            parts.append(data)
            del tensors[name]
    blob = b"".join(parts)
    tensors[entropy.BLOB_NAME] = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else \
        torch.zeros(0, dtype=torch.uint8)
    return {"coding": "huffman", "tensors": entries}


def _entropy_decode(path: str, coded: dict, tensors: dict, expected: dict) -> None:
    """Decode the Huffman-coded tensors back into `tensors`, after checking each against the model's
    tensor of that name (so every count is bounded by what the model holds)."""
    blob = tensors.pop(entropy.BLOB_NAME, None)
    if blob is None:
        raise ValueError(f"{path}: the metadata lists Huffman-coded tensors but the file has no "
                         f"{entropy.BLOB_NAME!r} tensor")
    entries = coded.get("tensors") if isinstance(coded, dict) else None
    if not isinstance(entries, dict) or coded.get("coding") != "huffman":
        raise ValueError(f"{path}: corrupt entropy-coding record (expected "
                         "{'coding': 'huffman', 'tensors': {...}})")
    data, offset = blob.numpy(), 0
    for name, entry in entries.items():
        if name not in expected:
            raise ValueError(f"{path}: checkpoint has tensors the model does not: [{name!r}]")
        want = expected[name]
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: corrupt Huffman-coded tensor {name!r}: {entry!r}")
        dtype = entropy.INT_DTYPES.get(entry.get("dtype"))
        if dtype != want.dtype or entry.get("shape") != list(want.shape):
            raise ValueError(
                f"{path}: tensor {name!r} is {entry.get('dtype')} {entry.get('shape')} in the checkpoint but the "
                f"model expects {want.dtype} {tuple(want.shape)}")
        try:
            tensors[name], offset = entropy.decode_tensor(entry, data, offset, dtype, tuple(want.shape))
        except ValueError as exc:
            raise ValueError(f"{path}: corrupt Huffman-coded tensor {name!r}: {exc}") from None
    if offset != len(data):
        raise ValueError(f"{path}: the Huffman-coded tensors use {offset} of the {len(data)} bytes stored for them")


def _is_size(value) -> bool:
    """An int, or a tuple/list of ints: what a module's size attributes are (bools are not sizes)."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    return is_int(value) or (isinstance(value, (tuple, list)) and all(is_int(v) for v in value))


def _module_shapes(model: nn.Module) -> dict:
    """{module name: {"tensors": {name: shape}, "attrs": {name: int or [ints]}}} of every module (the
    modules inside a compressed layer are its own business)."""
    record, inside = {}, ()
    for name, m in model.named_modules():
        if inside and name.startswith(inside):
            continue
        if isinstance(m, CompressedModule):
            inside = tuple(f"{n}." for n in (*inside, name))
            try:
                shape = list(m.weight_shape)
            except NotImplementedError:
                continue
            tensors = {"weight": shape}
            if isinstance(getattr(m, "bias", None), torch.Tensor):
                tensors["bias"] = shape[:1]
            record[name] = {"tensors": tensors, "attrs": {}, "compressed": True}
            continue
        own = {**m._parameters, **m._buffers}
        tensors = {n: list(t.shape) for n, t in own.items() if t is not None}
        attrs = {n: list(v) if isinstance(v, tuple) else v for n, v in vars(m).items()
                 if not n.startswith("_") and n != "training" and _is_size(v)}
        if tensors or attrs:
            record[name] = {"tensors": tensors, "attrs": attrs}
    return record


def _check_module_record(path: str, record) -> dict:
    """The module shape record, or ValueError if it is not {name: {"tensors": {...}, "attrs": {...}}}."""
    def shape_like(v):
        return isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v)

    if not isinstance(record, dict):
        raise ValueError(f"{path}: corrupt module shape record (expected a mapping of module names, got "
                         f"{type(record).__name__})")
    for name, entry in record.items():
        ok = isinstance(entry, dict) and set(entry) <= {"tensors", "attrs", "compressed"}
        ok = ok and isinstance(entry.get("compressed", False), bool)
        tensors, attrs = (entry.get("tensors", {}), entry.get("attrs", {})) if ok else (None, None)
        ok = ok and isinstance(tensors, dict) and all(shape_like(v) for v in tensors.values())
        ok = ok and isinstance(attrs, dict) and all(_is_size(v) for v in attrs.values())
        if not ok:
            raise ValueError(f"{path}: corrupt module shape record for {name!r}: {entry!r} (expected "
                             "{'tensors': {name: [sizes]}, 'attrs': {name: int or [ints]}, 'compressed': bool})")
    return record


def _narrowable(module: nn.Module, tname: str, shape: list) -> bool:
    """Whether the module's tensor is larger than the recorded shape in some dim and nowhere smaller."""
    t = getattr(module, tname, None)
    return (isinstance(t, torch.Tensor) and t.dim() == len(shape) and list(t.shape) != shape
            and all(want <= have for want, have in zip(shape, t.shape)))


def _narrow_to_record(model: nn.Module, record: dict) -> None:
    """Narrow the modules of `model` whose tensors are larger than the checkpoint records, then set the
    recorded size attributes. Only for a pruned checkpoint: one whose plain (not compressed) modules are
    narrower than the model's somewhere; then the float layers that compressed ones replace are narrowed
    too. Anything else is left for load's checks to report (a wider or reshaped tensor, a checkpoint of
    another layer there)."""
    modules = dict(model.named_modules())
    narrower = []  # (module, tensor name, recorded shape, recorded from a compressed layer)
    for name, entry in record.items():
        module = modules.get(name)
        if module is None or isinstance(module, CompressedModule):
            continue  # a missing module shows as missing tensors; a compressed one is _convert_layer's
        narrower += [(module, tname, shape, entry.get("compressed", False))
                     for tname, shape in entry.get("tensors", {}).items() if _narrowable(module, tname, shape)]
    if all(compressed for *_, compressed in narrower):
        return  # no plain module is narrower: not a pruned checkpoint
    from ..prune.shrink import keep_entries

    with torch.no_grad():
        for module, tname, shape, _ in narrower:
            for dim, want in enumerate(shape):
                if getattr(module, tname).shape[dim] > want:
                    keep_entries(module, tname, dim, torch.arange(want))
    for name, entry in record.items():
        module = modules.get(name)
        if module is None or isinstance(module, CompressedModule):
            continue
        for attr, value in entry.get("attrs", {}).items():
            current = vars(module).get(attr)
            if _is_size(current) and isinstance(current, (tuple, list)) == isinstance(value, list):
                setattr(module, attr, type(current)(value) if isinstance(current, (tuple, list)) else value)


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
        parsed = {"layers": json.loads(meta["layers"]), "aliases": json.loads(meta.get("aliases", "{}")),
                  "modules": json.loads(meta.get("modules", "{}")),
                  "entropy": json.loads(meta["entropy"]) if "entropy" in meta else None,
                  "info": meta.get(INFO_KEY)}  # parsed by read_info only: load ignores it
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: corrupt slimkernels metadata ({exc})") from exc
    parsed["modules"] = _check_module_record(path, parsed["modules"])
    return parsed


def read_info(path: str | os.PathLike) -> dict:
    """The `info` dict that `save(..., info=)` stored in a checkpoint; {} when it stored none.
    ValueError for a file that is not a slimkernels checkpoint, or whose info is not a JSON object."""
    path = os.fspath(path)
    text = _read_metadata(path)["info"]
    if text is None:
        return {}
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt compression info in the metadata ({exc})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: corrupt compression info in the metadata (a JSON object expected, got "
                         f"{type(info).__name__})")
    return info


def _header_tensors(path: str) -> dict:
    """{tensor name: (dtype name, shape, bytes)} from a safetensors file's JSON header; the data is not read.
    The file has passed safe_open (_read_metadata), so its header is well-formed."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return {name: (entry["dtype"], entry["shape"], entry["data_offsets"][1] - entry["data_offsets"][0])
            for name, entry in header.items() if name != "__metadata__"}


def _coded_bytes(entry: dict) -> int:
    """Bytes a Huffman-coded tensor (an entropy.encode_tensor description) takes in the blob."""
    if entry.get("t") == "raw":
        return int(entry.get("n", 0))
    total = 0
    for n, alphabet, lane, data_bytes in entry.get("s", []):  # a stream: code-length table, lane sizes, data
        lanes = -(-n // lane)
        total += entropy._table_bytes(alphabet) + (4 * lanes if lanes > 1 else 0) + data_bytes
    return total


def _layer_summary(layer: nn.Module) -> str:
    """A few words on a compressed layer's format, from an empty (meta) module of its config."""
    if hasattr(layer, "num_buckets"):  # HashedLinear: the fraction of the virtual weight it stores
        shape = layer.weight_shape
        return f"hashed 1/{shape[0] * shape[1] / layer.num_buckets:.3g} ({layer.num_buckets} buckets)"
    summary = getattr(layer, "format_summary", None)
    return summary() if callable(summary) else type(layer).__name__


def _float_bytes(layer: CompressedModule) -> int:
    """Bytes of the float weight and bias the compressed layer replaces, in its recorded weight dtype."""
    numel = math.prod(layer.weight_shape)
    if isinstance(getattr(layer, "bias", None), torch.Tensor):
        numel += layer.weight_shape[0]
    return numel * layer.weight_dtype.itemsize


def inspect_checkpoint(path: str | os.PathLike) -> list[dict]:
    """What a checkpoint written by `save` holds, per layer, from its header alone (no model, no tensor data):
    [{"name", "type" (layer type, or "float"/"plain" for modules saved as they are), "format" (a few words:
    'w4a16 g128 asym', '2:4 fp32', 'rank 64 (...)'), "bytes" (stored, after Huffman coding if used),
    "float_bytes" (the float tensors it replaces), "tensors" (names), "huffman" (whether some of its tensors
    are Huffman-coded)}], sorted by name (numbers by value).
    ValueError for a file that is not a slimkernels checkpoint."""
    path = os.fspath(path)
    meta = _read_metadata(path)
    header = _header_tensors(path)
    stored = {name: nbytes for name, (_, _, nbytes) in header.items() if name != entropy.BLOB_NAME}
    try:
        coded = (meta["entropy"] or {}).get("tensors", {})
        stored.update({name: _coded_bytes(entry) for name, entry in coded.items()})
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt entropy-coding record ({exc})") from None
    dtypes = {name: dtype for name, (dtype, _, _) in header.items()}
    dtypes.update({name: entry.get("dtype", "?") for name, entry in coded.items()})
    stored.update({alias: 0 for alias in meta["aliases"]})  # tied: stored once, under the original's name

    # Build each compressed layer empty on the meta device (its nested compressed layers, e.g. the int8
    # factors of a low-rank layer, put in place) to ask it for its format words and float size.
    outer = [name for name in meta["layers"] if not any(name.startswith(f"{o}.") for o in meta["layers"])]
    rows, claimed = [], set()
    for name in outer:
        try:
            layer = _meta_layer(meta["layers"][name])
            for inner in sorted(meta["layers"]):
                if inner.startswith(f"{name}."):
                    set_submodule(layer, inner[len(name) + 1:], _meta_layer(meta["layers"][inner]))
            words, float_bytes = _layer_summary(layer), _float_bytes(layer)
        except (KeyError, TypeError, ValueError, AttributeError, NotImplementedError) as exc:
            raise ValueError(f"{path}: checkpoint layer {name!r} has an invalid config: {exc}") from None
        names = [t for t in stored if t.startswith(f"{name}.")]
        claimed.update(names)
        rows.append({"name": name, "type": meta["layers"][name]["type"], "format": words,
                     "bytes": sum(stored[t] for t in names), "float_bytes": float_bytes, "tensors": names,
                     "huffman": any(t in coded for t in names)})
    plain = {}  # module name -> its tensors saved as they are
    for t in stored:
        if t not in claimed:
            plain.setdefault(t.rpartition(".")[0], []).append(t)
    for name, names in plain.items():
        kinds = sorted({dtypes[t] for t in names if t not in meta["aliases"]})
        is_float = all(k.startswith(("F", "BF")) for k in kinds)  # safetensors names: F32, BF16, ...; I8, U8
        words = ("float" if is_float else "plain") + (f" ({', '.join(kinds)})" if kinds else "")
        if not kinds:
            words = "tied to " + ", ".join(meta["aliases"][t] for t in names)
        nbytes = sum(stored[t] for t in names)
        rows.append({"name": name, "type": "float" if is_float else "plain", "format": words, "bytes": nbytes,
                     "float_bytes": nbytes, "tensors": names, "huffman": False})
    return sorted(rows, key=lambda row: _natural_key(row["name"]))


def _meta_layer(cfg) -> CompressedModule:
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ValueError(f"a layer config is a dict with a 'type', got {cfg!r}")
    return layer_type(cfg["type"]).from_layer_config(cfg, device="meta")


def _natural_key(name: str) -> list:
    """'layer.10' after 'layer.9': the digit runs of a name compared as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _placement(module: nn.Module):
    """(device, float dtype or None) of a module's first tensor: where its replacement goes."""
    first = next(iter(list(module.parameters()) + list(module.buffers())), None)
    if first is None:
        return None, None
    return first.device, first.dtype if first.is_floating_point() else None


def _convert_layer(model: nn.Module, name: str, cfg: dict) -> None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"checkpoint has a compressed layer {name!r} that the model does not have") from None
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ValueError(f"checkpoint layer {name!r} has a malformed config: {cfg!r}")
    try:
        cls = layer_type(cfg["type"])
    except ValueError as exc:
        raise ValueError(f"checkpoint layer {name!r} has {exc}") from None
    try:
        cls.check_config(cfg)
    except ValueError as exc:
        raise ValueError(f"checkpoint layer {name!r} has a malformed config: {exc}") from None
    if isinstance(module, CompressedModule):
        # Already converted: keep it if it is this layer. The weight dtype is the model's business,
        # and a config written by an older version may lack fields: compare with it filled in.
        def same(recorded: dict) -> bool:
            ignore = ("weight_dtype",)
            return {k: v for k, v in recorded.items() if k not in ignore} == \
                {k: v for k, v in module.layer_config().items() if k not in ignore}

        if same(cfg):
            return
        try:
            recorded = cls.from_layer_config(cfg, device="meta", dtype=module.weight_dtype)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint layer {name!r} has an invalid config {cfg}: {exc}") from None
        full = recorded.layer_config()
        if same(full):
            return
        raise ValueError(_format_mismatch(name, recorded, full, module))
    try:
        matches = cls.matches_float(module, cfg)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint layer {name!r} has a malformed config {cfg}: {exc!r}") from None
    if not matches:
        raise ValueError(f"checkpoint layer {name!r} is a {cfg['type']} {cfg} but the model has {module!r} there, "
                         "which that layer type does not replace (type or shape differ)")
    device, dtype = _placement(module)
    try:
        new = cls.from_layer_config(cfg, device=device, dtype=dtype)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint layer {name!r} has an invalid config {cfg}: {exc}") from None
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _layer_words(module: CompressedModule) -> str:
    """A few words on a compressed layer's format: its format_summary() if it has one ('w4a16 g128
    asym'), else its type."""
    summary = getattr(module, "format_summary", None)
    return summary() if callable(summary) else f"a {type(module).__name__}"


def _format_mismatch(name: str, recorded: CompressedModule, full: dict, module: CompressedModule) -> str:
    """The error for a checkpoint layer of one format loaded into a model layer of another: both
    formats in words, the fields that differ, and the configs in full."""
    mine = module.layer_config()
    ours, theirs = _layer_words(recorded), _layer_words(module)
    if type(recorded) is not type(module) and ours == theirs:
        ours, theirs = f"a {type(recorded).__name__} {ours}", f"a {type(module).__name__} {theirs}"
    if ours == theirs:  # one format, other fields (shape, bias): name them
        differ = [f"{key} {full.get(key)!r} in the checkpoint, {mine.get(key)!r} in the model"
                  for key in dict.fromkeys([*full, *mine]) if key != "weight_dtype" and full.get(key) != mine.get(key)]
        head = f"checkpoint layer {name!r} and the model's are both {ours} but differ: {'; '.join(differ)}"
    else:
        head = f"checkpoint layer {name!r} is {ours} but the model's is {theirs}"
    return (f"{head}: the checkpoint "
            f"records {full} but the model has a {type(module).__name__} {mine} there. Load the checkpoint into the "
            "float model (load converts its layers), or quantize the model the way the checkpoint was")


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Fill `model` (the float architecture, or one already converted) from a checkpoint written
    by `save`. Returns the model, converted in place."""
    path = os.fspath(path)
    meta = _read_metadata(path)
    _narrow_to_record(model, meta["modules"])  # a pruned checkpoint: its smaller layers first
    for name, cfg in meta["layers"].items():
        _convert_layer(model, name, cfg)
    try:
        tensors = load_file(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read tensors ({exc})") from exc
    expected = model.state_dict()
    if meta["entropy"] is not None:
        _entropy_decode(path, meta["entropy"], tensors, expected)
    for alias, original in meta["aliases"].items():
        if original not in tensors:
            raise ValueError(f"{path}: tensor {alias!r} is recorded as tied to {original!r}, which the file lacks")
        tensors[alias] = tensors[original]
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
    on_model_compressed(model)  # a transformers model records its layers for save_pretrained
    return model
