"""Hugging Face transformers: save_pretrained / from_pretrained of models compressed by slimkernels.

transformers lets a package register a quantization method of its own (its documented
`register_quantization_config` / `register_quantizer` decorators); this module registers
quant_method "slimkernels":

  SlimkernelsConfig       a QuantizationConfigMixin: the slimkernels pass config to apply
                          (`config`, e.g. Int8DynamicConfig()), modules to leave in float, and,
                          once the model is compressed, the `layer_config()` of every compressed
                          module by name (`layers`) and the layers the pass left in float
                          (`skipped`). It lives in `model.config.quantization_config`, so
                          save_pretrained writes it into config.json.
  SlimkernelsHfQuantizer  the HfQuantizer from_pretrained uses:
                            a checkpoint saved quantized: before the weights load, every recorded
                            layer is replaced by an empty module of its type and format
                            (`layer_type(cfg["type"]).from_layer_config(cfg)`), so the checkpoint's
                            keys (qweight, weight_scale, ...) fill it; after, the derived tensors
                            are rebuilt (repack) and the loaded state checked. Nothing is
                            re-quantized: outputs are identical to the model that was saved.
                          a float checkpoint + `quantization_config=SlimkernelsConfig(config)`:
                            the float weights load as usual, then `slimkernels.quantize_` runs
                            with `config` (round-to-nearest configs only: GPTQ needs calibration
                            data, which from_pretrained cannot give it).

Workflow: `slimkernels.quantize_(model, config)` on a PreTrainedModel calls `attach_to_hf_model`
(through slimkernels.integrations.on_model_compressed), which sets `model.config.quantization_config`
and `model.hf_quantizer`; `model.save_pretrained(path)` then writes a checkpoint that
`AutoModel.from_pretrained(path)` loads quantized, provided `slimkernels` is imported (that is what
registers "slimkernels" with transformers). At save time the quantizer refreshes the recorded layers
from the model and refuses (ValueError, before any file is written) what would not load back: a
compressed module reachable under two names, a compressed module of an unregistered type, QAT
FakeQuantLinear layers (convert_ first), compressed tensors sharing storage or left on the meta
device, and transformers older than MIN_TRANSFORMERS.

Requires transformers >= 4.57 (checked with 4.57.6 and 5.24.0).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import types
from typing import Any, Optional

import torch
from torch import nn

import transformers
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..compress import config as _configs
from ..nn.base import CompressedModule, dtype_name, float_dtype, layer_type

QUANT_METHOD = "slimkernels"
FORMAT_VERSION = 1  # of the `layers` record; a reader refuses a newer one
MIN_TRANSFORMERS = "4.57.0"

logger = logging.getLogger(__name__)

__all__ = ["SlimkernelsConfig", "SlimkernelsHfQuantizer", "register", "attach_to_hf_model", "QUANT_METHOD",
           "MIN_TRANSFORMERS"]


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in re.split(r"[.+-]", version)[:3]:
        digits = re.match(r"\d+", piece)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def transformers_supported() -> Optional[str]:
    """None when the installed transformers can round-trip slimkernels models, else why not."""
    if _version_tuple(transformers.__version__) < _version_tuple(MIN_TRANSFORMERS):
        return (f"transformers {transformers.__version__} is older than {MIN_TRANSFORMERS}, the oldest version whose "
                "quantizer registration slimkernels supports")
    from transformers.quantizers import auto

    if not hasattr(auto, "register_quantizer") or not hasattr(auto, "register_quantization_config"):
        return f"transformers {transformers.__version__} has no register_quantizer / register_quantization_config"
    return None


# ---- the pass config, as JSON ------------------------------------------------------------------------
def _config_classes() -> dict[str, type]:
    found, todo = {}, [_configs.QuantizationConfig]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found


def config_to_dict(config) -> Optional[dict]:
    """A slimkernels quantization config (or a mode name, or such a dict) as a JSON-able dict
    {"name": <class name>, **fields}; None stays None. A dict is kept as it is (checked when a config
    is built from it: a checkpoint written by a newer slimkernels still loads)."""
    if config is None:
        return None
    if isinstance(config, dict):
        if not isinstance(config.get("name"), str):
            raise ValueError(f"SlimkernelsConfig: a config dict names its class under 'name', got {config!r}")
        return dict(config)
    if isinstance(config, str):
        config = _configs.config_for_mode(config)
    if not (isinstance(config, _configs.QuantizationConfig) and dataclasses.is_dataclass(config)):
        raise TypeError(f"SlimkernelsConfig: config must be a slimkernels quantization config (Int8DynamicConfig, "
                        f"Int8WeightOnlyConfig, Int4WeightOnlyConfig, CodebookConfig), a mode name or its dict, "
                        f"got {type(config).__name__}")
    return {"name": type(config).__name__, **dataclasses.asdict(config)}


def config_from_dict(data: dict):
    """The slimkernels config a config_to_dict dict describes."""
    fields = dict(data)
    name = fields.pop("name", None)
    cls = _config_classes().get(name)
    if cls is None or cls is _configs.QuantizationConfig:
        raise ValueError(f"SlimkernelsConfig: unknown slimkernels config {name!r}; known: "
                         f"{sorted(n for n in _config_classes() if n != 'QuantizationConfig')}")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ValueError(f"SlimkernelsConfig: {name} does not take {fields} ({exc}); the checkpoint may have been "
                         "written by a newer slimkernels") from None


# ---- the transformers config -------------------------------------------------------------------------
class SlimkernelsConfig(QuantizationConfigMixin):
    """The quantization config of a model compressed by slimkernels (quant_method "slimkernels").

    config: the slimkernels quantization config to apply on load (Int8DynamicConfig(),
        Int8WeightOnlyConfig(), Int4WeightOnlyConfig(group_size=...), CodebookConfig(...), a mode name
        such as "w8a8", or its dict); for a saved model, the last config quantize_ applied.
    modules_to_not_convert: when quantizing on load, module names kept in float: a name matches a
        module of that name, the modules under it ("encoder" keeps encoder.*) and modules whose name
        ends with it ("lm_head"). Default None: every nn.Linear, as quantize_ does.
    layers / skipped / model_dtype: written by slimkernels when the model is compressed (the
        layer_config() of each compressed module by name; the layers left in float and why; the
        model's float dtype), read back by from_pretrained. Not for users to set.
    """

    def __init__(self, config=None, modules_to_not_convert: Optional[list[str]] = None,
                 layers: Optional[dict[str, dict]] = None, skipped: Optional[dict[str, str]] = None,
                 model_dtype: Optional[str] = None, format_version: int = FORMAT_VERSION,
                 slimkernels_version: Optional[str] = None, **kwargs):
        quant_method = kwargs.pop("quant_method", QUANT_METHOD)
        if quant_method != QUANT_METHOD:
            raise ValueError(f"SlimkernelsConfig: quant_method is {quant_method!r}, expected {QUANT_METHOD!r}")
        if kwargs:
            logger.warning("SlimkernelsConfig: ignoring unknown fields %s (written by a newer slimkernels?)", sorted(kwargs))
        if not isinstance(format_version, int) or format_version > FORMAT_VERSION:
            raise ValueError(f"SlimkernelsConfig: this checkpoint's slimkernels format version is {format_version!r}; "
                             f"this slimkernels reads up to {FORMAT_VERSION}: upgrade slimkernels")
        if modules_to_not_convert is not None and (
                isinstance(modules_to_not_convert, str) or not all(isinstance(m, str) for m in modules_to_not_convert)):
            raise TypeError(f"SlimkernelsConfig: modules_to_not_convert must be a list of module names, got "
                            f"{modules_to_not_convert!r}")
        if layers is not None and not (isinstance(layers, dict) and all(isinstance(v, dict) for v in layers.values())):
            raise ValueError("SlimkernelsConfig: layers must map module names to layer configs")
        from .. import __version__

        self.quant_method = QUANT_METHOD
        self.config = config_to_dict(config)
        self.modules_to_not_convert = None if modules_to_not_convert is None else list(modules_to_not_convert)
        self.layers = {} if layers is None else {str(k): dict(v) for k, v in layers.items()}
        self.skipped = {} if skipped is None else {str(k): str(v) for k, v in skipped.items()}
        self.model_dtype = model_dtype
        self.format_version = format_version
        self.slimkernels_version = slimkernels_version or __version__

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": self.quant_method, "config": self.config,
                "modules_to_not_convert": self.modules_to_not_convert, "layers": self.layers,
                "skipped": self.skipped, "model_dtype": self.model_dtype, "format_version": self.format_version,
                "slimkernels_version": self.slimkernels_version}

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def compression_config(self):
        """The slimkernels config object (`config`), or ValueError when there is none."""
        if self.config is None:
            raise ValueError("SlimkernelsConfig has no config to quantize with: pass one, e.g. "
                             "SlimkernelsConfig(slimkernels.Int8DynamicConfig())")
        return config_from_dict(self.config)

    def keeps_float(self, name: str) -> bool:
        """Whether modules_to_not_convert keeps module `name` in float."""
        return any(name == m or name.startswith(m + ".") or name.endswith("." + m)
                   for m in self.modules_to_not_convert or ())

    def record(self, model: nn.Module, report=None) -> None:
        """Record the compressed layers of `model` (and, from a pass's report, the layers it left in float).
        A module of an unregistered type is left out here; save_pretrained refuses it (check_serializable)."""
        layers = {}
        for name, module in compressed_modules(model):
            try:
                layers[name] = module.layer_config()
            except TypeError:
                continue
        self.layers = layers
        for rec in getattr(report, "skipped", None) or ():
            self.skipped[rec.name] = rec.detail
        self.skipped = {name: why for name, why in self.skipped.items() if name not in layers}
        dtype = _model_float_dtype(model)
        if dtype is not None:
            self.model_dtype = dtype_name(dtype)


def compressed_modules(model: nn.Module) -> list[tuple[str, CompressedModule]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, CompressedModule)]


def _model_float_dtype(model: nn.Module) -> Optional[torch.dtype]:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return None


# ---- loading: a checkpoint saved quantized -----------------------------------------------------------
def _resolve(model: nn.Module, name: str) -> Optional[str]:
    """`name` as recorded at save time, in `model` (the checkpoint may have been saved with or
    without the base-model prefix, e.g. LlamaForCausalLM "model.layers.0..." loaded into LlamaModel)."""
    candidates = [name]
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix:
        candidates += [name[len(prefix) + 1:]] if name.startswith(prefix + ".") else [f"{prefix}.{name}"]
    for candidate in candidates:
        try:
            model.get_submodule(candidate)
            return candidate
        except AttributeError:
            continue
    return None


def _weight_dtype(recorded: Optional[str], saved_model_dtype: Optional[str], float_module: nn.Module):
    """The weight dtype of a rebuilt layer: the recorded one (the saved model's, so model code that
    reads layer.weight.dtype behaves as it did), except that a layer that followed the model's dtype
    follows the dtype this load builds the model in (from_pretrained(..., dtype=...))."""
    weight = getattr(float_module, "weight", None)
    now = weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else None
    if recorded is None:
        return now
    if now is not None and saved_model_dtype is not None and recorded == saved_model_dtype and dtype_name(now) != recorded:
        return now
    return float_dtype(recorded, "weight_dtype")


def replace_recorded_layers(model: nn.Module, qconfig: SlimkernelsConfig) -> dict[str, CompressedModule]:
    """Swap every layer `qconfig.layers` records for an empty module of its type and format (on the
    device the float module is on, the meta device inside from_pretrained). Returns them by name."""
    replaced = {}
    for recorded_name, cfg in qconfig.layers.items():
        name = _resolve(model, recorded_name)
        if name is None:
            # e.g. "lm_head" of a ForCausalLM checkpoint loaded into the base model: transformers
            # drops that part of the checkpoint too
            logger.info("slimkernels: the model has no module %s (recorded in the checkpoint); skipped", recorded_name)
            continue
        module = model.get_submodule(name)
        if not isinstance(cfg, dict) or "type" not in cfg:
            raise ValueError(f"from_pretrained: slimkernels layer {recorded_name!r} has a malformed config {cfg!r}")
        try:
            cls = layer_type(cfg["type"])
            cls.check_config(cfg)
        except ValueError as exc:
            raise ValueError(f"from_pretrained: slimkernels layer {recorded_name!r}: {exc}") from None
        if isinstance(module, CompressedModule):
            raise ValueError(f"from_pretrained: {name} is already a {type(module).__name__}")
        if not cls.matches_float(module, cfg):
            raise ValueError(f"from_pretrained: the checkpoint has a {cfg['type']} {cfg} at {name!r}, but the model "
                             f"built from config.json has {module!r} there (type or shape differ)")
        first = next(iter(list(module.parameters()) + list(module.buffers())), None)
        weight_dtype = _weight_dtype(cfg.get("weight_dtype"), qconfig.model_dtype, module)
        try:
            new = cls.from_layer_config(cfg, device=first.device if first is not None else None, dtype=weight_dtype)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"from_pretrained: slimkernels layer {recorded_name!r} has an invalid config {cfg}: {exc}") from None
        if weight_dtype is not None:
            new.weight_dtype = weight_dtype  # from_layer_config takes the recorded one
        _set_submodule(model, name, new)
        replaced[name] = new
    _untie(model, replaced)
    return replaced


def finish_loaded_layers(model: nn.Module, expected: dict[str, dict], missing: frozenset = frozenset()) -> None:
    """After the loader filled the compressed modules (it assigns their tensors, bypassing
    load_state_dict and its hooks): check every saved tensor arrived with its shape and dtype,
    restore the `weight` stand-in, check the values and rebuild the derived tensors. `missing`: the
    state-dict keys transformers reported absent from the checkpoint (transformers 4)."""
    layers = compressed_modules(model)
    # transformers marks every tensor it loaded from the checkpoint `_is_hf_initialized`, and gives
    # the keys the checkpoint lacks uninitialized memory: where the marks are in use, a compressed
    # tensor without one was not in the checkpoint.
    marked = any(getattr(t, "_is_hf_initialized", False) for name, m in layers if name in expected
                 for _, t in m._own_state())
    for name, module in layers:
        specs = expected.get(name)
        state = dict(module._own_state())
        if specs is not None:
            problems = []
            for key, (shape, dtype) in specs.items():
                t = state.get(key)
                if t is None or t.device.type == "meta" or f"{name}.{key}" in missing or (
                        marked and not getattr(t, "_is_hf_initialized", False)):
                    problems.append(f"{key} is missing")
                elif tuple(t.shape) != shape or t.dtype != dtype:
                    problems.append(f"{key} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}")
            if problems:
                cast = all(" is torch." in p for p in problems) and _version_tuple(transformers.__version__) < (5,)
                hint = (f"transformers {transformers.__version__} casts every floating-point tensor of a quantized "
                        "checkpoint to the dtype it builds the model in: load with dtype=torch.float32 (then "
                        "model.to(dtype) if you want another), or upgrade to transformers 5") if cast else \
                    "a corrupt or truncated checkpoint"
                raise ValueError(f"from_pretrained: slimkernels layer {name}: {'; '.join(problems)} ({hint})")
        device = next(iter(state.values())).device if state else module._weight_anchor.device
        module._weight_anchor = torch.full((), math.nan, dtype=module._weight_anchor.dtype, device=device)
        module.validate_state()
        module.repack()


def _state_specs(module: CompressedModule) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {key: (tuple(t.shape), t.dtype) for key, t in module._own_state()}


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _untie(model: nn.Module, compressed: dict[str, nn.Module]) -> None:
    """Forget transformers' weight ties into or out of compressed modules (T5's and other models'
    lm_head is tied to the input embedding): a compressed module has no `weight` parameter to tie,
    and its tensors are its own (the float embedding is saved and loads on its own)."""
    if not compressed:
        return
    prefixes = tuple(name + "." for name in compressed)

    def touches(key: str) -> bool:
        return key.startswith(prefixes)

    for owner_name, owner in model.named_modules():
        tied = getattr(owner, "all_tied_weights_keys", None)
        if not isinstance(tied, dict) or not tied:
            continue
        scope = owner_name + "." if owner_name else ""
        for target in [t for t, s in tied.items() if touches(scope + t) or touches(scope + str(s))]:
            del tied[target]
    # and when the ties are computed again (model.tie_weights(), resize_token_embeddings):
    # transformers 5 expands _tied_weights_keys, transformers 4 ties through _tie_or_clone_weights.
    # Instance methods (bound, so the model still deep-copies and pickles).
    if hasattr(type(model), "get_expanded_tied_weights_keys") and "get_expanded_tied_weights_keys" not in vars(model):
        model.get_expanded_tied_weights_keys = types.MethodType(_expanded_ties_uncompressed, model)
    if hasattr(type(model), "_tie_or_clone_weights") and "_tie_or_clone_weights" not in vars(model):
        model._tie_or_clone_weights = types.MethodType(_tie_or_clone_uncompressed, model)


def _expanded_ties_uncompressed(model, *args, **kwargs):
    tied = type(model).get_expanded_tied_weights_keys(model, *args, **kwargs)
    prefixes = tuple(name + "." for name, _ in compressed_modules(model))
    return {t: s for t, s in tied.items() if not t.startswith(prefixes) and not str(s).startswith(prefixes)}


def _tie_or_clone_uncompressed(model, output_embeddings, input_embeddings):
    if isinstance(output_embeddings, CompressedModule) or isinstance(input_embeddings, CompressedModule):
        return None
    return type(model)._tie_or_clone_weights(model, output_embeddings, input_embeddings)


# ---- saving --------------------------------------------------------------------------------------------
def check_serializable(model: nn.Module) -> None:
    """ValueError when save_pretrained would write a checkpoint from_pretrained cannot load back as it is."""
    from ..nn.fake_quant_linear import FakeQuantLinear

    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, CompressedModule):
            names.setdefault(id(module), []).append(name)
        elif isinstance(module, FakeQuantLinear):
            raise ValueError(f"save_pretrained: {name} is a FakeQuantLinear (quantization-aware training in progress), "
                             "which from_pretrained would load back as a plain nn.Linear: call "
                             "slimkernels.convert_(model) first, or save the float model before prepare_qat_")
    shared = [n for n in names.values() if len(n) > 1]
    if shared:
        raise ValueError(f"save_pretrained: the compressed module at {shared[0]} is one module reachable under several "
                         "names; from_pretrained rebuilds one module per name, so the checkpoint would not load back. "
                         "Give each name its own module, or use slimkernels.save(model, path) / slimkernels.load")
    compressed_ptrs: dict[int, str] = {}
    for name, module in compressed_modules(model):
        try:
            module.layer_config()
        except TypeError as exc:
            raise ValueError(f"save_pretrained: {name} is a {type(module).__name__}, which checkpoints cannot record "
                             f"({exc})") from None
        for key, t in module._own_state(unpack=False):  # the storages held (packed ones as packed)
            if t.device.type == "meta":
                raise ValueError(f"save_pretrained: {name}.{key} is on the meta device (offloaded?): move the model "
                                 "to one device before saving")
            if t.numel():
                compressed_ptrs.setdefault(t.untyped_storage().data_ptr(), f"{name}.{key}")
    for key, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor) or not t.numel() or t.device.type == "meta":
            continue
        owner = compressed_ptrs.get(t.untyped_storage().data_ptr())
        if owner is not None and owner != key:
            raise ValueError(f"save_pretrained: {key} shares its storage with the compressed tensor {owner}; safetensors "
                             "stores shared tensors once and transformers' tied-weight handling does not know "
                             "slimkernels buffers, so the checkpoint would not load back. Give the layers their own "
                             "tensors (clone them), or use slimkernels.save(model, path) / slimkernels.load")


# ---- the quantizer -------------------------------------------------------------------------------------
class SlimkernelsHfQuantizer(HfQuantizer):
    """from_pretrained's side of quant_method "slimkernels" (see the module docstring)."""

    requires_calibration = False
    requires_parameters_quantization = False  # transformers 4.x
    quantization_config: SlimkernelsConfig

    def __init__(self, quantization_config: SlimkernelsConfig, **kwargs):
        if isinstance(quantization_config, dict):
            quantization_config = SlimkernelsConfig.from_dict(quantization_config)
        # a copy: loading records the model's layers in it, and the caller may reuse theirs
        super().__init__(copy.deepcopy(quantization_config), **kwargs)
        self._expected: dict[str, dict] = {}
        self._missing: frozenset = frozenset()

    # -- from_pretrained, before the model is built
    def validate_environment(self, *args, **kwargs):
        why = transformers_supported()
        if why is not None:
            raise ImportError(f"slimkernels: {why}; upgrade transformers (pip install -U transformers)")
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in set(map(str, device_map.values())):
            raise ValueError("slimkernels: offloading to disk (device_map with 'disk') is not supported")
        if not self.pre_quantized:
            config = self.quantization_config.compression_config()
            if getattr(config, "needs_calibration", False):
                raise ValueError(
                    f"slimkernels: {config.describe()} needs calibration data, which from_pretrained cannot give it. "
                    "Load the float model, run slimkernels.quantize_(model, config, calibration=batches), then "
                    "model.save_pretrained(path): from_pretrained(path) loads that checkpoint quantized. Quantizing "
                    "on load takes round-to-nearest configs (method='rtn').")

    def _convert_model_for_quantization(self, model):
        """transformers' patching of MoE expert modules for other methods (and, in 4.x, an import of
        accelerate): nothing slimkernels needs."""

    # -- the model is built (meta device): swap in the recorded layers
    def _process_model_before_weight_loading(self, model, **kwargs):
        if self.pre_quantized:
            replaced = replace_recorded_layers(model, self.quantization_config)
            self._expected = {name: _state_specs(m) for name, m in replaced.items()}
        return model

    def update_missing_keys(self, model, missing_keys, prefix):
        """transformers 4: the keys the checkpoint lacks (finish_loaded_layers refuses compressed ones)."""
        self._missing = frozenset(missing_keys)
        return missing_keys

    # -- the weights are in
    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.pre_quantized:
            finish_loaded_layers(model, self._expected, self._missing)
            self._expected, self._missing = {}, frozenset()
            attach_to_hf_model(model, quantizer=self)
        else:
            from ..compress.quantize import quantize_

            qconfig = self.quantization_config
            filter_fn = (lambda module, name: not qconfig.keeps_float(name)) if qconfig.modules_to_not_convert else None
            report = quantize_(model, qconfig.compression_config(), filter_fn=filter_fn, progress=False)
            self.pre_quantized = True  # the model in memory now is
            attach_to_hf_model(model, report=report, quantizer=self)
        return model

    # -- save_pretrained
    def is_serializable(self, *args, **kwargs) -> bool:
        return True

    def get_state_dict_and_metadata(self, model, *args, **kwargs):
        """Called by save_pretrained before it writes config.json and the weights: refresh the
        record of compressed layers from the model, and refuse what would not load back."""
        check_serializable(model)
        self.quantization_config.record(model)
        _untie(model, dict(compressed_modules(model)))
        return None, {}

    @property
    def is_trainable(self) -> bool:
        # the compressed layers hold buffers, not parameters: training updates only the float ones
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return False

    def _dequantize(self, model, *args, **kwargs):
        """model.dequantize(): every QuantLinear back to an nn.Linear holding its dequantized weight."""
        from ..nn.quant_linear import QuantLinear

        for name, module in compressed_modules(model):
            if not isinstance(module, QuantLinear):
                raise ValueError(f"slimkernels: cannot dequantize {name} ({type(module).__name__})")
            weight = module.dequantized_weight()
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                               device=weight.device, dtype=module.weight_dtype)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            _set_submodule(model, name, linear)
        return model


