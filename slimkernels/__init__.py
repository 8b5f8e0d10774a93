"""slimkernels: kernels, drop-in modules and passes that make neural networks smaller and faster.

    import slimkernels
    report = slimkernels.quantize_(model, slimkernels.Int8DynamicConfig())
    slimkernels.save(model, "model.safetensors")
"""
from . import _native, ops
from .backends import get_backend, set_backend, use_backend
from .backends import register_all as _register_all  # noqa: F401
from .compress import (
    CodebookConfig,
    CompressionReport,
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8WeightOnlyConfig,
    convert_,
    load,
    prepare_qat_,
    quantize_,
    save,
)
from .nn import FakeQuantLinear, QuantLinear

__version__ = "0.1.0"
info = _native.info

__all__ = [
    "ops", "QuantLinear", "FakeQuantLinear", "quantize_", "prepare_qat_", "convert_", "Int8DynamicConfig",
    "Int8WeightOnlyConfig", "Int4WeightOnlyConfig", "CodebookConfig", "CompressionReport",
    "save", "load", "set_backend", "use_backend", "get_backend", "info", "__version__",
]
