"""CompressedModule: the base of every drop-in compressed module, and the registry of layer types.

A compressed module stands in for a float module (QuantLinear for nn.Linear; later SparseLinear,
SparseConv2d, LowRankLinear, ...). The base gives every such module the same life cycle:

  construction    `__init__` registers the module's buffers (an empty layer of a given shape and
                  format); `from_float(module, config)` converts a float module (the algorithms
                  that choose the compressed tensors run in the passes, slimkernels.compress).
  checkpoints     `layer_config()` is a JSON-able dict, {"type": <layer type>, **config_fields(),
                  "weight_dtype": ...}; `from_layer_config(cfg)` builds the empty module it
                  describes (by default `cls(**config_fields, device=..., dtype=...)`), which
                  load_state_dict then fills. slimkernels.save / load look the type up in the
                  registry below, so a new module type needs no edit of serialization.py.
  hooks           `validate_state()` (after load_state_dict; default: every float tensor the
                  module saves is finite) then `repack()` (derived, device-specific tensors that are
                  never saved; default: none). `repack()` also runs after construction and after a
                  move to another device. Casts (`model.half()`) leave the dtype of the saved
                  buffers alone (`fixed_dtype_state()`): their dtypes are part of the format.
  packed state    a saved tensor the kernels read in a device layout is held ONCE, in that layout
                  (`packed_state()`: saved name -> PackedState; W8A8's qweight lives only as its
                  int8_prepack). state_dict() / slimkernels.save write the canonical tensor, unpacked
                  on the fly; load_state_dict packs what it reads; reading the attribute (`layer.qweight`)
                  returns an unpacked copy and assigning one packs it. Resident memory is the saved size.
  model code      `weight` has the dtype, device and shape of the float weight the module
                  replaces, so model code that reads `layer.weight.dtype` (Hugging Face T5 and
                  others) keeps working. Its values are NOT the weights (they are NaN, and the
                  tensor is a zero-stride view of one element, no [out, in] storage);
                  `dequantized_weight()` returns the weights.

Registering a type: subclass with a stable name, which checkpoints record:

    class LowRankLinear(CompressedModule, layer_type="LowRankLinear"):
        required_config_keys = ("in_features", "out_features", "rank", "bias")
        def __init__(self, in_features, out_features, rank, bias=True, device=None, dtype=None): ...
        def config_fields(self): return {"in_features": ..., "out_features": ..., "rank": ..., "bias": ...}
        weight_shape = property(lambda self: (self.out_features, self.in_features))
        @classmethod
        def matches_float(cls, module, cfg): return type(module) is nn.Linear and ...

A class registers itself when the module defining it is imported (slimkernels.nn imports the
built-in ones), so import a custom type before slimkernels.load meets it. `layer_type(name)`
returns the class registered under `name` (ValueError naming the known types otherwise);
`layer_types()` all of them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, ClassVar, NamedTuple, Optional

import torch
from torch import nn

_LAYER_TYPES: dict[str, type["CompressedModule"]] = {}


def layer_type(name: str) -> type["CompressedModule"]:
    """The CompressedModule class registered under `name` (the "type" of a layer config)."""
    try:
        return _LAYER_TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown compressed layer type {name!r}; known types: {sorted(_LAYER_TYPES)} (a type "
                         "registers itself when the module defining it is imported)") from None


def layer_types() -> dict[str, type["CompressedModule"]]:
    """Every registered layer type, by name (a copy)."""
    return dict(_LAYER_TYPES)


def _register(name: str, cls: type) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__}: layer_type must be a non-empty string, got {name!r}")
    known = _LAYER_TYPES.get(name)
    # The same class defined again (a module reloaded) replaces itself; another class may not take the name.
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"layer type {name!r} is already registered by {known.__module__}.{known.__qualname__}")
    _LAYER_TYPES[name] = cls


class PackedState(NamedTuple):
    """A saved tensor that a module holds only in a derived (device) layout."""

    held: str                          # the plain tensor attribute holding the derived layout
    shape: tuple[int, ...]             # the canonical (saved) tensor's shape and dtype
    dtype: torch.dtype
    pack: Callable[[torch.Tensor], torch.Tensor]    # canonical -> held, for the canonical tensor's device
    unpack: Callable[[torch.Tensor], torch.Tensor]  # held (as packed for any device) -> canonical, a new tensor


# Attributes loaders set on the tensors they filled (transformers' `_is_hf_initialized`): a packed tensor
# carries them from the canonical one it was packed from, and back to the canonical one unpacked from it.
_TENSOR_MARKS = ("_is_hf_initialized",)


def _carry_marks(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    for mark in _TENSOR_MARKS:
        if hasattr(source, mark):
            setattr(target, mark, getattr(source, mark))
    return target


class _RepackAfterInit(type(nn.Module)):
    """Runs `repack()` once the outermost `__init__` has returned (every buffer is registered)."""

    def __call__(cls, *args, **kwargs):
        module = super().__call__(*args, **kwargs)
        module.repack()
        return module


def _after_load_state_dict(module: "CompressedModule", incompatible_keys) -> None:
    if any(t.device.type == "meta" for _, t in module._own_state(unpack=False)):
        # A partial load into a module built on the meta device (load_state_dict(..., assign=True)
        # one tensor at a time, as transformers 4.x's from_pretrained does): nothing to check yet;
        # the load that fills the last tensor validates and repacks.
        return
    module.validate_state()
    module.repack()


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the form layer configs record)."""
    return str(dtype).removeprefix("torch.")


