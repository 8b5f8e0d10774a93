"""Integrations with other libraries, loaded only when those libraries are.

Hugging Face transformers (slimkernels/integrations/transformers.py): a quantization config and
quantizer registered with transformers under quant_method "slimkernels", so that
`model.save_pretrained(path)` of a model quantized with slimkernels.quantize_ writes a checkpoint
that `AutoModel.from_pretrained(path)` loads back quantized, and
`from_pretrained(path, quantization_config=SlimkernelsConfig(...))` quantizes on load.

Importing transformers' quantizer registry costs seconds, so `import slimkernels` does not do it.
`install()` (called by `import slimkernels`) registers the slimkernels quantizer at once when
transformers has already loaded that registry, and otherwise the moment it does (an import hook
on `transformers.quantizers.auto`, which `from_pretrained` and `save_pretrained` import); it costs
microseconds and imports nothing. `slimkernels.integrations.transformers.register()` does the
same explicitly.

`on_model_compressed(model, config, report)` is what the passes call once they have changed a
model: a no-op unless the model is a transformers PreTrainedModel (it never imports transformers).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading

_TRANSFORMERS_REGISTRY = "transformers.quantizers.auto"
_lock = threading.RLock()


def _register_transformers() -> None:
    module = sys.modules.get(__name__ + ".transformers")
    if module is not None and not hasattr(module, "register"):
        return  # the integration module is being imported (that is what loads the registry): it registers at its end
    from . import transformers as _hf  # the integration module (it imports transformers); registers on import

    _hf.register(quiet=True)


def _safe_register() -> None:
    try:
        _register_transformers()
    except Exception as exc:  # never break `import transformers` / `import slimkernels` over the integration
        import warnings

        warnings.warn(f"slimkernels: could not register its transformers quantizer ({exc!r}); "
                      "call slimkernels.integrations.transformers.register() to see why", stacklevel=2)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when transformers' quantizer registry is about to be imported, it
    wraps that module's loader so that the slimkernels quantizer registers right after it runs."""

    def __init__(self):
        self._searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TRANSFORMERS_REGISTRY or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(fullname)  # the real finders (this one steps aside)
        except (ImportError, ValueError):
            return None
        finally:
            self._searching = False
        loader = getattr(spec, "loader", None) if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _remove_hook()
            _safe_register()

        loader.exec_module = exec_module  # this spec's own loader instance only
        return spec


_hook: _RegisterAfterImport | None = None


def _remove_hook() -> None:
    global _hook
    with _lock:
        if _hook is not None and _hook in sys.meta_path:
            sys.meta_path.remove(_hook)
        _hook = None


def install() -> None:
    """Register the transformers quantizer now if transformers' quantizer registry is loaded,
    else as soon as it is. Never imports transformers itself."""
    global _hook
    with _lock:
        if _TRANSFORMERS_REGISTRY in sys.modules:
            _safe_register()
            return
        if _hook is None:
            _hook = _RegisterAfterImport()
            sys.meta_path.insert(0, _hook)


def on_model_compressed(model, config=None, report=None) -> None:
    """Called by the passes (quantize_, convert_, load) after they changed `model` in place: for a
    transformers PreTrainedModel, records the compressed layers in `model.config.quantization_config`
    and attaches the slimkernels quantizer, so that `model.save_pretrained` writes a checkpoint that
    `from_pretrained` loads back quantized (transformers.attach_to_hf_model). A no-op otherwise."""
    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None or not isinstance(model, getattr(modeling, "PreTrainedModel", ())):
        return  # transformers' models are not even loaded: this cannot be one
    from .transformers import attach_to_hf_model

    attach_to_hf_model(model, config=config, report=report)


__all__ = ["install", "on_model_compressed"]