class _RefuseToSave(HfQuantizer):
    """Attached instead of SlimkernelsHfQuantizer where transformers is too old: save_pretrained
    refuses to write a checkpoint from_pretrained would load with random weights."""

    requires_calibration = False

    def __init__(self, quantization_config, why: str, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.why = why

    def _process_model_before_weight_loading(self, model, **kwargs):
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        return model

    def is_serializable(self, *args, **kwargs):
        raise ValueError(f"save_pretrained: this model has slimkernels-compressed layers, but {self.why}, so "
                         "from_pretrained would load the checkpoint with random weights. Upgrade transformers "
                         f"(>= {MIN_TRANSFORMERS}), or save with slimkernels.save(model, 'model.safetensors') and load "
                         "with slimkernels.load(path, model)")

    @property
    def is_trainable(self):
        return True


# ---- registration and the hook the passes call ------------------------------------------------------------
def register(quiet: bool = False) -> bool:
    """Register quant_method "slimkernels" with transformers (idempotent). `import slimkernels`
    does it as soon as transformers loads its quantizer registry; call it yourself only if you
    imported transformers' internals in an unusual order. Returns whether it is registered; with
    quiet=False an unsupported transformers raises ImportError."""
    why = transformers_supported()
    if why is not None:
        if quiet:
            return False
        raise ImportError(f"slimkernels: {why}")
    from transformers.quantizers import auto

    for mapping, cls, decorator in ((auto.AUTO_QUANTIZATION_CONFIG_MAPPING, SlimkernelsConfig, auto.register_quantization_config),
                                    (auto.AUTO_QUANTIZER_MAPPING, SlimkernelsHfQuantizer, auto.register_quantizer)):
        known = mapping.get(QUANT_METHOD)
        if known is cls:
            continue
        if known is None:
            decorator(QUANT_METHOD)(cls)
        elif (known.__module__, known.__qualname__) == (cls.__module__, cls.__qualname__):
            mapping[QUANT_METHOD] = cls  # this module was reloaded
        else:
            raise RuntimeError(f"quant_method {QUANT_METHOD!r} is already registered with transformers by "
                               f"{known.__module__}.{known.__qualname__}")
    return True


def attach_to_hf_model(model, config=None, report=None, quantizer: Optional[HfQuantizer] = None) -> None:
    """Make `model.save_pretrained` write a checkpoint `from_pretrained` loads back compressed: set
    `model.config.quantization_config` to a SlimkernelsConfig recording the compressed layers (and
    `config`, the pass config just applied, if given; the layers `report` says were skipped) and
    `model.hf_quantizer` to the slimkernels quantizer. Idempotent; a model without compressed layers
    is left alone. slimkernels' passes call it (through slimkernels.integrations.on_model_compressed)."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return
    present = getattr(model, "hf_quantizer", None)
    if present is not None and not isinstance(present, (SlimkernelsHfQuantizer, _RefuseToSave)):
        method = getattr(present.quantization_config, "quant_method", type(present).__name__)
        raise ValueError(f"slimkernels: this model is already quantized by transformers with {method}; slimkernels "
                         "cannot record its layers in the same checkpoint. Start from the float model.")
    if not compressed_modules(model) and present is None:
        return
    ours = quantizer if quantizer is not None else present
    qconfig = ours.quantization_config if ours is not None else getattr(model.config, "quantization_config", None)
    if not isinstance(qconfig, SlimkernelsConfig):
        qconfig = SlimkernelsConfig(config)
    elif config is not None:
        qconfig.config = config_to_dict(config)
    qconfig.record(model, report)
    model.config.quantization_config = qconfig
    for module in model.modules():  # as transformers marks the models it loads quantized: model code that
        if isinstance(module, PreTrainedModel):  # reads a layer's .weight values checks it (falcon_mamba, ...)
            module.config._is_quantized = True
    if _version_tuple(transformers.__version__) < (5,) and not hasattr(model.config, "_pre_quantization_dtype"):
        model.config._pre_quantization_dtype = _model_float_dtype(model) or torch.float32  # 4.x's dequantize() reads it
    why = transformers_supported()
    if why is not None:
        model.hf_quantizer = _RefuseToSave(qconfig, why, pre_quantized=True)
        import warnings

        warnings.warn(f"slimkernels: {why}; model.save_pretrained will refuse this model (use slimkernels.save)",
                      stacklevel=3)
        return
    register(quiet=True)
    if quantizer is None:
        quantizer = present if isinstance(present, SlimkernelsHfQuantizer) else SlimkernelsHfQuantizer(qconfig, pre_quantized=True)
    quantizer.quantization_config = qconfig
    model.hf_quantizer = quantizer
    _untie(model, dict(compressed_modules(model)))


register(quiet=True)  # importing this module registers quant_method "slimkernels" (when transformers supports it)