def float_dtype(value, what: str = "dtype") -> torch.dtype:
    """A floating-point torch.dtype from a dtype or its name ("float16", "torch.float16")."""
    dtype = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{what} must be a floating-point torch dtype (or its name), got {value!r}")
    return dtype


class CompressedModule(nn.Module, metaclass=_RepackAfterInit):
    """Base of the drop-in compressed modules; see the module docstring for the life cycle.

    A subclass defines: `__init__(..., device=None, dtype=None)` (calling super().__init__(device=,
    dtype=) first), `config_fields()`, `required_config_keys`, `weight_shape`, `forward`,
    `dequantized_weight()`, `from_float()` and `matches_float()`; and, where it has them,
    `repack()` and more checks in `validate_state()`. Passing `layer_type="Name"` in the class
    statement registers it for checkpoints; a class without it (an abstract intermediate) is not
    registered."""

    layer_type_name: ClassVar[Optional[str]] = None
    required_config_keys: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, layer_type: Optional[str] = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if layer_type is not None:
            _register(layer_type, cls)
            cls.layer_type_name = layer_type

    def __init__(self, *, device=None, dtype=None):
        """dtype: the float dtype of the weight this module stands in for (default float32); it is
        what `weight.dtype` says and what layer_config() records, and it follows `.to(dtype)`."""
        super().__init__()
        dtype = torch.float32 if dtype is None else float_dtype(dtype, f"{type(self).__name__}: dtype")
        # One element, NaN: `weight` expands it to the float weight's shape without storage for it.
        self.register_buffer("_weight_anchor", torch.full((), float("nan"), dtype=dtype, device=device), persistent=False)
        self.register_load_state_dict_post_hook(_after_load_state_dict)

    # ---- what a subclass provides ------------------------------------------------------------------
    @classmethod
    def from_float(cls, module: nn.Module, config, **kwargs) -> "CompressedModule":
        """The compressed module for float `module` under `config` (a pass's config object)."""
        raise NotImplementedError(f"{cls.__name__}.from_float")

    def config_fields(self) -> dict:
        """The JSON-able fields of layer_config() beyond "type" and "weight_dtype": by default the
        constructor's keyword arguments (from_layer_config passes them back)."""
        raise NotImplementedError(f"{type(self).__name__}.config_fields")

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the float weight this module replaces ([out, in] for a linear layer)."""
        raise NotImplementedError(f"{type(self).__name__}.weight_shape")

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this module computes with, of shape `weight_shape`."""
        raise NotImplementedError(f"{type(self).__name__}.dequantized_weight")

    @classmethod
    def matches_float(cls, module: nn.Module, cfg: dict) -> bool:
        """Whether float `module` is what a layer of config `cfg` replaces (type and shape); save /
        load check it before swapping the module. Default: nothing matches."""
        return False

    def repack(self) -> None:
        """Rebuild the derived tensors (device-specific layouts, never saved) from the saved state.
        Called after construction, after load_state_dict and after a move to another device."""

    def validate_state(self) -> None:
        """Refuse loaded state the kernels do not re-check on every call (raises ValueError).
        Default: every floating-point tensor of this module that state_dict holds is finite."""
        for name, t in self._own_state(unpack=False):
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{type(self).__name__}: {name} holds NaN or Inf")

    def packed_state(self) -> dict[str, PackedState]:
        """Saved tensors held only in a derived layout, by saved name (default: none). Must not read
        module attributes through nn.Module.__getattr__ (it is called from there): use self.__dict__.
        The held tensor is a plain attribute, not a buffer: loaders that replace every non-persistent
        buffer with fresh memory (transformers' from_pretrained does) would lose the only copy; this
        class moves it with the module (_apply)."""
        return {}

    def fixed_dtype_state(self) -> tuple[str, ...]:
        """Names of the tensors whose dtype a cast (model.half(), .to(dtype)) must not change: they
        move to the new device with their values intact. Default: every saved buffer."""
        return tuple(name for name, t in self._buffers.items()
                     if t is not None and name not in self._non_persistent_buffers_set)

    # ---- given by the base ---------------------------------------------------------------------------
    def layer_config(self) -> dict:
        """What a checkpoint records to rebuild this module without re-compressing it."""
        if self.layer_type_name is None:
            raise TypeError(f"{type(self).__name__} is not a registered layer type (class {type(self).__name__}"
                            "(CompressedModule, layer_type=...)), so checkpoints cannot record it")
        return {"type": self.layer_type_name, **self.config_fields(), "weight_dtype": dtype_name(self.weight_dtype)}

    @classmethod
    def check_config(cls, cfg) -> None:
        """ValueError unless `cfg` is a dict holding `required_config_keys` (and this class's type)."""
        if not isinstance(cfg, dict):
            raise ValueError(f"{cls.__name__}: a layer config is a dict, got {type(cfg).__name__}")
        missing = [key for key in cls.required_config_keys if key not in cfg]
        if missing:
            raise ValueError(f"{cls.__name__}: layer config {cfg!r} lacks {missing}")
        if cfg.get("type", cls.layer_type_name) != cls.layer_type_name:
            raise ValueError(f"{cls.__name__}: layer config has type {cfg.get('type')!r}, expected {cls.layer_type_name!r}")

    @classmethod
    def from_layer_config(cls, cfg: dict, device=None, dtype=None) -> "CompressedModule":
        """An empty module of the shape and format `cfg` (from layer_config) describes, to be filled
        by load_state_dict. `dtype` is the weight dtype to use when `cfg` records none (configs
        written before it was recorded)."""
        cls.check_config(cfg)
        fields = {key: value for key, value in cfg.items() if key not in ("type", "weight_dtype")}
        if cfg.get("weight_dtype") is not None:
            dtype = float_dtype(cfg["weight_dtype"], f"{cls.__name__}: weight_dtype")
        return cls(**fields, device=device, dtype=dtype)

    @property
    def weight(self) -> torch.Tensor:
        """A stand-in for the float weight this module replaces, for model code that reads
        `.dtype`, `.device` or `.shape`. Its values are NaN, not the weights (those are
        `dequantized_weight()`); it is a read-only zero-stride view of one element."""
        stand_in = self._weight_anchor.expand(self.weight_shape)
        # Hugging Face transformers' weight initialization (from_pretrained runs the model's
        # _init_weights, e.g. T5's init.normal_(attention.q.weight)) skips tensors so marked; an
        # in-place write into this view would fail (its elements share one memory location).
        stand_in._is_hf_initialized = True
        return stand_in

    @property
    def weight_dtype(self) -> torch.dtype:
        """The float dtype of the weight this module replaces (`weight.dtype`). A pass that builds
        the module sets it to the float layer's; `.to(dtype)` / `.half()` change it."""
        return self._weight_anchor.dtype

    @weight_dtype.setter
    def weight_dtype(self, dtype) -> None:
        self._weight_anchor = self._weight_anchor.to(float_dtype(dtype, f"{type(self).__name__}.weight_dtype"))

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.config_fields().items())

    def _own_state(self, unpack: bool = True):
        """(name, tensor) of everything state_dict saves for this module itself; packed ones unpacked,
        or with unpack=False as held (their device and dtype, without the copy)."""
        for name, t in self._parameters.items():
            if t is not None:
                yield name, t
        for name, t in self._buffers.items():
            if t is not None and name not in self._non_persistent_buffers_set:
                yield name, t
        for name, spec in self.packed_state().items():
            held = self.__dict__.get(spec.held)
            if held is not None:
                yield name, _carry_marks(held, spec.unpack(held)) if unpack else held

    # ---- packed state: held once in its device layout, saved canonical ------------------------------
    def store_packed(self, name: str, value: torch.Tensor, device=None) -> None:
        """Set the packed saved tensor `name` from its canonical value (packed on `device`, default the
        value's own, as assigning a buffer does). ValueError if the shape or dtype is not the format's."""
        spec = self.packed_state()[name]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != spec.shape or value.dtype != spec.dtype:
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{type(self).__name__}: {name} must be {spec.dtype} {spec.shape}, got {got}")
        with torch.no_grad():
            held = spec.pack(value.detach().to(device if device is not None else value.device))
        _carry_marks(value, held)
        self.__dict__[spec.held] = held
        self._state_changed()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            spec = None if name.startswith("__") else self.packed_state().get(name)
            if spec is None:
                raise
            return spec.unpack(self.__dict__[spec.held])

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, torch.Tensor) and name in self.packed_state():
            self.store_packed(name, value)
        else:
            super().__setattr__(name, value)
        self._state_changed()

    def _state_changed(self) -> None:
        """Called after an attribute is set, a packed tensor stored, or the tensors moved or cast: a
        subclass that caches anything about its tensors drops it here."""

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        packed = self.packed_state()
        if not packed:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        local = OrderedDict()
        super()._save_to_state_dict(local, prefix, keep_vars)
        for name, spec in packed.items():  # first: the formats list their packed tensors first (W8A8's qweight)
            if self.__dict__.get(spec.held) is not None:
                destination[prefix + name] = spec.unpack(self.__dict__[spec.held])
        destination.update(local)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        packed = self.packed_state()
        if packed:
            state_dict = dict(state_dict)  # this module's part of the state: we take the packed keys out
            assign = local_metadata.get("assign_to_params_buffers", False)
            for name, spec in packed.items():
                key = prefix + name
                if key not in state_dict:
                    if strict:
                        missing_keys.append(key)
                    continue
                value = state_dict.pop(key)
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != spec.shape or value.dtype != spec.dtype:
                    got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                    error_msgs.append(f"size mismatch for {key}: copying {got} from checkpoint, the tensor in the "
                                      f"current model is {spec.dtype} {spec.shape}.")
                    continue
                held = self.__dict__.get(spec.held)
                self.store_packed(name, value, device=None if assign or held is None else held.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _apply(self, fn, recurse=True):
        fixed = {name: self._buffers[name] for name in self.fixed_dtype_state() if self._buffers.get(name) is not None}
        device = self._weight_anchor.device  # every tensor of the module moves with it
        super()._apply(fn, recurse)
        for spec in self.packed_state().values():  # plain attributes (see packed_state): moved here
            if self.__dict__.get(spec.held) is not None:
                self.__dict__[spec.held] = fn(self.__dict__[spec.held])
        for name, before in fixed.items():
            after = self._buffers[name]
            if after is not None and after.dtype != before.dtype:
                self._buffers[name] = before.to(after.device)
        if self._weight_anchor.device != device:
            self.repack()
        self._state_changed()
        return self
